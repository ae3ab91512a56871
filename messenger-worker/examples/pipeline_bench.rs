//! Benchmarks of the worker path, run by `messenger-worker/scripts/bench.sh` (see
//! docs/benchmarks.md). Loopback only; every run is bounded in count and time.
//!
//! - `webhooks`: produces N events to a fresh topic, then starts a `messenger-worker`
//!   process against it and a local receiver here; reports the events/s the receiver
//!   got (batched, or one request per event).
//! - `push`: WebSocket senders on a running `messenger-server --kafka`, each in a direct
//!   thread with a member who never connects; a worker posts each push to the receiver
//!   here; reports pushes/s and the hand-off latency (server `sent_at` to receipt).
//!
//! ```sh
//! cargo run --release -p messenger-worker --example pipeline_bench -- webhooks \
//!     --brokers 127.0.0.1:9092 --worker target/release/messenger-worker --events 200000 --batch 100
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use messenger_core::events::{Event, EventBody, EventId, ReceiptUpdated};
use messenger_core::model::AckStatus;
use messenger_core::time::now_ms;
use messenger_core::{MessageId, NodeId, ThreadId, UserId};
use messenger_kafka::{ensure_topics, KafkaOptions, TopicSpec};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Worker webhook throughput from a pre-filled topic.
    Webhooks {
        #[arg(long)]
        brokers: String,
        /// The messenger-worker binary.
        #[arg(long)]
        worker: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Events per request (1: one request per event).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Requests in flight to the receiver.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// CPU list for the worker (taskset), e.g. 0.
        #[arg(long)]
        worker_cpus: Option<String>,
    },
    /// Push hand-off latency through a running server with --kafka.
    Push {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        worker: PathBuf,
        /// ws://HOST:PORT/ws of the server.
        #[arg(long)]
        url: String,
        /// Messages per second in all (0: as fast as the senders go).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 20)]
        senders: usize,
        #[arg(long)]
        worker_cpus: Option<String>,
    },
}

#[derive(Default)]
struct Rx {
    /// The probe's last push arrived (see `push`).
    probe_done: std::sync::atomic::AtomicBool,
    count: AtomicU64,
    first_ms: AtomicU64,
    last_ms: AtomicU64,
    latencies_ms: Mutex<Vec<u64>>,
}

async fn receive(State(r): State<Arc<Rx>>, body: Bytes) -> StatusCode {
    let now = now_ms();
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return StatusCode::BAD_REQUEST,
    };
    let items = match v {
        Value::Array(a) => a,
        one => vec![one],
    };
    let mut lat = Vec::new();
    for it in &items {
        if it["text"] == "probe-last" {
            r.probe_done.store(true, Ordering::Relaxed);
        }
        if it["type"] == "push.notification" {
            if let Some(sent) = it["sent_at"].as_u64() {
                lat.push(now.saturating_sub(sent));
            }
        }
    }
    if !lat.is_empty() {
        r.latencies_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(lat);
    }
    let _ = r
        .first_ms
        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    r.last_ms.fetch_max(now, Ordering::Relaxed);
    r.count.fetch_add(items.len() as u64, Ordering::Relaxed);
    StatusCode::OK
}

async fn receiver() -> (SocketAddr, Arc<Rx>) {
    let r = Arc::new(Rx::default());
    let app = Router::new()
        .route("/in", post(receive))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, r)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(bin: &PathBuf, config: &str, cpus: &Option<String>) -> (Killed, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let dir = std::env::temp_dir().join(format!("pipeline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("worker.toml");
    std::fs::write(&path, format!("listen = \"{listen}\"\n{config}")).expect("config");
    let mut cmd = match cpus {
        Some(c) => {
            let mut c2 = Command::new("taskset");
            c2.args(["-c", c]).arg(bin);
            c2
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args(["--config", &path.display().to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the worker");
    (Killed(child), listen)
}

async fn wait_assigned(listen: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(listen).await {
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await;
            let mut b = String::new();
            let _ = s.read_to_string(&mut b).await;
            if b.contains("\"assigned_partitions\":") && !b.contains("\"assigned_partitions\":0") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the worker got no partitions in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn webhooks(
    brokers: String,
    worker: PathBuf,
    events: u64,
    batch: usize,
    concurrency: usize,
    cpus: Option<String>,
) {
    let topic = format!("bench.events.{}", now_ms());
    let opts = KafkaOptions::new(&brokers);
    ensure_topics(&opts, &[TopicSpec::new(&topic, 8)])
        .await
        .expect("topic");
    let producer: ThreadedProducer<DefaultProducerContext> = opts
        .client_config(&[
            ("linger.ms", "20"),
            ("queue.buffering.max.messages", "1000000"),
        ])
        .create()
        .expect("producer");
    let t0 = Instant::now();
    for i in 0..events {
        let e = Event {
            id: EventId(i + 1),
            created_at: now_ms(),
            node: NodeId::new(1).expect("node"),
            body: EventBody::ReceiptUpdated(ReceiptUpdated {
                thread_id: ThreadId::new(format!("g:{}", i % 1000)).expect("thread"),
                user_id: UserId::new("reader").expect("user"),
                status: AckStatus::Read,
                seq: i,
                message_id: MessageId(i),
                sender_id: UserId::new("sender").expect("user"),
            }),
        };
        let payload = serde_json::to_vec(&e).expect("json");
        let key = e.thread_id().as_str().to_string();
        let mut rec = BaseRecord::to(&topic).key(&key).payload(&payload);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush the events");
    eprintln!("produced {events} events in {:?}", t0.elapsed());
    let (addr, rx) = receiver().await;
    let config = format!(
        "max_in_flight = 8192\n[kafka]\nbrokers = \"{brokers}\"\nevents_topic = \"{topic}\"\n\
         group = \"bench-{}\"\n[[webhooks]]\nname = \"bench\"\nurl = \"http://{addr}/in\"\n\
         secret = \"s\"\nbatch_max = {batch}\nconcurrency = {concurrency}\n",
        now_ms()
    );
    let started = Instant::now();
    let (_w, _) = spawn_worker(&worker, &config, &cpus);
    let deadline = Instant::now() + Duration::from_secs(600);
    while rx.count.load(Ordering::Relaxed) < events {
        assert!(
            Instant::now() < deadline,
            "only {} of {events} in 10 min",
            rx.count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = rx.first_ms.load(Ordering::Relaxed);
    let last = rx.last_ms.load(Ordering::Relaxed);
    let secs = (last.saturating_sub(first)).max(1) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "bench": "webhooks", "events": events, "batch": batch, "concurrency": concurrency,
            "events_per_sec": (events as f64 / secs).round(),
            "worker_start_to_last_ms": started.elapsed().as_millis() as u64,
            "received": rx.count.load(Ordering::Relaxed),
        })
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["type"] == kind {
                return v;
            }
            assert_ne!(v["type"], "error", "{v}");
        }
    }
}

/// Connects as `me` and opens a direct thread with `other` (who never connects):
/// the socket and the thread id.
async fn direct_with_offline(url: &str, me: &str, other: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={me}"))
        .await
        .expect("connect");
    let _ = next_of(&mut ws, "welcome").await;
    let create = serde_json::json!({"type":"create_thread","kind":"direct","members":[other]});
    ws.send(Message::Text(create.to_string().into()))
        .await
        .expect("send");
    let thread = next_of(&mut ws, "thread").await["thread_id"].clone();
    (ws, thread)
}

async fn push(
    brokers: String,
    worker: PathBuf,
    url: String,
    rate: u64,
    duration: f64,
    senders: usize,
    cpus: Option<String>,
) {
    let (addr, rx) = receiver().await;
    let config = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup = \"bench-push-{}\"\nstart_from = \"latest\"\n\
         [push.webhook]\nurl = \"http://{addr}/in\"\nsecret = \"s\"\n",
        now_ms()
    );
    let (_w, listen) = spawn_worker(&worker, &config, &cpus);
    wait_assigned(listen).await;
    let run = now_ms();
    // The new group starts from "latest", which librdkafka resolves at its first fetch,
    // after the assignment: a probe message's push shows that the worker reads from
    // before what is measured, so every measured message must come out as a push.
    {
        let (mut ws, thread) =
            direct_with_offline(&url, &format!("probe{run}"), &format!("offprobe{run}")).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while rx.count.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no probe push in 30 s");
            let f = serde_json::json!({"type":"send_message","thread_id":thread,"temp_id":format!("p{n}"),"text":"probe"});
            ws.send(Message::Text(f.to_string().into()))
                .await
                .expect("send");
            let _ = next_of(&mut ws, "message_sent").await;
            n += 1;
            let until = Instant::now() + Duration::from_millis(500);
            while rx.count.load(Ordering::Relaxed) == 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // The worker now reads everything: one last probe, and once its push is in (after
        // any earlier probe's: same thread, same partition) the counters start over.
        let f = serde_json::json!({"type":"send_message","thread_id":thread,"temp_id":"last","text":"probe-last"});
        ws.send(Message::Text(f.to_string().into()))
            .await
            .expect("send");
        let _ = next_of(&mut ws, "message_sent").await;
        while !rx.probe_done.load(Ordering::Relaxed) {
            assert!(
                Instant::now() < deadline,
                "the last probe's push did not come in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rx.count.store(0, Ordering::Relaxed);
        rx.first_ms.store(0, Ordering::Relaxed);
        rx.last_ms.store(0, Ordering::Relaxed);
        rx.latencies_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
    let sent = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(duration);
    let mut tasks = Vec::new();
    for i in 0..senders {
        let (url, sent) = (url.clone(), sent.clone());
        let per_sender = if rate == 0 {
            0.0
        } else {
            rate as f64 / senders as f64
        };
        tasks.push(tokio::spawn(async move {
            let (mut ws, thread) =
                direct_with_offline(&url, &format!("snd{run}x{i}"), &format!("off{run}x{i}"))
                    .await;
            let mut n = 0u64;
            let start = Instant::now();
            while Instant::now() < until {
                if per_sender > 0.0 {
                    let due = start + Duration::from_secs_f64(n as f64 / per_sender);
                    tokio::time::sleep_until(due.into()).await;
                }
                let f = serde_json::json!({"type":"send_message","thread_id":thread,"temp_id":n.to_string(),"text":"push bench"});
                ws.send(Message::Text(f.to_string().into()))
                    .await
                    .expect("send");
                let _ = next_of(&mut ws, "message_sent").await;
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let send_secs = t0.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.count.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = rx.count.load(Ordering::Relaxed);
    let first = rx.first_ms.load(Ordering::Relaxed);
    let last = rx.last_ms.load(Ordering::Relaxed);
    let mut lat = rx
        .latencies_ms
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    lat.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "bench": "push", "rate_asked": rate, "sent": total,
            "sent_per_sec": (total as f64 / send_secs).round(),
            "pushes": got,
            "missing": total.saturating_sub(got),
            "pushes_per_sec": (got as f64 / ((last.saturating_sub(first)).max(1) as f64 / 1000.0)).round(),
            "latency_ms": {"p50": percentile(&lat, 0.5), "p90": percentile(&lat, 0.9),
                           "p99": percentile(&lat, 0.99), "max": lat.last().copied().unwrap_or(0)},
        })
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    match Args::parse().cmd {
        Cmd::Webhooks {
            brokers,
            worker,
            events,
            batch,
            concurrency,
            worker_cpus,
        } => webhooks(brokers, worker, events, batch, concurrency, worker_cpus).await,
        Cmd::Push {
            brokers,
            worker,
            url,
            rate,
            duration,
            senders,
            worker_cpus,
        } => push(brokers, worker, url, rate, duration, senders, worker_cpus).await,
    }
}
