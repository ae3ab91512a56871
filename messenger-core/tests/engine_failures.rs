//! The engine's failure paths, with mockall mocks standing in for a broken backend.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, engine_with, Client};
use futures::StreamExt;
use messenger_core::engine::Engine;
use messenger_core::protocol::ServerFrame;
use messenger_core::{
    Error, ErrorKind, MockMessageStore, MockPushSink, MockRelay, MockSessionDirectory,
    MockThreadStore, NodeId,
};
use messenger_storage_mem::MemBackend;
use serde_json::json;

fn node(n: u16) -> NodeId {
    NodeId::new(n).expect("node")
}

async fn thread_between(a: &mut Client, others: &[&str]) -> String {
    a.send(json!({"type":"create_thread","kind":"group","members":others}))
        .await;
    match a.recv().await {
        ServerFrame::Thread { thread_id, .. } => thread_id.to_string(),
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn unavailable_store_gives_unavailable_and_delivers_nothing() {
    let backend = MemBackend::new();
    let mut adapters = backend.adapters(node(1));
    let mut store = MockMessageStore::new();
    store.expect_append_batch_now().returning(|_, _| None);
    store
        .expect_append_batch()
        .returning(|_, _| Err(Error::unavailable("message store down")));
    store
        .expect_fetch()
        .returning(|_, _| Err(Error::unavailable("message store down")));
    adapters.messages = Arc::new(store);
    let e = engine_with(adapters, config(1)).await;
    let mut a = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    let t = thread_between(&mut a, &["bob"]).await;
    b.recv().await; // thread
    a.send(json!({"type":"send_message","req_id":9,"thread_id":t,"temp_id":"x","text":"lost?"}))
        .await;
    match a.recv().await {
        ServerFrame::Error {
            code,
            req_id,
            message,
        } => {
            assert_eq!(code, "unavailable");
            assert!(req_id.is_some());
            assert!(message.contains("nothing was accepted"), "{message}");
        }
        f => panic!("{f:?}"),
    }
    b.assert_silent().await;
    a.expect_error(json!({"type":"fetch_history","thread_id":t}), "unavailable")
        .await;
    assert_eq!(backend.push().total(), 0);
}

#[tokio::test]
async fn unavailable_thread_store_refuses_with_unavailable() {
    let backend = MemBackend::new();
    let mut adapters = backend.adapters(node(1));
    let mut threads = MockThreadStore::new();
    threads.expect_get_thread_now().returning(|_| None);
    threads
        .expect_get_thread()
        .returning(|_| Err(Error::unavailable("thread store down")));
    adapters.threads = Arc::new(threads);
    let e = engine_with(adapters, config(1)).await;
    let mut a = Client::connect(&e, "alice").await;
    a.expect_error(
        json!({"type":"send_message","thread_id":"g:1","temp_id":"x","text":"y"}),
        "unavailable",
    )
    .await;
    a.expect_error(
        json!({"type":"typing","thread_id":"g:1","typing":true}),
        "unavailable",
    )
    .await;
}

#[tokio::test]
async fn failing_relay_loses_nothing() {
    let backend = MemBackend::new();
    let mut adapters = backend.adapters(node(1));
    let mut relay = MockRelay::new();
    relay
        .expect_send()
        .returning(|_, _| Err(Error::unavailable("relay down")));
    relay
        .expect_subscribe()
        .returning(|_| Ok(futures::stream::pending().boxed()));
    adapters.relay = Arc::new(relay);
    let n1 = engine_with(adapters, config(1)).await;
    let n2 = engine_with(backend.adapters(node(2)), config(2)).await;
    let mut a = Client::connect(&n1, "alice").await;
    let mut a_local = Client::connect(&n1, "carol").await;
    let mut b = Client::connect(&n2, "bob").await;
    let t = thread_between(&mut a, &["bob", "carol"]).await;
    a_local.recv().await;
    a.send(json!({"type":"send_message","thread_id":t,"temp_id":"x","text":"stored"}))
        .await;
    let mid = match a.recv().await {
        ServerFrame::MessageSent { message_id, .. } => message_id,
        f => panic!("message_sent despite the relay: {f:?}"),
    };
    // Local members still get it live.
    assert!(matches!(
        a_local.recv().await,
        ServerFrame::ReceiveMessage { .. }
    ));
    // The remote member missed the live copy (and the thread frame) but catch-up has it.
    b.assert_silent().await;
    b.send(json!({"type":"list_threads"})).await;
    match b.recv().await {
        ServerFrame::Threads { threads, .. } => assert_eq!(threads[0].last_seq, 1),
        f => panic!("{f:?}"),
    }
    b.send(json!({"type":"fetch_history","thread_id":t,"after_seq":0}))
        .await;
    match b.recv().await {
        ServerFrame::History { messages, .. } => {
            assert_eq!(messages.len(), 1);
            assert_eq!(messages[0].message_id, mid);
            assert_eq!(messages[0].text, "stored");
        }
        f => panic!("{f:?}"),
    }
    assert!(
        n1.stats()
            .relay_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test]
async fn failing_push_does_not_block_delivery() {
    let backend = MemBackend::new();
    let mut adapters = backend.adapters(node(1));
    let mut push = MockPushSink::new();
    push.expect_push()
        .returning(|_| Err(Error::unavailable("APNs down")));
    adapters.push = Arc::new(push);
    let e = engine_with(adapters, config(1)).await;
    let mut a = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    let t = thread_between(&mut a, &["bob", "offline1", "offline2"]).await;
    b.recv().await;
    for i in 0..3 {
        a.send(json!({"type":"send_message","thread_id":t,"temp_id":format!("{i}"),"text":"x"}))
            .await;
        assert!(matches!(a.recv().await, ServerFrame::MessageSent { .. }));
        assert!(matches!(b.recv().await, ServerFrame::ReceiveMessage { seq, .. } if seq == i + 1));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        e.stats()
            .push_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
}

#[tokio::test]
async fn directory_down_refuses_the_connection() {
    let backend = MemBackend::new();
    let mut adapters = backend.adapters(node(1));
    let mut dir = MockSessionDirectory::new();
    dir.expect_register()
        .returning(|_| Err(Error::unavailable("redis down")));
    adapters.directory = Arc::new(dir);
    let e: Engine = engine_with(adapters, config(1)).await;
    let err = e
        .connect(common::uid("alice"))
        .await
        .err()
        .expect("connect must fail");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_transient());
    assert_eq!(e.local_sessions(), 0);
}

/// A relay that fails every send while `down` is set, over a working one.
struct SwitchedRelay {
    inner: Arc<dyn messenger_core::Relay>,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl messenger_core::Relay for SwitchedRelay {
    async fn send(
        &self,
        node: NodeId,
        envelope: messenger_core::model::Envelope,
    ) -> messenger_core::Result<()> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::unavailable("relay down"));
        }
        self.inner.send(node, envelope).await
    }

    async fn subscribe(
        &self,
        node: NodeId,
    ) -> messenger_core::Result<futures::stream::BoxStream<'static, messenger_core::model::Envelope>>
    {
        self.inner.subscribe(node).await
    }
}

/// Two nodes on one in-memory backend, node 1 (with `config`) behind a relay that is
/// down; alice on node 1 has created a thread with bob on node 2. Returns the relay's
/// switch, node 1, alice, bob and the thread.
async fn relay_down_pair(
    config1: messenger_core::engine::EngineConfig,
) -> (Arc<SwitchedRelay>, Engine, Client, Client, String) {
    let backend = MemBackend::new();
    let mut adapters = backend.adapters(node(1));
    let relay = Arc::new(SwitchedRelay {
        inner: adapters.relay.clone(),
        down: true.into(),
    });
    adapters.relay = relay.clone();
    let n1 = engine_with(adapters, config1).await;
    let n2 = engine_with(backend.adapters(node(2)), config(2)).await;
    let mut a = Client::connect(&n1, "alice").await;
    let b = Client::connect(&n2, "bob").await;
    let t = thread_between(&mut a, &["bob"]).await;
    (relay, n1, a, b, t)
}

/// What a relay outage kept back reaches the other node live once the relay is back:
/// the member there gets the thread and the message without a reconnect.
#[tokio::test]
async fn envelopes_lost_to_a_relay_outage_are_sent_again_when_it_is_back() {
    use std::sync::atomic::Ordering::Relaxed;

    let (relay, n1, mut a, mut b, t) = relay_down_pair(config(1)).await;
    a.send(json!({"type":"send_message","thread_id":t,"temp_id":"x","text":"kept"}))
        .await;
    let seq = match a.recv().await {
        ServerFrame::MessageSent { seq, .. } => seq,
        f => panic!("{f:?}"),
    };
    assert!(
        n1.stats().relay_failures.load(Relaxed) >= 2,
        "thread + message"
    );
    b.assert_silent().await;

    relay.down.store(false, Relaxed);
    // The retry task's backoff (at most 2 s) plus a loaded machine: a generous bound.
    let mut got = Vec::new();
    while got.len() < 2 {
        match b.next_item(Duration::from_secs(30)).await {
            Some(messenger_core::engine::OutboxItem::Frame(out)) => {
                let text = std::str::from_utf8(&out.frame).expect("utf-8");
                got.push(ServerFrame::decode(text).expect("frame"));
            }
            other => panic!("bob: {other:?} instead of the kept envelopes"),
        }
    }
    assert!(
        matches!(&got[0], ServerFrame::Thread { thread_id, .. } if thread_id.to_string() == t),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], ServerFrame::ReceiveMessage { seq: s, text, .. } if *s == seq && text == "kept"),
        "{got:?}"
    );
    assert_eq!(n1.stats().relay_retried.load(Relaxed), 2);
    assert_eq!(n1.stats().relay_dropped.load(Relaxed), 0);
}

/// Past `relay_retry_capacity` the oldest kept envelopes are given up and counted.
#[tokio::test]
async fn kept_envelopes_past_the_capacity_are_dropped_oldest_first() {
    use std::sync::atomic::Ordering::Relaxed;

    let mut c = config(1);
    c.relay_retry_capacity = 1;
    let (relay, n1, mut a, mut b, t) = relay_down_pair(c).await;
    a.send(json!({"type":"send_message","thread_id":t,"temp_id":"y","text":"the newest"}))
        .await;
    assert!(matches!(a.recv().await, ServerFrame::MessageSent { .. }));
    // The thread frame was dropped for the message: only the newest is kept.
    assert_eq!(n1.stats().relay_dropped.load(Relaxed), 1);
    relay.down.store(false, Relaxed);
    match b.next_item(Duration::from_secs(30)).await {
        Some(messenger_core::engine::OutboxItem::Frame(out)) => {
            let text = std::str::from_utf8(&out.frame).expect("utf-8");
            assert!(
                matches!(ServerFrame::decode(text).expect("frame"), ServerFrame::ReceiveMessage { text, .. } if text == "the newest"),
                "{text}"
            );
        }
        other => panic!("bob: {other:?}"),
    }
}
