//! The scenarios: idle, pairs, group and reconnect, each run against one target (the
//! server or the floor relay) and returning its figures as JSON.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cli::{Args, Scenario};
use crate::client::{self, BoxError, Target, Ws};
use crate::hist::Latency;
use crate::proto::{self, Lite};
use crate::report::Figures;
use crate::sys;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// One scenario run against one target.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The command line.
    pub args: Args,
    /// Where to connect: one server, or the nodes of a cluster (connection `i` goes to
    /// `targets[i % len]`). Never empty.
    pub targets: Vec<Target>,
    /// The target's pids (one per node), for RSS and CPU, which are summed.
    pub pids: Vec<u32>,
    /// `server` or `floor`, for progress lines.
    pub label: &'static str,
    /// Whether the target is the floor relay (which keeps no history).
    pub is_floor: bool,
    /// Prefix of every user id.
    pub run_id: String,
}

impl Ctx {
    /// Where connection `i` goes: round-robin over the targets, so that with two nodes
    /// the two sides of each pair (users 2t and 2t+1) are on different nodes.
    fn target(&self, i: usize) -> &Target {
        &self.targets[i % self.targets.len()]
    }

    /// The targets' total RSS (None without pids or if one cannot be read).
    fn rss(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids
            .iter()
            .map(|p| sys::rss_bytes(Some(*p)).ok())
            .sum()
    }

    /// The targets' total CPU seconds (None without pids or if one cannot be read).
    fn cpu_secs(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|p| sys::cpu_secs(Some(*p))).sum()
    }

    fn source(&self, i: usize, total: usize) -> Option<std::net::SocketAddrV4> {
        self.targets.iter().all(Target::is_loopback_v4).then(|| {
            // Source block b: the server's run uses 127.0.(2b).1 and up, the floor's
            // 127.0.(2b+1).1 and up (254 addresses, up to ~7M connections, each).
            let base = (2 * self.args.source_block + usize::from(self.is_floor)) * 254;
            client::source_addr(i, total, self.args.per_source_ip, base)
        })
    }
}

/// Runs the scenario of `ctx.args` against `ctx.targets`.
pub async fn run(ctx: &Ctx) -> Result<Figures, BoxError> {
    match ctx.args.scenario {
        Scenario::Idle => idle(ctx).await,
        Scenario::Pairs | Scenario::Group | Scenario::Biggroup => traffic(ctx).await,
        Scenario::Reconnect => reconnect(ctx).await,
        Scenario::Floor => Err("floor is not a load scenario".into()),
    }
}

fn obj(v: serde_json::Value) -> Figures {
    match v {
        serde_json::Value::Object(m) => m,
        _ => Figures::new(),
    }
}

/// Prints a progress line every second until cancelled.
fn progress(
    label: String,
    cancel: CancellationToken,
    mut line: impl FnMut(f64) -> String + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let t = start.elapsed().as_secs_f64();
                    eprintln!("[{label} {t:5.1}s] {}", line(t));
                }
            }
        }
    })
}

/// Opens `users.len()` connections with bounded concurrency; results in `users` order.
async fn open_all(ctx: &Ctx, users: &[String], busy: bool) -> Vec<Result<Ws, BoxError>> {
    let total = users.len();
    let sem = Arc::new(Semaphore::new(ctx.args.concurrency));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cancel = CancellationToken::new();
    let p = progress(format!("{} connect", ctx.label), cancel.clone(), {
        let (o, f) = (opened.clone(), failed.clone());
        move |_| {
            format!(
                "opened {} / {total}, failed {}",
                o.load(Ordering::Relaxed),
                f.load(Ordering::Relaxed)
            )
        }
    });
    let mut handles = Vec::with_capacity(total);
    for (i, user) in users.iter().enumerate() {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let target = ctx.target(i).clone();
        let user = user.clone();
        let source = ctx.source(i, total);
        let (o, f) = (opened.clone(), failed.clone());
        handles.push(tokio::spawn(async move {
            let r = client::connect(
                &target,
                &user,
                source,
                client::ws_config(busy),
                CONNECT_TIMEOUT,
            )
            .await;
            drop(permit);
            match &r {
                Ok(_) => o.fetch_add(1, Ordering::Relaxed),
                Err(_) => f.fetch_add(1, Ordering::Relaxed),
            };
            r
        }));
    }
    let mut out = Vec::with_capacity(total);
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| Err(e.into())));
    }
    cancel.cancel();
    let _ = p.await;
    out
}

/// `idle`: open N connections from many source addresses, hold them, read RSS.
async fn idle(ctx: &Ctx) -> Result<Figures, BoxError> {
    let n = ctx.args.connections_or_default();
    let rss_server_before = ctx.rss();
    let rss_gen_before = sys::rss_bytes(None).ok();
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(ctx.args.concurrency));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let hold = CancellationToken::new();
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let prog_cancel = CancellationToken::new();
    let rss_ctx = ctx.clone();
    let p = progress(format!("{} idle", ctx.label), prog_cancel.clone(), {
        let (o, f, l) = (opened.clone(), failed.clone(), lost.clone());
        move |t| {
            let o = o.load(Ordering::Relaxed);
            let rss = rss_ctx
                .rss()
                .map(|b| format!(", target RSS {:.1} MiB", b as f64 / 1048576.0))
                .unwrap_or_default();
            format!(
                "open {o} / {n} ({:.0}/s), failed {}, lost {}{rss}",
                o as f64 / t,
                f.load(Ordering::Relaxed),
                l.load(Ordering::Relaxed)
            )
        }
    });
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let target = ctx.target(i).clone();
        let user = format!("{}i{i}", ctx.run_id);
        let source = ctx.source(i, n);
        let (o, f, l) = (opened.clone(), failed.clone(), lost.clone());
        let hold = hold.clone();
        let first_error = first_error.clone();
        handles.push(tokio::spawn(async move {
            let r = client::connect(
                &target,
                &user,
                source,
                client::ws_config(false),
                CONNECT_TIMEOUT,
            )
            .await;
            drop(permit);
            let mut ws = match r {
                Ok(ws) => ws,
                Err(e) => {
                    f.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(|| e.to_string());
                    return;
                }
            };
            o.fetch_add(1, Ordering::Relaxed);
            // Reading answers the server's heartbeat pings.
            tokio::select! {
                _ = hold.cancelled() => {}
                _ = async {
                    while let Some(m) = ws.next().await {
                        if m.is_err() || matches!(m, Ok(Message::Close(_))) {
                            break;
                        }
                    }
                } => { l.fetch_add(1, Ordering::Relaxed); }
            }
        }));
    }
    // Wait for every attempt to finish.
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Hold: at least 2 s so the server settles, at most --duration.
    tokio::time::sleep(Duration::from_secs_f64(ctx.args.duration.max(2.0))).await;
    let rss_server = ctx.rss();
    let rss_gen = sys::rss_bytes(None).ok();
    let held = opened.load(Ordering::Relaxed) - lost.load(Ordering::Relaxed);
    prog_cancel.cancel();
    let _ = p.await;
    hold.cancel();
    for h in handles {
        let _ = h.await;
    }
    let per = |after: Option<u64>, before: Option<u64>| match (after, before) {
        (Some(a), Some(b)) if held > 0 => Some(a.saturating_sub(b) / held),
        _ => None,
    };
    let first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(obj(json!({
        "connections": held,
        "failed": failed.load(Ordering::Relaxed),
        "lost": lost.load(Ordering::Relaxed),
        "connect_secs": (connect_secs * 100.0).round() / 100.0,
        "connects_per_sec": (opened.load(Ordering::Relaxed) as f64 / connect_secs).round(),
        "server_rss_bytes": rss_server,
        "server_rss_baseline_bytes": rss_server_before,
        "server_rss_per_conn_bytes": per(rss_server, rss_server_before),
        "generator_rss_bytes": rss_gen,
        "generator_rss_per_conn_bytes": per(rss_gen, rss_gen_before),
        "source_addresses": n.div_ceil(ctx.args.per_source_ip),
        "first_error": first_error,
    })))
}

/// Counters shared by the traffic tasks.
#[derive(Default)]
struct Counters {
    measuring: AtomicBool,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    delivered_measured: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }
}

/// Sends `create_thread` on `ws` and waits for the `thread` reply; returns its id.
async fn create_thread(ws: &mut Ws, frame: String) -> Result<String, BoxError> {
    ws.send(Message::text(frame)).await?;
    let wait = async {
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m? {
                let f = Lite::decode(t.as_str())?;
                match (&*f.ty, f.req_id.map(|r| r.get())) {
                    ("thread", Some("1")) => {
                        return f
                            .thread_id
                            .map(|t| t.into_owned())
                            .ok_or_else(|| -> BoxError { "thread without thread_id".into() });
                    }
                    ("error", _) => return Err(format!("create_thread: {}", t.as_str()).into()),
                    _ => {}
                }
            }
        }
        Err("connection ended before the thread reply".into())
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .map_err(|_| -> BoxError { "create_thread timed out".into() })?
}

/// `pairs` and `group`: every member sends into its thread, at full speed (pipelined up
/// to `--window` per sender) or at a fixed total rate; receivers record latency.
async fn traffic(ctx: &Ctx) -> Result<Figures, BoxError> {
    let a = &ctx.args;
    let group = a.scenario == Scenario::Group;
    let big = a.scenario == Scenario::Biggroup;
    let (size, n_threads) = if group {
        let g = a.group_size;
        (g, (a.connections_or_default() / g).max(1))
    } else if big {
        (a.group_size, 1)
    } else {
        (2, a.pairs)
    };
    let users: Vec<String> = (0..n_threads)
        .flat_map(|t| {
            (0..size).map(move |k| {
                if group {
                    format!("{}g{t}m{k}", ctx.run_id)
                } else if big {
                    format!("{}B{k}", ctx.run_id)
                } else {
                    format!("{}p{t}{}", ctx.run_id, if k == 0 { 'a' } else { 'b' })
                }
            })
        })
        .collect();
    // biggroup: only the first `online` members connect; the others stay offline.
    let online = if big {
        a.online.unwrap_or(size).min(size)
    } else {
        users.len()
    };
    // biggroup: the creator connects and builds the group before the other members
    // connect, so the `thread` frame of each `add_members` (the whole member list, about
    // 90 times) does not go to every online session: with 2 000 online that was
    // gigabytes of setup traffic.
    let first = if big { online.min(1) } else { online };
    let mut conns = Vec::with_capacity(online);
    for (i, r) in open_all(ctx, &users[..first], true)
        .await
        .into_iter()
        .enumerate()
    {
        conns.push(r.map_err(|e| format!("connect {}: {e}", users[i]))?);
    }
    // One thread per pair or group, created by its first member.
    let mut threads = Vec::with_capacity(n_threads);
    if big {
        threads.push(Arc::<str>::from(
            create_big_group(&mut conns[0], &users[1..]).await?,
        ));
        for (i, r) in open_all(ctx, &users[first..online], true)
            .await
            .into_iter()
            .enumerate()
        {
            conns.push(r.map_err(|e| format!("connect {}: {e}", users[first + i]))?);
        }
    } else {
        let creates = conns.chunks_mut(size).enumerate().map(|(t, chunk)| {
            let members: Vec<&String> = users[t * size + 1..(t + 1) * size].iter().collect();
            let frame = if group {
                json!({"type": "create_thread", "req_id": 1, "kind": "group",
                       "members": members, "title": format!("bench {t}")})
            } else {
                json!({"type": "create_thread", "req_id": 1, "kind": "direct", "members": members})
            };
            create_thread(&mut chunk[0], frame.to_string())
        });
        for r in futures::future::join_all(creates).await {
            threads.push(Arc::<str>::from(r?));
        }
    }
    let connections = conns.len();
    // Members of each thread that send: all of them, or the first --senders of a group
    // (biggroup: one by default).
    let senders_per_thread = if group {
        a.senders.unwrap_or(size).min(size)
    } else if big {
        a.senders.unwrap_or(1).min(online)
    } else {
        size
    };
    // biggroup: every message is expected by each online member but its sender.
    let last = big.then(|| Arc::new(LastMember::new(online as u32 - 1)));
    let senders = n_threads * senders_per_thread;
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let drained = CancellationToken::new();
    let hard = CancellationToken::new();
    let period = a
        .fixed_rate()
        .map(|r| Duration::from_secs_f64(senders as f64 / r));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut writers = Vec::with_capacity(senders);
    let mut readers = Vec::with_capacity(senders);
    let mut sender_index = 0;
    for (i, ws) in conns.into_iter().enumerate() {
        let thread = threads[i / size].clone();
        let (sink, stream) = ws.split();
        let window = Arc::new(Semaphore::new(a.window));
        let stamps = Stamps::default();
        readers.push(tokio::spawn(reader(
            stream,
            window.clone(),
            stamps.clone(),
            counters.clone(),
            last.clone(),
            drained.clone(),
            hard.clone(),
        )));
        if i % size >= senders_per_thread {
            // A receive-only member: its writer only keeps the connection open.
            writers.push(tokio::spawn({
                let drained = drained.clone();
                let mut sink = sink;
                async move {
                    drained.cancelled().await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
                }
            }));
            continue;
        }
        let k = sender_index;
        sender_index += 1;
        let w = Writer {
            sink,
            thread,
            temp_prefix: format!("{i}-"),
            window,
            counters: counters.clone(),
            stop: stop.clone(),
            drained: drained.clone(),
            text_bytes: a.text_bytes,
            batch: a.window,
            stamps,
        };
        writers.push(tokio::spawn(match period {
            None => w.full_speed().boxed(),
            Some(p) => {
                let offset = p.mul_f64(k as f64 / senders as f64);
                w.fixed_rate(start + offset, p).boxed()
            }
        }));
    }
    let prog_cancel = CancellationToken::new();
    let p = progress(
        format!("{} {}", ctx.label, a.scenario.name()),
        prog_cancel.clone(),
        {
            let c = counters.clone();
            let mut last = (0u64, 0u64, 0.0f64);
            move |t| {
                let (s, d) = (
                    c.sent.load(Ordering::Relaxed),
                    c.delivered.load(Ordering::Relaxed),
                );
                let dt = (t - last.2).max(1e-3);
                let line = format!(
                    "sent/s {:.0}, delivered/s {:.0}, in flight {}, errors {}{}",
                    (s - last.0) as f64 / dt,
                    (d - last.1) as f64 / dt,
                    s.saturating_sub(c.acked.load(Ordering::Relaxed)),
                    c.errors.load(Ordering::Relaxed),
                    if c.measuring.load(Ordering::Relaxed) {
                        " (measuring)"
                    } else {
                        ""
                    }
                );
                last = (s, d, t);
                line
            }
        },
    );
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    let cpu0 = (ctx.cpu_secs(), sys::cpu_secs(None));
    counters.measuring.store(true, Ordering::Relaxed);
    let m_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    counters.measuring.store(false, Ordering::Relaxed);
    let window_secs = m_start.elapsed().as_secs_f64();
    let delivered = counters.delivered_measured.load(Ordering::Relaxed);
    let cpu1 = (ctx.cpu_secs(), sys::cpu_secs(None));
    let cpu_pct =
        |a: Option<f64>, b: Option<f64>| Some(((b? - a?) / window_secs * 1000.0).round() / 10.0);
    let cpu_us_per_msg = |a: Option<f64>, b: Option<f64>| {
        (delivered > 0).then(|| Some(((b? - a?) * 1e7 / delivered as f64).round() / 10.0))?
    };
    prog_cancel.cancel();
    let _ = p.await;
    // Stop sending, let replies drain, close, and collect the histograms.
    stop.cancel();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    let mut next_report = Instant::now() + Duration::from_secs(5);
    loop {
        let answered =
            counters.acked.load(Ordering::Relaxed) + counters.errors.load(Ordering::Relaxed);
        let sent = counters.sent.load(Ordering::Relaxed);
        if answered >= sent || Instant::now() >= drain_deadline {
            break;
        }
        if Instant::now() >= next_report {
            // A long drain (a soak on a loaded store) says what it waits for.
            eprintln!(
                "{}: sending stopped, {} sends still awaiting message_sent",
                ctx.label,
                sent - answered
            );
            next_report += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unacked = counters.sent.load(Ordering::Relaxed).saturating_sub(
        counters.acked.load(Ordering::Relaxed) + counters.errors.load(Ordering::Relaxed),
    );
    drained.cancel();
    for w in writers {
        let _ = w.await;
    }
    let hard_timer = {
        let hard = hard.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            hard.cancel();
        })
    };
    let mut hist = Latency::new();
    let mut sent_hist = Latency::new();
    for r in readers {
        if let Ok((h, s)) = r.await {
            hist.merge(&h);
            sent_hist.merge(&s);
        }
    }
    hard_timer.abort();
    let pct = hist.percentiles();
    let (last_pct, last_samples, last_incomplete) = match &last {
        Some(l) => {
            let (h, incomplete) = l.finish();
            (Some(h.percentiles()), Some(h.count()), Some(incomplete))
        }
        None => (None, None, None),
    };
    let first_error = counters
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Ok(obj(json!({
        "connections": connections,
        "senders": senders,
        "threads": n_threads,
        "group_size": size,
        "rate": a.fixed_rate(),
        "window": a.window,
        "measured_secs": (window_secs * 1000.0).round() / 1000.0,
        "delivered": delivered,
        "delivered_per_sec": (delivered as f64 / window_secs).round(),
        "latency_us": pct,
        "latency_samples": hist.count(),
        "online": big.then_some(online),
        "last_member_latency_us": last_pct,
        "last_member_samples": last_samples,
        "last_member_incomplete": last_incomplete,
        "sent_latency_us": sent_hist.percentiles(),
        "sent_latency_samples": sent_hist.count(),
        "target_cpu_pct": cpu_pct(cpu0.0, cpu1.0),
        "target_cpu_us_per_delivered": cpu_us_per_msg(cpu0.0, cpu1.0),
        "generator_cpu_pct": cpu_pct(cpu0.1, cpu1.1),
        "generator_cpu_us_per_delivered": cpu_us_per_msg(cpu0.1, cpu1.1),
        "sent_total": counters.sent.load(Ordering::Relaxed),
        "unacked_at_end": unacked,
        "errors": counters.errors.load(Ordering::Relaxed),
        "first_error": first_error,
    })))
}

/// The send instants of one connection's sends not yet answered, oldest first, by
/// their number `n` (the temp_id is `<prefix><n>`), so the reader can time
/// send -> `message_sent`. A connection's sends all go to one thread, so their replies
/// come in send order.
#[derive(Clone, Default)]
struct Stamps(Arc<Mutex<std::collections::VecDeque<(u64, u64)>>>);

impl Stamps {
    fn push(&self, n: u64, stamp: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((n, stamp));
    }

    /// The stamp of send `n`, dropping older unanswered ones (answered by an error).
    fn take(&self, n: u64) -> Option<u64> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(m, stamp)) = q.front() {
            if m > n {
                return None;
            }
            q.pop_front();
            if m == n {
                return Some(stamp);
            }
        }
        None
    }
}

/// Creates one group of `members` (besides the creator on `ws`): `create_thread` with
/// the first 1 000 members (no frame near the server's frame limit), then `add_members`
/// in chunks of 100 (the server's default `limits.max_add_members`). Returns the thread
/// id.
async fn create_big_group(ws: &mut Ws, members: &[String]) -> Result<String, BoxError> {
    const FIRST: usize = 1000;
    const CHUNK: usize = 100;
    let first = &members[..members.len().min(FIRST)];
    let frame = json!({"type": "create_thread", "req_id": 1, "kind": "group",
                       "members": first, "title": "biggroup"});
    let thread = create_thread(ws, frame.to_string()).await?;
    for (k, chunk) in members[first.len()..].chunks(CHUNK).enumerate() {
        let req = (k + 2).to_string();
        let frame = json!({"type": "add_members", "req_id": k + 2, "thread_id": &thread,
                           "members": chunk});
        ws.send(Message::text(frame.to_string())).await?;
        let wait = async {
            while let Some(m) = ws.next().await {
                if let Message::Text(t) = m? {
                    let f = Lite::decode(t.as_str())?;
                    match (&*f.ty, f.req_id.map(|r| r.get())) {
                        ("thread", Some(r)) if r == req => return Ok(()),
                        ("error", _) => return Err(format!("add_members: {}", t.as_str()).into()),
                        _ => {}
                    }
                }
            }
            Err::<(), BoxError>("connection ended before the add_members reply".into())
        };
        tokio::time::timeout(REPLY_TIMEOUT, wait)
            .await
            .map_err(|_| -> BoxError { "add_members timed out".into() })??;
    }
    Ok(thread)
}

/// biggroup: the latency from a send to its last online member. Copies are matched by
/// the send stamp at the head of the text (unique per message); a message counts once
/// all `expected` copies arrived, with the slowest copy's latency.
struct LastMember {
    expected: u32,
    shards: Vec<Mutex<std::collections::HashMap<u64, (u32, u64)>>>,
    hist: Mutex<Latency>,
}

impl LastMember {
    fn new(expected: u32) -> Self {
        LastMember {
            expected: expected.max(1),
            shards: (0..64).map(|_| Mutex::default()).collect(),
            hist: Mutex::new(Latency::new()),
        }
    }

    /// One copy of the message stamped `sent`, `latency_ns` after its send.
    fn copy(&self, sent: u64, latency_ns: u64) {
        let shard = &self.shards[(sent.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize];
        let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(sent).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(latency_ns);
        if e.0 >= self.expected {
            let worst = e.1;
            m.remove(&sent);
            drop(m);
            self.hist
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(worst);
        }
    }

    /// The histogram, and how many measured messages did not reach every member.
    fn finish(&self) -> (Latency, usize) {
        let incomplete = self
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum();
        let h = std::mem::take(&mut *self.hist.lock().unwrap_or_else(|p| p.into_inner()));
        (h, incomplete)
    }
}

/// The number at the end of a temp_id made by [`Writer::frame`].
fn temp_number(temp_id: &str) -> Option<u64> {
    temp_id.rsplit('-').next()?.parse().ok()
}

/// Reads one connection: counts and times deliveries (send -> receive) and replies
/// (send -> `message_sent`), and frees window slots.
async fn reader(
    mut stream: SplitStream<Ws>,
    window: Arc<Semaphore>,
    stamps: Stamps,
    c: Arc<Counters>,
    last: Option<Arc<LastMember>>,
    closing: CancellationToken,
    hard: CancellationToken,
) -> (Latency, Latency) {
    let mut hist = Latency::new();
    let mut sent_hist = Latency::new();
    loop {
        let m = tokio::select! {
            _ = hard.cancelled() => break,
            m = stream.next() => m,
        };
        let t = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                // Once the writers close, a target that drops the connection without
                // finishing the close handshake (the floor relay does when frames for
                // the session are still queued) has lost nothing we measure.
                if !closing.is_cancelled() && !hard.is_cancelled() && !window.is_closed() {
                    c.error(format!("read: {e}"));
                }
                break;
            }
        };
        let now = proto::now_nanos();
        let f = match Lite::decode(t.as_str()) {
            Ok(f) => f,
            Err(e) => {
                c.error(format!("undecodable frame: {e}"));
                continue;
            }
        };
        match &*f.ty {
            "receive_message" => {
                c.delivered.fetch_add(1, Ordering::Relaxed);
                if c.measuring.load(Ordering::Relaxed) {
                    c.delivered_measured.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent) = f.text.as_deref().and_then(proto::parse_stamp) {
                        hist.record(now.saturating_sub(sent));
                        if let Some(l) = &last {
                            l.copy(sent, now.saturating_sub(sent));
                        }
                    }
                }
            }
            "message_sent" => {
                c.acked.fetch_add(1, Ordering::Relaxed);
                window.add_permits(1);
                let stamp = f
                    .temp_id
                    .as_deref()
                    .and_then(temp_number)
                    .and_then(|n| stamps.take(n));
                if let Some(sent) = stamp {
                    if c.measuring.load(Ordering::Relaxed) {
                        sent_hist.record(now.saturating_sub(sent));
                    }
                }
            }
            "error" => {
                c.error(format!("server error: {}", t.as_str()));
                window.add_permits(1);
            }
            _ => {}
        }
    }
    window.close();
    (hist, sent_hist)
}

struct Writer {
    sink: SplitSink<Ws, Message>,
    thread: Arc<str>,
    temp_prefix: String,
    window: Arc<Semaphore>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    drained: CancellationToken,
    text_bytes: usize,
    batch: usize,
    stamps: Stamps,
}

impl Writer {
    fn frame(&self, n: u64, stamp: u64) -> Message {
        self.stamps.push(n, stamp);
        let temp = format!("{}{n}", self.temp_prefix);
        let text = proto::stamped_text(stamp, self.text_bytes);
        Message::text(proto::send_message(&self.thread, &temp, &text))
    }

    /// Waits for a window slot; false when stopping or the connection is gone.
    async fn slot(&self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            p = self.window.acquire() => match p {
                Ok(p) => { p.forget(); true }
                Err(_) => false,
            },
        }
    }

    async fn full_speed(mut self) {
        let mut n = 0u64;
        'outer: while self.slot().await {
            let mut batch = 0;
            loop {
                let m = self.frame(n, proto::now_nanos());
                n += 1;
                batch += 1;
                if let Err(e) = self.sink.feed(m).await {
                    self.counters.error(format!("write: {e}"));
                    break 'outer;
                }
                if batch >= self.batch {
                    break;
                }
                match self.window.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
            }
            self.counters
                .sent
                .fetch_add(batch as u64, Ordering::Relaxed);
            if let Err(e) = self.sink.flush().await {
                self.counters.error(format!("write: {e}"));
                break;
            }
        }
        self.finish().await;
    }

    /// Sends at `period` from `start`.
    async fn fixed_rate(mut self, start: tokio::time::Instant, period: Duration) {
        let mut tick = tokio::time::interval_at(start, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut n = 0u64;
        loop {
            let due = tokio::select! {
                _ = self.stop.cancelled() => break,
                t = tick.tick() => t,
            };
            // A free window slot: stamp the real send instant (the timer fires up to
            // 1 ms late, which is the generator's, not the server's). A full window
            // means the server is behind: stamp the scheduled instant, so the stall
            // counts towards latency (no coordinated omission).
            let stamp = match self.window.try_acquire() {
                Ok(p) => {
                    p.forget();
                    proto::now_nanos()
                }
                Err(_) => {
                    if !self.slot().await {
                        break;
                    }
                    proto::instant_nanos(due.into_std())
                }
            };
            let m = self.frame(n, stamp);
            n += 1;
            if let Err(e) = self.sink.send(m).await {
                self.counters.error(format!("write: {e}"));
                break;
            }
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        self.finish().await;
    }

    async fn finish(mut self) {
        self.drained.cancelled().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }
}

/// Tiny deterministic PRNG for jitter (xorshift64*).
fn jitter(i: usize, max_ms: u64) -> Duration {
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    Duration::from_micros(r % (max_ms * 1000))
}

/// Waits for the direct reply with `req_id` 1; other frames are skipped.
async fn reply(ws: &mut Ws) -> Result<messenger_core::protocol::ServerFrame, BoxError> {
    use messenger_core::protocol::{ReqId, ServerFrame};
    let wait = async {
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m? {
                let f = ServerFrame::decode(t.as_str())?;
                let rid = match &f {
                    ServerFrame::Threads { req_id, .. }
                    | ServerFrame::History { req_id, .. }
                    | ServerFrame::Error { req_id, .. } => req_id.clone(),
                    _ => None,
                };
                if rid == Some(ReqId::UInt(1)) {
                    return Ok(f);
                }
            }
        }
        Err("connection ended before the reply".into())
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .map_err(|_| -> BoxError { "reply timed out".into() })?
}

/// One client's reconnect and catch-up: returns (time to welcome, time to caught up),
/// both from `t0`, and the time from its own connect attempt (after its jitter) to
/// caught up.
#[allow(clippy::too_many_arguments)] // private helper; a struct would only rename them
async fn reconnect_one(
    ctx: &Ctx,
    i: usize,
    total: usize,
    user: &str,
    thread: &str,
    expect: usize,
    t0: Instant,
    deadline: Instant,
    c: &Counters,
) -> Result<(Duration, Duration, Duration), BoxError> {
    use messenger_core::protocol::ServerFrame;
    tokio::time::sleep(jitter(i, ctx.args.jitter_ms)).await;
    let own_start = Instant::now();
    let mut ws = loop {
        match client::connect(
            ctx.target(i),
            user,
            ctx.source(i, total),
            client::ws_config(false),
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok(ws) => break ws,
            Err(e) => {
                c.error(format!("reconnect: {e}"));
                if Instant::now() >= deadline {
                    return Err(format!("gave up reconnecting: {e}").into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let back = t0.elapsed();
    ws.send(Message::text(r#"{"type":"list_threads","req_id":1}"#))
        .await?;
    let last_seq = match reply(&mut ws).await? {
        ServerFrame::Threads { threads, .. } => threads
            .iter()
            .find(|t| t.thread_id.as_str() == thread)
            .map(|t| t.last_seq)
            .unwrap_or(0),
        other => return Err(format!("list_threads: {}", other.encode()).into()),
    };
    let mut held = 0u64;
    let mut got = 0usize;
    while held < last_seq {
        let q = json!({"type": "fetch_history", "req_id": 1, "thread_id": thread,
                       "after_seq": held, "limit": 200});
        ws.send(Message::text(q.to_string())).await?;
        match reply(&mut ws).await? {
            ServerFrame::History {
                messages, has_more, ..
            } => {
                for m in &messages {
                    if m.seq != held + 1 {
                        return Err(format!("seq gap: held {held}, got {}", m.seq).into());
                    }
                    held = m.seq;
                    got += 1;
                }
                if !has_more || messages.is_empty() {
                    break;
                }
            }
            other => return Err(format!("fetch_history: {}", other.encode()).into()),
        }
    }
    let done = t0.elapsed();
    if !ctx.is_floor && got < expect {
        return Err(format!("caught up {got} messages, expected {expect}").into());
    }
    let own = own_start.elapsed();
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok((back, done, own))
}

/// `reconnect`: K clients (each with a peer in a direct thread) are dropped at once;
/// each peer sends `--messages` while they are away; then they reconnect with jitter
/// and catch up through `list_threads` and `fetch_history`.
async fn reconnect(ctx: &Ctx) -> Result<Figures, BoxError> {
    let a = &ctx.args;
    let k = a.connections_or_default();
    let users: Vec<String> = (0..k)
        .flat_map(|i| {
            [
                format!("{}r{i}a", ctx.run_id),
                format!("{}r{i}b", ctx.run_id),
            ]
        })
        .collect();
    let mut conns = Vec::with_capacity(users.len());
    for (i, r) in open_all(ctx, &users, false).await.into_iter().enumerate() {
        conns.push(r.map_err(|e| format!("connect {}: {e}", users[i]))?);
    }
    let mut threads = Vec::with_capacity(k);
    {
        let creates = conns.chunks_mut(2).enumerate().map(|(i, chunk)| {
            let frame = json!({"type": "create_thread", "req_id": 1, "kind": "direct",
                               "members": [users[2 * i].as_str()]});
            create_thread(&mut chunk[1], frame.to_string())
        });
        for r in futures::future::join_all(creates).await {
            threads.push(r?);
        }
    }
    // Drop every `a` at once (no close frame: like a network drop).
    let mut stayers = Vec::with_capacity(k);
    for (i, ws) in conns.into_iter().enumerate() {
        if i % 2 == 1 {
            stayers.push(ws);
        }
    }
    let t_drop = Instant::now();
    eprintln!("[{} reconnect] dropped {k} clients", ctx.label);
    let counters = Arc::new(Counters::default());
    // Each peer sends while its partner is away and waits for every message_sent.
    let sends = stayers
        .iter_mut()
        .zip(&threads)
        .enumerate()
        .map(|(i, (ws, thread))| {
            let c = counters.clone();
            let m = a.messages;
            let text_bytes = a.text_bytes;
            async move {
                for j in 0..m {
                    let text = proto::stamped_text(proto::now_nanos(), text_bytes);
                    let f = proto::send_message(thread, &format!("r{i}-{j}"), &text);
                    if let Err(e) = ws.send(Message::text(f)).await {
                        c.error(format!("peer send: {e}"));
                        return;
                    }
                }
                let mut acked = 0;
                let wait = async {
                    while let Some(Ok(msg)) = ws.next().await {
                        if let Message::Text(t) = msg {
                            match Lite::decode(t.as_str()).map(|f| f.ty.into_owned()) {
                                Ok(ty) if ty == "message_sent" => acked += 1,
                                Ok(ty) if ty == "error" => c.error(format!("peer: {}", t.as_str())),
                                _ => {}
                            }
                            if acked == m {
                                break;
                            }
                        }
                    }
                };
                if tokio::time::timeout(REPLY_TIMEOUT, wait).await.is_err() {
                    c.error("peer: message_sent timed out".into());
                }
            }
        });
    futures::future::join_all(sends).await;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.duration);
    eprintln!(
        "[{} reconnect] peers sent {} messages each in {:.2}s; reconnecting {k} with jitter 0..{} ms",
        ctx.label,
        a.messages,
        t_drop.elapsed().as_secs_f64(),
        a.jitter_ms
    );
    let done = Arc::new(AtomicU64::new(0));
    let prog_cancel = CancellationToken::new();
    let p = progress(format!("{} reconnect", ctx.label), prog_cancel.clone(), {
        let (d, c) = (done.clone(), counters.clone());
        move |_| {
            format!(
                "caught up {} / {k}, errors {}",
                d.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed)
            )
        }
    });
    let ctx2 = Arc::new(ctx.clone());
    let mut handles = Vec::with_capacity(k);
    for i in 0..k {
        let (ctx2, c, d) = (ctx2.clone(), counters.clone(), done.clone());
        let user = users[2 * i].clone();
        let thread = threads[i].clone();
        let m = a.messages;
        handles.push(tokio::spawn(async move {
            let r = tokio::time::timeout_at(
                deadline.into(),
                reconnect_one(&ctx2, 2 * i, 2 * k, &user, &thread, m, t0, deadline, &c),
            )
            .await
            .unwrap_or_else(|_| Err("deadline passed".into()));
            match &r {
                Ok(_) => {
                    d.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => c.error(format!("{user}: {e}")),
            }
            r.ok()
        }));
    }
    let mut back_max = Duration::ZERO;
    let mut done_max = Duration::ZERO;
    let mut per_client = Latency::new();
    let mut own_time = Latency::new();
    let mut ok = 0u64;
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    for h in handles {
        if let Ok(Some((back, done, own))) = h.await {
            ok += 1;
            back_max = back_max.max(back);
            done_max = done_max.max(done);
            per_client.record(nanos(done));
            own_time.record(nanos(own));
        }
    }
    prog_cancel.cancel();
    let _ = p.await;
    drop(stayers);
    let first_error = counters
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    Ok(obj(json!({
        "clients": k,
        "caught_up": ok,
        "messages_each": a.messages,
        "jitter_ms": a.jitter_ms,
        "all_back_ms": if ok as usize == k { Some(ms(back_max)) } else { None },
        "all_caught_up_ms": if ok as usize == k { Some(ms(done_max)) } else { None },
        "drop_to_all_caught_up_ms": if ok as usize == k { Some(ms(t0 - t_drop + done_max)) } else { None },
        "caught_up_at_us": per_client.percentiles(),
        "connect_to_caught_up_us": own_time.percentiles(),
        "errors": counters.errors.load(Ordering::Relaxed),
        "first_error": first_error,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn several_urls_put_the_two_sides_of_a_pair_on_different_nodes() {
        let args = Args::try_parse_from([
            "messenger-bench",
            "pairs",
            "--url",
            "ws://127.0.0.1:9001/ws,ws://127.0.0.1:9002/ws",
            "--server-pid",
            "1,2",
        ])
        .expect("args");
        let ctx = Ctx {
            targets: args
                .url
                .split(',')
                .map(Target::parse)
                .collect::<Result<_, _>>()
                .expect("urls"),
            pids: args.server_pid.clone(),
            args,
            label: "server",
            is_floor: false,
            run_id: "t".into(),
        };
        assert_eq!(ctx.pids, vec![1, 2]);
        // Users 2t (side a) and 2t+1 (side b) of pair t.
        for t in 0..4 {
            assert_eq!(ctx.target(2 * t).addr.port(), 9001);
            assert_eq!(ctx.target(2 * t + 1).addr.port(), 9002);
        }
        assert!(
            ctx.source(0, 10).is_some(),
            "loopback nodes get source blocks"
        );
    }

    #[test]
    fn jitter_is_bounded_and_spread() {
        let v: Vec<Duration> = (0..1000).map(|i| jitter(i, 1000)).collect();
        assert!(v.iter().all(|d| *d < Duration::from_secs(1)));
        let below_half = v
            .iter()
            .filter(|d| **d < Duration::from_millis(500))
            .count();
        assert!((300..700).contains(&below_half), "{below_half}");
        assert_eq!(jitter(3, 0), Duration::ZERO);
    }
}
