//! The push frames through the engine: register, list and unregister targets, mute and
//! unmute threads, validation, and that one user can never touch another's targets.

mod common;

use base64::Engine as _;
use common::{engine, Client};
use messenger_core::protocol::ServerFrame;
use messenger_core::push::PushPlatform;
use messenger_core::time::now_ms;
use messenger_core::{PushRegistry, ThreadId};
use serde_json::{json, Value};

const APNS: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn webpush(endpoint: &str) -> Value {
    let mut point = vec![4u8];
    point.extend([5u8; 64]);
    json!({"endpoint": endpoint, "keys": {"p256dh": b64(&point), "auth": b64(&[7u8; 16])}})
}

async fn register(c: &mut Client, frame: Value) -> messenger_core::protocol::PushTargetInfo {
    let mut f = frame;
    f["type"] = json!("register_push_target");
    f["req_id"] = json!("r");
    c.send(f).await;
    match c.recv().await {
        ServerFrame::PushTarget { req_id, target } => {
            assert!(req_id.is_some(), "the reply echoes req_id");
            target
        }
        other => panic!("expected push_target, got {other:?}"),
    }
}

async fn list(c: &mut Client) -> Vec<String> {
    c.send(json!({"type":"list_push_targets","req_id":2})).await;
    match c.recv().await {
        ServerFrame::PushTargets { targets, .. } => {
            targets.into_iter().map(|t| t.target_id).collect()
        }
        other => panic!("expected push_targets, got {other:?}"),
    }
}

async fn unregister(c: &mut Client, id: &str) -> bool {
    c.send(json!({"type":"unregister_push_target","req_id":3,"target_id":id}))
        .await;
    match c.recv().await {
        ServerFrame::PushTargetRemoved {
            target_id, removed, ..
        } => {
            assert_eq!(target_id, id);
            removed
        }
        other => panic!("expected push_target_removed, got {other:?}"),
    }
}

#[tokio::test]
async fn register_list_and_unregister_every_platform() {
    let (e, backend) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let apns = register(
        &mut a,
        json!({"platform":"apns","token":APNS.to_uppercase(),"app_id":"com.example.chat","locale":"de-CH","sandbox":true}),
    )
    .await;
    assert_eq!(apns.platform, PushPlatform::Apns);
    assert_eq!(apns.app_id.as_deref(), Some("com.example.chat"));
    assert_eq!(apns.locale.as_deref(), Some("de-CH"));
    assert!(apns.sandbox);
    let fcm = register(
        &mut a,
        json!({"platform":"fcm","token":format!("fcm:{}", "A".repeat(150)),"app_id":"com.example.chat"}),
    )
    .await;
    let web = register(
        &mut a,
        json!({"platform":"webpush","subscription":webpush("https://push.example/s/1"),"locale":"en"}),
    )
    .await;
    assert!(!web.sandbox);
    let mut ids = list(&mut a).await;
    ids.sort();
    let mut want = vec![
        apns.target_id.clone(),
        fcm.target_id.clone(),
        web.target_id.clone(),
    ];
    want.sort();
    assert_eq!(ids, want);

    // The token was stored lowercase, and nothing on the wire shows it.
    let stored = backend
        .push_registry()
        .list_targets(&common::uid("alice"))
        .await
        .expect("list");
    assert!(stored.iter().any(|r| r.address == APNS));

    // Registering the same device again refreshes it: still three targets, same id.
    let again = register(
        &mut a,
        json!({"platform":"apns","token":APNS,"locale":"fr"}),
    )
    .await;
    assert_eq!(again.target_id, apns.target_id);
    assert_eq!(again.created_at, apns.created_at);
    assert_eq!(again.locale.as_deref(), Some("fr"));
    assert_eq!(list(&mut a).await.len(), 3);

    assert!(unregister(&mut a, &fcm.target_id).await);
    assert!(
        !unregister(&mut a, &fcm.target_id).await,
        "idempotent: nothing left to remove"
    );
    assert_eq!(list(&mut a).await.len(), 2);
}

#[tokio::test]
async fn invalid_registrations_are_bad_requests() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let cases = [
        json!({"platform":"blackberry","token":APNS}),
        json!({"platform":"apns","token":"abc"}),
        json!({"platform":"apns","token":"zz".repeat(32)}),
        json!({"platform":"apns"}),
        json!({"platform":"fcm","token":"has space ".repeat(5)}),
        json!({"platform":"fcm","token":"x".repeat(5000)}),
        json!({"platform":"webpush","subscription":webpush("http://push.example/s")}),
        json!({"platform":"webpush","subscription":webpush("https://")}),
        json!({"platform":"webpush","token":APNS}),
        json!({"platform":"webpush","subscription":{"endpoint":"https://p/x","keys":{"p256dh":"AAAA","auth":"AAAA"}}}),
        json!({"platform":"apns","token":APNS,"app_id":"bad app id"}),
        json!({"platform":"apns","token":APNS,"locale":"x".repeat(40)}),
    ];
    for c in cases {
        let mut f = c.clone();
        f["type"] = json!("register_push_target");
        f["req_id"] = json!(9);
        let msg = a.expect_error(f, "bad_request").await;
        assert!(!msg.is_empty(), "{c}: a message says what is wrong");
    }
    a.expect_error(
        json!({"type":"unregister_push_target","target_id":"../../etc"}),
        "bad_request",
    )
    .await;
    assert!(list(&mut a).await.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn a_user_never_touches_another_users_targets() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut b = Client::connect(&e, "bob").await;
    let t = register(&mut a, json!({"platform":"apns","token":APNS})).await;
    assert!(list(&mut b).await.is_empty(), "bob does not see alice's");
    assert!(
        !unregister(&mut b, &t.target_id).await,
        "bob cannot remove alice's"
    );
    assert_eq!(list(&mut a).await, vec![t.target_id.clone()]);

    // The phone signs in as bob: it is bob's now, and alice's list no longer has it.
    let moved = register(&mut b, json!({"platform":"apns","token":APNS})).await;
    assert_eq!(moved.target_id, t.target_id);
    assert!(list(&mut a).await.is_empty());
    assert_eq!(list(&mut b).await, vec![t.target_id.clone()]);
    assert!(!unregister(&mut a, &t.target_id).await);
}

#[tokio::test]
async fn the_oldest_target_goes_over_the_cap() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut ids = Vec::new();
    for i in 0..11u8 {
        let token = format!("{:064x}", u64::from(i) + 1);
        ids.push(
            register(&mut a, json!({"platform":"apns","token":token}))
                .await
                .target_id,
        );
        // updated_at is in ms: make each registration later than the one before.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let now = list(&mut a).await;
    assert_eq!(now.len(), 10, "the default cap is 10");
    assert!(!now.contains(&ids[0]), "the least recently refreshed went");
}

async fn mute_reply(c: &mut Client, frame: Value) -> (ThreadId, bool, Option<u64>) {
    c.send(frame).await;
    match c.recv().await {
        ServerFrame::ThreadMute {
            req_id,
            thread_id,
            muted,
            until,
        } => {
            assert!(req_id.is_some());
            (thread_id, muted, until)
        }
        other => panic!("expected thread_mute, got {other:?}"),
    }
}

#[tokio::test]
async fn mute_and_unmute_reach_other_sessions_and_the_thread_list() {
    let (e, backend) = engine().await;
    let mut a1 = Client::connect(&e, "alice").await;
    let mut a2 = Client::connect(&e, "alice").await;
    let _bob = Client::connect(&e, "bob").await;
    a1.send(json!({"type":"create_thread","kind":"direct","members":["bob"],"req_id":1}))
        .await;
    let thread = match a1.recv().await {
        ServerFrame::Thread { thread_id, .. } => thread_id,
        f => panic!("{f:?}"),
    };
    let _ = a2.recv().await; // the thread frame

    let until = now_ms() + 3_600_000;
    let (t, muted, u) = mute_reply(
        &mut a1,
        json!({"type":"mute_thread","req_id":5,"thread_id":thread,"until":until}),
    )
    .await;
    assert_eq!((t, muted, u), (thread.clone(), true, Some(until)));
    match a2.recv().await {
        ServerFrame::ThreadMute {
            req_id,
            muted,
            until: u,
            ..
        } => assert_eq!((req_id, muted, u), (None, true, Some(until))),
        f => panic!("alice's other session: {f:?}"),
    }
    a1.send(json!({"type":"list_threads","req_id":6})).await;
    match a1.recv().await {
        ServerFrame::Threads { threads, .. } => {
            assert!(threads[0].muted);
            assert_eq!(threads[0].muted_until, Some(until));
        }
        f => panic!("{f:?}"),
    }
    let stored = backend
        .push_registry()
        .push_targets(&common::uid("alice"), &thread)
        .await
        .expect("read");
    assert!(stored.mute.is_some_and(|m| m.active(now_ms())));

    // For ever.
    let (_, muted, u) = mute_reply(
        &mut a1,
        json!({"type":"mute_thread","req_id":7,"thread_id":thread}),
    )
    .await;
    assert_eq!((muted, u), (true, None));
    let _ = a2.recv().await;

    let (_, muted, _) = mute_reply(
        &mut a1,
        json!({"type":"unmute_thread","req_id":8,"thread_id":thread}),
    )
    .await;
    assert!(!muted);
    match a2.recv().await {
        ServerFrame::ThreadMute { muted, .. } => assert!(!muted),
        f => panic!("{f:?}"),
    }
    a1.send(json!({"type":"list_threads","req_id":9})).await;
    match a1.recv().await {
        ServerFrame::Threads { threads, .. } => {
            assert!(!threads[0].muted);
            assert_eq!(threads[0].muted_until, None);
        }
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn mute_checks_membership_and_time() {
    let (e, _b) = engine().await;
    let mut a = Client::connect(&e, "alice").await;
    let mut c = Client::connect(&e, "carol").await;
    a.send(json!({"type":"create_thread","kind":"direct","members":["bob"],"req_id":1}))
        .await;
    let thread = match a.recv().await {
        ServerFrame::Thread { thread_id, .. } => thread_id,
        f => panic!("{f:?}"),
    };
    c.expect_error(
        json!({"type":"mute_thread","thread_id":thread}),
        "forbidden",
    )
    .await;
    c.expect_error(
        json!({"type":"mute_thread","thread_id":"no-such-thread"}),
        "not_found",
    )
    .await;
    a.expect_error(
        json!({"type":"mute_thread","thread_id":thread,"until":1000}),
        "bad_request",
    )
    .await;
    a.expect_error(
        json!({"type":"mute_thread","thread_id":thread,"until":-5}),
        "bad_request",
    )
    .await;
    a.expect_error(
        json!({"type":"mute_thread","thread_id":"bad id!"}),
        "bad_request",
    )
    .await;
}
