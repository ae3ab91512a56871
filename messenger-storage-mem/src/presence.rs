//! [`MemPresence`]: online/offline per user and a stream of changes, in memory.

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use messenger_core::model::{PresenceInfo, PresenceStatus};
use messenger_core::time::Millis;
use messenger_core::{NodeId, Presence, Result, SessionId, UserId};
use tokio::sync::broadcast;

use messenger_core::sync::Sharded;

/// The default capacity of the change channel (see [`MemPresence::with_capacity`]).
pub const DEFAULT_PRESENCE_CAPACITY: usize = 4096;

#[derive(Default)]
struct UserPresence {
    /// Live sessions and the node holding each. A list, not a map: a user has a few
    /// sessions, and a map's smallest table is 128 B per online user where one entry of
    /// a list is 24 B.
    sessions: Vec<(SessionId, NodeId)>,
    /// When the user last went offline.
    last_seen: Option<Millis>,
}

/// An in-memory [`Presence`].
///
/// A user is online while at least one session is live: the first `set_online` makes the
/// user online, the `set_offline` of the last live session makes the user offline with
/// `last_seen`. A change event is broadcast only on such a transition, in transition order
/// per user. Subscribers that fall more than the channel capacity behind skip the events
/// they missed (logged as a warning) and keep going.
///
/// Within one process there is no node that can die, so liveness never expires here.
pub struct MemPresence {
    users: Sharded<UserId, UserPresence>,
    changes: broadcast::Sender<PresenceInfo>,
}

impl std::fmt::Debug for MemPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemPresence")
            .field("subscribers", &self.changes.receiver_count())
            .finish_non_exhaustive()
    }
}

impl Default for MemPresence {
    fn default() -> Self {
        Self::new()
    }
}

impl MemPresence {
    /// Presence with a change channel of [`DEFAULT_PRESENCE_CAPACITY`] events.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_PRESENCE_CAPACITY)
    }

    /// Presence whose change channel buffers `capacity` events (at least 1) per subscriber.
    pub fn with_capacity(capacity: usize) -> Self {
        let (changes, _) = broadcast::channel(capacity.max(1));
        MemPresence {
            users: Sharded::new(),
            changes,
        }
    }

    fn emit(&self, info: PresenceInfo) {
        // No subscriber is not an error: nobody is watching.
        let _ = self.changes.send(info);
    }
}

#[async_trait]
impl Presence for MemPresence {
    async fn set_online(&self, user: &UserId, session: &SessionId, node: NodeId) -> Result<()> {
        let mut shard = self.users.shard(user);
        let p = shard.entry(user.clone()).or_default();
        let was_offline = p.sessions.is_empty();
        match p.sessions.iter_mut().find(|(s, _)| s == session) {
            Some(e) => e.1 = node,
            None => {
                p.sessions.reserve_exact(1);
                p.sessions.push((session.clone(), node));
            }
        }
        if was_offline {
            // Sent under the shard lock so that events for one user keep their order.
            self.emit(PresenceInfo {
                user_id: user.clone(),
                status: PresenceStatus::Online,
                last_seen: None,
            });
        }
        Ok(())
    }

    async fn set_offline(
        &self,
        user: &UserId,
        session: &SessionId,
        last_seen: Millis,
    ) -> Result<()> {
        let mut shard = self.users.shard(user);
        let Some(p) = shard.get_mut(user) else {
            return Ok(());
        };
        let before = p.sessions.len();
        p.sessions.retain(|(s, _)| s != session);
        if p.sessions.len() < before && p.sessions.is_empty() {
            // The user's entry stays for `last_seen`; its list does not.
            p.sessions = Vec::new();
            p.last_seen = Some(last_seen);
            self.emit(PresenceInfo {
                user_id: user.clone(),
                status: PresenceStatus::Offline,
                last_seen: Some(last_seen),
            });
        }
        Ok(())
    }

    async fn get(&self, users: &[UserId]) -> Result<Vec<PresenceInfo>> {
        Ok(users
            .iter()
            .map(|u| {
                let shard = self.users.shard(u);
                let (online, last_seen) = shard
                    .get(u)
                    .map_or((false, None), |p| (!p.sessions.is_empty(), p.last_seen));
                PresenceInfo {
                    user_id: u.clone(),
                    status: if online {
                        PresenceStatus::Online
                    } else {
                        PresenceStatus::Offline
                    },
                    last_seen: if online { None } else { last_seen },
                }
            })
            .collect())
    }

    async fn changes(&self) -> Result<BoxStream<'static, PresenceInfo>> {
        Ok(broadcast_stream(self.changes.subscribe(), "presence").boxed())
    }
}

/// A stream over a broadcast receiver that skips lagged items with a warning and ends
/// when the sender is gone.
pub(crate) fn broadcast_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
    what: &'static str,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(item) => return Some((item, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "{what} subscriber lagged; skipped events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lagging_subscriber_skips_and_keeps_going() {
        let p = MemPresence::with_capacity(2);
        let mut events = p.changes().await.unwrap();
        let node = NodeId::default();
        let s = SessionId::new("s-1").unwrap();
        for i in 0..5 {
            let u = UserId::new(format!("u{i}")).unwrap();
            p.set_online(&u, &s, node).await.unwrap();
        }
        // Only the last two fit in the channel; the first three are skipped.
        assert_eq!(
            events.next().await.map(|e| e.user_id.to_string()),
            Some("u3".into())
        );
        assert_eq!(
            events.next().await.map(|e| e.user_id.to_string()),
            Some("u4".into())
        );
        let u = UserId::new("u0").unwrap();
        p.set_offline(&u, &s, 9).await.unwrap();
        let ev = events.next().await.unwrap();
        assert_eq!(
            (ev.status, ev.last_seen),
            (PresenceStatus::Offline, Some(9))
        );
    }

    #[tokio::test]
    async fn stream_ends_when_presence_is_dropped() {
        let p = MemPresence::new();
        let mut events = p.changes().await.unwrap();
        drop(p);
        assert!(events.next().await.is_none());
    }
}
