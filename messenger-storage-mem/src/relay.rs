//! [`MemRelay`]: an in-process hub that routes envelopes between engines by node id.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use messenger_core::model::Envelope;
use messenger_core::{NodeId, Relay, Result};
use tokio::sync::mpsc;

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
    nodes: RwLock<Nodes>,
}

type Nodes = HashMap<NodeId, Vec<mpsc::Sender<Envelope>>>;

// Poisoning is ignored: the map stays consistent between statements.
fn read(l: &RwLock<Nodes>) -> RwLockReadGuard<'_, Nodes> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write(l: &RwLock<Nodes>) -> RwLockWriteGuard<'_, Nodes> {
    l.write().unwrap_or_else(|p| p.into_inner())
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
                nodes: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// How many live subscriptions `node` has.
    pub fn subscribers(&self, node: NodeId) -> usize {
        read(&self.hub.nodes)
            .get(&node)
            .map_or(0, |subs| subs.iter().filter(|s| !s.is_closed()).count())
    }
}

#[async_trait]
impl Relay for MemRelay {
    async fn send(&self, node: NodeId, envelope: Envelope) -> Result<()> {
        // Copy the live senders out under the read lock (senders on different nodes do
        // not block each other); the lock is never held across an await.
        let (subs, stale) = {
            let nodes = read(&self.hub.nodes);
            match nodes.get(&node) {
                Some(all) => {
                    let live: Vec<mpsc::Sender<Envelope>> =
                        all.iter().filter(|s| !s.is_closed()).cloned().collect();
                    let stale = live.len() < all.len();
                    (live, stale)
                }
                None => return Ok(()),
            }
        };
        if stale {
            let mut nodes = write(&self.hub.nodes);
            if let Some(all) = nodes.get_mut(&node) {
                all.retain(|s| !s.is_closed());
                if all.is_empty() {
                    nodes.remove(&node);
                }
            }
        }
        if subs.is_empty() {
            return Ok(());
        }
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

    /// The nodes with at least one live subscription.
    async fn nodes(&self) -> Result<Option<Vec<NodeId>>> {
        Ok(Some(
            read(&self.hub.nodes)
                .iter()
                .filter(|(_, subs)| subs.iter().any(|s| !s.is_closed()))
                .map(|(n, _)| *n)
                .collect(),
        ))
    }

    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>> {
        let (tx, rx) = mpsc::channel(self.hub.capacity);
        write(&self.hub.nodes).entry(node).or_default().push(tx);
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::model::EnvelopeTo;
    use std::time::Duration;

    fn env(from: u16, frame: &str) -> Envelope {
        Envelope {
            from_node: NodeId::new(from).unwrap(),
            to: EnvelopeTo::Users(vec![]),
            except_session: None,
            order: None,
            frame: frame.into(),
        }
    }

    async fn next(s: &mut BoxStream<'static, Envelope>) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(200), s.next())
            .await
            .ok()
            .flatten()
            .map(|e| e.frame)
    }

    #[tokio::test]
    async fn clones_route_between_nodes() {
        let hub = MemRelay::new();
        let (n1, n2, n3) = (
            NodeId::new(1).unwrap(),
            NodeId::new(2).unwrap(),
            NodeId::new(3).unwrap(),
        );
        // Each "engine" holds its own clone.
        let (r1, r2, r3) = (hub.clone(), hub.clone(), hub.clone());
        let mut s1 = r1.subscribe(n1).await.unwrap();
        let mut s2 = r2.subscribe(n2).await.unwrap();
        let mut s3 = r3.subscribe(n3).await.unwrap();
        r1.send(n2, env(1, "1->2")).await.unwrap();
        r2.send(n3, env(2, "2->3")).await.unwrap();
        r3.send(n1, env(3, "3->1")).await.unwrap();
        r3.send(n2, env(3, "3->2")).await.unwrap();
        assert_eq!(next(&mut s1).await.as_deref(), Some("3->1"));
        assert_eq!(next(&mut s2).await.as_deref(), Some("1->2"));
        assert_eq!(next(&mut s2).await.as_deref(), Some("3->2"));
        assert_eq!(next(&mut s3).await.as_deref(), Some("2->3"));
        for s in [&mut s1, &mut s2, &mut s3] {
            assert_eq!(next(s).await, None, "nothing else");
        }
    }

    #[tokio::test]
    async fn unknown_or_gone_node_drops() {
        let hub = MemRelay::new();
        let n = NodeId::new(7).unwrap();
        hub.send(n, env(1, "nobody")).await.unwrap();
        let s = hub.subscribe(n).await.unwrap();
        assert_eq!(hub.subscribers(n), 1);
        drop(s);
        assert_eq!(hub.subscribers(n), 0);
        hub.send(n, env(1, "gone")).await.unwrap();
        assert!(read(&hub.hub.nodes).get(&n).is_none(), "forgotten");
    }

    #[tokio::test]
    async fn full_queue_applies_backpressure_without_loss() {
        let hub = MemRelay::with_capacity(2);
        let n = NodeId::new(1).unwrap();
        let mut s = hub.subscribe(n).await.unwrap();
        let sender = {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    hub.send(n, env(2, &i.to_string())).await.unwrap();
                }
            })
        };
        for i in 0..10 {
            assert_eq!(next(&mut s).await, Some(i.to_string()));
        }
        sender.await.unwrap();
    }
}
