//! [`MemPushSink`]: records push notifications in a bounded ring buffer.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use messenger_core::model::PushNotification;
use messenger_core::{PushSink, Result};
use tokio::sync::broadcast;

use crate::presence::broadcast_stream;
use crate::shard::lock;

/// The default number of notifications a [`MemPushSink`] keeps.
pub const DEFAULT_PUSH_CAPACITY: usize = 1024;

struct Ring {
    items: VecDeque<PushNotification>,
    total: u64,
}

/// A [`PushSink`] that delivers nothing and remembers the most recent notifications.
///
/// It keeps at most `capacity` notifications (the oldest are dropped first), so it never
/// grows without bound. Tests read them with [`recent`](Self::recent) or follow them live
/// with [`subscribe`](Self::subscribe).
pub struct MemPushSink {
    capacity: usize,
    ring: Mutex<Ring>,
    live: broadcast::Sender<PushNotification>,
}

impl std::fmt::Debug for MemPushSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemPushSink")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemPushSink {
    fn default() -> Self {
        Self::new()
    }
}

impl MemPushSink {
    /// A sink that keeps the last [`DEFAULT_PUSH_CAPACITY`] notifications.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_PUSH_CAPACITY)
    }

    /// A sink that keeps the last `capacity` notifications (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (live, _) = broadcast::channel(capacity);
        MemPushSink {
            capacity,
            ring: Mutex::new(Ring {
                items: VecDeque::with_capacity(capacity.min(1024)),
                total: 0,
            }),
            live,
        }
    }

    /// How many notifications are kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many notifications are kept now.
    pub fn len(&self) -> usize {
        lock(&self.ring).items.len()
    }

    /// Whether no notification is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many notifications were pushed since creation, including dropped ones.
    pub fn total(&self) -> u64 {
        lock(&self.ring).total
    }

    /// The kept notifications, oldest first.
    pub fn recent(&self) -> Vec<PushNotification> {
        lock(&self.ring).items.iter().cloned().collect()
    }

    /// Removes and returns the kept notifications, oldest first.
    pub fn drain(&self) -> Vec<PushNotification> {
        lock(&self.ring).items.drain(..).collect()
    }

    /// Every notification pushed from now on. A subscriber more than `capacity`
    /// notifications behind skips the ones it missed (with a warning).
    pub fn subscribe(&self) -> BoxStream<'static, PushNotification> {
        broadcast_stream(self.live.subscribe(), "push").boxed()
    }
}

#[async_trait]
impl PushSink for MemPushSink {
    async fn push(&self, notification: PushNotification) -> Result<()> {
        let mut ring = lock(&self.ring);
        if ring.items.len() == self.capacity {
            ring.items.pop_front();
        }
        ring.items.push_back(notification.clone());
        ring.total += 1;
        // Under the lock, so live subscribers see the ring's order.
        let _ = self.live.send(notification);
        Ok(())
    }
}
