//! [`MemRelay`]: an in-process hub that routes envelopes between engines by node id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use messenger_core::model::Envelope;
use messenger_core::{NodeId, Relay, Result};
use tokio::sync::mpsc;

use crate::shard::lock;

/// The default per-subscriber queue of a [`MemRelay`].
pub const DEFAULT_RELAY_CAPACITY: usize = 4096;

/// An in-process [`Relay`]: a hub shared by every clone.
///
/// Give clones to several engines in one process; each subscribes with its own
/// [`NodeId`] and receives exactly the envelopes sent to that node. Each subscriber has a
/// bounded queue: a sender waits while the addressed subscriber's queue is full
/// (backpressure, nothing is lost). Sending to a node with no subscriber succeeds and
/// drops the envelope, as a real relay does for a node that is gone. A subscriber whose
/// stream is dropped is forgotten on the next send to its node.
#[derive(Clone)]
pub struct MemRelay {
    hub: Arc<Hub>,
}

struct Hub {
    capacity: usize,
    nodes: Mutex<HashMap<NodeId, Vec<mpsc::Sender<Envelope>>>>,
}

impl std::fmt::Debug for MemRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemRelay")
            .field("capacity", &self.hub.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for MemRelay {
    fn default() -> Self {
        Self::new()
    }
}

impl MemRelay {
    /// A hub with a per-subscriber queue of [`DEFAULT_RELAY_CAPACITY`] envelopes.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_RELAY_CAPACITY)
    }

    /// A hub with a per-subscriber queue of `capacity` envelopes (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        MemRelay {
            hub: Arc::new(Hub {
                capacity: capacity.max(1),
                nodes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How many live subscriptions `node` has.
    pub fn subscribers(&self, node: NodeId) -> usize {
        lock(&self.hub.nodes)
            .get(&node)
            .map_or(0, |subs| subs.iter().filter(|s| !s.is_closed()).count())
    }
}

#[async_trait]
impl Relay for MemRelay {
    async fn send(&self, node: NodeId, envelope: Envelope) -> Result<()> {
        // Copy the senders out: the hub lock is never held across an await.
        let subs: Vec<mpsc::Sender<Envelope>> = {
            let mut nodes = lock(&self.hub.nodes);
            match nodes.get_mut(&node) {
                Some(subs) => {
                    subs.retain(|s| !s.is_closed());
                    if subs.is_empty() {
                        nodes.remove(&node);
                        return Ok(());
                    }
                    subs.clone()
                }
                None => return Ok(()),
            }
        };
        let last = subs.len() - 1;
        let mut envelope = Some(envelope);
        for (i, s) in subs.iter().enumerate() {
            let e = if i == last {
                envelope.take()
            } else {
                envelope.clone()
            };
            if let Some(e) = e {
                // A subscriber that went away meanwhile just misses it.
                let _ = s.send(e).await;
            }
        }
        Ok(())
    }

    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>> {
        let (tx, rx) = mpsc::channel(self.hub.capacity);
        lock(&self.hub.nodes).entry(node).or_default().push(tx);
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
        Ok(stream.boxed())
    }
}
