//! Two engines in one process on one shared `MemBackend`: a stand-in for a cluster.

use std::time::Duration;

use messenger_core::engine::{Engine, EngineConfig, OutboxItem, Session};
use messenger_core::{NodeId, UserId};
use messenger_storage_mem::MemBackend;

/// The next frame of `kind` on `session`, skipping others (bounded in time).
async fn next_of(session: &mut Session, kind: &str) -> String {
    let want = format!(r#""type":"{kind}""#);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match session.outbox.recv().await {
                Some(OutboxItem::Frame(out)) => {
                    let text = String::from_utf8_lossy(&out.frame).into_owned();
                    if text.contains(&want) {
                        return text;
                    }
                }
                other => panic!("session ended: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} frame"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_crosses_nodes_and_offline_member_gets_a_push() {
    let backend = MemBackend::new();
    let (n1, n2) = (NodeId::new(1).unwrap(), NodeId::new(2).unwrap());
    let e1 = Engine::start(EngineConfig::with_node(n1), backend.adapters(n1))
        .await
        .unwrap();
    let e2 = Engine::start(EngineConfig::with_node(n2), backend.adapters(n2))
        .await
        .unwrap();
    let mut alice = e1.connect(UserId::new("alice").unwrap()).await.unwrap();
    let mut bob = e2.connect(UserId::new("bob").unwrap()).await.unwrap();
    let mut push = backend.push().subscribe();

    e1.handle_text(
        &alice.handle,
        r#"{"type":"create_thread","kind":"group","members":["bob","carol"],"title":"t"}"#,
    )
    .await;
    let thread = next_of(&mut alice, "thread").await;
    let id = thread
        .split(r#""thread_id":""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    next_of(&mut bob, "thread").await;

    let send =
        format!(r#"{{"type":"send_message","thread_id":"{id}","temp_id":"x1","text":"hi"}}"#);
    e1.handle_text(&alice.handle, &send).await;
    let sent = next_of(&mut alice, "message_sent").await;
    assert!(sent.contains(r#""seq":1"#), "{sent}");
    let got = next_of(&mut bob, "receive_message").await;
    assert!(
        got.contains(r#""text":"hi""#) && got.contains(r#""sender_id":"alice""#),
        "{got}"
    );

    // carol has no session anywhere: the push sink gets her notification.
    let note = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut push))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((note.user_id.as_str(), note.seq), ("carol", 1));
    assert_eq!(backend.push().recent(), vec![note]);
}

#[tokio::test]
async fn same_node_twice_shares_one_id_generator() {
    let backend = MemBackend::new();
    let n = NodeId::new(5).unwrap();
    let (a, b) = (backend.adapters(n), backend.adapters(n));
    assert!(std::sync::Arc::ptr_eq(&a.ids, &b.ids));
    let x = a.ids.next_id();
    assert!(b.ids.next_id() > x);
}
