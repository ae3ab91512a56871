//! [`KafkaEventLog`]: the engine's [`EventSink`] on a Kafka topic.
//!
//! `publish` appends the event to a bounded in-memory queue and returns; a pump task
//! encodes events (JSON, the format `docs/webhooks.md` documents) and hands them to an
//! idempotent librdkafka producer keyed by thread id, so a thread's events land in one
//! partition in the order they were published. The pump takes everything queued at
//! once, and a thread's events queued together go in one record, separated by
//! newlines (`event_batch` at most; compact JSON never holds a raw newline): the
//! producer's cost is mostly per record, and under load a thread has several events
//! waiting (a message, its receipts, a group commit's messages). The producer retries without a time
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

/// Largest record payload the pump builds (below the brokers' default
/// `message.max.bytes`, 1 MiB); a bigger single event still goes alone.
const MAX_RECORD_BYTES: usize = 256 * 1024;
use crate::topics::{ensure_topics, TopicSpec};

/// Counters of a [`KafkaEventLog`], in events (a record holds one or more); the server
/// exports them as metrics.
#[derive(Debug, Default)]
pub struct EventLogStats {
    /// Events the engine published.
    pub published: AtomicU64,
    /// Events handed to the producer (each is then acknowledged, retried or failed).
    pub handed_over: AtomicU64,
    /// Events the brokers acknowledged.
    pub delivered: AtomicU64,
    /// Records handed to the producer (`handed_over / records` events per record).
    pub records: AtomicU64,
    /// Events shed because the buffer was full (lost for downstream consumers).
    pub shed: AtomicU64,
    /// Events handed back by the producer after a retriable failure and queued again.
    pub retried: AtomicU64,
    /// Events the brokers refused for good (too large, not authorized): logged and lost.
    pub failed: AtomicU64,
}

enum Pending {
    Event(Event),
    /// An encoded record the producer handed back for another try (or could not take
    /// yet), with the number of events in it.
    Record {
        key: Vec<u8>,
        payload: Vec<u8>,
        events: usize,
    },
}

impl Pending {
    fn events(&self) -> usize {
        match self {
            Pending::Event(_) => 1,
            Pending::Record { events, .. } => *events,
        }
    }
}

/// The in-memory queue and the number of events in it.
#[derive(Default)]
struct Queue {
    items: VecDeque<Pending>,
    events: usize,
}

/// One record being filled: a thread's events, newline-separated.
struct Record {
    key: Vec<u8>,
    payload: Vec<u8>,
    events: usize,
}

/// Packs queued events into records in queue order: consecutive-or-not events of one
/// thread share a record until it holds `max_events` or `max_bytes`; a record handed
/// back for another try stays as it is, and a thread's later events start a new
/// record after it, so every thread's events keep their order across records.
/// Events that cannot be encoded are counted in `unencodable` and left out.
fn pack(
    batch: impl IntoIterator<Item = Pending>,
    max_events: usize,
    max_bytes: usize,
    unencodable: &mut u64,
    spare: &mut Vec<Vec<u8>>,
) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    // The record each thread is filling, by index into `records`.
    let mut open: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for p in batch {
        match p {
            Pending::Record {
                key,
                payload,
                events,
            } => {
                open.remove(&key);
                records.push(Record {
                    key,
                    payload,
                    events,
                });
            }
            Pending::Event(e) => {
                let key = e.thread_id().as_str().as_bytes();
                let slot = match open.get(key) {
                    Some(&i)
                        if records[i].events < max_events
                            && records[i].payload.len() < max_bytes =>
                    {
                        Some(i)
                    }
                    _ => None,
                };
                let rec = match slot {
                    Some(i) => &mut records[i],
                    None => {
                        let mut payload = spare.pop().unwrap_or_default();
                        payload.clear();
                        records.push(Record {
                            key: key.to_vec(),
                            payload,
                            events: 0,
                        });
                        let i = records.len() - 1;
                        open.insert(key.to_vec(), i);
                        &mut records[i]
                    }
                };
                let mark = rec.payload.len();
                if rec.events > 0 {
                    rec.payload.push(b'\n');
                }
                match serde_json::to_writer(&mut rec.payload, &e) {
                    Ok(()) => rec.events += 1,
                    Err(err) => {
                        rec.payload.truncate(mark);
                        *unencodable += 1;
                        tracing::error!(error = %err, "event log: could not encode an event");
                    }
                }
            }
        }
    }
    records.retain(|r| r.events > 0);
    records
}

/// Payload buffers kept for the next records: the producer copies what it is given, so
/// a sent record's buffer is reused instead of freed (fresh buffers of tens of KiB cost
/// the allocator and page faults on every record).
const SPARE_BUFFERS: usize = 64;
/// A buffer grown beyond this (one huge event) is freed rather than kept.
const SPARE_MAX_BYTES: usize = 2 * MAX_RECORD_BYTES;

fn keep(spare: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_MAX_BYTES {
        spare.push(buf);
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Most events in `queue`.
    capacity: usize,
    wake: Notify,
    /// The pump is (about to be) waiting on `wake`: only then does a publish notify, so
    /// a busy pump is not woken once per event.
    sleeping: AtomicBool,
    /// The pump holds a batch it took from the queue.
    busy: AtomicBool,
    /// Events in records the producer holds (handed over, not yet reported on).
    in_producer: AtomicU64,
    stats: EventLogStats,
    brokers_down: AtomicBool,
    closing: AtomicBool,
    /// When the last "shedding" warning was logged, to log one per interval.
    shed_logged: Mutex<Option<Instant>>,
    brokers: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, p: Pending, front: bool) {
        let shed = {
            let mut q = self.lock();
            let n = p.events();
            let mut shed = 0;
            while q.events + n > self.capacity {
                let Some(old) = q.items.pop_front() else {
                    break;
                };
                q.events -= old.events();
                shed += old.events() as u64;
            }
            if front {
                q.items.push_front(p);
            } else {
                q.items.push_back(p);
            }
            q.events += n;
            shed
        };
        if shed > 0 {
            let total = self.stats.shed.fetch_add(shed, Ordering::Relaxed) + shed;
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
    /// The number of events in the record.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, events: usize) {
        let s = &self.shared;
        let n = events as u64;
        s.in_producer.fetch_sub(n, Ordering::Relaxed);
        match result {
            Ok(_) => {
                s.stats.delivered.fetch_add(n, Ordering::Relaxed);
            }
            Err((e, m)) if permanent(e) => {
                s.stats.failed.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, key = ?m.key().map(String::from_utf8_lossy), events,
                    "event log: the brokers refused a record for good; its events are lost");
            }
            Err((e, m)) => {
                s.stats.retried.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, events, "event log: produce failed; the record is retried");
                s.enqueue(
                    Pending::Record {
                        key: m.key().unwrap_or_default().to_vec(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        events,
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
    /// Most events per record.
    batch: usize,
    /// Payload buffers to reuse (only the pump uses them).
    spare: Mutex<Vec<Vec<u8>>>,
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
            queue: Mutex::new(Queue::default()),
            capacity,
            wake: Notify::new(),
            sleeping: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            in_producer: AtomicU64::new(0),
            stats: EventLogStats::default(),
            brokers_down: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            shed_logged: Mutex::new(None),
            brokers: opts.brokers.clone(),
        });
        // The producer's own queue counts records (of up to `batch` events each).
        let batch = opts.event_batch.max(1);
        let librdkafka_queue = capacity.min(1_000_000).to_string();
        let producer: ThreadedProducer<LogContext> = opts
            .client_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // Bigger batches, fewer requests; no compression by default (it costs the
                // server's CPU; set compression.type in the properties to trade it for
                // bandwidth).
                ("linger.ms", "10"),
                // A report per record (not per event): successes are counted from
                // them, failures retried or counted.
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
            batch,
            spare: Mutex::new(Vec::new()),
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
                    if shared.lock().items.is_empty() {
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
        loop {
            // Take everything queued under one lock; on a full producer queue the rest
            // goes back to the front, in order.
            let batch = {
                let mut q = self.shared.lock();
                q.events = 0;
                std::mem::take(&mut q.items)
            };
            if batch.is_empty() {
                return true;
            }
            let mut unencodable = 0;
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            let records = pack(
                batch,
                self.batch,
                MAX_RECORD_BYTES,
                &mut unencodable,
                &mut spare,
            );
            if unencodable > 0 {
                self.shared
                    .stats
                    .failed
                    .fetch_add(unencodable, Ordering::Relaxed);
            }
            let mut records = records.into_iter();
            while let Some(r) = records.next() {
                let s = &self.shared;
                // Counted before the send: the delivery report may come first.
                s.in_producer.fetch_add(r.events as u64, Ordering::Relaxed);
                let record = BaseRecord::with_opaque_to(&self.topic, r.events)
                    .key(&r.key)
                    .payload(&r.payload);
                let sent = self.producer.send(record).map_err(|(e, _)| e);
                if sent.is_err() {
                    s.in_producer.fetch_sub(r.events as u64, Ordering::Relaxed);
                }
                match sent {
                    Ok(()) => {
                        s.stats
                            .handed_over
                            .fetch_add(r.events as u64, Ordering::Relaxed);
                        s.stats.records.fetch_add(1, Ordering::Relaxed);
                        keep(&mut spare, r.payload);
                    }
                    Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        let mut q = s.lock();
                        let rest: Vec<Record> =
                            std::iter::once(r).chain(records.by_ref()).collect();
                        for r in rest.into_iter().rev() {
                            q.events += r.events;
                            q.items.push_front(Pending::Record {
                                key: r.key,
                                payload: r.payload,
                                events: r.events,
                            });
                        }
                        return false;
                    }
                    Err(e) => {
                        self.shared
                            .stats
                            .failed
                            .fetch_add(r.events as u64, Ordering::Relaxed);
                        tracing::error!(error = %e, events = r.events,
                            "event log: the producer refused a record");
                        keep(&mut spare, r.payload);
                    }
                }
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
        self.shared.lock().events
    }

    /// Events the brokers acknowledged (never decreases).
    pub fn delivered(&self) -> u64 {
        self.shared.stats.delivered.load(Ordering::Relaxed)
    }

    /// Events waiting for the brokers: in memory and in the producer.
    pub fn buffered(&self) -> u64 {
        self.queued() as u64 + self.shared.in_producer.load(Ordering::Relaxed)
    }

    /// Records (of one or more events) handed to the producer and not yet acknowledged
    /// by the brokers.
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

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::events::{EventBody, EventId, ReceiptUpdated};
    use messenger_core::model::AckStatus;
    use messenger_core::{MessageId, NodeId, ThreadId, UserId};

    fn ev(thread: &str, seq: u64) -> Event {
        Event {
            id: EventId(seq * 100 + thread.len() as u64),
            created_at: 1,
            node: NodeId::new(1).expect("node"),
            body: EventBody::ReceiptUpdated(ReceiptUpdated {
                thread_id: ThreadId::new(thread).expect("thread"),
                user_id: UserId::new("u").expect("user"),
                status: AckStatus::Delivered,
                seq,
                message_id: MessageId(seq),
                sender_id: UserId::new("s").expect("user"),
            }),
        }
    }

    /// (key, seqs) of each record, decoding its newline-separated events.
    fn shape(records: &[Record]) -> Vec<(String, Vec<u64>)> {
        records
            .iter()
            .map(|r| {
                let seqs: Vec<u64> = r
                    .payload
                    .split(|b| *b == b'\n')
                    .map(|line| {
                        let e: Event = serde_json::from_slice(line).expect("one event per line");
                        match e.body {
                            EventBody::ReceiptUpdated(u) => u.seq,
                            _ => unreachable!("only receipts here"),
                        }
                    })
                    .collect();
                assert_eq!(seqs.len(), r.events);
                (String::from_utf8_lossy(&r.key).into_owned(), seqs)
            })
            .collect()
    }

    fn events(list: &[(&str, u64)]) -> Vec<Pending> {
        list.iter()
            .map(|(t, s)| Pending::Event(ev(t, *s)))
            .collect()
    }

    #[test]
    fn a_threads_events_share_records_in_order_up_to_the_cap() {
        let batch = events(&[("g:a", 1), ("g:b", 1), ("g:a", 2), ("g:a", 3), ("g:b", 2)]);
        let records = pack(batch, 2, MAX_RECORD_BYTES, &mut 0, &mut Vec::new());
        assert_eq!(
            shape(&records),
            vec![
                ("g:a".to_string(), vec![1, 2]),
                ("g:b".to_string(), vec![1, 2]),
                ("g:a".to_string(), vec![3]),
            ]
        );
    }

    #[test]
    fn a_record_with_one_event_is_the_plain_event_json() {
        let e = ev("g:a", 7);
        let records = pack(
            [Pending::Event(e.clone())],
            100,
            MAX_RECORD_BYTES,
            &mut 0,
            &mut Vec::new(),
        );
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].payload, serde_json::to_vec(&e).expect("json"));
    }

    #[test]
    fn a_record_handed_back_keeps_its_place_in_its_threads_order() {
        let back = pack(
            events(&[("g:a", 2), ("g:a", 3)]),
            100,
            MAX_RECORD_BYTES,
            &mut 0,
            &mut Vec::new(),
        )
        .pop()
        .expect("record");
        let mut batch = events(&[("g:a", 1)]);
        batch.push(Pending::Record {
            key: back.key,
            payload: back.payload,
            events: back.events,
        });
        batch.extend(events(&[("g:a", 4), ("g:b", 1)]));
        let records = pack(batch, 100, MAX_RECORD_BYTES, &mut 0, &mut Vec::new());
        assert_eq!(
            shape(&records),
            vec![
                ("g:a".to_string(), vec![1]),
                ("g:a".to_string(), vec![2, 3]),
                ("g:a".to_string(), vec![4]),
                ("g:b".to_string(), vec![1]),
            ]
        );
    }

    #[test]
    fn the_byte_cap_closes_a_record() {
        let batch = events(&[("g:a", 1), ("g:a", 2), ("g:a", 3)]);
        // Any event is over one byte: each record closes after its first event.
        let records = pack(batch, 100, 1, &mut 0, &mut Vec::new());
        assert_eq!(
            shape(&records),
            vec![
                ("g:a".to_string(), vec![1]),
                ("g:a".to_string(), vec![2]),
                ("g:a".to_string(), vec![3]),
            ]
        );
    }
}
