//! SessionDirectory, Presence and the cross-node Relay of messenger on a real Redis.
//!
//! TODO crate docs
mod adapters;
mod error;
mod keys;
mod node;
mod scripts;
mod subscribe;

pub use adapters::{RedisPresence, RedisRelay, RedisSessionDirectory};
pub use node::{RedisCluster, RedisOptions};
