//! The local outbox: sends not yet confirmed by `message_sent`, keyed by
//! (thread, temp id), in the order the app made them. It outlives connections: every
//! (re)connect resends all of it with the same temp ids, and the server's idempotent
//! send answers a resend of an already stored message with the original id and seq.

use std::collections::{BTreeMap, HashMap};

use messenger_core::ThreadId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ClientError;
use crate::event::Sent;

/// Where a send's result goes.
pub(crate) type SendReply = oneshot::Sender<Result<Sent, ClientError>>;

#[derive(Debug)]
pub(crate) struct Item {
    pub thread_id: ThreadId,
    pub temp_id: String,
    pub text: String,
    pub waiters: Vec<SendReply>,
    /// Written on the current connection and not answered yet.
    pub in_flight: bool,
    /// Refused as transient (`rate_limited`, `unavailable`): resend at this time.
    pub retry_at: Option<Instant>,
}

type Key = (ThreadId, String);

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    next: u64,
    items: BTreeMap<u64, Item>,
    index: HashMap<Key, u64>,
}

impl Outbox {
    /// Adds a send. Returns false when the same (thread, temp id) is already pending:
    /// the waiter then joins it and nothing new should be written.
    pub fn push(
        &mut self,
        thread_id: ThreadId,
        temp_id: String,
        text: String,
        w: SendReply,
    ) -> bool {
        let key = (thread_id, temp_id);
        if let Some(item) = self.index.get(&key).and_then(|n| self.items.get_mut(n)) {
            item.waiters.push(w);
            return false;
        }
        let n = self.next;
        self.next += 1;
        self.items.insert(
            n,
            Item {
                thread_id: key.0.clone(),
                temp_id: key.1.clone(),
                text,
                waiters: vec![w],
                in_flight: false,
                retry_at: None,
            },
        );
        self.index.insert(key, n);
        true
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

    /// Every item that should be written now, oldest first, marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<(ThreadId, String, String)> {
        self.items
            .values_mut()
            .filter(|i| {
                !i.in_flight
                    && match i.retry_at {
                        None => true,
                        Some(t) => t <= now,
                    }
            })
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

    /// Fails and removes every item (the client is stopping).
    pub fn fail_all(&mut self, err: &ClientError) {
        self.index.clear();
        for (_, item) in std::mem::take(&mut self.items) {
            for w in item.waiters {
                let _ = w.send(Err(err.clone()));
            }
        }
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

    #[tokio::test]
    async fn keyed_ordered_and_survives_reconnects() {
        let mut o = Outbox::default();
        let (a, _ra) = oneshot::channel();
        let (b, _rb) = oneshot::channel();
        let (c, _rc) = oneshot::channel();
        assert!(o.push(t(), "x".into(), "one".into(), a));
        assert!(o.push(t(), "y".into(), "two".into(), b));
        assert!(!o.push(t(), "x".into(), "one".into(), c), "same key joins");
        let now = Instant::now();
        let due: Vec<_> = o.due(now).into_iter().map(|d| d.1).collect();
        assert_eq!(due, vec!["x", "y"]);
        assert!(o.due(now).is_empty(), "in flight");
        o.connection_lost();
        assert_eq!(o.due(now).len(), 2, "resent after reconnect");
        let item = o.take(&t(), "x").expect("x");
        assert_eq!(item.waiters.len(), 2);
        assert_eq!(o.len(), 1);
        o.fail_all(&ClientError::Closed);
        assert_eq!(o.len(), 0);
    }

    #[tokio::test]
    async fn transient_refusal_waits_for_retry_time() {
        let mut o = Outbox::default();
        let (a, _ra) = oneshot::channel();
        o.push(t(), "x".into(), "one".into(), a);
        let now = Instant::now();
        o.due(now);
        let item = o.get_mut(&t(), "x").expect("x");
        item.in_flight = false;
        item.retry_at = Some(now + std::time::Duration::from_secs(1));
        assert!(o.due(now).is_empty());
        assert_eq!(o.due(now + std::time::Duration::from_secs(2)).len(), 1);
    }
}
