//! [`KafkaEventLog`]: the engine's [`EventSink`] on a Kafka topic.
//!
//! `publish` appends the event to a bounded in-memory queue and returns; a pump task
//! encodes events (JSON, the format `docs/webhooks.md` documents) and hands them to an
//! idempotent librdkafka producer keyed by thread id, so a thread's events land in one
//! partition in the order they were published. The producer retries without a time
//! limit (`message.timeout.ms=0`) and, being idempotent, without reordering or
//! duplicating, so a broker outage only makes events wait. Nothing blocks the engine:
//! when the producer's own queue is full the pump waits, and when the in-memory queue
//! is full too the oldest queued event is shed, counted and logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messenger_core::events::Event;
use messenger_core::{Error, EventSink, Result};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use crate::config::KafkaOptions;
use crate::topics::{ensure_topics, TopicSpec};

/// Counters of a [`KafkaEventLog`]; the server exports them as metrics.
#[derive(Debug, Default)]
pub struct EventLogStats {
    /// Events the engine published.
    pub published: AtomicU64,
    /// Events handed to the producer (each is then acknowledged, retried or failed):
    /// [`KafkaEventLog::delivered`] subtracts those still in flight.
    pub handed_over: AtomicU64,
    /// Events shed because the buffer was full (lost for downstream consumers).
    pub shed: AtomicU64,
    /// Events handed back by the producer after a retriable failure and queued again.
    pub retried: AtomicU64,
    /// Events the brokers refused for good (too large, not authorized): logged and lost.
    pub failed: AtomicU64,
}

enum Pending {
    Event(Event),
    /// An encoded record the producer handed back for another try.
    Record {
        key: Vec<u8>,
        payload: Vec<u8>,
    },
}

struct Shared {
    queue: Mutex<VecDeque<Pending>>,
    capacity: usize,
    wake: Notify,
    /// The pump is (about to be) waiting on `wake`: only then does a publish notify, so
    /// a busy pump is not woken once per event.
    sleeping: AtomicBool,
    /// The pump holds a batch it took from the queue.
    busy: AtomicBool,
    /// Delivery reports with an error (each either retried or failed).
    dr_errors: AtomicU64,
    /// The highest [`KafkaEventLog::delivered`] reported, so the count never goes back
    /// when it is read while events move between the counters it is made of.
    delivered_seen: AtomicU64,
    stats: EventLogStats,
    brokers_down: AtomicBool,
    closing: AtomicBool,
    /// When the last "shedding" warning was logged, to log one per interval.
    shed_logged: Mutex<Option<Instant>>,
    brokers: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, p: Pending, front: bool) {
        let shed = {
            let mut q = self.lock();
            let shed = if q.len() >= self.capacity {
                q.pop_front().is_some()
            } else {
                false
            };
            if front {
                q.push_front(p);
            } else {
                q.push_back(p);
            }
            shed
        };
        if shed {
            let total = self.stats.shed.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self.shed_logged.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                *last = Some(Instant::now());
                tracing::error!(
                    shed_total = total,
                    capacity = self.capacity,
                    brokers = %self.brokers,
                    "event log buffer full: shedding the oldest events, which push and \
                     webhooks will never see. Kafka is down or too slow: bring the brokers \
                     back, or raise the event buffer (kafka.event_buffer) to ride out \
                     longer outages"
                );
            }
        }
        if self.sleeping.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }
}

struct LogContext {
    shared: Arc<Shared>,
}

impl ClientContext for LogContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if !self.shared.brokers_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(%reason, "event log: all Kafka brokers are down; events are \
                    kept and retried until they are back");
            }
        } else {
            tracing::debug!(%error, %reason, "event log client error");
        }
    }
}

/// Errors after which sending the same record again cannot succeed.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
        )
    )
}

impl ProducerContext for LogContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let s = &self.shared;
        match result {
            Ok(_) => {}
            Err((e, m)) if permanent(e) => {
                s.dr_errors.fetch_add(1, Ordering::Relaxed);
                s.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, key = ?m.key().map(String::from_utf8_lossy),
                    "event log: the brokers refused an event for good; it is lost");
            }
            Err((e, m)) => {
                s.dr_errors.fetch_add(1, Ordering::Relaxed);
                s.stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "event log: produce failed; the event is retried");
                s.enqueue(
                    Pending::Record {
                        key: m.key().unwrap_or_default().to_vec(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                    },
                    true,
                );
            }
        }
    }
}

/// The event log producer: an [`EventSink`] that never blocks the engine.
pub struct KafkaEventLog {
    shared: Arc<Shared>,
    producer: ThreadedProducer<LogContext>,
    topic: String,
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for KafkaEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaEventLog")
            .field("topic", &self.topic)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl KafkaEventLog {
    /// Checks the brokers, makes sure the event log topic exists (creating it if
    /// allowed) and starts the producer and its pump task. Must run inside a tokio
    /// runtime.
    pub async fn connect(opts: &KafkaOptions) -> Result<Arc<KafkaEventLog>> {
        ensure_topics(
            opts,
            &[TopicSpec::new(&opts.events_topic, opts.events_partitions)],
        )
        .await?;
        let capacity = opts.event_buffer.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            wake: Notify::new(),
            sleeping: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            dr_errors: AtomicU64::new(0),
            delivered_seen: AtomicU64::new(0),
            stats: EventLogStats::default(),
            brokers_down: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            shed_logged: Mutex::new(None),
            brokers: opts.brokers.clone(),
        });
        let librdkafka_queue = capacity.min(1_000_000).to_string();
        let producer: ThreadedProducer<LogContext> = opts
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // Bigger batches, fewer requests; no compression by default (it costs the
                // server's CPU; set compression.type in the properties to trade it for
                // bandwidth).
                ("linger.ms", "10"),
                // Reports only for failures (retried or counted); successes are counted
                // from what left the queue, without a callback per event.
                ("delivery.report.only.error", "true"),
                // Never give up on a retriable error: the event waits for the brokers.
                ("message.timeout.ms", "0"),
                ("queue.buffering.max.messages", &librdkafka_queue),
                ("socket.nagle.disable", "true"),
                // Back within a second of the brokers (librdkafka's default backs off
                // up to 10 s between reconnects).
                ("reconnect.backoff.max.ms", "1000"),
            ])
            .create_with_context(LogContext {
                shared: shared.clone(),
            })
            .map_err(|e| Error::bad_request(format!("bad Kafka producer configuration: {e}")))?;
        let log = Arc::new(KafkaEventLog {
            shared,
            producer,
            topic: opts.events_topic.clone(),
            pump: Mutex::new(None),
        });
        let weak = Arc::downgrade(&log);
        let shared = log.shared.clone();
        let handle = tokio::spawn(async move {
            loop {
                // Registered before the queue is looked at, so no wake-up is missed.
                let woken = shared.wake.notified();
                let Some(log) = weak.upgrade() else { break };
                log.shared.busy.store(true, Ordering::Release);
                let idle = log.pump_once();
                log.shared.busy.store(false, Ordering::Release);
                drop(log);
                if idle {
                    shared.sleeping.store(true, Ordering::Release);
                    // An event queued before the flag was up found it down: look again.
                    if shared.lock().is_empty() {
                        tokio::select! {
                            _ = woken => {}
                            // Housekeeping: notice that the brokers are back.
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    shared.sleeping.store(false, Ordering::Release);
                    if let Some(log) = weak.upgrade() {
                        if log.in_flight() == 0
                            && log.shared.brokers_down.swap(false, Ordering::Relaxed)
                        {
                            tracing::info!("event log: Kafka brokers are back");
                        }
                    }
                } else {
                    // The producer's queue is full: give it a moment to drain.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        *log.pump.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(log)
    }

    /// Hands queued events to the producer until the queue is empty (true) or the
    /// producer's queue is full (false).
    fn pump_once(&self) -> bool {
        // Take everything queued under one lock; on a full producer queue the rest goes
        // back to the front, in order.
        let mut batch = std::mem::take(&mut *self.shared.lock());
        loop {
            let Some(p) = batch.pop_front() else {
                if self.shared.lock().is_empty() {
                    return true;
                }
                batch = std::mem::take(&mut *self.shared.lock());
                continue;
            };
            let (key, payload) = match p {
                Pending::Event(e) => match serde_json::to_vec(&e) {
                    Ok(v) => (e.thread_id().as_str().as_bytes().to_vec(), v),
                    Err(err) => {
                        self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %err, "event log: could not encode an event");
                        continue;
                    }
                },
                Pending::Record { key, payload } => (key, payload),
            };
            let record = BaseRecord::to(&self.topic).key(&key).payload(&payload);
            let sent = self.producer.send(record);
            if sent.is_ok() {
                self.shared
                    .stats
                    .handed_over
                    .fetch_add(1, Ordering::Relaxed);
            }
            if let Err((e, _)) = sent {
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                    batch.push_front(Pending::Record { key, payload });
                    let mut q = self.shared.lock();
                    while let Some(p) = batch.pop_back() {
                        q.push_front(p);
                    }
                    return false;
                }
                self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "event log: the producer refused an event");
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &EventLogStats {
        &self.shared.stats
    }

    /// Events waiting in memory, not yet handed to the producer (not counting a batch
    /// the pump is handing over right now).
    pub fn queued(&self) -> usize {
        self.shared.lock().len()
    }

    /// Events the brokers acknowledged (never decreases).
    pub fn delivered(&self) -> u64 {
        let s = &self.shared;
        let now = s
            .stats
            .handed_over
            .load(Ordering::Acquire)
            .saturating_sub(self.in_flight() as u64 + s.dr_errors.load(Ordering::Acquire));
        s.delivered_seen.fetch_max(now, Ordering::AcqRel).max(now)
    }

    /// Events handed to the producer and not yet acknowledged by the brokers.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// Whether the producer last saw every broker down.
    pub fn brokers_down(&self) -> bool {
        self.shared.brokers_down.load(Ordering::Relaxed)
    }

    /// Stops taking events and waits up to `timeout` for every queued event to be
    /// acknowledged. Returns how many were still not acknowledged (lost on exit).
    pub async fn close(&self, timeout: Duration) -> usize {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        let deadline = Instant::now() + timeout;
        while (self.queued() + self.in_flight() > 0 || self.shared.busy.load(Ordering::Acquire))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(h) = self.pump.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
        let left = self.queued() + self.in_flight();
        if left > 0 {
            tracing::error!(
                left,
                "event log: closing with events the brokers never acknowledged; they are lost"
            );
        }
        left
    }
}

impl EventSink for KafkaEventLog {
    fn publish(&self, event: Event) {
        self.shared.stats.published.fetch_add(1, Ordering::Relaxed);
        if self.shared.closing.load(Ordering::Relaxed) {
            self.shared.stats.shed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event = %event.id, "event log closed: event dropped");
            return;
        }
        self.shared.enqueue(Pending::Event(event), false);
    }
}

impl Drop for KafkaEventLog {
    fn drop(&mut self) {
        if let Some(h) = self.pump.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}
