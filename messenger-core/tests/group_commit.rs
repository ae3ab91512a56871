//! The engine's group commit: a thread's sends that queue while one store call is in
//! flight go to the store together, in order; sends are pipelined per session, bounded,
//! and each gets exactly one reply.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::{config, engine_with, Client};
use futures::FutureExt;
use messenger_core::model::{Appended, HistoryPage, HistoryQuery, NewMessage, StoredMessage};
use messenger_core::protocol::ServerFrame;
use messenger_core::{Error, MessageId, MessageStore, NodeId, Result, ThreadId, UserId};
use messenger_storage_mem::{MemBackend, MemMessageStore};
use serde_json::json;
use tokio::sync::Semaphore;

/// A message store that records each batch and lets the test hold batches back: a
/// batch waits for a permit of `gate` before it reaches the in-memory store.
struct Gated {
    inner: Arc<MemMessageStore>,
    gate: Arc<Semaphore>,
    batches: Mutex<Vec<Vec<String>>>,
    fail_next: AtomicBool,
    panic_next: AtomicBool,
}

impl Gated {
    fn new(inner: Arc<MemMessageStore>, open: bool) -> Arc<Gated> {
        Arc::new(Gated {
            inner,
            gate: Arc::new(Semaphore::new(if open {
                Semaphore::MAX_PERMITS
            } else {
                0
            })),
            batches: Mutex::new(Vec::new()),
            fail_next: AtomicBool::new(false),
            panic_next: AtomicBool::new(false),
        })
    }

    fn batches(&self) -> Vec<Vec<String>> {
        self.batches.lock().expect("lock").clone()
    }

    /// Waits until `n` batches have reached the store (not necessarily passed the gate).
    async fn wait_batches(&self, n: usize) {
        common::eventually(|| self.batches.lock().expect("lock").len() >= n).await;
    }
}

#[async_trait]
impl MessageStore for Gated {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        self.inner.append(msg).await
    }

    async fn append_batch(
        &self,
        thread: &ThreadId,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>> {
        self.batches
            .lock()
            .expect("lock")
            .push(batch.iter().map(|m| m.temp_id.clone()).collect());
        self.gate.acquire().await.expect("gate open").forget();
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(Error::unavailable("store down for this batch"));
        }
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("the test store panics on this batch");
        }
        self.inner.append_batch(thread, batch).await
    }

    async fn fetch(&self, thread: &ThreadId, q: HistoryQuery) -> Result<HistoryPage> {
        self.inner.fetch(thread, q).await
    }

    async fn get(&self, thread: &ThreadId, id: MessageId) -> Result<Option<StoredMessage>> {
        self.inner.get(thread, id).await
    }

    async fn last_seqs(&self, threads: &[ThreadId]) -> Result<Vec<u64>> {
        self.inner.last_seqs(threads).await
    }

    async fn count_unread(&self, t: &ThreadId, reader: &UserId, after: u64) -> Result<u64> {
        self.inner.count_unread(t, reader, after).await
    }
}

fn node(n: u16) -> NodeId {
    NodeId::new(n).expect("node")
}

async fn gated_engine(
    backend: &MemBackend,
    open: bool,
    cfg: messenger_core::engine::EngineConfig,
) -> (messenger_core::engine::Engine, Arc<Gated>) {
    let store = Gated::new(backend.messages().clone(), open);
    let mut adapters = backend.adapters(node(1));
    adapters.messages = store.clone();
    (engine_with(adapters, cfg).await, store)
}

async fn group(a: &mut Client, others: &[&str]) -> ThreadId {
    a.send(json!({"type":"create_thread","kind":"group","members":others,"title":"t"}))
        .await;
    match a.recv().await {
        ServerFrame::Thread { thread_id, .. } => thread_id,
        f => panic!("expected thread, got {f:?}"),
    }
}

fn send_frame(t: &ThreadId, temp: &str) -> serde_json::Value {
    json!({"type":"send_message","req_id":temp,"thread_id":t,"temp_id":temp,"text":format!("text {temp}")})
}

/// The next `message_sent`: (temp_id, seq).
async fn sent(c: &mut Client) -> (String, u64) {
    match c.recv().await {
        ServerFrame::MessageSent { temp_id, seq, .. } => (temp_id, seq),
        f => panic!("{}: expected message_sent, got {f:?}", c.user),
    }
}

/// The next `message_sent`, skipping the `receive_message`s of others' sends.
async fn sent_skipping_others(c: &mut Client) -> (String, u64) {
    loop {
        match c.recv().await {
            ServerFrame::MessageSent { temp_id, seq, .. } => return (temp_id, seq),
            ServerFrame::ReceiveMessage { .. } => {}
            f => panic!("{}: expected message_sent, got {f:?}", c.user),
        }
    }
}

/// The next `receive_message`: (text, seq).
async fn received(c: &mut Client) -> (String, u64) {
    match c.recv().await {
        ServerFrame::ReceiveMessage { text, seq, .. } => (text, seq),
        f => panic!("{}: expected receive_message, got {f:?}", c.user),
    }
}

#[tokio::test]
async fn sends_queued_during_a_store_call_go_as_one_batch() {
    let backend = MemBackend::new();
    let (e, store) = gated_engine(&backend, false, config(1)).await;
    let mut watcher = Client::connect(&e, "watcher").await;
    let names = ["s0", "s1", "s2", "s3", "s4"];
    let t = group(&mut watcher, &names).await;
    let mut senders = Vec::new();
    for n in names {
        senders.push(Client::connect(&e, n).await);
    }
    // The first send goes to the store at once and is held there.
    senders[0].send(send_frame(&t, "a0")).await;
    store.wait_batches(1).await;
    // These four queue behind it, whatever session they come from.
    for (i, c) in senders.iter().enumerate().skip(1) {
        c.send(send_frame(&t, &format!("a{i}"))).await;
    }
    assert_eq!(
        store.batches().len(),
        1,
        "one store call at a time per thread"
    );
    store.gate.add_permits(2);
    for (i, c) in senders.iter_mut().enumerate() {
        assert_eq!(
            sent_skipping_others(c).await,
            (format!("a{i}"), i as u64 + 1)
        );
    }
    assert_eq!(
        store.batches(),
        vec![
            vec!["a0".to_string()],
            vec!["a1".into(), "a2".into(), "a3".into(), "a4".into()]
        ]
    );
    for i in 0..5u64 {
        assert_eq!(received(&mut watcher).await, (format!("text a{i}"), i + 1));
    }
    let stats = e.stats();
    assert_eq!(stats.store_batches.load(Ordering::Relaxed), 2);
    assert_eq!(stats.store_batch_messages.load(Ordering::Relaxed), 5);
    // An idle thread's next send is not held back waiting for company.
    store.gate.add_permits(1);
    senders[2].send(send_frame(&t, "b")).await;
    assert_eq!(sent_skipping_others(&mut senders[2]).await, ("b".into(), 6));
}

#[tokio::test]
async fn one_session_pipelines_its_sends_and_replies_stay_in_request_order() {
    let backend = MemBackend::new();
    let (e, store) = gated_engine(&backend, false, config(1)).await;
    let mut alice = Client::connect(&e, "alice").await;
    let mut bob = Client::connect(&e, "bob").await;
    let t = group(&mut alice, &["bob"]).await;
    bob.recv().await;
    // handle() returns once a send is queued, so all 40 are admitted while the first
    // store call is held: the session does not wait for each one.
    for i in 0..40 {
        alice.send(send_frame(&t, &format!("m{i:02}"))).await;
    }
    // Any other frame waits until the sends before it are answered: run the ping in a
    // task, it cannot finish while the store holds the batch.
    let ping = {
        let (e, h) = (e.clone(), alice.handle.clone());
        tokio::spawn(async move {
            e.handle_text(&h, r#"{"type":"ping","req_id":"p"}"#).await;
        })
    };
    let mut ping = ping;
    store.wait_batches(1).await;
    assert!(
        (&mut ping).now_or_never().is_none(),
        "the ping waits for the sends"
    );
    store.gate.add_permits(Semaphore::MAX_PERMITS);
    ping.await.expect("ping handled");
    for i in 0..40u64 {
        assert_eq!(sent(&mut alice).await, (format!("m{i:02}"), i + 1));
    }
    assert!(
        matches!(alice.recv().await, ServerFrame::Pong { .. }),
        "the pong comes after every earlier send's message_sent"
    );
    for i in 0..40u64 {
        assert_eq!(received(&mut bob).await, (format!("text m{i:02}"), i + 1));
    }
    let batches = store.batches();
    assert!(
        batches.len() <= 2,
        "queued sends went together: {batches:?}"
    );
    let temps: Vec<String> = batches.concat();
    assert_eq!(
        temps,
        (0..40).map(|i| format!("m{i:02}")).collect::<Vec<_>>()
    );
}

/// A send to a slow thread, then a send to an idle one, then a history request: the
/// replies come in request order, and the history includes both messages.
#[tokio::test]
async fn replies_never_overtake_an_earlier_send() {
    let backend = MemBackend::new();
    let (e, store) = gated_engine(&backend, false, config(1)).await;
    let mut alice = Client::connect(&e, "alice").await;
    let slow = group(&mut alice, &["bob"]).await;
    let fast = group(&mut alice, &["carol"]).await;
    alice.send(send_frame(&slow, "a")).await;
    store.wait_batches(1).await;
    alice.send(send_frame(&fast, "b")).await;
    // "b" goes to the store on its own thread and is answered there, but its reply
    // waits behind "a"'s.
    store.gate.add_permits(1);
    store.wait_batches(2).await;
    store.gate.add_permits(Semaphore::MAX_PERMITS);
    alice
        .send(json!({"type":"fetch_history","req_id":"h","thread_id":slow}))
        .await;
    assert_eq!(sent(&mut alice).await, ("a".into(), 1));
    assert_eq!(sent(&mut alice).await, ("b".into(), 1));
    match alice.recv().await {
        ServerFrame::History { messages, .. } => {
            assert_eq!(messages.len(), 1, "the history sees the send before it");
        }
        f => panic!("expected history, got {f:?}"),
    }
}

/// An error for a send rejected at admission (not a member) also waits its turn.
#[tokio::test]
async fn an_admission_error_keeps_its_place_among_the_replies() {
    let backend = MemBackend::new();
    let (e, store) = gated_engine(&backend, false, config(1)).await;
    let mut alice = Client::connect(&e, "alice").await;
    let mut bob = Client::connect(&e, "bob").await;
    let t = group(&mut alice, &["bob"]).await;
    bob.recv().await;
    let theirs = group(&mut bob, &["carol"]).await;
    alice.send(send_frame(&t, "first")).await;
    store.wait_batches(1).await;
    alice.send(send_frame(&theirs, "not-mine")).await;
    store.gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(sent(&mut alice).await, ("first".into(), 1));
    match alice.recv().await {
        ServerFrame::Error { code, req_id, .. } => {
            assert_eq!(code, "forbidden");
            assert!(req_id.is_some());
        }
        f => panic!("expected the forbidden error second, got {f:?}"),
    }
}

#[tokio::test]
async fn a_session_waits_when_its_sends_in_flight_are_at_the_cap() {
    let backend = MemBackend::new();
    let mut cfg = config(1);
    cfg.max_sends_in_flight = 2;
    let (e, store) = gated_engine(&backend, false, cfg).await;
    let mut alice = Client::connect(&e, "alice").await;
    let t = group(&mut alice, &["bob"]).await;
    alice.send(send_frame(&t, "x1")).await;
    alice.send(send_frame(&t, "x2")).await;
    // The third send waits for a slot: its handle() does not finish.
    let third = {
        let (e, h, f) = (
            e.clone(),
            alice.handle.clone(),
            send_frame(&t, "x3").to_string(),
        );
        tokio::spawn(async move { e.handle_text(&h, &f).await })
    };
    store.wait_batches(1).await;
    let mut third = third;
    assert!(
        (&mut third).now_or_never().is_none(),
        "the third send waits"
    );
    store.gate.add_permits(Semaphore::MAX_PERMITS);
    third.await.expect("third send admitted");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sent(&mut alice).await);
    }
    assert_eq!(
        got,
        vec![("x1".into(), 1), ("x2".into(), 2), ("x3".into(), 3)]
    );
}

#[tokio::test]
async fn a_failed_batch_answers_every_send_and_the_next_batch_goes_through() {
    let backend = MemBackend::new();
    let (e, store) = gated_engine(&backend, false, config(1)).await;
    let mut alice = Client::connect(&e, "alice").await;
    let mut bob = Client::connect(&e, "bob").await;
    let t = group(&mut alice, &["bob"]).await;
    bob.recv().await;
    alice.send(send_frame(&t, "ok0")).await;
    store.wait_batches(1).await;
    for temp in ["f1", "f2", "f3"] {
        alice.send(send_frame(&t, temp)).await;
    }
    store.fail_next.store(false, Ordering::SeqCst);
    store.gate.add_permits(1);
    assert_eq!(sent(&mut alice).await, ("ok0".into(), 1));
    // The second batch (f1..f3) fails as a whole: three `unavailable` errors, each
    // echoing its own req_id, and nothing delivered.
    store.wait_batches(2).await;
    store.fail_next.store(true, Ordering::SeqCst);
    store.gate.add_permits(1);
    let mut failed = Vec::new();
    for _ in 0..3 {
        match alice.recv().await {
            ServerFrame::Error {
                code,
                req_id,
                message,
            } => {
                assert_eq!(code, "unavailable");
                assert!(message.contains("nothing was accepted"), "{message}");
                failed.push(format!("{:?}", req_id.expect("req_id echoed")));
            }
            f => panic!("expected error, got {f:?}"),
        }
    }
    assert_eq!(failed.len(), 3);
    assert_eq!(received(&mut bob).await, ("text ok0".into(), 1));
    bob.assert_silent().await;
    // Retries with the same temp_ids are stored, gapless.
    store.gate.add_permits(Semaphore::MAX_PERMITS);
    for temp in ["f1", "f2", "f3"] {
        alice.send(send_frame(&t, temp)).await;
    }
    let got: Vec<(String, u64)> = vec![
        sent(&mut alice).await,
        sent(&mut alice).await,
        sent(&mut alice).await,
    ];
    assert_eq!(
        got,
        vec![("f1".into(), 2), ("f2".into(), 3), ("f3".into(), 4)]
    );
}

/// A store that panics answers its batch with `internal` errors and leaves the thread
/// usable; the sender's session lives on. The committer starts in the sender's own call
/// (see `enqueue_send`), so this also checks that the panic stays out of it.
#[tokio::test]
async fn a_panicking_store_answers_the_batch_and_the_session_lives_on() {
    let backend = MemBackend::new();
    let (e, store) = gated_engine(&backend, true, config(1)).await;
    let mut alice = Client::connect(&e, "alice").await;
    let mut bob = Client::connect(&e, "bob").await;
    let t = group(&mut alice, &["bob"]).await;
    bob.recv().await;
    store.panic_next.store(true, Ordering::SeqCst);
    alice.send(send_frame(&t, "boom")).await;
    match alice.recv().await {
        ServerFrame::Error { code, .. } => assert_eq!(code, "internal"),
        f => panic!("expected the internal error, got {f:?}"),
    }
    alice.send(send_frame(&t, "after")).await;
    assert_eq!(sent(&mut alice).await, ("after".into(), 1));
    assert_eq!(received(&mut bob).await, ("text after".into(), 1));
}

#[tokio::test]
async fn a_duplicate_inside_one_batch_is_answered_with_the_original() {
    let backend = MemBackend::new();
    let (e, store) = gated_engine(&backend, false, config(1)).await;
    let mut alice = Client::connect(&e, "alice").await;
    let mut bob = Client::connect(&e, "bob").await;
    let t = group(&mut alice, &["bob"]).await;
    bob.recv().await;
    alice.send(send_frame(&t, "first")).await;
    store.wait_batches(1).await;
    alice.send(send_frame(&t, "k")).await;
    alice.send(send_frame(&t, "k")).await;
    alice.send(send_frame(&t, "first")).await;
    store.gate.add_permits(Semaphore::MAX_PERMITS);
    let got: Vec<(String, u64)> = vec![
        sent(&mut alice).await,
        sent(&mut alice).await,
        sent(&mut alice).await,
        sent(&mut alice).await,
    ];
    assert_eq!(
        got,
        vec![
            ("first".into(), 1),
            ("k".into(), 2),
            ("k".into(), 2),
            ("first".into(), 1)
        ]
    );
    assert_eq!(received(&mut bob).await.1, 1);
    assert_eq!(received(&mut bob).await.1, 2);
    bob.assert_silent().await;
    assert_eq!(e.stats().duplicate_sends.load(Ordering::Relaxed), 2);
}

/// Two engines on one backend, several pipelining sessions on each, one thread: the
/// seqs are exactly 1..N, each session's seqs increase in the order it sent, and every
/// member on either node gets every message once, in seq order on the sender's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_commit_one_thread_gapless() {
    let backend = MemBackend::new();
    let e1 = engine_with(backend.adapters(node(1)), config(1)).await;
    let e2 = engine_with(backend.adapters(node(2)), config(2)).await;
    let names: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let mut creator = Client::connect(&e1, "creator").await;
    let others: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = group(&mut creator, &others).await;
    let per_sender = 30usize;
    // Everyone is connected before anyone sends: live delivery reaches who is online.
    let all_connected = Arc::new(tokio::sync::Barrier::new(names.len()));
    let mut tasks = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let e = if i % 2 == 0 { e1.clone() } else { e2.clone() };
        let (n, t, senders) = (n.clone(), t.clone(), names.len());
        let all_connected = all_connected.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&e, &n).await;
            all_connected.wait().await;
            for k in 0..per_sender {
                c.send(send_frame(&t, &format!("{n}-{k:02}"))).await;
            }
            let mut mine = Vec::new();
            let mut seen = Vec::new();
            while mine.len() < per_sender || seen.len() < (senders - 1) * per_sender {
                match c.recv().await {
                    ServerFrame::MessageSent { temp_id, seq, .. } => mine.push((temp_id, seq)),
                    ServerFrame::ReceiveMessage { seq, .. } => seen.push(seq),
                    ServerFrame::Thread { .. } => {}
                    f => panic!("{n}: unexpected {f:?}"),
                }
            }
            (n, mine, seen, i % 2)
        }));
    }
    let total = (names.len() * per_sender) as u64;
    let mut all = Vec::new();
    for task in tasks {
        let (n, mine, seen, _node) = task.await.expect("sender task");
        let temps: Vec<&str> = mine.iter().map(|(t, _)| t.as_str()).collect();
        let want: Vec<String> = (0..per_sender).map(|k| format!("{n}-{k:02}")).collect();
        assert_eq!(temps, want, "{n}: replies in send order");
        assert!(
            mine.windows(2).all(|w| w[0].1 < w[1].1),
            "{n}: its seqs increase in send order"
        );
        let mut distinct = seen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            seen.len(),
            "{n}: each message received once"
        );
        all.extend(mine.into_iter().map(|(_, s)| s));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "seqs are exactly 1..=N"
    );
    // The creator (node 1) sees the whole thread.
    let mut got = Vec::new();
    while got.len() < total as usize {
        if let ServerFrame::ReceiveMessage { seq, .. } = creator.recv().await {
            got.push(seq);
        }
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=total).collect::<Vec<_>>());
    // How many store calls carried the sends depends on timing (a store that answers
    // at once leaves nothing to group on an idle core); grouping itself is checked
    // deterministically with a gated store above. Printed for whoever looks.
    let batches = e1.stats().store_batches.load(Ordering::Relaxed)
        + e2.stats().store_batches.load(Ordering::Relaxed);
    eprintln!("{batches} store calls for {total} sends");
}
