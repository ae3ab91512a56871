//! Per-provider metrics of a [`PushService`](crate::PushService), on `prometheus-client`
//! (the crate messenger-server and messenger-worker export `/metrics` with).
//!
//! Registered by [`PushMetrics::register`] in the binary's registry, under its prefix
//! (`messenger_` for the server, `messenger_worker_` for the worker):
//!
//! | series | labels | what |
//! |---|---|---|
//! | `push_sent_total` | `provider` | targets that accepted a notification |
//! | `push_failed_total` | `provider`, `reason` | targets given up on: `transient` (429, 5xx, network after the last try), `credentials` (the provider refuses our key), `rejected` (payload or target refused), `no_provider` (a registered platform with no provider configured) |
//! | `push_retries_total` | `provider` | transient failures tried again |
//! | `push_targets_removed_total` | `provider` | targets the provider reported gone, unregistered |
//! | `push_request_seconds` | `provider` | one provider call (one notification to one user's targets of that platform), histogram |
//!
//! `provider` is `apns`, `fcm`, `web_push` or `webhook`.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::provider::Platform;

type One = [(&'static str, &'static str); 1];
type Two = [(&'static str, &'static str); 2];

/// Upper bounds of `push_request_seconds`, in seconds.
pub const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Reasons of `push_failed_total`.
pub const FAILURE_REASONS: [&str; 4] = ["transient", "credentials", "rejected", "no_provider"];

fn histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// The counters and the latency histogram of one [`PushService`](crate::PushService).
/// Cheap to clone (the series are shared).
#[derive(Debug, Clone)]
pub struct PushMetrics {
    sent: Family<One, Counter>,
    failed: Family<Two, Counter>,
    retries: Family<One, Counter>,
    removed: Family<One, Counter>,
    latency: Family<One, Histogram, fn() -> Histogram>,
}

impl Default for PushMetrics {
    fn default() -> Self {
        PushMetrics {
            sent: Family::default(),
            failed: Family::default(),
            retries: Family::default(),
            removed: Family::default(),
            latency: Family::new_with_constructor(histogram),
        }
    }
}

fn provider(p: Platform) -> One {
    [("provider", p.as_str())]
}

impl PushMetrics {
    /// Registers every series in `registry` (see the module docs for the names).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "push_sent",
            "Push targets that accepted a notification, by provider",
            self.sent.clone(),
        );
        registry.register(
            "push_failed",
            "Push targets given up on, by provider and reason",
            self.failed.clone(),
        );
        registry.register(
            "push_retries",
            "Transient push failures (429, 5xx, network) tried again, by provider",
            self.retries.clone(),
        );
        registry.register(
            "push_targets_removed",
            "Push targets the provider reported gone, unregistered, by provider",
            self.removed.clone(),
        );
        registry.register(
            "push_request_seconds",
            "Duration of one provider call (one notification to one user's targets of that platform)",
            self.latency.clone(),
        );
    }

    /// Creates the series of `p` at zero, so a configured provider shows before its
    /// first notification.
    pub(crate) fn init(&self, p: Platform) {
        drop(self.sent.get_or_create(&provider(p)));
        drop(self.retries.get_or_create(&provider(p)));
        drop(self.removed.get_or_create(&provider(p)));
        drop(self.latency.get_or_create(&provider(p)));
        for r in FAILURE_REASONS {
            drop(
                self.failed
                    .get_or_create(&[("provider", p.as_str()), ("reason", r)]),
            );
        }
    }

    pub(crate) fn sent(&self, p: Platform) {
        self.sent.get_or_create(&provider(p)).inc();
    }

    pub(crate) fn failed(&self, p: Platform, reason: &'static str) {
        self.failed
            .get_or_create(&[("provider", p.as_str()), ("reason", reason)])
            .inc();
    }

    pub(crate) fn retried(&self, p: Platform) {
        self.retries.get_or_create(&provider(p)).inc();
    }

    pub(crate) fn removed(&self, p: Platform) {
        self.removed.get_or_create(&provider(p)).inc();
    }

    pub(crate) fn observe(&self, p: Platform, d: Duration) {
        self.latency
            .get_or_create(&provider(p))
            .observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_by_provider_and_reason() {
        let m = PushMetrics::default();
        let mut reg = Registry::with_prefix("messenger");
        m.register(&mut reg);
        m.init(Platform::Apns);
        m.sent(Platform::Apns);
        m.failed(Platform::WebPush, "credentials");
        m.removed(Platform::Fcm);
        m.observe(Platform::Apns, Duration::from_millis(3));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        for line in [
            "messenger_push_sent_total{provider=\"apns\"} 1",
            "messenger_push_failed_total{provider=\"web_push\",reason=\"credentials\"} 1",
            "messenger_push_failed_total{provider=\"apns\",reason=\"transient\"} 0",
            "messenger_push_targets_removed_total{provider=\"fcm\"} 1",
            "messenger_push_retries_total{provider=\"apns\"} 0",
            "messenger_push_request_seconds_count{provider=\"apns\"} 1",
            "messenger_push_request_seconds_bucket{le=\"0.005\",provider=\"apns\"} 1",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
    }
}
