//! The worker's configuration: a TOML file, then `MESSENGER_WORKER_*` environment
//! variables, then flags (each layer overrides the one before).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use messenger_kafka::KafkaOptions;
use messenger_push::{PushSettings, RetryPolicy, WebhookSettings};
use serde::{Deserialize, Serialize};

/// Everything the worker needs. `docs/operations.md` lists every key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Kafka: brokers, group, topics, client properties.
    pub kafka: KafkaSection,
    /// Where `/metrics` and `/healthz` listen (default 127.0.0.1:9100).
    pub listen: SocketAddr,
    /// Events being handed off at once, across partitions (default 4096): the bound on
    /// memory and on how far the worker reads ahead of its committed offsets.
    pub max_in_flight: usize,
    /// Retries of application webhook deliveries before an event is dead-lettered.
    pub retry: RetrySection,
    /// The shared HBase store the servers use: where users' push targets and thread
    /// mutes are read from (needed by APNs, FCM and Web Push).
    pub hbase: HbaseSection,
    /// Push notifications for members with no live session: the same `[push]`
    /// sections as messenger-server's (`messenger_push::settings`).
    pub push: PushSettings,
    /// Application webhooks: each gets the events it subscribes to, signed.
    pub webhooks: Vec<WebhookEndpoint>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            kafka: KafkaSection::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            max_in_flight: 4096,
            retry: RetrySection::default(),
            hbase: HbaseSection::default(),
            push: PushSettings::default(),
            webhooks: Vec::new(),
        }
    }
}

/// `[kafka]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Bootstrap brokers, `host:port[,host:port]` (required).
    pub brokers: String,
    /// The consumer group every worker of a deployment shares (default
    /// `messenger-workers`): partitions are shared by the group's members.
    pub group: String,
    /// The event log topic (default `messenger.events`).
    pub events_topic: String,
    /// Where events that could not be handed off after the retries go (default
    /// `messenger.events.dlq`).
    pub dlq_topic: String,
    /// Create missing topics at start (default true).
    pub create_topics: bool,
    /// Partitions of topics the worker creates (default 16).
    pub partitions: i32,
    /// Where a new group starts: `earliest` (default: nothing produced before the first
    /// worker started is missed) or `latest`.
    pub start_from: String,
    /// Extra librdkafka properties (security, SASL, TLS, tuning).
    pub properties: BTreeMap<String, String>,
    /// How long start-up waits for the brokers (default 10 s).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: String::new(),
            group: "messenger-workers".into(),
            events_topic: messenger_kafka::DEFAULT_EVENTS_TOPIC.into(),
            dlq_topic: "messenger.events.dlq".into(),
            create_topics: true,
            partitions: 16,
            start_from: "earliest".into(),
            properties: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl KafkaSection {
    /// The client options these settings describe.
    pub fn options(&self) -> KafkaOptions {
        let mut o = KafkaOptions::new(&self.brokers).with_events_topic(&self.events_topic);
        o.create_topics = self.create_topics;
        o.events_partitions = self.partitions;
        o.connect_timeout = self.connect_timeout;
        for (k, v) in &self.properties {
            o = o.with_property(k, v);
        }
        o
    }
}

/// `[retry]`: jittered exponential backoff.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// Tries in all before dead-lettering (default 8).
    pub attempts: u32,
    /// First delay (default 500ms).
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Longest delay (default 60s).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            attempts: 8,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetrySection {
    /// As a policy.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.attempts, self.min_delay, self.max_delay)
    }
}

/// `[hbase]`: the servers' HBase (Thrift2 gateway), for the push registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HbaseSection {
    /// Thrift2 gateway `host:port`, the one the servers use (`--hbase`). Default none.
    pub address: Option<String>,
    /// Prefix of the HBase table names, as the servers' (default `messenger_`).
    pub table_prefix: String,
    /// Most concurrent Thrift connections (default 8: the worker only reads targets
    /// and mutes, and removes gone targets).
    pub pool_size: usize,
}

impl Default for HbaseSection {
    fn default() -> Self {
        HbaseSection {
            address: None,
            table_prefix: "messenger_".into(),
            pool_size: 8,
        }
    }
}

/// A URL with its signing secret (`[push.webhook]`, each of `[[webhooks]]`).
pub type Endpoint = WebhookSettings;

/// `[[webhooks]]`: one application endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// A name for metrics, logs and dead letters.
    pub name: String,
    /// URL and secret.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Event types to deliver (`message.created`, `receipt.updated`, `thread.created`,
    /// `thread.members_added`, `thread.member_left`), or `["*"]` (default) for all.
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Events per request (default 1: one request per event, body = the event). Above
    /// 1 the body is a JSON array of up to this many events.
    #[serde(default = "one")]
    pub batch_max: usize,
    /// How long a batch waits to fill (default 5ms).
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Requests in flight to this endpoint at once (default 64).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}
fn one() -> usize {
    1
}
fn default_linger() -> Duration {
    Duration::from_millis(5)
}
fn default_concurrency() -> usize {
    64
}

/// Event types a webhook may subscribe to.
pub const EVENT_TYPES: [&str; 5] = [
    "message.created",
    "receipt.updated",
    "thread.created",
    "thread.members_added",
    "thread.member_left",
];

impl WebhookEndpoint {
    /// Whether this endpoint wants events of `type_name`.
    pub fn wants(&self, type_name: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == type_name)
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--kafka`.
    pub brokers: Option<String>,
    /// `--group`.
    pub group: Option<String>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--hbase`.
    pub hbase: Option<String>,
    /// `--kafka-property`.
    pub properties: Vec<(String, String)>,
}

impl WorkerConfig {
    /// Loads the layers: `file` (if any), `MESSENGER_WORKER_*` (nested keys with `__`,
    /// e.g. `MESSENGER_WORKER_KAFKA__BROKERS`), then `flags`. Checks the result.
    pub fn load(file: Option<&PathBuf>, flags: &Overrides) -> Result<WorkerConfig, String> {
        let mut fig = Figment::from(Serialized::defaults(WorkerConfig::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(format!("config file {} does not exist", f.display()));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("MESSENGER_WORKER_").split("__"));
        let mut cfg: WorkerConfig = fig.extract().map_err(|e| format!("configuration: {e}"))?;
        if let Some(b) = &flags.brokers {
            cfg.kafka.brokers = b.clone();
        }
        if let Some(g) = &flags.group {
            cfg.kafka.group = g.clone();
        }
        if let Some(l) = flags.listen {
            cfg.listen = l;
        }
        if let Some(h) = &flags.hbase {
            cfg.hbase.address = Some(h.clone());
        }
        cfg.hbase.address = cfg.hbase.address.filter(|a| !a.trim().is_empty());
        for (k, v) in &flags.properties {
            cfg.kafka.properties.insert(k.clone(), v.clone());
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses what cannot work, with what to do.
    pub fn validate(&self) -> Result<(), String> {
        if self.kafka.brokers.trim().is_empty() {
            return Err(
                "no Kafka brokers: pass --kafka HOST:PORT (or kafka.brokers in the \
                        config file, or MESSENGER_WORKER_KAFKA__BROKERS)"
                    .into(),
            );
        }
        if !matches!(self.kafka.start_from.as_str(), "earliest" | "latest") {
            return Err(format!(
                "kafka.start_from is {:?}: use \"earliest\" or \"latest\"",
                self.kafka.start_from
            ));
        }
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".into());
        }
        if !self.push.enabled() && self.webhooks.is_empty() {
            return Err(
                "nothing to hand events to: configure push providers ([push.apns], \
                 [push.fcm], [push.webpush], [push.webhook]) and/or [[webhooks]] (see \
                 docs/operations.md)"
                    .into(),
            );
        }
        self.push.validate()?;
        if self.push.send_with_event_log {
            return Err(
                "push.send_with_event_log is a server setting (a server that sends push \
                 itself beside the event log); the worker always sends what its [push] \
                 sections configure: remove the key"
                    .into(),
            );
        }
        if self.push.device_providers() && self.hbase.address.is_none() {
            return Err(format!(
                "push providers {:?} send to the devices and browsers users registered, \
                 which the worker reads from the servers' shared HBase store: set \
                 hbase.address (--hbase HOST:PORT, MESSENGER_WORKER_HBASE__ADDRESS) to the \
                 Thrift2 gateway the servers use. A server on the embedded store (SQLite \
                 or memory) is one process that no worker can share: configure [push] on \
                 that server instead (with push.send_with_event_log = true there, as it \
                 produces the event log)",
                self.push.provider_names()
            ));
        }
        if self.hbase.pool_size == 0 {
            return Err("hbase.pool_size must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.webhooks {
            if !names.insert(&w.name) {
                return Err(format!("two webhooks are named {:?}", w.name));
            }
            w.endpoint.validate(&format!("webhooks.{}", w.name))?;
            for e in &w.events {
                if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
                    return Err(format!(
                        "webhook {}: unknown event type {e:?}; known: {} or \"*\"",
                        w.name,
                        EVENT_TYPES.join(", ")
                    ));
                }
            }
            if w.batch_max == 0 || w.concurrency == 0 {
                return Err(format!(
                    "webhook {}: batch_max and concurrency must be at least 1",
                    w.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_send_with_event_log_key_is_refused() {
        let config = |forced: bool| -> WorkerConfig {
            serde_json::from_value(serde_json::json!({
                "kafka": {"brokers": "127.0.0.1:9092"},
                "push": {
                    "webhook": {"url": "https://app.example/push", "secret": "s3cret"},
                    "send_with_event_log": forced,
                },
            }))
            .expect("valid")
        };
        config(false).validate().expect("the worker sends push");
        let e = config(true).validate().expect_err("a server setting");
        assert!(
            e.contains("server setting") && e.contains("remove the key"),
            "{e}"
        );
    }
}
