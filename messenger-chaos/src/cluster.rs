//! The system under test as real processes: `messenger-server` nodes in cluster mode
//! behind HAProxy, on one Redis and one HBase, each node reaching Redis and HBase
//! through a [`FaultProxy`] of its own so that a network fault can hit one node; with
//! [`ClusterConfig::kafka`], also a private Kafka broker that carries the cross-node
//! relay and the event log (`--kafka`), which can be killed and restarted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use messenger_test_support::haproxy;
use messenger_test_support::kafka::Broker;
use messenger_test_support::process::{free_port, Proc};
use messenger_test_support::redis::RedisServer;

use crate::proxy::FaultProxy;

/// How the cluster is started.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `messenger-server` binary (built with `--features cli`).
    pub server_bin: PathBuf,
    /// Number of nodes.
    pub nodes: u16,
    /// Where logs and stores go.
    pub dir: PathBuf,
    /// `--redis-node-ttl` of every node: a dead node's users go offline within about
    /// 4/3 of it plus 2 s.
    pub node_ttl: Duration,
    /// The HBase Thrift2 gateway `host:port`.
    pub hbase: String,
    /// `scripts/hbase.sh`'s run dir of that gateway (to restart it), if known.
    pub hbase_run_dir: Option<PathBuf>,
    /// Further flags for every node (such as `--max-connections 25000`); a flag given
    /// here replaces the harness's default for it (such as `--ping-interval`).
    pub extra_args: Vec<String>,
    /// Route each node's Redis and HBase traffic through a [`FaultProxy`] of its own (in
    /// this process) so that network faults can be injected; `false` connects the nodes
    /// to Redis and HBase directly (the storm and the soak inject no network faults, and
    /// the proxies' copying would count as the load generator's CPU).
    pub fault_proxies: bool,
    /// Start a Kafka broker of the cluster's own (`scripts/kafka.sh` through
    /// `messenger_test_support::kafka`, free ports) and the nodes with `--kafka` on it:
    /// Kafka carries the cross-node relay and the event log, Redis stays the session
    /// directory and presence. The nodes reach the broker directly: a proxy cannot sit
    /// in between, since the broker's metadata sends clients to its advertised address.
    pub kafka: bool,
}

/// One `messenger-server` process (absent while killed).
pub struct Node {
    /// Node id (1-based).
    pub id: u16,
    /// Its listen address.
    pub addr: SocketAddr,
    /// Its path to Redis.
    pub redis_proxy: FaultProxy,
    /// Its path to HBase.
    pub hbase_proxy: FaultProxy,
    proc: Option<Proc>,
    stopped: bool,
    starts: u32,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("pid", &self.pid())
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl Node {
    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Its logs (all starts).
    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

/// The running cluster; everything is stopped when dropped.
pub struct Cluster {
    cfg: ClusterConfig,
    /// Redis (restartable).
    pub redis: RedisServer,
    /// The nodes, index `id - 1`.
    pub nodes: Vec<Node>,
    haproxy: Option<Proc>,
    /// HAProxy's port.
    pub lb_port: u16,
    key_prefix: String,
    table_prefix: String,
    redis_addr: SocketAddr,
    hbase_addr: SocketAddr,
    kafka: Option<Broker>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes)
            .field("lb_port", &self.lb_port)
            .finish_non_exhaustive()
    }
}

/// libfaketime, which lets the chaos run step one node's wall clock (`LIBFAKETIME`, or
/// Debian's `faketime` package).
fn libfaketime() -> PathBuf {
    let p = std::env::var("LIBFAKETIME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".into());
    assert!(
        p.exists(),
        "{} not found: install libfaketime (apt-get install -y faketime) or point \
         LIBFAKETIME at it; scripts/test.sh does it. The chaos suite never skips.",
        p.display()
    );
    p
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn sig(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

impl Cluster {
    /// Starts Redis, the proxies, `cfg.nodes` nodes and HAProxy; returns once every
    /// node and the balancer answer `/healthz`.
    pub async fn start(cfg: ClusterConfig) -> Cluster {
        std::fs::create_dir_all(&cfg.dir).expect("cluster dir");
        let redis = RedisServer::start();
        let redis_addr: SocketAddr = redis
            .url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .parse()
            .expect("redis address");
        let hbase_addr: SocketAddr = cfg.hbase.parse().expect("hbase address");
        let run = format!("chaos{}_{}", std::process::id(), free_port());
        // The broker before the nodes: a node with `--kafka` exits when it cannot reach it.
        let kafka = cfg
            .kafka
            .then(|| tokio::task::block_in_place(|| Broker::start(&run)));
        let mut nodes = Vec::new();
        for id in 1..=cfg.nodes {
            nodes.push(Node {
                id,
                addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                redis_proxy: FaultProxy::start(redis_addr).await.expect("redis proxy"),
                hbase_proxy: FaultProxy::start(hbase_addr).await.expect("hbase proxy"),
                proc: None,
                stopped: false,
                starts: 0,
            });
        }
        let members: Vec<(u16, SocketAddr)> = nodes.iter().map(|n| (n.id, n.addr)).collect();
        let dir = cfg.dir.clone();
        let mut c = Cluster {
            cfg,
            redis,
            nodes,
            haproxy: None,
            lb_port: 0,
            key_prefix: run.clone(),
            table_prefix: format!("{run}_"),
            redis_addr,
            hbase_addr,
            kafka,
        };
        for i in 0..c.nodes.len() {
            c.start_node(i).await;
        }
        let (haproxy, lb_port) = haproxy::start(&dir, &members);
        c.haproxy = Some(haproxy);
        c.lb_port = lb_port;
        c
    }

    /// `ws://` URL of the balancer's `/ws`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.lb_port)
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// The node TTL.
    pub fn node_ttl(&self) -> Duration {
        self.cfg.node_ttl
    }

    /// The nodes' Redis key prefix (their presence channel is `{prefix}:presence`).
    pub fn redis_key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// `scripts/hbase.sh`'s run dir of the HBase in use, if known.
    pub fn hbase_run_dir(&self) -> Option<&Path> {
        self.cfg.hbase_run_dir.as_deref()
    }

    /// The pid of Redis (found by its port; `None` while it is down).
    pub fn redis_pid(&self) -> Option<u32> {
        let port = format!(":{}", self.redis.port);
        crate::cpu::pids_with(|c| c.contains("redis-server") && c.contains(&port))
            .into_iter()
            .next()
    }

    /// The Kafka broker's address when the cluster runs on Kafka.
    pub fn kafka_brokers(&self) -> Option<&str> {
        self.kafka.as_ref().map(|b| b.brokers.as_str())
    }

    fn broker(&self) -> &Broker {
        self.kafka
            .as_ref()
            .expect("a Kafka fault needs a cluster started with ClusterConfig::kafka")
    }

    /// SIGKILL of the Kafka broker (a crash: no controlled shutdown); its data and
    /// ports are kept for [`start_kafka`](Self::start_kafka).
    pub fn kill_kafka(&self) {
        let pid_file = self.broker().run_dir.join("kafka.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no broker pid in {}", pid_file.display()));
        sig("KILL", pid);
        // Wait until it is gone (or a zombie, its sockets closed), so that a restart
        // finds its ports free.
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        };
        let end = Instant::now() + Duration::from_secs(30);
        tokio::task::block_in_place(|| {
            while !gone() {
                assert!(
                    Instant::now() < end,
                    "Kafka broker {pid} still alive after SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // As `scripts/kafka.sh stop-broker` leaves it: `start-broker` launches again.
        let _ = std::fs::remove_file(&pid_file);
    }

    /// Stops the Kafka broker with a controlled shutdown (SIGTERM; `scripts/kafka.sh
    /// stop-broker`), keeping its data and ports.
    pub fn stop_kafka(&self) {
        let b = self.broker();
        tokio::task::block_in_place(|| b.stop_broker());
    }

    /// Starts the stopped or killed Kafka broker again on its ports and data; returns
    /// once a Metadata request lists it (`scripts/kafka.sh start-broker`).
    pub fn start_kafka(&self) {
        let b = self.broker();
        tokio::task::block_in_place(|| b.start_broker());
    }

    fn args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let (redis, hbase) = if self.cfg.fault_proxies {
            (n.redis_proxy.addr, n.hbase_proxy.addr)
        } else {
            (self.redis_addr, self.hbase_addr)
        };
        let kafka = self
            .kafka_brokers()
            .map(|b| vec!["--kafka".to_string(), b.to_string()])
            .unwrap_or_default();
        [
            "--listen".to_string(),
            n.addr.to_string(),
            "--node-id".into(),
            n.id.to_string(),
            "--redis".into(),
            format!("redis://{redis}/"),
            "--redis-key-prefix".into(),
            self.key_prefix.clone(),
            "--redis-node-ttl".into(),
            humantime(self.cfg.node_ttl),
            "--hbase".into(),
            hbase.to_string(),
            "--hbase-table-prefix".into(),
            self.table_prefix.clone(),
            "--hbase-pool-size".into(),
            "4".into(),
            "--presence-grace".into(),
            "300ms".into(),
            "--ping-interval".into(),
            "1s".into(),
            "--rate-limit".into(),
            "10000".into(),
            "--rate-burst".into(),
            "10000".into(),
            "--drain-timeout".into(),
            "2s".into(),
        ]
        .chunks(2)
        // A flag given in `extra_args` replaces the default one.
        .filter(|kv| !self.cfg.extra_args.contains(&kv[0]))
        .flatten()
        .cloned()
        .chain(kafka)
        .chain(self.cfg.extra_args.iter().cloned())
        .collect()
    }

    /// Starts node `i` (index) and waits until it answers `/healthz`. A start refused
    /// because the node's previous incarnation still holds its id in Redis is retried
    /// until that claim expires (one node TTL).
    pub async fn start_node(&mut self, i: usize) {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let n = &mut self.nodes[i];
            n.starts += 1;
            let log = self
                .cfg
                .dir
                .join(format!("node{}-start{}.log", n.id, n.starts));
            let mut cmd = Command::new(&self.cfg.server_bin);
            // The wall clock goes through libfaketime, offset by the node's clock file
            // (re-read every second); monotonic time (timers, timeouts) is left alone.
            let clock = self.clock_file(i);
            if !clock.exists() {
                std::fs::write(&clock, "+0s").expect("clock file");
            }
            cmd.args(self.args(i))
                .env("RUST_LOG", "info")
                .env_remove("MESSENGER_JWT_SECRET")
                .env("LD_PRELOAD", libfaketime())
                .env("FAKETIME_TIMESTAMP_FILE", &clock)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            let mut proc = Proc::spawn(&format!("node {}", self.nodes[i].id), cmd, log);
            let addr = self.nodes[i].addr;
            let healthy = loop {
                if let Ok(Some(_)) = proc.child.try_wait() {
                    break false;
                }
                if haproxy::healthz(addr) {
                    break true;
                }
                assert!(
                    Instant::now() < end,
                    "node {} not healthy within 90 s:\n{}",
                    self.nodes[i].id,
                    proc.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if healthy {
                self.nodes[i].proc = Some(proc);
                self.nodes[i].stopped = false;
                return;
            }
            let text = proc.log_text();
            assert!(
                text.contains("already claimed") && Instant::now() < end,
                "node {} exited at start:\n{text}",
                self.nodes[i].id
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn clock_file(&self, i: usize) -> PathBuf {
        self.cfg
            .dir
            .join(format!("node{}.faketime", self.nodes[i].id))
    }

    /// Sets node `i`'s wall clock offset (libfaketime syntax: `-30s` steps it 30 s
    /// back, `+0s` is real time); the node sees it within a second.
    pub fn set_clock(&self, i: usize, offset: &str) {
        std::fs::write(self.clock_file(i), offset).expect("clock file");
    }

    /// SIGKILL of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            if self.nodes[i].stopped {
                sig("CONT", p.pid());
            }
            p.sigkill();
        }
        self.nodes[i].stopped = false;
    }

    /// SIGSTOP of node `i`: a stalled process, not a dead one.
    pub fn stop(&mut self, i: usize) {
        if let Some(p) = &self.nodes[i].proc {
            sig("STOP", p.pid());
            self.nodes[i].stopped = true;
        }
    }

    /// SIGCONT of node `i`.
    pub fn cont(&mut self, i: usize) {
        if let Some(p) = &self.nodes[i].proc {
            sig("CONT", p.pid());
        }
        self.nodes[i].stopped = false;
    }

    /// Whether node `i` runs (possibly stopped); reaps it if it exited by itself
    /// (such as after losing its node id while stopped).
    pub fn running(&mut self, i: usize) -> bool {
        let exited = match &mut self.nodes[i].proc {
            Some(p) => !matches!(p.child.try_wait(), Ok(None)),
            None => return false,
        };
        if exited {
            self.nodes[i].proc = None;
        }
        !exited
    }

    /// Continues stopped nodes, starts dead ones, and waits until HAProxy sees every
    /// node healthy.
    pub async fn heal_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].stopped {
                self.cont(i);
            }
        }
        for i in 0..self.nodes.len() {
            // A node continued after a long stop may be exiting (it lost its id).
            let end = Instant::now() + Duration::from_secs(3);
            while self.running(i) && !haproxy::healthz(self.nodes[i].addr) {
                if Instant::now() > end {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !self.running(i) {
                self.start_node(i).await;
            }
        }
    }

    /// Sets every proxy back to [`Fault::Pass`](crate::proxy::Fault::Pass).
    pub fn heal_network(&self) {
        for n in &self.nodes {
            n.redis_proxy.set(crate::proxy::Fault::Pass);
            n.hbase_proxy.set(crate::proxy::Fault::Pass);
        }
    }

    /// Kills Redis and starts it again, empty, on the same port.
    pub fn restart_redis(&self) {
        self.redis.kill();
        self.redis.restart();
    }

    /// Stops the HBase Thrift2 gateway, waits `down`, starts it again on its port
    /// (`scripts/hbase.sh stop-thrift` / `start-thrift`).
    pub async fn restart_hbase_gateway(&self, down: Duration) {
        let run_dir = self.cfg.hbase_run_dir.clone().expect(
            "the HBase gateway restart needs the run dir of scripts/hbase.sh (HBASE_RUN_DIR)",
        );
        let script = messenger_test_support::hbase::script();
        let run = |what: &'static str| {
            let out = Command::new("bash")
                .arg(&script)
                .arg(what)
                .env("HBASE_RUN_DIR", &run_dir)
                .output()
                .expect("scripts/hbase.sh");
            assert!(
                out.status.success(),
                "scripts/hbase.sh {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        tokio::task::block_in_place(|| run("stop-thrift"));
        tokio::time::sleep(down).await;
        tokio::task::block_in_place(|| run("start-thrift"));
    }

    /// The logs of every node, for a report.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!("--- node {} ---\n", n.id));
            let t = n.log_text();
            let tail: Vec<&str> = t.lines().rev().take(30).collect();
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if let Some(h) = &mut self.haproxy {
            h.sigkill();
        }
        if let Some(b) = &self.kafka {
            // (The harness's watcher would also stop it when this process exits.)
            let _ = b.script(&["stop"]);
        }
    }
}
