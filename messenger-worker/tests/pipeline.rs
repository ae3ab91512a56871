//! The seed's pipeline with real processes on a real Kafka: two `messenger-server`
//! processes (cluster mode: Redis for sessions, Kafka for the relay and the event log)
//! and `messenger-worker` processes, a local webhook receiver in this test process,
//! WebSocket clients. Messages and threads stay in each server's memory (the
//! HBase-backed cluster is `messenger-server`'s processes test); what crosses nodes here
//! goes through Kafka: the relay and the event log. The push test puts a server and the
//! worker on one real HBase (the push registry) and local APNs, FCM and Web Push
//! endpoints (`messenger_push::testkit`).
//!
//! Kafka: one private broker for this test binary (`scripts/kafka.sh`, stopped when the
//! process exits). HBase: `messenger_test_support::hbase` (started on first use, or
//! `MESSENGER_TEST_HBASE`). Redis: a `redis-server` per test. The server binary is the one
//! `cargo test --workspace` (scripts/test.sh) builds next to this test; run
//! `cargo build -p messenger-server` first when running this crate's tests alone.
//! The tests run one at a time (they share the broker, and one restarts it).

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use futures::{SinkExt, StreamExt};
use messenger_push::webhook;
use messenger_test_support::kafka::Broker;
use messenger_test_support::redis::RedisServer;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "whsec-pipeline";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Tests share one broker and one restarts it: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn broker() -> &'static Broker {
    static B: OnceLock<Broker> = OnceLock::new();
    B.get_or_init(|| Broker::start("pipeline"))
}

async fn brokers() -> String {
    tokio::task::spawn_blocking(|| broker().brokers.clone())
        .await
        .expect("harness")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `target/debug` (or wherever this test binary's directory's parent is).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

fn server_bin() -> PathBuf {
    let p = bin_dir().join("messenger-server");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p messenger-server; scripts/test.sh \
         builds every binary)",
        p.display()
    );
    p
}

fn log_dir() -> PathBuf {
    let d = bin_dir().join(format!("pipeline-logs-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("log dir");
    d
}

/// A child process, SIGKILLed when dropped.
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, bin: &Path, args: &[String]) -> Proc {
        let log = log_dir().join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let f2 = f.try_clone().expect("log file");
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info,messenger_kafka=debug")
            .stdout(f2)
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        Proc {
            child,
            name: name.into(),
            log,
        }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited ({st}):\n{}", self.name, self.log_tail());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn server(name: &str, node: u16, redis: &str, brokers: &str) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let p = Proc::spawn(
        name,
        &server_bin(),
        &[
            "--listen".into(),
            addr.to_string(),
            "--node-id".into(),
            node.to_string(),
            "--redis".into(),
            redis.into(),
            "--redis-key-prefix".into(),
            format!("pipe{}", std::process::id()),
            "--kafka".into(),
            brokers.into(),
            // Two nodes without HBase: each keeps its own messages in memory (the
            // binary refuses SQLite in cluster mode without HBase).
            "--store".into(),
            "memory".into(),
            // The tests send faster than a person.
            "--rate-limit".into(),
            "100000".into(),
            "--rate-burst".into(),
            "100000".into(),
        ],
    );
    (p, addr)
}

async fn wait_healthy(p: &mut Proc, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        p.assert_running();
        if let Some((200, _)) = http_get(addr, "/healthz").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not healthy:\n{}",
            p.name,
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the receiver got: webhook bodies by route, with their attempt header.
#[derive(Default)]
struct Received {
    /// (route, event or notification JSON, attempt)
    items: Mutex<Vec<(String, Value, u32)>>,
    /// Requests per (route, id), to fail the first try where asked.
    tries: Mutex<HashMap<(String, String), usize>>,
    bad_signatures: AtomicUsize,
    /// Milliseconds to wait before answering `/slow` requests.
    delay_ms: std::sync::atomic::AtomicU64,
}

impl Received {
    fn find(&self, route: &str, pred: impl Fn(&Value) -> bool) -> Vec<(Value, u32)> {
        self.items
            .lock()
            .expect("lock")
            .iter()
            .filter(|(r, v, _)| r == route && pred(v))
            .map(|(_, v, a)| (v.clone(), *a))
            .collect()
    }
}

async fn receive(
    State(r): State<Arc<Received>>,
    UrlPath(route): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let sig = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if webhook::verify(
        SECRET.as_bytes(),
        sig,
        &body,
        webhook::unix_now(),
        Duration::from_secs(300),
    )
    .is_err()
    {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let attempt = headers
        .get(webhook::ATTEMPT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if route == "slow" {
        let ms = r.delay_ms.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let events: Vec<Value> = match v {
        Value::Array(a) => a,
        one => vec![one],
    };
    if route == "broken" {
        return StatusCode::BAD_REQUEST;
    }
    if route == "flaky" {
        // The first request of each event fails with 500.
        let id = events
            .first()
            .and_then(|e| e["id"].as_str())
            .unwrap_or("")
            .to_string();
        let mut tries = r.tries.lock().expect("lock");
        let n = tries.entry((route.clone(), id)).or_insert(0);
        *n += 1;
        if *n == 1 {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    let mut items = r.items.lock().expect("lock");
    for e in events {
        items.push((route.clone(), e, attempt));
    }
    StatusCode::OK
}

async fn receiver() -> (String, Arc<Received>) {
    let r = Arc::new(Received::default());
    let app = Router::new()
        .route("/{route}", post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), r)
}

struct WorkerSetup {
    config: PathBuf,
    listen: SocketAddr,
}

fn worker_config(name: &str, brokers: &str, group: &str, base: &str, routes: &str) -> WorkerSetup {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let path = log_dir().join(format!("{name}.toml"));
    let text = format!(
        r#"listen = "{listen}"
max_in_flight = 256

[kafka]
brokers = "{brokers}"
group = "{group}"

[retry]
attempts = 3
min_delay = "50ms"
max_delay = "200ms"

[push.webhook]
url = "{base}/push"
secret = "{SECRET}"
{routes}
"#
    );
    std::fs::write(&path, text).expect("write worker config");
    WorkerSetup {
        config: path,
        listen,
    }
}

fn worker(name: &str, w: &WorkerSetup) -> Proc {
    Proc::spawn(
        name,
        Path::new(env!("CARGO_BIN_EXE_messenger-worker")),
        &["--config".into(), w.config.display().to_string()],
    )
}

/// Waits until the worker serves /healthz and owns partitions.
async fn wait_worker(p: &mut Proc, listen: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        p.assert_running();
        if let Some((200, body)) = http_get(listen, "/healthz").await {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if v["assigned_partitions"].as_i64().unwrap_or(0) > 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} has no partitions:\n{}",
            p.name,
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(addr: SocketAddr, user: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={user}"))
        .await
        .unwrap_or_else(|e| panic!("{user} connects to {addr}: {e}"));
    let w = next(&mut ws, user).await;
    assert_eq!(w["type"], "welcome");
    ws
}

async fn next(ws: &mut Ws, who: &str) -> Value {
    loop {
        let m = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => panic!("{who}: no frame in 10 s"),
            Ok(None) => panic!("{who}: closed"),
            Ok(Some(Err(e))) => panic!("{who}: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("json frame");
        }
    }
}

/// The next frame of `kind`, skipping others (presence, typing...).
async fn next_of(ws: &mut Ws, who: &str, kind: &str) -> Value {
    loop {
        let v = next(ws, who).await;
        if v["type"] == kind {
            return v;
        }
        assert_ne!(v["type"], "error", "{who}: waiting for {kind}: {v}");
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send frame");
}

async fn create_group(ws: &mut Ws, who: &str, members: &[&str]) -> String {
    send(
        ws,
        json!({"type":"create_thread","kind":"group","members":members,"title":"t"}),
    )
    .await;
    next_of(ws, who, "thread").await["thread_id"]
        .as_str()
        .expect("thread id")
        .to_string()
}

async fn send_text(ws: &mut Ws, who: &str, thread: &str, temp: &str, text: &str) -> Value {
    send(
        ws,
        json!({"type":"send_message","thread_id":thread,"temp_id":temp,"text":text}),
    )
    .await;
    next_of(ws, who, "message_sent").await
}

fn uniq(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        messenger_core::time::now_ms() % 100_000_000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_members_push_and_the_events_reach_the_receiver_once_across_processes() {
    let _serial = SERIAL.lock().await;
    let brokers = brokers().await;
    let redis = RedisServer::start();
    let (base, rx) = receiver().await;
    let (mut s1, a1) = server("s1", 1, &redis.url(), &brokers);
    let (mut s2, a2) = server("s2", 2, &redis.url(), &brokers);
    wait_healthy(&mut s1, a1).await;
    wait_healthy(&mut s2, a2).await;
    let group = uniq("g");
    let w = worker_config(
        "w-once",
        &brokers,
        &group,
        &base,
        &format!(
            r#"
[[webhooks]]
name = "app"
url = "{base}/flaky"
secret = "{SECRET}"
events = ["message.created", "receipt.updated", "thread.created"]

[[webhooks]]
name = "broken"
url = "{base}/broken"
secret = "{SECRET}"
events = ["thread.created"]
"#
        ),
    );
    let mut wp = worker("w-once", &w);
    wait_worker(&mut wp, w.listen).await;

    let (alice, bob, carol) = (uniq("alice"), uniq("bob"), uniq("carol"));
    let mut wa = connect(a1, &alice).await;
    let mut wb = connect(a2, &bob).await;
    let thread = create_group(&mut wa, &alice, &[&bob, &carol]).await;
    let _ = next_of(&mut wb, &bob, "thread").await;
    let sent = send_text(&mut wa, &alice, &thread, "t1", "hello from node 1").await;
    let message_id = sent["message_id"].as_str().expect("id").to_string();
    // Cross-node delivery over the Kafka relay.
    let got = next_of(&mut wb, &bob, "receive_message").await;
    assert_eq!(got["message_id"], message_id.as_str());
    // Messages and threads are in each server's memory here (the HBase-backed cluster
    // is messenger-server's processes test): bob acks through a session on node 1.
    let mut wb1 = connect(a1, &bob).await;
    send(
        &mut wb1,
        json!({"type":"message_ack","thread_id":thread,"message_id":message_id,"status":"READ"}),
    )
    .await;

    // carol (no session anywhere) gets exactly one push; bob and alice none.
    let push_id = format!("{message_id}:{carol}");
    wait_for("carol's push", Duration::from_secs(30), || {
        !rx.find("push", |v| v["id"] == push_id.as_str()).is_empty()
    })
    .await;
    // The application webhook: the first try of every event got a 500; the retry lands.
    let kinds = || -> BTreeSet<String> {
        rx.find("flaky", |v| v["data"]["thread_id"] == thread.as_str())
            .iter()
            .map(|(v, _)| v["type"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while kinds().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the app webhook got only {:?} for {thread}; tries: {:?}",
            kinds(),
            rx.tries.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The broken endpoint's thread.created is dead-lettered after 3 tries.
    let (dlq, _, _) = read_topic(&brokers, "messenger.events.dlq", |v| {
        v["kind"] == "webhook"
            && v["endpoint"] == "broken"
            && v["event"]["data"]["thread_id"] == thread.as_str()
    })
    .await;
    assert_eq!(dlq["attempts"], 3, "{dlq}");

    let pushes = rx.find("push", |v| v["thread_id"] == thread.as_str());
    let ids: BTreeSet<String> = pushes
        .iter()
        .map(|(v, _)| v["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([push_id.clone()]),
        "one push, for carol only"
    );
    let (p, _) = &pushes[0];
    assert_eq!(p["type"], "push.notification");
    assert_eq!(p["user_id"], carol.as_str());
    assert_eq!(p["sender_id"], alice.as_str());
    assert_eq!(p["text"], "hello from node 1");
    let created = rx.find("flaky", |v| {
        v["type"] == "message.created" && v["data"]["thread_id"] == thread.as_str()
    });
    assert!(
        created.iter().all(|(_, attempt)| *attempt == 2),
        "delivered on the retry"
    );
    let (ev, _) = &created[0];
    assert_eq!(
        ev["id"],
        message_id.as_str(),
        "a message's event id is its id"
    );
    assert_eq!(ev["data"]["offline"], json!([carol]));
    assert_eq!(ev["data"]["seq"], 1);
    let receipts = rx.find("flaky", |v| {
        v["type"] == "receipt.updated" && v["data"]["thread_id"] == thread.as_str()
    });
    assert_eq!(receipts[0].0["data"]["user_id"], bob.as_str());
    assert_eq!(receipts[0].0["data"]["status"], "READ");
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);

    let (_, metrics) = http_get(w.listen, "/metrics")
        .await
        .expect("worker metrics");
    assert!(
        metrics.contains("messenger_worker_dead_lettered_total{kind=\"webhook\"}"),
        "{metrics}"
    );
    let (_, smetrics) = http_get(a1, "/metrics").await.expect("server metrics");
    assert!(
        smetrics.contains("messenger_event_log_delivered"),
        "{smetrics}"
    );
    s1.assert_running();
    s2.assert_running();
    wp.assert_running();
}

/// Reads `topic` from the start until an event's JSON matches `pred`: the event, its
/// record's partition and offset (an event log record holds one event, or several of
/// one thread separated by newlines).
async fn read_topic(
    brokers: &str,
    topic: &str,
    pred: impl Fn(&Value) -> bool,
) -> (Value, i32, i64) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", uniq("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("no matching record in {topic} within 60 s"))
            .expect("consume");
        for line in m.payload().unwrap_or_default().split(|b| *b == b'\n') {
            let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
            if pred(&v) {
                return (v, m.partition(), m.offset());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let brokers = brokers().await;
    let redis = RedisServer::start();
    let (base, rx) = receiver().await;
    rx.delay_ms.store(10, Ordering::Relaxed);
    let (mut s1, a1) = server("k-s1", 1, &redis.url(), &brokers);
    wait_healthy(&mut s1, a1).await;
    let group = uniq("g");
    let w = worker_config(
        "w-kill",
        &brokers,
        &group,
        &base,
        &format!(
            r#"
[[webhooks]]
name = "slow"
url = "{base}/slow"
secret = "{SECRET}"
events = ["message.created"]
concurrency = 1
"#
        ),
    );
    let mut w1 = worker("w-kill-1", &w);
    wait_worker(&mut w1, w.listen).await;

    let (alice, carol) = (uniq("alice"), uniq("carol"));
    let mut wa = connect(a1, &alice).await;
    let thread = create_group(&mut wa, &alice, &[&carol]).await;
    let total = 300;
    let mut ids = BTreeSet::new();
    for i in 0..total {
        let sent = send_text(&mut wa, &alice, &thread, &format!("t{i}"), &format!("m{i}")).await;
        ids.insert(sent["message_id"].as_str().expect("id").to_string());
    }
    // Kill the worker mid-stream, once some (not all) events reached the receiver.
    let mine = |v: &Value| v["data"]["thread_id"] == thread.as_str();
    wait_for("the first events", Duration::from_secs(30), || {
        rx.find("slow", mine).len() >= 20
    })
    .await;
    w1.kill();
    let seen_at_kill = rx.find("slow", mine).len();
    assert!(
        seen_at_kill < total,
        "the worker finished before it was killed"
    );
    // A new worker in the same group picks up from the committed offsets.
    let w2setup = WorkerSetup {
        config: w.config.clone(),
        listen: w.listen,
    };
    let mut w2 = worker("w-kill-2", &w2setup);
    wait_for(
        "every event after the restart",
        Duration::from_secs(90),
        || {
            let got: BTreeSet<String> = rx
                .find("slow", mine)
                .iter()
                .map(|(v, _)| v["id"].as_str().unwrap_or("").to_string())
                .collect();
            got.len() == ids.len()
        },
    )
    .await;
    w2.assert_running();
    let events = rx.find("slow", mine);
    let got: BTreeSet<String> = events
        .iter()
        .map(|(v, _)| v["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(got, ids, "every event reached the receiver");
    wait_for("every push", Duration::from_secs(30), || {
        rx.find("push", |v| v["thread_id"] == thread.as_str())
            .iter()
            .map(|(v, _)| v["message_id"].as_str().unwrap_or("").to_string())
            .collect::<BTreeSet<_>>()
            .len()
            == total
    })
    .await;
    eprintln!(
        "kill test: {seen_at_kill} of {total} seen at the kill, {} deliveries in all ({} duplicates)",
        events.len(),
        events.len() - total
    );
    s1.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_keeps_servers_delivering_and_delays_events() {
    let _serial = SERIAL.lock().await;
    let brokers = brokers().await;
    let redis = RedisServer::start();
    let (base, rx) = receiver().await;
    let (mut s1, a1) = server("r-s1", 1, &redis.url(), &brokers);
    let (mut s2, a2) = server("r-s2", 2, &redis.url(), &brokers);
    wait_healthy(&mut s1, a1).await;
    wait_healthy(&mut s2, a2).await;
    let group = uniq("g");
    let w = worker_config(
        "w-restart",
        &brokers,
        &group,
        &base,
        &format!(
            r#"
[[webhooks]]
name = "app"
url = "{base}/events"
secret = "{SECRET}"
events = ["message.created"]
batch_max = 50
"#
        ),
    );
    let mut wp = worker("w-restart", &w);
    wait_worker(&mut wp, w.listen).await;

    let (alice, dave, bob) = (uniq("alice"), uniq("dave"), uniq("bob"));
    let mut wa = connect(a1, &alice).await;
    let mut wd = connect(a1, &dave).await;
    let mut wb = connect(a2, &bob).await;
    let thread = create_group(&mut wa, &alice, &[&dave, &bob]).await;
    let _ = next_of(&mut wd, &dave, "thread").await;
    let _ = next_of(&mut wb, &bob, "thread").await;

    tokio::task::spawn_blocking(|| broker().stop_broker())
        .await
        .expect("stop the broker");
    // During the outage: sends are accepted and delivered live on the node.
    let mut during = BTreeSet::new();
    for i in 0..20 {
        let sent = send_text(
            &mut wa,
            &alice,
            &thread,
            &format!("o{i}"),
            &format!("outage {i}"),
        )
        .await;
        let id = sent["message_id"].as_str().expect("id").to_string();
        let got = next_of(&mut wd, &dave, "receive_message").await;
        assert_eq!(
            got["message_id"],
            id.as_str(),
            "live delivery during the outage"
        );
        during.insert(id);
    }
    tokio::task::spawn_blocking(|| broker().start_broker())
        .await
        .expect("start the broker");
    // Events produced during the outage arrive after it.
    let mine =
        |v: &Value| v["data"]["thread_id"] == thread.as_str() && v["type"] == "message.created";
    wait_for("the outage's events", Duration::from_secs(90), || {
        let got: BTreeSet<String> = rx
            .find("events", mine)
            .iter()
            .map(|(v, _)| v["id"].as_str().unwrap_or("").to_string())
            .collect();
        during.is_subset(&got)
    })
    .await;
    // The clients were not read while the broker restarted (tens of seconds on a loaded
    // machine), so the servers may have closed them as silent (4001): fresh ones.
    drop((wa, wd, wb));
    let mut wa = connect(a1, &alice).await;
    let mut wb = connect(a2, &bob).await;
    // And the cross-node relay works again.
    let deadline = Instant::now() + Duration::from_secs(30);
    'relay: loop {
        assert!(
            Instant::now() < deadline,
            "the relay did not recover within 30 s"
        );
        let sent = send_text(&mut wa, &alice, &thread, &uniq("after"), "after").await;
        let id = sent["message_id"].as_str().unwrap_or("").to_string();
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::from_millis(300), wb.next()).await
            else {
                continue;
            };
            let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
            if v["type"] == "receive_message" && v["message_id"] == id.as_str() {
                break 'relay;
            }
        }
    }
    s1.assert_running();
    s2.assert_running();
    wp.assert_running();
}

fn run_worker(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_messenger-worker"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run messenger-worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_non_zero_with_a_message() {
    let _serial = SERIAL.lock().await;
    let brokers = brokers().await;
    let dir = log_dir();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("config");
        p.display().to_string()
    };
    // No brokers at all.
    let (code, err) = run_worker(&[], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no Kafka brokers"), "{err}");
    // Nothing to hand events to.
    let (code, err) = run_worker(&["--kafka", &brokers], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing to hand events to"), "{err}");
    // An unknown event type.
    let bad = write(
        "bad-type.toml",
        "[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"s\"\nevents = [\"message.sent\"]\n",
    );
    let (code, err) = run_worker(&["--kafka", &brokers, "--config", &bad], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown event type"), "{err}");
    let push = write(
        "push.toml",
        "connect_timeout_note = 1\n[push.webhook]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"s\"\n",
    );
    let (code, err) = run_worker(&["--kafka", &brokers, "--config", &push], &[]);
    assert_eq!(code, 2, "unknown keys are refused: {err}");
    assert!(err.contains("connect_timeout_note"), "{err}");
    // Device providers need the registrations: the shared HBase store.
    let apns = write(
        "apns-no-hbase.toml",
        "[push.apns]\nkey_file = \"/nonexistent.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\n",
    );
    let (code, err) = run_worker(&["--kafka", &brokers, "--config", &apns], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("hbase.address") && err.contains("SQLite"),
        "{err}"
    );
    let push = write(
        "push-ok.toml",
        "[kafka]\nconnect_timeout = \"2s\"\n[push.webhook]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"s\"\n",
    );
    // Unreachable brokers.
    let nobody = format!("127.0.0.1:{}", free_port());
    let (code, err) = run_worker(&["--kafka", &nobody, "--config", &push], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the Kafka brokers"), "{err}");
    // A missing topic that this principal may not create.
    let sasl = tokio::task::spawn_blocking(|| {
        let b = broker();
        b.acl(&[
            "--add",
            "--allow-principal",
            "User:app",
            "--operation",
            "Describe",
            "--operation",
            "Read",
            "--operation",
            "Write",
            "--topic",
            "*",
        ]);
        b.acl(&[
            "--add",
            "--allow-principal",
            "User:app",
            "--operation",
            "Read",
            "--group",
            "*",
        ]);
        b.sasl_brokers.clone()
    })
    .await
    .expect("acl");
    let topic = uniq("missing");
    let (code, err) = run_worker(
        &[
            "--kafka",
            &sasl,
            "--config",
            &push,
            "--kafka-property",
            "security.protocol=SASL_PLAINTEXT",
            "--kafka-property",
            "sasl.mechanism=PLAIN",
            "--kafka-property",
            "sasl.username=app",
            "--kafka-property",
            "sasl.password=app-secret",
        ],
        &[("MESSENGER_WORKER_KAFKA__EVENTS_TOPIC", &topic)],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("may not create") && err.contains(&topic),
        "{err}"
    );
    // The server refuses unreachable brokers at start too.
    let out = Command::new(server_bin())
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--kafka",
            &nobody,
            "--store",
            "memory",
        ])
        .output()
        .expect("run messenger-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use Kafka") && err.contains("cannot reach"),
        "{err}"
    );
}

/// A worker's `/metrics` sample `name` (the full series with labels), 0 when absent.
async fn worker_metric(listen: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(listen, "/metrics").await.unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Where the event of message `id` is in the event log: (partition, offset).
async fn event_position(brokers: &str, id: &str) -> (i32, i64) {
    let (_, partition, offset) = read_topic(brokers, "messenger.events", |v| v["id"] == id).await;
    (partition, offset)
}

/// Waits until consumer group `group` committed past `offset` of `partition`: the
/// worker commits only past events whose every hand-off finished.
async fn wait_committed(brokers: &str, group: &str, partition: i32, offset: i64) {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::{Offset, TopicPartitionList};
    let (brokers, group) = (brokers.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition("messenger.events", partition);
            let at = c
                .committed_offsets(tpl, Duration::from_secs(10))
                .ok()
                .and_then(|t| t.elements().first().map(|e| e.offset()));
            if let Some(Offset::Offset(o)) = at {
                if o > offset {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "group {group} did not commit past {partition}/{offset} within 60 s (at {at:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("committed offsets");
}

/// The seed's push path with real processes: a device registered through the protocol
/// on the server (stored in HBase), its user offline, a message sent; the worker reads
/// the event from Kafka, the user's targets and mutes from the same HBase, and sends
/// through the real APNs, FCM and Web Push protocols to local endpoints
/// (`messenger_push::testkit`). A muted thread gets nothing; a token FCM reports gone is
/// unregistered in HBase; the providers' metrics are on the worker's /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_notifies_registered_devices_through_apns_fcm_and_web_push() {
    use messenger_push::testkit::{FakeApns, FakeFcm, FakeWebPush, TestPki};
    use messenger_push::VapidKey;

    let _serial = SERIAL.lock().await;
    let brokers = brokers().await;
    let hbase = tokio::task::spawn_blocking(|| messenger_test_support::hbase::hbase().addr.clone())
        .await
        .expect("hbase");
    let prefix = format!("{}_", uniq("pushw"));
    // The worker reaches HBase through a proxy the test cuts later (the registry down).
    let hbase_link = Cuttable::start(&hbase).await;
    let pki = TestPki::new();
    let apns = FakeApns::start(&pki).await;
    let fcm = FakeFcm::start(&pki).await;
    let wp = FakeWebPush::start(&pki).await;
    let dir = log_dir();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        p.display().to_string()
    };
    let (key, ca) = (
        write("apns.p8", &apns.key_pem),
        write("ca.pem", &pki.ca_pem),
    );
    let account = write("fcm.json", &fcm.service_account_json());
    let vapid = write("vapid.key", &VapidKey::generate().private_key_base64url());

    // One server on HBase with the event log on Kafka; no push provider of its own.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut srv = Proc::spawn(
        "push-srv",
        &server_bin(),
        &[
            "--listen".into(),
            addr.to_string(),
            "--kafka".into(),
            brokers.clone(),
            "--hbase".into(),
            hbase.clone(),
            "--hbase-table-prefix".into(),
            prefix.clone(),
        ],
    );
    wait_healthy(&mut srv, addr).await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let group = uniq("g");
    let config = write(
        "w-push.toml",
        &format!(
            r#"listen = "{listen}"
[kafka]
brokers = "{brokers}"
group = "{group}"
[hbase]
address = "{hbase_link}"
table_prefix = "{prefix}"
[push]
attempts = 2
[push.apns]
key_file = "{key}"
key_id = "{key_id}"
team_id = "{team_id}"
topic = "com.example.chat"
endpoint = "{apns_url}"
sandbox_endpoint = "{apns_url}"
ca_file = "{ca}"
[push.fcm]
service_account_file = "{account}"
endpoint = "{fcm_url}"
ca_file = "{ca}"
[push.webpush]
vapid_key_file = "{vapid}"
subject = "mailto:ops@example.com"
ca_file = "{ca}"
"#,
            key_id = apns.key_id,
            team_id = apns.team_id,
            apns_url = apns.url,
            fcm_url = fcm.url,
            hbase_link = hbase_link.addr,
        ),
    );
    let mut wk = Proc::spawn(
        "w-push",
        Path::new(env!("CARGO_BIN_EXE_messenger-worker")),
        &["--config".into(), config],
    );
    wait_worker(&mut wk, listen).await;

    // bob registers an iPhone, an Android phone and a browser, and mutes one thread.
    let (alice, bob) = (uniq("alice"), uniq("bob"));
    let mut wa = connect(addr, &alice).await;
    let mut wb = connect(addr, &bob).await;
    let open = create_group(&mut wa, &alice, &[&bob]).await;
    let _ = next_of(&mut wb, &bob, "thread").await;
    let quiet = create_group(&mut wa, &alice, &[&bob]).await;
    let _ = next_of(&mut wb, &bob, "thread").await;
    let apns_token = "ab".repeat(32);
    let fcm_token = format!("fcm-{}", "x1".repeat(40));
    let sub = wp.subscribe();
    for (i, reg) in [
        json!({"type":"register_push_target","platform":"apns","token":apns_token}),
        json!({"type":"register_push_target","platform":"fcm","token":fcm_token,"locale":"de"}),
        json!({"type":"register_push_target","platform":"webpush",
               "subscription":{"endpoint":sub.endpoint,"keys":{"p256dh":sub.p256dh,"auth":sub.auth}}}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut reg = reg;
        reg["req_id"] = json!(i);
        send(&mut wb, reg).await;
        let r = next_of(&mut wb, &bob, "push_target").await;
        assert_eq!(r["req_id"], json!(i), "{r}");
    }
    send(
        &mut wb,
        json!({"type":"mute_thread","thread_id":quiet,"req_id":"m"}),
    )
    .await;
    let r = next_of(&mut wb, &bob, "thread_mute").await;
    assert_eq!(r["muted"], true, "{r}");
    // bob goes offline (alice sees it), then alice writes in both threads.
    send(
        &mut wa,
        json!({"type":"presence_subscribe","user_ids":[bob],"req_id":"p"}),
    )
    .await;
    drop(wb);
    loop {
        let p = next_of(&mut wa, &alice, "presence").await;
        if p["user_id"] == bob.as_str() && p["status"] == "offline" {
            break;
        }
    }
    let m1 = send_text(&mut wa, &alice, &open, "o1", "hello bob").await["message_id"]
        .as_str()
        .expect("id")
        .to_string();
    let muted = send_text(&mut wa, &alice, &quiet, "q1", "muted").await["message_id"]
        .as_str()
        .expect("id")
        .to_string();
    let apns_ids = || -> Vec<String> {
        apns.accepted()
            .iter()
            .map(|a| a.payload["message_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let fcm_ids = || -> Vec<String> {
        fcm.accepted()
            .iter()
            .map(|m| m["data"]["message_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let wp_ids = || -> Vec<String> {
        wp.accepted()
            .iter()
            .map(|m| {
                serde_json::from_slice::<Value>(&m.plaintext).expect("json")["data"]["message_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let has = |ids: Vec<String>, id: &str| ids.iter().filter(|x| x.as_str() == id).count();
    wait_for("m1 on every device", Duration::from_secs(60), || {
        has(apns_ids(), &m1) == 1 && has(fcm_ids(), &m1) == 1 && has(wp_ids(), &m1) == 1
    })
    .await;
    let (part, off) = event_position(&brokers, &muted).await;
    wait_committed(&brokers, &group, part, off).await;
    assert_eq!(
        has(apns_ids(), &muted),
        0,
        "a muted thread: nothing to APNs"
    );
    assert_eq!(has(fcm_ids(), &muted), 0, "nothing to FCM");
    assert_eq!(has(wp_ids(), &muted), 0, "nothing to Web Push");
    let a = &apns.accepted()[0];
    assert_eq!(a.token, apns_token);
    assert_eq!(a.payload["aps"]["alert"]["title"], alice.as_str());
    assert_eq!(a.payload["aps"]["alert"]["body"], "hello bob");
    assert_eq!(
        fcm.accepted()[0]["token"],
        fcm_token.as_str(),
        "{:?}",
        fcm.accepted()
    );

    // FCM reports the token gone: the worker unregisters it in HBase; the others stay.
    fcm.unregister(&fcm_token);
    let m2 = send_text(&mut wa, &alice, &open, "o2", "again").await["message_id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_for("m2 on APNs and Web Push", Duration::from_secs(60), || {
        has(apns_ids(), &m2) == 1 && has(wp_ids(), &m2) == 1
    })
    .await;
    let (part, off) = event_position(&brokers, &m2).await;
    wait_committed(&brokers, &group, part, off).await;
    let removed = "messenger_worker_push_targets_removed_total{provider=\"fcm\"}";
    assert_eq!(worker_metric(listen, removed).await, 1.0);
    let mut wb = connect(addr, &bob).await;
    send(&mut wb, json!({"type":"list_push_targets","req_id":"l"})).await;
    let r = next_of(&mut wb, &bob, "push_targets").await;
    let platforms: BTreeSet<String> = r["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| t["platform"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        platforms,
        BTreeSet::from(["apns".to_string(), "webpush".to_string()]),
        "{r}"
    );
    for (series, at_least) in [
        ("messenger_worker_push_sent_total{provider=\"apns\"}", 2.0),
        ("messenger_worker_push_sent_total{provider=\"fcm\"}", 1.0),
        (
            "messenger_worker_push_sent_total{provider=\"web_push\"}",
            2.0,
        ),
        (
            "messenger_worker_push_request_seconds_count{provider=\"apns\"}",
            2.0,
        ),
    ] {
        let v = worker_metric(listen, series).await;
        assert!(
            v >= at_least,
            "{series} = {v}, expected at least {at_least}"
        );
    }

    // The registry becomes unreachable for the worker (HBase down, as the worker sees
    // it): bob's next notifications wait, and are retried rather than dead-lettered;
    // when HBase is back they go out, once each and in the thread's order.
    drop(wb);
    loop {
        let p = next_of(&mut wa, &alice, "presence").await;
        if p["user_id"] == bob.as_str() && p["status"] == "offline" {
            break;
        }
    }
    hbase_link.cut();
    let retries = "messenger_worker_push_registry_retries_total";
    let before = worker_metric(listen, retries).await;
    let mut during = Vec::new();
    for (i, text) in ["while hbase is down", "and again"].into_iter().enumerate() {
        let r = send_text(&mut wa, &alice, &open, &format!("d{i}"), text).await;
        during.push(r["message_id"].as_str().expect("id").to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker_metric(listen, retries).await < before + 2.0 {
        assert!(
            Instant::now() < deadline,
            "the worker never retried the registry read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        worker_metric(listen, "messenger_worker_push_registry_waiting").await,
        1.0,
        "the thread's first notification waits; the second waits behind it"
    );
    assert_eq!(
        has(apns_ids(), &during[0]),
        0,
        "nothing sent while unreadable"
    );
    hbase_link.restore();
    wait_for(
        "the notifications held during the outage",
        Duration::from_secs(60),
        || {
            during
                .iter()
                .all(|m| has(apns_ids(), m) == 1 && has(wp_ids(), m) == 1)
        },
    )
    .await;
    let order: Vec<String> = apns_ids()
        .into_iter()
        .filter(|m| during.contains(m))
        .collect();
    assert_eq!(order, during, "thread order kept");
    let (part, off) = event_position(&brokers, &during[1]).await;
    wait_committed(&brokers, &group, part, off).await;
    assert_eq!(
        worker_metric(
            listen,
            "messenger_worker_dead_lettered_total{kind=\"push\"}"
        )
        .await,
        0.0,
        "an unreachable registry dead-letters nothing"
    );
    assert_eq!(
        worker_metric(listen, "messenger_worker_push_registry_waiting").await,
        0.0
    );
    let log = std::fs::read_to_string(&wk.log).unwrap_or_default();
    assert!(
        log.contains("cannot read the push registry"),
        "{}",
        wk.log_tail()
    );
    assert!(
        log.contains("the push registry answers again"),
        "{}",
        wk.log_tail()
    );
    wk.assert_running();
    srv.assert_running();
}

/// A TCP proxy to `upstream` that the test can cut (open connections closed, new ones
/// closed at once) and restore: a backend going down and coming back, as its clients
/// see it.
struct Cuttable {
    addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn start(upstream: &str) -> Cuttable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (o, c, upstream) = (open.clone(), conns.clone(), upstream.to_string());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().expect("conns").push(task.abort_handle());
            }
        });
        Cuttable {
            addr,
            open,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("conns").drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
