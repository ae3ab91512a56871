//! # messenger-worker
//!
//! Chat workers: members of one Kafka consumer group that read messenger's event log
//! (produced by `messenger-server --kafka`) and hand each event off:
//!
//! - push notifications for the members with no live session of each
//!   `message.created`, through [`messenger_push`] providers: APNs, FCM and Web Push
//!   to the devices and browsers users registered (read, with thread mutes, from the
//!   servers' shared HBase store: `[hbase]`), and/or the signed push webhook;
//!   throttled per user and thread in large groups as the engine does. The `[push]`
//!   sections are the server's ([`messenger_push::settings`]);
//! - signed webhooks to the application's endpoints, for the event types each
//!   subscribes to, one request per event or batched, retried with jittered
//!   exponential backoff and dead-lettered after the last try.
//!
//! A partition's offset is committed only past events whose every hand-off succeeded
//! or was dead-lettered, so a worker killed mid-batch loses nothing: the next owner of
//! the partition re-reads what was unfinished (at-least-once; receivers de-duplicate on
//! the event id). Add workers to share the partitions.
//!
//! A library and a binary in one crate: tests and embedders run [`run`] in-process,
//! operators run `messenger-worker`; the server stays free of the consumer, the HTTP
//! client and their dependencies.

mod config;
mod metrics;
mod push;
mod worker;

pub use config::{
    Endpoint, HbaseSection, KafkaSection, Overrides, RetrySection, WebhookEndpoint, WorkerConfig,
    EVENT_TYPES,
};
pub use messenger_push::PushSettings;
pub use metrics::Metrics;
pub use worker::{run, WorkerError};
