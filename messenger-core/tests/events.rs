//! The event log hook: what the engine publishes to its `EventSink`, and when.

mod common;

use std::sync::{Arc, Mutex};

use common::{config, engine_with, Client};
use messenger_core::events::{Event, EventBody};
use messenger_core::model::{AckStatus, ThreadKind};
use messenger_core::protocol::ServerFrame;
use messenger_core::{EventSink, NodeId, ThreadId};
use messenger_storage_mem::MemBackend;
use serde_json::json;

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl EventSink for Recorder {
    fn publish(&self, event: Event) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }
}

impl Recorder {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn setup(single_node: bool) -> (messenger_core::engine::Engine, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let mut adapters = MemBackend::new().adapters(NodeId::new(1).expect("node"));
    adapters.events = rec.clone();
    let mut cfg = config(1);
    cfg.single_node = single_node;
    (engine_with(adapters, cfg).await, rec)
}

fn names(users: &[messenger_core::UserId]) -> Vec<&str> {
    users.iter().map(|u| u.as_str()).collect()
}

async fn every_durable_change_is_published_once(single_node: bool) {
    let (e, rec) = setup(single_node).await;
    let mut alice = Client::connect(&e, "alice").await;
    let mut bob = Client::connect(&e, "bob").await;

    alice
        .send(json!({"type":"create_thread","kind":"group","members":["bob","carol"],"title":"t"}))
        .await;
    let thread: ThreadId = match alice.recv().await {
        ServerFrame::Thread { thread_id, .. } => thread_id,
        f => panic!("expected thread, got {f:?}"),
    };
    let _ = bob.recv().await; // thread
    let ev = rec.take();
    assert_eq!(ev.len(), 1, "{ev:?}");
    match &ev[0].body {
        EventBody::ThreadCreated(c) => {
            assert_eq!(c.thread_id, thread);
            assert_eq!(c.kind, ThreadKind::Group);
            assert_eq!(c.by.as_str(), "alice");
            assert_eq!(names(&c.changed), ["alice", "bob", "carol"]);
            assert_eq!(c.title.as_deref(), Some("t"));
        }
        b => panic!("expected thread.created, got {b:?}"),
    }
    assert_eq!(ev[0].node.get(), 1);

    // A message: published after it is stored, carol (no session) is offline.
    let send = json!({"type":"send_message","thread_id":thread,"temp_id":"t1","text":"hi"});
    alice.send(send.clone()).await;
    let (message_id, seq) = match alice.recv().await {
        ServerFrame::MessageSent {
            message_id, seq, ..
        } => (message_id, seq),
        f => panic!("expected message_sent, got {f:?}"),
    };
    let ev = rec.take();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        ev[0].id.get(),
        message_id.get(),
        "a message's event id is its id"
    );
    assert_eq!(ev[0].thread_id(), &thread);
    match &ev[0].body {
        EventBody::MessageCreated(m) => {
            assert_eq!((m.message_id, m.seq), (message_id, seq));
            assert_eq!(m.sender_id.as_str(), "alice");
            assert_eq!(m.text, "hi");
            assert_eq!(m.member_count, 3);
            assert!(m.offline_known);
            assert_eq!(names(&m.offline), ["carol"]);
        }
        b => panic!("expected message.created, got {b:?}"),
    }

    // A duplicate send stores nothing and publishes nothing.
    alice.send(send).await;
    let _ = alice.recv().await;
    assert!(rec.take().is_empty(), "a duplicate send published an event");

    // A receipt that moves a watermark is published; one that does not is not.
    let _ = bob.recv().await; // receive_message
    let ack = json!({"type":"message_ack","thread_id":thread,"message_id":message_id.to_string(),"status":"READ"});
    bob.send(ack.clone()).await;
    let _ = alice.recv().await; // message_ack
    let ev = rec.take();
    assert_eq!(ev.len(), 1, "{ev:?}");
    match &ev[0].body {
        EventBody::ReceiptUpdated(r) => {
            assert_eq!(r.user_id.as_str(), "bob");
            assert_eq!(r.sender_id.as_str(), "alice");
            assert_eq!(
                (r.status, r.seq, r.message_id),
                (AckStatus::Read, seq, message_id)
            );
        }
        b => panic!("expected receipt.updated, got {b:?}"),
    }
    bob.send(ack).await;
    bob.send(json!({"type":"ping","req_id":1})).await;
    let _ = bob.recv().await; // pong
    assert!(
        rec.take().is_empty(),
        "an ack that moved nothing was published"
    );

    // Membership: an add, then a leave.
    alice
        .send(json!({"type":"add_members","thread_id":thread,"members":["dave","bob"]}))
        .await;
    let _ = alice.recv().await;
    let _ = bob.recv().await;
    bob.send(json!({"type":"leave_thread","thread_id":thread}))
        .await;
    let _ = bob.recv().await;
    let ev = rec.take();
    assert_eq!(ev.len(), 2, "{ev:?}");
    match (&ev[0].body, &ev[1].body) {
        (EventBody::MembersAdded(a), EventBody::MemberLeft(l)) => {
            assert_eq!(names(&a.changed), ["dave"]);
            assert_eq!(a.by.as_str(), "alice");
            assert_eq!(names(&l.changed), ["bob"]);
            assert!(!l.members.iter().any(|u| u.as_str() == "bob"));
        }
        b => panic!("expected members_added then member_left, got {b:?}"),
    }
    assert_ne!(ev[0].id, ev[1].id, "every event has its own id");

    // Refused requests publish nothing.
    bob.send(json!({"type":"send_message","thread_id":thread,"temp_id":"x","text":"no"}))
        .await;
    let _ = bob.recv().await; // error forbidden
    assert!(rec.take().is_empty());
    assert_eq!(
        e.stats()
            .events_published
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

#[tokio::test]
async fn every_durable_change_is_published_once_in_cluster_mode() {
    every_durable_change_is_published_once(false).await;
}

#[tokio::test]
async fn every_durable_change_is_published_once_on_a_single_node() {
    every_durable_change_is_published_once(true).await;
}

/// In a cluster a large thread's messages are not looked up member by member: only
/// the message that takes the thread's push turn carries the offline members; the
/// others say `offline_known: false` (documented on `MessageCreated::offline_known`).
#[tokio::test]
async fn large_threads_in_a_cluster_carry_offline_members_once_per_push_turn() {
    let rec = Arc::new(Recorder::default());
    let mut adapters = MemBackend::new().adapters(NodeId::new(1).expect("node"));
    adapters.events = rec.clone();
    let mut cfg = config(1);
    cfg.large_group_threshold = 2;
    let e = engine_with(adapters, cfg).await;
    let mut alice = Client::connect(&e, "alice").await;
    let _bob = Client::connect(&e, "bob").await;
    alice
        .send(json!({"type":"create_thread","kind":"group","members":["bob","carol","dave"]}))
        .await;
    let thread: ThreadId = match alice.recv().await {
        ServerFrame::Thread { thread_id, .. } => thread_id,
        f => panic!("expected thread, got {f:?}"),
    };
    rec.take();
    let mut offline = Vec::new();
    for i in 0..3 {
        alice
            .send(json!({"type":"send_message","thread_id":thread,"temp_id":format!("t{i}"),"text":"hi"}))
            .await;
        match alice.recv().await {
            ServerFrame::MessageSent { .. } => {}
            f => panic!("expected message_sent, got {f:?}"),
        }
        common::eventually(|| {
            let ev = rec.take();
            for x in &ev {
                if let EventBody::MessageCreated(m) = &x.body {
                    offline.push((m.seq, m.offline_known, m.offline.clone()));
                }
            }
            offline.len() == i + 1
        })
        .await;
    }
    let known: Vec<(u64, bool, Vec<&str>)> =
        offline.iter().map(|(s, k, o)| (*s, *k, names(o))).collect();
    assert_eq!(
        known,
        [
            (1, true, vec!["carol", "dave"]),
            (2, false, vec![]),
            (3, false, vec![])
        ]
    );
}

#[test]
fn event_json_has_a_stable_shape() {
    let e: Event = serde_json::from_value(json!({
        "id": "7",
        "created_at": 1_700_000_000_000u64,
        "node": 3,
        "type": "message.created",
        "data": {
            "thread_id": "d:alice:bob", "thread_kind": "direct", "message_id": "42",
            "seq": 5, "sender_id": "alice", "text": "hi", "sent_at": 1_700_000_000_000u64,
            "member_count": 2, "offline": ["bob"], "offline_known": true
        }
    }))
    .expect("decodes");
    assert_eq!(e.id.get(), 7);
    assert_eq!(e.type_name(), "message.created");
    let v = serde_json::to_value(&e).expect("encodes");
    assert_eq!(v["id"], "7");
    assert_eq!(v["type"], "message.created");
    assert_eq!(v["data"]["message_id"], "42");
    assert_eq!(v["data"]["offline"], json!(["bob"]));
}

/// Every event type encodes to exactly the JSON `docs/webhooks.md` shows (the hand-written
/// `Serialize` keeps the field order and shape of the documented format) and decodes back.
#[test]
fn every_event_type_round_trips_as_documented() {
    let docs = [
        r#"{"id":"7134418471200768","created_at":1700000000001,"node":1,"type":"message.created","data":{"thread_id":"g:7134418000000000","thread_kind":"group","message_id":"7134418471200768","seq":42,"sender_id":"alice","text":"lunch?","sent_at":1700000000001,"member_count":3,"offline":["carol"],"offline_known":true}}"#,
        r#"{"id":"7134418471200999","created_at":1700000000100,"node":2,"type":"receipt.updated","data":{"thread_id":"dm:alice:bob","user_id":"bob","status":"READ","seq":12,"message_id":"7134418471200768","sender_id":"alice"}}"#,
        r#"{"id":"7134418471201000","created_at":1700000000200,"node":1,"type":"thread.created","data":{"thread_id":"g:7134418000000000","kind":"group","title":"team","by":"alice","members":["alice","bob"],"changed":["alice","bob"]}}"#,
        r#"{"id":"7134418471201001","created_at":1700000000200,"node":1,"type":"thread.members_added","data":{"thread_id":"g:7134418000000000","kind":"group","title":"team","by":"alice","members":["alice","bob","carol","dave"],"changed":["dave"]}}"#,
        r#"{"id":"7134418471201002","created_at":1700000000300,"node":1,"type":"thread.member_left","data":{"thread_id":"dm:alice:bob","kind":"direct","by":"bob","members":["alice"],"changed":["bob"]}}"#,
    ];
    for doc in docs {
        let e: Event = serde_json::from_str(doc).expect("decodes");
        let text = serde_json::to_string(&e).expect("encodes");
        assert_eq!(text, doc);
        let back: Event = serde_json::from_str(&text).expect("decodes again");
        assert_eq!(back, e);
    }
}
