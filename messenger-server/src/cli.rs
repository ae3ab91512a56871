//! The binary's configuration, layered with `figment`: built-in defaults < a TOML file
//! (`--config`) < the environment (`MESSENGER_…`) < flags.
//!
//! The keys are those of [`BinaryConfig`]: the binary-only ones (`listen`, `log`) and
//! the library's sections ([`ServerConfig`]). In the environment a key is
//! `MESSENGER_` + its path in upper case with `__` between sections:
//! `limits.max_frame_bytes` is `MESSENGER_LIMITS__MAX_FRAME_BYTES`, `listen` is
//! `MESSENGER_LISTEN`. `MESSENGER_JWT_SECRET` holds the HS256 secret itself
//! (`auth.jwt.secret`, never read from a file). An unknown key or a wrong type is an
//! error that names the key and where it came from (the file, or the variable); a
//! variable whose first part is no top-level key belongs to another tool and is left
//! alone.
//!
//! Adding a setting: a field in the section's struct in [`crate::config`] (doc comment
//! with its default, `#[serde(with = "humantime_serde")]` for a duration) is at once a
//! TOML key and an environment variable; a flag is one `Option` field in [`Cli`] plus
//! one line in [`Cli::flags`] naming its key. Binary-only settings go in
//! [`BinaryConfig`] and [`BinarySettings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use messenger_core::NodeId;
use serde::{Deserialize, Serialize};

use crate::config::{
    AuthConfig, ConfigError, HBaseSettings, KafkaSettings, Limits, PresenceSettings, PushSettings,
    RedisSettings, ServerConfig, StoreKind, StoreSettings, SyncMode, WebSocketSettings,
};

/// Environment variable holding the JWT HS256 secret itself.
pub const JWT_SECRET_ENV: &str = "MESSENGER_JWT_SECRET";
/// Prefix of the configuration's environment variables.
pub const ENV_PREFIX: &str = "MESSENGER_";

/// messenger-server: the messenger real-time chat server (WebSocket, protocol v1).
#[derive(Debug, Default, Parser)]
#[command(
    name = "messenger-server",
    version,
    about = "The messenger real-time chat server (WebSocket at /ws, /healthz, /metrics, the browser chat at /).",
    after_help = "Precedence: built-in defaults < TOML file (--config) < environment < flags.\n\
        Every setting is a TOML key (see docs/operations.md) and an environment variable: \
        MESSENGER_ + the key path in upper case, sections joined by __ \
        (limits.max_frame_bytes = MESSENGER_LIMITS__MAX_FRAME_BYTES). Unknown keys are errors.\n\
        Authentication: MESSENGER_JWT_SECRET (the secret itself), --jwt-secret-file, \
        --jwt-public-key (PEM: RS256, ES256, EdDSA), --jwks-file or --jwks-url switch to JWT \
        (sub = user id, exp required). Without one the server runs in DEV AUTH (the token is \
        the user id), which is refused on a non-loopback address unless --insecure-dev-auth.\n\
        Storage: by default messages and threads are kept in the SQLite store in ./messenger-data \
        (--data-dir, --sync); --store memory keeps them in memory only (lost at exit).\n\
        Cluster mode: --redis puts sessions, presence and the relay on Redis and then needs an \
        explicit --node-id, unique per process; --hbase puts messages and threads on HBase.\n\
        Durations: `500ms`, `15s`, `2m`, `1h` (flags also take a bare number of seconds).\n\
        Logging: RUST_LOG, else the `log` key (default `info`)."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "MESSENGER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Log filter (RUST_LOG syntax) [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// File holding the JWT HS256 secret (trailing newline trimmed).
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key verifying JWTs (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA).
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file verifying JWTs (keys picked by kid, re-read every --jwks-refresh).
    #[arg(long, value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL verifying JWTs (fetched every --jwks-refresh and on an unknown kid).
    #[arg(long, value_name = "URL")]
    pub jwks_url: Option<String>,
    /// How often a JWKS is reloaded [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub jwks_refresh: Option<Duration>,
    /// Accepted JWT audience (`aud`); repeat for several [default: not checked].
    #[arg(long = "jwt-audience", value_name = "AUD")]
    pub jwt_audience: Vec<String>,
    /// Accepted JWT issuer (`iss`); repeat for several [default: not checked].
    #[arg(long = "jwt-issuer", value_name = "ISS")]
    pub jwt_issuer: Vec<String>,
    /// Browser origin allowed to open /ws (`https://chat.example.com`); repeat for
    /// several. Others get 403 [default: any origin].
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origin: Vec<String>,
    /// Clock leeway on JWT `exp`/`nbf` [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub jwt_leeway: Option<Duration>,
    /// Allow dev auth (token = user id) on a non-loopback address. Never in production.
    #[arg(long)]
    pub insecure_dev_auth: bool,
    /// This node's id, 0..=1023; required with --redis, unique per node [default: 0].
    #[arg(long, value_name = "N")]
    pub node_id: Option<u16>,
    /// Redis URL (redis://host:port/db): sessions, presence and relay on Redis.
    #[arg(long = "redis", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Prefix of Redis keys and channels [default: messenger].
    #[arg(long, value_name = "PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// Life of this node's id claim in Redis without a heartbeat [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub redis_node_ttl: Option<Duration>,
    /// Where messages and threads are kept without --hbase: `sqlite` (durable, in
    /// --data-dir) or `memory` (lost when the process stops) [default: sqlite].
    #[arg(long, value_name = "sqlite|memory")]
    pub store: Option<StoreKind>,
    /// The SQLite store's data directory, created if missing; one process at a time
    /// [default: ./messenger-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Durability of the SQLite store: `full` fsyncs every commit before `message_sent`
    /// (survives power loss), `normal` writes it to the OS (survives a killed process)
    /// [default: full].
    #[arg(long, value_name = "full|normal")]
    pub sync: Option<SyncMode>,
    /// HBase Thrift2 gateway HOST:PORT: messages and threads on HBase.
    #[arg(long, value_name = "HOST:PORT")]
    pub hbase: Option<String>,
    /// Prefix of the HBase table names [default: messenger_].
    #[arg(long, value_name = "PREFIX")]
    pub hbase_table_prefix: Option<String>,
    /// Most concurrent Thrift connections to the HBase gateway [default: 16].
    #[arg(long, value_name = "N")]
    pub hbase_pool_size: Option<usize>,
    /// Kafka bootstrap brokers HOST:PORT[,...]: produce the event log (messages,
    /// receipts, membership) for messenger-worker and, with --redis, relay between nodes
    /// over Kafka [default: off].
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// An extra librdkafka property KEY=VALUE for the Kafka clients (repeatable), e.g.
    /// security.protocol=SASL_SSL.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_property: Vec<(String, String)>,
    /// Cross-node relay with --redis: `kafka` (the default with --kafka) or `redis`.
    #[arg(long, value_name = "kafka|redis")]
    pub relay: Option<String>,
    /// Most concurrent connections [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest incoming WebSocket frame in bytes; over it: close 1009 [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Longest message text in UTF-8 bytes; over it: `too_large` [default: 16384].
    #[arg(long, value_name = "BYTES")]
    pub max_text_bytes: Option<usize>,
    /// Frames queued per session before it is closed as a slow consumer [default: 1024].
    #[arg(long, value_name = "FRAMES")]
    pub outbound_queue: Option<usize>,
    /// Sustained client frames per second per session [default: 50].
    #[arg(long, value_name = "PER_SEC")]
    pub rate_limit: Option<u32>,
    /// Burst of client frames per session [default: 100].
    #[arg(long, value_name = "FRAMES")]
    pub rate_burst: Option<u32>,
    /// Ping interval; a peer silent for two intervals is dropped [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Time allowed for the HTTP request head [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Longest a write may block before the peer is dropped as slow [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub write_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, time for sessions to close before they are dropped [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// How long a user stays online after the last session ends [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub presence_grace: Option<Duration>,
    /// Bytes read from a WebSocket at a time, buffered only while data is in flight [default: 1024].
    #[arg(long, value_name = "BYTES")]
    pub read_buffer_bytes: Option<usize>,
    /// WebSocket write buffer per connection in bytes [default: 1024].
    #[arg(long, value_name = "BYTES")]
    pub write_buffer_bytes: Option<usize>,
}

/// Every key the binary reads: its own (`listen`, `log`) and the library's sections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BinaryConfig {
    /// Address to listen on. Default `127.0.0.1:8080`. Binary only.
    pub listen: SocketAddr,
    /// Log filter (RUST_LOG syntax; the RUST_LOG variable wins). Default `info`. Binary only.
    pub log: String,
    /// See [`ServerConfig::node_id`]; explicit with Redis.
    pub node_id: Option<u16>,
    /// See [`ServerConfig::auth`].
    pub auth: AuthConfig,
    /// See [`ServerConfig::limits`].
    pub limits: Limits,
    /// See [`ServerConfig::websocket`].
    pub websocket: WebSocketSettings,
    /// See [`ServerConfig::presence`].
    pub presence: PresenceSettings,
    /// See [`ServerConfig::redis`].
    pub redis: RedisSettings,
    /// See [`ServerConfig::hbase`].
    pub hbase: HBaseSettings,
    /// See [`ServerConfig::kafka`].
    pub kafka: KafkaSettings,
    /// See [`ServerConfig::store`]; the binary's default kind is `sqlite`.
    pub store: StoreSettings,
    /// See [`ServerConfig::push`].
    pub push: PushSettings,
}

impl Default for BinaryConfig {
    fn default() -> Self {
        let s = ServerConfig::default();
        BinaryConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log: "info".into(),
            node_id: None,
            auth: s.auth,
            limits: s.limits,
            websocket: s.websocket,
            presence: s.presence,
            redis: s.redis,
            hbase: s.hbase,
            kafka: s.kafka,
            store: StoreSettings {
                kind: StoreKind::Sqlite,
                ..s.store
            },
            push: s.push,
        }
    }
}

/// The binary-only settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BinarySettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Log filter.
    pub log: String,
}

impl BinaryConfig {
    /// Splits into the library's configuration and the binary's settings, checking the
    /// rules that span both (node id with Redis, dev auth on a public address).
    pub fn into_parts(self) -> Result<(ServerConfig, BinarySettings), ConfigError> {
        let redis_on = self.redis.url.as_deref().is_some_and(|u| !u.is_empty());
        let node_id = match self.node_id {
            Some(n) => NodeId::new(n).map_err(|e| ConfigError::Invalid(format!("node_id: {e}")))?,
            // Two nodes silently defaulting to 0 would both try to claim it; name the
            // rule up front.
            None if redis_on => {
                return Err(ConfigError::Invalid(
                    "--redis (cluster mode) needs an explicit --node-id N (0..=1023, unique \
                     per node; or MESSENGER_NODE_ID, or node_id in the config file)"
                        .into(),
                ))
            }
            None => NodeId::default(),
        };
        let mut c = ServerConfig {
            node_id,
            auth: self.auth,
            limits: self.limits,
            websocket: self.websocket,
            presence: self.presence,
            redis: self.redis,
            hbase: self.hbase,
            kafka: self.kafka,
            store: self.store,
            push: self.push,
        };
        c.redis.url = c.redis.url.filter(|u| !u.is_empty());
        c.hbase.address = c.hbase.address.filter(|a| !a.is_empty());
        c.kafka.brokers = c.kafka.brokers.filter(|b| !b.is_empty());
        c.validate()?;
        c.check_listen(self.listen)?;
        Ok((
            c,
            BinarySettings {
                listen: self.listen,
                log: self.log,
            },
        ))
    }
}

/// Parses `KEY=VALUE` (a librdkafka property).
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected KEY=VALUE (a librdkafka setting), got {s:?}"
        )),
    }
}

/// Parses `500ms`, `15s`, `2m`, `1h` (humantime) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(v) = s.parse::<f64>() {
        if v.is_finite() && v >= 0.0 {
            return Ok(Duration::from_secs_f64(v));
        }
    }
    humantime_serde::re::humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration `{s}` ({e}; use 500ms, 15s, 2m)"))
}

/// The top-level keys: an environment variable is configuration when its first part
/// is one of them (`MESSENGER_LIMITS__…`, `MESSENGER_LISTEN`); other `MESSENGER_*`
/// variables belong to other tools (`MESSENGER_SERVER_BIN`, `MESSENGER_TEST_HBASE`, the
/// secret and the config path) and are left alone.
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(BinaryConfig::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn describe(e: figment::Error) -> ConfigError {
    let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
    ConfigError::Invalid(all.join("; "))
}

impl Cli {
    /// The layered figment: defaults < `--config` file < environment < flags.
    pub fn figment(&self) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(BinaryConfig::default()));
        if let Some(path) = &self.config {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "cannot read the config file {}: not found",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        let keys = top_level_keys();
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__").filter(move |k| {
            let k = k.as_str().to_ascii_lowercase();
            // The key may come split already (`limits.max_frame_bytes`) or not.
            let first = k.split("__").next().unwrap_or_default();
            let first = first.split('.').next().unwrap_or_default();
            keys.iter().any(|t| t == first)
        }));
        if let Some(secret) = std::env::var(JWT_SECRET_ENV).ok().filter(|s| !s.is_empty()) {
            fig = fig.merge(Serialized::default("auth.jwt.secret", secret));
        }
        Ok(self.flags(fig))
    }

    /// Merges the flags that were given over `fig`: one line per flag naming its key.
    pub fn flags(&self, fig: Figment) -> Figment {
        fn set<T: Serialize>(fig: Figment, key: &str, v: Option<T>) -> Figment {
            match v {
                Some(v) => fig.merge(Serialized::default(key, v)),
                None => fig,
            }
        }
        fn dur(v: Option<Duration>) -> Option<String> {
            v.map(|d| humantime_serde::re::humantime::format_duration(d).to_string())
        }
        fn list(v: &[String]) -> Option<&[String]> {
            (!v.is_empty()).then_some(v)
        }
        let mut f = fig;
        f = set(f, "listen", self.listen);
        f = set(f, "log", self.log.as_ref());
        f = set(f, "node_id", self.node_id);
        f = set(
            f,
            "auth.insecure_dev_auth",
            self.insecure_dev_auth.then_some(true),
        );
        f = set(f, "auth.jwt.secret_file", self.jwt_secret_file.as_ref());
        f = set(f, "auth.jwt.public_key_file", self.jwt_public_key.as_ref());
        f = set(f, "auth.jwt.jwks_file", self.jwks_file.as_ref());
        f = set(f, "auth.jwt.jwks_url", self.jwks_url.as_ref());
        f = set(f, "auth.jwt.jwks_refresh", dur(self.jwks_refresh));
        f = set(f, "auth.jwt.audience", list(&self.jwt_audience));
        f = set(f, "auth.jwt.issuer", list(&self.jwt_issuer));
        f = set(f, "auth.jwt.leeway", dur(self.jwt_leeway));
        f = set(f, "websocket.allowed_origins", list(&self.allowed_origin));
        f = set(f, "redis.url", self.redis_url.as_ref());
        f = set(f, "redis.key_prefix", self.redis_key_prefix.as_ref());
        f = set(f, "redis.node_ttl", dur(self.redis_node_ttl));
        f = set(f, "store.kind", self.store.map(StoreKind::as_str));
        f = set(f, "store.data_dir", self.data_dir.as_ref());
        f = set(f, "store.sync", self.sync.map(SyncMode::as_str));
        f = set(f, "hbase.address", self.hbase.as_ref());
        f = set(f, "hbase.table_prefix", self.hbase_table_prefix.as_ref());
        f = set(f, "hbase.pool_size", self.hbase_pool_size);
        f = set(f, "kafka.brokers", self.kafka.as_ref());
        f = set(f, "kafka.relay", self.relay.as_ref());
        if !self.kafka_property.is_empty() {
            // One map (librdkafka keys contain dots, which figment would read as a path).
            let props: std::collections::BTreeMap<&str, &str> = self
                .kafka_property
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            f = f.merge(Serialized::default("kafka.properties", props));
        }
        f = set(f, "limits.max_connections", self.max_connections);
        f = set(f, "limits.max_frame_bytes", self.max_frame_bytes);
        f = set(f, "limits.max_text_bytes", self.max_text_bytes);
        f = set(f, "limits.outbound_queue", self.outbound_queue);
        f = set(f, "limits.rate_limit_per_sec", self.rate_limit);
        f = set(f, "limits.rate_limit_burst", self.rate_burst);
        f = set(f, "websocket.ping_interval", dur(self.ping_interval));
        f = set(
            f,
            "websocket.handshake_timeout",
            dur(self.handshake_timeout),
        );
        f = set(f, "websocket.write_timeout", dur(self.write_timeout));
        f = set(f, "websocket.drain_timeout", dur(self.drain_timeout));
        f = set(f, "websocket.read_buffer_bytes", self.read_buffer_bytes);
        f = set(f, "websocket.write_buffer_bytes", self.write_buffer_bytes);
        f = set(f, "presence.grace", dur(self.presence_grace));
        f
    }

    /// Loads and checks the configuration: the library's and the binary's settings.
    pub fn load(&self) -> Result<(ServerConfig, BinarySettings), ConfigError> {
        let bc: BinaryConfig = self.figment()?.extract().map_err(describe)?;
        if let (Some(kind), Some(addr)) = (self.store, bc.hbase.address.as_ref()) {
            if !addr.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "--store {} and HBase ({addr}) both name where messages are kept: \
                     drop one of them (with HBase set, the stores are on HBase)",
                    kind.as_str()
                )));
            }
        }
        bc.into_parts()
    }
}

#[cfg(test)]
// figment's Jail closures return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["messenger-server"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parse")
    }

    fn err(r: Result<(ServerConfig, BinarySettings), ConfigError>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    #[test]
    fn defaults_are_dev_on_loopback() {
        Jail::expect_with(|_| {
            let (c, b) = cli(&[]).load().expect("valid");
            assert!(c.auth.is_dev());
            assert_eq!(b.listen, "127.0.0.1:8080".parse().expect("addr"));
            assert_eq!(b.log, "info");
            Ok(())
        });
    }

    #[test]
    fn store_section_from_file_env_and_flags() {
        Jail::expect_with(|j| {
            // The binary's default: SQLite in ./messenger-data, fsync on every commit.
            let (c, _) = cli(&[]).load().expect("valid");
            assert_eq!(c.store.kind, StoreKind::Sqlite);
            assert_eq!(c.store.data_dir, PathBuf::from("messenger-data"));
            assert_eq!(c.store.sync, SyncMode::Full);
            // The library's default stays in memory.
            assert_eq!(ServerConfig::default().store.kind, StoreKind::Memory);
            j.create_file(
                "s.toml",
                "[store]\ndata_dir = \"/var/lib/chat\"\nsync = \"normal\"\n",
            )?;
            j.set_env("MESSENGER_STORE__DATA_DIR", "/srv/chat");
            let (c, _) = cli(&["--config", "s.toml"]).load().expect("valid");
            assert_eq!(c.store.data_dir, PathBuf::from("/srv/chat"));
            assert_eq!(c.store.sync, SyncMode::Normal);
            let (c, _) = cli(&[
                "--config",
                "s.toml",
                "--data-dir",
                "d",
                "--sync",
                "full",
                "--store",
                "memory",
            ])
            .load()
            .expect("valid");
            assert_eq!(c.store.data_dir, PathBuf::from("d"));
            assert_eq!(c.store.sync, SyncMode::Full);
            assert_eq!(c.store.kind, StoreKind::Memory);
            // Where messages go is said once: --store with HBase is refused, and SQLite
            // in cluster mode needs HBase.
            let e = err(cli(&["--store", "sqlite", "--hbase", "h:1"]).load());
            assert!(e.contains("drop one of them"), "{e}");
            let (c, _) = cli(&["--hbase", "h:1"]).load().expect("HBase alone");
            assert_eq!(c.hbase.address.as_deref(), Some("h:1"));
            let e = err(cli(&["--redis", "redis://r/", "--node-id", "1"]).load());
            assert!(e.contains("--hbase") && e.contains("--store memory"), "{e}");
            assert!(cli(&[
                "--redis",
                "redis://r/",
                "--node-id",
                "1",
                "--store",
                "memory"
            ])
            .load()
            .is_ok());
            j.set_env("MESSENGER_STORE__KIND", "rocks");
            let e = err(cli(&[]).load());
            assert!(e.contains("STORE.KIND") && e.contains("sqlite"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn file_then_env_then_flags() {
        Jail::expect_with(|j| {
            j.create_file(
                "server.toml",
                "listen = \"127.0.0.1:9000\"\nnode_id = 4\n[limits]\nrate_limit_per_sec = 5\n\
                 max_frame_bytes = 100\n[websocket]\nping_interval = \"2s\"\n",
            )?;
            j.set_env("MESSENGER_LIMITS__RATE_LIMIT_PER_SEC", "6");
            j.set_env("MESSENGER_LIMITS__MAX_TEXT_BYTES", "77");
            j.set_env("MESSENGER_JWT_SECRET", "s3cret");
            let (c, b) = cli(&[
                "--config",
                "server.toml",
                "--rate-limit",
                "7",
                "--ping-interval",
                "500ms",
            ])
            .load()
            .expect("valid");
            assert_eq!(b.listen.port(), 9000, "file");
            assert_eq!(c.node_id.get(), 4);
            assert_eq!(c.limits.max_frame_bytes, 100, "file");
            assert_eq!(c.limits.max_text_bytes, 77, "env over default");
            assert_eq!(c.limits.rate_limit_per_sec, 7, "flag over env over file");
            assert_eq!(c.websocket.ping_interval, Duration::from_millis(500));
            assert!(!c.auth.is_dev(), "the env secret switches to JWT");
            assert_eq!(
                c.auth.jwt.as_ref().and_then(|j| j.secret.as_deref()),
                Some("s3cret")
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_the_source() {
        Jail::expect_with(|j| {
            j.create_file("bad.toml", "[limits]\nmax_frame_byte = 1\n")?;
            let e = err(cli(&["--config", "bad.toml"]).load());
            assert!(
                e.contains("max_frame_byte") && e.contains("bad.toml"),
                "{e}"
            );
            j.create_file("type.toml", "[websocket]\nping_interval = \"soon\"\n")?;
            let e = err(cli(&["--config", "type.toml"]).load());
            assert!(
                e.contains("ping_interval") && e.contains("type.toml"),
                "{e}"
            );
            j.create_file("top.toml", "nope = 1\n")?;
            let e = err(cli(&["--config", "top.toml"]).load());
            assert!(e.contains("nope") && e.contains("top.toml"), "{e}");
            let e = err(cli(&["--config", "missing.toml"]).load());
            assert!(e.contains("missing.toml"), "{e}");
            Ok(())
        });
        Jail::expect_with(|j| {
            j.set_env("MESSENGER_LIMITS__MAX_FRAMES", "1");
            let e = err(cli(&[]).load());
            assert!(e.contains("max_frames") && e.contains("MESSENGER_"), "{e}");
            Ok(())
        });
        Jail::expect_with(|j| {
            j.set_env("MESSENGER_LIMITS__MAX_FRAME_BYTES", "lots");
            let e = err(cli(&[]).load()).to_ascii_lowercase();
            assert!(e.contains("max_frame_bytes") && e.contains("lots"), "{e}");
            // Other tools' variables are not configuration.
            j.set_env("MESSENGER_LIMITS__MAX_FRAME_BYTES", "10");
            j.set_env("MESSENGER_TEST_HBASE", "127.0.0.1:1");
            j.set_env("MESSENGER_SERVER_BIN", "/bin/true");
            let (c, _) = cli(&[]).load().expect("valid");
            assert_eq!(c.limits.max_frame_bytes, 10);
            Ok(())
        });
    }

    #[test]
    fn dev_auth_on_public_address_is_refused() {
        Jail::expect_with(|_| {
            let r = cli(&["--listen", "0.0.0.0:8080"]).load();
            assert!(matches!(r, Err(ConfigError::InsecureDevAuth(_))));
            assert!(cli(&["--listen", "0.0.0.0:8080", "--insecure-dev-auth"])
                .load()
                .is_ok());
            Ok(())
        });
    }

    #[test]
    fn jwt_key_sources() {
        Jail::expect_with(|j| {
            j.create_file("secret", "from-file\n")?;
            let (c, _) = cli(&["--listen", "0.0.0.0:1", "--jwt-secret-file", "secret"])
                .load()
                .expect("a secret makes the public address fine");
            assert_eq!(
                c.auth.jwt.as_ref().and_then(|j| j.secret_file.clone()),
                Some(PathBuf::from("secret"))
            );
            j.set_env("MESSENGER_JWT_SECRET", "env");
            let e = err(cli(&["--jwt-secret-file", "secret"]).load());
            assert!(e.contains("exactly one key source"), "{e}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let (c, _) = cli(&[
                "--jwks-url",
                "https://idp/jwks",
                "--jwt-audience",
                "a",
                "--jwt-audience",
                "b",
                "--jwt-issuer",
                "https://idp",
                "--jwks-refresh",
                "1m",
            ])
            .load()
            .expect("valid");
            let j = c.auth.jwt.expect("jwt");
            assert_eq!(j.audience, ["a", "b"]);
            assert_eq!(j.issuer, ["https://idp"]);
            assert_eq!(j.jwks_refresh, Duration::from_secs(60));
            Ok(())
        });
    }

    #[test]
    fn cluster_keys_and_the_node_id_rule() {
        Jail::expect_with(|j| {
            let e = err(cli(&["--redis", "redis://127.0.0.1:1/"]).load());
            assert!(e.contains("--node-id"), "{e}");
            j.create_file(
                "c.toml",
                "node_id = 7\n[redis]\nurl = \"redis://r:6379/\"\nnode_ttl = \"3s\"\n\
                 key_prefix = \"k\"\n[hbase]\naddress = \"h:9090\"\ntable_prefix = \"x_\"\n\
                 pool_size = 4\n",
            )?;
            let (c, _) = cli(&["--config", "c.toml", "--hbase", "flag:1"])
                .load()
                .expect("valid");
            assert_eq!(c.redis.url.as_deref(), Some("redis://r:6379/"));
            assert_eq!(c.node_id.get(), 7);
            assert_eq!(c.redis.node_ttl, Duration::from_secs(3));
            assert_eq!(c.redis.key_prefix, "k");
            assert_eq!(c.hbase.address.as_deref(), Some("flag:1"));
            assert_eq!(c.hbase.table_prefix, "x_");
            assert_eq!(c.hbase.pool_size, 4);
            j.set_env("MESSENGER_NODE_ID", "2000");
            let e = err(cli(&[]).load());
            assert!(e.contains("node_id"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn every_library_key_is_a_binary_key() {
        // A section added to ServerConfig must be added to BinaryConfig too.
        let lib = serde_json::to_value(ServerConfig::default()).expect("json");
        let bin = serde_json::to_value(BinaryConfig::default()).expect("json");
        for k in lib.as_object().expect("object").keys() {
            assert!(bin.get(k).is_some(), "BinaryConfig lacks `{k}`");
        }
    }

    #[test]
    fn durations() {
        assert!(parse_duration("abc").is_err());
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
    }
}
