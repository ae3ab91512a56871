//! Engine behaviour over the in-memory adapters: every row of protocol v1.

mod common;

use std::time::Duration;

use common::{engine, uid, Client};
use messenger_core::engine::{CloseReason, Engine, OutboxItem};
use messenger_core::model::{AckStatus, PresenceStatus, ThreadKind};
use messenger_core::protocol::{ReqId, ServerFrame};
use messenger_core::{NodeId, ThreadId};
use messenger_storage_mem::MemBackend;
use serde_json::json;

async fn direct(a: &mut Client, other: &str) -> ThreadId {
    a.send(json!({"type":"create_thread","kind":"direct","members":[other]}))
        .await;
    match a.recv().await {
        ServerFrame::Thread { thread_id, .. } => thread_id,
        f => panic!("expected thread, got {f:?}"),
    }
}

async fn group(a: &mut Client, others: &[&str], title: &str) -> ThreadId {
    a.send(json!({"type":"create_thread","kind":"group","members":others,"title":title}))
        .await;
    match a.recv().await {
        ServerFrame::Thread { thread_id, .. } => thread_id,
        f => panic!("expected thread, got {f:?}"),
    }
}

/// Sends a message and returns (message_id, seq) from `message_sent`.
async fn send(c: &mut Client, t: &ThreadId, temp: &str, text: &str) -> (String, u64) {
    c.send(json!({"type":"send_message","thread_id":t,"temp_id":temp,"text":text}))
        .await;
    match c.recv().await {
        ServerFrame::MessageSent {
            message_id,
            seq,
            temp_id,
            ..
        } => {
            assert_eq!(temp_id, temp);
            (message_id.to_string(), seq)
        }
        f => panic!("expected message_sent, got {f:?}"),
    }
}

async fn expect_receive(c: &mut Client) -> (String, u64, String) {
    match c.recv().await {
        ServerFrame::ReceiveMessage {
            message_id,
            seq,
            text,
            ..
        } => (message_id.to_string(), seq, text),
        f => panic!("{}: expected receive_message, got {f:?}", c.user),
    }
}

async fn drain_thread_frame(c: &mut Client) {
    match c.recv().await {
        ServerFrame::Thread { .. } => {}
        f => panic!("{}: expected thread, got {f:?}", c.user),
    }
}

#[tokio::test]
async fn welcome_names_user_and_session() {
    let (e, _b) = engine().await;
    let mut s = e.connect(uid("alice")).await.expect("connect");
    match s.outbox.recv().await {
        Some(OutboxItem::Frame(f)) => {
            let v: serde_json::Value = serde_json::from_slice(&f.frame).expect("json");
            assert_eq!(v["type"], "welcome");
            assert_eq!(v["user_id"], "alice");
            assert!(v["session_id"].as_str().expect("str").starts_with("s-"));
            assert!(v["server_time"].as_u64().expect("int") > 1_600_000_000_000);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn send_delivers_to_members_and_senders_other_sessions() {
    let (e, backend) = engine().await;
    let mut a1 = Client::connect(&e, "alice").await;
    let mut a2 = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    let t = direct(&mut a1, "bob").await;
    drain_thread_frame(&mut b).await;
    // The creator's other sessions learn of the new thread too.
    drain_thread_frame(&mut a2).await;

    a1.send(json!({"type":"send_message","req_id":"r1","thread_id":t,"temp_id":"t1","text":"hi"}))
        .await;
    let (mid, seq) = match a1.recv().await {
        ServerFrame::MessageSent {
            req_id,
            message_id,
            seq,
            thread_id,
            sent_at,
            ..
        } => {
            assert_eq!(req_id, Some(ReqId::Str("r1".into())));
            assert_eq!(thread_id, t);
            assert!(sent_at > 0);
            (message_id.to_string(), seq)
        }
        f => panic!("{f:?}"),
    };
    assert_eq!(seq, 1);
    for c in [&mut b, &mut a2] {
        match c.recv().await {
            ServerFrame::ReceiveMessage {
                message_id,
                seq,
                sender_id,
                text,
                thread_id,
                ..
            } => {
                assert_eq!(message_id.to_string(), mid);
                assert_eq!(seq, 1);
                assert_eq!(sender_id.as_str(), "alice");
                assert_eq!(text, "hi");
                assert_eq!(thread_id, t);
            }
            f => panic!("{f:?}"),
        }
    }
    a1.assert_silent().await;
    let (_, seq2) = send(&mut b, &t, "t1", "hello back").await;
    assert_eq!(seq2, 2, "same temp_id from another sender is a new message");
    assert_eq!(backend.push().total(), 0, "everyone was online");
}

#[tokio::test]
async fn idempotent_send_returns_the_first_and_delivers_once() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    let t = direct(&mut a, "bob").await;
    drain_thread_frame(&mut b).await;
    let first = send(&mut a, &t, "same", "once").await;
    expect_receive(&mut b).await;
    let again = send(&mut a, &t, "same", "once, resent").await;
    assert_eq!(first, again);
    b.assert_silent().await;
    // A reconnecting client resends from a new session: still the same message.
    let mut a2 = Client::connect(&e, "alice").await;
    let third = send(&mut a2, &t, "same", "once").await;
    assert_eq!(first, third);
    b.assert_silent().await;
}

#[tokio::test]
async fn offline_members_go_to_push() {
    let (e, backend) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let t = group(&mut a, &["bob", "carol"], "trio").await;
    let (mid, seq) = send(&mut a, &t, "p1", "wake up").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut pushed: Vec<String> = backend
        .push()
        .recent()
        .into_iter()
        .map(|n| {
            assert_eq!(n.message_id.to_string(), mid);
            assert_eq!(n.seq, seq);
            assert_eq!(n.text, "wake up");
            n.user_id.to_string()
        })
        .collect();
    pushed.sort();
    assert_eq!(pushed, ["bob", "carol"]);
}

#[tokio::test]
async fn large_groups_throttle_push() {
    let backend = MemBackend::new();
    let mut cfg = common::config(1);
    cfg.large_group_threshold = 3;
    let e = common::engine_with(backend.adapters(NodeId::new(1).expect("node")), cfg).await;
    let mut a = Client::connect(&e, "alice").await;
    let t = group(&mut a, &["b1", "b2", "b3", "b4"], "big").await;
    for i in 0..5 {
        send(&mut a, &t, &format!("m{i}"), "x").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        backend.push().total(),
        4,
        "one push per offline member per interval in a large group"
    );
}

/// A large thread's deliveries go through the node's interest in it (built on the
/// first send): sessions that connect or disconnect after that, and members added or
/// removed, are followed.
#[tokio::test]
async fn large_groups_follow_sessions_and_membership() {
    let backend = MemBackend::new();
    let mut cfg = common::config(1);
    cfg.large_group_threshold = 2;
    let e = common::engine_with(backend.adapters(NodeId::new(1).expect("node")), cfg).await;
    let mut a = Client::connect(&e, "alice").await;
    let t = group(&mut a, &["b1", "b2", "b3"], "big").await;
    // Nobody else is online when the first send builds the interest.
    send(&mut a, &t, "m1", "one").await;

    let mut b1 = Client::connect(&e, "b1").await;
    let mut b1x = Client::connect(&e, "b1").await;
    let mut a2 = Client::connect(&e, "alice").await;
    send(&mut a, &t, "m2", "two").await;
    for c in [&mut b1, &mut b1x, &mut a2] {
        assert_eq!(expect_receive(c).await.1, 2, "{}", c.user);
    }

    // A session that ends gets nothing more; the user's other session still does.
    b1x.disconnect().await;
    send(&mut a, &t, "m3", "three").await;
    assert_eq!(expect_receive(&mut b1).await.1, 3);
    assert_eq!(expect_receive(&mut a2).await.1, 3);

    // A member added while online gets the messages after it joined.
    let mut c = Client::connect(&e, "carol").await;
    a.send(json!({"type":"add_members","thread_id":t,"members":["carol"]}))
        .await;
    drain_thread_frame(&mut a).await;
    for x in [&mut b1, &mut c, &mut a2] {
        drain_thread_frame(x).await;
    }
    send(&mut a, &t, "m4", "four").await;
    for x in [&mut b1, &mut c, &mut a2] {
        assert_eq!(expect_receive(x).await.1, 4, "{}", x.user);
    }

    // A member who left gets nothing more; the others do.
    c.send(json!({"type":"leave_thread","thread_id":t})).await;
    drain_thread_frame(&mut c).await;
    for x in [&mut a, &mut b1, &mut a2] {
        drain_thread_frame(x).await;
    }
    send(&mut a, &t, "m5", "five").await;
    assert_eq!(expect_receive(&mut b1).await.1, 5);
    assert_eq!(expect_receive(&mut a2).await.1, 5);
    // carol's next frame is her own message's reply, not message 5.
    c.expect_error(
        json!({"type":"send_message","thread_id":t,"temp_id":"x","text":"hi"}),
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn acks_move_watermarks_and_route() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut b1 = Client::connect(&e, "bob").await;
    let mut b2 = Client::connect(&e, "bob").await;
    let t = direct(&mut a, "bob").await;
    drain_thread_frame(&mut b1).await;
    drain_thread_frame(&mut b2).await;
    let (m1, _) = send(&mut a, &t, "1", "one").await;
    let (m2, _) = send(&mut a, &t, "2", "two").await;
    for b in [&mut b1, &mut b2] {
        expect_receive(b).await;
        expect_receive(b).await;
    }

    // DELIVERED goes to the sender only.
    b1.send(json!({"type":"message_ack","thread_id":t,"message_id":m2,"status":"DELIVERED"}))
        .await;
    match a.recv().await {
        ServerFrame::MessageAck {
            message_id,
            seq,
            status,
            user_id,
            at,
            ..
        } => {
            assert_eq!(message_id.to_string(), m2);
            assert_eq!(seq, 2);
            assert_eq!(status, AckStatus::Delivered);
            assert_eq!(user_id.as_str(), "bob");
            assert!(at > 0);
        }
        f => panic!("{f:?}"),
    }
    b1.assert_silent().await;
    b2.assert_silent().await;

    // An older DELIVERED does not move the watermark: nothing is sent.
    b1.send(json!({"type":"message_ack","thread_id":t,"message_id":m1,"status":"DELIVERED"}))
        .await;
    a.assert_silent().await;

    // READ goes to the sender and to the acker's other sessions.
    b1.send(json!({"type":"message_ack","thread_id":t,"message_id":m1,"status":"READ"}))
        .await;
    for c in [&mut a, &mut b2] {
        match c.recv().await {
            ServerFrame::MessageAck { status, seq, .. } => {
                assert_eq!(status, AckStatus::Read);
                assert_eq!(seq, 1);
            }
            f => panic!("{f:?}"),
        }
    }
    b1.assert_silent().await;

    // Receipts: READ 1 did not lower DELIVERED 2.
    a.send(json!({"type":"list_threads"})).await;
    match a.recv().await {
        ServerFrame::Threads { threads, .. } => {
            let r = threads[0].receipts[&uid("bob")];
            assert_eq!((r.delivered_seq, r.read_seq), (2, 1));
            let r = threads[0].receipts[&uid("alice")];
            assert_eq!((r.delivered_seq, r.read_seq), (0, 0));
        }
        f => panic!("{f:?}"),
    }

    // READ implies DELIVERED.
    let (m3, _) = send(&mut a, &t, "3", "three").await;
    expect_receive(&mut b1).await;
    expect_receive(&mut b2).await;
    b2.send(json!({"type":"message_ack","thread_id":t,"message_id":m3,"status":"READ"}))
        .await;
    a.recv().await;
    b1.recv().await;
    b1.send(json!({"type":"list_threads"})).await;
    match b1.recv().await {
        ServerFrame::Threads { threads, .. } => {
            let r = threads[0].receipts[&uid("bob")];
            assert_eq!((r.delivered_seq, r.read_seq), (3, 3));
            assert_eq!(threads[0].unread, 0);
        }
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn ack_errors() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut c = Client::connect(&e, "carol").await;
    let t = direct(&mut a, "bob").await;
    let (m, _) = send(&mut a, &t, "1", "x").await;
    c.expect_error(
        json!({"type":"message_ack","thread_id":t,"message_id":m,"status":"READ"}),
        "forbidden",
    )
    .await;
    a.expect_error(
        json!({"type":"message_ack","thread_id":t,"message_id":"999","status":"READ"}),
        "not_found",
    )
    .await;
    a.expect_error(
        json!({"type":"message_ack","thread_id":t,"message_id":m,"status":"SEEN"}),
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn direct_threads_are_canonical() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    a.send(json!({"type":"create_thread","req_id":5,"kind":"direct","members":["bob"]}))
        .await;
    let t = match a.recv().await {
        ServerFrame::Thread {
            req_id,
            thread_id,
            kind,
            members,
            title,
        } => {
            assert_eq!(req_id, Some(ReqId::UInt(5)));
            assert_eq!(kind, ThreadKind::Direct);
            assert_eq!(title, None);
            let mut m: Vec<_> = members.iter().map(|u| u.to_string()).collect();
            m.sort();
            assert_eq!(m, ["alice", "bob"]);
            thread_id
        }
        f => panic!("{f:?}"),
    };
    match b.recv().await {
        ServerFrame::Thread {
            req_id, thread_id, ..
        } => {
            assert_eq!(req_id, None);
            assert_eq!(thread_id, t);
        }
        f => panic!("{f:?}"),
    }
    assert_eq!(direct(&mut b, "alice").await, t);
    assert_eq!(direct(&mut a, "bob").await, t);
    a.assert_silent().await;
    b.assert_silent().await;
    a.expect_error(
        json!({"type":"create_thread","kind":"direct","members":["alice"]}),
        "bad_request",
    )
    .await;
    a.expect_error(
        json!({"type":"create_thread","kind":"direct","members":["bob","carol"]}),
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn groups_add_and_leave() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    let mut c = Client::connect(&e, "carol").await;
    let mut a2 = Client::connect(&e, "alice").await;
    let t = group(&mut a, &["bob", "bob", "alice"], "Team").await;
    match b.recv().await {
        ServerFrame::Thread {
            kind,
            title,
            members,
            ..
        } => {
            assert_eq!(kind, ThreadKind::Group);
            assert_eq!(title.as_deref(), Some("Team"));
            assert_eq!(
                members,
                vec![uid("alice"), uid("bob")],
                "creator first, no duplicates"
            );
        }
        f => panic!("{f:?}"),
    }
    drain_thread_frame(&mut a2).await;
    c.expect_error(
        json!({"type":"send_message","thread_id":t,"temp_id":"x","text":"let me in"}),
        "forbidden",
    )
    .await;

    // Any member may add; every member's sessions get the new state.
    b.send(json!({"type":"add_members","req_id":"add","thread_id":t,"members":["carol"]}))
        .await;
    match b.recv().await {
        ServerFrame::Thread {
            req_id, members, ..
        } => {
            assert_eq!(req_id, Some(ReqId::Str("add".into())));
            assert_eq!(members.len(), 3);
        }
        f => panic!("{f:?}"),
    }
    for x in [&mut a, &mut a2, &mut c] {
        drain_thread_frame(x).await;
    }
    send(&mut c, &t, "c1", "hi all").await;
    for x in [&mut a, &mut a2, &mut b] {
        expect_receive(x).await;
    }

    // Leave: the leaver's other sessions and the remaining members get the update.
    a.send(json!({"type":"leave_thread","thread_id":t})).await;
    match a.recv().await {
        ServerFrame::Thread { members, .. } => assert!(!members.contains(&uid("alice"))),
        f => panic!("{f:?}"),
    }
    for x in [&mut a2, &mut b, &mut c] {
        drain_thread_frame(x).await;
    }
    a.expect_error(json!({"type":"fetch_history","thread_id":t}), "forbidden")
        .await;
    send(&mut b, &t, "b1", "bye alice").await;
    expect_receive(&mut c).await;
    a.assert_silent().await;
    a2.assert_silent().await;

    // Direct threads cannot change membership.
    let d = direct(&mut b, "carol").await;
    drain_thread_frame(&mut c).await;
    b.expect_error(json!({"type":"leave_thread","thread_id":d}), "forbidden")
        .await;
    b.expect_error(
        json!({"type":"add_members","thread_id":d,"members":["alice"]}),
        "forbidden",
    )
    .await;
    b.expect_error(
        json!({"type":"leave_thread","thread_id":"g:404"}),
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn list_threads_has_last_seq_receipts_and_unread() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let t = group(&mut a, &["bob", "carol"], "g").await;
    send(&mut a, &t, "1", "a").await;
    send(&mut a, &t, "2", "b").await;
    let mut b = Client::connect(&e, "bob").await;
    let (m3, _) = send(&mut b, &t, "3", "c").await;
    a.recv().await; // receive_message from bob
    b.send(json!({"type":"list_threads","req_id":1})).await;
    match b.recv().await {
        ServerFrame::Threads { req_id, threads } => {
            assert_eq!(req_id, Some(ReqId::UInt(1)));
            assert_eq!(threads.len(), 1);
            let s = &threads[0];
            assert_eq!(s.thread_id, t);
            assert_eq!(s.last_seq, 3);
            assert_eq!(s.unread, 2, "bob's own message does not count");
            assert_eq!(s.receipts.len(), 3, "every member has receipts");
            assert_eq!(s.title.as_deref(), Some("g"));
        }
        f => panic!("{f:?}"),
    }
    a.send(json!({"type":"message_ack","thread_id":t,"message_id":m3,"status":"READ"}))
        .await;
    b.recv().await; // the READ ack
    a.send(json!({"type":"list_threads"})).await;
    match a.recv().await {
        ServerFrame::Threads { threads, .. } => assert_eq!(threads[0].unread, 0),
        f => panic!("{f:?}"),
    }
    let mut d = Client::connect(&e, "dave").await;
    d.send(json!({"type":"list_threads"})).await;
    match d.recv().await {
        ServerFrame::Threads { threads, .. } => assert!(threads.is_empty()),
        f => panic!("{f:?}"),
    }
}

async fn history(c: &mut Client, t: &ThreadId, extra: serde_json::Value) -> (Vec<u64>, bool) {
    let mut frame = json!({"type":"fetch_history","thread_id":t});
    for (k, v) in extra.as_object().expect("object") {
        frame[k] = v.clone();
    }
    c.send(frame).await;
    match c.recv().await {
        ServerFrame::History {
            messages,
            has_more,
            thread_id,
            ..
        } => {
            assert_eq!(&thread_id, t);
            (messages.iter().map(|m| m.seq).collect(), has_more)
        }
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn history_pages_by_range() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let t = group(&mut a, &[], "solo").await;
    assert_eq!(history(&mut a, &t, json!({})).await, (vec![], false));
    for i in 1..=260 {
        send(&mut a, &t, &format!("m{i}"), &format!("text {i}")).await;
    }
    let (page, more) = history(&mut a, &t, json!({})).await;
    assert_eq!(
        page,
        (211..=260).collect::<Vec<_>>(),
        "default: the latest 50"
    );
    assert!(more);
    let (page, more) = history(&mut a, &t, json!({"before_seq": 11, "limit": 5})).await;
    assert_eq!(page, vec![6, 7, 8, 9, 10]);
    assert!(more);
    let (page, more) = history(&mut a, &t, json!({"before_seq": 6, "limit": 5})).await;
    assert_eq!(page, vec![1, 2, 3, 4, 5]);
    assert!(!more, "exact page boundary: nothing older");
    let (page, more) = history(&mut a, &t, json!({"after_seq": 255, "limit": 5})).await;
    assert_eq!(page, vec![256, 257, 258, 259, 260]);
    assert!(!more);
    let (page, more) = history(&mut a, &t, json!({"after_seq": 250, "limit": 5})).await;
    assert_eq!(page, vec![251, 252, 253, 254, 255]);
    assert!(more);
    let (page, _) = history(&mut a, &t, json!({"after_seq": 0, "limit": 1000})).await;
    assert_eq!(page.len(), 200, "limit is capped at 200");
    assert_eq!(page[0], 1);
    let (page, more) = history(
        &mut a,
        &t,
        json!({"after_seq": 10, "before_seq": 20, "limit": 3}),
    )
    .await;
    assert_eq!((page, more), (vec![11, 12, 13], true));
    assert_eq!(
        history(&mut a, &t, json!({"after_seq": 260})).await,
        (vec![], false)
    );
    a.expect_error(
        json!({"type":"fetch_history","thread_id":t,"limit":0}),
        "bad_request",
    )
    .await;
    a.expect_error(
        json!({"type":"fetch_history","thread_id":t,"limit":-1}),
        "bad_request",
    )
    .await;
    let mut x = Client::connect(&e, "mallory").await;
    x.expect_error(json!({"type":"fetch_history","thread_id":t}), "forbidden")
        .await;
    x.expect_error(
        json!({"type":"fetch_history","thread_id":"nope"}),
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn presence_subscriptions() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let t = direct(&mut a, "bob").await;
    let _ = t;
    // bob never connected: offline without last_seen.
    a.send(json!({"type":"presence_subscribe","req_id":"p","user_ids":["bob"]}))
        .await;
    match a.recv().await {
        ServerFrame::Presence {
            req_id,
            user_id,
            status,
            last_seen,
        } => {
            assert_eq!(req_id, Some(ReqId::Str("p".into())));
            assert_eq!(user_id.as_str(), "bob");
            assert_eq!(status, PresenceStatus::Offline);
            assert_eq!(last_seen, None);
        }
        f => panic!("{f:?}"),
    }
    // Someone who shares no thread: the whole list is refused.
    a.expect_error(
        json!({"type":"presence_subscribe","user_ids":["bob","zed"]}),
        "forbidden",
    )
    .await;

    let b = Client::connect(&e, "bob").await;
    match a.recv().await {
        ServerFrame::Presence {
            user_id,
            status,
            req_id,
            ..
        } => {
            assert_eq!(user_id.as_str(), "bob");
            assert_eq!(status, PresenceStatus::Online);
            assert_eq!(req_id, None);
        }
        f => panic!("{f:?}"),
    }
    // A quick reconnect within the grace period does not flap.
    let before = messenger_core::time::now_ms();
    b.disconnect().await;
    let b2 = Client::connect(&e, "bob").await;
    a.assert_silent().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.assert_silent().await;
    // The last session goes: offline after the grace period, with last_seen.
    b2.disconnect().await;
    match a.recv().await {
        ServerFrame::Presence {
            status, last_seen, ..
        } => {
            assert_eq!(status, PresenceStatus::Offline);
            assert!(last_seen.expect("last_seen") >= before);
        }
        f => panic!("{f:?}"),
    }
    // Unsubscribe: no reply, no more events.
    a.send(json!({"type":"presence_unsubscribe","user_ids":["bob"]}))
        .await;
    let _b3 = Client::connect(&e, "bob").await;
    a.assert_silent().await;
}

#[tokio::test]
async fn typing_reaches_other_members_only() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut a2 = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    let t = direct(&mut a, "bob").await;
    drain_thread_frame(&mut b).await;
    drain_thread_frame(&mut a2).await;
    a.send(json!({"type":"typing","thread_id":t,"typing":true}))
        .await;
    match b.recv().await {
        ServerFrame::Typing {
            thread_id,
            user_id,
            typing,
        } => {
            assert_eq!(thread_id, t);
            assert_eq!(user_id.as_str(), "alice");
            assert!(typing);
        }
        f => panic!("{f:?}"),
    }
    a.assert_silent().await;
    a2.assert_silent().await;
    let mut c = Client::connect(&e, "carol").await;
    c.expect_error(
        json!({"type":"typing","thread_id":t,"typing":true}),
        "forbidden",
    )
    .await;
    // Never stored.
    a.send(json!({"type":"list_threads"})).await;
    match a.recv().await {
        ServerFrame::Threads { threads, .. } => assert_eq!(threads[0].last_seq, 0),
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn ping_pong_and_bad_input() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    a.send(json!({"type":"ping","req_id":42})).await;
    assert_eq!(
        a.recv().await,
        ServerFrame::Pong {
            req_id: Some(ReqId::UInt(42))
        }
    );
    a.send_raw("{not json").await;
    assert!(
        matches!(a.recv().await, ServerFrame::Error { code, req_id: None, .. } if code == "bad_request")
    );
    a.send(json!({"type":"teleport","req_id":"x"})).await;
    assert!(
        matches!(a.recv().await, ServerFrame::Error { code, req_id: Some(ReqId::Str(_)), .. } if code == "unknown_type")
    );
    a.expect_error(
        json!({"type":"send_message","thread_id":"t"}),
        "bad_request",
    )
    .await;
    a.expect_error(
        json!({"type":"send_message","thread_id":"t","temp_id":5,"text":"x"}),
        "bad_request",
    )
    .await;
    a.expect_error(
        json!({"type":"create_thread","kind":"direct","members":["no spaces"]}),
        "bad_request",
    )
    .await;
    a.expect_error(
        json!({"type":"send_message","thread_id":"t","temp_id":"","text":"x"}),
        "bad_request",
    )
    .await;
    // Validation comes before authorization: a malformed frame naming a thread the
    // user may not use is bad_request, not forbidden.
    let t = {
        let mut b = Client::connect(&e, "bob").await;
        direct(&mut b, "carol").await
    };
    a.expect_error(
        json!({"type":"fetch_history","thread_id":t,"limit":"ten"}),
        "bad_request",
    )
    .await;
    a.expect_error(
        json!({"type":"send_message","thread_id":t,"temp_id":"x","text":"hi"}),
        "forbidden",
    )
    .await;
    let own = direct(&mut a, "bob").await;
    let msg = a
        .expect_error(
            json!({"type":"send_message","thread_id":own,"temp_id":"big","text":"x".repeat(16 * 1024 + 1)}),
            "too_large",
        )
        .await;
    assert!(msg.contains("16384"), "{msg}");
    send(&mut a, &own, "max", &"x".repeat(16 * 1024)).await;
    let stats = e.stats().errors_by_code();
    assert!(stats["bad_request"] >= 5);
}

#[tokio::test]
async fn concurrent_senders_are_delivered_in_seq_order() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let senders = ["s1", "s2", "s3", "s4"];
    let t = group(&mut a, &senders, "race").await;
    let mut tasks = Vec::new();
    for s in senders {
        let e = e.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(&e, s).await;
            for i in 0..50 {
                c.send(json!({"type":"send_message","thread_id":t,"temp_id":format!("{s}-{i}"),"text":"x"}))
                    .await;
            }
            c
        }));
    }
    let mut last = 0;
    for _ in 0..200 {
        let (_, seq, _) = expect_receive(&mut a).await;
        assert_eq!(seq, last + 1, "alice sees the thread in seq order, gapless");
        last = seq;
    }
    for t in tasks {
        t.await.expect("sender task");
    }
}

#[tokio::test]
async fn slow_consumer_is_closed_and_others_keep_going() {
    let backend = MemBackend::new();
    let mut cfg = common::config(1);
    cfg.outbound_queue = 8;
    let e = common::engine_with(backend.adapters(NodeId::new(1).expect("node")), cfg).await;
    let mut a = Client::connect(&e, "alice").await;
    let slow = Client::connect(&e, "bob").await;
    let mut fast = Client::connect(&e, "bob").await;
    let t = direct(&mut a, "bob").await;
    fast.recv().await;
    for i in 0..20 {
        send(&mut a, &t, &format!("{i}"), "x").await;
        expect_receive(&mut fast).await;
    }
    assert_eq!(slow.kicked(), Some(CloseReason::SlowConsumer));
    let mut slow = slow;
    // The outbox reports the close at once, before the frames still queued.
    assert!(matches!(
        slow.next_item(Duration::from_millis(500)).await,
        Some(OutboxItem::Close(CloseReason::SlowConsumer))
    ));
    assert_eq!(
        e.stats()
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn two_nodes_share_a_backend_and_relay_one_envelope_per_node() {
    let backend = MemBackend::new();
    let n1 = common::engine_with(
        backend.adapters(NodeId::new(1).expect("node")),
        common::config(1),
    )
    .await;
    let n2 = common::engine_with(
        backend.adapters(NodeId::new(2).expect("node")),
        common::config(2),
    )
    .await;
    let mut a = Client::connect(&n1, "alice").await;
    let mut b1 = Client::connect(&n2, "bob").await;
    let mut b2 = Client::connect(&n2, "bob").await;
    let mut c = Client::connect(&n2, "carol").await;
    let t = group(&mut a, &["bob", "carol"], "x").await;
    for x in [&mut b1, &mut b2, &mut c] {
        drain_thread_frame(x).await;
    }
    let before = n1
        .stats()
        .relay_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let (mid, _) = send(&mut a, &t, "x1", "across").await;
    for x in [&mut b1, &mut b2, &mut c] {
        let (m, seq, _) = expect_receive(x).await;
        assert_eq!((m.as_str(), seq), (mid.as_str(), 1));
    }
    let after = n1
        .stats()
        .relay_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        after - before,
        1,
        "one envelope for node 2, not one per user"
    );
    // Acks and presence cross nodes too.
    b1.send(json!({"type":"message_ack","thread_id":t,"message_id":mid,"status":"READ"}))
        .await;
    assert!(matches!(
        a.recv().await,
        ServerFrame::MessageAck {
            status: AckStatus::Read,
            ..
        }
    ));
    assert!(matches!(
        b2.recv().await,
        ServerFrame::MessageAck {
            status: AckStatus::Read,
            ..
        }
    ));
    a.send(json!({"type":"presence_subscribe","user_ids":["carol"]}))
        .await;
    assert!(matches!(
        a.recv().await,
        ServerFrame::Presence {
            status: PresenceStatus::Online,
            ..
        }
    ));
    c.disconnect().await;
    assert!(matches!(
        a.recv().await,
        ServerFrame::Presence {
            status: PresenceStatus::Offline,
            ..
        }
    ));
    // Cross-node senders interleaving in one thread: everyone sees seq order.
    let (e1, e2, t2) = (n1.clone(), n2.clone(), t.clone());
    let s1 = tokio::spawn(async move {
        let mut x = Client::connect(&e1, "alice").await;
        for i in 0..30 {
            x.send(
                json!({"type":"send_message","thread_id":t2,"temp_id":format!("a{i}"),"text":"a"}),
            )
            .await;
        }
        x.recv().await;
    });
    let t3 = t.clone();
    let s2 = tokio::spawn(async move {
        let mut x = Client::connect(&e2, "carol").await;
        for i in 0..30 {
            x.send(
                json!({"type":"send_message","thread_id":t3,"temp_id":format!("c{i}"),"text":"c"}),
            )
            .await;
        }
        x.recv().await;
    });
    s1.await.expect("s1");
    s2.await.expect("s2");
    let mut last = 1;
    for _ in 0..60 {
        let (_, seq, _) = expect_receive(&mut b2).await;
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }
    assert_eq!(last, 61);
    let _ = Engine::shutdown;
}

#[tokio::test]
async fn single_node_mode_skips_the_directory_but_not_delivery_or_push() {
    let backend = MemBackend::new();
    let mut cfg = common::config(1);
    cfg.single_node = true;
    let e = common::engine_with(backend.adapters(NodeId::new(1).expect("node")), cfg).await;
    let mut a = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    let t = group(&mut a, &["bob", "carol"], "solo node").await;
    drain_thread_frame(&mut b).await;
    let (mid, _) = send(&mut a, &t, "1", "hi").await;
    assert_eq!(expect_receive(&mut b).await.0, mid);
    b.send(json!({"type":"message_ack","thread_id":t,"message_id":mid,"status":"READ"}))
        .await;
    assert!(matches!(
        a.recv().await,
        ServerFrame::MessageAck {
            status: AckStatus::Read,
            ..
        }
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pushed: Vec<String> = backend
        .push()
        .recent()
        .into_iter()
        .map(|n| n.user_id.to_string())
        .collect();
    assert_eq!(
        pushed,
        ["carol"],
        "only the member with no session is pushed"
    );
}

/// Counts the directory lookups the engine makes (calls and users looked up).
struct CountingDirectory {
    inner: std::sync::Arc<dyn messenger_core::SessionDirectory>,
    calls: std::sync::atomic::AtomicUsize,
    users: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl messenger_core::SessionDirectory for CountingDirectory {
    async fn register(
        &self,
        e: &messenger_core::model::SessionEntry,
    ) -> messenger_core::Result<()> {
        self.inner.register(e).await
    }
    async fn unregister(
        &self,
        e: &messenger_core::model::SessionEntry,
    ) -> messenger_core::Result<()> {
        self.inner.unregister(e).await
    }
    async fn lookup(
        &self,
        users: &[messenger_core::UserId],
    ) -> messenger_core::Result<Vec<Vec<messenger_core::model::SessionEntry>>> {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        self.users.fetch_add(users.len(), Relaxed);
        self.inner.lookup(users).await
    }
}

/// Keeps every envelope the engine sends.
struct RecordingRelay {
    inner: std::sync::Arc<dyn messenger_core::Relay>,
    sent: std::sync::Mutex<Vec<(NodeId, messenger_core::model::Envelope)>>,
}

#[async_trait::async_trait]
impl messenger_core::Relay for RecordingRelay {
    async fn send(
        &self,
        node: NodeId,
        env: messenger_core::model::Envelope,
    ) -> messenger_core::Result<()> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((node, env.clone()));
        self.inner.send(node, env).await
    }
    async fn subscribe(
        &self,
        node: NodeId,
    ) -> messenger_core::Result<futures::stream::BoxStream<'static, messenger_core::model::Envelope>>
    {
        self.inner.subscribe(node).await
    }
    async fn nodes(&self) -> messenger_core::Result<Option<Vec<NodeId>>> {
        self.inner.nodes().await
    }
}

/// In a cluster, a message to a large group is one `members_of` envelope per other
/// node and no directory lookup (only the thread's push turn looks the members up,
/// once per interval); a small group still gets a lookup and `users` envelopes.
#[tokio::test]
async fn large_groups_in_a_cluster_send_one_envelope_per_node_and_no_lookup() {
    use messenger_core::model::EnvelopeTo;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    let backend = MemBackend::new();
    let dir = Arc::new(CountingDirectory {
        inner: backend.directory().clone(),
        calls: Default::default(),
        users: Default::default(),
    });
    let relay = Arc::new(RecordingRelay {
        inner: Arc::new(backend.relay().clone()),
        sent: Default::default(),
    });
    let mut engines = Vec::new();
    for n in [1, 2, 3] {
        let mut a = backend.adapters(NodeId::new(n).expect("node"));
        if n == 1 {
            a.directory = dir.clone();
            a.relay = relay.clone();
        }
        let mut cfg = common::config(n);
        cfg.large_group_threshold = 3;
        engines.push(common::engine_with(a, cfg).await);
    }
    let mut a = Client::connect(&engines[0], "alice").await;
    let mut b = Client::connect(&engines[1], "bob").await;
    let mut c = Client::connect(&engines[2], "carol").await;
    let big = group(&mut a, &["bob", "carol", "d1", "d2"], "big").await;
    drain_thread_frame(&mut b).await;
    drain_thread_frame(&mut c).await;
    let (calls0, users0) = (dir.calls.load(Relaxed), dir.users.load(Relaxed));
    relay.sent.lock().unwrap_or_else(|p| p.into_inner()).clear();
    for i in 1..=5u64 {
        send(&mut a, &big, &format!("m{i}"), "x").await;
        for x in [&mut b, &mut c] {
            assert_eq!(expect_receive(x).await.1, i, "{}", x.user);
        }
    }
    // The push turn of message 1 looked the 5 members up once; nothing else did.
    common::eventually(|| dir.calls.load(Relaxed) - calls0 == 1).await;
    assert_eq!(dir.users.load(Relaxed) - users0, 5);
    let sent = std::mem::take(&mut *relay.sent.lock().unwrap_or_else(|p| p.into_inner()));
    assert_eq!(sent.len(), 10, "one envelope per other node and message");
    for (node, env) in &sent {
        assert!(node.get() == 2 || node.get() == 3);
        match &env.to {
            EnvelopeTo::MembersOf(m) => {
                assert_eq!((&m.thread_id, m.count), (&big, 5));
            }
            other => panic!("expected members_of, got {other:?}"),
        }
    }

    // A small group: a lookup per message and `users` envelopes to bob's node only.
    let small = group(&mut a, &["bob"], "small").await;
    drain_thread_frame(&mut b).await;
    relay.sent.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let calls1 = dir.calls.load(Relaxed);
    send(&mut a, &small, "s1", "x").await;
    expect_receive(&mut b).await;
    common::eventually(|| dir.calls.load(Relaxed) > calls1).await;
    let sent = std::mem::take(&mut *relay.sent.lock().unwrap_or_else(|p| p.into_inner()));
    let to: Vec<(u16, &EnvelopeTo)> = sent.iter().map(|(n, e)| (n.get(), &e.to)).collect();
    assert_eq!(to, [(2, &EnvelopeTo::Users(vec![uid("bob")]))]);
}
