//! The reconnect storm: K clients of one node lose it at once (SIGKILL) and come back to
//! the surviving nodes with the SDK's full-jitter backoff
//! ([`messenger_client::BackoffConfig`]), then catch up what was sent meanwhile.
//!
//! The clients are raw protocol sessions (small tungstenite buffers, one task each), so
//! 19 000 of them fit in one process under the 20 000-descriptor limit; they connect to
//! the nodes directly because a balancer in between would need two descriptors per
//! connection. Each is a member of one group; talkers on the other nodes post into
//! every group right after the kill, so every client has messages to catch up on.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use messenger_client::BackoffConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::Cluster;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Storm settings.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Clients on the node that is killed.
    pub clients: usize,
    /// Members per group (clients are split into groups of this size).
    pub group_size: usize,
    /// Messages posted into each group after the kill.
    pub messages: usize,
    /// Connections opened at once while setting up.
    pub concurrency: usize,
    /// The bound every client must be caught up within (from the kill).
    pub bound: Duration,
    /// The clients' backoff (the SDK's defaults unless changed).
    pub backoff: BackoffConfig,
}

/// What the storm measured.
#[derive(Debug, Default)]
pub struct StormReport {
    /// Clients dropped.
    pub clients: usize,
    /// Time to open them (setup).
    pub setup: Duration,
    /// Per client, kill -> reconnected (sorted).
    pub reconnected: Vec<Duration>,
    /// Per client, kill -> caught up (sorted).
    pub caught_up: Vec<Duration>,
    /// Clients not caught up within twice the bound.
    pub failed: usize,
    /// Connection attempts refused or failed during the storm.
    pub refused_attempts: u64,
    /// Surviving nodes' RSS in KiB: (node id, before the kill, peak, after).
    pub rss: Vec<(u16, u64, u64, u64)>,
    /// Problems seen (gaps, unexpected frames), first few.
    pub errors: Vec<String>,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

impl std::fmt::Display for StormReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "storm: {} clients dropped (setup {:.1?}); {} not caught up; {} refused attempts",
            self.clients, self.setup, self.failed, self.refused_attempts
        )?;
        for (name, v) in [
            ("reconnected", &self.reconnected),
            ("caught up", &self.caught_up),
        ] {
            writeln!(
                f,
                "  {name}: p50 {:.2?} p90 {:.2?} p99 {:.2?} max {:.2?} (n={})",
                pct(v, 0.5),
                pct(v, 0.9),
                pct(v, 0.99),
                v.last().copied().unwrap_or_default(),
                v.len()
            )?;
        }
        for (id, before, peak, after) in &self.rss {
            writeln!(
                f,
                "  node {id} RSS: before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
                *before as f64 / 1024.0,
                *peak as f64 / 1024.0,
                *after as f64 / 1024.0
            )?;
        }
        for e in self.errors.iter().take(10) {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

async fn connect(addr: std::net::SocketAddr, user: &str) -> Result<Ws, String> {
    let url = format!("ws://{addr}/ws?token={user}");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let first = next_json(&mut ws).await?;
    if first["type"] != "welcome" {
        return Err(format!("expected welcome, got {first}"));
    }
    Ok(ws)
}

async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .map_err(|_| "no frame in 20 s".to_string())?
            .ok_or("closed")?
            .map_err(|e| e.to_string())?;
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).map_err(|e| e.to_string()),
            Message::Close(_) => return Err("closed".into()),
            _ => continue,
        }
    }
}

/// Sends `req` and reads until its reply (frames without that `req_id` are skipped).
async fn request(ws: &mut Ws, req: Value) -> Result<Value, String> {
    let id = req["req_id"].clone();
    ws.send(Message::text(req.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let v = next_json(ws).await?;
        if v["req_id"] == id {
            if v["type"] == "error" {
                return Err(format!("error reply: {v}"));
            }
            return Ok(v);
        }
    }
}

/// RSS of `pid` in KiB.
fn rss(pid: Option<u32>) -> u64 {
    pid.map(messenger_test_support::process::rss_kib)
        .unwrap_or(0)
}

/// Runs the storm on `cluster` (node 1 is the victim; at least two nodes).
pub async fn storm(cluster: &mut Cluster, cfg: &StormConfig) -> StormReport {
    let mut report = StormReport {
        clients: cfg.clients,
        ..Default::default()
    };
    let run = format!("st{}", std::process::id());
    let victim = cluster.nodes[0].addr;
    let survivors: Vec<std::net::SocketAddr> = cluster.nodes[1..].iter().map(|n| n.addr).collect();
    let groups = cfg.clients.div_ceil(cfg.group_size);
    // Talkers (one per group) on the surviving nodes create the groups.
    let mut talkers = Vec::new();
    let mut group_ids = Vec::new();
    for g in 0..groups {
        let me = format!("{run}t{g}");
        let mut ws = connect(survivors[g % survivors.len()], &me)
            .await
            .expect("talker connect");
        let members: Vec<String> = (g * cfg.group_size
            ..((g + 1) * cfg.group_size).min(cfg.clients))
            .map(|i| format!("{run}c{i}"))
            .collect();
        let r = request(
            &mut ws,
            json!({"type":"create_thread","req_id":1,"kind":"group","members":members,"title":"storm"}),
        )
        .await
        .expect("create group");
        group_ids.push(r["thread_id"].as_str().expect("thread id").to_string());
        talkers.push(ws);
    }
    // The clients, all on the victim.
    let t_setup = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
    let opened = futures::future::join_all((0..cfg.clients).map(|i| {
        let sem = sem.clone();
        let user = format!("{run}c{i}");
        async move {
            let _p = sem.acquire().await;
            let mut tries = 0;
            loop {
                match connect(victim, &user).await {
                    Ok(ws) => return Ok(ws),
                    Err(e) if tries < 5 => {
                        tries += 1;
                        tracing::debug!(%e, "setup connect retry");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(format!("{user}: {e}")),
                }
            }
        }
    }))
    .await;
    let mut conns = Vec::with_capacity(cfg.clients);
    for c in opened {
        conns.push(c.expect("every client connects to the victim"));
    }
    report.setup = t_setup.elapsed();
    eprintln!(
        "storm: {} clients on node 1 in {:.1?}, {} groups of {}",
        conns.len(),
        report.setup,
        groups,
        cfg.group_size
    );
    let rss_before: Vec<u64> = cluster.nodes[1..].iter().map(|n| rss(n.pid())).collect();

    // Each client reads its socket until it breaks, then reconnects and catches up.
    let refused = Arc::new(AtomicU64::new(0));
    let kill_at = Arc::new(tokio::sync::OnceCell::<Instant>::new());
    let expect_last = cfg.messages as u64;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(cfg.clients);
    for (i, mut ws) in conns.into_iter().enumerate() {
        let user = format!("{run}c{i}");
        let thread = group_ids[i / cfg.group_size].clone();
        let survivors = survivors.clone();
        let backoff = cfg.backoff.clone();
        let refused = refused.clone();
        let kill_at = kill_at.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = 0u64;
            // Live until the node dies.
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        if v["type"] == "receive_message" && v["thread_id"] == thread.as_str() {
                            held = held.max(v["seq"].as_u64().unwrap_or(0));
                        }
                    }
                }
            }
            drop(ws);
            let t0 = *kill_at.get().unwrap_or(&Instant::now());
            let mut attempt = 0u32;
            let mut ws = loop {
                tokio::time::sleep(backoff.delay(attempt)).await;
                let node = survivors[(fastrand_index(i as u64, attempt)) % survivors.len()];
                match connect(node, &user).await {
                    Ok(ws) => break ws,
                    Err(_) => {
                        refused.fetch_add(1, Relaxed);
                        attempt += 1;
                    }
                }
            };
            let back = t0.elapsed();
            // Catch up: list_threads, then history after what was held, until the
            // group's final seq is held.
            let mut errors = Vec::new();
            loop {
                let r = match request(&mut ws, json!({"type":"list_threads","req_id":"l"})).await {
                    Ok(r) => r,
                    Err(e) => return (back, None, vec![e]),
                };
                let last = r["threads"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["thread_id"] == thread.as_str()))
                    .and_then(|t| t["last_seq"].as_u64())
                    .unwrap_or(0);
                while held < last {
                    let q = json!({"type":"fetch_history","req_id":"h","thread_id":thread,
                                   "after_seq":held,"limit":200});
                    let page = match request(&mut ws, q).await {
                        Ok(p) => p,
                        Err(e) => return (back, None, vec![e]),
                    };
                    let msgs = page["messages"].as_array().cloned().unwrap_or_default();
                    if msgs.is_empty() {
                        break;
                    }
                    for m in msgs {
                        let s = m["seq"].as_u64().unwrap_or(0);
                        if s != held + 1 {
                            errors.push(format!("{user}: gap, held {held}, got {s}"));
                        }
                        held = held.max(s);
                    }
                }
                if held >= expect_last {
                    done.fetch_add(1, Relaxed);
                    return (back, Some(t0.elapsed()), errors);
                }
                if t0.elapsed() > Duration::from_secs(120) {
                    errors.push(format!("{user}: held {held} of {expect_last} after 120 s"));
                    return (back, None, errors);
                }
                // The talkers are still posting: look again shortly.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // Kill node 1, post into every group from the talkers, watch memory.
    let kill = Instant::now();
    let _ = kill_at.set(kill);
    cluster.kill(0);
    eprintln!("storm: node 1 SIGKILLed with {} clients", cfg.clients);
    // Every talker posts its messages at once (each waits only for its own replies).
    let post = futures::future::join_all(talkers.iter_mut().enumerate().map(|(g, ws)| {
        let thread = group_ids[g].clone();
        let run = run.clone();
        async move {
            for k in 0..cfg.messages {
                let q = json!({"type":"send_message","req_id":format!("m{k}"),
                               "thread_id":thread,"temp_id":format!("{run}-{g}-{k}"),
                               "text":format!("after the kill {k}")});
                if let Err(e) = request(ws, q).await {
                    eprintln!("storm: talker {g} send failed: {e}");
                }
            }
        }
    }));
    let mut peak: Vec<u64> = rss_before.clone();
    let watch = async {
        loop {
            for (j, n) in cluster.nodes[1..].iter().enumerate() {
                peak[j] = peak[j].max(rss(n.pid()));
            }
            if done.load(Relaxed) == cfg.clients || kill.elapsed() > cfg.bound * 4 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::join!(post, watch);
    for t in tasks {
        match t.await {
            Ok((back, caught, errors)) => {
                report.reconnected.push(back);
                match caught {
                    Some(c) => report.caught_up.push(c),
                    None => report.failed += 1,
                }
                report.errors.extend(errors);
            }
            Err(e) => {
                report.failed += 1;
                report.errors.push(format!("client task: {e}"));
            }
        }
    }
    report.reconnected.sort();
    report.caught_up.sort();
    report.refused_attempts = refused.load(Relaxed);
    for (j, n) in cluster.nodes[1..].iter().enumerate() {
        report
            .rss
            .push((n.id, rss_before[j], peak[j], rss(n.pid())));
    }
    report
}

/// A node index for client `i`'s attempt `a`, spread evenly (no shared RNG state).
fn fastrand_index(i: u64, a: u32) -> usize {
    let mut x =
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(a).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x as usize
}
