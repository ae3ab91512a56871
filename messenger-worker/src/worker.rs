//! The worker: a consumer group member that hands each event off (push, webhooks) and
//! commits a partition's offset only past events whose hand-off finished.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use messenger_core::events::{Event, EventBody, EventId, MessageCreated};
use messenger_core::time::now_ms;
use messenger_core::PushRegistry;
use messenger_core::{ThreadId, UserId};
use messenger_kafka::{ensure_topics, TopicSpec};
use messenger_push::webhook::WebhookClient;
use messenger_push::{Outcome, PushService, RetryPolicy};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::{WebhookEndpoint, WorkerConfig};
use crate::metrics::Metrics;
use crate::push::{DeadLetter, PushStage, Turn};

/// Why the worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration is refused.
    #[error("{0}")]
    Config(String),
    /// Kafka could not be used (unreachable, a topic missing and not creatable).
    #[error("{0}")]
    Kafka(String),
    /// The push registry's store (HBase) could not be used.
    #[error("{0}")]
    Store(String),
    /// The HTTP listener failed.
    #[error("cannot listen on {addr} for /metrics and /healthz: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The fields of an event the worker needs to route it, decoded without the rest (a
/// newer server's event types pass through to webhooks subscribed to `*`).
#[derive(Deserialize)]
struct Header {
    id: EventId,
    created_at: u64,
    #[serde(rename = "type")]
    kind: String,
}

struct Ctx {
    metrics: Arc<Metrics>,
    offsets: Arc<Offsets>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if self.metrics.brokers_up.swap(false, Ordering::Relaxed) {
                tracing::warn!(%reason, "all Kafka brokers are down; the worker waits for them");
            }
        } else {
            tracing::debug!(%error, %reason, "kafka client error");
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            for e in tpl.elements() {
                self.offsets.forget(e.partition());
            }
            self.metrics.assigned.set(0);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.assigned.set(tpl.count() as i64);
                tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition())
                    .collect::<Vec<_>>(), "partitions assigned");
            }
            Rebalance::Revoke(_) => tracing::info!("partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

#[derive(Default)]
struct Track {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset started.
    next: i64,
    /// The last offset stored for commit.
    stored: i64,
}

/// Per-partition offsets: an offset is committable once every event before it has
/// finished its hand-off, so a worker killed mid-batch re-reads what was unfinished.
struct Offsets {
    topic: String,
    parts: Mutex<HashMap<i32, Track>>,
    consumer: std::sync::OnceLock<std::sync::Weak<StreamConsumer<Ctx>>>,
}

impl Offsets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Track>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, partition: i32, offset: i64) {
        let mut g = self.lock();
        let t = g.entry(partition).or_insert_with(|| Track {
            stored: offset,
            ..Track::default()
        });
        t.in_flight.insert(offset);
        t.next = t.next.max(offset + 1);
    }

    fn complete(&self, partition: i32, offset: i64) {
        let store = {
            let mut g = self.lock();
            let Some(t) = g.get_mut(&partition) else {
                return; // revoked meanwhile: another worker re-reads it
            };
            t.in_flight.remove(&offset);
            let to = t.in_flight.first().copied().unwrap_or(t.next);
            if to > t.stored {
                t.stored = to;
                Some(to)
            } else {
                None
            }
        };
        let (Some(to), Some(c)) = (store, self.consumer.get().and_then(|w| w.upgrade())) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&self.topic, partition, Offset::Offset(to))
            .is_ok()
        {
            if let Err(e) = c.store_offsets(&tpl) {
                tracing::debug!(partition, error = %e, "offset not stored (revoked?)");
            }
        }
    }

    fn forget(&self, partition: i32) {
        self.lock().remove(&partition);
    }
}

struct Item {
    id: EventId,
    body: Bytes,
    done: oneshot::Sender<()>,
}

/// One application webhook: a batcher task feeding up to `concurrency` requests.
struct Endpoint {
    cfg: WebhookEndpoint,
    tx: mpsc::Sender<Item>,
}

struct Shared {
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
    dlq: FutureProducer,
    push: Option<PushStage>,
    endpoints: Vec<Endpoint>,
    throttle: PushThrottle,
}

/// The large-group push throttle: in a thread with more members than `threshold`, at
/// most one push per member per `every` (a thread's events all reach the same worker:
/// its partition is keyed by thread, so one worker's memory is enough).
struct PushThrottle {
    threshold: usize,
    every: Duration,
    last: Mutex<HashMap<(UserId, ThreadId), Instant>>,
}

impl PushThrottle {
    fn new(threshold: usize, every: Duration) -> PushThrottle {
        PushThrottle {
            threshold,
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// The offline members of `m` to notify at `now`, and how many were held back.
    fn admit(&self, m: &MessageCreated, now: Instant) -> (Vec<UserId>, u64) {
        if m.member_count <= self.threshold {
            return (m.offline.clone(), 0);
        }
        let mut g = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() > 1_000_000 {
            g.retain(|_, t| now.duration_since(*t) < self.every);
        }
        let mut out = Vec::new();
        let mut held = 0;
        for u in &m.offline {
            let key = (u.clone(), m.thread_id.clone());
            match g.get(&key) {
                Some(t) if now.duration_since(*t) < self.every => held += 1,
                _ => {
                    g.insert(key, now);
                    out.push(u.clone());
                }
            }
        }
        (out, held)
    }
}

impl Shared {
    async fn dead_letter(&self, kind: &'static str, key: &str, record: serde_json::Value) {
        let payload = record.to_string();
        let mut delay = Duration::from_millis(200);
        loop {
            let rec = FutureRecord::to(&self.cfg.kafka.dlq_topic)
                .key(key)
                .payload(&payload);
            match self.dlq.send(rec, Timeout::Never).await {
                Ok(_) => break,
                Err((e, _)) => {
                    // Never commit past an event that is neither handed off nor
                    // dead-lettered: keep trying.
                    tracing::error!(error = %e, "writing to the dead-letter topic failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.metrics
            .dead_lettered
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// Members to notify: the offline ones, throttled per user and thread in large
    /// groups.
    fn recipients(&self, m: &MessageCreated) -> Vec<UserId> {
        let (out, held) = self.throttle.admit(m, Instant::now());
        if held > 0 {
            self.metrics.push_throttled.inc_by(held);
        }
        out
    }

    async fn dead_letters(&self, dead: Vec<DeadLetter>) {
        for d in dead {
            self.dead_letter(d.kind, &d.key, d.record).await;
        }
    }

    /// Hands one event off. `turn` is its place in its thread's push order (taken when
    /// push is on): its pushes go once the thread's earlier events' have, and it ends
    /// only after theirs, so the next event of the thread waits for both.
    async fn handle(
        self: Arc<Self>,
        header: Header,
        key: String,
        raw: Bytes,
        mut turn: Option<Turn>,
    ) {
        let mut work: Vec<BoxFuture<'_, ()>> = Vec::new();
        if let (Some(push), "message.created") = (&self.push, header.kind.as_str()) {
            match serde_json::from_slice::<Event>(&raw) {
                Ok(Event {
                    body: EventBody::MessageCreated(m),
                    ..
                }) => {
                    let turn = turn.as_mut();
                    let this = &self;
                    work.push(
                        async move {
                            let recipients = this.recipients(&m);
                            let dead = push.notify(turn, &m, recipients).await;
                            this.dead_letters(dead).await;
                        }
                        .boxed(),
                    );
                }
                Ok(_) | Err(_) => {
                    let rec = serde_json::json!({
                        "kind": "undecodable", "failed_at": now_ms(),
                        "error": "a message.created event this worker cannot decode",
                        "event": String::from_utf8_lossy(&raw),
                    });
                    work.push(self.dead_letter("undecodable", &key, rec).boxed());
                }
            }
        }
        for ep in &self.endpoints {
            if ep.cfg.wants(&header.kind) {
                let (done, rx) = oneshot::channel();
                let item = Item {
                    id: header.id,
                    body: raw.clone(),
                    done,
                };
                work.push(
                    async move {
                        if ep.tx.send(item).await.is_ok() {
                            let _ = rx.await;
                        }
                    }
                    .boxed(),
                );
            }
        }
        futures::future::join_all(work).await;
        if let Some(mut turn) = turn {
            turn.wait().await;
        }
    }
}

/// The events of one event log record: the record itself when it holds one event, or
/// its newline-separated events (a server packs a thread's queued events into one
/// record; compact JSON never holds a raw newline). Never empty: an empty or blank
/// record is one (undecodable) event.
fn split_record(record: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in record.iter().enumerate() {
        if *b == b'\n' {
            if i > start {
                out.push(record.slice(start..i));
            }
            start = i + 1;
        }
    }
    if start == 0 {
        return vec![record.clone()];
    }
    if start < record.len() {
        out.push(record.slice(start..));
    }
    if out.is_empty() {
        out.push(record.clone());
    }
    out
}

fn batch_body(items: &[Item], array: bool) -> Bytes {
    if !array {
        return items[0].body.clone();
    }
    let mut b = BytesMut::with_capacity(items.iter().map(|i| i.body.len() + 1).sum::<usize>() + 2);
    b.extend_from_slice(b"[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            b.extend_from_slice(b",");
        }
        b.extend_from_slice(&it.body);
    }
    b.extend_from_slice(b"]");
    b.freeze()
}

async fn deliver_batch(
    shared: Arc<Shared>,
    cfg: WebhookEndpoint,
    client: WebhookClient,
    retry: RetryPolicy,
    items: Vec<Item>,
) {
    let array = cfg.batch_max > 1;
    let body = batch_body(&items, array);
    let id = (!array).then(|| items[0].id.to_string());
    let mut delays = retry.delays();
    let mut attempt = 1;
    let outcome = loop {
        let o = client
            .post(&cfg.endpoint.url, body.clone(), id.as_deref(), attempt)
            .await;
        shared
            .metrics
            .webhook_requests
            .get_or_create(&vec![
                ("endpoint", cfg.name.clone()),
                ("outcome", o.label().to_string()),
            ])
            .inc();
        match o {
            Outcome::Delivered | Outcome::TargetGone => break o,
            Outcome::RetryAfter(after) => match delays.next() {
                Some(d) => tokio::time::sleep(after.unwrap_or(d).max(d)).await,
                None => break Outcome::RetryAfter(after),
            },
            // Any other refusal (401/403, other 4xx) is retried too: the receiver may be
            // mid-deploy or rotating secrets. 410 alone says "stop".
            other => match delays.next() {
                Some(d) => {
                    tracing::warn!(endpoint = %cfg.name, outcome = ?other, "webhook refused; retrying");
                    tokio::time::sleep(d).await
                }
                None => break other,
            },
        }
        attempt += 1;
    };
    if outcome == Outcome::Delivered {
        shared
            .metrics
            .webhook_events
            .get_or_create(&vec![("endpoint", cfg.name.clone())])
            .inc_by(items.len() as u64);
    } else {
        tracing::warn!(endpoint = %cfg.name, events = items.len(), ?outcome, attempts = attempt,
            "webhook delivery given up: events go to the dead-letter topic");
        for it in &items {
            let event: serde_json::Value = serde_json::from_slice(&it.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&it.body).into())
            });
            let rec = serde_json::json!({
                "kind": "webhook",
                "endpoint": cfg.name,
                "failed_at": now_ms(),
                "attempts": attempt,
                "error": format!("{outcome:?}"),
                "event": event,
            });
            shared.dead_letter("webhook", &it.id.to_string(), rec).await;
        }
    }
    for it in items {
        let _ = it.done.send(());
    }
}

async fn batcher(
    shared: std::sync::Weak<Shared>,
    cfg: WebhookEndpoint,
    client: WebhookClient,
    retry: RetryPolicy,
    mut rx: mpsc::Receiver<Item>,
) {
    let sem = Arc::new(Semaphore::new(cfg.concurrency));
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        if cfg.batch_max > 1 {
            let deadline = tokio::time::Instant::now() + cfg.batch_linger;
            while items.len() < cfg.batch_max {
                match rx.try_recv() {
                    Ok(i) => items.push(i),
                    Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(i)) => items.push(i),
                        _ => break,
                    },
                }
            }
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let (cfg, client) = (cfg.clone(), client.clone());
        tokio::spawn(async move {
            deliver_batch(shared, cfg, client, retry, items).await;
            drop(permit);
        });
    }
}

/// The push service of `[push]`: over the users' registrations and mutes in the shared
/// HBase store when `[hbase]` is set (APNs, FCM and Web Push need it; `validate`
/// refuses them without), else only the push webhook gets every notification.
async fn push_service(cfg: &WorkerConfig) -> Result<Option<PushService>, WorkerError> {
    if !cfg.push.enabled() {
        return Ok(None);
    }
    let registry: Option<Arc<dyn PushRegistry>> = match &cfg.hbase.address {
        Some(addr) => {
            let mut opts = messenger_storage_hbase::HBaseOptions::new(addr)
                .with_table_prefix(cfg.hbase.table_prefix.clone())
                .with_pool_size(cfg.hbase.pool_size);
            // The servers create the tables; a worker that created them would hide a
            // wrong prefix behind empty registries.
            opts.create_tables = false;
            let store = messenger_storage_hbase::HBaseStore::connect(opts)
                .await
                .map_err(|e| {
                    WorkerError::Store(format!(
                        "cannot use HBase at {addr} (tables {}*) for the push registry: {}. \
                         Check that the HBase Thrift2 gateway the servers use answers there \
                         and that a server has created its tables with this prefix, or fix \
                         hbase.address (--hbase) / hbase.table_prefix",
                        cfg.hbase.table_prefix,
                        e.message()
                    ))
                })?;
            tracing::info!(%addr, prefix = %cfg.hbase.table_prefix,
                "push targets and mutes: read from HBase");
            Some(Arc::new(store))
        }
        None => None,
    };
    cfg.push
        .service(registry)
        .map_err(|e| WorkerError::Config(e.to_string()))
}

fn kafka_err(e: messenger_core::Error) -> WorkerError {
    WorkerError::Kafka(e.message().to_string())
}

/// Runs a worker until `shutdown` resolves: checks Kafka (topics created if allowed),
/// serves `/metrics` and `/healthz`, joins the consumer group and hands events off.
/// On shutdown it stops reading, waits up to 30 s for hand-offs in flight and commits.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    cfg.validate().map_err(WorkerError::Config)?;
    let opts = cfg.kafka.options();
    ensure_topics(
        &opts,
        &[
            TopicSpec::new(&cfg.kafka.events_topic, cfg.kafka.partitions),
            TopicSpec::new(&cfg.kafka.dlq_topic, cfg.kafka.partitions),
        ],
    )
    .await
    .map_err(kafka_err)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let push = push_service(&cfg).await?;
    let metrics = Metrics::new(push.as_ref().map(|p| p.metrics()));
    let push = push.map(|p| PushStage::new(p, metrics.clone()));
    let offsets = Arc::new(Offsets {
        topic: cfg.kafka.events_topic.clone(),
        parts: Mutex::new(HashMap::new()),
        consumer: std::sync::OnceLock::new(),
    });
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        opts.client_config(&[
            ("group.id", &cfg.kafka.group),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", &cfg.kafka.start_from),
            ("enable.partition.eof", "false"),
            ("fetch.wait.max.ms", "100"),
            ("socket.nagle.disable", "true"),
            ("reconnect.backoff.max.ms", "1000"),
        ])
        .create_with_context(Ctx {
            metrics: metrics.clone(),
            offsets: offsets.clone(),
        })
        .map_err(|e| WorkerError::Config(format!("bad Kafka consumer configuration: {e}")))?,
    );
    let _ = offsets.consumer.set(Arc::downgrade(&consumer));
    let dlq: FutureProducer = opts
        .client_config(&[
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "0"),
            ("linger.ms", "5"),
        ])
        .create()
        .map_err(|e| WorkerError::Config(format!("bad Kafka producer configuration: {e}")))?;
    let retry = cfg.retry.policy();
    let mut endpoints = Vec::new();
    let mut batchers = Vec::new();
    for w in &cfg.webhooks {
        let secret = w
            .endpoint
            .secret(&format!("webhook {}", w.name))
            .map_err(WorkerError::Config)?;
        let client = WebhookClient::new(secret.into_bytes(), w.endpoint.timeout)
            .map_err(|e| WorkerError::Config(format!("webhook {} client: {e}", w.name)))?;
        let (tx, rx) = mpsc::channel(w.batch_max.max(64) * 4);
        endpoints.push(Endpoint { cfg: w.clone(), tx });
        batchers.push((w.clone(), client, rx));
    }
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        dlq,
        push,
        endpoints,
        throttle: PushThrottle::new(
            cfg.push.large_group_threshold,
            cfg.push.large_group_interval,
        ),
    });
    for (w, client, rx) in batchers {
        tokio::spawn(batcher(Arc::downgrade(&shared), w, client, retry, rx));
    }
    consumer
        .subscribe(&[cfg.kafka.events_topic.as_str()])
        .map_err(|e| WorkerError::Kafka(format!("subscribing to the event log: {e}")))?;

    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let router = crate::metrics::router(metrics.clone());
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });
    tracing::info!(
        brokers = %cfg.kafka.brokers,
        group = %cfg.kafka.group,
        topic = %cfg.kafka.events_topic,
        listen = %cfg.listen,
        webhooks = cfg.webhooks.len(),
        push = ?cfg.push.provider_names(),
        hbase = cfg.hbase.address.as_deref().unwrap_or("none"),
        "messenger-worker running"
    );

    let sem = Arc::new(Semaphore::new(cfg.max_in_flight));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_error: Option<Instant> = None;
    loop {
        let permit: OwnedSemaphorePermit = tokio::select! {
            _ = &mut shutdown => break,
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let m = tokio::select! {
            _ = &mut shutdown => break,
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "event log consumer error");
                    last_error = Some(Instant::now());
                }
                continue;
            }
        };
        metrics.brokers_up.store(true, Ordering::Relaxed);
        let (partition, offset) = (m.partition(), m.offset());
        let record = Bytes::copy_from_slice(m.payload().unwrap_or_default());
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        drop(m);
        let events = split_record(&record);
        // A permit per event (the first is held), at most `max_in_flight`: a record of
        // many events is as much work as as many records.
        let want = events.len().min(cfg.max_in_flight);
        let mut permits = Some(permit);
        if want > 1 {
            let extra = tokio::select! {
                _ = &mut shutdown => break,
                p = sem.clone().acquire_many_owned(want as u32 - 1) => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if let Some(p) = permits.as_mut() {
                p.merge(extra);
            }
        }
        offsets.start(partition, offset);
        // The record's offset is done when its last event is.
        let left = Arc::new(AtomicUsize::new(events.len()));
        for raw in events {
            let permit = if permits.as_ref().is_some_and(|p| p.num_permits() > 1) {
                permits.as_mut().and_then(|p| p.split(1))
            } else {
                permits.take()
            };
            metrics.in_flight.inc();
            // Taken here, in the partition's order (a thread's events are in one
            // partition, and in order within a record).
            let turn = shared.push.as_ref().map(|p| p.turn(&key));
            let (shared, offsets, metrics) = (shared.clone(), offsets.clone(), metrics.clone());
            let (left, key) = (left.clone(), key.clone());
            tokio::spawn(async move {
                match serde_json::from_slice::<Header>(&raw) {
                    Ok(h) => {
                        metrics
                            .events
                            .get_or_create(&vec![("type", h.kind.clone())])
                            .inc();
                        let created = h.created_at;
                        shared.clone().handle(h, key, raw, turn).await;
                        let age = now_ms().saturating_sub(created);
                        metrics.handoff_seconds.observe(age as f64 / 1000.0);
                    }
                    Err(e) => {
                        let rec = serde_json::json!({
                            "kind": "undecodable", "failed_at": now_ms(),
                            "error": e.to_string(), "event": String::from_utf8_lossy(&raw),
                        });
                        shared.dead_letter("undecodable", &key, rec).await;
                        if let Some(mut turn) = turn {
                            turn.wait().await;
                        }
                    }
                }
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    offsets.complete(partition, offset);
                }
                metrics.in_flight.dec();
                drop(permit);
            });
        }
    }
    tracing::info!("stopping: waiting for hand-offs in flight");
    let all = u32::try_from(cfg.max_in_flight).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(30), sem.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("hand-offs still in flight after 30 s; they are re-read by the next worker");
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit");
    }
    let _ = http_stop.send(());
    let _ = http.await;
    tracing::info!("messenger-worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::model::ThreadKind;
    use messenger_core::MessageId;

    fn created(thread: &str, members: usize, offline: &[&str]) -> MessageCreated {
        MessageCreated {
            thread_id: ThreadId::new(thread).expect("thread id"),
            thread_kind: ThreadKind::Group,
            message_id: MessageId(1),
            seq: 1,
            sender_id: UserId::new("sender").expect("user id"),
            text: "hi".into(),
            sent_at: 0,
            member_count: members,
            offline: offline
                .iter()
                .map(|u| UserId::new(*u).expect("user id"))
                .collect(),
            offline_known: true,
        }
    }

    fn names(v: &[UserId]) -> Vec<&str> {
        v.iter().map(|u| u.as_str()).collect()
    }

    #[test]
    fn a_record_splits_into_its_events() {
        let one = Bytes::from_static(b"{\"id\":\"1\"}");
        assert_eq!(split_record(&one), vec![one.clone()]);
        let three = Bytes::from_static(b"{\"id\":\"1\"}\n{\"id\":\"2\"}\n{\"id\":\"3\"}");
        let parts = split_record(&three);
        assert_eq!(
            parts,
            vec![
                Bytes::from_static(b"{\"id\":\"1\"}"),
                Bytes::from_static(b"{\"id\":\"2\"}"),
                Bytes::from_static(b"{\"id\":\"3\"}"),
            ]
        );
        let trailing = Bytes::from_static(b"{\"id\":\"1\"}\n");
        assert_eq!(split_record(&trailing).len(), 1);
        assert_eq!(split_record(&Bytes::new()), vec![Bytes::new()]);
        assert_eq!(split_record(&Bytes::from_static(b"\n")).len(), 1);
    }

    #[test]
    fn small_groups_are_never_throttled() {
        let t = PushThrottle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..3 {
            let (out, held) = t.admit(&created("g:small", 3, &["a", "b"]), now);
            assert_eq!(names(&out), ["a", "b"]);
            assert_eq!(held, 0);
        }
    }

    #[test]
    fn large_groups_push_once_per_member_and_thread_per_interval() {
        let every = Duration::from_secs(60);
        let t = PushThrottle::new(3, every);
        let now = Instant::now();
        let (out, held) = t.admit(&created("g:big", 4, &["a", "b"]), now);
        assert_eq!((names(&out), held), (vec!["a", "b"], 0));
        // Within the interval: a and b are held back, c is new.
        let later = now + Duration::from_secs(30);
        let (out, held) = t.admit(&created("g:big", 4, &["a", "b", "c"]), later);
        assert_eq!((names(&out), held), (vec!["c"], 2));
        // Another thread is counted on its own.
        let (out, held) = t.admit(&created("g:other", 4, &["a"]), later);
        assert_eq!((names(&out), held), (vec!["a"], 0));
        // After the interval a and b get a push again.
        let (out, held) = t.admit(&created("g:big", 4, &["a", "b"]), now + every);
        assert_eq!((names(&out), held), (vec!["a", "b"], 0));
    }
}
