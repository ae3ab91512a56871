//! Metrics on `prometheus-client`, exposed at `/metrics` (OpenMetrics text).
//!
//! Every series is registered under the `messenger_` prefix in a [`Registry`]: the
//! server's own one, or the embedder's, given to
//! [`ServerBuilder::metrics_registry`](crate::ServerBuilder::metrics_registry) so that
//! one scrape shows the application's series next to these. The transport's counters
//! are `prometheus-client` metrics; the engine's are read from
//! [`EngineStats`](messenger_core::engine::EngineStats) at scrape time by a collector, so
//! the hot path stays one atomic increment per event. [`SERIES`] lists every series;
//! `docs/operations.md` explains them and the alerts worth setting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use messenger_core::engine::Engine;
use messenger_core::protocol::CLIENT_FRAME_TYPES;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// A metrics registry shared between the server and the embedder.
pub type SharedRegistry = Arc<RwLock<Registry>>;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every series the server exports (sample names as scraped), checked by a test.
pub const SERIES: &[&str] = &[
    "messenger_connections_open",
    "messenger_connections_total",
    "messenger_unauthorized_total",
    "messenger_heartbeat_timeouts_total",
    "messenger_oversized_frames_total",
    "messenger_frames_paced_total",
    "messenger_slow_consumer_closes_total",
    "messenger_frames_in_total",
    "messenger_frames_out_total",
    "messenger_errors_total",
    "messenger_delivery_latency_seconds_bucket",
    "messenger_delivery_latency_seconds_sum",
    "messenger_delivery_latency_seconds_count",
    "messenger_sessions",
    "messenger_messages_accepted_total",
    "messenger_duplicate_sends_total",
    "messenger_acks_total",
    "messenger_pushes_total",
    "messenger_push_failures_total",
    "messenger_relay_sent_total",
    "messenger_relay_failures_total",
    "messenger_relay_retried_total",
    "messenger_relay_dropped_total",
    "messenger_slow_consumers_total",
    "messenger_events_published_total",
    "messenger_limit_refusals_total",
    "messenger_store_batches_total",
    "messenger_store_batch_messages_total",
];

const SERVER_FRAME_TYPES: [&str; 11] = [
    "welcome",
    "message_sent",
    "receive_message",
    "message_ack",
    "thread",
    "threads",
    "history",
    "presence",
    "typing",
    "pong",
    "error",
];

/// Upper bounds of the delivery latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = [(&'static str, &'static str); 1];

/// The transport's metrics. Private: read them through `/metrics`.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) connections_open: Gauge,
    pub(crate) connections_total: Counter,
    unauthorized: Family<Labels, Counter>,
    pub(crate) heartbeat_timeouts: Counter,
    pub(crate) oversized_frames: Counter,
    pub(crate) frames_paced: Counter,
    pub(crate) slow_consumer_closes: Counter,
    frames_in: Vec<Counter>,
    frames_in_invalid: Counter,
    frames_in_binary: Counter,
    frames_out: Vec<Counter>,
    frames_out_other: Counter,
    limit_refusals: Family<Labels, Counter>,
    shared: Arc<Shared>,
}

/// What the scrape-time collector reads.
#[derive(Debug, Default)]
struct Shared {
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; 14],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Creates the metrics and registers them (and the engine's) in `registry` under the
    /// `messenger` prefix.
    pub(crate) fn register(registry: &mut Registry, engine: Engine) -> Self {
        let r = registry.sub_registry_with_prefix("messenger");
        let connections_open = Gauge::default();
        r.register(
            "connections_open",
            "WebSocket connections open now",
            connections_open.clone(),
        );
        let connections_total = Counter::default();
        r.register(
            "connections",
            "WebSocket connections accepted",
            connections_total.clone(),
        );
        let unauthorized = Family::<Labels, Counter>::default();
        r.register(
            "unauthorized",
            "/ws requests refused before the upgrade, by reason (401, or 503 when the key set is unavailable)",
            unauthorized.clone(),
        );
        for reason in crate::auth::AuthError::REASONS {
            drop(unauthorized.get_or_create(&[("reason", *reason)]));
        }
        let heartbeat_timeouts = Counter::default();
        r.register(
            "heartbeat_timeouts",
            "Connections closed because the peer went silent (4001)",
            heartbeat_timeouts.clone(),
        );
        let oversized_frames = Counter::default();
        r.register(
            "oversized_frames",
            "Connections closed with 1009 (frame over the size limit)",
            oversized_frames.clone(),
        );
        let frames_paced = Counter::default();
        r.register(
            "frames_paced",
            "Client frames over the session's frame rate, held until a token was due (not refused)",
            frames_paced.clone(),
        );
        let slow_consumer_closes = Counter::default();
        r.register(
            "slow_consumer_closes",
            "Connections closed as slow consumers (4000): queue overflow or blocked writes",
            slow_consumer_closes.clone(),
        );
        let frames_in_family = Family::<Labels, Counter>::default();
        r.register(
            "frames_in",
            "Client frames received, by type",
            frames_in_family.clone(),
        );
        let frames_in = CLIENT_FRAME_TYPES
            .iter()
            .map(|t| frames_in_family.get_or_create(&[("type", *t)]).clone())
            .collect();
        let frames_in_invalid = frames_in_family
            .get_or_create(&[("type", "invalid")])
            .clone();
        let frames_in_binary = frames_in_family
            .get_or_create(&[("type", "binary")])
            .clone();
        let frames_out_family = Family::<Labels, Counter>::default();
        r.register(
            "frames_out",
            "Server frames written to sockets, by type",
            frames_out_family.clone(),
        );
        let frames_out = SERVER_FRAME_TYPES
            .iter()
            .map(|t| frames_out_family.get_or_create(&[("type", *t)]).clone())
            .collect();
        let frames_out_other = frames_out_family
            .get_or_create(&[("type", "other")])
            .clone();
        let limit_refusals = Family::<Labels, Counter>::default();
        r.register(
            "limit_refusals",
            "Requests refused by an abuse limit, by limit (docs/protocol.md section 3)",
            limit_refusals.clone(),
        );
        for limit in crate::limits::LIMITS {
            drop(limit_refusals.get_or_create(&[("limit", *limit)]));
        }
        let shared = Arc::new(Shared::default());
        r.register_collector(Box::new(EngineCollector {
            engine,
            shared: shared.clone(),
        }));
        Metrics {
            connections_open,
            connections_total,
            unauthorized,
            heartbeat_timeouts,
            oversized_frames,
            frames_paced,
            slow_consumer_closes,
            frames_in,
            frames_in_invalid,
            frames_in_binary,
            frames_out,
            frames_out_other,
            limit_refusals,
            shared,
        }
    }

    /// Counts a refused `/ws` request.
    pub(crate) fn unauthorized(&self, reason: &'static str) {
        self.unauthorized.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a refusal by an abuse limit (a name in `limits::LIMITS`).
    pub(crate) fn limit(&self, limit: &'static str) {
        self.limit_refusals.get_or_create(&[("limit", limit)]).inc();
    }

    /// Counts a client frame by `type` (`None`: undecodable).
    pub(crate) fn frame_in(&self, kind: Option<&str>) {
        match kind.and_then(|k| CLIENT_FRAME_TYPES.iter().position(|t| *t == k)) {
            Some(i) => self.frames_in[i].inc(),
            None => self.frames_in_invalid.inc(),
        };
    }

    /// Counts a binary client frame (reserved, answered with `bad_request`).
    pub(crate) fn binary_in(&self) {
        self.frames_in_binary.inc();
    }

    /// Counts a server frame written to a socket.
    pub(crate) fn frame_out(&self, kind: &str) {
        match SERVER_FRAME_TYPES.iter().position(|t| *t == kind) {
            Some(i) => self.frames_out[i].inc(),
            None => self.frames_out_other.inc(),
        };
    }

    /// Counts an `error` reply the transport produced itself (decode errors, rate limit).
    pub(crate) fn error(&self, code: &'static str) {
        let mut g = self.shared.errors.lock().unwrap_or_else(|p| p.into_inner());
        *g.entry(code).or_insert(0) += 1;
    }

    /// Records the time from a message's acceptance to its hand-off to a socket: one
    /// atomic increment per observation (buckets are summed when scraped).
    pub(crate) fn observe_delivery(&self, d: Duration) {
        let s = &self.shared;
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            s.latency_buckets[i].fetch_add(1, Relaxed);
        }
        s.latency_count.fetch_add(1, Relaxed);
        s.latency_sum_us
            .fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }
}

/// Encodes `registry` as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// The engine's counters, the error codes and the latency histogram, read when scraped.
/// The Kafka event log's counters (`kafka.brokers` set), read at scrape time:
/// `messenger_event_log_{delivered,shed,retried,failed,records}_total` and
/// `messenger_event_log_buffered`.
#[cfg(feature = "kafka")]
#[derive(Debug)]
pub(crate) struct EventLogCollector(pub(crate) Arc<messenger_kafka::KafkaEventLog>);

#[cfg(feature = "kafka")]
impl Collector for EventLogCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let m = enc.encode_descriptor(
            "event_log_delivered",
            "Events the Kafka brokers acknowledged",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.delivered()).encode(m)?;
        counter(
            &mut enc,
            "event_log_shed",
            "Events shed because the event log buffer was full (lost for push and webhooks)",
            &s.shed,
        )?;
        counter(
            &mut enc,
            "event_log_retried",
            "Events queued again after a retriable produce failure",
            &s.retried,
        )?;
        counter(
            &mut enc,
            "event_log_failed",
            "Events the brokers refused for good (lost)",
            &s.failed,
        )?;
        counter(
            &mut enc,
            "event_log_records",
            "Event log records produced (a thread's waiting events share one)",
            &s.records,
        )?;
        let g = enc.encode_descriptor(
            "event_log_buffered",
            "Events waiting for the Kafka brokers (in memory and in the producer)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(self.0.buffered()).unwrap_or(i64::MAX)).encode(g)
    }
}

#[derive(Debug)]
struct EngineCollector {
    engine: Engine,
    shared: Arc<Shared>,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: &AtomicU64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v.load(Relaxed)).encode(m)
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.engine.stats();
        let g = enc.encode_descriptor(
            "sessions",
            "Sessions open on this node's engine (WebSocket and in-process)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.engine.local_sessions() as i64).encode(g)?;
        counter(
            &mut enc,
            "messages_accepted",
            "Messages accepted by the store (duplicates excluded)",
            &s.messages_accepted,
        )?;
        counter(
            &mut enc,
            "duplicate_sends",
            "Idempotent resends answered from the store",
            &s.duplicate_sends,
        )?;
        counter(&mut enc, "acks", "Acks that advanced a watermark", &s.acks)?;
        counter(
            &mut enc,
            "pushes",
            "Notifications handed to the push sink",
            &s.pushes,
        )?;
        counter(
            &mut enc,
            "push_failures",
            "Notifications the push sink refused",
            &s.push_failures,
        )?;
        counter(
            &mut enc,
            "relay_sent",
            "Envelopes relayed to other nodes",
            &s.relay_sent,
        )?;
        counter(
            &mut enc,
            "relay_failures",
            "Relay sends that failed at their first try (kept for another try)",
            &s.relay_failures,
        )?;
        counter(
            &mut enc,
            "relay_retried",
            "Envelopes the relay took on a later try after a failed send",
            &s.relay_retried,
        )?;
        counter(
            &mut enc,
            "relay_dropped",
            "Envelopes given up after failed sends (remote members get them on catch-up only)",
            &s.relay_dropped,
        )?;
        counter(
            &mut enc,
            "slow_consumers",
            "Sessions the engine closed because their outbound queue overflowed",
            &s.slow_consumers,
        )?;
        counter(
            &mut enc,
            "events_published",
            "Events handed to the event sink (the Kafka event log with --kafka)",
            &s.events_published,
        )?;
        counter(
            &mut enc,
            "store_batches",
            "MessageStore::append_batch calls (group commit: one per thread per store round trip)",
            &s.store_batches,
        )?;
        counter(
            &mut enc,
            "store_batch_messages",
            "Messages handed to append_batch; divided by store_batches, the mean batch size",
            &s.store_batch_messages,
        )?;

        let mut errors = s.errors_by_code();
        for (code, n) in self
            .shared
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            *errors.entry(code).or_insert(0) += n;
        }
        let mut fam = enc.encode_descriptor(
            "errors",
            "Error replies, by protocol code",
            None,
            MetricType::Counter,
        )?;
        for (code, n) in errors {
            let labels = [("code", code)];
            let m = fam.encode_family(&labels)?;
            ConstCounter::new(n).encode(m)?;
        }

        let sh = &self.shared;
        let mut cumulative = 0u64;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(sh.latency_buckets.iter())
            .map(|(le, n)| {
                cumulative += n.load(Relaxed);
                (*le, cumulative)
            })
            .collect();
        let count = sh.latency_count.load(Relaxed);
        let mut buckets = buckets;
        buckets.push((f64::INFINITY, count));
        let sum = sh.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let mut m = enc.encode_descriptor(
            "delivery_latency",
            "Time from accepting a message to handing it to a recipient's socket",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

#[cfg(all(test, feature = "mem"))]
mod tests {
    use super::*;
    use messenger_core::engine::EngineConfig;

    #[tokio::test]
    async fn every_series_is_exported() {
        let engine = Engine::start(EngineConfig::default(), messenger_storage_mem::adapters())
            .await
            .expect("engine");
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg, engine);
        m.frame_in(Some("ping"));
        m.frame_in(None);
        m.frame_out("pong");
        m.error("rate_limited");
        m.unauthorized("expired");
        m.observe_delivery(Duration::from_millis(3));
        let text = encode(&reg);
        for s in SERIES {
            assert!(
                text.lines().any(|l| l.starts_with(s)),
                "{s} missing from:\n{text}"
            );
        }
        assert!(text.contains("messenger_frames_in_total{type=\"ping\"} 1"));
        assert!(text.contains("messenger_frames_in_total{type=\"invalid\"} 1"));
        assert!(text.contains("messenger_frames_out_total{type=\"pong\"} 1"));
        assert!(text.contains("messenger_errors_total{code=\"rate_limited\"} 1"));
        assert!(text.contains("messenger_unauthorized_total{reason=\"expired\"} 1"));
        assert!(text.contains("messenger_delivery_latency_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("messenger_delivery_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("messenger_delivery_latency_seconds_count 1"));
    }
}
