//! [`KafkaRelay`]: cross-node delivery over one Kafka topic.
//!
//! Every node reads one partition of the relay topic, `node id % partitions`, from the
//! end (envelopes sent before it subscribed are not delivered, as with Redis pub/sub)
//! and keeps the records keyed with its own node id. A send produces one record keyed
//! by the target node to that partition and waits for the broker's acknowledgement (at
//! most [`KafkaOptions::relay_send_timeout`]). Best effort, like every relay: while the
//! brokers are down a send fails at once (the record stays queued in the client for a
//! few seconds and is delivered if the brokers come back) and members catch up from
//! history.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use messenger_core::model::Envelope;
use messenger_core::{Error, NodeId, Relay, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaOptions;
use crate::topics::{ensure_topics, TopicSpec};

/// Relay records are of no use after a few seconds (clients catch up from history);
/// the topic keeps them for an hour for debugging.
const RELAY_RETENTION_MS: &str = "3600000";

/// Envelopes buffered between the Kafka consumer and the engine per subscription.
const SUBSCRIBER_BUFFER: usize = 4096;

/// Watches librdkafka's error callback: "all brokers down" marks the relay down until
/// a send is acknowledged again.
struct RelayContext {
    down: Arc<AtomicBool>,
}

impl ClientContext for RelayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if !self.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(%reason, "Kafka relay: all brokers are down; cross-node \
                    delivery fails until they are back (members catch up from history)");
            }
        } else {
            tracing::debug!(%error, %reason, "Kafka relay client error");
        }
    }
}

/// A [`Relay`] over a Kafka topic. Cheap to share (`Arc`); one per process.
pub struct KafkaRelay {
    opts: KafkaOptions,
    partitions: i32,
    /// Replaced when sends keep failing (see [`KafkaOptions::relay_rebuild_after`]).
    producer: RwLock<Arc<FutureProducer<RelayContext>>>,
    down: Arc<AtomicBool>,
    health: Mutex<Health>,
    rebuilds: AtomicU64,
}

/// Since when every send failed, and when the producer was last replaced.
struct Health {
    failing_since: Option<Instant>,
    rebuilt_at: Instant,
}

impl std::fmt::Debug for KafkaRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaRelay")
            .field("brokers", &self.opts.brokers)
            .field("topic", &self.opts.relay_topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

fn key(node: NodeId) -> [u8; 2] {
    node.get().to_be_bytes()
}

impl KafkaRelay {
    /// Checks the brokers, makes sure the relay topic exists (creating it if allowed)
    /// and starts the producer.
    pub async fn connect(opts: &KafkaOptions) -> Result<KafkaRelay> {
        let spec = TopicSpec::new(&opts.relay_topic, opts.relay_partitions)
            .with_config("retention.ms", RELAY_RETENTION_MS);
        let partitions = ensure_topics(opts, &[spec]).await?[0];
        let down = Arc::new(AtomicBool::new(false));
        let producer = new_producer(opts, &down)?;
        Ok(KafkaRelay {
            opts: opts.clone(),
            partitions,
            producer: RwLock::new(Arc::new(producer)),
            down,
            health: Mutex::new(Health {
                failing_since: None,
                rebuilt_at: Instant::now(),
            }),
            rebuilds: AtomicU64::new(0),
        })
    }

    /// How many times the producer was replaced because sends kept failing.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    fn producer(&self) -> Arc<FutureProducer<RelayContext>> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the outcome of a send; after [`KafkaOptions::relay_rebuild_after`] of
    /// nothing but failures, replaces the producer (at most once per that interval).
    fn outcome(&self, ok: bool) {
        let now = Instant::now();
        let every = self.opts.relay_rebuild_after;
        let failing_for = {
            let mut h = self.health();
            if ok {
                h.failing_since = None;
                return;
            }
            let since = *h.failing_since.get_or_insert(now);
            if now.duration_since(since) < every || now.duration_since(h.rebuilt_at) < every {
                return;
            }
            h.rebuilt_at = now;
            now.duration_since(since)
        };
        match new_producer(&self.opts, &self.down) {
            Ok(p) => {
                let old = match self.producer.write() {
                    Ok(mut g) => std::mem::replace(&mut *g, Arc::new(p)),
                    Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), Arc::new(p)),
                };
                self.rebuilds.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    ?failing_for,
                    "Kafka relay: every send failed for this long; \
                    replaced the producer to fetch the brokers' metadata afresh (envelopes \
                    queued in the old one are dropped; members catch up from history)"
                );
                // The old producer's queue is not flushed: dropping it may wait for its
                // in-flight requests, which must not hold up this send.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::warn!(error = %e, "Kafka relay: could not replace the producer"),
        }
    }
}

/// The relay's producer; `down` is shared by every producer the relay makes.
fn new_producer(
    opts: &KafkaOptions,
    down: &Arc<AtomicBool>,
) -> Result<FutureProducer<RelayContext>> {
    opts.client_config(&[
        ("acks", "1"),
        ("linger.ms", "1"),
        ("message.timeout.ms", "5000"),
        ("socket.nagle.disable", "true"),
        ("reconnect.backoff.max.ms", "1000"),
    ])
    .create_with_context(RelayContext { down: down.clone() })
    .map_err(|e| Error::bad_request(format!("bad Kafka producer configuration: {e}")))
}

impl KafkaRelay {
    /// The relay topic's partition count.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    fn partition(&self, node: NodeId) -> i32 {
        i32::from(node.get()) % self.partitions
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("kafka relay: {what}: {e}"))
}

#[async_trait]
impl Relay for KafkaRelay {
    async fn send(&self, node: NodeId, envelope: Envelope) -> Result<()> {
        let payload = serde_json::to_vec(&envelope)
            .map_err(|e| Error::internal(format!("encoding an envelope: {e}")))?;
        let key = key(node);
        let record = FutureRecord::to(&self.opts.relay_topic)
            .key(&key[..])
            .payload(&payload)
            .partition(self.partition(node));
        let producer = self.producer();
        let delivery = match producer.send_result(record) {
            Ok(d) => d,
            Err((e, _)) => {
                self.outcome(false);
                return Err(unavailable("the client's queue refused the envelope", e));
            }
        };
        if self.down.load(Ordering::Relaxed) {
            // Do not hold the sender up while the brokers are down; the record stays
            // queued and its acknowledgement, if it comes, marks the relay up again.
            let down = self.down.clone();
            tokio::spawn(async move {
                if let Ok(Ok(_)) = delivery.await {
                    down.store(false, Ordering::Relaxed);
                }
            });
            self.outcome(false);
            return Err(Error::unavailable("kafka relay: the brokers are down"));
        }
        let result = match tokio::time::timeout(self.opts.relay_send_timeout, delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(unavailable("produce failed", e)),
            Ok(Err(_)) => Err(Error::unavailable("kafka relay: the producer went away")),
            Err(_) => Err(Error::unavailable(format!(
                "kafka relay: no acknowledgement within {:?}",
                self.opts.relay_send_timeout
            ))),
        };
        self.outcome(result.is_ok());
        result
    }

    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>> {
        let consumer: StreamConsumer = self
            .opts
            .client_config(&[
                ("group.id", "messenger-relay"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "false"),
                ("fetch.wait.max.ms", "100"),
                ("socket.nagle.disable", "true"),
                ("reconnect.backoff.max.ms", "1000"),
            ])
            .create()
            .map_err(|e| Error::bad_request(format!("bad Kafka consumer configuration: {e}")))?;
        let consumer = Arc::new(consumer);
        let topic = self.opts.relay_topic.clone();
        let partition = self.partition(node);
        // Start at the current end, resolved now: everything sent after this call
        // returns is at or past this offset.
        let deadline = std::time::Instant::now() + self.opts.connect_timeout;
        let high = loop {
            let (c, t) = (consumer.clone(), topic.clone());
            let r = tokio::task::spawn_blocking(move || {
                c.fetch_watermarks(&t, partition, Duration::from_secs(2))
            })
            .await
            .map_err(|e| Error::internal(format!("watermark task: {e}")))?;
            match r {
                Ok((_, high)) => break high,
                // Leadership moves right after a topic is created or a broker restarts.
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "kafka relay: end offset not known yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(unavailable("reading the relay partition's end offset", e)),
            }
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(high))
            .map_err(|e| unavailable("assigning the relay partition", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| unavailable("assigning the relay partition", e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBER_BUFFER);
        let mine = key(node);
        tokio::spawn(async move {
            let mut last_error: Option<std::time::Instant> = None;
            loop {
                let env = tokio::select! {
                    _ = tx.closed() => break,
                    m = consumer.recv() => match m {
                        Ok(m) => {
                            if m.key() != Some(&mine[..]) {
                                continue;
                            }
                            match m.payload().map(serde_json::from_slice::<Envelope>) {
                                Some(Ok(env)) => env,
                                Some(Err(e)) => {
                                    tracing::warn!(offset = m.offset(), error = %e,
                                        "kafka relay: undecodable envelope skipped");
                                    continue;
                                }
                                None => continue,
                            }
                        }
                        Err(e) => {
                            // Errors repeat while the brokers are down: log one per 10 s.
                            if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                tracing::warn!(error = %e, "kafka relay consumer error");
                                last_error = Some(std::time::Instant::now());
                            }
                            continue;
                        }
                    },
                };
                if tx.send(env).await.is_err() {
                    break;
                }
            }
            tracing::debug!(%node, "kafka relay subscription ended");
        });
        Ok(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|env| (env, rx)) },
        )
        .boxed())
    }
}
