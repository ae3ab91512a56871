//! `messenger-chaos`: the long runs of the reliability work (docs/reliability.md).
//!
//! ```sh
//! cargo build --release -p messenger-server --features cli
//! cargo build --release -p messenger-chaos -p messenger-bench
//! ulimit -n 20000
//! target/release/messenger-chaos storm --clients 19000      # reconnect storm
//! target/release/messenger-chaos soak --minutes 30 --rate 1750   # half the max measured here
//! ```
//!
//! Both start their own cluster (nodes of `--server-bin` on Redis and HBase; HBase from
//! `--hbase HOST:PORT` or started by `scripts/hbase.sh`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use messenger_chaos::storm::{storm, StormConfig};
use messenger_chaos::{Cluster, ClusterConfig};

#[derive(Debug, Parser)]
#[command(
    name = "messenger-chaos",
    about = "Reconnect storm and soak on a real cluster"
)]
struct Args {
    /// The messenger-server binary (built with --features cli).
    #[arg(long, default_value = "target/release/messenger-server")]
    server_bin: PathBuf,
    /// A running HBase Thrift2 gateway; default: start one with scripts/hbase.sh.
    #[arg(long)]
    hbase: Option<String>,
    /// Where logs and stores go.
    #[arg(long, default_value = "target/chaos-run")]
    dir: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// K clients of node 1 dropped by its SIGKILL reconnect to nodes 2 and 3 with the
    /// SDK's jittered backoff and catch up.
    Storm {
        /// Clients on the killed node.
        #[arg(long, default_value_t = 19_000)]
        clients: usize,
        /// Members per group.
        #[arg(long, default_value_t = 100)]
        group_size: usize,
        /// Messages posted into each group after the kill.
        #[arg(long, default_value_t = 3)]
        messages: usize,
        /// Every client must be caught up within this many seconds of the kill.
        #[arg(long, default_value_t = 30)]
        bound_secs: u64,
        /// Connections opened at once during setup.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
    },
    /// Nodes behind HAProxy under `messenger-bench pairs` at a fixed rate; every node's
    /// RSS and descriptors sampled throughout.
    Soak {
        /// Minutes of load.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Messages per second (half the node's measured maximum, docs/reliability.md).
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Pairs of clients.
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Nodes behind the balancer.
        #[arg(long, default_value_t = 2)]
        nodes: u16,
        /// The messenger-bench binary.
        #[arg(long, default_value = "target/release/messenger-bench")]
        bench_bin: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // 19 000 sockets need the descriptor limit raised to the hard limit.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    if !args.server_bin.exists() {
        eprintln!(
            "{} not found: build it with `cargo build --release -p messenger-server --features cli` \
             or pass --server-bin",
            args.server_bin.display()
        );
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let (hbase, run_dir) = match &args.hbase {
            Some(a) => (
                a.clone(),
                std::env::var("HBASE_RUN_DIR").ok().map(PathBuf::from),
            ),
            None => {
                let h = tokio::task::spawn_blocking(messenger_test_support::hbase::hbase)
                    .await
                    .expect("hbase");
                (h.addr.clone(), h.run_dir.clone())
            }
        };
        let dir = args.dir.join(format!("{}", std::process::id()));
        match args.what {
            What::Storm {
                clients,
                group_size,
                messages,
                bound_secs,
                concurrency,
            } => {
                let mut cluster = Cluster::start(ClusterConfig {
                    server_bin: args.server_bin.clone(),
                    nodes: 3,
                    dir,
                    node_ttl: Duration::from_secs(5),
                    hbase,
                    hbase_run_dir: run_dir,
                    extra_args: vec![
                        "--max-connections".into(),
                        "25000".into(),
                        // Talkers and clients are silent while the others connect.
                        "--ping-interval".into(),
                        "120s".into(),
                        "--hbase-pool-size".into(),
                        "32".into(),
                    ],
                    fault_proxies: false,
                    kafka: false,
                })
                .await;
                let cfg = StormConfig {
                    clients,
                    group_size,
                    messages,
                    concurrency,
                    bound: Duration::from_secs(bound_secs),
                    backoff: messenger_client::BackoffConfig::default(),
                };
                let r = storm(&mut cluster, &cfg).await;
                println!("{r}");
                let max = r.caught_up.last().copied().unwrap_or_default();
                if r.failed > 0 || max > cfg.bound {
                    println!(
                        "storm: NOT within the bound: {} failed, slowest {max:.2?} (bound {:?})",
                        r.failed, cfg.bound
                    );
                    return ExitCode::from(1);
                }
                println!(
                    "storm: every client caught up within {max:.2?} (bound {:?})",
                    cfg.bound
                );
                ExitCode::SUCCESS
            }
            What::Soak {
                minutes,
                rate,
                pairs,
                nodes,
                bench_bin,
            } => {
                soak(
                    args.server_bin,
                    hbase,
                    run_dir,
                    dir,
                    minutes,
                    rate,
                    pairs,
                    nodes,
                    bench_bin,
                )
                .await
            }
        }
    })
}

/// (seconds since the start, per node (RSS KiB, open descriptors), Redis RSS KiB).
type SoakSample = (u64, Vec<(u64, usize)>, u64);

/// Open descriptors of `pid` (0 if it is gone).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// How long the soak's bench waits, after sending stops, for the answers to the sends
/// still in flight (a loaded HBase answers late; a lost send never does).
const SOAK_DRAIN: Duration = Duration::from_secs(300);

/// `nodes` nodes (HBase store, Redis sessions and relay) behind HAProxy,
/// `messenger-bench pairs` through the balancer at `rate` for `minutes` (pairs land on
/// different nodes, so deliveries cross nodes through Redis); every node's RSS and open
/// descriptors (and Redis's RSS) sampled every 10 s. Fails when a node died, the bench
/// failed, or a send stayed unanswered or was refused.
#[allow(clippy::too_many_arguments)]
async fn soak(
    server_bin: PathBuf,
    hbase: String,
    run_dir: Option<PathBuf>,
    dir: PathBuf,
    minutes: f64,
    rate: f64,
    pairs: usize,
    nodes: u16,
    bench_bin: PathBuf,
) -> ExitCode {
    if !bench_bin.exists() {
        eprintln!(
            "{} not found: cargo build --release -p messenger-bench",
            bench_bin.display()
        );
        return ExitCode::from(2);
    }
    let cluster = Cluster::start(ClusterConfig {
        server_bin,
        nodes,
        dir: dir.clone(),
        node_ttl: Duration::from_secs(15),
        hbase,
        hbase_run_dir: run_dir,
        // Nodes talk to Redis and HBase directly: no faults are injected here.
        extra_args: vec!["--ping-interval".into(), "30s".into()],
        fault_proxies: false,
        kafka: false,
    })
    .await;
    let pids: Vec<u32> = cluster
        .nodes
        .iter()
        .map(|n| n.pid().expect("node runs"))
        .collect();
    let redis_pid = cluster.redis_pid();
    let secs = (minutes * 60.0).round() as u64;
    let json_path = dir.join("soak.json");
    let mut bench = match Command::new(&bench_bin)
        .args([
            "pairs",
            "--url",
            &cluster.url(),
            "--server-pid",
            &pids[0].to_string(),
            "--pairs",
            &pairs.to_string(),
            "--rate",
            &rate.to_string(),
            "--duration",
            &secs.to_string(),
            "--floor",
            "off",
            // After the measured minutes, wait up to 5 minutes for every send still in
            // flight: a send unanswered after that is a loss, not a backlog.
            "--drain",
            &SOAK_DRAIN.as_secs().to_string(),
            "--json",
            &json_path.display().to_string(),
        ])
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawning messenger-bench: {e}");
            return ExitCode::from(1);
        }
    };
    let t0 = Instant::now();
    let mut samples: Vec<SoakSample> = Vec::new();
    let mut died = Vec::new();
    loop {
        if let Ok(Some(_)) = bench.try_wait() {
            break;
        }
        let at = t0.elapsed().as_secs();
        let per: Vec<(u64, usize)> = pids
            .iter()
            .map(|p| (messenger_test_support::process::rss_kib(*p), fds(*p)))
            .collect();
        let redis = redis_pid
            .map(messenger_test_support::process::rss_kib)
            .unwrap_or(0);
        let line: Vec<String> = per
            .iter()
            .enumerate()
            .map(|(i, (kib, n))| format!("node {} {:.1} MiB {n} fds", i + 1, *kib as f64 / 1024.0))
            .collect();
        println!(
            "soak: {at:>5} s  {}  redis {:.1} MiB",
            line.join(", "),
            redis as f64 / 1024.0
        );
        for (i, (kib, _)) in per.iter().enumerate() {
            if *kib == 0 && !died.contains(&i) {
                died.push(i);
            }
        }
        samples.push((at, per, redis));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let bench_ok = bench.wait().map(|s| s.success()).unwrap_or(false);
    // Start = after the bench's warm-up (first sample past 20 s), middle, end.
    let start = samples.iter().find(|(t, _, _)| *t >= 20).cloned();
    let mid = samples.get(samples.len() / 2).cloned();
    let end = samples.last().cloned();
    for (what, s) in [("start", start), ("middle", mid), ("end", end)] {
        if let Some((t, per, redis)) = s {
            let line: Vec<String> = per
                .iter()
                .enumerate()
                .map(|(i, (kib, n))| {
                    format!("node {} {:.1} MiB / {n} fds", i + 1, *kib as f64 / 1024.0)
                })
                .collect();
            println!(
                "soak {what} ({t} s): {}; redis {:.1} MiB",
                line.join(", "),
                redis as f64 / 1024.0
            );
        }
    }
    let result: serde_json::Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    // messenger-bench writes one object per scenario run; take the pairs figures.
    let r = if result["delivered"].is_null() {
        result
            .as_array()
            .and_then(|a| a.last().cloned())
            .unwrap_or(result.clone())
    } else {
        result.clone()
    };
    println!(
        "soak traffic: {} sent, {} delivered in the measured window ({} /s), message_sent p99 {} us, \
         {} errors (first: {}), {} unanswered {} s after sending stopped",
        r["sent_total"], r["delivered"], r["delivered_per_sec"], r["sent_latency_us"]["p99"],
        r["errors"], r["first_error"], r["unacked_at_end"], SOAK_DRAIN.as_secs()
    );
    let mut ok = bench_ok;
    if !died.is_empty() {
        println!("soak: FAILED: node(s) {died:?} (index) died");
        ok = false;
    }
    if r["errors"].as_u64().unwrap_or(1) > 0 || r["unacked_at_end"].as_u64().unwrap_or(1) > 0 {
        println!("soak: FAILED: refused or unanswered sends (see above)");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
