//! The worker's configuration: a TOML file, then `MESSENGER_WORKER_*` environment
//! variables, then flags (each layer overrides the one before).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use messenger_kafka::KafkaOptions;
use messenger_push::RetryPolicy;
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
    /// Retries of webhook and push deliveries before an event is dead-lettered.
    pub retry: RetrySection,
    /// Push notifications for members with no live session.
    pub push: PushSection,
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
            push: PushSection::default(),
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

/// `[push]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    /// Groups with more members than this get throttled push (default 100, as the
    /// engine).
    pub large_group_threshold: Option<usize>,
    /// In a large group, at most one push per member and thread per this interval
    /// (default 60s).
    #[serde(with = "humantime_serde")]
    pub large_group_interval: Option<Duration>,
    /// The webhook push provider: every notification is POSTed, signed, here.
    pub webhook: Option<Endpoint>,
}

impl PushSection {
    /// The large-group threshold.
    pub fn threshold(&self) -> usize {
        self.large_group_threshold.unwrap_or(100)
    }

    /// The large-group interval.
    pub fn interval(&self) -> Duration {
        self.large_group_interval.unwrap_or(Duration::from_secs(60))
    }
}

/// A URL with its signing secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where to POST.
    pub url: String,
    /// The HMAC secret, or
    #[serde(default)]
    pub secret: Option<String>,
    /// the name of an environment variable that holds it (keeps it out of the file).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Per-request timeout (default 10s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Endpoint {
    /// The secret, from the config or the environment.
    pub fn secret(&self, what: &str) -> Result<String, String> {
        match (&self.secret, &self.secret_env) {
            (Some(s), _) if !s.is_empty() => Ok(s.clone()),
            (_, Some(var)) => std::env::var(var).map_err(|_| {
                format!("{what}: the environment variable {var} (secret_env) is not set")
            }),
            _ => Err(format!(
                "{what}: a signing secret is required (secret = \"...\" or secret_env = \"VAR\")"
            )),
        }
    }
}

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
        if self.push.webhook.is_none() && self.webhooks.is_empty() {
            return Err(
                "nothing to hand events to: configure [push.webhook] and/or \
                        [[webhooks]] (see docs/operations.md)"
                    .into(),
            );
        }
        if let Some(p) = &self.push.webhook {
            check_url("push.webhook.url", &p.url)?;
            p.secret("push.webhook")?;
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.webhooks {
            if !names.insert(&w.name) {
                return Err(format!("two webhooks are named {:?}", w.name));
            }
            check_url(&format!("webhooks.{}.url", w.name), &w.endpoint.url)?;
            w.endpoint.secret(&format!("webhook {}", w.name))?;
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

fn check_url(what: &str, url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!(
            "{what} must be an http:// or https:// URL, got {url:?}"
        ))
    }
}
