//! A chaos run: users with persistent outboxes chat (1:1 and groups) through the
//! balancer while faults are injected one at a time and then together; then the
//! faults are healed, the clients drain and catch up, and the ledgers are checked
//! against history. On a cluster with Kafka (the relay and the event log) the broker is
//! killed and restarted alone and in combined rounds, and each time the run waits until
//! cross-node delivery works again ([`RELAY_RESUME_BOUND`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use messenger_client::{
    BackoffConfig, Client, ConnectionState, Event, InitialSync, PresenceStatus, SqliteStore,
    ThreadId, UserId,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::ledger::{check_thread, Ledger, Violation};
use crate::presence::PresenceTap;
use crate::proxy::Fault;

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct Profile {
    /// A name for the report.
    pub name: &'static str,
    /// Chatting users (SDK clients).
    pub users: usize,
    /// Each user's pause between two sends.
    pub send_every: Duration,
    /// Rounds of combined random faults after the single ones.
    pub combined_rounds: u32,
    /// How long each fault lasts.
    pub fault_time: Duration,
    /// Seed of the random fault choice.
    pub seed: u64,
    /// Inject the single faults of the nodes, Redis, HBase, the network and the clock
    /// before the combined rounds (`false`: only the Kafka broker's, on a cluster with
    /// Kafka).
    pub single_faults: bool,
    /// In combined rounds on Kafka, stop the broker with a controlled shutdown (SIGTERM)
    /// instead of SIGKILL. Off by default: it reproduces a librdkafka defect (a
    /// producer that saw a partition's leader as -1 while the broker shut down kept
    /// failing to produce to that partition after the broker was back; see
    /// docs/reliability.md, "Found by the suite").
    pub kafka_controlled_stop: bool,
}

/// Cross-node delivery works again within this long after a restarted Kafka broker
/// answers a Metadata request (the relay's producer and consumer reconnect with backoff
/// up to 1 s; docs/reliability.md). The run checks it after every Kafka fault.
pub const RELAY_RESUME_BOUND: Duration = Duration::from_secs(30);

impl Profile {
    /// The profile scripts/test.sh runs: every single fault once, then two combined
    /// rounds (a few minutes).
    pub fn short() -> Profile {
        Profile {
            name: "short",
            users: 6,
            send_every: Duration::from_millis(150),
            combined_rounds: 2,
            fault_time: Duration::from_secs(3),
            seed: 18,
            single_faults: true,
            kafka_controlled_stop: false,
        }
    }

    /// The short Kafka round scripts/test.sh runs on a cluster with Kafka: the broker
    /// SIGKILLed and restarted while traffic flows, then one combined round (a node
    /// fault, network faults and the broker killed at once).
    pub fn short_kafka() -> Profile {
        Profile {
            name: "short-kafka",
            combined_rounds: 1,
            single_faults: false,
            ..Profile::short()
        }
    }

    /// The long profile: more users, `rounds` combined rounds.
    pub fn long(rounds: u32, seed: u64) -> Profile {
        Profile {
            name: "long",
            users: 16,
            send_every: Duration::from_millis(100),
            combined_rounds: rounds,
            fault_time: Duration::from_secs(5),
            seed,
            single_faults: true,
            kafka_controlled_stop: false,
        }
    }
}

/// When the victim's user went offline after a node fault.
#[derive(Debug, Clone)]
pub struct OfflineSeen {
    /// The fault.
    pub fault: String,
    /// Fault -> `offline` published in Redis.
    pub published: Duration,
    /// The node's last heartbeat (`last_seen`) -> published.
    pub after_heartbeat: Duration,
    /// The bound on `after_heartbeat`.
    pub bound: Duration,
    /// Fault -> the watcher (an SDK client) received it.
    pub received: Option<Duration>,
}

/// How long cross-node delivery took to work again after a Kafka fault.
#[derive(Debug, Clone)]
pub struct RelayResumed {
    /// The fault.
    pub fault: String,
    /// Fault -> the broker answered again (it was down this long).
    pub broker_down: Duration,
    /// The broker (and, in a combined round, every node) back -> every node received a
    /// relayed message.
    pub resumed: Duration,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Faults injected, in order, with when.
    pub faults: Vec<String>,
    /// Messages confirmed by `message_sent`.
    pub confirmed: usize,
    /// Threads checked.
    pub threads: usize,
    /// Messages received by clients (all members).
    pub deliveries: usize,
    /// Presence of the victim's user after each node fault.
    pub offline_after: Vec<OfflineSeen>,
    /// Cross-node delivery after each Kafka fault.
    pub relay_resumed: Vec<RelayResumed>,
    /// Time from healing the last fault to every client drained and caught up.
    pub settle: Duration,
    /// Broken guarantees.
    pub violations: Vec<Violation>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "faults:")?;
        for x in &self.faults {
            writeln!(f, "  {x}")?;
        }
        writeln!(
            f,
            "{} messages confirmed in {} threads, {} deliveries checked; settled {:?} after the last fault",
            self.confirmed, self.threads, self.deliveries, self.settle
        )?;
        for o in &self.offline_after {
            writeln!(
                f,
                "presence after {}: offline published {:.2?} after the fault, {:.2?} after the \
                 node's last heartbeat (bound {:.2?}); the watcher received it after {}",
                o.fault,
                o.published,
                o.after_heartbeat,
                o.bound,
                o.received
                    .map(|d| format!("{d:.2?}"))
                    .unwrap_or_else(|| "never".into())
            )?;
        }
        for r in &self.relay_resumed {
            writeln!(
                f,
                "relay after {}: broker down {:.2?}; cross-node delivery back on every node \
                 {:.2?} after the broker answered (bound {RELAY_RESUME_BOUND:?})",
                r.fault, r.broker_down, r.resumed
            )?;
        }
        for v in &self.violations {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

struct ChaosUser {
    id: UserId,
    client: Client,
    ledger: Arc<Mutex<Ledger>>,
    events: JoinHandle<()>,
}

fn uid(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

fn lock(l: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

type PresenceMap = HashMap<UserId, (PresenceStatus, Instant)>;

/// A user on its own SQLite store (a persistent outbox), syncing every thread from seq
/// 1, reconnecting with the SDK's jittered backoff; its events go to its ledger and
/// presence changes to `presence`.
async fn user(
    url: &str,
    dir: &std::path::Path,
    name: &str,
    t0: Instant,
    presence: watch::Sender<PresenceMap>,
) -> ChaosUser {
    let store = SqliteStore::open(dir.join(format!("{name}.db")))
        .await
        .expect("client store");
    let (client, mut events) = Client::builder()
        .url(url)
        .token(name)
        .store(store)
        .initial_sync(InitialSync::Full)
        .heartbeat(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(5))
        .backoff(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            max_retries: None,
        })
        .build()
        .await
        .expect("client");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let l = ledger.clone();
    let events = tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let Event::Presence(p) = &e {
                presence.send_modify(|m| {
                    m.insert(p.user_id.clone(), (p.status, Instant::now()));
                });
            }
            lock(&l).event(t0, &e);
        }
    });
    ChaosUser {
        id: uid(name),
        client,
        ledger,
        events,
    }
}

/// A raw WebSocket session on one node (not through the balancer, never
/// reconnecting): its presence shows when that node's sessions end.
async fn sentinel(addr: std::net::SocketAddr, name: &str) -> JoinHandle<()> {
    let url = format!("ws://{addr}/ws?token={name}");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("sentinel connect in time")
    .expect("sentinel connect");
    tokio::spawn(async move {
        // Answer pings (tungstenite does on read) until the node goes away.
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                let _ = ws.close(None).await;
                return;
            }
        }
    })
}

/// Waits until `watcher` saw `who` go offline after `since`; the time it took.
async fn offline_within(
    presence: &mut watch::Receiver<PresenceMap>,
    who: &UserId,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let end = since + limit;
    loop {
        if let Some((PresenceStatus::Offline, at)) = presence.borrow_and_update().get(who) {
            if *at >= since {
                return Some(at.duration_since(since));
            }
        }
        let left = end.checked_duration_since(Instant::now())?;
        if tokio::time::timeout(left, presence.changed())
            .await
            .is_err()
        {
            return None;
        }
    }
}

/// The presence check after a node is killed or stalled. The product's bound
/// (docs/operations.md, "A node dies") is on *publication*: the reapers publish `offline`
/// within `node_ttl + reap_interval + op_timeout` of the dead node's last heartbeat,
/// which the event carries as `last_seen`. The heartbeat's own trip to Redis (at most
/// `op_timeout`: a slower one fails) is added, since the claim's TTL starts when it
/// arrives. So the check times the publication (a [`PresenceTap`] on Redis) from
/// `last_seen`, checks that `last_seen` is not after the fault, and then that a
/// subscribed SDK client does receive the `offline` (delivery, not timed: on a loaded
/// machine the watcher's own path, a reconnect included, can take seconds).
struct OfflineCheck {
    tap: PresenceTap,
    bound: Duration,
}

/// How long the watcher may take to hear a published `offline` (a liveness limit, not a
/// promise: it covers the watcher's own reconnect on a loaded machine).
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);

impl OfflineCheck {
    fn new(cluster: &Cluster) -> OfflineCheck {
        let ttl = cluster.node_ttl();
        // messenger-server's cluster options: reaper every ttl/3, Redis commands time out
        // after ttl/4 (100 ms .. 2 s).
        let op_timeout = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        let bound = ttl + ttl / 3 + op_timeout + op_timeout;
        let channel = format!("{}:presence", cluster.redis_key_prefix());
        let port = cluster.redis.port;
        OfflineCheck {
            tap: PresenceTap::start(port, &channel),
            bound,
        }
    }

    async fn check(
        &self,
        report: &mut Report,
        watcher: &mut watch::Receiver<PresenceMap>,
        what: &str,
        who: &UserId,
        at: Instant,
        at_ms: u64,
    ) {
        let mut violation = |v: String| {
            report.violations.push(Violation {
                what: v,
                thread: None,
                detail: String::new(),
            })
        };
        let published = self
            .tap
            .offline_after(who.as_str(), at, DELIVERY_LIMIT)
            .await;
        let Some(p) = published else {
            violation(format!(
                "{what}: no offline published for {who} within {DELIVERY_LIMIT:?}"
            ));
            return;
        };
        let Some(seen) = p.last_seen else {
            violation(format!(
                "{what}: offline for {who} without last_seen: {p:?}"
            ));
            return;
        };
        // Millisecond stamps of two clocks of one machine: allow their rounding.
        if seen > at_ms + 5 {
            violation(format!(
                "{what}: last_seen {seen} of {who} is after the fault ({at_ms})"
            ));
        }
        let after_heartbeat = Duration::from_millis(p.at_ms.saturating_sub(seen));
        if after_heartbeat > self.bound {
            violation(format!(
                "{what}: offline of {who} published {after_heartbeat:?} after its node's last \
                 heartbeat, bound {:?}",
                self.bound
            ));
        }
        let received = offline_within(watcher, who, at, DELIVERY_LIMIT).await;
        if received.is_none() {
            violation(format!(
                "{what}: the watcher never received the offline of {who} (published {:?} after the fault)",
                p.at.duration_since(at)
            ));
        }
        report.offline_after.push(OfflineSeen {
            fault: what.to_string(),
            published: p.at.duration_since(at),
            after_heartbeat,
            bound: self.bound,
            received,
        });
    }
}

/// Runs `profile` on `cluster`; returns the report (violations included, never
/// panics on one).
pub async fn run(cluster: &mut Cluster, profile: &Profile) -> Report {
    let t0 = Instant::now();
    let mut report = Report::default();
    let dir = cluster.dir().join("clients");
    std::fs::create_dir_all(&dir).expect("clients dir");
    let url = cluster.url();
    let names: Vec<String> = (0..profile.users).map(|i| format!("u{i}")).collect();
    let (ptx, mut prx) = watch::channel(PresenceMap::new());
    let mut users = Vec::new();
    for n in &names {
        users.push(user(&url, &dir, n, t0, ptx.clone()).await);
    }
    for u in &users {
        u.client.wait_connected().await.expect("connected");
    }
    // Threads: a ring of direct threads, one group of everyone, one of the first half.
    let mut threads: Vec<(ThreadId, Vec<usize>)> = Vec::new();
    let n = users.len();
    for i in 0..n {
        let j = (i + 1) % n;
        let t = users[i]
            .client
            .create_direct(&users[j].id)
            .await
            .expect("direct thread");
        threads.push((t.thread_id, vec![i, j]));
    }
    let everyone: Vec<UserId> = users.iter().skip(1).map(|u| u.id.clone()).collect();
    let g = users[0]
        .client
        .create_group(&everyone, "all")
        .await
        .expect("group");
    threads.push((g.thread_id, (0..n).collect()));
    let half: Vec<UserId> = users[1..n / 2 + 1].iter().map(|u| u.id.clone()).collect();
    let g = users[0]
        .client
        .create_group(&half, "half")
        .await
        .expect("group");
    threads.push((g.thread_id, (0..=n / 2).collect()));
    report.threads = threads.len();

    // Presence watcher: the last user, subscribed to one sentinel per node.
    let w = users.len() - 1;
    let mut sentinels = Vec::new();
    for i in 0..cluster.nodes.len() {
        let name = format!("sentinel{}", cluster.nodes[i].id);
        // A shared thread lets the watcher subscribe.
        users[w]
            .client
            .create_direct(&uid(&name))
            .await
            .expect("thread with sentinel");
        sentinels.push(sentinel(cluster.nodes[i].addr, &name).await);
    }
    let watch_ids: Vec<UserId> = (0..cluster.nodes.len())
        .map(|i| uid(&format!("sentinel{}", cluster.nodes[i].id)))
        .collect();
    users[w]
        .client
        .subscribe_presence(&watch_ids)
        .await
        .expect("presence subscribe");

    // Traffic: each user sends to its threads in turn until told to stop.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut senders = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mine: Vec<ThreadId> = threads
            .iter()
            .filter(|(_, m)| m.contains(&i))
            .map(|(t, _)| t.clone())
            .collect();
        let client = u.client.clone();
        let ledger = u.ledger.clone();
        let name = u.id.to_string();
        let every = profile.send_every;
        let mut stop = stop_rx.clone();
        senders.push(tokio::spawn(async move {
            let mut k = 0usize;
            while !*stop.borrow() {
                let t = &mine[k % mine.len()];
                let text = format!("{name}#{k}");
                let temp = format!("{name}-{k}");
                // The ledger first: the Sent event may come before enqueue returns.
                lock(&ledger).enqueue(t0, t, &temp, &text);
                if let Err(e) = client.enqueue_with_temp_id(t, temp.clone(), text).await {
                    lock(&ledger).failed.push((temp, e.to_string()));
                }
                k += 1;
                let _ = tokio::time::timeout(every, stop.changed()).await;
            }
        }));
    }
    let pause = profile.fault_time;
    tokio::time::sleep(pause).await;
    let offline = OfflineCheck::new(cluster);
    let fault = |report: &mut Report, what: String| {
        let line = format!("{:>6.1}s {what}", t0.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        report.faults.push(line);
    };

    if profile.single_faults {
        // 1. SIGKILL of a node: its sentinel goes offline within the bound.
        fault(&mut report, "SIGKILL node 1".into());
        let (at, at_ms) = (Instant::now(), crate::presence::unix_ms());
        cluster.kill(0);
        offline
            .check(
                &mut report,
                &mut prx,
                "SIGKILL node 1",
                &watch_ids[0],
                at,
                at_ms,
            )
            .await;
        tokio::time::sleep(pause).await;
        cluster.heal_nodes().await;
        sentinels.push(sentinel(cluster.nodes[0].addr, "sentinel1").await);

        // 2. SIGSTOP of a node longer than its TTL, then SIGCONT.
        fault(
            &mut report,
            "SIGSTOP node 2 (longer than the node TTL), then SIGCONT".into(),
        );
        let (at, at_ms) = (Instant::now(), crate::presence::unix_ms());
        cluster.stop(1);
        offline
            .check(
                &mut report,
                &mut prx,
                "SIGSTOP node 2",
                &watch_ids[1],
                at,
                at_ms,
            )
            .await;
        tokio::time::sleep(pause).await;
        cluster.cont(1);
        cluster.heal_nodes().await;
        drop(offline);

        // 3. Redis restarted (empty).
        fault(&mut report, "Redis killed and restarted empty".into());
        cluster.restart_redis();
        tokio::time::sleep(pause).await;

        // 4. The HBase Thrift gateway killed, restarted after a while.
        fault(
            &mut report,
            "HBase Thrift gateway stopped, restarted".into(),
        );
        cluster.restart_hbase_gateway(pause).await;
        tokio::time::sleep(pause).await;

        // 5. Network faults between one node and its backends.
        let net: [(&str, usize, bool, Fault); 4] = [
            (
                "latency 300ms node 1 -> Redis",
                0,
                true,
                Fault::Latency(Duration::from_millis(300)),
            ),
            ("black hole node 2 -> HBase", 1, false, Fault::Blackhole),
            (
                "reset node 3 -> Redis",
                2 % cluster.nodes.len(),
                true,
                Fault::Reset,
            ),
            (
                "latency 200ms node 1 -> HBase",
                0,
                false,
                Fault::Latency(Duration::from_millis(200)),
            ),
        ];
        for (what, i, redis, f) in net {
            fault(&mut report, what.into());
            let n = &cluster.nodes[i];
            let p = if redis {
                &n.redis_proxy
            } else {
                &n.hbase_proxy
            };
            p.set(f);
            tokio::time::sleep(pause).await;
            cluster.heal_network();
            cluster.heal_nodes().await;
            tokio::time::sleep(pause / 2).await;
        }

        // 6. One node's wall clock stepped back 30 s (libfaketime), then forward again.
        let i = cluster.nodes.len() - 1;
        fault(
            &mut report,
            format!("wall clock of node {} stepped back 30 s", i + 1),
        );
        cluster.set_clock(i, "-30s");
        tokio::time::sleep(pause * 2).await;
        cluster.set_clock(i, "+0s");
        tokio::time::sleep(pause / 2).await;
    }

    // 7. The Kafka broker (the relay and the event log) SIGKILLed, restarted after a
    // while: live cross-node delivery stops, sends go on; it must work again within
    // the bound, and what it missed is caught up.
    let mut kafka_checks = 0u32;
    if cluster.kafka_brokers().is_some() {
        let what = "Kafka broker SIGKILLed, restarted";
        fault(&mut report, what.into());
        let at = Instant::now();
        cluster.kill_kafka();
        tokio::time::sleep(pause).await;
        cluster.start_kafka();
        let up = Instant::now();
        check_relay(cluster, &mut report, what, (at, up, up), &mut kafka_checks).await;
        tokio::time::sleep(pause).await;
    }

    // 8. Combined rounds: a node fault and two network faults at once (with Kafka, and
    // the broker killed, or stopped, in the first round and at random in later ones).
    let mut rng = profile.seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..profile.combined_rounds {
        let k = cluster.nodes.len();
        let victim = (next() % k as u64) as usize;
        let other = (victim + 1 + (next() % (k as u64 - 1)) as usize) % k;
        let node_fault = next() % 2;
        let net_fault = match next() % 3 {
            0 => Fault::Latency(Duration::from_millis(250)),
            1 => Fault::Blackhole,
            _ => Fault::Reset,
        };
        let kafka_fault = cluster.kafka_brokers().is_some() && (round == 0 || next() % 2 == 0);
        let what =
            format!(
            "round {round}: {} node {} + {net_fault:?} node {} -> HBase + reset node {} -> Redis{}",
            if node_fault == 0 { "SIGKILL" } else { "SIGSTOP" },
            victim + 1,
            other + 1,
            other + 1,
            match (kafka_fault, profile.kafka_controlled_stop) {
                (false, _) => "",
                (true, false) => " + Kafka broker SIGKILLed",
                (true, true) => " + Kafka broker stopped (SIGTERM)",
            }
        );
        fault(&mut report, what.clone());
        let at = Instant::now();
        if node_fault == 0 {
            cluster.kill(victim);
        } else {
            cluster.stop(victim);
        }
        cluster.nodes[other].hbase_proxy.set(net_fault);
        cluster.nodes[other].redis_proxy.set(Fault::Reset);
        if kafka_fault && profile.kafka_controlled_stop {
            cluster.stop_kafka();
        } else if kafka_fault {
            cluster.kill_kafka();
        }
        tokio::time::sleep(pause).await;
        cluster.heal_network();
        // The broker first: a restarted node exits when it cannot reach Kafka.
        if kafka_fault {
            cluster.start_kafka();
        }
        let broker_up = Instant::now();
        cluster.heal_nodes().await;
        if kafka_fault {
            // Timed from when the broker and every node are back.
            let since = Instant::now();
            let times = (at, broker_up, since);
            check_relay(cluster, &mut report, &what, times, &mut kafka_checks).await;
        }
        tokio::time::sleep(pause).await;
    }

    // Heal, stop sending, drain and catch up.
    cluster.heal_network();
    cluster.heal_nodes().await;
    let healed = Instant::now();
    stop_tx.send_replace(true);
    for s in senders {
        let _ = s.await;
    }
    let settled = settle(&users, &threads, SETTLE_STALL, SETTLE_CAP).await;
    report.settle = healed.elapsed();
    if let Err(why) = settled {
        report.violations.push(Violation {
            what: format!(
                "clients not drained and caught up: no progress for {SETTLE_STALL:?} \
                 (or not done within {SETTLE_CAP:?}) after the last fault"
            ),
            thread: None,
            detail: format!("    {why}\n"),
        });
    }

    // Check every thread against history.
    for (t, members) in &threads {
        // A loaded machine can take longer than the SDK's request timeout for a read:
        // ask again a few times before calling history unreadable.
        let mut read = users[members[0]].client.history_after(t, 0).await;
        for _ in 0..4 {
            if read.is_ok() {
                break;
            }
            read = users[members[0]].client.history_after(t, 0).await;
        }
        let history = match read {
            Ok(h) => h,
            Err(e) => {
                report.violations.push(Violation {
                    what: format!("history unreadable: {e}"),
                    thread: Some(t.clone()),
                    detail: String::new(),
                });
                continue;
            }
        };
        let ledgers: Vec<_> = members
            .iter()
            .map(|&i| (users[i].id.clone(), users[i].ledger.clone()))
            .collect();
        let guards: Vec<_> = ledgers.iter().map(|(u, l)| (u.clone(), lock(l))).collect();
        let refs: Vec<(&UserId, &Ledger)> = guards.iter().map(|(u, g)| (u, &**g)).collect();
        report.violations.extend(check_thread(t, &history, &refs));
        report.deliveries += refs
            .iter()
            .map(|(_, l)| l.received.get(t).map(Vec::len).unwrap_or(0))
            .sum::<usize>();
    }
    report.confirmed = users.iter().map(|u| lock(&u.ledger).sent.len()).sum();
    for u in &users {
        u.client.close().await;
        u.events.abort();
    }
    for s in sentinels {
        s.abort();
    }
    report
}

/// After a Kafka fault injected at `at`, its broker back at `up` and every node too at
/// `since`: waits until every node receives relayed messages again (a
/// [`crate::relay_probe`]); records how long it took from `since`, or a violation past
/// [`RELAY_RESUME_BOUND`].
async fn check_relay(
    cluster: &Cluster,
    report: &mut Report,
    what: &str,
    (at, up, since): (Instant, Instant, Instant),
    checks: &mut u32,
) {
    *checks += 1;
    let tag = format!("kprobe{checks}");
    match crate::relay_probe::relay_resumed(cluster, &tag, since, RELAY_RESUME_BOUND).await {
        Ok(resumed) => {
            eprintln!("chaos: cross-node delivery back {resumed:.2?} after the broker ({what})");
            report.relay_resumed.push(RelayResumed {
                fault: what.to_string(),
                broker_down: up.duration_since(at),
                resumed,
            });
        }
        Err(e) => report.violations.push(Violation {
            what: format!("{what}: {e}"),
            thread: None,
            detail: String::new(),
        }),
    }
}

/// Settling fails when neither the outboxes shrink nor the members receive anything
/// for this long.
const SETTLE_STALL: Duration = Duration::from_secs(90);
/// ... or when it takes longer than this in all.
const SETTLE_CAP: Duration = Duration::from_secs(900);

/// Waits until every outbox is empty and every member received each thread up to
/// its last seq, as long as that progresses: a backlog left by the faults on a loaded
/// machine drains at the speed the cluster stores, which no fixed limit fits. `Err`
/// (who is behind where) after `stall` without progress or `cap` in all.
async fn settle(
    users: &[ChaosUser],
    threads: &[(ThreadId, Vec<usize>)],
    stall: Duration,
    cap: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut best: Option<(usize, u64)> = None;
    loop {
        // Progress: fewer unsent, or more received.
        let mut unsent = 0usize;
        for u in users {
            unsent += u
                .client
                .outbox()
                .await
                .map(|o| o.len())
                .unwrap_or(usize::MAX / 64);
        }
        let received: u64 = users
            .iter()
            .map(|u| {
                let l = lock(&u.ledger);
                threads.iter().map(|(t, _)| l.max_received(t)).sum::<u64>()
            })
            .sum();
        let better = match best {
            None => true,
            Some((u, r)) => unsent < u || received > r,
        };
        if better {
            best = Some((
                best.map_or(unsent, |b| b.0.min(unsent)),
                best.map_or(received, |b| b.1.max(received)),
            ));
            last_progress = Instant::now();
        }
        let mut behind = Vec::new();
        for u in users {
            if !matches!(u.client.state(), ConnectionState::Connected { .. }) {
                behind.push(format!("{} not connected ({:?})", u.id, u.client.state()));
                continue;
            }
            match u.client.outbox().await {
                Ok(o) if o.is_empty() => {}
                Ok(o) => behind.push(format!("{} has {} unsent", u.id, o.len())),
                Err(e) => behind.push(format!("{} outbox: {e}", u.id)),
            }
        }
        if behind.is_empty() {
            let mut last: BTreeMap<ThreadId, u64> = BTreeMap::new();
            let mut asked = Vec::new();
            for (_, members) in threads {
                if asked.contains(&members[0]) {
                    continue;
                }
                asked.push(members[0]);
                match users[members[0]].client.list_threads().await {
                    Ok(list) => {
                        for s in list {
                            last.insert(s.thread_id.clone(), s.last_seq);
                        }
                    }
                    Err(e) => behind.push(format!("{} list_threads: {e}", users[members[0]].id)),
                }
            }
            for (t, members) in threads {
                let Some(&n) = last.get(t) else {
                    behind.push(format!("{t} not listed"));
                    continue;
                };
                for &i in members {
                    let got = lock(&users[i].ledger).max_received(t);
                    if got < n {
                        behind.push(format!("{} has {t} up to {got} of {n}", users[i].id));
                    }
                }
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if last_progress.elapsed() > stall || start.elapsed() > cap {
            return Err(behind.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
