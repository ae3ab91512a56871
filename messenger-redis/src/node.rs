//! The node's lifecycle: connect, claim the node id, heartbeat, reap dead nodes, and
//! shut down.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use messenger_core::model::SessionEntry;
use messenger_core::time::{now_ms, Millis};
use messenger_core::{
    Error, ErrorKind, NodeId, Presence, Relay, Result, SessionDirectory, SessionId, UserId,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::adapters::{self, LiveNodesRelay, RedisPresence, RedisRelay, RedisSessionDirectory};
use crate::error::map;
use crate::keys::Keys;
use crate::scripts;
use crate::subscribe::SubscriptionParams;

/// Options of [`RedisCluster::connect`]. Start from `RedisOptions::default()` and
/// change the fields you need.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prefix of every key and channel (default `"messenger"`). Clusters sharing one
    /// Redis must use different prefixes; tests use a unique prefix each.
    pub key_prefix: String,
    /// How long a node's claim (`{p}:node:{id}`) lives without a heartbeat (default
    /// 15 s). A killed node's users go offline at most `node_ttl + reap_interval`
    /// after its last heartbeat; a restarted node can reclaim its id after this long.
    pub node_ttl: Duration,
    /// How often the node refreshes its claim (default 5 s). Must be at most
    /// `node_ttl / 2` so one missed beat does not lose the claim.
    pub heartbeat_interval: Duration,
    /// How often the node looks for dead nodes and reaps them (default 5 s).
    pub reap_interval: Duration,
    /// Timeout of one Redis command, after which it fails with `unavailable` (default 2 s).
    pub op_timeout: Duration,
    /// Timeout of establishing a connection (default 2 s).
    pub connect_timeout: Duration,
    /// Capacity of each subscription's buffer between Redis and the stream's consumer
    /// (default 1024). When full, reading from Redis pauses (nothing is dropped here).
    pub subscription_buffer: usize,
    /// How many of a dead node's sessions one reap script removes at a time, so a big
    /// node does not block Redis for long (default 500).
    pub reap_batch: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "messenger".into(),
            node_ttl: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            reap_interval: Duration::from_secs(5),
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            subscription_buffer: 1024,
            reap_batch: 500,
        }
    }
}

impl RedisOptions {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::bad_request(format!("redis options: {m}")));
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return bad("key_prefix must be non-empty and without spaces");
        }
        if self.node_ttl < Duration::from_millis(100) {
            return bad("node_ttl must be at least 100 ms");
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.node_ttl {
            return bad("heartbeat_interval must be non-zero and at most node_ttl / 2");
        }
        if self.reap_interval.is_zero() || self.op_timeout.is_zero() {
            return bad("reap_interval and op_timeout must be non-zero");
        }
        if self.connect_timeout.is_zero() || self.reap_batch == 0 {
            return bad("connect_timeout and reap_batch must be non-zero");
        }
        Ok(())
    }

    /// The longest time from a node's last heartbeat until every other node has
    /// received `offline` for its users: `node_ttl + reap_interval` plus one Redis
    /// round-trip.
    pub fn offline_bound(&self) -> Duration {
        self.node_ttl + self.reap_interval + self.op_timeout
    }
}

/// This node's own sessions, kept so they can be written again when Redis lost them
/// (a restart without persistence) or a reaper removed them (the claim had expired),
/// and the removals that failed (Redis unreachable), retried by the heartbeat so that
/// a session that ended during an outage does not stay online for ever.
#[derive(Default)]
struct Local {
    dir: HashSet<SessionEntry>,
    pres: HashSet<(UserId, SessionId)>,
    failed_unregister: HashSet<SessionEntry>,
    failed_offline: HashMap<(UserId, SessionId), Millis>,
}

/// State shared by the adapters and background tasks of one node.
pub(crate) struct Shared {
    pub node: NodeId,
    pub keys: Keys,
    pub con: ConnectionManager,
    client: redis::Client,
    opts: RedisOptions,
    token: String,
    shutdown_tx: watch::Sender<bool>,
    local: Mutex<Local>,
    /// Whether this instance holds its node id (false once another instance took it).
    claim_held: watch::Sender<bool>,
}

impl Shared {
    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn local_register(&self, e: &SessionEntry) {
        let mut l = self.local();
        l.failed_unregister.remove(e);
        l.dir.insert(e.clone());
    }

    pub fn local_register_failed(&self, e: &SessionEntry) {
        self.local().dir.remove(e);
    }

    pub fn local_unregister(&self, e: &SessionEntry) {
        self.local().dir.remove(e);
    }

    pub fn local_unregister_failed(&self, e: &SessionEntry) {
        self.local().failed_unregister.insert(e.clone());
    }

    pub fn local_online(&self, u: &UserId, s: &SessionId) {
        let key = (u.clone(), s.clone());
        let mut l = self.local();
        l.failed_offline.remove(&key);
        l.pres.insert(key);
    }

    pub fn local_online_failed(&self, u: &UserId, s: &SessionId) {
        self.local().pres.remove(&(u.clone(), s.clone()));
    }

    /// Whether the session was one of this node's.
    pub fn local_offline(&self, u: &UserId, s: &SessionId) -> bool {
        self.local().pres.remove(&(u.clone(), s.clone()))
    }

    pub fn local_offline_failed(&self, u: &UserId, s: &SessionId, last_seen: Millis) {
        self.local()
            .failed_offline
            .insert((u.clone(), s.clone()), last_seen);
    }

    /// Retries the removals that failed while Redis was unreachable.
    async fn retry_failed_removals(&self) -> Result<()> {
        let (unreg, offline) = {
            let mut l = self.local();
            (
                std::mem::take(&mut l.failed_unregister),
                std::mem::take(&mut l.failed_offline),
            )
        };
        // The first failure ends the pass: Redis is most likely still unreachable, and
        // trying the thousands of others one by one (each waiting up to op_timeout)
        // would hold the heartbeat, and a shutdown waiting for it, for as many
        // timeouts. What was not done stays queued for the next heartbeat.
        let mut unreg = unreg.into_iter();
        while let Some(e) = unreg.next() {
            if let Err(err) = adapters::unregister_entry(self, &e).await {
                let mut l = self.local();
                l.failed_unregister.insert(e);
                l.failed_unregister.extend(unreg);
                l.failed_offline.extend(offline);
                return Err(err);
            }
        }
        let mut offline = offline.into_iter();
        while let Some(((u, s), seen)) = offline.next() {
            if let Err(err) = adapters::set_offline(self, &u, &s, seen).await {
                let mut l = self.local();
                l.failed_offline.insert((u, s), seen);
                l.failed_offline.extend(offline);
                return Err(err);
            }
        }
        Ok(())
    }

    pub fn subscription(&self, channel: String) -> SubscriptionParams {
        SubscriptionParams {
            client: self.client.clone(),
            channel,
            capacity: self.opts.subscription_buffer,
            connect_timeout: self.opts.connect_timeout,
            op_timeout: self.opts.op_timeout,
            ping_interval: self.opts.heartbeat_interval,
            shutdown: self.shutdown_tx.subscribe(),
        }
    }

    /// Runs the claim script; see `scripts::CLAIM`.
    async fn claim(&self, mode: &str) -> Result<i64> {
        let mut con = self.con.clone();
        scripts::CLAIM
            .key(self.keys.node(self.node))
            .key(self.keys.nodes())
            .arg(&self.token)
            .arg(self.opts.node_ttl.as_millis() as u64)
            .arg(self.node.get())
            .arg(now_ms())
            .arg(mode)
            .invoke_async(&mut con)
            .await
            .map_err(|e| map("node claim", e))
    }

    /// Writes this node's sessions again (after Redis lost them). Entries removed
    /// locally while this ran are removed from Redis again afterwards.
    async fn resync(&self) -> Result<()> {
        let (dir, pres) = {
            let l = self.local();
            (
                l.dir.iter().cloned().collect::<Vec<_>>(),
                l.pres.iter().cloned().collect::<Vec<_>>(),
            )
        };
        for e in &dir {
            adapters::register_entry(self, e).await?;
        }
        for (u, s) in &pres {
            adapters::set_online(self, u, s, self.node).await?;
        }
        let (gone_dir, gone_pres) = {
            let l = self.local();
            (
                dir.into_iter()
                    .filter(|e| !l.dir.contains(e))
                    .collect::<Vec<_>>(),
                pres.into_iter()
                    .filter(|p| !l.pres.contains(p))
                    .collect::<Vec<_>>(),
            )
        };
        for e in &gone_dir {
            adapters::unregister_entry(self, e).await?;
        }
        for (u, s) in &gone_pres {
            adapters::set_offline(self, u, s, now_ms()).await?;
        }
        Ok(())
    }
}

/// Removes the sessions of `node` in batches; `token` empty: only if the node is dead.
/// Returns how many users went offline, or `None` if the node is alive.
async fn reap_node(
    con: &ConnectionManager,
    keys: &Keys,
    node: NodeId,
    token: &str,
    batch: usize,
) -> Result<Option<u64>> {
    let mut con = con.clone();
    let mut total = 0u64;
    loop {
        let (n, left): (i64, i64) = scripts::REAP
            .key(keys.node(node))
            .key(keys.nodes())
            .key(keys.pres_node(node))
            .key(keys.dir_node(node))
            .arg(node.get())
            .arg(keys.prefix())
            .arg(keys.presence_channel())
            .arg(now_ms())
            .arg(batch)
            .arg(token)
            .invoke_async(&mut con)
            .await
            .map_err(|e| map("reap node", e))?;
        if n < 0 {
            return Ok(None);
        }
        total += n as u64;
        if left == 0 {
            return Ok(Some(total));
        }
    }
}

/// One node's connection to the cluster's Redis: the claimed node id, the background
/// heartbeat and reaper, and the three adapters.
///
/// The node stays alive (heartbeat running, streams open) while this value or any
/// adapter it handed out is alive. When the last one is dropped without
/// [`shutdown`](Self::shutdown), the background tasks and streams stop without
/// cleaning up, like a crash: the other nodes reap this node after `node_ttl`.
pub struct RedisCluster {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl RedisCluster {
    /// Connects to `url` (`redis://127.0.0.1:6379/0`), claims `node`, removes what a
    /// dead previous holder of `node` left behind, and starts the heartbeat and reaper
    /// tasks. Must be called inside a Tokio runtime.
    ///
    /// Errors: `bad_request` for invalid options or URL; `unavailable` if Redis cannot
    /// be reached; `conflict` if another live instance holds `node` (the message says
    /// so: the server should exit; a dead holder's claim expires after `node_ttl`).
    pub async fn connect(url: &str, node: NodeId, options: RedisOptions) -> Result<RedisCluster> {
        options.validate()?;
        let client = redis::Client::open(url)
            .map_err(|e| Error::bad_request(format!("invalid redis url {url:?}")).with_source(e))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = match tokio::time::timeout(
            options.connect_timeout * 2,
            ConnectionManager::new_with_config(client.clone(), cfg),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(map(&format!("connect to {url}"), e)),
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "redis: connect to {url} timed out"
                )))
            }
        };
        let keys = Keys::new(&options.key_prefix);
        let (shutdown_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            node,
            keys,
            con,
            client,
            token: make_token(node),
            opts: options,
            shutdown_tx,
            local: Mutex::new(Local::default()),
            claim_held: watch::Sender::new(false),
        });
        // A previous holder of this id that died leaves sessions behind that no
        // reaper may have removed yet (a lone node restarting): remove them first.
        if let Some(n) =
            reap_node(&shared.con, &shared.keys, node, "", shared.opts.reap_batch).await?
        {
            if n > 0 {
                tracing::info!(%node, users_offline = n, "removed sessions of this node id's dead previous instance");
            }
        }
        if shared.claim("claim").await? != 2 {
            let mut con = shared.con.clone();
            let holder: Option<String> = redis::cmd("GET")
                .arg(shared.keys.node(node))
                .query_async(&mut con)
                .await
                .unwrap_or(None);
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "node id {node} is already claimed by another live instance ({}); \
                     two nodes must not share an id. If that instance is dead, its claim \
                     expires within {:?}",
                    holder.as_deref().unwrap_or("unknown"),
                    shared.opts.node_ttl
                ),
            ));
        }
        shared.claim_held.send_replace(true);
        tracing::info!(%node, token = %shared.token, "claimed node id in redis");
        let tasks = vec![
            tokio::spawn(heartbeat(
                Arc::downgrade(&shared),
                shared.shutdown_tx.subscribe(),
                shared.opts.heartbeat_interval,
            )),
            tokio::spawn(reaper(
                Arc::downgrade(&shared),
                shared.shutdown_tx.subscribe(),
                shared.opts.reap_interval,
            )),
        ];
        Ok(RedisCluster { shared, tasks })
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// Whether this instance still holds its node id: false after the heartbeat found
    /// another instance holding it (for health checks).
    pub fn claim_held(&self) -> bool {
        *self.shared.claim_held.borrow()
    }

    /// A receiver of [`claim_held`](Self::claim_held): it turns false when another
    /// instance takes this node's id (for a server that waits on it without holding
    /// the cluster).
    pub fn claim_receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.claim_held.subscribe()
    }

    /// Resolves when this instance loses its node id to another instance (two nodes
    /// were started with one id, or this one stalled past `node_ttl` and a new one took
    /// the id). A server should stop then: its sessions are no longer its own in Redis.
    pub async fn lost_claim(&self) {
        let mut rx = self.shared.claim_held.subscribe();
        let _ = rx.wait_for(|held| !held).await;
    }

    /// The [`SessionDirectory`].
    pub fn directory(&self) -> Arc<dyn SessionDirectory> {
        Arc::new(RedisSessionDirectory {
            shared: self.shared.clone(),
        })
    }

    /// The [`Presence`].
    pub fn presence(&self) -> Arc<dyn Presence> {
        Arc::new(RedisPresence {
            shared: self.shared.clone(),
        })
    }

    /// The [`Relay`].
    pub fn relay(&self) -> Arc<dyn Relay> {
        Arc::new(RedisRelay {
            shared: self.shared.clone(),
        })
    }

    /// `relay` (another transport, for example Kafka's) with [`Relay::nodes`] answered
    /// from this Redis when `relay` cannot list its nodes: the nodes whose claim is live
    /// (see [`LiveNodesRelay`]). Large threads then cost one envelope per live node
    /// instead of a directory lookup of every member.
    pub fn relay_with_live_nodes(&self, relay: Arc<dyn Relay>) -> Arc<dyn Relay> {
        Arc::new(LiveNodesRelay {
            inner: relay,
            shared: self.shared.clone(),
        })
    }

    /// The nodes whose claim is live in Redis right now: their liveness key has not
    /// expired (it is refreshed every heartbeat and expires `node_ttl` after the last
    /// one, on Redis's clock). This node is among them while it holds its id.
    pub async fn live_nodes(&self) -> Result<Vec<NodeId>> {
        adapters::live_nodes(&self.shared).await
    }

    /// Clean shutdown: stops the background tasks and every stream from this cluster,
    /// removes this node's sessions (their users go offline now, with an event, unless
    /// they have sessions elsewhere) and releases the node id so it can be claimed at
    /// once.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.shared.shutdown_tx.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let sh = &self.shared;
        reap_node(&sh.con, &sh.keys, sh.node, &sh.token, sh.opts.reap_batch).await?;
        let mut con = sh.con.clone();
        scripts::RELEASE
            .key(sh.keys.node(sh.node))
            .key(sh.keys.nodes())
            .arg(&sh.token)
            .arg(sh.node.get())
            .invoke_async::<i64>(&mut con)
            .await
            .map_err(|e| map("release node id", e))?;
        Ok(())
    }

    /// Stops everything at once without touching Redis, as if the process had been
    /// killed with SIGKILL: for tests and failure drills. Other nodes reap this node
    /// after `node_ttl`.
    pub fn abandon(mut self) {
        let _ = self.shared.shutdown_tx.send(true);
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
        }
    }
}

fn make_token(node: NodeId) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("n{node}-p{}-{:016x}", std::process::id(), h.finish())
}

async fn heartbeat(sh: Weak<Shared>, mut shutdown: watch::Receiver<bool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut need_resync = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(sh) = sh.upgrade() else { return };
        // A shutdown does not wait for a pass that is stuck on an unreachable Redis:
        // the shutdown removes this node's sessions in one go anyway.
        tokio::select! {
            _ = heartbeat_pass(&sh, &mut need_resync) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One heartbeat: refresh the claim, retry failed removals, re-register after a loss.
async fn heartbeat_pass(sh: &Shared, need_resync: &mut bool) {
    match sh.claim("refresh").await {
        Ok(1) => {
            if !sh.claim_held.send_replace(true) {
                tracing::info!(node = %sh.node, "node id claim held again");
            }
        }
        Ok(2) => {
            tracing::warn!(node = %sh.node,
                "node id claim had expired (redis restarted or heartbeats were missed); \
                 re-claimed it and re-registering this node's sessions");
            sh.claim_held.send_replace(true);
            *need_resync = true;
        }
        Ok(_) => {
            if sh.claim_held.send_replace(false) {
                tracing::error!(node = %sh.node,
                    "node id is now claimed by another instance: two nodes run with one id; \
                     this node's sessions will be reaped");
            }
            *need_resync = false;
        }
        Err(e) => tracing::warn!(node = %sh.node, error = %e, "heartbeat failed"),
    }
    if let Err(e) = sh.retry_failed_removals().await {
        tracing::debug!(node = %sh.node, error = %e, "retrying failed removals failed");
    }
    if *need_resync {
        match sh.resync().await {
            Ok(()) => *need_resync = false,
            Err(e) => {
                tracing::warn!(node = %sh.node, error = %e, "re-registering sessions failed; retrying")
            }
        }
    }
}

async fn reaper(sh: Weak<Shared>, mut shutdown: watch::Receiver<bool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(sh) = sh.upgrade() else { return };
        if let Err(e) = reap_dead(&sh).await {
            tracing::debug!(node = %sh.node, error = %e, "reaper pass failed");
        }
    }
}

/// One reaper pass: every registered node whose claim has expired is reaped.
async fn reap_dead(sh: &Shared) -> Result<()> {
    let mut con = sh.con.clone();
    let nodes: Vec<String> = redis::cmd("HKEYS")
        .arg(sh.keys.nodes())
        .query_async(&mut con)
        .await
        .map_err(|e| map("list nodes", e))?;
    let nodes: Vec<NodeId> = nodes
        .iter()
        .filter_map(|n| n.parse::<u16>().ok().and_then(|n| NodeId::new(n).ok()))
        .collect();
    if nodes.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for n in &nodes {
        pipe.exists(sh.keys.node(*n));
    }
    let alive: Vec<bool> = pipe
        .query_async(&mut con)
        .await
        .map_err(|e| map("node liveness", e))?;
    for (n, a) in nodes.into_iter().zip(alive) {
        if a {
            continue;
        }
        if let Some(users) = reap_node(&sh.con, &sh.keys, n, "", sh.opts.reap_batch).await? {
            tracing::info!(reaper = %sh.node, dead_node = %n, users_offline = users,
                "reaped a dead node");
        }
    }
    Ok(())
}
