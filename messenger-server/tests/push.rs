//! Push notifications end to end: the server with `[push]` pointing at local APNs and
//! Web Push endpoints that speak the real protocols (`messenger_push::testkit`), real
//! WebSocket clients registering targets and muting threads. A member whose sessions
//! are all gone gets exactly one notification per message on each target, a muted
//! thread none, a token the provider reports gone never again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use messenger_push::testkit::{FakeApns, FakeWebPush, TestPki};
use messenger_push::VapidKey;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// Polls `cond` until it holds (bounded).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pushes(srv: &TestServer) -> u64 {
    let m = srv.metrics().await;
    m.lines()
        .find_map(|l| l.strip_prefix("messenger_pushes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

async fn wait_pushes(srv: &TestServer, n: u64) {
    let end = Instant::now() + Duration::from_secs(20);
    while pushes(srv).await < n {
        assert!(Instant::now() < end, "timed out waiting for {n} pushes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Disconnects `c` and waits until `watcher` sees `user` offline (its sessions gone).
async fn go_offline(c: Client, watcher: &mut Client, user: &str) {
    drop(c);
    loop {
        let p = watcher.expect("presence").await;
        if p["user_id"] == user && p["status"] == "offline" {
            return;
        }
    }
}

fn count(ids: &[String], id: &str) -> usize {
    ids.iter().filter(|x| x.as_str() == id).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_members_get_one_notification_per_message_muted_none_gone_never() {
    tokio::time::timeout(LIMIT, async {
        let pki = TestPki::new();
        let apns = FakeApns::start(&pki).await;
        let wp = FakeWebPush::start(&pki).await;
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("push-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).expect("write");
            p
        };
        let key = write("apns.p8", &apns.key_pem);
        let ca = write("ca.pem", &pki.ca_pem);
        let vapid = write("vapid.key", &VapidKey::generate().private_key_base64url());
        let mut config = test_config();
        config.push = serde_json::from_value(json!({
            "privacy": "sender_only",
            "apns": {
                "key_file": key, "key_id": apns.key_id, "team_id": apns.team_id,
                "topic": "com.example.chat", "endpoint": apns.url,
                "sandbox_endpoint": apns.url, "ca_file": ca,
            },
            "webpush": { "vapid_key_file": vapid, "subject": "mailto:ops@example.com", "ca_file": ca },
        }))
        .expect("push settings");
        let srv = start(config).await;

        let mut alice = srv.client("alice").await;
        let mut bob = srv.client("bob").await;
        let dm = alice.create_direct("bob").await;
        bob.expect("thread").await;
        let token = "ab".repeat(32);
        let r = bob
            .request(json!({"type":"register_push_target","platform":"apns","token":token,"locale":"en"}), json!(1))
            .await;
        assert_eq!(r["type"], "push_target", "{r}");
        let sub = wp.subscribe();
        let r = bob
            .request(
                json!({"type":"register_push_target","platform":"webpush",
                       "subscription":{"endpoint":sub.endpoint,"keys":{"p256dh":sub.p256dh,"auth":sub.auth}}}),
                json!(2),
            )
            .await;
        assert_eq!(r["type"], "push_target", "{r}");
        let r = alice
            .request(json!({"type":"presence_subscribe","user_ids":["bob"]}), json!("p"))
            .await;
        assert_eq!(r["status"], "online");
        go_offline(bob, &mut alice, "bob").await;

        // Two messages while bob is offline: one notification each, on each target.
        let m1 = alice.send_msg(&dm, "t1", "secret one").await["message_id"].as_str().expect("id").to_string();
        let m2 = alice.send_msg(&dm, "t2", "secret two").await["message_id"].as_str().expect("id").to_string();
        wait_pushes(&srv, 2).await;
        let apns_ids = || apns.accepted().iter().map(|a| a.payload["message_id"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
        let wp_ids = || {
            wp.accepted()
                .iter()
                .map(|m| serde_json::from_slice::<Value>(&m.plaintext).expect("json")["data"]["message_id"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        };
        for id in [&m1, &m2] {
            assert_eq!(count(&apns_ids(), id), 1, "APNs: exactly one for {id}");
            assert_eq!(count(&wp_ids(), id), 1, "Web Push: exactly one for {id}");
        }
        // sender_only: the sender shows, the text never leaves.
        let a = &apns.accepted()[0];
        assert_eq!(a.payload["aps"]["alert"]["title"], "alice");
        assert_eq!(a.payload["aps"]["alert"]["body"], "New message");
        assert!(!a.payload.to_string().contains("secret"));
        assert!(!String::from_utf8_lossy(&wp.accepted()[0].plaintext).contains("secret"));

        // bob mutes the direct thread; a group keeps notifying.
        let mut bob = srv.client("bob").await;
        alice.expect("presence").await; // bob online again
        let r = bob.request(json!({"type":"mute_thread","thread_id":dm}), json!(3)).await;
        assert_eq!(r["muted"], true, "{r}");
        let g = alice
            .request(json!({"type":"create_thread","kind":"group","members":["bob"],"title":"g"}), json!("g"))
            .await["thread_id"]
            .as_str()
            .expect("group")
            .to_string();
        bob.expect("thread").await;
        go_offline(bob, &mut alice, "bob").await;
        let muted = alice.send_msg(&dm, "t3", "muted").await["message_id"].as_str().expect("id").to_string();
        let m4 = alice.send_msg(&g, "t4", "group").await["message_id"].as_str().expect("id").to_string();
        wait_pushes(&srv, 4).await;
        wait_until("the group notification", || count(&apns_ids(), &m4) == 1 && count(&wp_ids(), &m4) == 1).await;
        assert_eq!(count(&apns_ids(), &muted), 0, "a muted thread gets no notification");
        assert_eq!(count(&wp_ids(), &muted), 0);

        // APNs reports the token gone: removed, and never tried again.
        apns.unregister(&token);
        let before = apns.requests();
        alice.send_msg(&g, "t5", "to a gone token").await;
        wait_pushes(&srv, 5).await;
        assert_eq!(apns.requests(), before + 1);
        let m6 = alice.send_msg(&g, "t6", "after").await["message_id"].as_str().expect("id").to_string();
        wait_pushes(&srv, 6).await;
        wait_until("Web Push still notified", || count(&wp_ids(), &m6) == 1).await;
        assert_eq!(apns.requests(), before + 1, "a removed token is never tried again");
        let mut bob = srv.client("bob").await;
        let r = bob.request(json!({"type":"list_push_targets"}), json!(4)).await;
        let targets = r["targets"].as_array().expect("targets");
        assert_eq!(targets.len(), 1, "{r}");
        assert_eq!(targets[0]["platform"], "webpush");
        // The providers' series on /metrics (counted just after each answer: polled).
        let want = [
            "messenger_push_sent_total{provider=\"apns\"} 3",
            "messenger_push_sent_total{provider=\"web_push\"} 5",
            "messenger_push_targets_removed_total{provider=\"apns\"} 1",
            "messenger_push_failed_total{provider=\"apns\",reason=\"credentials\"} 0",
        ];
        let end = Instant::now() + Duration::from_secs(20);
        let m = loop {
            let m = srv.metrics().await;
            if want.iter().all(|w| m.lines().any(|l| l == *w)) {
                break m;
            }
            assert!(Instant::now() < end, "expected {want:?} in\n{m}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let value = |series: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{series} missing from\n{m}"))
        };
        assert!(value("messenger_push_request_seconds_count{provider=\"web_push\"}") >= 5.0);
    })
    .await
    .expect("test timed out");
}
