//! Prometheus metrics and the `/metrics` and `/healthz` endpoints.

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use messenger_push::PushMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the worker exports.
pub struct Metrics {
    registry: Registry,
    /// Events read from the log, by type.
    pub events: Family<Labels, Counter>,
    /// Webhook requests, by endpoint and outcome.
    pub webhook_requests: Family<Labels, Counter>,
    /// Events a webhook endpoint accepted, by endpoint.
    pub webhook_events: Family<Labels, Counter>,
    /// Push notifications by final outcome.
    pub pushes: Family<Labels, Counter>,
    /// Pushes skipped by the large-group throttle.
    pub push_throttled: Counter,
    /// Reads of the push registry (targets and mutes) that failed transiently and are
    /// tried again.
    pub push_registry_retries: Counter,
    /// Notifications waiting for the push registry to answer (it failed at least once).
    pub push_registry_waiting: Gauge,
    /// Hand-offs dead-lettered, by kind (`webhook`, `push`, `undecodable`).
    pub dead_lettered: Family<Labels, Counter>,
    /// Events being handed off now.
    pub in_flight: Gauge,
    /// Partitions assigned to this worker.
    pub assigned: Gauge<i64, AtomicI64>,
    /// Seconds from the event's creation to the end of its hand-off.
    pub handoff_seconds: Histogram,
    /// False once the consumer saw every broker down, true again on the next event.
    pub brokers_up: AtomicBool,
}

impl Metrics {
    /// A fresh registry with every metric registered, the push providers' too
    /// (`push_sent_total{provider}` ..., see [`messenger_push::metrics`]) when given.
    pub fn new(push: Option<&PushMetrics>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("messenger_worker");
        if let Some(p) = push {
            p.register(&mut registry);
        }
        let events = Family::<Labels, Counter>::default();
        let webhook_requests = Family::<Labels, Counter>::default();
        let webhook_events = Family::<Labels, Counter>::default();
        let pushes = Family::<Labels, Counter>::default();
        let push_throttled = Counter::default();
        let push_registry_retries = Counter::default();
        let push_registry_waiting = Gauge::default();
        let dead_lettered = Family::<Labels, Counter>::default();
        let in_flight = Gauge::default();
        let assigned = Gauge::<i64, AtomicI64>::default();
        let handoff_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ]);
        registry.register("events", "Events read from the event log", events.clone());
        registry.register(
            "webhook_requests",
            "Webhook requests by endpoint and outcome",
            webhook_requests.clone(),
        );
        registry.register(
            "webhook_events_delivered",
            "Events accepted by a webhook endpoint",
            webhook_events.clone(),
        );
        registry.register(
            "pushes",
            "Push notifications by final outcome",
            pushes.clone(),
        );
        registry.register(
            "push_throttled",
            "Pushes skipped by the large-group throttle",
            push_throttled.clone(),
        );
        registry.register(
            "push_registry_retries",
            "Failed reads of the push registry (targets, mutes), tried again with backoff",
            push_registry_retries.clone(),
        );
        registry.register(
            "push_registry_waiting",
            "Notifications waiting for the push registry to answer",
            push_registry_waiting.clone(),
        );
        registry.register(
            "dead_lettered",
            "Hand-offs written to the dead-letter topic",
            dead_lettered.clone(),
        );
        registry.register("in_flight", "Events being handed off", in_flight.clone());
        registry.register(
            "assigned_partitions",
            "Event log partitions assigned to this worker",
            assigned.clone(),
        );
        registry.register(
            "handoff_seconds",
            "From an event's creation to the end of its hand-off",
            handoff_seconds.clone(),
        );
        Arc::new(Metrics {
            registry,
            events,
            webhook_requests,
            webhook_events,
            pushes,
            push_throttled,
            push_registry_retries,
            push_registry_waiting,
            dead_lettered,
            in_flight,
            assigned,
            handoff_seconds,
            brokers_up: AtomicBool::new(true),
        })
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let up = m.brokers_up.load(std::sync::atomic::Ordering::Relaxed);
    let body = format!(
        "{{\"status\":\"{}\",\"assigned_partitions\":{},\"in_flight\":{}}}",
        if up { "ok" } else { "brokers_down" },
        m.assigned.get(),
        m.in_flight.get()
    );
    let code = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

/// `/metrics` and `/healthz`.
pub fn router(m: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(m)
}
