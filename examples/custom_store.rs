//! An integrator's own `MessageStore`, proven by messenger-core's conformance suite and
//! then plugged into a server.
//!
//! Run the suite as a program:   `cargo run -p examples --example custom_store`
//! Or as tests, one per check:   `cargo test -p examples --example custom_store`
//!
//! `VecStore` keeps each thread as a `Vec` behind one mutex: simple on purpose. A real
//! adapter would talk to its database here and map its errors into
//! `messenger_core::Error` (`Error::unavailable` for a store that is down, so clients
//! know nothing was accepted). It keeps the default of `MessageStore::append_batch_now`
//! (`None`: the engine awaits `append_batch`), as a store that does I/O should; a store
//! with no I/O may answer it in place (see messenger-storage-mem), and the conformance
//! suite checks it either way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use messenger_core::model::{Appended, HistoryPage, HistoryQuery, NewMessage, StoredMessage};
use messenger_core::testkit::message_store as checks;
use messenger_core::{MessageId, MessageStore, Result, ThreadId, UserId};

/// A `MessageStore` over plain vectors.
#[derive(Default)]
pub struct VecStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each thread's messages; index `i` holds seq `i + 1`.
    threads: HashMap<ThreadId, Vec<StoredMessage>>,
    /// (thread, sender, temp id) -> seq, for idempotent appends.
    by_temp_id: HashMap<(ThreadId, UserId, String), u64>,
}

impl VecStore {
    /// An empty store.
    pub fn new() -> Self {
        VecStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written message behind
        // (every write is a single push), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// One append, under the store's lock.
    fn append(&mut self, msg: NewMessage) -> Result<Appended> {
        let g = self;
        let key = (
            msg.thread_id.clone(),
            msg.sender_id.clone(),
            msg.temp_id.clone(),
        );
        if let Some(&seq) = g.by_temp_id.get(&key) {
            let original = g
                .threads
                .get(&msg.thread_id)
                .and_then(|t| t.get((seq - 1) as usize))
                .cloned()
                .ok_or_else(|| messenger_core::Error::internal("temp id index out of step"))?;
            return Ok(Appended {
                message: original,
                duplicate: true,
            });
        }
        let thread = g.threads.entry(msg.thread_id.clone()).or_default();
        let seq = thread.len() as u64 + 1;
        let stored = StoredMessage {
            thread_id: msg.thread_id,
            seq,
            message_id: msg.message_id,
            sender_id: msg.sender_id,
            temp_id: msg.temp_id,
            text: msg.text,
            sent_at: msg.sent_at,
        };
        thread.push(stored.clone());
        g.by_temp_id.insert(key, seq);
        Ok(Appended {
            message: stored,
            duplicate: false,
        })
    }
}

#[async_trait]
impl MessageStore for VecStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        self.lock().append(msg)
    }

    async fn append_batch(
        &self,
        thread: &ThreadId,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>> {
        messenger_core::model::check_batch(thread, &batch)?;
        // The whole batch under one lock: consecutive seqs, nothing in between. A
        // database adapter would use one transaction here.
        let mut g = self.lock();
        batch.into_iter().map(|m| g.append(m)).collect()
    }

    async fn fetch(&self, thread: &ThreadId, q: HistoryQuery) -> Result<HistoryPage> {
        let g = self.lock();
        let all = g.threads.get(thread).map(Vec::as_slice).unwrap_or(&[]);
        let limit = q.limit.max(1);
        let in_range: Vec<&StoredMessage> = all
            .iter()
            .filter(|m| q.after_seq.is_none_or(|a| m.seq > a))
            .filter(|m| q.before_seq.is_none_or(|b| m.seq < b))
            .collect();
        let (page, has_more) = if q.after_seq.is_some() {
            // The oldest `limit` in range; more means newer ones remain.
            let page = in_range.iter().take(limit);
            (page.map(|m| (*m).clone()).collect(), in_range.len() > limit)
        } else {
            // The newest `limit` in range; more means older ones remain.
            let skip = in_range.len().saturating_sub(limit);
            let page = in_range.iter().skip(skip);
            (page.map(|m| (*m).clone()).collect(), skip > 0)
        };
        Ok(HistoryPage {
            messages: page,
            has_more,
        })
    }

    async fn get(&self, thread: &ThreadId, id: MessageId) -> Result<Option<StoredMessage>> {
        let g = self.lock();
        Ok(g.threads
            .get(thread)
            .and_then(|t| t.iter().find(|m| m.message_id == id).cloned()))
    }

    async fn last_seqs(&self, threads: &[ThreadId]) -> Result<Vec<u64>> {
        let g = self.lock();
        Ok(threads
            .iter()
            .map(|t| g.threads.get(t).map_or(0, |v| v.len() as u64))
            .collect())
    }

    async fn count_unread(&self, thread: &ThreadId, reader: &UserId, after: u64) -> Result<u64> {
        let g = self.lock();
        Ok(g.threads.get(thread).map_or(0, |t| {
            t.iter()
                .filter(|m| m.seq > after && &m.sender_id != reader)
                .count() as u64
        }))
    }
}

fn store() -> Arc<dyn MessageStore> {
    Arc::new(VecStore::new())
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // 1. The conformance suite, check by check.
    // The same list `message_store_tests!` runs, exported once by the testkit.
    let all = checks::all();
    for (name, check) in all {
        // A failing check panics; run it in a task so the report names it.
        tokio::spawn(messenger_core::testkit::bounded(name, check(store())))
            .await
            .map_err(|e| format!("{name} failed: {e}"))?;
        println!("ok   message_store::{name}");
    }

    // 2. The store behind a real server, used through the client SDK.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    let server = messenger_server::Server::builder()
        .message_store(store())
        .build()
        .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let (alice, _events) = messenger_client::Client::connect(url, "alice").await?;
    let thread = alice.create_direct(&UserId::new("bob")?).await?;
    let sent = alice
        .send(&thread.thread_id, "stored in a VecStore")
        .await?;
    println!(
        "a server on VecStore accepted message {} at seq {}",
        sent.message_id, sent.seq
    );
    alice.close().await;
    let _ = stop.send(());
    serving.await??;
    Ok(())
}

// The same suite as `cargo test` tests: one line.
#[cfg(test)]
mod conformance {
    use super::*;
    messenger_core::message_store_tests!(|| async {
        Arc::new(VecStore::new()) as Arc<dyn MessageStore>
    });
}
