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
use messenger_core::sync::lock;

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

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::{MessageId, ThreadId, UserId};

    fn note(seq: u64) -> PushNotification {
        PushNotification {
            user_id: UserId::new("bob").unwrap(),
            thread_id: ThreadId::new("t").unwrap(),
            message_id: MessageId(seq),
            seq,
            sender_id: UserId::new("alice").unwrap(),
            text: format!("m{seq}"),
            sent_at: 0,
        }
    }

    #[tokio::test]
    async fn ring_keeps_only_the_last_capacity() {
        let sink = MemPushSink::with_capacity(3);
        assert!(sink.is_empty());
        for seq in 1..=10 {
            sink.push(note(seq)).await.unwrap();
            assert!(sink.len() <= 3, "never above capacity");
        }
        let seqs: Vec<u64> = sink.recent().iter().map(|n| n.seq).collect();
        assert_eq!(seqs, vec![8, 9, 10], "oldest dropped first");
        assert_eq!((sink.len(), sink.total(), sink.capacity()), (3, 10, 3));
        assert_eq!(sink.drain().len(), 3);
        assert!(sink.is_empty());
        assert_eq!(sink.total(), 10);
    }

    #[tokio::test]
    async fn zero_capacity_means_one() {
        let sink = MemPushSink::with_capacity(0);
        sink.push(note(1)).await.unwrap();
        sink.push(note(2)).await.unwrap();
        assert_eq!(sink.recent(), vec![note(2)]);
    }

    #[tokio::test]
    async fn subscribers_follow_and_survive_lag() {
        let sink = MemPushSink::with_capacity(2);
        let mut live = sink.subscribe();
        for seq in 1..=5 {
            sink.push(note(seq)).await.unwrap();
        }
        // 1..=3 were overwritten in the channel: the subscriber skips them and goes on.
        assert_eq!(live.next().await.map(|n| n.seq), Some(4));
        assert_eq!(live.next().await.map(|n| n.seq), Some(5));
        sink.push(note(6)).await.unwrap();
        assert_eq!(live.next().await.map(|n| n.seq), Some(6));
    }
}
