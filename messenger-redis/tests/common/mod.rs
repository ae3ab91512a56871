//! Test harness: the shared real-`redis-server` harness (messenger-test-support) and
//! Redis options with short timings.

#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use messenger_core::model::Envelope;
use messenger_core::{NodeId, Relay};
use messenger_redis::RedisOptions;
pub use messenger_test_support::redis::{shared, unique_prefix, RedisServer};

/// Options with short timings for tests: a node is declared dead 2 s after its last
/// heartbeat.
pub fn fast_options(name: &str) -> RedisOptions {
    RedisOptions {
        key_prefix: unique_prefix(name),
        node_ttl: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(500),
        reap_interval: Duration::from_millis(250),
        op_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    }
}

/// Another relay that cannot list its nodes (as Kafka's): `inner` with
/// [`Relay::nodes`] left at its default (`None`).
pub struct Unlisted(pub Arc<dyn Relay>);

#[async_trait::async_trait]
impl Relay for Unlisted {
    async fn send(&self, node: NodeId, envelope: Envelope) -> messenger_core::Result<()> {
        self.0.send(node, envelope).await
    }

    async fn subscribe(
        &self,
        node: NodeId,
    ) -> messenger_core::Result<BoxStream<'static, Envelope>> {
        self.0.subscribe(node).await
    }
}
