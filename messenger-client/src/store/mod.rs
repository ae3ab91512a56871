//! What the client must remember across restarts: the [`ClientStore`] trait, the
//! [`MemoryStore`] and (feature `sqlite`) the [`SqliteStore`].
//!
//! The client keeps three things in its store:
//! - the **outbox**: every send not yet confirmed by the server, with its temp id, in
//!   the order the app made them. A send is written to the store before it is written
//!   to the socket, so an app killed with messages in its outbox resends each of them,
//!   under the same temp id, when it starts again (the server de-duplicates by temp id);
//! - each thread's **position**: the last seq the app has taken from the event stream
//!   and come back for more (see [`Events`](crate::Events)), and the `DELIVERED` ack
//!   still owed for what it received. A restarted client resumes every thread after
//!   that seq, without refetching what the app already held;
//! - **receipts**: the highest delivered and read seq of every member the client has
//!   heard of, per thread, for the app's ✓✓ marks while offline.
//!
//! The client reads the whole state once ([`ClientStore::load`]) when it is built and
//! then hands the store batches of changes ([`ClientStore::save`]), each to be applied
//! atomically. Implementations must never block the async workers: do blocking I/O on
//! a thread of your own (as [`SqliteStore`] does) or with `spawn_blocking`.
//!
//! A custom store (say, the app's own database) checks itself against the conformance
//! suite in [`conformance`] (feature `testkit`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use messenger_core::time::Millis;
use messenger_core::{MessageId, ThreadId, UserId};

mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "testkit")]
pub mod conformance;

pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// One send waiting for the server's `message_sent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The thread.
    pub thread_id: ThreadId,
    /// The idempotency key: the same temp id is sent on every attempt.
    pub temp_id: String,
    /// The text.
    pub text: String,
    /// When the app made the send (Unix ms).
    pub queued_at: Millis,
}

/// A `DELIVERED` ack the client owes the server for a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckDue {
    /// The newest message from someone else the app received.
    pub seq: u64,
    /// Its id (the protocol acks by message id).
    pub message_id: MessageId,
}

/// Where a thread stands for the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThreadPosition {
    /// The last seq the app holds: it took the message from the event stream and came
    /// back for more. Never moves backwards.
    pub held_seq: u64,
    /// The `DELIVERED` ack not yet written to the server, if any.
    pub ack_due: Option<AckDue>,
}

/// A member's receipt watermarks in a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptMark {
    /// The thread.
    pub thread_id: ThreadId,
    /// Whose receipts.
    pub user_id: UserId,
    /// Highest delivered seq.
    pub delivered_seq: u64,
    /// Highest read seq.
    pub read_seq: u64,
}

/// Everything a store holds, as [`ClientStore::load`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredState {
    /// The user this store belongs to (set on the first `welcome`). A client whose
    /// token names another user stops with [`ClientError::WrongUser`](crate::ClientError::WrongUser).
    pub user_id: Option<UserId>,
    /// The first catch-up ran: threads the store has no position for start at seq 1
    /// from now on (before it, [`InitialSync`](crate::InitialSync) decides).
    pub synced: bool,
    /// Unconfirmed sends, oldest first.
    pub outbox: Vec<OutboxEntry>,
    /// Each thread's position.
    pub threads: BTreeMap<ThreadId, ThreadPosition>,
    /// Receipt watermarks, one per (thread, user).
    pub receipts: Vec<ReceiptMark>,
}

/// A batch of changes; [`ClientStore::save`] applies it atomically, in this order:
/// metadata, outbox additions, outbox removals, positions, receipts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreChanges {
    /// Set the store's user.
    pub user_id: Option<UserId>,
    /// Mark the first catch-up done (`false` leaves the flag as it is).
    pub synced: bool,
    /// Append these sends to the outbox, in order (a (thread, temp id) already there
    /// is left as it is).
    pub outbox_added: Vec<OutboxEntry>,
    /// Remove these (thread, temp id) sends: confirmed or refused for good.
    pub outbox_removed: Vec<(ThreadId, String)>,
    /// Upsert these positions: `held_seq` becomes the larger of the stored and the
    /// given one; `ack_due` is replaced as given.
    pub threads: BTreeMap<ThreadId, ThreadPosition>,
    /// Merge these receipts: each watermark becomes the larger of stored and given.
    pub receipts: Vec<ReceiptMark>,
}

impl StoreChanges {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.user_id.is_none()
            && !self.synced
            && self.outbox_added.is_empty()
            && self.outbox_removed.is_empty()
            && self.threads.is_empty()
            && self.receipts.is_empty()
    }
}

/// Why the store failed. The client reports it to the caller whose data it could not
/// keep (a send fails with [`ClientError::Store`](crate::ClientError::Store)); other
/// changes are kept in memory and written again on the next save.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client store: {message}")]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// An error with this explanation.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
        }
    }

    /// The explanation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Where the client keeps what must survive a restart. See the [module docs](self).
///
/// Object-safe (`Arc<dyn ClientStore>`); one store belongs to one client at a time.
#[async_trait]
pub trait ClientStore: Send + Sync + 'static {
    /// Everything stored, read once when a client is built.
    async fn load(&self) -> Result<StoredState, StoreError>;

    /// Applies `changes` atomically: all of them or none.
    async fn save(&self, changes: StoreChanges) -> Result<(), StoreError>;
}

#[async_trait]
impl<S: ClientStore + ?Sized> ClientStore for Arc<S> {
    async fn load(&self) -> Result<StoredState, StoreError> {
        (**self).load().await
    }

    async fn save(&self, changes: StoreChanges) -> Result<(), StoreError> {
        (**self).save(changes).await
    }
}

/// Applies `changes` to an in-memory [`StoredState`] with the trait's semantics (shared
/// by [`MemoryStore`] and the conformance suite's expectations).
pub(crate) fn apply(state: &mut StoredState, changes: StoreChanges) {
    if let Some(u) = changes.user_id {
        state.user_id = Some(u);
    }
    state.synced |= changes.synced;
    for e in changes.outbox_added {
        let dup = state
            .outbox
            .iter()
            .any(|o| o.thread_id == e.thread_id && o.temp_id == e.temp_id);
        if !dup {
            state.outbox.push(e);
        }
    }
    for (t, temp) in &changes.outbox_removed {
        state
            .outbox
            .retain(|o| !(&o.thread_id == t && &o.temp_id == temp));
    }
    for (t, p) in changes.threads {
        let cur = state.threads.entry(t).or_default();
        cur.held_seq = cur.held_seq.max(p.held_seq);
        cur.ack_due = p.ack_due;
    }
    for r in changes.receipts {
        match state
            .receipts
            .iter_mut()
            .find(|c| c.thread_id == r.thread_id && c.user_id == r.user_id)
        {
            Some(c) => {
                c.delivered_seq = c.delivered_seq.max(r.delivered_seq);
                c.read_seq = c.read_seq.max(r.read_seq);
            }
            None => state.receipts.push(r),
        }
    }
}
