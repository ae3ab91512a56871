//! [`MemMessageStore`]: messages per thread, in memory.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use messenger_core::model::{
    check_batch, Appended, HistoryPage, HistoryQuery, NewMessage, StoredMessage,
};
use messenger_core::{MessageId, MessageStore, Result, ThreadId, UserId};

use messenger_core::sync::{lock, Sharded};

/// Messages per chunk of a thread's log.
const CHUNK: usize = 1024;

/// One thread's messages and idempotency indexes.
///
/// Nothing here grows by copying: the log is a list of fixed-size chunks and the indexes
/// are B-trees. A `Vec` and two hash maps per thread doubled (a copy of every message and
/// a rehash of both indexes) at the same message count in every thread; under an even
/// load (the `pairs` benchmark: 50 threads at the same rate) all of them did so within a
/// few milliseconds, and the server stalled for 20-30 ms (docs/benchmarks.md, issue 17).
#[derive(Default)]
struct ThreadLog {
    /// Message `seq` is `chunks[(seq - 1) / CHUNK][(seq - 1) % CHUNK]`; every chunk but
    /// the last is full.
    chunks: Vec<Vec<StoredMessage>>,
    len: usize,
    /// (hash of (sender, temp_id), seq): the idempotency index within the thread. The
    /// hash (keyed per store) finds the candidates and the log entry confirms one, so
    /// the index holds no copy of the temp id.
    by_temp: BTreeSet<(u64, u64)>,
    /// message id -> seq.
    by_id: BTreeMap<MessageId, u64>,
}

impl ThreadLog {
    fn at(&self, seq: u64) -> Option<&StoredMessage> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn last_seq(&self) -> u64 {
        self.len as u64
    }

    fn push(&mut self, m: StoredMessage) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(m),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(m);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    /// Messages with seq above `after_seq`, in seq order.
    fn after(&self, after_seq: u64) -> impl Iterator<Item = &StoredMessage> {
        let skip = usize::try_from(after_seq).unwrap_or(usize::MAX);
        let (first, offset) = (skip / CHUNK, skip % CHUNK);
        self.chunks
            .iter()
            .skip(first)
            .enumerate()
            .flat_map(move |(j, c)| c[if j == 0 { offset.min(c.len()) } else { 0 }..].iter())
    }
}

/// An in-memory [`MessageStore`].
///
/// Threads live in a 64-way sharded map; each thread has its own lock, so appends to
/// different threads never contend and an append holds only its thread's lock while it
/// assigns the next seq. Nothing is ever evicted: memory grows with the history, which is
/// what an embedded single-process default wants (use a real store for production).
#[derive(Default)]
pub struct MemMessageStore {
    threads: Sharded<ThreadId, Arc<Mutex<ThreadLog>>>,
    /// Keys the threads' idempotency indexes (random per store, so client-chosen temp
    /// ids cannot be aimed at one hash).
    hasher: RandomState,
}

impl std::fmt::Debug for MemMessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemMessageStore").finish_non_exhaustive()
    }
}

impl MemMessageStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn log(&self, thread: &ThreadId) -> Option<Arc<Mutex<ThreadLog>>> {
        self.threads.shard(thread).get(thread).cloned()
    }

    fn log_or_create(&self, thread: &ThreadId) -> Arc<Mutex<ThreadLog>> {
        self.threads
            .shard(thread)
            .entry(thread.clone())
            .or_default()
            .clone()
    }
}

/// The page `query` selects from `log` (see [`HistoryQuery`]).
fn page(log: &ThreadLog, query: HistoryQuery) -> HistoryPage {
    let limit = query.limit.max(1) as u64;
    // The inclusive seq range [lo, hi] the bounds allow.
    let lo = query.after_seq.map_or(1, |a| a.saturating_add(1));
    let hi = match query.before_seq {
        Some(b) => b.saturating_sub(1).min(log.last_seq()),
        None => log.last_seq(),
    };
    if lo > hi {
        return HistoryPage::default();
    }
    let in_range = hi - lo + 1;
    let has_more = in_range > limit;
    let (from, to) = if query.after_seq.is_some() {
        // Paging forward: the oldest `limit` in range.
        (lo, if has_more { lo + limit - 1 } else { hi })
    } else {
        // Latest or paging backward: the newest `limit` in range.
        (if has_more { hi - limit + 1 } else { lo }, hi)
    };
    let messages = (from..=to).filter_map(|s| log.at(s).cloned()).collect();
    HistoryPage { messages, has_more }
}

impl ThreadLog {
    /// The message `sender` appended with `temp_id`, if any; `key` is their hash.
    fn by_temp_id(&self, key: u64, sender: &UserId, temp_id: &str) -> Option<&StoredMessage> {
        self.by_temp
            .range((key, 0)..=(key, u64::MAX))
            .filter_map(|&(_, seq)| self.at(seq))
            .find(|m| m.sender_id == *sender && m.temp_id == temp_id)
    }

    /// Appends one message under the thread's lock (see [`MessageStore::append`]);
    /// `hasher` keys the idempotency index.
    fn append(&mut self, msg: NewMessage, hasher: &RandomState) -> Appended {
        let key = hasher.hash_one((msg.sender_id.as_str(), msg.temp_id.as_str()));
        if let Some(original) = self.by_temp_id(key, &msg.sender_id, &msg.temp_id) {
            return Appended {
                message: original.clone(),
                duplicate: true,
            };
        }
        let seq = self.last_seq() + 1;
        let stored = StoredMessage {
            thread_id: msg.thread_id,
            seq,
            message_id: msg.message_id,
            sender_id: msg.sender_id,
            temp_id: msg.temp_id,
            text: msg.text,
            sent_at: msg.sent_at,
        };
        self.by_temp.insert((key, seq));
        self.by_id.insert(stored.message_id, seq);
        self.push(stored.clone());
        Appended {
            message: stored,
            duplicate: false,
        }
    }
}

impl MemMessageStore {
    /// Appends `batch` (leaving it empty) under one lock of its thread: its seqs are
    /// consecutive and nothing interleaves.
    fn append_now(&self, thread: &ThreadId, batch: &mut Vec<NewMessage>) -> Result<Vec<Appended>> {
        check_batch(thread, batch)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let log = self.log_or_create(thread);
        let mut log = lock(&log);
        Ok(batch
            .drain(..)
            .map(|m| log.append(m, &self.hasher))
            .collect())
    }
}

#[async_trait]
impl MessageStore for MemMessageStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        let log = self.log_or_create(&msg.thread_id);
        let mut log = lock(&log);
        Ok(log.append(msg, &self.hasher))
    }

    async fn append_batch(
        &self,
        thread: &ThreadId,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>> {
        let mut batch = batch;
        self.append_now(thread, &mut batch)
    }

    fn append_batch_now(
        &self,
        thread: &ThreadId,
        batch: &mut Vec<NewMessage>,
    ) -> Option<Result<Vec<Appended>>> {
        Some(self.append_now(thread, batch))
    }

    async fn fetch(&self, thread: &ThreadId, query: HistoryQuery) -> Result<HistoryPage> {
        Ok(match self.log(thread) {
            Some(log) => page(&lock(&log), query),
            None => HistoryPage::default(),
        })
    }

    async fn get(&self, thread: &ThreadId, message_id: MessageId) -> Result<Option<StoredMessage>> {
        let Some(log) = self.log(thread) else {
            return Ok(None);
        };
        let log = lock(&log);
        Ok(log
            .by_id
            .get(&message_id)
            .and_then(|&seq| log.at(seq))
            .cloned())
    }

    async fn last_seqs(&self, threads: &[ThreadId]) -> Result<Vec<u64>> {
        Ok(threads
            .iter()
            .map(|t| self.log(t).map_or(0, |log| lock(&log).last_seq()))
            .collect())
    }

    async fn count_unread(
        &self,
        thread: &ThreadId,
        reader: &UserId,
        after_seq: u64,
    ) -> Result<u64> {
        let Some(log) = self.log(thread) else {
            return Ok(0);
        };
        let log = lock(&log);
        Ok(log
            .after(after_seq)
            .filter(|m| &m.sender_id != reader)
            .count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(thread: &ThreadId, sender: &str, n: u64) -> NewMessage {
        NewMessage {
            thread_id: thread.clone(),
            message_id: MessageId(1_000 + n),
            sender_id: UserId::new(sender).expect("user"),
            temp_id: format!("t{n}"),
            text: format!("m{n}"),
            sent_at: 1,
        }
    }

    /// Reads and idempotency across the log's chunk boundaries.
    #[tokio::test]
    async fn a_log_longer_than_a_chunk_reads_back_in_order() {
        let store = MemMessageStore::new();
        let t = ThreadId::new("g:big").expect("thread");
        let n = (2 * CHUNK + 5) as u64;
        let batch: Vec<NewMessage> = (1..=n)
            .map(|i| msg(&t, if i % 2 == 0 { "alice" } else { "bob" }, i))
            .collect();
        let appended = store.append_batch(&t, batch).await.expect("append");
        assert!(appended.iter().all(|a| !a.duplicate));
        assert_eq!(
            store
                .last_seqs(std::slice::from_ref(&t))
                .await
                .expect("last"),
            [n]
        );

        let around = CHUNK as u64 - 2;
        let page = store
            .fetch(
                &t,
                HistoryQuery {
                    before_seq: None,
                    after_seq: Some(around),
                    limit: 5,
                },
            )
            .await
            .expect("fetch");
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (around + 1..=around + 5).collect::<Vec<_>>());
        assert!(page
            .messages
            .iter()
            .all(|m| m.text == format!("m{}", m.seq)));

        let last = store.get(&t, MessageId(1_000 + n)).await.expect("get");
        assert_eq!(last.map(|m| m.seq), Some(n));
        let again = store.append(msg(&t, "bob", 1)).await.expect("dup");
        assert!(again.duplicate);
        assert_eq!(again.message.seq, 1);

        let alice = UserId::new("alice").expect("user");
        // bob's messages (odd seqs) after each point, as counted unread by alice.
        for after in [0, CHUNK as u64 - 1, CHUNK as u64, 2 * CHUNK as u64 + 1, n] {
            let expected = (after + 1..=n).filter(|s| s % 2 == 1).count() as u64;
            let got = store.count_unread(&t, &alice, after).await.expect("count");
            assert_eq!(got, expected, "after {after}");
        }
    }
}
