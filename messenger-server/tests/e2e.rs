//! End-to-end tests: the server on 127.0.0.1:0, driven by real WebSocket clients.
//! One test (or more) per protocol-v1 row, auth mode, limit and lifecycle event.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures::SinkExt;
use messenger_server::auth::sign_hs256;
use messenger_server::config::JwtConfig;
use messenger_server::ServerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn seqs(history: &Value) -> Vec<u64> {
    history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_ping_and_req_id_echo() {
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    assert_eq!(a.welcome["user_id"], "alice");
    assert!(a.welcome["session_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(a.welcome["server_time"].as_u64().is_some());
    for id in [json!("abc"), json!(42), json!(-7), json!(0)] {
        let r = a.request(json!({"type":"ping"}), id).await;
        assert_eq!(r["type"], "pong");
    }
    // No req_id: none echoed; unknown fields ignored.
    a.send(json!({"type":"ping","extra":{"x":1}})).await;
    let r = a.expect("pong").await;
    assert!(r.get("req_id").is_none());
    // Bearer header works like ?token=.
    let ws = try_connect_bearer(srv.addr, "bob").await.expect("bearer");
    let b = Client::from_ws(ws).await;
    assert_eq!(b.welcome["user_id"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_thread_send_receive_idempotent() {
    let srv = start(test_config()).await;
    let mut a1 = srv.client("alice").await;
    let mut a2 = srv.client("alice").await;
    let mut b = srv.client("bob").await;

    let t = a1.create_direct("bob").await;
    assert_eq!(t, "dm:alice:bob");
    let tb = b.expect("thread").await;
    assert_eq!(tb["thread_id"], t);
    assert_eq!(tb["kind"], "direct");
    assert!(tb.get("req_id").is_none(), "fan-out carries no req_id");
    let ta2 = a2.expect("thread").await;
    assert_eq!(ta2["thread_id"], t);
    // Bob creating the same direct thread gets the same id, and nobody is notified again.
    assert_eq!(b.create_direct("alice").await, t);
    a1.silence(200).await;

    let sent = a1.send_msg(&t, "tmp-1", "hello").await;
    assert_eq!(sent["thread_id"], t);
    assert_eq!(sent["temp_id"], "tmp-1");
    assert_eq!(sent["seq"], 1);
    let mid = sent["message_id"].as_str().expect("string id").to_string();
    assert!(mid.parse::<u64>().is_ok());
    for c in [&mut b, &mut a2] {
        let r = c.expect("receive_message").await;
        assert_eq!(r["message_id"], mid.as_str());
        assert_eq!(r["seq"], 1);
        assert_eq!(r["sender_id"], "alice");
        assert_eq!(r["text"], "hello");
        assert_eq!(r["sent_at"], sent["sent_at"]);
    }
    // Idempotent resend: the same answer, nothing delivered again.
    let again = a1.send_msg(&t, "tmp-1", "hello").await;
    assert_eq!(again["message_id"], mid.as_str());
    assert_eq!(again["seq"], 1);
    b.silence(200).await;
    a2.silence(0).await;
    let second = b.send_msg(&t, "tmp-1", "hi back").await;
    assert_eq!(second["seq"], 2, "temp_id is per sender");
    assert_eq!(a1.expect("receive_message").await["seq"], 2);
    assert_eq!(a2.expect("receive_message").await["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_route_and_watermarks_never_move_back() {
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let mut b1 = srv.client("bob").await;
    let mut b2 = srv.client("bob").await;
    let t = a.create_direct("bob").await;
    b1.expect("thread").await;
    b2.expect("thread").await;
    let m1 = a.send_msg(&t, "1", "one").await["message_id"].clone();
    let m2 = a.send_msg(&t, "2", "two").await["message_id"].clone();
    for _ in 0..2 {
        b1.expect("receive_message").await;
        b2.expect("receive_message").await;
    }

    // DELIVERED goes to the sender only: no reply to the acker.
    b1.send(
        json!({"type":"message_ack","thread_id":t,"message_id":m1,"status":"DELIVERED","req_id":9}),
    )
    .await;
    let ack = a.expect("message_ack").await;
    assert_eq!(ack["status"], "DELIVERED");
    assert_eq!(ack["user_id"], "bob");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["message_id"], m1);
    assert!(ack["at"].as_u64().is_some());
    b1.silence(150).await;
    b2.silence(0).await;

    // READ goes to the sender and to the acker's other sessions.
    b1.send(json!({"type":"message_ack","thread_id":t,"message_id":m2,"status":"READ"}))
        .await;
    let ack = a.expect("message_ack").await;
    assert_eq!(
        (ack["status"].clone(), ack["seq"].clone()),
        (json!("READ"), json!(2))
    );
    let other = b2.expect("message_ack").await;
    assert_eq!(other["status"], "READ");
    assert_eq!(other["user_id"], "bob");
    b1.silence(150).await;

    // Acking backwards is a silent no-op.
    b1.send(json!({"type":"message_ack","thread_id":t,"message_id":m1,"status":"READ"}))
        .await;
    b1.send(json!({"type":"message_ack","thread_id":t,"message_id":m1,"status":"DELIVERED"}))
        .await;
    a.silence(200).await;
    b2.silence(0).await;

    // list_threads: receipts of every member, last_seq, unread.
    a.send_msg(&t, "3", "three").await;
    b1.expect("receive_message").await;
    b2.expect("receive_message").await;
    let r = b1
        .request(json!({"type":"list_threads"}), json!("lt"))
        .await;
    assert_eq!(r["type"], "threads");
    let th = &r["threads"][0];
    assert_eq!(th["thread_id"], t);
    assert_eq!(th["kind"], "direct");
    assert_eq!(th["last_seq"], 3);
    assert_eq!(th["unread"], 1);
    assert_eq!(
        th["receipts"]["bob"],
        json!({"delivered_seq":2,"read_seq":2})
    );
    assert_eq!(
        th["receipts"]["alice"],
        json!({"delivered_seq":0,"read_seq":0})
    );
    let mut members: Vec<&str> = th["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    members.sort();
    assert_eq!(members, ["alice", "bob"]);
    let r = a.request(json!({"type":"list_threads"}), json!(1)).await;
    assert_eq!(r["threads"][0]["unread"], 0, "own messages are not unread");
    // Unknown message -> not_found; not a member -> forbidden.
    let r = b1
        .request(
            json!({"type":"message_ack","thread_id":t,"message_id":"12345","status":"READ"}),
            json!("nf"),
        )
        .await;
    assert_eq!(r["code"], "not_found");
    let mut c = srv.client("carol").await;
    let r = c
        .request(
            json!({"type":"message_ack","thread_id":t,"message_id":m1,"status":"READ"}),
            json!("fb"),
        )
        .await;
    assert_eq!(r["code"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_add_and_leave() {
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    let mut c = srv.client("carol").await;
    let mut d = srv.client("dave").await;
    let g = a
        .request(
            json!({"type":"create_thread","kind":"group","members":["bob","carol"],"title":"Team"}),
            json!("g"),
        )
        .await;
    assert_eq!(g["type"], "thread");
    assert_eq!(g["kind"], "group");
    assert_eq!(g["title"], "Team");
    let gid = g["thread_id"].as_str().expect("id").to_string();
    assert!(gid.starts_with("g:"), "{gid}");
    assert_eq!(g["members"].as_array().expect("m").len(), 3);
    assert_eq!(b.expect("thread").await["thread_id"], gid.as_str());
    assert_eq!(c.expect("thread").await["thread_id"], gid.as_str());
    d.silence(100).await;

    // Any member may add.
    let r = b
        .request(
            json!({"type":"add_members","thread_id":gid,"members":["dave"]}),
            json!("add"),
        )
        .await;
    assert_eq!(r["type"], "thread");
    assert_eq!(r["members"].as_array().expect("m").len(), 4);
    for x in [&mut a, &mut c, &mut d] {
        let t = x.expect("thread").await;
        assert!(t["members"].as_array().expect("m").contains(&json!("dave")));
    }
    // Dave can now send; everyone else receives.
    d.send_msg(&gid, "x", "hi all").await;
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.expect("receive_message").await["sender_id"], "dave");
    }

    // Carol leaves: reply, everyone (remaining) gets the updated thread.
    let r = c
        .request(json!({"type":"leave_thread","thread_id":gid}), json!("lv"))
        .await;
    assert_eq!(r["type"], "thread");
    assert!(!r["members"]
        .as_array()
        .expect("m")
        .contains(&json!("carol")));
    for x in [&mut a, &mut b, &mut d] {
        let t = x.expect("thread").await;
        assert_eq!(t["members"].as_array().expect("m").len(), 3);
    }
    // Carol is no longer a member.
    let r = c
        .request(
            json!({"type":"send_message","thread_id":gid,"temp_id":"y","text":"?"}),
            json!(5),
        )
        .await;
    assert_eq!(r["code"], "forbidden");
    // Direct threads cannot be left or extended.
    let dm = a.create_direct("bob").await;
    b.expect("thread").await;
    let r = a
        .request(json!({"type":"leave_thread","thread_id":dm}), json!(6))
        .await;
    assert_eq!(r["code"], "forbidden");
    let r = a
        .request(
            json!({"type":"add_members","thread_id":dm,"members":["carol"]}),
            json!(7),
        )
        .await;
    assert_eq!(r["code"], "forbidden");
    // Unknown thread.
    let r = a
        .request(json!({"type":"leave_thread","thread_id":"g:999"}), json!(8))
        .await;
    assert_eq!(r["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_paging() {
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let t = a.create_direct("bob").await;
    for i in 1..=5 {
        a.send_msg(&t, &format!("t{i}"), &format!("m{i}")).await;
    }
    let h = |extra: Value| {
        let mut v = json!({"type":"fetch_history","thread_id":t});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    let r = a.request(h(json!({})), json!("h0")).await;
    assert_eq!(r["type"], "history");
    assert_eq!(seqs(&r), [1, 2, 3, 4, 5]);
    assert_eq!(r["has_more"], false);
    let m = &r["messages"][0];
    assert_eq!(m["text"], "m1");
    assert_eq!(m["sender_id"], "alice");
    assert!(m["message_id"].as_str().is_some() && m["sent_at"].as_u64().is_some());

    let r = a.request(h(json!({"limit":2})), json!("h1")).await;
    assert_eq!((seqs(&r), r["has_more"].clone()), (vec![4, 5], json!(true)));
    let r = a
        .request(h(json!({"before_seq":4,"limit":2})), json!("h2"))
        .await;
    assert_eq!((seqs(&r), r["has_more"].clone()), (vec![2, 3], json!(true)));
    let r = a
        .request(h(json!({"before_seq":2,"limit":2})), json!("h3"))
        .await;
    assert_eq!((seqs(&r), r["has_more"].clone()), (vec![1], json!(false)));
    let r = a
        .request(h(json!({"after_seq":0,"limit":2})), json!("h4"))
        .await;
    assert_eq!((seqs(&r), r["has_more"].clone()), (vec![1, 2], json!(true)));
    let r = a
        .request(h(json!({"after_seq":3,"limit":5})), json!("h5"))
        .await;
    assert_eq!(
        (seqs(&r), r["has_more"].clone()),
        (vec![4, 5], json!(false))
    );
    let r = a
        .request(
            h(json!({"after_seq":1,"before_seq":5,"limit":2})),
            json!("h6"),
        )
        .await;
    assert_eq!(
        seqs(&r),
        [2, 3],
        "both bounds: the oldest in the open range"
    );
    let r = a.request(h(json!({"limit":1000})), json!("h7")).await;
    assert_eq!(seqs(&r).len(), 5, "limit is capped, not refused");
    let r = a.request(h(json!({"limit":0})), json!("h8")).await;
    assert_eq!(r["code"], "bad_request");
    let r = a.request(h(json!({"limit":"5"})), json!("h9")).await;
    assert_eq!(r["code"], "bad_request");
    let mut c = srv.client("carol").await;
    let r = c.request(h(json!({})), json!("hc")).await;
    assert_eq!(r["code"], "forbidden");
    let r = c
        .request(
            json!({"type":"fetch_history","thread_id":"nope"}),
            json!("hn"),
        )
        .await;
    assert_eq!(r["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_subscribe_online_offline_and_forbidden() {
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    a.create_direct("bob").await;
    b.expect("thread").await;
    let mut c = srv.client("carol").await;

    // A user who shares no thread: the whole list is refused.
    let r = a
        .request(
            json!({"type":"presence_subscribe","user_ids":["bob","carol"]}),
            json!("ps0"),
        )
        .await;
    assert_eq!(r["code"], "forbidden");
    a.silence(100).await;

    let r = a
        .request(
            json!({"type":"presence_subscribe","user_ids":["bob"]}),
            json!("ps"),
        )
        .await;
    assert_eq!(r["type"], "presence");
    assert_eq!(r["user_id"], "bob");
    assert_eq!(r["status"], "online");

    // Bob goes away: offline after the grace period, with last_seen.
    let before = now_ms();
    b.ws.close(None).await.expect("close");
    drop(b);
    let p = a.expect("presence").await;
    assert_eq!(p["status"], "offline");
    assert!(p.get("req_id").is_none());
    let last_seen = p["last_seen"].as_u64().expect("last_seen");
    assert!(last_seen + 50 >= before, "{last_seen} vs {before}");
    // Back online.
    let _b = srv.client("bob").await;
    let p = a.expect("presence").await;
    assert_eq!(p["status"], "online");
    let r = a
        .request(
            json!({"type":"presence_subscribe","user_ids":["bob"]}),
            json!(3),
        )
        .await;
    assert_eq!(r["status"], "online");
    assert!(r.get("last_seen").is_none());

    // Unsubscribe: no reply, no more updates.
    a.send(json!({"type":"presence_unsubscribe","user_ids":["bob"]}))
        .await;
    a.ping().await;
    drop(_b);
    a.silence(800).await;
    // Carol may watch herself (she shares... nothing); others she may not.
    let r = c
        .request(
            json!({"type":"presence_subscribe","user_ids":["alice"]}),
            json!(4),
        )
        .await;
    assert_eq!(r["code"], "forbidden");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_goes_to_others_only() {
    let srv = start(test_config()).await;
    let mut a1 = srv.client("alice").await;
    let mut a2 = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    let t = a1.create_direct("bob").await;
    b.expect("thread").await;
    a2.expect("thread").await;
    a1.send(json!({"type":"typing","thread_id":t,"typing":true}))
        .await;
    let ty = b.expect("typing").await;
    assert_eq!(
        ty,
        json!({"type":"typing","thread_id":t,"user_id":"alice","typing":true})
    );
    a1.silence(150).await;
    a2.silence(0).await;
    let mut c = srv.client("carol").await;
    let r = c
        .request(
            json!({"type":"typing","thread_id":t,"typing":true}),
            json!(1),
        )
        .await;
    assert_eq!(r["code"], "forbidden");
    let r = c
        .request(
            json!({"type":"typing","thread_id":t,"typing":"yes"}),
            json!(2),
        )
        .await;
    assert_eq!(r["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_and_the_connection_survives() {
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let t = a.create_direct("bob").await;
    let mut c = srv.client("carol").await;

    a.send_raw("{not json").await;
    let e = a.expect_error("bad_request").await;
    assert!(e.get("req_id").is_none());
    a.send_raw("[1,2]").await;
    a.expect_error("bad_request").await;
    a.send_raw(r#"{"req_id":1}"#).await;
    assert_eq!(a.expect_error("bad_request").await["req_id"], 1);
    a.send_raw(r#"{"type":"launch_rockets","req_id":"u"}"#)
        .await;
    assert_eq!(a.expect_error("unknown_type").await["req_id"], "u");
    // Missing and ill-typed fields, bad ids.
    let cases = [
        json!({"type":"send_message","thread_id":t,"text":"x"}),
        json!({"type":"send_message","thread_id":t,"temp_id":1,"text":"x"}),
        json!({"type":"send_message","thread_id":"bad id!","temp_id":"1","text":"x"}),
        json!({"type":"send_message","thread_id":t,"temp_id":"","text":"x"}),
        json!({"type":"send_message","thread_id":t,"temp_id":"x".repeat(129),"text":"x"}),
        json!({"type":"send_message","thread_id":t,"temp_id":"1","text":""}),
        json!({"type":"message_ack","thread_id":t,"message_id":"abc","status":"READ"}),
        json!({"type":"message_ack","thread_id":t,"message_id":"1","status":"SEEN"}),
        json!({"type":"create_thread","kind":"direct","members":["x y"]}),
        json!({"type":"create_thread","kind":"direct","members":["bob","carol"]}),
        json!({"type":"create_thread","kind":"channel","members":["bob"]}),
        json!({"type":"presence_subscribe","user_ids":"bob"}),
        json!({"type":"add_members","thread_id":t}),
        json!({"type":"fetch_history","thread_id":t,"before_seq":-1}),
        json!({"type":"typing","thread_id":"x".repeat(129),"typing":true}),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let r = a.request(case.clone(), json!(i)).await;
        assert_eq!(r["code"], "bad_request", "{case} -> {r}");
    }
    // Validated before authorization: a malformed frame for a forbidden thread.
    let r = c
        .request(
            json!({"type":"send_message","thread_id":t,"temp_id":5,"text":"x"}),
            json!("v"),
        )
        .await;
    assert_eq!(r["code"], "bad_request");
    // Text over the limit.
    let r = a
        .request(
            json!({"type":"send_message","thread_id":t,"temp_id":"big","text":"x".repeat(16 * 1024 + 1)}),
            json!("big"),
        )
        .await;
    assert_eq!(r["code"], "too_large");
    // Binary frames are reserved.
    a.ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .expect("send");
    a.expect_error("bad_request").await;
    // Still serving.
    a.ping().await;
    let sent = a.send_msg(&t, "ok", "still here").await;
    assert_eq!(sent["seq"], 1);
    let m = srv.metrics().await;
    assert!(
        m.contains("messenger_errors_total{code=\"bad_request\"}"),
        "{m}"
    );
    assert!(
        m.contains("messenger_errors_total{code=\"unknown_type\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_1009_and_others_continue() {
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    let big = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(64 * 1024 + 10)
    );
    a.ws.send(Message::Text(big.into())).await.expect("send");
    assert_eq!(a.close_code().await, Some(1009));
    b.ping().await;
    let mut a2 = srv.client("alice").await;
    a2.ping().await;
    // A frame just under the limit is fine (and answered, its padding ignored).
    let ok = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(60 * 1024));
    a2.send_raw(&ok).await;
    a2.expect("pong").await;
    assert!(srv
        .metrics()
        .await
        .contains("messenger_oversized_frames_total 1"));
}

/// A flood of frames is read at the session's frame rate: every frame is answered, in
/// order, none refused (the backpressure reaches the client's socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_paced() {
    let mut cfg = test_config();
    cfg.limits.rate_limit_per_sec = 20;
    cfg.limits.rate_limit_burst = 5;
    let srv = start(cfg).await;
    let mut a = srv.client("alice").await;
    for i in 0..30 {
        a.send(json!({"type":"ping","req_id":i})).await;
    }
    for i in 0..30 {
        let r = a.recv().await;
        assert_eq!(
            (r["type"].as_str(), r["req_id"].as_u64()),
            (Some("pong"), Some(i)),
            "every frame answered, in order: {r}"
        );
    }
    assert!(!srv
        .metrics()
        .await
        .contains("messenger_frames_paced_total 0"));
}

/// A client pipelining sends past the frame rate is slowed, not refused: every send is
/// stored, in the order written (a refused send retried later would land after the
/// sends that followed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_the_rate_are_paced_in_order() {
    let mut cfg = test_config();
    cfg.limits.rate_limit_per_sec = 20;
    cfg.limits.rate_limit_burst = 5;
    let srv = start(cfg).await;
    let mut a = srv.client("alice").await;
    let t = a
        .request(
            json!({"type":"create_thread","kind":"direct","members":["bob"]}),
            json!("t"),
        )
        .await;
    let thread = t["thread_id"].as_str().expect("thread_id").to_string();
    for i in 0..30 {
        a.send(json!({"type":"send_message","req_id":i,"thread_id":thread,
                      "temp_id":format!("s{i}"),"text":format!("m{i}")}))
            .await;
    }
    for i in 0..30u64 {
        let r = a.recv().await;
        assert_eq!(r["type"], "message_sent", "never refused: {r}");
        assert_eq!(
            (r["req_id"].as_u64(), r["seq"].as_u64()),
            (Some(i), Some(i + 1)),
            "{r}"
        );
    }
    let m = srv.metrics().await;
    let paced = m
        .lines()
        .find_map(|l| l.strip_prefix("messenger_frames_paced_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(paced >= 1.0, "sends were paced:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_4000_and_catches_up() {
    let mut cfg = test_config();
    cfg.limits.outbound_queue = 8;
    cfg.websocket.write_timeout = Duration::from_secs(8);
    let srv = start(cfg).await;
    let mut a = srv.client("alice").await;
    // Bob's socket has a tiny receive buffer and Bob stops reading.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = sock.connect(srv.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws?token=bob", srv.addr),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .expect("upgrade");
    let mut b = Client::from_ws(ws).await;
    let t = a.create_direct("bob").await;
    // More than the largest socket send buffer (tcp_wmem max is typically 4 MiB).
    let text = "y".repeat(16_000);
    let n = 400u64;
    for i in 0..n {
        a.send_msg(&t, &format!("s{i}"), &text).await;
    }
    // Bob resumes: he reads what was buffered, then the close with 4000.
    let mut last_seq = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut b.ws))
            .await
            .expect("frames in time")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["type"] == "receive_message" {
                    let s = v["seq"].as_u64().expect("seq");
                    assert_eq!(s, last_seq + 1, "in order, no gaps before the close");
                    last_seq = s;
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("stream ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(4000));
    assert!(last_seq < n, "bob was cut off before the end");
    // Catch up after reconnecting.
    let mut b = srv.client("bob").await;
    let r = b.request(json!({"type":"list_threads"}), json!("l")).await;
    assert_eq!(r["threads"][0]["last_seq"], n);
    let mut have = last_seq;
    loop {
        let h = b
            .request(
                json!({"type":"fetch_history","thread_id":t,"after_seq":have,"limit":200}),
                json!("h"),
            )
            .await;
        let s = seqs(&h);
        if let Some(first) = s.first() {
            assert_eq!(*first, have + 1);
        }
        have = s.last().copied().unwrap_or(have);
        if h["has_more"] == false {
            break;
        }
    }
    assert_eq!(have, n);
    assert!(srv
        .metrics()
        .await
        .contains("messenger_slow_consumer_closes_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_times_out_and_goes_offline() {
    let mut cfg = test_config();
    cfg.websocket.ping_interval = Duration::from_millis(200);
    let srv = start(cfg).await;
    let mut a = srv.client("alice").await;
    let b = srv.client("bob").await; // never read again: no pong, no frames
    a.create_direct("bob").await;
    let r = a
        .request(
            json!({"type":"presence_subscribe","user_ids":["bob"]}),
            json!(1),
        )
        .await;
    assert_eq!(r["status"], "online");
    // Alice keeps talking so she stays alive; Bob is silent.
    let start = std::time::Instant::now();
    let p = loop {
        a.send(json!({"type":"ping"})).await;
        let v = a.recv().await;
        if v["type"] == "presence" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(p["status"], "offline");
    assert!(p["last_seen"].as_u64().is_some());
    // 2 intervals (400 ms) + grace (300 ms), with slack for a loaded machine.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(srv
        .metrics()
        .await
        .contains("messenger_heartbeat_timeouts_total 1"));
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_1001_and_returns() {
    let mut srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    a.ping().await;
    let stop = async { srv.stop().await };
    let (r, ca, cb) = tokio::join!(stop, a.close_code(), b.close_code());
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(ca, Some(1001));
    assert_eq!(cb, Some(1001));
    assert!(tokio::net::TcpStream::connect(srv.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_auth_refusals() {
    let srv = start(test_config()).await;
    assert_eq!(try_connect(srv.addr, None).await.err(), Some(401));
    assert_eq!(try_connect(srv.addr, Some("")).await.err(), Some(401));
    assert_eq!(
        try_connect(srv.addr, Some("bad%20id")).await.err(),
        Some(401)
    );
    assert_eq!(
        try_connect(srv.addr, Some(&"x".repeat(65))).await.err(),
        Some(401)
    );
    let (status, _) = srv.get("/ws", "").await;
    assert_eq!(status, 401, "auth is checked before the upgrade headers");
    let (status, _) = srv.get("/ws?token=alice", "").await;
    assert_eq!(status, 400, "a plain GET is not an upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth() {
    let secret = b"test-secret".to_vec();
    let mut cfg = test_config();
    cfg.auth.jwt = Some(JwtConfig::hs256("test-secret"));
    let srv = start(cfg).await;
    let now = now_ms() / 1000;
    let good = sign_hs256(&secret, &json!({"sub":"alice","exp":now + 60}));
    let c = Client::from_ws(try_connect(srv.addr, Some(&good)).await.expect("good")).await;
    assert_eq!(c.welcome["user_id"], "alice");
    let c = Client::from_ws(try_connect_bearer(srv.addr, &good).await.expect("bearer")).await;
    assert_eq!(c.welcome["user_id"], "alice");
    let bad_sig = sign_hs256(b"other", &json!({"sub":"alice","exp":now + 60}));
    assert_eq!(try_connect(srv.addr, Some(&bad_sig)).await.err(), Some(401));
    let expired = sign_hs256(&secret, &json!({"sub":"alice","exp":now - 3600}));
    assert_eq!(try_connect(srv.addr, Some(&expired)).await.err(), Some(401));
    let no_exp = sign_hs256(&secret, &json!({"sub":"alice"}));
    assert_eq!(try_connect(srv.addr, Some(&no_exp)).await.err(), Some(401));
    assert_eq!(try_connect_bearer(srv.addr, &no_exp).await.err(), Some(401));
    // A dev token is not a JWT.
    assert_eq!(try_connect(srv.addr, Some("alice")).await.err(), Some(401));
    assert_eq!(try_connect(srv.addr, None).await.err(), Some(401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_chat_is_served_and_a_plain_get_tells_a_bad_token() {
    // As the binary does: the chat server's routes and the browser chat's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = messenger_server::Server::builder()
        .config(test_config())
        .build()
        .await
        .expect("build");
    let routes = server.router().merge(messenger_server::web::router());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_router(listener, routes, async move {
        let _ = stopped.await;
    }));
    let srv = Http { addr };
    let (status, page) = srv.get("/", "").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"<script type="module" src="chat.js"></script>"#));
    let (status, script) = srv.get("/chat.js", "").await;
    assert_eq!(status, 200);
    assert!(
        script.starts_with("// Generated by messenger-js"),
        "{}",
        &script[..80]
    );
    assert_eq!(srv.get("/chat.css", "").await.0, 200);
    // The page may load only its own script and style, and talk only to its origin.
    let mut s = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let head = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(head.contains("x-content-type-options: nosniff"));
    // The browser SDK's probe: a plain GET /ws (no upgrade) answers 401 for a bad
    // token and 400 for a good one.
    assert_eq!(srv.get("/ws?token=not%20a%20user", "").await.0, 401);
    assert_eq!(srv.get("/ws", "").await.0, 401);
    assert_eq!(srv.get("/ws?token=alice", "").await.0, 400);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// Raw HTTP to a server started by hand.
struct Http {
    addr: std::net::SocketAddr,
}

impl Http {
    async fn get(&self, path: &str, extra: &str) -> (u16, String) {
        http_get(self.addr, path, extra).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_metrics_and_routing() {
    let srv = start(test_config()).await;
    assert_eq!(srv.get("/healthz", "").await, (200, "ok\n".to_string()));
    assert_eq!(srv.get("/nope", "").await.0, 404);
    let mut a = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    let t = a.create_direct("bob").await;
    b.expect("thread").await;
    a.send_msg(&t, "1", "hi").await;
    b.expect("receive_message").await;
    // The writer counts a frame once the flush returns, which can be just after the
    // peer already read it: poll briefly instead of racing it.
    let needles = [
        "messenger_connections_open 2",
        "messenger_frames_in_total{type=\"send_message\"} 1",
        "messenger_frames_in_total{type=\"create_thread\"} 1",
        "messenger_frames_out_total{type=\"receive_message\"} 1",
        "messenger_frames_out_total{type=\"welcome\"} 2",
        "messenger_messages_accepted_total 1",
        "messenger_delivery_latency_seconds_count 1",
        "# TYPE messenger_delivery_latency_seconds histogram",
        "messenger_acks_total 0",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let m = srv.metrics().await;
        let missing: Vec<&str> = needles.iter().copied().filter(|n| !m.contains(n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "missing {missing:?} in\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_auth_on_public_address_is_refused_by_serve() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let server = messenger_server::Server::builder()
        .config(ServerConfig::default())
        .build()
        .await
        .expect("build");
    let r = server.serve(listener, std::future::pending()).await;
    assert!(
        matches!(r, Err(messenger_server::ServerError::Config(_))),
        "{r:?}"
    );
}

#[test]
fn binary_help_and_insecure_refusal() {
    let bin = env!("CARGO_BIN_EXE_messenger-server");
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--jwt-secret-file",
        "--jwt-leeway",
        "--jwt-public-key",
        "--jwks-file",
        "--jwks-url",
        "--jwt-audience",
        "--jwt-issuer",
        "--insecure-dev-auth",
        "--node-id",
        "--max-connections",
        "--max-frame-bytes",
        "--max-text-bytes",
        "--outbound-queue",
        "--rate-limit",
        "--rate-burst",
        "--ping-interval",
        "--handshake-timeout",
        "--write-timeout",
        "--drain-timeout",
        "--presence-grace",
        "--read-buffer-bytes",
        "--write-buffer-bytes",
        "--store",
        "--data-dir",
        "--sync",
        "MESSENGER_JWT_SECRET",
        "RUST_LOG",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = std::process::Command::new(bin)
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("MESSENGER_JWT_SECRET")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dev auth"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_answers_408() {
    let mut cfg = test_config();
    cfg.websocket.handshake_timeout = Duration::from_millis(200);
    let srv = start(cfg).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /ws HTTP/1.1\r\n")
        .await
        .expect("partial head");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .expect("closed in time")
        .expect("read");
    // hyper closes a connection whose request head is late (with a 408 or without).
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // The server still serves.
    srv.client("alice").await.ping().await;
}

/// The binary: SIGTERM closes sessions with 1001 and exits 0.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_sigterm_closes_1001_and_exits_0() {
    use std::io::BufRead;
    let bin = env!("CARGO_BIN_EXE_messenger-server");
    let mut child = std::process::Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--drain-timeout",
            "3s",
            "--store",
            "memory",
        ])
        .env_remove("MESSENGER_JWT_SECRET")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    // The dev-auth notice says where to connect.
    let url = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut notice = String::new();
        while let Some(Ok(line)) = lines.next() {
            notice.push_str(&line);
            if let Some(i) = line.find("ws://") {
                let url = line[i..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string();
                // Keep draining stderr so the child never blocks on it.
                std::thread::spawn(move || for _ in lines {});
                return (url, notice);
            }
        }
        (String::new(), notice)
    })
    .await
    .expect("join");
    let (url, notice) = url;
    assert!(notice.contains("DEV AUTH"), "{notice}");
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect to the binary");
    let mut c = Client::from_ws(ws).await;
    c.ping().await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(c.close_code().await, Some(1001));
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_frame_closes_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let mut b = srv.client("bob").await;
    let frame = Frame::message(vec![0xffu8, 0xfe], OpCode::Data(Data::Text), true);
    a.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(a.close_code().await, Some(1007));
    b.ping().await;
}

/// Rough server memory per idle WebSocket connection (RSS delta; clients are raw TCP
/// sockets so they add almost nothing). Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn idle_connection_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * 4)
    }
    let srv = start(test_config()).await;
    let n = 500;
    let mut socks = Vec::with_capacity(n);
    // Warm up allocator arenas.
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(srv.addr)
            .await
            .expect("connect");
        let req = format!(
            "GET /ws?token=w{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
        socks.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(srv.addr)
            .await
            .expect("connect");
        let req = format!(
            "GET /ws?token=u{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
        socks.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib();
    println!(
        "{n} idle connections: {} KiB RSS, {:.1} KiB each",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / n as f64
    );
}

/// A browser behind a proxy: 60 headers and 12 KiB of cookies (the old hand-written
/// parser refused more than 32 headers or an 8 KiB head). Far more is refused with 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_60_headers_and_12_kib_of_cookies() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let srv = start(test_config()).await;
    let mut req = format!("ws://{}/ws?token=alice", srv.addr)
        .into_client_request()
        .expect("request");
    let h = req.headers_mut();
    for i in 0..55 {
        h.insert(
            HeaderName::from_bytes(format!("x-forwarded-hop-{i}").as_bytes()).expect("name"),
            HeaderValue::from_static("proxy.example.internal"),
        );
    }
    let cookies: Vec<String> = (0..50)
        .map(|i| format!("c{i:02}={}", "v".repeat(250)))
        .collect();
    let cookie = cookies.join("; ");
    assert!(cookie.len() >= 12 * 1024);
    h.insert("cookie", HeaderValue::from_str(&cookie).expect("cookie"));
    // tungstenite adds host, connection, upgrade, sec-websocket-version and -key.
    assert!(h.len() + 5 >= 61, "{} headers", h.len() + 5);
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(resp.status(), 101);
    let mut c = Client::from_ws(ws).await;
    assert_eq!(c.welcome["user_id"], "alice");
    c.ping().await;

    // Beyond the limits (128 headers by default): 431, and the server keeps serving.
    let mut req = format!("ws://{}/ws?token=bob", srv.addr)
        .into_client_request()
        .expect("request");
    for i in 0..200 {
        req.headers_mut().insert(
            HeaderName::from_bytes(format!("x-h-{i}").as_bytes()).expect("name"),
            HeaderValue::from_static("1"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 431),
        other => panic!("expected 431, got {other:?}"),
    }
    srv.client("carol").await.ping().await;
}

/// Every series the server documents is exported, and documented in
/// docs/operations.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_has_every_documented_series() {
    let srv = start(test_config()).await;
    let mut a = srv.client("alice").await;
    let t = a.create_direct("bob").await;
    a.send_msg(&t, "m1", "hello").await;
    a.send_raw("not json").await;
    a.expect_error("bad_request").await;
    assert_eq!(try_connect(srv.addr, None).await.err(), Some(401));
    let (status, text) = srv.get("/metrics", "").await;
    assert_eq!(status, 200);
    let ops = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    for series in messenger_server::metrics::SERIES {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "{series} missing from /metrics:\n{text}"
        );
        let family = series
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            ops.contains(family),
            "{family} is not documented in docs/operations.md"
        );
    }
    assert!(
        text.contains("messenger_messages_accepted_total 1"),
        "{text}"
    );
    assert!(
        text.contains("messenger_unauthorized_total{reason=\"missing_token\"} 1"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
}
