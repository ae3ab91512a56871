//! The binary's configuration: a TOML file, then the environment, then flags (flags
//! win). Every option has a flag, an environment variable and a TOML key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use messenger_core::NodeId;
use serde::Deserialize;

use crate::config::{AuthMode, ConfigError, ServerConfig};

/// Environment variable holding the JWT HS256 secret itself.
pub const JWT_SECRET_ENV: &str = "MESSENGER_JWT_SECRET";

/// messenger-server: the messenger real-time chat server (WebSocket, protocol v1).
#[derive(Debug, Default, Parser)]
#[command(
    name = "messenger-server",
    version,
    about = "The messenger real-time chat server (WebSocket at /ws, /healthz, /metrics, the browser chat at /).",
    after_help = "Precedence: built-in defaults < TOML file (--config) < environment < flags.\n\
        Authentication: with MESSENGER_JWT_SECRET (the secret itself) or --jwt-secret-file set, \
        tokens are HS256 JWTs (sub = user id, exp required). Without a secret the server runs \
        in DEV AUTH (the token is the user id), which is refused on a non-loopback address \
        unless --insecure-dev-auth is given.\n\
        Cluster mode: --redis puts sessions, presence and the relay on Redis and then needs an \
        explicit --node-id, unique per process (a second live node with the same id is refused \
        at start); --hbase puts messages and threads on HBase (Thrift2 gateway). Without them \
        everything is in memory in this process.\n\
        Durations accept `500ms`, `15s`, `2m` or a bare number of seconds.\n\
        Logging: RUST_LOG (default `info`)."
)]
pub struct Cli {
    /// TOML configuration file; its keys are the long flag names with `_` for `-`.
    #[arg(long, short = 'c', env = "MESSENGER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "MESSENGER_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// File holding the JWT HS256 secret (trailing newline trimmed); wins over MESSENGER_JWT_SECRET.
    #[arg(long, env = "MESSENGER_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Clock leeway on JWT `exp`/`nbf` [default: 30s].
    #[arg(long, env = "MESSENGER_JWT_LEEWAY", value_name = "DURATION", value_parser = parse_duration)]
    pub jwt_leeway: Option<Duration>,
    /// Allow dev auth (token = user id) on a non-loopback address. Never in production.
    #[arg(long, env = "MESSENGER_INSECURE_DEV_AUTH")]
    pub insecure_dev_auth: bool,
    /// This node's id, 0..=1023 (Snowflake node field, relay address); required with
    /// --redis, unique per node [default without --redis: 0].
    #[arg(long, env = "MESSENGER_NODE_ID", value_name = "N")]
    pub node_id: Option<u16>,
    /// Redis URL (redis://host:port/db): session directory, presence and cross-node relay
    /// on Redis (cluster mode). TOML key `redis` [default: in memory].
    #[arg(long = "redis", env = "MESSENGER_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Prefix of Redis keys and channels; clusters sharing a Redis need different ones
    /// [default: messenger].
    #[arg(long, env = "MESSENGER_REDIS_KEY_PREFIX", value_name = "PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// Life of this node's id claim in Redis without a heartbeat: a killed node's users go
    /// offline within about 4/3 of it (+ up to 2s); a crashed node's id is free again after
    /// it [default: 15s].
    #[arg(long, env = "MESSENGER_REDIS_NODE_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub redis_node_ttl: Option<Duration>,
    /// HBase Thrift2 gateway HOST:PORT: messages and threads on HBase (history survives
    /// restarts) [default: in memory].
    #[arg(long, env = "MESSENGER_HBASE", value_name = "HOST:PORT")]
    pub hbase: Option<String>,
    /// Prefix of the HBase table names [default: messenger_].
    #[arg(long, env = "MESSENGER_HBASE_TABLE_PREFIX", value_name = "PREFIX")]
    pub hbase_table_prefix: Option<String>,
    /// Most concurrent Thrift connections to the HBase gateway [default: 16].
    #[arg(long, env = "MESSENGER_HBASE_POOL_SIZE", value_name = "N")]
    pub hbase_pool_size: Option<usize>,
    /// Kafka bootstrap brokers HOST:PORT[,...]: produce the event log (messages,
    /// receipts, membership) for messenger-worker and, with --redis, relay between nodes
    /// over Kafka [default: off].
    #[arg(long, env = "MESSENGER_KAFKA", value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// An extra librdkafka property KEY=VALUE for the Kafka clients (repeatable), e.g.
    /// security.protocol=SASL_SSL. TOML: a `[kafka_properties]` table.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_property: Vec<(String, String)>,
    /// Cross-node relay with --redis: `kafka` (the default when --kafka is given) or
    /// `redis` (pub/sub).
    #[arg(long, env = "MESSENGER_RELAY", value_name = "kafka|redis")]
    pub relay: Option<String>,
    /// Most concurrent connections [default: 10000].
    #[arg(long, env = "MESSENGER_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest incoming WebSocket frame in bytes; over it: close 1009 [default: 65536].
    #[arg(long, env = "MESSENGER_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Longest message text in UTF-8 bytes; over it: `too_large` [default: 16384].
    #[arg(long, env = "MESSENGER_MAX_TEXT_BYTES", value_name = "BYTES")]
    pub max_text_bytes: Option<usize>,
    /// Frames queued per session before it is closed as a slow consumer (4000) [default: 1024].
    #[arg(long, env = "MESSENGER_OUTBOUND_QUEUE", value_name = "FRAMES")]
    pub outbound_queue: Option<usize>,
    /// Sustained client frames per second per session [default: 50].
    #[arg(long, env = "MESSENGER_RATE_LIMIT", value_name = "PER_SEC")]
    pub rate_limit: Option<u32>,
    /// Burst of client frames per session [default: 100].
    #[arg(long, env = "MESSENGER_RATE_BURST", value_name = "FRAMES")]
    pub rate_burst: Option<u32>,
    /// Ping interval; a peer silent for two intervals is dropped [default: 15s].
    #[arg(long, env = "MESSENGER_PING_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Time allowed for the HTTP request head [default: 10s].
    #[arg(long, env = "MESSENGER_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Longest a write may block before the peer is dropped as a slow consumer [default: 10s].
    #[arg(long, env = "MESSENGER_WRITE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub write_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, time for sessions to close before they are dropped [default: 10s].
    #[arg(long, env = "MESSENGER_DRAIN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// How long a user stays online after the last session ends [default: 3s].
    #[arg(long, env = "MESSENGER_PRESENCE_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub presence_grace: Option<Duration>,
    /// WebSocket read buffer per connection in bytes [default: 1024].
    #[arg(long, env = "MESSENGER_READ_BUFFER_BYTES", value_name = "BYTES")]
    pub read_buffer_bytes: Option<usize>,
    /// WebSocket write buffer per connection in bytes [default: 1024].
    #[arg(long, env = "MESSENGER_WRITE_BUFFER_BYTES", value_name = "BYTES")]
    pub write_buffer_bytes: Option<usize>,
}

/// The TOML file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--listen`.
    pub listen: Option<SocketAddr>,
    /// See `--jwt-secret-file`.
    pub jwt_secret_file: Option<PathBuf>,
    /// See `--jwt-leeway`.
    pub jwt_leeway: Option<FileDuration>,
    /// See `--insecure-dev-auth`.
    pub insecure_dev_auth: Option<bool>,
    /// See `--node-id`.
    pub node_id: Option<u16>,
    /// See `--redis` (also accepted as `redis_url`).
    #[serde(alias = "redis_url")]
    pub redis: Option<String>,
    /// See `--redis-key-prefix`.
    pub redis_key_prefix: Option<String>,
    /// See `--redis-node-ttl`.
    pub redis_node_ttl: Option<FileDuration>,
    /// See `--hbase`.
    pub hbase: Option<String>,
    /// See `--hbase-table-prefix`.
    pub hbase_table_prefix: Option<String>,
    /// See `--hbase-pool-size`.
    pub hbase_pool_size: Option<usize>,
    /// See `--kafka`.
    pub kafka: Option<String>,
    /// See `--kafka-property`.
    pub kafka_properties: Option<std::collections::BTreeMap<String, String>>,
    /// See `--relay`.
    pub relay: Option<String>,
    /// See `--max-connections`.
    pub max_connections: Option<usize>,
    /// See `--max-frame-bytes`.
    pub max_frame_bytes: Option<usize>,
    /// See `--max-text-bytes`.
    pub max_text_bytes: Option<usize>,
    /// See `--outbound-queue`.
    pub outbound_queue: Option<usize>,
    /// See `--rate-limit`.
    pub rate_limit: Option<u32>,
    /// See `--rate-burst`.
    pub rate_burst: Option<u32>,
    /// See `--ping-interval`.
    pub ping_interval: Option<FileDuration>,
    /// See `--handshake-timeout`.
    pub handshake_timeout: Option<FileDuration>,
    /// See `--write-timeout`.
    pub write_timeout: Option<FileDuration>,
    /// See `--drain-timeout`.
    pub drain_timeout: Option<FileDuration>,
    /// See `--presence-grace`.
    pub presence_grace: Option<FileDuration>,
    /// See `--read-buffer-bytes`.
    pub read_buffer_bytes: Option<usize>,
    /// See `--write-buffer-bytes`.
    pub write_buffer_bytes: Option<usize>,
}

/// A duration in TOML: `"15s"`, `"500ms"`, `"2m"` or an integer number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileDuration {
    /// Seconds.
    Secs(u64),
    /// With a unit.
    Text(String),
}

impl FileDuration {
    fn get(&self) -> Result<Duration, ConfigError> {
        match self {
            FileDuration::Secs(s) => Ok(Duration::from_secs(*s)),
            FileDuration::Text(t) => parse_duration(t).map_err(ConfigError::Invalid),
        }
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

/// Parses `500ms`, `15s`, `2m` or a bare number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v * mult)),
        _ => Err(format!("invalid duration `{s}` (use 500ms, 15s, 2m)")),
    }
}

impl Cli {
    /// Reads the TOML file (if any) and merges it under the environment and flags.
    /// `env_secret` is the value of `MESSENGER_JWT_SECRET`.
    pub fn resolve(&self, env_secret: Option<String>) -> Result<ServerConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::Invalid(format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        self.merge(file, env_secret)
    }

    /// Merges `file` under the flags and environment already parsed into `self`.
    pub fn merge(
        &self,
        file: FileConfig,
        env_secret: Option<String>,
    ) -> Result<ServerConfig, ConfigError> {
        let d = ServerConfig::default();
        let dur = |flag: Option<Duration>, f: &Option<FileDuration>, def: Duration| match (flag, f)
        {
            (Some(v), _) => Ok(v),
            (None, Some(f)) => f.get(),
            (None, None) => Ok(def),
        };
        let leeway = dur(self.jwt_leeway, &file.jwt_leeway, Duration::from_secs(30))?;
        let secret: Option<Vec<u8>> = if let Some(path) = &self.jwt_secret_file {
            Some(read_secret(path)?)
        } else if let Some(s) = env_secret.filter(|s| !s.is_empty()) {
            Some(s.into_bytes())
        } else if let Some(path) = &file.jwt_secret_file {
            Some(read_secret(path)?)
        } else {
            None
        };
        let auth = match secret {
            Some(secret) => AuthMode::Jwt { secret, leeway },
            None => AuthMode::Dev,
        };
        let redis_url = self
            .redis_url
            .clone()
            .or(file.redis)
            .filter(|u| !u.is_empty());
        let node_id = match self.node_id.or(file.node_id) {
            Some(n) => NodeId::new(n).map_err(|e| ConfigError::Invalid(format!("node_id: {e}")))?,
            // Two nodes silently defaulting to 0 would both try to claim it; the second
            // one would be refused only at start, so name the rule up front.
            None if redis_url.is_some() => {
                return Err(ConfigError::Invalid(
                    "--redis (cluster mode) needs an explicit --node-id N (0..=1023, unique \
                     per node; or MESSENGER_NODE_ID, or node_id in the config file)"
                        .into(),
                ))
            }
            None => d.node_id,
        };
        let mut c = ServerConfig {
            listen: self.listen.or(file.listen).unwrap_or(d.listen),
            auth,
            allow_insecure_dev_auth: self.insecure_dev_auth
                || file.insecure_dev_auth.unwrap_or(false),
            node_id,
            ..ServerConfig::default()
        };
        c.max_connections = self
            .max_connections
            .or(file.max_connections)
            .unwrap_or(d.max_connections);
        c.max_frame_bytes = self
            .max_frame_bytes
            .or(file.max_frame_bytes)
            .unwrap_or(d.max_frame_bytes);
        c.max_text_bytes = self
            .max_text_bytes
            .or(file.max_text_bytes)
            .unwrap_or(d.max_text_bytes);
        c.outbound_queue = self
            .outbound_queue
            .or(file.outbound_queue)
            .unwrap_or(d.outbound_queue);
        c.rate_limit_per_sec = self
            .rate_limit
            .or(file.rate_limit)
            .unwrap_or(d.rate_limit_per_sec);
        c.rate_limit_burst = self
            .rate_burst
            .or(file.rate_burst)
            .unwrap_or(d.rate_limit_burst);
        c.ping_interval = dur(self.ping_interval, &file.ping_interval, d.ping_interval)?;
        c.handshake_timeout = dur(
            self.handshake_timeout,
            &file.handshake_timeout,
            d.handshake_timeout,
        )?;
        c.write_timeout = dur(self.write_timeout, &file.write_timeout, d.write_timeout)?;
        c.drain_timeout = dur(self.drain_timeout, &file.drain_timeout, d.drain_timeout)?;
        c.presence_grace = dur(self.presence_grace, &file.presence_grace, d.presence_grace)?;
        c.read_buffer_bytes = self
            .read_buffer_bytes
            .or(file.read_buffer_bytes)
            .unwrap_or(d.read_buffer_bytes);
        c.write_buffer_bytes = self
            .write_buffer_bytes
            .or(file.write_buffer_bytes)
            .unwrap_or(d.write_buffer_bytes);
        c.redis_url = redis_url;
        if let Some(p) = self.redis_key_prefix.clone().or(file.redis_key_prefix) {
            c.redis_key_prefix = p;
        }
        c.redis_node_ttl = dur(self.redis_node_ttl, &file.redis_node_ttl, d.redis_node_ttl)?;
        c.hbase = self.hbase.clone().or(file.hbase).filter(|a| !a.is_empty());
        if let Some(p) = self.hbase_table_prefix.clone().or(file.hbase_table_prefix) {
            c.hbase_table_prefix = p;
        }
        c.hbase_pool_size = self
            .hbase_pool_size
            .or(file.hbase_pool_size)
            .unwrap_or(d.hbase_pool_size);
        c.kafka = self.kafka.clone().or(file.kafka).filter(|b| !b.is_empty());
        c.kafka_properties = file
            .kafka_properties
            .unwrap_or_default()
            .into_iter()
            .collect();
        c.kafka_properties
            .extend(self.kafka_property.iter().cloned());
        c.kafka_relay = match self.relay.clone().or(file.relay).as_deref() {
            None | Some("kafka") if c.kafka.is_some() => true,
            None | Some("redis") => false,
            Some("kafka") => {
                return Err(ConfigError::Invalid(
                    "--relay kafka needs --kafka BROKERS".into(),
                ))
            }
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "--relay is {other:?}: use `kafka` or `redis`"
                )))
            }
        };
        c.validate(c.listen)?;
        Ok(c)
    }
}

fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let s = std::fs::read(path)
        .map_err(|e| ConfigError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let trimmed = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(&s[..0], |i| &s[..=i]);
    Ok(trimmed.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["messenger-server"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parse")
    }

    #[test]
    fn defaults_are_dev_on_loopback() {
        let c = cli(&[]).merge(FileConfig::default(), None).expect("valid");
        assert!(c.auth.is_dev());
        assert_eq!(c.listen, "127.0.0.1:8080".parse().expect("addr"));
    }

    #[test]
    fn flags_win_over_file_and_env_secret_switches_to_jwt() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nrate_limit = 5\nping_interval = \"2s\"\nmax_frame_bytes = 100\n",
        )
        .expect("toml");
        let c = cli(&["--rate-limit", "7", "--ping-interval", "500ms"])
            .merge(file, Some("s3cret".into()))
            .expect("valid");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.rate_limit_per_sec, 7);
        assert_eq!(c.ping_interval, Duration::from_millis(500));
        assert_eq!(c.max_frame_bytes, 100);
        assert!(!c.auth.is_dev());
    }

    #[test]
    fn dev_auth_on_public_address_is_refused() {
        let r = cli(&["--listen", "0.0.0.0:8080"]).merge(FileConfig::default(), None);
        assert!(matches!(r, Err(ConfigError::InsecureDevAuth(_))));
        let r = cli(&["--listen", "0.0.0.0:8080", "--insecure-dev-auth"])
            .merge(FileConfig::default(), None);
        assert!(r.is_ok());
    }

    #[test]
    fn resolve_reads_the_file_and_the_secret_file() {
        let dir = std::env::temp_dir().join(format!("msgsrv-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "from-file\n").expect("secret");
        let conf = dir.join("server.toml");
        std::fs::write(
            &conf,
            format!(
                "listen = \"0.0.0.0:9100\"\njwt_secret_file = {:?}\npresence_grace = 1\n",
                secret.display().to_string()
            ),
        )
        .expect("toml");
        let c = cli(&["--config", conf.to_str().expect("utf8")])
            .resolve(None)
            .expect("valid: a secret makes the public address fine");
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.presence_grace, Duration::from_secs(1));
        match &c.auth {
            AuthMode::Jwt { secret, .. } => assert_eq!(secret, b"from-file"),
            AuthMode::Dev => panic!("expected JWT"),
        }
        // The environment's secret wins over the file's.
        let c = cli(&["--config", conf.to_str().expect("utf8")])
            .resolve(Some("from-env".into()))
            .expect("valid");
        assert!(matches!(&c.auth, AuthMode::Jwt { secret, .. } if secret == b"from-env"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cluster_keys_and_the_node_id_rule() {
        let r = cli(&["--redis", "redis://127.0.0.1:1/"]).merge(FileConfig::default(), None);
        assert!(
            matches!(&r, Err(ConfigError::Invalid(m)) if m.contains("--node-id")),
            "{r:?}"
        );
        let file: FileConfig = toml::from_str(
            "redis = \"redis://r:6379/\"\nnode_id = 7\nredis_node_ttl = \"3s\"\n\
             hbase = \"h:9090\"\nhbase_table_prefix = \"x_\"\nhbase_pool_size = 4\n\
             redis_key_prefix = \"k\"\n",
        )
        .expect("toml");
        let c = cli(&["--hbase", "flag:1"])
            .merge(file, None)
            .expect("valid");
        assert_eq!(c.redis_url.as_deref(), Some("redis://r:6379/"));
        assert_eq!(c.node_id.get(), 7);
        assert_eq!(c.redis_node_ttl, Duration::from_secs(3));
        assert_eq!(c.redis_key_prefix, "k");
        assert_eq!(c.hbase.as_deref(), Some("flag:1"));
        assert_eq!(c.hbase_table_prefix, "x_");
        assert_eq!(c.hbase_pool_size, 4);
        let file: FileConfig = toml::from_str("redis_url = \"redis://a/\"").expect("alias");
        assert_eq!(file.redis.as_deref(), Some("redis://a/"));
        let c = cli(&[]).merge(FileConfig::default(), None).expect("valid");
        assert!(c.redis_url.is_none() && c.hbase.is_none());
    }

    #[test]
    fn unknown_toml_keys_and_bad_durations_are_errors() {
        assert!(toml::from_str::<FileConfig>("nope = 1").is_err());
        assert!(parse_duration("abc").is_err());
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    }
}
