//! # messenger-storage-mem
//!
//! In-memory implementations of every [`messenger_core`] adapter trait: the embedded
//! default that lets one process run the whole messenger with no infrastructure, and the
//! backend of choice for tests.
//!
//! | trait | implementation |
//! |---|---|
//! | [`MessageStore`](messenger_core::MessageStore) | [`MemMessageStore`] |
//! | [`ThreadStore`](messenger_core::ThreadStore) | [`MemThreadStore`] |
//! | [`SessionDirectory`](messenger_core::SessionDirectory) | [`MemSessionDirectory`] |
//! | [`Presence`](messenger_core::Presence) | [`MemPresence`] |
//! | [`PushSink`](messenger_core::PushSink) | [`MemPushSink`] (records, bounded) |
//! | [`PushRegistry`](messenger_core::PushRegistry) | [`MemPushRegistry`] |
//! | [`Relay`](messenger_core::Relay) | [`MemRelay`] (an in-process hub) |
//! | [`IdGenerator`](messenger_core::IdGenerator) | [`Snowflake`] from the core |
//!
//! Every map is sharded (64 independently locked shards) and every thread has its own
//! lock, so there is no global lock on the send path. Nothing is persisted: a restart
//! forgets everything.
//!
//! The shortest use, a single-node engine:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> messenger_core::Result<()> {
//! use messenger_core::engine::{Engine, EngineConfig};
//!
//! let engine = Engine::start(EngineConfig::default(), messenger_storage_mem::adapters()).await?;
//! # drop(engine); Ok(()) }
//! ```
//!
//! Two engines in one process that share one [`MemBackend`], a stand-in for a cluster
//! in tests: each gets its own node id and its own id generator, and they reach each
//! other's sessions through the shared [`MemRelay`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> messenger_core::Result<()> {
//! use messenger_core::engine::{Engine, EngineConfig};
//! use messenger_core::NodeId;
//! use messenger_storage_mem::MemBackend;
//!
//! let backend = MemBackend::new();
//! let (n1, n2) = (NodeId::new(1)?, NodeId::new(2)?);
//! let a = Engine::start(EngineConfig::with_node(n1), backend.adapters(n1)).await?;
//! let b = Engine::start(EngineConfig::with_node(n2), backend.adapters(n2)).await?;
//! // Push notifications for offline members are recorded for inspection:
//! assert!(backend.push().recent().is_empty());
//! # drop((a, b)); Ok(()) }
//! ```
//!
//! The conformance suites of `messenger-core` (feature `testkit`) run against every type
//! here; see `tests/conformance.rs`.

mod directory;
mod message_store;
mod presence;
mod push;
mod push_registry;
mod relay;
mod thread_store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use messenger_core::engine::Adapters;
use messenger_core::idgen::Snowflake;
use messenger_core::NodeId;

pub use directory::MemSessionDirectory;
pub use message_store::MemMessageStore;
pub use presence::{MemPresence, DEFAULT_PRESENCE_CAPACITY};
pub use push::{MemPushSink, DEFAULT_PUSH_CAPACITY};
pub use push_registry::MemPushRegistry;
pub use relay::{MemRelay, DEFAULT_RELAY_CAPACITY};
pub use thread_store::MemThreadStore;

/// Capacities of a [`MemBackend`]. Every buffer is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemConfig {
    /// How many notifications the [`MemPushSink`] keeps (oldest dropped first).
    pub push_capacity: usize,
    /// How many presence changes a subscriber may fall behind before it skips some.
    pub presence_capacity: usize,
    /// The per-subscriber queue of the [`MemRelay`] (senders wait when it is full).
    pub relay_capacity: usize,
}

impl Default for MemConfig {
    fn default() -> Self {
        MemConfig {
            push_capacity: DEFAULT_PUSH_CAPACITY,
            presence_capacity: DEFAULT_PRESENCE_CAPACITY,
            relay_capacity: DEFAULT_RELAY_CAPACITY,
        }
    }
}

/// Every in-memory adapter, shared: the state of one in-process "cluster".
///
/// Cheap to clone; clones share the same state. [`adapters`](Self::adapters) hands out
/// an [`Adapters`] set for one node; every node sees the same messages, threads,
/// sessions and presence, and the nodes reach each other through one [`MemRelay`].
#[derive(Clone, Debug)]
pub struct MemBackend {
    messages: Arc<MemMessageStore>,
    threads: Arc<MemThreadStore>,
    directory: Arc<MemSessionDirectory>,
    presence: Arc<MemPresence>,
    push: Arc<MemPushSink>,
    push_registry: Arc<MemPushRegistry>,
    relay: MemRelay,
    ids: Arc<Mutex<HashMap<NodeId, Arc<Snowflake>>>>,
}

impl Default for MemBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemBackend {
    /// A fresh, empty backend with the default capacities.
    pub fn new() -> Self {
        Self::with_config(MemConfig::default())
    }

    /// A fresh, empty backend with the given capacities.
    pub fn with_config(config: MemConfig) -> Self {
        MemBackend {
            messages: Arc::new(MemMessageStore::new()),
            threads: Arc::new(MemThreadStore::new()),
            directory: Arc::new(MemSessionDirectory::new()),
            presence: Arc::new(MemPresence::with_capacity(config.presence_capacity)),
            push: Arc::new(MemPushSink::with_capacity(config.push_capacity)),
            push_registry: Arc::new(MemPushRegistry::new()),
            relay: MemRelay::with_capacity(config.relay_capacity),
            ids: Arc::default(),
        }
    }

    /// The adapters for an engine running as `node`.
    ///
    /// Ids come from a [`Snowflake`] for `node`; asking twice for the same node returns
    /// the same generator, so ids stay unique.
    pub fn adapters(&self, node: NodeId) -> Adapters {
        let ids = messenger_core::sync::lock(&self.ids)
            .entry(node)
            .or_insert_with(|| Arc::new(Snowflake::new(node)))
            .clone();
        Adapters {
            ids,
            messages: self.messages.clone(),
            threads: self.threads.clone(),
            directory: self.directory.clone(),
            presence: self.presence.clone(),
            push: self.push.clone(),
            push_registry: self.push_registry.clone(),
            relay: Arc::new(self.relay.clone()),
            events: Arc::new(messenger_core::DiscardEvents),
        }
    }

    /// The shared message store.
    pub fn messages(&self) -> &Arc<MemMessageStore> {
        &self.messages
    }

    /// The shared thread store.
    pub fn threads(&self) -> &Arc<MemThreadStore> {
        &self.threads
    }

    /// The shared session directory.
    pub fn directory(&self) -> &Arc<MemSessionDirectory> {
        &self.directory
    }

    /// The shared presence.
    pub fn presence(&self) -> &Arc<MemPresence> {
        &self.presence
    }

    /// The shared push sink: read or follow the notifications the engines pushed.
    pub fn push(&self) -> &Arc<MemPushSink> {
        &self.push
    }

    /// The shared push registry (targets and mutes).
    pub fn push_registry(&self) -> &Arc<MemPushRegistry> {
        &self.push_registry
    }

    /// The shared relay hub.
    pub fn relay(&self) -> &MemRelay {
        &self.relay
    }
}

/// The adapters of a single-node, all-in-memory messenger (node 0, a fresh backend).
pub fn adapters() -> Adapters {
    MemBackend::new().adapters(NodeId::default())
}
