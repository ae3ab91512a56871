//! Cluster mode with real processes: HBase (Thrift2), Redis, three `messenger-server`
//! processes and HAProxy in front of them, all on 127.0.0.1, driven by WebSocket
//! clients that connect through the balancer.
//!
//! HBase: `MESSENGER_TEST_HBASE=host:port` uses a running Thrift2 gateway; otherwise the
//! first test starts one with `scripts/hbase.sh start` (run dir
//! `target/hbase-server-test-run-PID`, once per test binary) and a watcher stops it when
//! this process exits. Redis: a `redis-server` per test. HAProxy: `haproxy` from PATH
//! (or `HAPROXY`); scripts/test.sh installs it. Nothing is skipped: a missing tool fails
//! the test with a message saying what to install.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use messenger_test_support::haproxy::{healthz, start as start_haproxy};
use messenger_test_support::process::{free_port, Proc};
use messenger_test_support::redis::RedisServer;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Node TTL of these tests: a SIGKILLed node's users are offline within
/// ttl + ttl/3 (reaper) + ttl/4 (one command) = 3.2 s of its last heartbeat.
const NODE_TTL: &str = "2s";
const OFFLINE_BOUND: Duration = Duration::from_millis(2000 + 667 + 500);

fn tmp_dir(name: &str) -> PathBuf {
    messenger_test_support::process::tmp_dir(&format!("proc-{name}"))
}

async fn hbase_addr() -> String {
    messenger_test_support::hbase::hbase_addr().await
}

/// Table prefix of this test process (fresh tables per run).
fn table_prefix() -> String {
    format!("mproc{}_", std::process::id())
}

/// A `messenger-server` process.
struct Node {
    proc: Proc,
    addr: SocketAddr,
    id: u16,
}

struct Cluster<'a> {
    redis: &'a str,
    hbase: &'a str,
    prefix: String,
    dir: PathBuf,
}

impl Cluster<'_> {
    fn args(&self, id: u16, port: u16) -> Vec<String> {
        [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-id",
            &id.to_string(),
            "--redis",
            self.redis,
            "--redis-key-prefix",
            &self.prefix,
            "--redis-node-ttl",
            NODE_TTL,
            "--hbase",
            self.hbase,
            "--hbase-table-prefix",
            &table_prefix(),
            "--hbase-pool-size",
            "4",
            "--presence-grace",
            "300ms",
            "--rate-limit",
            "10000",
            "--rate-burst",
            "10000",
            "--drain-timeout",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts node `id` and waits until /healthz answers.
    async fn node(&self, id: u16) -> Node {
        let port = free_port();
        let log = self.dir.join(format!("node{id}-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_messenger-server"))
            .args(self.args(id, port))
            .env("RUST_LOG", "info")
            .env_remove("MESSENGER_JWT_SECRET")
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("log file"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn messenger-server");
        let mut proc = Proc {
            child,
            name: format!("node {id}"),
            log,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = proc.child.try_wait() {
                panic!("node {id} exited ({s}) at start:\n{}", proc.log_text());
            }
            if healthz(addr) {
                break;
            }
            assert!(
                Instant::now() < end,
                "node {id} not healthy in 60 s:\n{}",
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Node { proc, addr, id }
    }
}

/// A WebSocket client that keeps every message it saw per thread.
struct User {
    name: String,
    ws: Ws,
    /// The node that served the upgrade (from HAProxy's X-Served-By).
    node: String,
    /// thread -> seqs received live or sent by this user, in arrival order.
    seen: BTreeMap<String, Vec<u64>>,
    /// Presence events received: (user, status, when).
    presence: Vec<(String, String, Instant)>,
    next_req: u64,
}

impl User {
    /// Connects through the balancer; Err on refusal or a failed handshake.
    async fn try_connect(lb: u16, name: &str) -> Result<User, String> {
        let url = format!("ws://127.0.0.1:{lb}/ws?token={name}");
        let (ws, resp) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
        let node = resp
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        let mut u = User {
            name: name.into(),
            ws,
            node,
            seen: BTreeMap::new(),
            presence: Vec::new(),
            next_req: 0,
        };
        let w = u.next_frame(5000).await.ok_or("no welcome")?;
        if w["type"] != "welcome" {
            return Err(format!("expected welcome, got {w}"));
        }
        Ok(u)
    }

    async fn connect(lb: u16, name: &str) -> User {
        match User::try_connect(lb, name).await {
            Ok(u) => u,
            Err(e) => panic!("{name}: connect through haproxy: {e}"),
        }
    }

    /// The next text frame within `ms` (recorded), or None on timeout or close.
    async fn next_frame(&mut self, ms: u64) -> Option<Value> {
        let end = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(end, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json");
                    self.note(&v);
                    return Some(v);
                }
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    fn note(&mut self, v: &Value) {
        match v["type"].as_str() {
            Some("receive_message") | Some("message_sent") => {
                if let (Some(t), Some(s)) = (v["thread_id"].as_str(), v["seq"].as_u64()) {
                    self.seen.entry(t.to_string()).or_default().push(s);
                }
            }
            Some("presence") if v.get("req_id").is_none() => self.presence.push((
                v["user_id"].as_str().unwrap_or("").to_string(),
                v["status"].as_str().unwrap_or("").to_string(),
                Instant::now(),
            )),
            _ => {}
        }
    }

    /// Sends `v` with a fresh req_id and returns the reply, recording other frames.
    async fn request(&mut self, mut v: Value) -> Value {
        self.next_req += 1;
        let id = format!("{}-{}", self.name, self.next_req);
        v["req_id"] = json!(id);
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(r) = self.next_frame(10_000).await {
                if r["req_id"] == json!(id) {
                    return r;
                }
            } else {
                break;
            }
        }
        panic!("{}: no reply to {v}", self.name);
    }

    /// Reads (and records) frames until none arrives for `ms`.
    async fn drain(&mut self, ms: u64) {
        while self.next_frame(ms).await.is_some() {}
    }

    async fn send_msg(&mut self, thread: &str, temp: &str) -> u64 {
        let r = self
            .request(json!({"type":"send_message","thread_id":thread,"temp_id":temp,"text":temp}))
            .await;
        assert_eq!(r["type"], "message_sent", "{}: {r}", self.name);
        r["seq"].as_u64().expect("seq")
    }

    /// Catch-up as the protocol prescribes: list_threads, then fetch_history after the
    /// last seq seen of each thread, page by page. Returns the seqs fetched per thread.
    async fn catch_up(&mut self) -> BTreeMap<String, Vec<u64>> {
        let r = self.request(json!({"type":"list_threads"})).await;
        assert_eq!(r["type"], "threads", "{r}");
        let mut fetched = BTreeMap::new();
        for t in r["threads"].as_array().expect("threads") {
            let tid = t["thread_id"].as_str().expect("id").to_string();
            let last_seq = t["last_seq"].as_u64().expect("last_seq");
            let mut after = self
                .seen
                .get(&tid)
                .and_then(|s| s.iter().max().copied())
                .unwrap_or(0);
            let mut got: Vec<u64> = Vec::new();
            while after < last_seq {
                let h = self
                    .request(json!({"type":"fetch_history","thread_id":tid,"after_seq":after,"limit":200}))
                    .await;
                assert_eq!(h["type"], "history", "{h}");
                let page: Vec<u64> = h["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .map(|m| m["seq"].as_u64().expect("seq"))
                    .collect();
                if page.is_empty() {
                    break;
                }
                after = *page.last().expect("non-empty");
                got.extend(page);
            }
            fetched.insert(tid, got);
        }
        fetched
    }
}

/// Connects through the balancer, retrying for up to 10 s (a killed node may still be
/// picked until HAProxy's checks mark it down).
async fn reconnect(lb: u16, name: &str) -> (User, Duration, u32) {
    let t0 = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match User::try_connect(lb, name).await {
            Ok(u) => return (u, t0.elapsed(), attempts),
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{name}: no reconnect in 10 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Asserts `seqs` (in any order) are exactly 1..=last with no duplicates.
fn assert_exact(who: &str, thread: &str, seqs: &[u64], last: u64) {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=last).collect::<Vec<_>>(),
        "{who} in {thread}: every message exactly once"
    );
}

/// Three nodes behind HAProxy on shared Redis and HBase: chat across nodes, then one
/// node is SIGKILLed; its users' presence ends within the bound, they reconnect through
/// the balancer to a surviving node and catch up with nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_haproxy_survive_a_sigkill() {
    let t_all = Instant::now();
    let hb = hbase_addr().await;
    let redis = RedisServer::start();
    let dir = tmp_dir("lb");
    let cluster = Cluster {
        redis: &redis.url(),
        hbase: &hb,
        prefix: format!("proc{}", std::process::id()),
        dir: dir.clone(),
    };
    let t_nodes = Instant::now();
    let mut nodes = Vec::new();
    for id in 1..=3u16 {
        nodes.push(cluster.node(id).await);
    }
    eprintln!("3 nodes healthy in {:?}", t_nodes.elapsed());
    for n in &nodes {
        let log = n.proc.log_text();
        assert!(
            log.contains("adapters in use") && log.contains("stores") && log.contains("hbase"),
            "node {} logs its adapters:\n{log}",
            n.id
        );
    }
    let backends: Vec<(u16, SocketAddr)> = nodes.iter().map(|n| (n.id, n.addr)).collect();
    let (_haproxy, lb) = start_haproxy(&dir, &backends);

    // Six users through the balancer (leastconn spreads them over the three nodes).
    let names = ["p0", "p1", "p2", "p3", "p4", "p5"];
    let mut users = Vec::new();
    for n in names {
        users.push(User::connect(lb, n).await);
    }
    let on: Vec<String> = users.iter().map(|u| u.node.clone()).collect();
    eprintln!("placement: {on:?}");
    let distinct: BTreeSet<&String> = on.iter().collect();
    assert_eq!(distinct.len(), 3, "the balancer used every node: {on:?}");

    // p0 talks 1:1 to a user on another node; that user's node is the victim.
    let peer = (1..6)
        .find(|&i| on[i] != on[0])
        .expect("a user on another node");
    let victim = on[peer].clone();
    let direct = users[0]
        .request(json!({"type":"create_thread","kind":"direct","members":[names[peer]]}))
        .await["thread_id"]
        .as_str()
        .expect("id")
        .to_string();
    let g = users[0]
        .request(json!({"type":"create_thread","kind":"group","members":names[1..],"title":"all"}))
        .await;
    let group = g["thread_id"].as_str().expect("group id").to_string();
    for u in users.iter_mut() {
        u.drain(300).await;
    }
    let r = users[0]
        .request(json!({"type":"presence_subscribe","user_ids":[names[peer]]}))
        .await;
    assert_eq!(r["status"], "online", "{r}");

    // Traffic: everyone writes in the group, p0 and the peer write 1:1.
    for round in 0..5 {
        for u in users.iter_mut() {
            u.send_msg(&group, &format!("g{round}")).await;
        }
        users[0].send_msg(&direct, &format!("d0-{round}")).await;
        users[peer].send_msg(&direct, &format!("dp-{round}")).await;
    }
    for u in users.iter_mut() {
        u.drain(300).await;
    }
    for u in &users {
        assert_exact(&u.name, &group, &u.seen[&group], 30);
    }
    assert_exact("p0", &direct, &users[0].seen[&direct], 10);
    assert_exact(names[peer], &direct, &users[peer].seen[&direct], 10);

    // SIGKILL the peer's node.
    let vi = nodes
        .iter()
        .position(|n| format!("node{}", n.id) == victim)
        .expect("victim node");
    let mut dead = nodes.remove(vi);
    let killed = Instant::now();
    dead.proc.sigkill();
    eprintln!("SIGKILLed {victim}");

    // Survivors keep writing while the victim's users are away.
    let (mut gone, mut alive): (Vec<User>, Vec<User>) =
        users.into_iter().partition(|u| u.node == victim);
    let p0 = alive
        .iter()
        .position(|u| u.name == "p0")
        .expect("p0 survives");
    let mut last_group = 30;
    let mut last_direct = 10;
    for round in 0..3 {
        for u in alive.iter_mut() {
            last_group = u.send_msg(&group, &format!("after{round}")).await;
        }
        last_direct = alive[p0]
            .send_msg(&direct, &format!("d0-after{round}"))
            .await;
    }
    // p0 sees the peer go offline within the bound (no clean shutdown: reaped by Redis).
    let end = killed + OFFLINE_BOUND + Duration::from_secs(3);
    let offline_at = loop {
        alive[p0].next_frame(200).await;
        if let Some((_, _, at)) = alive[p0]
            .presence
            .iter()
            .find(|(u, s, _)| u == names[peer] && s == "offline")
        {
            break *at;
        }
        assert!(
            Instant::now() < end,
            "{} not offline within {:?} of the SIGKILL",
            names[peer],
            OFFLINE_BOUND + Duration::from_secs(3)
        );
    };
    let offline_after = offline_at.duration_since(killed);
    eprintln!(
        "presence: offline {offline_after:?} after SIGKILL (bound {OFFLINE_BOUND:?} after the last heartbeat)"
    );
    assert!(
        offline_after <= OFFLINE_BOUND + Duration::from_secs(1),
        "offline {offline_after:?} after the SIGKILL, bound {OFFLINE_BOUND:?}"
    );

    // The victim's users notice, reconnect through the balancer, land on a survivor and
    // catch up.
    for u in gone.iter_mut() {
        let closed = u.next_frame(3000).await;
        assert!(
            closed.is_none(),
            "{}: connection to a dead node ends",
            u.name
        );
    }
    let mut back = Vec::new();
    for old in gone {
        let (mut u, took, attempts) = reconnect(lb, &old.name).await;
        assert_ne!(u.node, victim, "{} reconnected to a surviving node", u.name);
        eprintln!(
            "{} reconnected to {} in {took:?} ({attempts} attempts)",
            u.name, u.node
        );
        u.seen = old.seen;
        let fetched = u.catch_up().await;
        for (t, got) in &fetched {
            let mut all = u.seen.get(t).cloned().unwrap_or_default();
            let before = all.len();
            all.extend(got);
            let last = if *t == group { last_group } else { last_direct };
            assert_exact(&u.name, t, &all, last);
            assert!(got.iter().all(|s| *s as usize > before), "no doubles");
        }
        back.push(u);
    }
    // p0 sees the peer online again, and live chat works with the reconnected users.
    let end = Instant::now() + Duration::from_secs(5);
    while !alive[p0]
        .presence
        .iter()
        .any(|(u, s, at)| u == names[peer] && s == "online" && *at > offline_at)
    {
        assert!(Instant::now() < end, "peer online again");
        alive[p0].next_frame(200).await;
    }
    let peer_back = back
        .iter_mut()
        .find(|u| u.name == names[peer])
        .expect("peer is back");
    let s = peer_back.send_msg(&direct, "hello-again").await;
    assert_eq!(s, last_direct + 1);
    let end = Instant::now() + Duration::from_secs(5);
    while !alive[p0].seen[&direct].contains(&s) {
        assert!(Instant::now() < end, "p0 gets the peer's new message live");
        alive[p0].next_frame(200).await;
    }
    // Survivors never lost a live message.
    for u in alive.iter_mut() {
        u.drain(300).await;
        assert_exact(&u.name, &group, &u.seen[&group], last_group);
    }
    drop(redis);
    eprintln!("whole test {:?}", t_all.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `--hbase` server restarted keeps every message; also measures resident memory per
/// idle WebSocket connection of a real process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_hbase_keeps_history() {
    let hb = hbase_addr().await;
    let redis = RedisServer::start();
    let dir = tmp_dir("restart");
    let cluster = Cluster {
        redis: &redis.url(),
        hbase: &hb,
        prefix: format!("rst{}", std::process::id()),
        dir: dir.clone(),
    };
    let mut n = cluster.node(11).await;
    let (mut a, _) = direct_user(n.addr, "r-alice").await;
    let t = a
        .request(json!({"type":"create_thread","kind":"direct","members":["r-bob"]}))
        .await["thread_id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(a.send_msg(&t, &format!("x{i}")).await);
    }
    // Resident memory per idle connection (raw upgrades; the clients add nothing).
    let before = n.proc.rss_kib();
    let mut socks = Vec::new();
    let conns = 300;
    for i in 0..conns {
        let mut s = tokio::net::TcpStream::connect(n.addr)
            .await
            .expect("connect");
        let req = format!(
            "GET /ws?token=idle{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
        socks.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = n.proc.rss_kib();
    eprintln!(
        "memory: {conns} idle connections on a --redis --hbase node: {} KiB RSS, {:.1} KiB each",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / conns as f64
    );
    drop(socks);
    drop(a);

    // A clean stop (exit 0), then a new process on the same HBase and node id.
    assert_eq!(
        n.proc.sigterm(),
        Some(0),
        "clean exit:\n{}",
        n.proc.log_text()
    );
    assert!(n.proc.log_text().contains("left the cluster"));
    let t0 = Instant::now();
    n = cluster.node(11).await;
    eprintln!(
        "restarted (same node id, released at once) in {:?}",
        t0.elapsed()
    );
    let (mut b, _) = direct_user(n.addr, "r-bob").await;
    let r = b.request(json!({"type":"list_threads"})).await;
    assert_eq!(r["threads"][0]["thread_id"], t.as_str(), "{r}");
    assert_eq!(r["threads"][0]["last_seq"], 20);
    let h = b
        .request(json!({"type":"fetch_history","thread_id":t,"limit":200}))
        .await;
    let got: Vec<u64> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(got, sent, "history survives the restart");
    assert_eq!(h["messages"][0]["text"], "x0");

    // A second process claiming the same id is refused with exit code 3.
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_messenger-server"))
        .args(cluster.args(11, port))
        .output()
        .expect("run a duplicate");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node id 11 is already claimed"), "{err}");
    // --redis without --node-id is refused (exit 2).
    let out = Command::new(env!("CARGO_BIN_EXE_messenger-server"))
        .args(["--redis", &redis.url(), "--listen", "127.0.0.1:0"])
        .env_remove("MESSENGER_NODE_ID")
        .output()
        .expect("run without node id");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-id"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user connected straight to a node (no balancer).
async fn direct_user(addr: SocketAddr, name: &str) -> (User, String) {
    let url = format!("ws://{addr}/ws?token={name}");
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to node");
    let mut u = User {
        name: name.into(),
        ws,
        node: addr.to_string(),
        seen: BTreeMap::new(),
        presence: Vec::new(),
        next_req: 0,
    };
    let w = u.next_frame(5000).await.expect("welcome");
    assert_eq!(w["type"], "welcome");
    (u, addr.to_string())
}
