//! Test harness: the shared real-`redis-server` harness (messenger-test-support) and
//! Redis options with short timings.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

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
