//! [`SessionDirectory`](messenger_core::SessionDirectory),
//! [`Presence`](messenger_core::Presence) and the cross-node
//! [`Relay`](messenger_core::Relay) of messenger on a real Redis, for a fleet of
//! server nodes behind a load balancer.
//!
//! # Use
//!
//! ```no_run
//! # async fn run() -> messenger_core::Result<()> {
//! use messenger_core::NodeId;
//! use messenger_redis::{RedisCluster, RedisOptions};
//!
//! let node = NodeId::new(3).expect("node id");
//! // Claims node id 3 (refused with `conflict` if another live node holds it) and
//! // starts the heartbeat and the reaper.
//! let cluster = RedisCluster::connect("redis://127.0.0.1:6379/", node, RedisOptions::default()).await?;
//! let (directory, presence, relay) = (cluster.directory(), cluster.presence(), cluster.relay());
//! // ... hand them to the engine (`messenger_core::engine::Adapters`) ...
//! # let _ = (directory, presence, relay);
//! cluster.shutdown().await?; // users of this node go offline now; the id is released
//! # Ok(()) }
//! ```
//!
//! # Nodes, heartbeat and reaper
//!
//! Every node claims its id with `SET {p}:node:{id} <token> NX PX node_ttl` and a
//! heartbeat task refreshes it every `heartbeat_interval` (a Lua script that only
//! extends the key while it still holds this instance's token). A second live node with
//! the same id is refused at [`RedisCluster::connect`]; a dead one's claim expires after
//! `node_ttl`, so a restarted node gets its id back after at most that long (or at once
//! after a clean [`RedisCluster::shutdown`]).
//!
//! Every node also runs a reaper every `reap_interval`: for each node in the registry
//! whose claim has expired, a Lua script removes that node's directory entries and
//! presence sessions in batches and, for every user left with no session, records
//! `last_seen` (the dead node's last heartbeat) and publishes `offline`. The script
//! checks the claim again and pops the per-node index atomically, so any number of
//! concurrent reapers publish each transition exactly once and miss none. A user whose
//! only node was killed is reported offline at most
//! [`RedisOptions::offline_bound`] (`node_ttl + reap_interval` + one command, 20 s
//! with the defaults) after that node's last heartbeat. Directory lookups also skip
//! entries of nodes whose claim has expired, so a killed node's sessions stop being
//! returned after `node_ttl` even before a reaper has run.
//! [`Presence::get`](messenger_core::Presence::get) reads the same state the events come
//! from, so it agrees with them: a killed node's users read as online until reaped.
//!
//! # Key layout
//!
//! `{p}` is [`RedisOptions::key_prefix`] (default `messenger`). By protocol v1's
//! character sets user ids contain no `:` and no id contains a space, so every key
//! and `"user session"` member below is unambiguous.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:node:{node}` | string, PX `node_ttl` | the claim: the holding instance's token |
//! | `{p}:nodes` | hash | node id -> last heartbeat (Unix ms): what reapers scan |
//! | `{p}:dir:{user}` | hash | session id -> node id: the session directory |
//! | `{p}:dir-node:{node}` | set | `"user session"` registered by that node, for cleanup |
//! | `{p}:pres:{user}` | hash | session id -> node id of the sessions keeping the user online |
//! | `{p}:pres-node:{node}` | set | `"user session"` counted online through that node |
//! | `{p}:seen:{user}` | string | last_seen (Unix ms) once the user went offline |
//! | `{p}:presence` | pub/sub channel | change events, JSON `{"user_id","status","last_seen"}` |
//! | `{p}:relay:{node}` | pub/sub channel | envelopes for that node, JSON ([`Envelope`](messenger_core::model::Envelope)) |
//!
//! Presence sessions are kept apart from directory entries because their lifecycles
//! differ: the engine unregisters a session at once but counts it towards presence
//! until the grace period ends. A user is online while `{p}:pres:{user}` is not empty;
//! the online/offline transitions run as Lua scripts that also `PUBLISH` the event, so
//! the state and the event can never disagree. Some scripts build key names from
//! values they read, which Redis Cluster forbids: this crate needs a single Redis
//! (optionally with replicas and Sentinel for failover).
//!
//! # Relay: pub/sub, not streams
//!
//! The relay is live fan-out of frames to sessions connected right now; durability and
//! order come from the message store (gapless per-thread seqs) and client catch-up, and
//! the engine reorders by `(thread, seq)`. Pub/sub fits: one `PUBLISH` per remote node
//! and event, no per-message storage, no trimming, no consumer-group bookkeeping, and
//! nothing piles up for a dead node. Streams would add a write and memory per envelope
//! and replay after a reconnect, which the system does not need (a node that was
//! disconnected has lost its WebSocket sessions too; they catch up from history).
//! `send` to a node nobody listens on succeeds, as the trait says (best effort).
//! [`Relay::nodes`](messenger_core::Relay::nodes) is one `PUBSUB CHANNELS {p}:relay:*`:
//! the nodes subscribed right now, which the engine sends a large group's messages to
//! (one envelope per node, no lookup per member). Another relay that cannot list its
//! nodes (Kafka's) gets that list from here through
//! [`RedisCluster::relay_with_live_nodes`]: the nodes whose claim is live.
//!
//! # Failure behaviour
//!
//! * **Errors.** Redis I/O, connection, timeout and busy/loading/read-only errors
//!   become `ErrorKind::Unavailable` (transient, [`Error::is_transient`]); anything
//!   else (an unexpected reply, a corrupt record) is `Internal`. A bad URL or bad
//!   options are `BadRequest`; a node id held by another live instance is `Conflict`.
//!   Every command has a timeout ([`RedisOptions::op_timeout`]).
//! * **Redis down or restarted.** Calls fail with `unavailable` while it is down; the
//!   redis-rs connection manager reconnects by itself and the same adapters work again.
//!   Subscriptions ([`Presence::changes`](messenger_core::Presence::changes),
//!   [`Relay::subscribe`](messenger_core::Relay::subscribe)) detect the loss (the
//!   connection closes or a periodic PING fails), log a WARN, resubscribe with backoff
//!   and log the length of the gap: messages published during a gap are lost (pub/sub
//!   has no replay), never silently. A Redis restarted without persistence comes back
//!   empty: the heartbeat finds its claim gone, claims it again and writes this node's
//!   live sessions back (directory and presence), so within one `heartbeat_interval`
//!   lookups and presence are right again.
//! * **Writes that fail.** A failed register or set_online is forgotten locally (the
//!   engine refuses the connection); a failed unregister or set_offline is retried by
//!   the heartbeat until it succeeds, so a session that ended during an outage does not
//!   stay online.
//! * **Slow subscribers.** Each stream has a bounded buffer
//!   ([`RedisOptions::subscription_buffer`]); when it is full, reading from Redis
//!   pauses. Redis then buffers for that connection and past its
//!   `client-output-buffer-limit pubsub` disconnects it, which shows up as a logged gap.
//!   Other nodes are never blocked.
//! * **Node lifecycle.** [`RedisCluster::shutdown`] removes this node's sessions
//!   (offline events for users with no other session) and releases the id.
//!   [`RedisCluster::abandon`] (and dropping every handle) stops without cleanup, like
//!   SIGKILL; the reapers take over after `node_ttl`. If the heartbeat finds the id held
//!   by another instance it logs an ERROR and [`RedisCluster::claim_held`] turns false.
//!
//! [`Error::is_transient`]: messenger_core::Error::is_transient

mod adapters;
mod error;
mod keys;
mod node;
mod scripts;
mod subscribe;

pub use adapters::{LiveNodesRelay, RedisPresence, RedisRelay, RedisSessionDirectory};
pub use node::{RedisCluster, RedisOptions};
