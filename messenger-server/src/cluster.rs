//! Cluster mode: the Redis and HBase adapters chosen by [`ServerConfig`].
//!
//! [`ServerBuilder::build`](crate::ServerBuilder::build) calls into this module: with
//! `hbase` set it connects [`messenger_storage_hbase::HBaseStore`] (message and thread
//! store), then with `redis_url` set it connects [`messenger_redis::RedisCluster`]
//! (session directory, presence, relay), which claims `node_id` in Redis. HBase comes
//! first so that a failure there does not leave the node id claimed.

use std::sync::Arc;
#[cfg(feature = "redis")]
use std::time::Duration;

use messenger_core::{MessageStore, Presence, PushRegistry, Relay, SessionDirectory, ThreadStore};

use crate::config::{ServerConfig, StoreKind};
use crate::server::ServerError;

/// The Redis options a [`ServerConfig`] gives: its key prefix and node TTL; the
/// heartbeat and reaper run every third of the TTL, one command times out after a
/// quarter of it (between 100 ms and 2 s).
#[cfg(feature = "redis")]
pub fn redis_options(c: &ServerConfig) -> messenger_redis::RedisOptions {
    let ttl = c.redis.node_ttl;
    messenger_redis::RedisOptions {
        key_prefix: c.redis.key_prefix.clone(),
        node_ttl: ttl,
        heartbeat_interval: ttl / 3,
        reap_interval: ttl / 3,
        op_timeout: (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(2)),
        ..messenger_redis::RedisOptions::default()
    }
}

/// What the builder got from the configuration's backends.
#[derive(Default)]
pub(crate) struct Backends {
    pub messages: Option<Arc<dyn MessageStore>>,
    pub threads: Option<Arc<dyn ThreadStore>>,
    pub push_registry: Option<Arc<dyn PushRegistry>>,
    pub directory: Option<Arc<dyn SessionDirectory>>,
    pub presence: Option<Arc<dyn Presence>>,
    pub relay: Option<Arc<dyn Relay>>,
    /// The Kafka event log (`kafka.brokers` set).
    #[cfg(feature = "kafka")]
    pub event_log: Option<Arc<messenger_kafka::KafkaEventLog>>,
    #[cfg(feature = "redis")]
    pub redis: Option<messenger_redis::RedisCluster>,
    /// Human-readable names of the store and the directory adapters, for the logs.
    pub stores: String,
    pub sessions: String,
    /// The relay's name when it is not the session backend's.
    pub relay_name: String,
}

/// Connects the backends the configuration names. `need_stores`/`need_sessions`:
/// whether the builder still lacks the store adapters / the session adapters (an
/// explicitly given adapter wins, and then nothing is connected for it).
pub(crate) async fn connect(
    c: &ServerConfig,
    need_stores: bool,
    need_sessions: bool,
) -> Result<Backends, ServerError> {
    let mut b = Backends {
        stores: "memory".into(),
        sessions: "memory".into(),
        ..Backends::default()
    };
    if let (Some(addr), true) = (&c.hbase.address, need_stores) {
        connect_hbase(c, addr, &mut b).await?;
    } else if need_stores && c.store.kind == StoreKind::Sqlite {
        connect_sqlite(c, &mut b).await?;
    }
    // Kafka before Redis, so that a failure there never leaves the node id claimed.
    if let Some(brokers) = &c.kafka.brokers {
        connect_kafka(c, brokers, need_sessions, &mut b).await?;
    }
    if let (Some(url), true) = (&c.redis.url, need_sessions) {
        connect_redis(c, url, &mut b).await?;
    }
    if !b.relay_name.is_empty() {
        b.sessions = format!("{}; relay: {}", b.sessions, b.relay_name);
    }
    Ok(b)
}

#[cfg(feature = "kafka")]
async fn connect_kafka(
    c: &ServerConfig,
    brokers: &str,
    need_sessions: bool,
    b: &mut Backends,
) -> Result<(), ServerError> {
    use messenger_kafka::{KafkaEventLog, KafkaOptions, KafkaRelay};
    let mut opts = KafkaOptions::new(brokers);
    opts.event_buffer = c.kafka.event_buffer;
    opts.event_batch = c.kafka.event_batch;
    for (k, v) in &c.kafka.properties {
        opts = opts.with_property(k, v);
    }
    let fail = |source| ServerError::Backend {
        context: format!("cannot use Kafka at {brokers}"),
        hint: "Check that the brokers run and are reachable, or fix --kafka / \
               MESSENGER_KAFKA__BROKERS (in development `scripts/kafka.sh start`); \
               see docs/operations.md."
            .into(),
        source,
    };
    b.event_log = Some(KafkaEventLog::connect(&opts).await.map_err(fail)?);
    if c.redis.url.is_some() && c.kafka.relays() && need_sessions {
        b.relay = Some(Arc::new(KafkaRelay::connect(&opts).await.map_err(fail)?));
        b.relay_name = format!("kafka {brokers} (topic {})", opts.relay_topic);
    }
    Ok(())
}

#[cfg(not(feature = "kafka"))]
async fn connect_kafka(
    _: &ServerConfig,
    _: &str,
    _: bool,
    _: &mut Backends,
) -> Result<(), ServerError> {
    Err(crate::config::ConfigError::Invalid(
        "kafka.brokers is set but messenger-server was built without the `kafka` feature".into(),
    )
    .into())
}

#[cfg(feature = "hbase")]
async fn connect_hbase(c: &ServerConfig, addr: &str, b: &mut Backends) -> Result<(), ServerError> {
    use messenger_storage_hbase::{HBaseOptions, HBaseStore};
    let mut opts = HBaseOptions::new(addr)
        .with_table_prefix(c.hbase.table_prefix.clone())
        .with_pool_size(c.hbase.pool_size);
    if !c.hbase.member_cache {
        opts.member_cache_min = None;
    }
    let store = HBaseStore::connect(opts)
        .await
        .map_err(|source| ServerError::Backend {
            context: format!("cannot use HBase at {addr}"),
            hint: format!(
                "Check that the HBase Thrift2 gateway runs and answers at {addr} \
                 (`hbase thrift2 start -p PORT`; in development `scripts/hbase.sh start`), \
                 or fix --hbase / MESSENGER_HBASE."
            ),
            source,
        })?;
    b.messages = Some(Arc::new(store.clone()));
    b.threads = Some(Arc::new(store.clone()));
    b.push_registry = Some(Arc::new(store));
    b.stores = format!("hbase {addr} (tables {}*)", c.hbase.table_prefix);
    Ok(())
}

#[cfg(not(feature = "hbase"))]
async fn connect_hbase(_: &ServerConfig, _: &str, _: &mut Backends) -> Result<(), ServerError> {
    Err(crate::config::ConfigError::Invalid(
        "hbase.address is set but messenger-server was built without the `hbase` feature".into(),
    )
    .into())
}

/// Opens the SQLite store in `store.data_dir` (feature `sqlite`).
#[cfg(feature = "sqlite")]
async fn connect_sqlite(c: &ServerConfig, b: &mut Backends) -> Result<(), ServerError> {
    use messenger_storage_sqlite::{SqliteOptions, SqliteStore, SyncMode};
    let sync = match c.store.sync {
        crate::config::SyncMode::Normal => SyncMode::Normal,
        _ => SyncMode::Full,
    };
    let store = SqliteStore::open(SqliteOptions::new(&c.store.data_dir).sync(sync))
        .await
        .map_err(|e| ServerError::DataDir(e.to_string()))?;
    let dir = std::path::absolute(&c.store.data_dir).unwrap_or_else(|_| c.store.data_dir.clone());
    b.stores = format!("sqlite {} (sync {})", dir.display(), sync);
    b.messages = Some(Arc::new(store.clone()));
    b.threads = Some(Arc::new(store.clone()));
    b.push_registry = Some(Arc::new(store));
    Ok(())
}

#[cfg(not(feature = "sqlite"))]
async fn connect_sqlite(_: &ServerConfig, _: &mut Backends) -> Result<(), ServerError> {
    Err(crate::config::ConfigError::Invalid(
        "store.kind is sqlite but messenger-server was built without the `sqlite` feature: \
         build with --features sqlite, or set store.kind = memory (--store memory)"
            .into(),
    )
    .into())
}

#[cfg(feature = "redis")]
async fn connect_redis(c: &ServerConfig, url: &str, b: &mut Backends) -> Result<(), ServerError> {
    use messenger_core::ErrorKind;
    use messenger_redis::RedisCluster;
    let cluster = RedisCluster::connect(url, c.node_id, redis_options(c))
        .await
        .map_err(|source| match source.kind() {
            ErrorKind::Conflict => ServerError::NodeIdConflict {
                node: c.node_id,
                ttl: c.redis.node_ttl,
                source,
            },
            ErrorKind::BadRequest => ServerError::Backend {
                context: format!("cannot use Redis at {}", redact(url)),
                hint: "Fix --redis / MESSENGER_REDIS_URL (redis://host:port/db).".into(),
                source,
            },
            _ => ServerError::Backend {
                context: format!("cannot use Redis at {}", redact(url)),
                hint: "Check that redis-server runs and is reachable there, or fix \
                       --redis / MESSENGER_REDIS_URL."
                    .into(),
                source,
            },
        })?;
    b.directory = Some(cluster.directory());
    b.presence = Some(cluster.presence());
    b.relay = Some(match b.relay.take() {
        // Another transport (Kafka) cannot tell which nodes listen: the live claims in
        // Redis answer for it, so large threads still cost one envelope per node.
        Some(relay) => cluster.relay_with_live_nodes(relay),
        None => cluster.relay(),
    });
    b.sessions = format!(
        "redis {} (prefix {}, node ttl {:?})",
        redact(url),
        c.redis.key_prefix,
        c.redis.node_ttl
    );

    b.redis = Some(cluster);
    Ok(())
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(_: &ServerConfig, _: &str, _: &mut Backends) -> Result<(), ServerError> {
    Err(crate::config::ConfigError::Invalid(
        "redis.url is set but messenger-server was built without the `redis` feature".into(),
    )
    .into())
}

/// The URL without a password (`redis://user:secret@host` -> `redis://user:***@host`).
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_options_follow_the_ttl() {
        let mut c = ServerConfig::default();
        let o = redis_options(&c);
        assert_eq!(o.node_ttl, Duration::from_secs(15));
        assert_eq!(o.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(o.op_timeout, Duration::from_secs(2));
        c.redis.node_ttl = Duration::from_secs(2);
        let o = redis_options(&c);
        assert_eq!(o.op_timeout, Duration::from_millis(500));
        assert!(o.heartbeat_interval * 2 <= o.node_ttl);
    }
}
