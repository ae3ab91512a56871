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

/// How long a request waits for its reply before the talker sends again (the same
/// `temp_id`) or a client gives up on that connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A caught-up-so-far client that hears nothing for this long asks `list_threads` again.
const QUIET_REPOLL: Duration = Duration::from_secs(3);

pub(crate) type Ws =
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

/// One CPU sample: (since the kill, (CPU seconds per group, machine CPU seconds) so far,
/// clients caught up so far).
pub type CpuTick = (Duration, (Vec<f64>, f64), usize);

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
    /// CPU use from the kill until every client was caught up (or gave up).
    pub cpu: crate::cpu::CpuUse,
    /// Talker sends repeated (no reply in time, `unavailable`, reconnect).
    pub talker_retries: u64,
    /// Times a client heard nothing for a while and asked `list_threads` again.
    pub repolls: u64,
    /// Per talker, kill -> all its messages stored (sorted).
    pub stored: Vec<Duration>,
    /// Talkers (groups).
    pub talkers: usize,
    /// Catch-up requests (list_threads, fetch_history) answered after more than
    /// `REPLY_TIMEOUT` (10 s).
    pub slow_replies: u64,
    /// The CPU groups' names (the order of `timeline`'s figures).
    pub cpu_names: Vec<String>,
    /// Every second from the kill: (since the kill, (CPU seconds per group, machine CPU
    /// seconds) so far, clients caught up so far).
    pub timeline: Vec<CpuTick>,
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
        writeln!(
            f,
            "  talkers: {} of {} had all messages stored, the last {:.2?} after the kill; \
             {} sends repeated; {} client re-polls",
            self.stored.len(),
            self.talkers,
            self.stored.last().copied().unwrap_or_default(),
            self.talker_retries,
            self.repolls
        )?;
        writeln!(f, "  {}", self.cpu)?;
        writeln!(
            f,
            "  {} catch-up replies took over {REPLY_TIMEOUT:?}",
            self.slow_replies
        )?;
        // CPU per 5 s from the kill: where the time went while clients were catching up.
        writeln!(
            f,
            "  CPU per 5 s (% of one core): {} | machine | caught up",
            self.cpu_names.join(" | ")
        )?;
        let mut prev: Option<&CpuTick> = None;
        for s in self.timeline.iter().step_by(5) {
            if let Some(p) = prev {
                let dt = (s.0 - p.0).as_secs_f64().max(1e-9);
                let per: Vec<String> =
                    s.1 .0
                        .iter()
                        .zip(&p.1 .0)
                        .map(|(a, b)| format!("{:.0}", 100.0 * (a - b) / dt))
                        .collect();
                writeln!(
                    f,
                    "    {:>5.1}-{:>5.1} s: {} | {:.0} | {}",
                    p.0.as_secs_f64(),
                    s.0.as_secs_f64(),
                    per.join(" | "),
                    100.0 * (s.1 .1 - p.1 .1) / dt,
                    s.2
                )?;
            }
            prev = Some(s);
            if s.2 == self.clients {
                break;
            }
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

pub(crate) async fn connect(addr: std::net::SocketAddr, user: &str) -> Result<Ws, String> {
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
    next_json_within(ws, Duration::from_secs(20))
        .await?
        .ok_or_else(|| "no frame in 20 s".to_string())
}

/// The next text frame as JSON, `None` if none came within `limit`.
async fn next_json_within(ws: &mut Ws, limit: Duration) -> Result<Option<Value>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(m) => m.ok_or("closed")?.map_err(|e| e.to_string())?,
        };
        match m {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            Message::Close(_) => return Err("closed".into()),
            _ => continue,
        }
    }
}

/// Sends `req` and reads until its reply; other frames go to `other` (live messages
/// that arrive meanwhile are not lost to the caller).
pub(crate) async fn request_seeing(
    ws: &mut Ws,
    req: Value,
    limit: Duration,
    mut other: impl FnMut(&Value),
) -> Result<Value, RequestError> {
    let id = req["req_id"].clone();
    ws.send(Message::text(req.to_string()))
        .await
        .map_err(|e| RequestError::Broken(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = match next_json_within(ws, left).await {
            Ok(Some(v)) => v,
            Ok(None) => return Err(RequestError::TimedOut),
            Err(e) => return Err(RequestError::Broken(e)),
        };
        if v["req_id"] == id {
            if v["type"] == "error" {
                return Err(RequestError::Refused(v));
            }
            return Ok(v);
        }
        other(&v);
    }
}

/// Why a request got no reply.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// No reply within the limit (the connection may still be fine).
    TimedOut,
    /// The connection broke.
    Broken(String),
    /// An `error` frame.
    Refused(Value),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::TimedOut => write!(f, "no reply in time"),
            RequestError::Broken(e) => write!(f, "connection broken: {e}"),
            RequestError::Refused(v) => write!(f, "error reply: {v}"),
        }
    }
}

/// Sends `req` and reads until its reply (frames without that `req_id` are skipped).
async fn request(ws: &mut Ws, req: Value) -> Result<Value, String> {
    request_seeing(ws, req, Duration::from_secs(20), |_| {})
        .await
        .map_err(|e| e.to_string())
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
    let repolls = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let give_up = cfg.bound * 4;
    let mut tasks = Vec::with_capacity(cfg.clients);
    for (i, mut ws) in conns.into_iter().enumerate() {
        let user = format!("{run}c{i}");
        let thread = group_ids[i / cfg.group_size].clone();
        let survivors = survivors.clone();
        let backoff = cfg.backoff.clone();
        let refused = refused.clone();
        let kill_at = kill_at.clone();
        let done = done.clone();
        let repolls = repolls.clone();
        let slow = slow.clone();
        let ended = ended.clone();
        let client = async move {
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
            // Catch up as the SDK does: list_threads, history after what was held up
            // to the thread's last seq, then the live stream (a gap in it fetches the
            // missing seqs). Only when nothing arrives for a while is list_threads asked
            // again (a message relayed while this session was being registered could
            // otherwise be missed until the next one).
            let mut errors = Vec::new();
            let deadline = t0 + give_up;
            let mut live = Vec::new();
            loop {
                // A catch-up request waits for its reply as long as the client waits at
                // all: asking again would only queue a second one behind it.
                let asked = Instant::now();
                let r = match request_seeing(
                    &mut ws,
                    json!({"type":"list_threads","req_id":"l"}),
                    deadline.saturating_duration_since(asked),
                    |v| live.push(v.clone()),
                )
                .await
                {
                    Ok(r) => r,
                    Err(e) => return (back, None, vec![format!("{user}: list_threads: {e}")]),
                };
                if asked.elapsed() > REPLY_TIMEOUT {
                    slow.fetch_add(1, Relaxed);
                }
                let last = r["threads"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["thread_id"] == thread.as_str()))
                    .and_then(|t| t["last_seq"].as_u64())
                    .unwrap_or(0);
                let mut want = last;
                loop {
                    // Live messages seen while a request was in flight.
                    for v in live.drain(..) {
                        if v["type"] == "receive_message" && v["thread_id"] == thread.as_str() {
                            let s = v["seq"].as_u64().unwrap_or(0);
                            if s == held + 1 {
                                held = s;
                            }
                            want = want.max(s);
                        }
                    }
                    if held >= expect_last {
                        done.fetch_add(1, Relaxed);
                        return (back, Some(t0.elapsed()), errors);
                    }
                    if held < want {
                        let q = json!({"type":"fetch_history","req_id":"h","thread_id":thread,
                                       "after_seq":held,"limit":200});
                        let asked = Instant::now();
                        let page = match request_seeing(
                            &mut ws,
                            q,
                            deadline.saturating_duration_since(asked),
                            |v| live.push(v.clone()),
                        )
                        .await
                        {
                            Ok(p) => p,
                            Err(e) => {
                                return (back, None, vec![format!("{user}: fetch_history: {e}")])
                            }
                        };
                        if asked.elapsed() > REPLY_TIMEOUT {
                            slow.fetch_add(1, Relaxed);
                        }
                        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
                        if msgs.is_empty() {
                            errors.push(format!(
                                "{user}: history after {held} is empty, last_seq said {want}"
                            ));
                            want = held;
                        }
                        for m in msgs {
                            let s = m["seq"].as_u64().unwrap_or(0);
                            if s != held + 1 {
                                errors.push(format!("{user}: gap, held {held}, got {s}"));
                            }
                            held = held.max(s);
                        }
                        continue;
                    }
                    if Instant::now() > deadline {
                        errors.push(format!(
                            "{user}: held {held} of {expect_last} after {give_up:?}"
                        ));
                        return (back, None, errors);
                    }
                    match next_json_within(&mut ws, QUIET_REPOLL).await {
                        Ok(Some(v)) => live.push(v),
                        // Nothing for a while: ask list_threads again.
                        Ok(None) => {
                            repolls.fetch_add(1, Relaxed);
                            break;
                        }
                        Err(e) => {
                            errors.push(format!("{user}: live stream: {e}"));
                            return (back, None, errors);
                        }
                    }
                }
            }
        };
        tasks.push(tokio::spawn(async move {
            let r = client.await;
            ended.fetch_add(1, Relaxed);
            r
        }));
    }

    // Kill node 1, post into every group from the talkers, watch memory.
    let kill = Instant::now();
    let _ = kill_at.set(kill);
    cluster.kill(0);
    eprintln!("storm: node 1 SIGKILLed with {} clients", cfg.clients);
    // Where the CPU goes from the kill on: the surviving nodes, Redis, HBase, this
    // process (clients and talkers).
    let mut cpu_groups: Vec<(String, Vec<u32>)> = cluster.nodes[1..]
        .iter()
        .map(|n| (format!("node {}", n.id), n.pid().into_iter().collect()))
        .collect();
    cpu_groups.push(("redis".into(), cluster.redis_pid().into_iter().collect()));
    if let Some(dir) = cluster.hbase_run_dir() {
        cpu_groups.push(("hbase".into(), crate::cpu::pids_in(dir)));
    }
    cpu_groups.push(("generator".into(), vec![std::process::id()]));
    let cpu = crate::cpu::CpuProbe::start(cpu_groups);
    // Every talker posts its messages at once (each waits only for its own replies) and,
    // as the SDK does, sends again under the same temp_id until it is stored.
    let talker_retries = AtomicU64::new(0);
    let stored_at = std::sync::Mutex::new(Vec::new());
    let post = futures::future::join_all(talkers.into_iter().enumerate().map(|(g, ws)| {
        let t = Talker {
            user: format!("{run}t{g}"),
            addr: survivors[g % survivors.len()],
            thread: group_ids[g].clone(),
            temp_prefix: format!("{run}-{g}"),
        };
        let retries = &talker_retries;
        let stored_at = &stored_at;
        async move {
            match t.post(ws, cfg.messages, kill + give_up, retries).await {
                Ok(()) => stored_at.lock().expect("lock").push(kill.elapsed()),
                Err(e) => eprintln!("storm: talker {g} gave up: {e}"),
            }
        }
    }));
    let mut peak: Vec<u64> = rss_before.clone();
    let mut timeline = Vec::new();
    let watch = async {
        let mut tick = 0u32;
        loop {
            for (j, n) in cluster.nodes[1..].iter().enumerate() {
                peak[j] = peak[j].max(rss(n.pid()));
            }
            if tick.is_multiple_of(4) {
                timeline.push((kill.elapsed(), cpu.sample(), done.load(Relaxed)));
            }
            tick += 1;
            if ended.load(Relaxed) == cfg.clients || kill.elapsed() > give_up + REPLY_TIMEOUT {
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
    report.cpu = cpu.stop();
    report.cpu_names = cpu.names();
    report.timeline = timeline;
    report.slow_replies = slow.load(Relaxed);
    report.talker_retries = talker_retries.load(Relaxed);
    report.repolls = repolls.load(Relaxed);
    report.stored = stored_at.into_inner().expect("lock");
    report.stored.sort();
    report.talkers = groups;
    for (j, n) in cluster.nodes[1..].iter().enumerate() {
        report
            .rss
            .push((n.id, rss_before[j], peak[j], rss(n.pid())));
    }
    report
}

/// A talker: the one poster of its group, on a surviving node.
struct Talker {
    user: String,
    addr: std::net::SocketAddr,
    thread: String,
    temp_prefix: String,
}

impl Talker {
    /// Posts `messages` messages; a send without `message_sent` within
    /// `REPLY_TIMEOUT` (10 s). answered `unavailable`, or on a broken connection is sent again
    /// under the same `temp_id` (after reconnecting if needed) until it is stored or
    /// `deadline` passes: the SDK's outbox contract.
    async fn post(
        &self,
        ws: Ws,
        messages: usize,
        deadline: Instant,
        retries: &AtomicU64,
    ) -> Result<(), String> {
        let mut ws = Some(ws);
        let mut attempt = 0u32;
        for k in 0..messages {
            loop {
                if Instant::now() > deadline {
                    return Err(format!("message {k} not stored before the deadline"));
                }
                let conn = match ws.as_mut() {
                    Some(c) => c,
                    None => match connect(self.addr, &self.user).await {
                        Ok(c) => ws.insert(c),
                        Err(e) => {
                            tracing::debug!(%e, "talker reconnect");
                            attempt += 1;
                            retries.fetch_add(1, Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                let q = json!({"type":"send_message","req_id":format!("m{k}a{attempt}"),
                               "thread_id":self.thread,
                               "temp_id":format!("{}-{k}", self.temp_prefix),
                               "text":format!("after the kill {k}")});
                match request_seeing(conn, q, REPLY_TIMEOUT, |_| {}).await {
                    Ok(_) => break,
                    Err(RequestError::TimedOut) => {}
                    Err(RequestError::Broken(_)) => ws = None,
                    Err(RequestError::Refused(v)) => {
                        if v["code"] != "unavailable" && v["code"] != "rate_limited" {
                            return Err(format!("send refused: {v}"));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                attempt += 1;
                retries.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }
}

/// A node index for client `i`'s attempt `a`, spread evenly (no shared RNG state).
fn fastrand_index(i: u64, a: u32) -> usize {
    let mut x =
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(a).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x as usize
}
