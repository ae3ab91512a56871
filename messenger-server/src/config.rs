//! The library's settings: one serde struct per concern.
//!
//! [`ServerConfig::default`] gives the documented defaults; an embedder builds it in code
//! (`let mut c = ServerConfig::default(); c.limits.max_frame_bytes = 32 * 1024;`) or
//! deserializes it from their own configuration (every section is `serde`, durations are
//! humantime strings such as `"15s"` or `"500ms"`, unknown keys are refused). The
//! `messenger-server` binary layers it from a TOML file, the environment and flags, with
//! its own binary-only settings beside it (see `docs/operations.md`).
//!
//! | section | struct | what |
//! |---|---|---|
//! | top level | [`ServerConfig`] | `node_id` |
//! | `[auth]` | [`AuthConfig`] | dev auth or JWT ([`JwtConfig`]) |
//! | `[limits]` | [`Limits`] | connections, frame and text sizes, queues, rate limit |
//! | `[websocket]` | [`WebSocketSettings`] | heartbeats, timeouts, buffers, drain |
//! | `[presence]` | [`PresenceSettings`] | grace period |
//! | `[redis]` | [`RedisSettings`] | cluster mode: sessions, presence, relay on Redis |
//! | `[hbase]` | [`HBaseSettings`] | messages and threads on HBase |
//! | `[store]` | [`StoreSettings`] | the embedded store (memory or SQLite) when HBase is not set |
//! | `[kafka]` | [`KafkaSettings`] | the event log and the Kafka relay |
//! | `[push]` | [`PushSettings`] (feature `push`) | APNs, FCM, Web Push, the push webhook: `messenger_push::settings`, shared with messenger-worker |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use messenger_core::NodeId;
use serde::{Deserialize, Serialize};

#[cfg(feature = "push")]
pub use messenger_push::settings::{
    ApnsSettings, FcmSettings, PushSettings, WebPushSettings, WebhookSettings,
};
#[cfg(feature = "push")]
pub use messenger_push::Privacy as PushPrivacy;

/// Everything the server needs besides its adapters and its listener.
///
/// Cluster mode: with `redis.url` set (feature `redis`) the builder connects to Redis and
/// uses it for the session directory, presence and the relay; with `hbase.address` set
/// (feature `hbase`) it uses HBase for the message and thread stores. Adapters given to
/// the builder explicitly win over both. `node_id` must then be unique per process:
/// Redis refuses a second live node with the same id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// This node's id (0..=1023): the Snowflake node field and the relay address.
    /// Default 0; required (explicitly) with Redis.
    pub node_id: NodeId,
    /// Token verification by the built-in authenticators (unless the builder is given
    /// its own [`Authenticator`](crate::auth::Authenticator)).
    pub auth: AuthConfig,
    /// Sizes, queues and rates.
    pub limits: Limits,
    /// Per-connection WebSocket behaviour.
    pub websocket: WebSocketSettings,
    /// Presence.
    pub presence: PresenceSettings,
    /// Redis (cluster mode).
    pub redis: RedisSettings,
    /// HBase stores.
    pub hbase: HBaseSettings,
    /// The embedded message and thread store (when `hbase.address` is not set).
    pub store: StoreSettings,
    /// Kafka: the event log and, in cluster mode, the relay.
    pub kafka: KafkaSettings,
    /// Push notifications through APNs, FCM, Web Push and the push webhook (feature
    /// `push`; the sections are [`messenger_push::settings`], shared with
    /// messenger-worker). Without the feature a `[push]` section is an unknown key.
    #[cfg(feature = "push")]
    pub push: PushSettings,
}

/// `[auth]`: the built-in authenticators. JWT when `jwt` has a key source (a secret, a
/// PEM file, a JWKS file or URL), dev auth (the token is the user id) otherwise.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Allow dev auth on a non-loopback address (and from non-loopback peers). Never in
    /// production. Default false.
    pub insecure_dev_auth: bool,
    /// JWT verification; `None` means dev auth.
    pub jwt: Option<JwtConfig>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("insecure_dev_auth", &self.insecure_dev_auth)
            .field("jwt", &self.jwt)
            .finish()
    }
}

impl AuthConfig {
    /// Whether the built-in authenticator is dev auth (no JWT key source).
    pub fn is_dev(&self) -> bool {
        self.jwt.as_ref().is_none_or(|j| !j.has_key_source())
    }
}

/// `[auth.jwt]`: JWTs (`sub` = user id, `exp` required) on `jsonwebtoken`.
///
/// Exactly one key source: `secret` / `secret_file` (HS256), `public_key_file` (a PEM
/// RSA, EC P-256 or Ed25519 public key: RS256, ES256 or EdDSA), `jwks_file` or
/// `jwks_url` (a JSON Web Key Set, keys picked by `kid`, refreshed every
/// `jwks_refresh`). See `docs/protocol.md` for the token shapes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The HS256 shared secret itself (the binary reads it from `MESSENGER_JWT_SECRET`).
    /// Never serialized.
    #[serde(skip_serializing)]
    pub secret: Option<String>,
    /// A file holding the HS256 secret (a trailing newline is trimmed).
    pub secret_file: Option<PathBuf>,
    /// A PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document on disk, re-read every `jwks_refresh`.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`https://issuer/.well-known/jwks.json`), fetched every
    /// `jwks_refresh` and when a token names an unknown `kid` (feature `jwks-url`).
    pub jwks_url: Option<String>,
    /// How often a JWKS is reloaded. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Accepted `aud` values; when non-empty a token must carry one of them.
    pub audience: Vec<String>,
    /// Accepted `iss` values; when non-empty a token must carry one of them.
    pub issuer: Vec<String>,
    /// Clock leeway on `exp` and `nbf`. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_refresh", &self.jwks_refresh)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl JwtConfig {
    /// HS256 with this secret and the default leeway.
    pub fn hs256(secret: impl Into<String>) -> Self {
        JwtConfig {
            secret: Some(secret.into()),
            ..JwtConfig::default()
        }
    }

    fn sources(&self) -> usize {
        [
            self.secret.as_ref().is_some_and(|s| !s.is_empty()),
            self.secret_file.is_some(),
            self.public_key_file.is_some(),
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// Whether a key source is configured.
    pub fn has_key_source(&self) -> bool {
        self.sources() > 0
    }
}

/// `[limits]`: sizes, queues and rates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// Most concurrent connections accepted by [`Server::serve`](crate::Server). Default
    /// 10 000.
    pub max_connections: usize,
    /// Largest incoming WebSocket frame or message in bytes; over it the connection is
    /// closed with 1009. Default 64 KiB.
    pub max_frame_bytes: usize,
    /// Longest message `text` in UTF-8 bytes (`too_large` over it). Default 16 KiB.
    pub max_text_bytes: usize,
    /// Frames a session's outbound queue holds before it is closed as a slow consumer
    /// (close code 4000). Default 1024.
    pub outbound_queue: usize,
    /// Sustained client frames per second per session. Default 50. Frames over it are
    /// paced (read when a token is due), never refused.
    pub rate_limit_per_sec: u32,
    /// Burst of client frames per session above the sustained rate. Default 100.
    pub rate_limit_burst: u32,
    /// Most request header fields accepted by [`Server::serve`](crate::Server). Default 128.
    pub max_headers: usize,
    /// Largest request head (request line and headers) in bytes accepted by
    /// [`Server::serve`](crate::Server). Default 64 KiB.
    pub max_head_bytes: usize,
    /// Most WebSocket sessions one user may hold on this node at once. Over it the new
    /// upgrade is refused with `429 Too Many Requests` (the sessions already open are
    /// left alone; a dead one frees its slot within two ping intervals). Default 16.
    pub max_sessions_per_user: usize,
    /// Sustained connection attempts per second from one source address accepted by
    /// [`Server::serve`](crate::Server); over it the connection is answered `429` and
    /// closed. 0 turns the limit off. Default 50.
    pub connect_rate_per_sec: u32,
    /// Burst of connection attempts per source address above the sustained rate.
    /// Default 100.
    pub connect_rate_burst: u32,
    /// Whether the connection rate applies to loopback peers too. Off by default: a
    /// reverse proxy on the same host (HAProxy, nginx) is one loopback address for
    /// every client, so its limit belongs in the proxy. Default false.
    pub connect_rate_loopback: bool,
    /// Threads (`create_thread`) one user may create per minute on this node, as a
    /// burst of this many refilled evenly over the minute; over it `rate_limited`.
    /// Default 30.
    pub threads_per_minute: u32,
    /// Most members in a group (`create_thread`, `add_members`); over it `bad_request`.
    /// Default 10 000.
    pub max_group_members: usize,
    /// Most user ids in one `add_members` request; over it `too_large`. Default 100.
    pub max_add_members: usize,
    /// Most users one session may watch with `presence_subscribe`; over it `too_large`
    /// and nothing of the request is subscribed. Default 1000.
    pub max_presence_subscriptions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_frame_bytes: 64 * 1024,
            max_text_bytes: 16 * 1024,
            outbound_queue: 1024,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            max_headers: 128,
            max_head_bytes: 64 * 1024,
            max_sessions_per_user: 16,
            connect_rate_per_sec: 50,
            connect_rate_burst: 100,
            connect_rate_loopback: false,
            threads_per_minute: 30,
            max_group_members: 10_000,
            max_add_members: 100,
            max_presence_subscriptions: 1000,
        }
    }
}

/// `[websocket]`: heartbeats, timeouts and per-connection buffers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WebSocketSettings {
    /// Interval between server pings. A peer silent for two intervals is dead. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Time allowed to send a complete HTTP request head. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Longest a batch of writes may block before the peer counts as a slow consumer.
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// On shutdown, how long sessions get to close before they are dropped. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Bytes read from a session's socket at a time. The buffer exists only while data is
    /// in flight (an idle connection holds none) and is not a cap: larger frames still
    /// arrive whole. [`Server::websocket_config`](crate::Server::websocket_config), for
    /// embedders who upgrade themselves, uses it as tungstenite's read buffer. Default
    /// 1 KiB (docs/benchmarks.md).
    pub read_buffer_bytes: usize,
    /// Bytes buffered before tungstenite writes to the socket (its default is 128 KiB);
    /// a flush always writes everything. Default 1 KiB.
    pub write_buffer_bytes: usize,
    /// Origins (`scheme://host[:port]`, compared without regard to case) allowed to
    /// open `/ws` from a browser. Empty (the default) allows any. When set, an upgrade
    /// whose `Origin` header is not in the list is refused with `403`; a request
    /// without `Origin` (native apps, servers) is allowed.
    pub allowed_origins: Vec<String>,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        WebSocketSettings {
            ping_interval: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            read_buffer_bytes: 1024,
            write_buffer_bytes: 1024,
            allowed_origins: Vec::new(),
        }
    }
}

/// `[presence]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PresenceSettings {
    /// How long a user stays online after the last session ends. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            grace: Duration::from_secs(3),
        }
    }
}

/// `[redis]`: cluster mode.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisSettings {
    /// Redis URL (`redis://host:port/db`): puts the session directory, presence and the
    /// cross-node relay on Redis. Default none: in memory.
    pub url: Option<String>,
    /// Prefix of every Redis key and channel; clusters sharing one Redis need different
    /// prefixes. Default `messenger`.
    pub key_prefix: String,
    /// How long this node's claim on its id lives in Redis without a heartbeat. A killed
    /// node's users go offline within about `4/3 * node_ttl + 2 s`; a crashed node's id
    /// can be claimed again after this long. Heartbeat and reaper run every third of it.
    /// Default 15 s.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// Send each message to a large group (more than `push.large_group_threshold`
    /// members) as one envelope per node, which each node resolves to its own sessions
    /// of the members, instead of looking up every member in Redis. Default true. Set
    /// it to false while upgrading a cluster from a version before it (those nodes
    /// cannot decode the envelope); see `docs/architecture.md`.
    pub large_group_relay: bool,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url.as_deref().map(crate::cluster::redact))
            .field("key_prefix", &self.key_prefix)
            .field("node_ttl", &self.node_ttl)
            .field("large_group_relay", &self.large_group_relay)
            .finish()
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            key_prefix: "messenger".into(),
            node_ttl: Duration::from_secs(15),
            large_group_relay: true,
        }
    }
}

/// `[hbase]`: the message and thread stores on HBase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HBaseSettings {
    /// Thrift2 gateway `host:port`. Default none: in memory.
    pub address: Option<String>,
    /// Prefix of the HBase table names. Default `messenger_`.
    pub table_prefix: String,
    /// Most concurrent Thrift connections to the gateway. Default 32 (each thread with
    /// sends in flight holds one for its seq claim; reads and bookkeeping share
    /// coalesced multi-row calls).
    pub pool_size: usize,
    /// Keep large threads' member lists in memory, validated on every read by the
    /// list's cell timestamp (`docs/hbase-schema.md`, "Member cache"). Default true;
    /// turn it off while nodes of an older version still change memberships.
    pub member_cache: bool,
}

impl Default for HBaseSettings {
    fn default() -> Self {
        HBaseSettings {
            address: None,
            table_prefix: "messenger_".into(),
            pool_size: 32,
            member_cache: true,
        }
    }
}

/// Which embedded store keeps messages and threads when `hbase.address` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StoreKind {
    /// In memory: everything is lost when the process stops (tests, demos). The
    /// library's default.
    #[default]
    Memory,
    /// SQLite in `data_dir` (feature `sqlite`): durable, one process per directory. The
    /// binary's default.
    Sqlite,
}

impl StoreKind {
    /// The configuration name (`memory`, `sqlite`).
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
        }
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(StoreKind::Memory),
            "sqlite" => Ok(StoreKind::Sqlite),
            _ => Err(format!(
                "unknown store {s:?}: use `sqlite` (durable, in the data directory) or \
                 `memory` (lost when the process stops)"
            )),
        }
    }
}

/// How durable a write is before `message_sent` (the SQLite store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SyncMode {
    /// Every commit is fsynced before the server answers: an acknowledged message
    /// survives a killed process, an OS crash and power loss.
    #[default]
    Full,
    /// Every commit reaches the OS before the server answers and is fsynced at
    /// checkpoints: an acknowledged message survives a killed process; an OS crash or
    /// power loss may lose the last moments (never corrupts the store).
    Normal,
}

impl SyncMode {
    /// The configuration name (`full`, `normal`).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Full => "full",
            SyncMode::Normal => "normal",
        }
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(SyncMode::Full),
            "normal" => Ok(SyncMode::Normal),
            _ => Err(format!(
                "unknown sync mode {s:?}: use `full` (survives power loss) or `normal` \
                 (survives a killed process)"
            )),
        }
    }
}

/// `[store]`: the embedded message and thread store, used when `hbase.address` is not
/// set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreSettings {
    /// `memory` or `sqlite`. Default `memory` for the library; the binary's default is
    /// `sqlite`.
    pub kind: StoreKind,
    /// The SQLite store's data directory (created if missing; one process at a time).
    /// Default `messenger-data` (relative to the working directory).
    pub data_dir: PathBuf,
    /// `full` or `normal` (see [`SyncMode`]). Default `full`.
    pub sync: SyncMode,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            kind: StoreKind::Memory,
            data_dir: PathBuf::from("messenger-data"),
            sync: SyncMode::Full,
        }
    }
}

/// `[kafka]` (feature `kafka`): the event log for `messenger-worker` and, with Redis,
/// the cross-node relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaSettings {
    /// Bootstrap brokers `host:port[,host:port]`: the engine's event log (messages,
    /// receipts, membership) is produced to Kafka. Default none: no event log.
    pub brokers: Option<String>,
    /// Cross-node relay in cluster mode: `kafka` (the default when `brokers` is set) or
    /// `redis` (pub/sub).
    pub relay: Option<String>,
    /// Extra librdkafka properties for every Kafka client (`security.protocol`,
    /// `sasl.*`, `ssl.*`, tuning). Default none.
    pub properties: std::collections::BTreeMap<String, String>,
    /// Events kept in memory while Kafka is slow or down before the oldest are shed.
    /// Default 100 000.
    pub event_buffer: usize,
    /// Most events of one thread per event log record (newline-separated; default
    /// 100). 1: one event per record, for consumers older than this format
    /// (`docs/webhooks.md`, "The event log on Kafka").
    pub event_batch: usize,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: None,
            relay: None,
            properties: Default::default(),
            event_buffer: 100_000,
            event_batch: 100,
        }
    }
}

impl KafkaSettings {
    /// Whether cross-node envelopes go over Kafka (brokers set, relay not `redis`).
    pub fn relays(&self) -> bool {
        self.brokers.is_some() && self.relay.as_deref() != Some("redis")
    }
}

/// A configuration the server refuses to run with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Dev auth on a non-loopback address without the insecure flag.
    #[error(
        "refusing dev auth (token = user id) on non-loopback address {0}: configure JWT \
         (MESSENGER_JWT_SECRET, --jwt-secret-file, --jwt-public-key, --jwks-file or \
         --jwks-url) or pass --insecure-dev-auth"
    )]
    InsecureDevAuth(SocketAddr),
    /// A value is out of range or unreadable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Checks the values (ranges, one JWT key source). The listen address is checked
    /// separately by [`ServerConfig::check_listen`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.get() > NodeId::MAX {
            return Err(ConfigError::Invalid(format!(
                "node_id {} is above {}",
                self.node_id,
                NodeId::MAX
            )));
        }
        if let Some(j) = &self.auth.jwt {
            if j.sources() > 1 {
                return Err(ConfigError::Invalid(
                    "auth.jwt: give exactly one key source (secret, secret_file, \
                     public_key_file, jwks_file or jwks_url)"
                        .into(),
                ));
            }
            if j.secret.as_deref() == Some("") {
                return Err(ConfigError::Invalid("the JWT secret is empty".into()));
            }
        }
        let l = &self.limits;
        let w = &self.websocket;
        let positive = [
            ("limits.max_connections", l.max_connections),
            ("limits.max_frame_bytes", l.max_frame_bytes),
            ("limits.max_text_bytes", l.max_text_bytes),
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.rate_limit_per_sec", l.rate_limit_per_sec as usize),
            ("limits.rate_limit_burst", l.rate_limit_burst as usize),
            ("limits.max_headers", l.max_headers),
            ("limits.max_head_bytes", l.max_head_bytes),
            ("limits.max_sessions_per_user", l.max_sessions_per_user),
            ("limits.connect_rate_burst", l.connect_rate_burst as usize),
            ("limits.threads_per_minute", l.threads_per_minute as usize),
            ("limits.max_group_members", l.max_group_members),
            ("limits.max_add_members", l.max_add_members),
            (
                "limits.max_presence_subscriptions",
                l.max_presence_subscriptions,
            ),
            ("websocket.read_buffer_bytes", w.read_buffer_bytes),
            ("hbase.pool_size", self.hbase.pool_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if l.max_head_bytes < 8192 {
            return Err(ConfigError::Invalid(
                "limits.max_head_bytes must be at least 8192".into(),
            ));
        }
        if let Some(o) = w
            .allowed_origins
            .iter()
            .find(|o| !crate::limits::valid_origin(o))
        {
            return Err(ConfigError::Invalid(format!(
                "websocket.allowed_origins: {o:?} is not an origin: write scheme://host[:port] \
                 (no path, no trailing slash)"
            )));
        }
        if self.redis.node_ttl < Duration::from_millis(300) {
            return Err(ConfigError::Invalid(
                "redis.node_ttl must be at least 300ms".into(),
            ));
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid(
                "redis.key_prefix must be non-empty and without spaces".into(),
            ));
        }
        match (self.kafka.relay.as_deref(), &self.kafka.brokers) {
            (None | Some("redis"), _) | (Some("kafka"), Some(_)) => {}
            (Some("kafka"), None) => {
                return Err(ConfigError::Invalid(
                    "kafka.relay = kafka (--relay kafka) needs kafka.brokers (--kafka)".into(),
                ))
            }
            (Some(other), _) => {
                return Err(ConfigError::Invalid(format!(
                    "kafka.relay is {other:?}: use `kafka` or `redis`"
                )))
            }
        }
        if self.kafka.event_buffer == 0 {
            return Err(ConfigError::Invalid(
                "kafka.event_buffer must be at least 1".into(),
            ));
        }
        if self.kafka.event_batch == 0 {
            return Err(ConfigError::Invalid(
                "kafka.event_batch must be at least 1 (1: one event per record)".into(),
            ));
        }
        if self.store.kind == StoreKind::Sqlite
            && self.redis.url.is_some()
            && self.hbase.address.is_none()
        {
            return Err(ConfigError::Invalid(
                "cluster mode (redis.url, --redis) with the SQLite store would give every node \
                 a history of its own: put messages and threads on HBase (--hbase HOST:PORT), \
                 or use --store memory for a test cluster"
                    .into(),
            ));
        }
        if self.store.kind == StoreKind::Sqlite && self.store.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "store.data_dir is empty: give the SQLite store a directory (--data-dir DIR)"
                    .into(),
            ));
        }
        #[cfg(feature = "push")]
        {
            self.push.validate().map_err(ConfigError::Invalid)?;
            self.check_push_senders()?;
        }
        if w.ping_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "websocket.ping_interval must be positive".into(),
            ));
        }
        Ok(())
    }

    /// One sender per notification: with the event log on Kafka, the workers send push
    /// from it (same `[push]` sections), so providers here as well would send each
    /// notification twice. Refused unless `push.send_with_event_log` says no worker
    /// sends push.
    #[cfg(feature = "push")]
    fn check_push_senders(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.is_none() || !self.push.enabled() || self.push.send_with_event_log {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "push providers {:?} are configured and this server produces the event log to \
             Kafka (kafka.brokers, --kafka), from which messenger-worker sends push with the \
             same [push] sections: with both, every notification would be sent twice. Move \
             the [push.*] provider sections to the workers' configuration (they read users' \
             targets from the servers' HBase), or, if no worker of this deployment sends \
             push, set push.send_with_event_log = true \
             (MESSENGER_PUSH__SEND_WITH_EVENT_LOG=true) to have this server send them",
            self.push.provider_names()
        )))
    }

    /// Refuses dev auth on a non-loopback `listen` address unless
    /// `auth.insecure_dev_auth`.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        if self.auth.is_dev() && !listen.ip().is_loopback() && !self.auth.insecure_dev_auth {
            return Err(ConfigError::InsecureDevAuth(listen));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_auth_only_on_loopback() {
        let c = ServerConfig::default();
        assert!(c.check_listen("127.0.0.1:1".parse().expect("addr")).is_ok());
        assert!(c.check_listen("[::1]:1".parse().expect("addr")).is_ok());
        assert!(matches!(
            c.check_listen("0.0.0.0:1".parse().expect("addr")),
            Err(ConfigError::InsecureDevAuth(_))
        ));
        let mut c = ServerConfig::default();
        c.auth.insecure_dev_auth = true;
        assert!(c.check_listen("0.0.0.0:1".parse().expect("addr")).is_ok());
        let mut c = ServerConfig::default();
        c.auth.jwt = Some(JwtConfig::hs256("s"));
        assert!(c.check_listen("0.0.0.0:1".parse().expect("addr")).is_ok());
    }

    #[test]
    fn secret_is_not_printed_nor_serialized() {
        let mut c = ServerConfig::default();
        c.auth.jwt = Some(JwtConfig::hs256("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).expect("json").contains("hunter2"));
    }

    #[test]
    fn one_key_source_only() {
        let mut c = ServerConfig::default();
        let mut j = JwtConfig::hs256("s");
        j.jwks_url = Some("https://x/jwks".into());
        c.auth.jwt = Some(j);
        assert!(matches!(c.validate(), Err(ConfigError::Invalid(m)) if m.contains("exactly one")));
    }

    #[test]
    fn sections_deserialize_with_humantime_and_refuse_unknown_keys() {
        let c: ServerConfig = serde_json::from_value(serde_json::json!({
            "node_id": 3,
            "websocket": {"ping_interval": "500ms"},
            "limits": {"max_frame_bytes": 100},
        }))
        .expect("valid");
        assert_eq!(c.websocket.ping_interval, Duration::from_millis(500));
        assert_eq!(c.limits.max_frame_bytes, 100);
        assert_eq!(c.limits.max_text_bytes, 16 * 1024, "defaults fill the rest");
        let e = serde_json::from_value::<ServerConfig>(serde_json::json!({
            "limits": {"max_frame_byte": 1}
        }))
        .expect_err("typo");
        assert!(e.to_string().contains("max_frame_byte"), "{e}");
    }

    /// A server producing the event log with push providers of its own would send every
    /// notification a second time beside the workers: refused with what to do, unless
    /// the operator says no worker sends push.
    #[cfg(feature = "push")]
    #[test]
    fn push_providers_beside_the_event_log_are_refused_unless_forced() {
        let config = |kafka: bool, forced: Option<bool>| -> ServerConfig {
            let mut c = serde_json::json!({
                "push": {"webhook": {"url": "https://app.example/push", "secret": "s3cret"}},
            });
            if kafka {
                c["kafka"] = serde_json::json!({"brokers": "127.0.0.1:9092"});
            }
            if let Some(f) = forced {
                c["push"]["send_with_event_log"] = serde_json::json!(f);
            }
            serde_json::from_value(c).expect("valid")
        };
        let e = config(true, None).validate().expect_err("two senders");
        let msg = e.to_string();
        for what in [
            "[\"webhook\"]",
            "sent twice",
            "workers' configuration",
            "push.send_with_event_log = true",
            "MESSENGER_PUSH__SEND_WITH_EVENT_LOG",
        ] {
            assert!(msg.contains(what), "{what:?} missing from: {msg}");
        }
        assert!(config(true, Some(false)).validate().is_err());
        config(true, Some(true))
            .validate()
            .expect("forced: this server is the one sender");
        config(false, None)
            .validate()
            .expect("no event log: the server is the only sender");
        let mut c = ServerConfig::default();
        c.kafka.brokers = Some("127.0.0.1:9092".into());
        c.validate()
            .expect("the event log without push providers on the server");
    }
}
