//! Abuse limits over real WebSocket connections to `Server::serve` on 127.0.0.1: each
//! limit gives its documented error (an HTTP status with a body before the upgrade, or
//! an `error` frame after it), counts in `messenger_limit_refusals_total{limit}`, and
//! leaves other sessions and users alone.

mod common;

use std::time::{Duration, Instant};

use common::{start, test_config, try_connect, Client, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The value of `messenger_limit_refusals_total{limit="..."}` in a scrape.
fn refusals(metrics: &str, limit: &str) -> u64 {
    let prefix = format!("messenger_limit_refusals_total{{limit=\"{limit}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics:\n{metrics}"))
}

/// A raw HTTP request on a fresh connection; returns (status, body).
async fn raw(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_user_refuses_the_next_upgrade_with_429_until_one_closes() {
    let mut c = test_config();
    c.limits.max_sessions_per_user = 3;
    let mut server = start(c).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.client("mallory").await);
    }
    // The fourth upgrade is refused before the handshake, with a body saying why.
    let head =
        format!("GET /ws?token=mallory HTTP/1.1\r\nHost: t\r\n{UPGRADE}Connection: close\r\n\r\n");
    let (status, body) = raw(server.addr, &head).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too many sessions"), "{body}");
    assert_eq!(
        try_connect(server.addr, Some("mallory")).await.err(),
        Some(429)
    );
    // The open sessions are untouched and other users connect freely.
    for s in &mut open {
        s.ping().await;
    }
    let mut bob = server.client("bob").await;
    bob.ping().await;
    // Closing one frees its slot.
    let mut first = open.remove(0);
    first.ws.close(None).await.expect("close");
    drop(first);
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        match try_connect(server.addr, Some("mallory")).await {
            Ok(ws) => break Client::from_ws(ws).await,
            Err(429) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("reconnect after a close: {s}"),
        }
    };
    again.ping().await;
    // Two refusals above, and any while the closed session was winding down.
    assert!(refusals(&server.metrics().await, "sessions_per_user") >= 2);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_attempts_per_address_over_the_rate_get_429_then_recover() {
    let mut c = test_config();
    c.limits.connect_rate_per_sec = 1;
    c.limits.connect_rate_burst = 3;
    // The test's peer is loopback, which is exempt by default (a local proxy).
    c.limits.connect_rate_loopback = true;
    let mut server = start(c).await;
    let mut ok = 0;
    let mut refused = 0;
    let mut body = String::new();
    for _ in 0..6 {
        let (status, b) = raw(
            server.addr,
            "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                body = b;
            }
            s => panic!("unexpected {s}: {b}"),
        }
    }
    // 3 of burst (and at most one refilled meanwhile); the rest refused with a body.
    assert!((3..=4).contains(&ok), "ok {ok}, refused {refused}");
    assert!(body.contains("too many connection attempts"), "{body}");
    // A WebSocket upgrade over the rate is refused the same way.
    assert_eq!(
        try_connect(server.addr, Some("alice")).await.err(),
        Some(429)
    );
    // After the budget refills (1/s), connecting works again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut alice = loop {
        match try_connect(server.addr, Some("alice")).await {
            Ok(ws) => break Client::from_ws(ws).await,
            Err(429) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(s) => panic!("after the refill: {s}"),
        }
    };
    alice.ping().await;
    // The scrape itself is a connection: wait for the budget again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let (status, body) = raw(
            server.addr,
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status == 200 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(refusals(&metrics, "connect_rate") >= 3, "{metrics}");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_creation_per_user_is_rate_limited_and_other_users_are_not() {
    let mut c = test_config();
    c.limits.threads_per_minute = 3;
    let mut server = start(c).await;
    let mut alice = server.client("alice").await;
    for i in 0..3 {
        let r = alice
            .request(
                json!({"type":"create_thread","kind":"group","members":["bob"]}),
                json!(i),
            )
            .await;
        assert_eq!(r["type"], "thread", "{r}");
    }
    let r = alice
        .request(
            json!({"type":"create_thread","kind":"group","members":["bob"]}),
            json!("over"),
        )
        .await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    assert!(
        r["message"].as_str().unwrap_or("").contains("per minute"),
        "{r}"
    );
    // The same user's other session shares the budget; other requests still work.
    let mut alice2 = server.client("alice").await;
    let r = alice2
        .request(
            json!({"type":"create_thread","kind":"direct","members":["carol"]}),
            json!(1),
        )
        .await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    alice.ping().await;
    let r = alice
        .request(json!({"type":"list_threads"}), json!("l"))
        .await;
    assert_eq!(r["threads"].as_array().map(Vec::len), Some(3), "{r}");
    // Another user has a budget of their own.
    let mut bob = server.client("bob").await;
    bob.create_direct("carol").await;
    assert_eq!(refusals(&server.metrics().await, "threads_per_minute"), 2);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_size_and_add_members_per_request() {
    let mut c = test_config();
    c.limits.max_group_members = 5;
    c.limits.max_add_members = 2;
    let mut server = start(c).await;
    let mut alice = server.client("alice").await;
    let r = alice
        .request(
            json!({"type":"create_thread","kind":"group","members":["b","c","d","e","f"]}),
            json!(1),
        )
        .await;
    assert_eq!(
        r["code"], "bad_request",
        "6 members in a group of at most 5: {r}"
    );
    let r = alice
        .request(
            json!({"type":"create_thread","kind":"group","members":["b","c"]}),
            json!(2),
        )
        .await;
    let g = r["thread_id"].as_str().expect("group").to_string();
    let r = alice
        .request(
            json!({"type":"add_members","thread_id":g,"members":["d","e","f"]}),
            json!(3),
        )
        .await;
    assert_eq!(r["code"], "too_large", "3 in one add_members: {r}");
    assert!(r["message"]
        .as_str()
        .unwrap_or("")
        .contains("max_add_members"));
    let r = alice
        .request(
            json!({"type":"add_members","thread_id":g,"members":["d","e"]}),
            json!(4),
        )
        .await;
    assert_eq!(r["members"].as_array().map(Vec::len), Some(5), "{r}");
    let r = alice
        .request(
            json!({"type":"add_members","thread_id":g,"members":["f"]}),
            json!(5),
        )
        .await;
    assert_eq!(r["code"], "bad_request", "a sixth member: {r}");
    assert_eq!(refusals(&server.metrics().await, "add_members"), 1);
    server.stop().await.expect("stop");
}

/// Reads until the reply to a ping sent now (replies come in request order): the
/// frames before it.
async fn settle(c: &mut Client) -> Vec<serde_json::Value> {
    c.send(json!({"type":"ping","req_id":"settle"})).await;
    let mut seen = Vec::new();
    loop {
        let f = c.recv().await;
        if f["type"] == "pong" && f["req_id"] == "settle" {
            return seen;
        }
        seen.push(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_subscriptions_per_session_are_capped_and_unsubscribe_frees_room() {
    let mut c = test_config();
    c.limits.max_presence_subscriptions = 3;
    let mut server = start(c).await;
    let mut alice = server.client("alice").await;
    let r = alice
        .request(
            json!({"type":"create_thread","kind":"group","members":["b","c","d","e"]}),
            json!("g"),
        )
        .await;
    assert_eq!(r["type"], "thread", "{r}");
    let sub = |ids: &[&str]| json!({"type":"presence_subscribe","user_ids":ids});
    // Three distinct users (a repeat counts once) fit.
    alice.send(sub(&["b", "c", "b"])).await;
    settle(&mut alice).await;
    alice.send(sub(&["c", "d"])).await;
    settle(&mut alice).await;
    // A fourth does not: nothing of the request is subscribed.
    let r = alice.request(sub(&["e"]), json!("over")).await;
    assert_eq!(r["code"], "too_large", "{r}");
    assert!(r["message"]
        .as_str()
        .unwrap_or("")
        .contains("presence subscriptions"));
    // presence_unsubscribe has no reply of its own.
    alice
        .send(json!({"type":"presence_unsubscribe","user_ids":["b"]}))
        .await;
    assert_eq!(settle(&mut alice).await, Vec::<serde_json::Value>::new());
    alice.send(sub(&["e"])).await;
    assert_eq!(alice.expect("presence").await["user_id"], "e");
    // Another session of the same user has its own budget.
    let mut alice2 = server.client("alice").await;
    alice2.send(sub(&["b", "c", "d"])).await;
    let frames = settle(&mut alice2).await;
    assert!(frames.iter().all(|f| f["type"] == "presence"), "{frames:?}");
    assert_eq!(
        refusals(&server.metrics().await, "presence_subscriptions"),
        1
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list_refuses_other_origins_with_403() {
    let mut c = test_config();
    c.websocket.allowed_origins = vec!["https://chat.example.com".into()];
    let mut server = start(c).await;
    let with_origin = |origin: &str| {
        let mut req = format!("ws://{}/ws?token=alice", server.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
        req
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 403);
            let body =
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("origin not allowed"), "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let (ws, _) = tokio_tungstenite::connect_async(with_origin("https://CHAT.example.com"))
        .await
        .expect("an allowed origin (case-insensitive)");
    Client::from_ws(ws).await.ping().await;
    // No Origin header: a native client, allowed.
    server.client("bob").await.ping().await;
    assert_eq!(refusals(&server.metrics().await, "origin"), 1);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_the_handshake_deadline_and_others_are_served() {
    let mut c = test_config();
    c.websocket.handshake_timeout = Duration::from_millis(600);
    let mut server = start(c).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(b"GET /ws?tok").await.expect("write");
        slow.push(s);
    }
    // One byte at a time, never finishing the head, while a real client works.
    let mut alice = server.client("alice").await;
    for b in b"en=x HTTP/1.1\r\nHost: t\r\n" {
        for s in &mut slow {
            let _ = s.write_all(&[*b]).await;
        }
        alice.ping().await;
        if started.elapsed() > Duration::from_millis(400) {
            break;
        }
    }
    // Each trickler is answered (408) or closed at the deadline, not kept open.
    for mut s in slow {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "a trickled head outlived the handshake deadline");
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    alice.ping().await;
    server.stop().await.expect("stop");
}
