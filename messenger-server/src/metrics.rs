//! Server metrics and their Prometheus text exposition (hand-written, no dependency).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use messenger_core::engine::EngineStats;
use messenger_core::protocol::CLIENT_FRAME_TYPES;

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

/// Counters the transport keeps (the engine keeps its own, see [`EngineStats`]).
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket connections open now.
    pub connections_open: AtomicI64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// `/ws` requests refused with 401.
    pub unauthorized: AtomicU64,
    /// Connections closed because the peer stopped answering pings.
    pub heartbeat_timeouts: AtomicU64,
    /// Connections closed with 1009 (frame over the size limit).
    pub oversized_frames: AtomicU64,
    /// Connections closed as slow consumers (close code 4000).
    pub slow_consumer_closes: AtomicU64,
    frames_in: [AtomicU64; 11],
    frames_in_invalid: AtomicU64,
    frames_in_binary: AtomicU64,
    frames_out: [AtomicU64; 11],
    frames_out_other: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; 14],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// The Kafka event log, when the server produces one (`--kafka`).
    #[cfg(feature = "kafka")]
    pub(crate) event_log: std::sync::OnceLock<std::sync::Arc<messenger_kafka::KafkaEventLog>>,
}

impl Metrics {
    /// Counts a client frame by `type` (`None`: undecodable).
    pub fn frame_in(&self, kind: Option<&str>) {
        match kind.and_then(|k| CLIENT_FRAME_TYPES.iter().position(|t| *t == k)) {
            Some(i) => self.frames_in[i].fetch_add(1, Relaxed),
            None => self.frames_in_invalid.fetch_add(1, Relaxed),
        };
    }

    /// Counts a binary client frame (reserved, answered with `bad_request`).
    pub fn binary_in(&self) {
        self.frames_in_binary.fetch_add(1, Relaxed);
    }

    /// Counts a server frame written to a socket.
    pub fn frame_out(&self, kind: &str) {
        match SERVER_FRAME_TYPES.iter().position(|t| *t == kind) {
            Some(i) => self.frames_out[i].fetch_add(1, Relaxed),
            None => self.frames_out_other.fetch_add(1, Relaxed),
        };
    }

    /// Counts an `error` reply the transport produced itself (decode errors, rate limit).
    pub fn error(&self, code: &'static str) {
        let mut g = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *g.entry(code).or_insert(0) += 1;
    }

    /// Records the time from a message's acceptance to its hand-off to a socket.
    pub fn observe_delivery(&self, d: Duration) {
        // One increment per observation: buckets are stored per interval and summed
        // into Prometheus's cumulative form only when rendered.
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// The Prometheus text exposition of these metrics and the engine's.
    pub fn render(&self, engine: &EngineStats) -> String {
        let mut o = String::with_capacity(4096);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP messenger_connections_open WebSocket connections open now.\n\
             # TYPE messenger_connections_open gauge\nmessenger_connections_open {}",
            self.connections_open.load(Relaxed).max(0)
        );
        counter(
            &mut o,
            "messenger_connections_total",
            "WebSocket connections accepted.",
            self.connections_total.load(Relaxed),
        );
        counter(
            &mut o,
            "messenger_unauthorized_total",
            "WebSocket upgrades refused with 401.",
            self.unauthorized.load(Relaxed),
        );
        counter(
            &mut o,
            "messenger_heartbeat_timeouts_total",
            "Connections closed because the peer went silent.",
            self.heartbeat_timeouts.load(Relaxed),
        );
        counter(
            &mut o,
            "messenger_oversized_frames_total",
            "Connections closed with 1009.",
            self.oversized_frames.load(Relaxed),
        );
        counter(
            &mut o,
            "messenger_slow_consumer_closes_total",
            "Connections closed as slow consumers (4000).",
            self.slow_consumer_closes.load(Relaxed),
        );
        counter(
            &mut o,
            "messenger_messages_accepted_total",
            "Messages accepted by the store (duplicates excluded).",
            engine.messages_accepted.load(Relaxed),
        );
        counter(
            &mut o,
            "messenger_duplicate_sends_total",
            "Idempotent resends answered from the store.",
            engine.duplicate_sends.load(Relaxed),
        );
        counter(
            &mut o,
            "messenger_acks_total",
            "Acks that advanced a watermark.",
            engine.acks.load(Relaxed),
        );
        counter(
            &mut o,
            "messenger_pushes_total",
            "Notifications handed to the push sink.",
            engine.pushes.load(Relaxed),
        );

        let _ = writeln!(
            o,
            "# HELP messenger_frames_in_total Client frames received, by type.\n\
             # TYPE messenger_frames_in_total counter"
        );
        for (i, t) in CLIENT_FRAME_TYPES.iter().enumerate() {
            let _ = writeln!(
                o,
                "messenger_frames_in_total{{type=\"{t}\"}} {}",
                self.frames_in[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "messenger_frames_in_total{{type=\"invalid\"}} {}\n\
             messenger_frames_in_total{{type=\"binary\"}} {}",
            self.frames_in_invalid.load(Relaxed),
            self.frames_in_binary.load(Relaxed)
        );

        let _ = writeln!(
            o,
            "# HELP messenger_frames_out_total Server frames written to sockets, by type.\n\
             # TYPE messenger_frames_out_total counter"
        );
        for (i, t) in SERVER_FRAME_TYPES.iter().enumerate() {
            let _ = writeln!(
                o,
                "messenger_frames_out_total{{type=\"{t}\"}} {}",
                self.frames_out[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "messenger_frames_out_total{{type=\"other\"}} {}",
            self.frames_out_other.load(Relaxed)
        );

        let mut errors = engine.errors_by_code();
        for (code, n) in self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            *errors.entry(code).or_insert(0) += n;
        }
        let _ = writeln!(
            o,
            "# HELP messenger_errors_total Error replies, by code.\n\
             # TYPE messenger_errors_total counter"
        );
        for (code, n) in errors {
            let _ = writeln!(o, "messenger_errors_total{{code=\"{code}\"}} {n}");
        }

        let _ = writeln!(
            o,
            "# HELP messenger_delivery_latency_seconds Time from accepting a message to \
             handing it to a recipient's socket.\n\
             # TYPE messenger_delivery_latency_seconds histogram"
        );
        let mut cumulative = 0u64;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                o,
                "messenger_delivery_latency_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            o,
            "messenger_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             messenger_delivery_latency_seconds_sum {}\n\
             messenger_delivery_latency_seconds_count {count}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "# HELP messenger_events_published Events the engine published to its event sink.\n\
             # TYPE messenger_events_published counter\nmessenger_events_published {}",
            engine.events_published.load(Relaxed)
        );
        #[cfg(feature = "kafka")]
        if let Some(log) = self.event_log.get() {
            let s = log.stats();
            for (name, help, v) in [
                (
                    "delivered",
                    "Events the Kafka brokers acknowledged.",
                    &s.delivered,
                ),
                (
                    "shed",
                    "Events shed because the event log buffer was full (lost).",
                    &s.shed,
                ),
                (
                    "retried",
                    "Events queued again after a retriable produce failure.",
                    &s.retried,
                ),
                (
                    "failed",
                    "Events the brokers refused for good (lost).",
                    &s.failed,
                ),
            ] {
                counter(
                    &mut o,
                    &format!("messenger_event_log_{name}"),
                    help,
                    v.load(Relaxed),
                );
            }
            let _ = writeln!(
                o,
                "# HELP messenger_event_log_buffered Events waiting for the Kafka brokers.\n\
                 # TYPE messenger_event_log_buffered gauge\nmessenger_event_log_buffered {}",
                log.queued() + log.in_flight()
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.frame_in(Some("ping"));
        m.frame_in(None);
        m.frame_out("pong");
        m.error("rate_limited");
        m.observe_delivery(Duration::from_millis(3));
        let text = m.render(&EngineStats::default());
        assert!(text.contains("messenger_frames_in_total{type=\"ping\"} 1"));
        assert!(text.contains("messenger_frames_in_total{type=\"invalid\"} 1"));
        assert!(text.contains("messenger_frames_out_total{type=\"pong\"} 1"));
        assert!(text.contains("messenger_errors_total{code=\"rate_limited\"} 1"));
        assert!(text.contains("messenger_delivery_latency_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("messenger_delivery_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("messenger_delivery_latency_seconds_count 1"));
    }
}
