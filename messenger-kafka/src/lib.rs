//! # messenger-kafka
//!
//! messenger on a real Apache Kafka: the seed architecture's pipeline between chat
//! servers and chat workers.
//!
//! - [`KafkaRelay`]: a [`Relay`](messenger_core::Relay) over one topic: cross-node
//!   delivery with the same best-effort contract as the Redis relay.
//! - [`KafkaEventLog`]: the engine's [`EventSink`](messenger_core::EventSink): every
//!   durable change (messages with the members that had no live session, receipts,
//!   membership) produced to the event log topic, keyed by thread, for
//!   `messenger-worker` and other consumers. Never blocks the engine; retries what
//!   the brokers did not take; sheds (counted and logged) only when its bounded buffer
//!   is full.
//! - [`ensure_topics`]: start-up checks with errors that say what to do.
//!
//! ```no_run
//! # async fn demo(mut adapters: messenger_core::engine::Adapters) -> messenger_core::Result<()> {
//! use std::sync::Arc;
//! use messenger_kafka::{KafkaEventLog, KafkaOptions, KafkaRelay};
//!
//! let opts = KafkaOptions::new("127.0.0.1:9092");
//! adapters.relay = Arc::new(KafkaRelay::connect(&opts).await?);
//! adapters.events = KafkaEventLog::connect(&opts).await?;
//! # Ok(()) }
//! ```

mod config;
mod event_log;
mod relay;
mod topics;

pub use config::{parse_property, KafkaOptions, DEFAULT_EVENTS_TOPIC, DEFAULT_RELAY_TOPIC};
pub use event_log::{EventLogStats, KafkaEventLog};
pub use relay::KafkaRelay;
pub use topics::{ensure_topics, TopicSpec};
