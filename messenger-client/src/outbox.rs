//! The local outbox: sends not yet confirmed by `message_sent`, keyed by
//! (thread, temp id), in the order the app made them. It outlives connections (every
//! (re)connect resends all of it with the same temp ids, and the server's idempotent
//! send answers a resend of a stored message with the original id and seq) and, once
//! stored, the process (the [`ClientStore`](crate::ClientStore) keeps it).

use std::collections::{BTreeMap, HashMap};

use messenger_core::time::Millis;
use messenger_core::ThreadId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ClientError;
use crate::event::Sent;
use crate::store::OutboxEntry;

/// Where a send's result goes.
pub(crate) type SendReply = oneshot::Sender<Result<Sent, ClientError>>;
/// Where "it is in the store" goes.
pub(crate) type StoredReply = oneshot::Sender<Result<(), ClientError>>;

#[derive(Debug)]
pub(crate) struct Item {
    pub thread_id: ThreadId,
    pub temp_id: String,
    pub text: String,
    pub queued_at: Millis,
    /// Callers awaiting `message_sent`.
    pub waiters: Vec<SendReply>,
    /// Callers awaiting the store.
    pub on_stored: Vec<StoredReply>,
    /// In the store: only then may it be written to the server.
    pub stored: bool,
    /// Written on the current connection and not answered yet.
    pub in_flight: bool,
    /// Refused as transient (`rate_limited`, `unavailable`): resend at this time.
    pub retry_at: Option<Instant>,
}

impl Item {
    pub fn entry(&self) -> OutboxEntry {
        OutboxEntry {
            thread_id: self.thread_id.clone(),
            temp_id: self.temp_id.clone(),
            text: self.text.clone(),
            queued_at: self.queued_at,
        }
    }

    /// Fails every caller waiting on this item.
    pub fn fail(self, err: &ClientError) {
        for w in self.waiters {
            let _ = w.send(Err(err.clone()));
        }
        for w in self.on_stored {
            let _ = w.send(Err(err.clone()));
        }
    }
}

type Key = (ThreadId, String);

/// What [`Outbox::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// A new item, not stored yet.
    New,
    /// The same (thread, temp id) was already queued: the callers joined it.
    Joined,
}

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    next: u64,
    items: BTreeMap<u64, Item>,
    index: HashMap<Key, u64>,
}

impl Outbox {
    /// Adds an entry restored from the store (already stored, nobody waiting).
    pub fn restore(&mut self, e: OutboxEntry) {
        self.insert(Item {
            thread_id: e.thread_id,
            temp_id: e.temp_id,
            text: e.text,
            queued_at: e.queued_at,
            waiters: Vec::new(),
            on_stored: Vec::new(),
            stored: true,
            in_flight: false,
            retry_at: None,
        });
    }

    fn insert(&mut self, item: Item) {
        let key = (item.thread_id.clone(), item.temp_id.clone());
        if self.index.contains_key(&key) {
            return;
        }
        let n = self.next;
        self.next += 1;
        self.items.insert(n, item);
        self.index.insert(key, n);
    }

    /// Adds a send from the app.
    pub fn push(
        &mut self,
        entry: OutboxEntry,
        waiter: Option<SendReply>,
        on_stored: Option<StoredReply>,
    ) -> Pushed {
        let key = (entry.thread_id.clone(), entry.temp_id.clone());
        if let Some(item) = self.index.get(&key).and_then(|n| self.items.get_mut(n)) {
            item.waiters.extend(waiter);
            if let Some(r) = on_stored {
                if item.stored {
                    let _ = r.send(Ok(()));
                } else {
                    item.on_stored.push(r);
                }
            }
            return Pushed::Joined;
        }
        self.insert(Item {
            thread_id: entry.thread_id,
            temp_id: entry.temp_id,
            text: entry.text,
            queued_at: entry.queued_at,
            waiters: waiter.into_iter().collect(),
            on_stored: on_stored.into_iter().collect(),
            stored: false,
            in_flight: false,
            retry_at: None,
        });
        Pushed::New
    }

    /// The store has every item: they may go to the server.
    pub fn all_stored(&mut self) {
        for i in self.items.values_mut().filter(|i| !i.stored) {
            i.stored = true;
            for r in i.on_stored.drain(..) {
                let _ = r.send(Ok(()));
            }
        }
    }

    /// The store refused the items not stored yet: they leave, their callers fail.
    pub fn drop_unstored(&mut self, err: &ClientError) {
        let gone: Vec<u64> = self
            .items
            .iter()
            .filter(|(_, i)| !i.stored)
            .map(|(n, _)| *n)
            .collect();
        for n in gone {
            if let Some(item) = self.items.remove(&n) {
                self.index
                    .remove(&(item.thread_id.clone(), item.temp_id.clone()));
                item.fail(err);
            }
        }
    }

    /// Removes and returns the item for (thread, temp id).
    pub fn take(&mut self, thread_id: &ThreadId, temp_id: &str) -> Option<Item> {
        let n = self
            .index
            .remove(&(thread_id.clone(), temp_id.to_string()))?;
        self.items.remove(&n)
    }

    /// The item for (thread, temp id).
    pub fn get_mut(&mut self, thread_id: &ThreadId, temp_id: &str) -> Option<&mut Item> {
        let n = self.index.get(&(thread_id.clone(), temp_id.to_string()))?;
        self.items.get_mut(n)
    }

    /// Items written and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.items.values().filter(|i| i.in_flight).count()
    }

    /// Up to `limit` stored items that should be written now, oldest first, marked in
    /// flight.
    pub fn due(&mut self, now: Instant, limit: usize) -> Vec<(ThreadId, String, String)> {
        self.items
            .values_mut()
            .filter(|i| {
                i.stored
                    && !i.in_flight
                    && match i.retry_at {
                        None => true,
                        Some(t) => t <= now,
                    }
            })
            .take(limit)
            .map(|i| {
                i.in_flight = true;
                i.retry_at = None;
                (i.thread_id.clone(), i.temp_id.clone(), i.text.clone())
            })
            .collect()
    }

    /// The connection dropped: nothing is in flight any more.
    pub fn connection_lost(&mut self) {
        for i in self.items.values_mut() {
            i.in_flight = false;
        }
    }

    /// Fails every caller (the client is stopping). The items stay in the store: a
    /// client built on it again sends them.
    pub fn fail_all(&mut self, err: &ClientError) {
        self.index.clear();
        for (_, item) in std::mem::take(&mut self.items) {
            item.fail(err);
        }
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Vec<OutboxEntry> {
        self.items.values().map(Item::entry).collect()
    }

    /// Pending sends.
    pub fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> ThreadId {
        ThreadId::new("t").expect("id")
    }

    fn e(temp: &str, text: &str) -> OutboxEntry {
        OutboxEntry {
            thread_id: t(),
            temp_id: temp.into(),
            text: text.into(),
            queued_at: 0,
        }
    }

    #[tokio::test]
    async fn keyed_ordered_stored_first_and_survives_reconnects() {
        let mut o = Outbox::default();
        let (a, _ra) = oneshot::channel();
        let (b, _rb) = oneshot::channel();
        let (c, _rc) = oneshot::channel();
        assert_eq!(o.push(e("x", "one"), Some(a), None), Pushed::New);
        assert_eq!(o.push(e("y", "two"), Some(b), None), Pushed::New);
        assert_eq!(o.push(e("x", "one"), Some(c), None), Pushed::Joined);
        let now = Instant::now();
        assert!(
            o.due(now, usize::MAX).is_empty(),
            "nothing goes out before the store has it"
        );
        o.all_stored();
        let due: Vec<_> = o.due(now, usize::MAX).into_iter().map(|d| d.1).collect();
        assert_eq!(due, vec!["x", "y"]);
        assert!(o.due(now, usize::MAX).is_empty(), "in flight");
        o.connection_lost();
        assert_eq!(o.due(now, usize::MAX).len(), 2, "resent after reconnect");
        let item = o.take(&t(), "x").expect("x");
        assert_eq!(item.waiters.len(), 2);
        assert_eq!(o.len(), 1);
        o.fail_all(&ClientError::Closed);
        assert_eq!(o.len(), 0);
    }

    #[tokio::test]
    async fn a_store_failure_refuses_only_the_unstored() {
        let mut o = Outbox::default();
        o.restore(e("old", "from the store"));
        let (w, rw) = oneshot::channel();
        let (s, rs) = oneshot::channel();
        o.push(e("new", "fresh"), Some(w), Some(s));
        let err = ClientError::Store(crate::store::StoreError::new("disk full"));
        o.drop_unstored(&err);
        assert_eq!(rw.await.expect("reply"), Err(err.clone()));
        assert_eq!(rs.await.expect("reply"), Err(err));
        assert_eq!(o.entries(), vec![e("old", "from the store")]);
    }

    #[tokio::test]
    async fn transient_refusal_waits_for_retry_time() {
        let mut o = Outbox::default();
        o.restore(e("x", "one"));
        let now = Instant::now();
        o.due(now, usize::MAX);
        let item = o.get_mut(&t(), "x").expect("x");
        item.in_flight = false;
        item.retry_at = Some(now + std::time::Duration::from_secs(1));
        assert!(o.due(now, usize::MAX).is_empty());
        assert_eq!(
            o.due(now + std::time::Duration::from_secs(2), usize::MAX)
                .len(),
            1
        );
    }
}
