//! Cluster mode in process: several servers (nodes) on 127.0.0.1:0 that share a real
//! Redis (directory, presence, relay, started by this binary) and one in-memory
//! message and thread store, driven by real WebSocket clients.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_config, try_connect, Client};
use futures::StreamExt;
use messenger_core::{MessageStore, NodeId, ThreadStore};
use messenger_server::{Server, ServerConfig, ServerError};
use messenger_storage_mem::MemBackend;
use messenger_test_support::redis::{shared, unique_prefix, RedisServer};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Node TTL used by these tests: a node is dead 2 s after its last heartbeat.
const NODE_TTL: Duration = Duration::from_secs(2);

struct Node {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Node {
    async fn client(&self, user: &str) -> Client {
        Client::connect(self.addr, user).await
    }

    async fn stop(&mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve returns in time")
            .expect("join")
    }
}

fn config(url: &str, prefix: &str, node: u16) -> ServerConfig {
    let mut c = test_config();
    c.node_id = NodeId::new(node).expect("node id");
    c.redis.url = Some(url.to_string());
    c.redis.key_prefix = prefix.to_string();
    c.redis.node_ttl = NODE_TTL;
    c
}

async fn build(c: ServerConfig, mem: &MemBackend) -> Result<Server, ServerError> {
    Server::builder()
        .config(c)
        .message_store(mem.messages().clone() as Arc<dyn MessageStore>)
        .thread_store(mem.threads().clone() as Arc<dyn ThreadStore>)
        .build()
        .await
}

async fn start(url: &str, prefix: &str, node: u16, mem: &MemBackend) -> Node {
    let server = build(config(url, prefix, node), mem)
        .await
        .expect("node starts");
    assert!(server.adapters_in_use().contains("sessions: redis"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    Node {
        addr,
        stop: Some(tx),
        task: Some(task),
    }
}

/// Every seq of `thread` in the history, paging forward from 0.
async fn history_seqs(c: &mut Client, thread: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = 0u64;
    for page in 0..1000 {
        let req_id = json!(format!("h{page}"));
        c.send(json!({"type":"fetch_history","thread_id":thread,"after_seq":after,"limit":200,"req_id":req_id}))
            .await;
        // A message sent just before this session connected may still reach it live
        // (fan-out to other nodes runs after `message_sent`): skip it.
        let r = loop {
            let r = c.recv().await;
            if r["type"] != "receive_message" {
                break r;
            }
        };
        assert_eq!(r["req_id"], req_id, "{r}");
        assert_eq!(r["type"], "history", "{r}");
        let msgs = r["messages"].as_array().expect("messages");
        for m in msgs {
            out.push(m["seq"].as_u64().expect("seq"));
        }
        after = out.last().copied().unwrap_or(after);
        if r["has_more"] != true {
            return out;
        }
    }
    panic!("history did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_user_on_two_nodes_direct_chat_and_receipts() {
    let (url, prefix, mem) = (
        shared().url(),
        unique_prefix("same-user"),
        MemBackend::new(),
    );
    let n1 = start(&url, &prefix, 1, &mem).await;
    let n2 = start(&url, &prefix, 2, &mem).await;
    let mut a1 = n1.client("alice").await;
    let mut a2 = n2.client("alice").await;
    let mut b = n2.client("bob").await;

    // Thread creation reaches bob and alice's other session, both on the other node.
    let t = a1.create_direct("bob").await;
    assert_eq!(b.expect("thread").await["thread_id"], t.as_str());
    assert_eq!(a2.expect("thread").await["thread_id"], t.as_str());

    // alice@n1 -> bob@n2 and alice@n2.
    let sent = a1.send_msg(&t, "t1", "hello from n1").await;
    assert_eq!(sent["seq"], 1);
    for c in [&mut b, &mut a2] {
        let r = c.expect("receive_message").await;
        assert_eq!(
            (r["seq"].clone(), r["text"].clone()),
            (json!(1), json!("hello from n1"))
        );
        assert_eq!(r["message_id"], sent["message_id"]);
    }
    // bob@n2 -> alice@n1 (remote) and alice@n2 (local).
    let sent2 = b.send_msg(&t, "t1", "hi from n2").await;
    assert_eq!(sent2["seq"], 2);
    assert_eq!(a1.expect("receive_message").await["seq"], 2);
    assert_eq!(a2.expect("receive_message").await["seq"], 2);
    // Message ids from different nodes carry their node in the Snowflake node field.
    let node_of = |v: &Value| {
        let id: u64 = v["message_id"].as_str().expect("id").parse().expect("u64");
        (id >> 12) & 0x3ff
    };
    assert_eq!((node_of(&sent), node_of(&sent2)), (1, 2));

    // DELIVERED from alice@n1 goes to bob@n2 only.
    a1.send(json!({"type":"message_ack","thread_id":t,"message_id":sent2["message_id"],"status":"DELIVERED"}))
        .await;
    let ack = b.expect("message_ack").await;
    assert_eq!(
        (ack["status"].clone(), ack["user_id"].clone()),
        (json!("DELIVERED"), json!("alice"))
    );
    // READ from alice@n1 goes to bob@n2 and to alice's other session on n2.
    a1.send(json!({"type":"message_ack","thread_id":t,"message_id":sent2["message_id"],"status":"READ"}))
        .await;
    let ack = b.expect("message_ack").await;
    assert_eq!(
        (ack["status"].clone(), ack["seq"].clone()),
        (json!("READ"), json!(2))
    );
    let other = a2.expect("message_ack").await;
    assert_eq!(
        (other["status"].clone(), other["user_id"].clone()),
        (json!("READ"), json!("alice"))
    );
    a1.silence(200).await;
    // Receipts are visible from either node.
    let r = b.request(json!({"type":"list_threads"}), json!("lt")).await;
    assert_eq!(
        r["threads"][0]["receipts"]["alice"],
        json!({"delivered_seq":2,"read_seq":2})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_chat_and_presence_across_nodes() {
    let (url, prefix, mem) = (shared().url(), unique_prefix("group"), MemBackend::new());
    let n1 = start(&url, &prefix, 1, &mem).await;
    let n2 = start(&url, &prefix, 2, &mem).await;
    let n3 = start(&url, &prefix, 3, &mem).await;
    let mut a = n1.client("alice").await;
    let mut b = n2.client("bob").await;
    let mut c = n3.client("carol").await;
    let g = a
        .request(
            json!({"type":"create_thread","kind":"group","members":["bob","carol"],"title":"x"}),
            json!("g"),
        )
        .await;
    let gid = g["thread_id"].as_str().expect("id").to_string();
    assert_eq!(b.expect("thread").await["thread_id"], gid.as_str());
    assert_eq!(c.expect("thread").await["thread_id"], gid.as_str());
    // Every member sends; the two others, on two other nodes, receive in seq order.
    for (i, who) in ["a", "b", "c"].iter().enumerate() {
        let seq = (i + 1) as u64;
        let (s, r1, r2) = match *who {
            "a" => (&mut a, &mut b, &mut c),
            "b" => (&mut b, &mut a, &mut c),
            _ => (&mut c, &mut a, &mut b),
        };
        assert_eq!(s.send_msg(&gid, "m", "hi").await["seq"], seq);
        assert_eq!(r1.expect("receive_message").await["seq"], seq);
        assert_eq!(r2.expect("receive_message").await["seq"], seq);
    }
    // READ by carol@n3 of bob's message (seq 2) reaches bob@n2.
    let h = c
        .request(json!({"type":"fetch_history","thread_id":gid}), json!("h"))
        .await;
    let m2 = h["messages"][1]["message_id"].clone();
    c.send(json!({"type":"message_ack","thread_id":gid,"message_id":m2,"status":"READ"}))
        .await;
    let ack = b.expect("message_ack").await;
    assert_eq!(
        (ack["user_id"].clone(), ack["status"].clone()),
        (json!("carol"), json!("READ"))
    );

    // Presence across nodes: alice@n1 watches bob@n2.
    let r = a
        .request(
            json!({"type":"presence_subscribe","user_ids":["bob"]}),
            json!("ps"),
        )
        .await;
    assert_eq!(r["status"], "online");
    b.ws.close(None).await.expect("close");
    drop(b);
    let p = a.expect("presence").await;
    assert_eq!(
        (p["user_id"].clone(), p["status"].clone()),
        (json!("bob"), json!("offline"))
    );
    assert!(p["last_seen"].as_u64().is_some());
    // Back online through another node.
    let _b = n3.client("bob").await;
    let p = a.expect("presence").await;
    assert_eq!(p["status"], "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_node_id_is_refused_and_released_on_clean_stop() {
    let (url, prefix, mem) = (shared().url(), unique_prefix("dup"), MemBackend::new());
    let mut n1 = start(&url, &prefix, 7, &mem).await;
    let err = build(config(&url, &prefix, 7), &mem)
        .await
        .expect_err("a second live node 7 is refused");
    assert!(matches!(err, ServerError::NodeIdConflict { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("node id 7") && text.contains("--node-id"),
        "{text}"
    );
    // Another id is fine; a clean stop releases 7 at once.
    let _n2 = start(&url, &prefix, 8, &mem).await;
    n1.stop().await.expect("clean stop");
    let again = build(config(&url, &prefix, 7), &mem).await;
    assert!(
        again.is_ok(),
        "id 7 is free after a clean stop: {:?}",
        again.err()
    );
    // Unreachable Redis: a Backend error that says what to do.
    let err = build(config("redis://127.0.0.1:1/", &prefix, 9), &mem)
        .await
        .expect_err("no redis");
    assert!(matches!(err, ServerError::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("redis-server"), "{err}");
}

/// One Redis command over RESP on a raw socket; returns the raw reply.
async fn redis_cmd(port: u16, args: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to redis");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Another instance takes this node's id while it runs (simulated by overwriting the
/// claim, as a second process would after this one stalled past the TTL): the node
/// notices at its next heartbeat, closes its sessions and `serve` returns
/// `LostNodeId`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_whose_id_is_taken_over_shuts_down() {
    let (redis, prefix, mem) = (shared(), unique_prefix("takeover"), MemBackend::new());
    let mut n = start(&redis.url(), &prefix, 4, &mem).await;
    let mut a = n.client("alice").await;
    let key = format!("{prefix}:node:4");
    let r = redis_cmd(
        redis.port,
        &["SET", &key, "another-instance", "PX", "10000"],
    )
    .await;
    assert!(r.starts_with("+OK"), "{r}");
    let t0 = Instant::now();
    let task = n.task.take().expect("running");
    let r = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the node stops within a heartbeat or two")
        .expect("join");
    assert!(
        matches!(r, Err(ServerError::LostNodeId(id)) if id.get() == 4),
        "{r:?}"
    );
    eprintln!("node stopped {:?} after its id was taken", t0.elapsed());
    assert_eq!(a.close_code().await, Some(1001));
}

async fn send_one(a: &mut Client, t: &str, i: u32) -> Value {
    a.send(json!({"type":"send_message","thread_id":t,"temp_id":format!("m{i}"),"text":"x","req_id":i}))
        .await;
    a.recv().await
}

fn record(r: &Value, sent: &mut BTreeSet<u64>, errors: &mut Vec<String>) {
    match r["type"].as_str() {
        Some("message_sent") => {
            sent.insert(r["seq"].as_u64().expect("seq"));
        }
        Some("error") => errors.push(r["code"].as_str().unwrap_or("?").to_string()),
        _ => panic!("unexpected reply {r}"),
    }
}

/// Redis is killed and restarted (empty, same port) while alice@n1 sends to bob@n2.
/// Every message that got `message_sent` is in history afterwards; while Redis is down
/// new connections get 503 and live cross-node delivery stops (bob catches up from
/// history); the cluster recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_traffic_loses_nothing_and_recovers() {
    let redis = RedisServer::start();
    let (url, prefix, mem) = (redis.url(), unique_prefix("restart"), MemBackend::new());
    let n1 = start(&url, &prefix, 1, &mem).await;
    let n2 = start(&url, &prefix, 2, &mem).await;
    let mut a = n1.client("alice").await;
    let mut b = n2.client("bob").await;
    let t = a.create_direct("bob").await;
    b.expect("thread").await;

    // bob's reader: every live seq, in a task.
    let (b_tx, mut b_seen) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut b_ws = b.ws;
    let b_reader = tokio::spawn(async move {
        while let Some(Ok(m)) = b_ws.next().await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["type"] == "receive_message" {
                    let _ = b_tx.send((v["seq"].as_u64().expect("seq"), Instant::now()));
                }
            }
        }
        b_ws
    });

    let mut sent: BTreeSet<u64> = BTreeSet::new();
    let mut errors: Vec<String> = Vec::new();
    let mut i = 0u32;
    // 0.5 s of traffic with Redis up.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        i += 1;
        let r = send_one(&mut a, &t, i).await;
        record(&r, &mut sent, &mut errors);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.kill();
    let killed = Instant::now();
    // 1.5 s of traffic with Redis down; a new connection is refused with 503.
    let mut refused = None;
    while killed.elapsed() < Duration::from_millis(1500) {
        i += 1;
        let r = send_one(&mut a, &t, i).await;
        record(&r, &mut sent, &mut errors);
        if refused.is_none() && killed.elapsed() > Duration::from_millis(300) {
            refused = Some(try_connect(n2.addr, Some("dave")).await.err());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(refused, Some(Some(503)), "connect while Redis is down: 503");
    redis.restart();
    let restarted = Instant::now();
    // Keep sending until a message sent after the restart reaches bob live.
    let mut first_after_restart = None;
    let mut recovered = None;
    while restarted.elapsed() < Duration::from_secs(15) {
        i += 1;
        let r = send_one(&mut a, &t, i).await;
        let seq = r["seq"].as_u64();
        record(&r, &mut sent, &mut errors);
        if let (Some(s), None) = (seq, first_after_restart) {
            first_after_restart = Some(s);
        }
        while let Ok((s, at)) = b_seen.try_recv() {
            if first_after_restart.is_some_and(|f| s >= f) && recovered.is_none() {
                recovered = Some(at.duration_since(restarted));
            }
        }
        if recovered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = recovered.expect("cross-node delivery recovers within 15 s of the restart");
    eprintln!(
        "redis restart: {} sent, errors {:?}, live delivery back {:?} after the restart",
        sent.len(),
        errors,
        recovered
    );
    assert!(errors.iter().all(|e| e == "unavailable"), "{errors:?}");
    // Presence and new connections work again (the nodes re-registered their sessions).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = a
            .request(
                json!({"type":"presence_subscribe","user_ids":["bob"]}),
                json!("ps"),
            )
            .await;
        if r["status"] == "online" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob online again after the restart: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut b2 = n2.client("bob").await;
    // Nothing lost: every acknowledged seq is in history, gapless.
    let h = history_seqs(&mut b2, &t).await;
    let hs: BTreeSet<u64> = h.iter().copied().collect();
    assert!(sent.is_subset(&hs), "every message_sent is in history");
    assert_eq!(
        h,
        (1..=h.len() as u64).collect::<Vec<_>>(),
        "gapless, no duplicates"
    );
    b_reader.abort();
}
