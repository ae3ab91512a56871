//! Server configuration: listen address, authentication, limits and timeouts.
//!
//! [`ServerConfig::default`] gives the documented defaults. The binary fills it from a
//! TOML file, the environment and flags (see [`crate::cli`]); an embedding application
//! builds it in code.

use std::net::SocketAddr;
use std::time::Duration;

use messenger_core::NodeId;

/// How the server authenticates the token of a `/ws` request.
#[derive(Clone, Default)]
pub enum AuthMode {
    /// Development only: the token is the user id itself.
    #[default]
    Dev,
    /// JWTs signed HS256 with this secret; `sub` is the user id, `exp` is required.
    Jwt {
        /// The shared HMAC secret.
        secret: Vec<u8>,
        /// Clock leeway allowed on `exp` and `nbf`.
        leeway: Duration,
    },
}

impl AuthMode {
    /// JWT HS256 with the default leeway (30 s).
    pub fn jwt(secret: impl Into<Vec<u8>>) -> Self {
        AuthMode::Jwt {
            secret: secret.into(),
            leeway: Duration::from_secs(30),
        }
    }

    /// Whether this is dev auth.
    pub fn is_dev(&self) -> bool {
        matches!(self, AuthMode::Dev)
    }
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::Dev => f.write_str("Dev"),
            AuthMode::Jwt { leeway, .. } => f
                .debug_struct("Jwt")
                .field("secret", &"<redacted>")
                .field("leeway", leeway)
                .finish(),
        }
    }
}

/// Everything the server needs besides its adapters.
///
/// Cluster mode: with `redis_url` set (feature `redis`) the builder connects to Redis and
/// uses it for the session directory, presence and the relay; with `hbase` set (feature
/// `hbase`) it uses HBase for the message and thread stores. Adapters given to the
/// builder explicitly win over both. `node_id` must then be unique per process: Redis
/// refuses a second live node with the same id.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where the binary listens (the library takes a bound listener). Default
    /// `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Token verification. Default [`AuthMode::Dev`].
    pub auth: AuthMode,
    /// Allow dev auth on a non-loopback address. Default false.
    pub allow_insecure_dev_auth: bool,
    /// This node's id (0..=1023): the Snowflake node field and the relay address.
    pub node_id: NodeId,
    /// Most concurrent connections (HTTP and WebSocket). Default 10 000.
    pub max_connections: usize,
    /// Largest incoming WebSocket frame or message in bytes; over it the connection is
    /// closed with 1009. Default 64 KiB.
    pub max_frame_bytes: usize,
    /// Longest message `text` in UTF-8 bytes (`too_large` over it). Default 16 KiB.
    pub max_text_bytes: usize,
    /// Frames a session's outbound queue holds before it is closed as a slow consumer
    /// (close code 4000). Default 1024.
    pub outbound_queue: usize,
    /// Sustained client frames per second per session. Default 50.
    pub rate_limit_per_sec: u32,
    /// Burst of client frames per session above the sustained rate. Default 100.
    pub rate_limit_burst: u32,
    /// Interval between server pings. A peer silent for two intervals is dead.
    /// Default 15 s.
    pub ping_interval: Duration,
    /// Time allowed to send a complete HTTP request head. Default 10 s.
    pub handshake_timeout: Duration,
    /// Longest a batch of writes may block before the peer counts as a slow consumer.
    /// Default 10 s.
    pub write_timeout: Duration,
    /// On shutdown, how long sessions get to close before they are dropped. Default 10 s.
    pub drain_timeout: Duration,
    /// How long a user stays online after the last session ends. Default 3 s.
    pub presence_grace: Duration,
    /// tungstenite read buffer per connection in bytes (its default is 128 KiB). It is a
    /// minimum reserve per read, not a cap: larger frames still arrive whole. Default
    /// 1 KiB, which measured 7.1 KiB of server RSS per idle connection against 10 KiB
    /// with 4 KiB, at the same pairs throughput (docs/benchmarks.md).
    pub read_buffer_bytes: usize,
    /// Bytes buffered before tungstenite writes to the socket (its default is 128 KiB);
    /// a flush always writes everything. Default 1 KiB.
    pub write_buffer_bytes: usize,
    /// Redis URL (`redis://host:port/db`): puts the session directory, presence and the
    /// cross-node relay on Redis (cluster mode). Default none: in memory.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel; clusters sharing one Redis need different
    /// prefixes. Default `messenger`.
    pub redis_key_prefix: String,
    /// How long this node's claim on its id lives in Redis without a heartbeat. A killed
    /// node's users go offline within about `4/3 * redis_node_ttl + 2 s`; a crashed
    /// node's id can be claimed again after this long. Heartbeat and reaper run every
    /// third of it. Default 15 s.
    pub redis_node_ttl: Duration,
    /// HBase Thrift2 gateway `host:port`: puts the message and thread stores on HBase.
    /// Default none: in memory.
    pub hbase: Option<String>,
    /// Prefix of the HBase table names. Default `messenger_`.
    pub hbase_table_prefix: String,
    /// Most concurrent Thrift connections to the gateway. Default 16.
    pub hbase_pool_size: usize,
    /// Kafka bootstrap brokers (feature `kafka`): the engine's event log is produced to
    /// Kafka for `messenger-worker`, and in cluster mode the relay runs over Kafka
    /// unless `kafka_relay` is false. Default none.
    pub kafka: Option<String>,
    /// Extra librdkafka properties (security, SASL, TLS). Default none.
    pub kafka_properties: Vec<(String, String)>,
    /// With `kafka` and `redis_url`: relay between nodes over Kafka (true, the default)
    /// or over Redis pub/sub (false).
    pub kafka_relay: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: AuthMode::Dev,
            allow_insecure_dev_auth: false,
            node_id: NodeId::default(),
            max_connections: 10_000,
            max_frame_bytes: 64 * 1024,
            max_text_bytes: 16 * 1024,
            outbound_queue: 1024,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            ping_interval: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            presence_grace: Duration::from_secs(3),
            read_buffer_bytes: 1024,
            write_buffer_bytes: 1024,
            redis_url: None,
            redis_key_prefix: "messenger".into(),
            redis_node_ttl: Duration::from_secs(15),
            hbase: None,
            hbase_table_prefix: "messenger_".into(),
            hbase_pool_size: 16,
            kafka: None,
            kafka_properties: Vec::new(),
            kafka_relay: true,
        }
    }
}

/// A configuration the server refuses to run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Dev auth on a non-loopback address without the insecure flag.
    #[error(
        "refusing dev auth (token = user id) on non-loopback address {0}: set \
         MESSENGER_JWT_SECRET or --jwt-secret-file, or pass --insecure-dev-auth"
    )]
    InsecureDevAuth(SocketAddr),
    /// A value is out of range or unreadable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Checks the configuration against the address the server will listen on.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        if self.auth.is_dev() && !listen.ip().is_loopback() && !self.allow_insecure_dev_auth {
            return Err(ConfigError::InsecureDevAuth(listen));
        }
        if let AuthMode::Jwt { secret, .. } = &self.auth {
            if secret.is_empty() {
                return Err(ConfigError::Invalid("the JWT secret is empty".into()));
            }
        }
        let positive = [
            ("max_connections", self.max_connections),
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_text_bytes", self.max_text_bytes),
            ("outbound_queue", self.outbound_queue),
            ("rate_limit_per_sec", self.rate_limit_per_sec as usize),
            ("rate_limit_burst", self.rate_limit_burst as usize),
            ("read_buffer_bytes", self.read_buffer_bytes),
            ("hbase_pool_size", self.hbase_pool_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.redis_node_ttl < Duration::from_millis(300) {
            return Err(ConfigError::Invalid(
                "redis_node_ttl must be at least 300ms".into(),
            ));
        }
        if self.redis_key_prefix.is_empty() || self.redis_key_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid(
                "redis_key_prefix must be non-empty and without spaces".into(),
            ));
        }
        if self.ping_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "ping_interval must be positive".into(),
            ));
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
        assert!(c.validate("127.0.0.1:1".parse().expect("addr")).is_ok());
        assert!(c.validate("[::1]:1".parse().expect("addr")).is_ok());
        assert!(matches!(
            c.validate("0.0.0.0:1".parse().expect("addr")),
            Err(ConfigError::InsecureDevAuth(_))
        ));
        let c = ServerConfig {
            allow_insecure_dev_auth: true,
            ..Default::default()
        };
        assert!(c.validate("0.0.0.0:1".parse().expect("addr")).is_ok());
        let c = ServerConfig {
            auth: AuthMode::jwt("s"),
            ..Default::default()
        };
        assert!(c.validate("0.0.0.0:1".parse().expect("addr")).is_ok());
    }

    #[test]
    fn secret_is_not_printed() {
        let s = format!("{:?}", AuthMode::jwt("hunter2"));
        assert!(!s.contains("hunter2"));
    }
}
