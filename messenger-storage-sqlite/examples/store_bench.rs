//! Fills a data directory with many messages and measures history reads: the generator
//! behind the "restart on 1 million messages" and "disk growth" figures of
//! docs/benchmarks.md (`messenger-storage-sqlite/scripts/restart-bench.sh` runs it).
//!
//! ```text
//! # 1 million messages of 64 bytes in 1000 direct threads between `probe` and u0..u999:
//! cargo run --release -p messenger-storage-sqlite --example store_bench -- \
//!     fill --data-dir /tmp/m1 --messages 1000000 --threads 1000
//! # latest-50 history reads through a running server (as `probe`, dev auth):
//! cargo run --release -p messenger-storage-sqlite --example store_bench -- \
//!     read --url ws://127.0.0.1:8080/ws --threads 1000 --requests 5000
//! ```
//!
//! `fill` writes through the store's own API (`append_batch`, several batches in flight,
//! as the engine does), prints progress, and ends with the directory's size per million
//! messages; with `--read-check N` it also times N latest-50 reads on the store itself
//! (no server), to split the server's share from SQLite's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use messenger_core::model::{HistoryQuery, NewMessage, NewThread, ThreadKind};
use messenger_core::{MessageId, MessageStore, ThreadId, ThreadStore, UserId};
use messenger_storage_sqlite::{SqliteOptions, SqliteStore, SyncMode};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Fill a messenger SQLite data directory, or time history reads")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Append MESSAGES messages spread over THREADS direct threads (probe <-> uN).
    Fill {
        /// The data directory (created; must not hold a store already).
        #[arg(long)]
        data_dir: PathBuf,
        /// How many messages.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// How many threads.
        #[arg(long, default_value_t = 1000)]
        threads: u64,
        /// Messages per append_batch call.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Bytes of text per message.
        #[arg(long, default_value_t = 64)]
        text_bytes: usize,
        /// `normal` fills faster; the result on disk is the same.
        #[arg(long, default_value = "normal")]
        sync: String,
        /// After filling, time this many latest-50 reads on the store itself.
        #[arg(long, default_value_t = 0)]
        read_check: usize,
    },
    /// Time latest-50 `fetch_history` through a server, as `probe`, over random threads.
    Read {
        /// The server's WebSocket URL (dev auth: `?token=probe` is appended).
        #[arg(long)]
        url: String,
        /// The threads the fill made.
        #[arg(long, default_value_t = 1000)]
        threads: u64,
        /// Requests in all.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Connections, each with one request in flight.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
}

fn thread_of(i: u64) -> ThreadId {
    ThreadId::direct(&user("probe"), &user(&format!("u{i}")))
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

/// A cheap deterministic sequence (no rand dependency for a benchmark tool).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn dir_kib(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
                / 1024
        })
        .unwrap_or(0)
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    format!(
        "n={} p50={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
        v.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(0.999).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Args::parse().cmd {
        Cmd::Fill {
            data_dir,
            messages,
            threads,
            batch,
            text_bytes,
            sync,
            read_check,
        } => {
            fill(
                &data_dir, messages, threads, batch, text_bytes, &sync, read_check,
            )
            .await
        }
        Cmd::Read {
            url,
            threads,
            requests,
            connections,
        } => read(&url, threads, requests, connections).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn fill(
    dir: &Path,
    messages: u64,
    threads: u64,
    batch: usize,
    text_bytes: usize,
    sync: &str,
    read_check: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let sync = match sync {
        "full" => SyncMode::Full,
        "normal" => SyncMode::Normal,
        other => return Err(format!("--sync {other}: use full or normal").into()),
    };
    let store = SqliteStore::open(SqliteOptions::new(dir).sync(sync)).await?;
    let existing = store.fetch(&thread_of(0), HistoryQuery::latest(1)).await?;
    if !existing.messages.is_empty() {
        return Err(format!(
            "{} already holds messages: fill an empty directory",
            dir.display()
        )
        .into());
    }
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    for i in 0..threads {
        let (a, b) = (user("probe"), user(&format!("u{i}")));
        store
            .create_thread(NewThread {
                thread_id: thread_of(i),
                kind: ThreadKind::Direct,
                title: None,
                members: vec![a, b],
                created_at: now(),
            })
            .await?;
    }
    let text: String = "x".repeat(text_bytes);
    let started = Instant::now();
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let per_thread = messages / threads;
    // Batches round-robin over the threads, 8 in flight (group commit shares fsyncs).
    let mut jobs: Vec<(u64, u64)> = Vec::new(); // (thread, first index in it)
    let mut k = 0;
    while k < per_thread {
        for t in 0..threads {
            jobs.push((t, k));
        }
        k += batch as u64;
    }
    let total_jobs = jobs.len();
    let mut done_msgs = 0u64;
    let mut last_report = Instant::now();
    let mut in_flight = futures::stream::iter(jobs.into_iter().map(|(t, first)| {
        let store = store.clone();
        let text = text.clone();
        let next_id = next_id.clone();
        async move {
            let n = (per_thread - first).min(batch as u64);
            let thread = thread_of(t);
            let sender = if first % 2 == 0 {
                user("probe")
            } else {
                user(&format!("u{t}"))
            };
            let msgs: Vec<NewMessage> = (0..n)
                .map(|j| NewMessage {
                    thread_id: thread.clone(),
                    message_id: MessageId(
                        next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    ),
                    sender_id: sender.clone(),
                    temp_id: format!("f{}", first + j),
                    text: text.clone(),
                    sent_at: now(),
                })
                .collect();
            store
                .append_batch(&thread, msgs)
                .await
                .map(|v| v.len() as u64)
        }
    }))
    .buffer_unordered(8);
    let mut jobs_done = 0;
    while let Some(r) = in_flight.next().await {
        done_msgs += r?;
        jobs_done += 1;
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {done_msgs} messages ({jobs_done}/{total_jobs} batches), {:.0} msg/s",
                done_msgs as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    drop(in_flight);
    let took = started.elapsed();
    println!(
        "filled {done_msgs} messages in {threads} threads in {:.1}s ({:.0} msg/s, batches of {batch}, sync {sync})",
        took.as_secs_f64(),
        done_msgs as f64 / took.as_secs_f64()
    );
    if read_check > 0 {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut lat = Vec::with_capacity(read_check);
        for _ in 0..read_check {
            let t = thread_of(next_rand(&mut rng) % threads);
            let t0 = Instant::now();
            let page = store.fetch(&t, HistoryQuery::latest(50)).await?;
            lat.push(t0.elapsed());
            assert_eq!(page.messages.len() as u64, per_thread.min(50));
        }
        println!("store latest-50 reads: {}", percentiles(lat));
    }
    drop(store);
    // The last clone closed: the writer checkpointed and truncated the WAL.
    let kib = dir_kib(dir);
    println!(
        "data directory {}: {kib} KiB = {:.1} MiB per million messages ({} bytes per message of {text_bytes} text bytes)",
        dir.display(),
        kib as f64 / 1024.0 * 1e6 / done_msgs as f64,
        kib * 1024 / done_msgs.max(1)
    );
    Ok(())
}

async fn read(
    url: &str,
    threads: u64,
    requests: usize,
    connections: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let per = requests.div_ceil(connections);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let url = format!("{url}?token=probe");
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
            let mut rng = 0x2545_f491_4f6c_dd1du64 ^ (c as u64 + 1);
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = thread_of(next_rand(&mut rng) % threads);
                let req = serde_json::json!({"type":"fetch_history","req_id":i,"thread_id":t.as_str(),"limit":50});
                let t0 = Instant::now();
                ws.send(Message::Text(req.to_string().into())).await?;
                loop {
                    let Some(m) = ws.next().await else {
                        return Err("the server closed the connection".into());
                    };
                    let Message::Text(txt) = m? else { continue };
                    let v: serde_json::Value = serde_json::from_str(txt.as_str())?;
                    if v["type"] == "history" && v["req_id"] == i {
                        lat.push(t0.elapsed());
                        break;
                    }
                    if v["type"] == "error" {
                        return Err(format!("error reply: {v}").into());
                    }
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?.map_err(|e| e.to_string())?);
    }
    println!(
        "server latest-50 reads ({connections} connections, one request in flight each): {}",
        percentiles(all)
    );
    Ok(())
}
