//! [`KafkaOptions`]: where the brokers are, the topic names, and any librdkafka setting.

use std::time::Duration;

use rdkafka::ClientConfig;

/// Default name of the event log topic.
pub const DEFAULT_EVENTS_TOPIC: &str = "messenger.events";
/// Default name of the relay topic.
pub const DEFAULT_RELAY_TOPIC: &str = "messenger.relay";

/// How to reach Kafka and which topics to use. `KafkaOptions::new(brokers)` gives the
/// documented defaults; set fields or use the `with_*` methods for the rest.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KafkaOptions {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The event log topic (default `messenger.events`).
    pub events_topic: String,
    /// The relay topic (default `messenger.relay`).
    pub relay_topic: String,
    /// Create a missing topic at start (default true). With false, or when the broker
    /// refuses (no CREATE permission), a missing topic is a start-up error that says
    /// how to create it.
    pub create_topics: bool,
    /// Partitions of a topic this crate creates: the event log's (default 16) bounds how
    /// many workers share the work; the relay's (default 16) how many nodes share one
    /// partition (a node reads its own partition, `node id % partitions`).
    pub events_partitions: i32,
    /// Partitions of the relay topic when it is created (default 16).
    pub relay_partitions: i32,
    /// Replication factor of created topics (default 1: a development broker; use 3 on
    /// a production cluster).
    pub replication_factor: i32,
    /// Extra librdkafka properties for every client (security, SASL, TLS, tuning), e.g.
    /// `("security.protocol", "SASL_SSL")`. They are applied last, so they override the
    /// defaults this crate sets.
    pub client_properties: Vec<(String, String)>,
    /// How long start-up waits for the brokers before it fails (default 10 s).
    pub connect_timeout: Duration,
    /// Events the event log keeps in memory while Kafka is slow or down before it
    /// sheds the oldest (default 100 000).
    pub event_buffer: usize,
    /// Most events of one thread in one event log record (default 100): events queued
    /// together go in one record, newline-separated, which costs the producer far less
    /// than a record each. 1: one event per record, for consumers that read a record
    /// as one JSON event (`docs/webhooks.md`, "The event log on Kafka").
    pub event_batch: usize,
    /// How long a relay send waits for the broker's acknowledgement before it reports
    /// failure (default 1 s); while the brokers are known to be down it fails at once.
    pub relay_send_timeout: Duration,
    /// The relay replaces its producer (at most once per this interval) when every send
    /// has failed for this long (default 10 s): librdkafka can keep a partition whose
    /// leader it saw as `-1` during a broker restart leaderless for good (librdkafka
    /// issue 5430), and a new producer fetches the metadata afresh. Records still
    /// queued in the old producer are dropped (best effort; members catch up).
    pub relay_rebuild_after: Duration,
}

impl KafkaOptions {
    /// Defaults for the given bootstrap brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaOptions {
            brokers: brokers.into(),
            events_topic: DEFAULT_EVENTS_TOPIC.to_string(),
            relay_topic: DEFAULT_RELAY_TOPIC.to_string(),
            create_topics: true,
            events_partitions: 16,
            relay_partitions: 16,
            replication_factor: 1,
            client_properties: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            event_buffer: 100_000,
            event_batch: 100,
            relay_send_timeout: Duration::from_secs(1),
            relay_rebuild_after: Duration::from_secs(10),
        }
    }

    /// Another event log topic name.
    pub fn with_events_topic(mut self, topic: impl Into<String>) -> Self {
        self.events_topic = topic.into();
        self
    }

    /// Another relay topic name.
    pub fn with_relay_topic(mut self, topic: impl Into<String>) -> Self {
        self.relay_topic = topic.into();
        self
    }

    /// Adds a librdkafka property (applied after this crate's defaults).
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client_properties.push((key.into(), value.into()));
        self
    }

    /// Whether a missing topic may be created at start.
    pub fn with_create_topics(mut self, create: bool) -> Self {
        self.create_topics = create;
        self
    }

    /// A librdkafka configuration with the brokers, `defaults`, then the user's
    /// properties on top.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // librdkafka logs through the `log` facade otherwise; errors reach us through
        // the client contexts.
        c.set("log_level", "4");
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.client_properties {
            c.set(k, v);
        }
        c
    }
}

/// Parses `KEY=VALUE` into a librdkafka property (for `--kafka-property` flags).
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "a Kafka client property is KEY=VALUE (a librdkafka setting such as \
             security.protocol=SASL_SSL), got {s:?}"
        )),
    }
}
