//! The adapter traits. Every one is object-safe (`Arc<dyn Trait>`), `Send + Sync`,
//! async through `async-trait`, and returns the core [`Error`](crate::Error).
//!
//! Implementations: `messenger-storage-mem` (all of them, in memory), `messenger-redis`
//! (directory, presence, relay) and `messenger-storage-hbase` (message and thread stores).
//! The `testkit` feature holds the conformance suites an implementation must pass.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::Result;
use crate::events::Event;
use crate::ids::{MessageId, NodeId, SessionId, ThreadId, UserId};
use crate::model::{
    AckStatus, Appended, CreatedThread, Envelope, HistoryPage, HistoryQuery, MembershipChange,
    NewMessage, NewThread, PresenceInfo, PushNotification, SessionEntry, StoredMessage, ThreadInfo,
    UserThread, WatermarkUpdate,
};
use crate::push::{PushRegistration, PushTargets, ThreadMute};
use crate::time::Millis;

/// Makes unique, roughly time-ordered 64-bit ids. See [`Snowflake`](crate::idgen::Snowflake).
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait IdGenerator: Send + Sync {
    /// A fresh id, greater than every id this generator returned before.
    fn next_id(&self) -> MessageId;
}

/// Durable, ordered message storage.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Appends `msg` to its thread, atomically giving it the thread's next seq
    /// (1 for the first message, gapless after that), unless (thread, sender, temp_id)
    /// was appended before, in which case nothing is written and the original message
    /// comes back with `duplicate: true`. Returns only once the message is durable.
    async fn append(&self, msg: NewMessage) -> Result<Appended>;

    /// Appends a batch of messages to one thread as one unit: the outcome is that of
    /// calling [`append`](Self::append) on each message in input order while no other
    /// append to `thread` runs in between. This is the engine's write path (group
    /// commit: a thread's sends that queued while the previous call was in flight).
    ///
    /// - Returns one [`Appended`] per input message, in input order.
    /// - The messages this call stores get consecutive seqs in input order, starting right
    ///   after the thread's last seq, atomically: no other append's seq falls between
    ///   them, and no gap is left behind, even when the call fails.
    /// - A message whose (thread, sender, temp_id) was appended before, by an earlier call
    ///   or by an earlier message of this batch, writes nothing and comes back as the
    ///   original with `duplicate: true`.
    /// - Returns only once every message it stored is durable.
    ///
    /// An empty batch returns an empty `Vec` and touches nothing. A message whose
    /// `thread_id` is not `thread` fails the whole call with
    /// [`ErrorKind::BadRequest`](crate::ErrorKind::BadRequest) before anything is
    /// written. An `Err` fails the whole batch: after a transient error some of its
    /// messages may have been stored, and appending them again with the same temp_ids
    /// returns the originals.
    async fn append_batch(
        &self,
        thread: &ThreadId,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>>;

    /// [`append_batch`](Self::append_batch) without waiting, when the store can (no I/O:
    /// an in-memory store): `Some` with the outcome `append_batch` would give for the
    /// messages in `batch`, which it takes (leaving `batch` empty, its capacity kept for
    /// the caller to reuse). `None` (the default) when it cannot: `batch` is left as it
    /// was and the engine awaits `append_batch`. A store answers `None` always or never.
    ///
    /// The engine's committer runs in the sender's task when this answers (no boxed
    /// future, no task), and reuses `batch`'s vector from one batch to the next.
    fn append_batch_now(
        &self,
        thread: &ThreadId,
        batch: &mut Vec<NewMessage>,
    ) -> Option<Result<Vec<Appended>>> {
        let _ = (thread, batch);
        None
    }

    /// A page of a thread by seq range; see [`HistoryQuery`] and [`HistoryPage`].
    /// An unknown thread is an empty page.
    async fn fetch(&self, thread: &ThreadId, query: HistoryQuery) -> Result<HistoryPage>;

    /// One message by id, if it is in that thread.
    async fn get(&self, thread: &ThreadId, message_id: MessageId) -> Result<Option<StoredMessage>>;

    /// The highest seq of each thread (0 for an empty or unknown one), in input order.
    async fn last_seqs(&self, threads: &[ThreadId]) -> Result<Vec<u64>>;

    /// How many messages with `seq > after_seq` were sent by someone other than `reader`.
    async fn count_unread(&self, thread: &ThreadId, reader: &UserId, after_seq: u64)
        -> Result<u64>;
}

/// Threads, membership, each user's thread list and per-user read/delivered watermarks.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ThreadStore: Send + Sync {
    /// Creates the thread unless one with that id exists; either way returns the stored
    /// thread. Creating the same direct thread twice, even concurrently, yields one thread.
    async fn create_thread(&self, thread: NewThread) -> Result<CreatedThread>;

    /// The thread, if it exists.
    async fn get_thread(&self, thread: &ThreadId) -> Result<Option<ThreadInfo>>;

    /// The thread, shared, when the store can answer without waiting (no I/O: an
    /// in-memory store); `None` (the default) when it cannot, and the engine awaits
    /// [`get_thread`](Self::get_thread) instead. The send path reads a thread for every
    /// message: a shared answer spares it a copy of the member list and a boxed future.
    /// The value is a snapshot: later membership changes do not alter it.
    fn get_thread_now(&self, thread: &ThreadId) -> Option<Result<Option<Arc<ThreadInfo>>>> {
        let _ = thread;
        None
    }

    /// Adds members (already-members and repeats in `members` are ignored; each added user
    /// appears once in `changed`). `not_found` if the thread does not exist.
    async fn add_members(&self, thread: &ThreadId, members: &[UserId]) -> Result<MembershipChange>;

    /// Removes a member (a non-member is ignored). `not_found` if the thread does not exist.
    async fn remove_member(&self, thread: &ThreadId, member: &UserId) -> Result<MembershipChange>;

    /// Every thread `user` is a member of, with every member's watermarks. The order is
    /// the adapter's (the engine does not rely on it).
    async fn list_user_threads(&self, user: &UserId) -> Result<Vec<UserThread>>;

    /// Advances `user`'s watermark for `status` in `thread` to `seq` if that is forward.
    /// Never moves backwards; advancing READ also advances DELIVERED to at least `seq`.
    /// `not_found` if the thread does not exist.
    async fn advance_watermark(
        &self,
        thread: &ThreadId,
        user: &UserId,
        status: AckStatus,
        seq: u64,
    ) -> Result<WatermarkUpdate>;
}

/// Where each user's live sessions are: which node holds each connection.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SessionDirectory: Send + Sync {
    /// Records a live session. Idempotent: registering the same session again lists it once.
    async fn register(&self, entry: &SessionEntry) -> Result<()>;

    /// Forgets a session (unknown sessions are ignored).
    async fn unregister(&self, entry: &SessionEntry) -> Result<()>;

    /// The live sessions of each user, in input order (an empty list for a user with none).
    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<SessionEntry>>>;
}

/// Online, offline and last seen, with a stream of changes from every node.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Presence: Send + Sync {
    /// Marks `user` online because of `session` on `node`. A change event is emitted only
    /// if the user was offline.
    async fn set_online(&self, user: &UserId, session: &SessionId, node: NodeId) -> Result<()>;

    /// Marks `user` offline as of `last_seen`, unless the user still has another live
    /// session somewhere. A change event is emitted only if the user was online.
    async fn set_offline(
        &self,
        user: &UserId,
        session: &SessionId,
        last_seen: Millis,
    ) -> Result<()>;

    /// Current presence of each user, in input order.
    async fn get(&self, users: &[UserId]) -> Result<Vec<PresenceInfo>>;

    /// A stream of presence changes from every node, starting now. A subscriber that
    /// falls behind may skip changes (adapters log it); it never blocks other nodes.
    async fn changes(&self) -> Result<BoxStream<'static, PresenceInfo>>;
}

/// The push path for members with no online session (APNs, FCM, e-mail...).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PushSink: Send + Sync {
    /// Hands one notification over. Failures are logged by the engine and never block
    /// delivery to others.
    async fn push(&self, notification: PushNotification) -> Result<()>;
}

/// Where the engine publishes the event log (see [`events`](crate::events)): messages,
/// receipts and membership changes, each after it is durable, for chat workers (push,
/// webhooks) and other downstream consumers.
///
/// A trait of its own rather than a second [`PushSink`] method: a push is an async,
/// per-recipient call whose failure the engine logs, while the event log takes every
/// kind of event, from the request path, and must neither wait nor fail. Keeping them
/// apart leaves a single-node push provider free of event handling and an event log
/// free of push.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait EventSink: Send + Sync {
    /// Takes one event. Called on the engine's request path right after the change is
    /// durable, in the order this node applied the changes, so it must return at once:
    /// queue the event and hand it on elsewhere. It never fails: an implementation that
    /// cannot hand events on keeps them in a bounded buffer and retries, and counts and
    /// logs (clearly, with what to do) any it has to shed once that buffer is full.
    fn publish(&self, event: Event);

    /// Whether this sink takes events at all (default true). For a sink that says
    /// false, such as [`DiscardEvents`], the engine builds no event: no copy of a
    /// message's text or member lists on the send path.
    fn enabled(&self) -> bool {
        true
    }
}

/// An [`EventSink`] that drops every event: the engine's default when nothing consumes
/// the event log.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardEvents;

impl EventSink for DiscardEvents {
    fn publish(&self, _event: Event) {}

    fn enabled(&self) -> bool {
        false
    }
}

/// Cross-node delivery: one envelope per remote node per event.
///
/// Best effort and unordered: the message store is the source of truth, envelopes carry
/// a `(thread, seq)` key that the receiving engine uses to restore order, and clients
/// catch up from history after any loss.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Relay: Send + Sync {
    /// Sends `envelope` to `node`.
    async fn send(&self, node: NodeId, envelope: Envelope) -> Result<()>;

    /// The envelopes addressed to `node`, from now on.
    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>>;

    /// The nodes that receive envelopes right now (those subscribed), in any order, or
    /// `None` when this relay cannot tell (the default).
    ///
    /// The engine sends a message to a large thread as one
    /// [`MembersOf`](crate::model::EnvelopeTo::MembersOf) envelope to each of these
    /// nodes instead of looking up every member in the [`SessionDirectory`]; with
    /// `None` it looks the members up. A node that subscribes after the call misses
    /// that message live (its sessions get it on catch-up), as with a directory lookup
    /// that ran before a session registered.
    async fn nodes(&self) -> Result<Option<Vec<NodeId>>> {
        Ok(None)
    }
}

/// Each user's push targets (devices, browsers) and thread mutes: what the push path
/// reads to decide where a notification goes. Implemented by every store (memory,
/// HBase, the embedded store); `messenger_push::RegistryDirectory` reads it for the
/// push providers.
///
/// A target id is global ([`push::target_id`](crate::push::target_id) of platform and
/// address): a device has one id whoever holds it, and belongs to one user at a time.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PushRegistry: Send + Sync {
    /// Stores `reg` for `reg.user_id` and returns what is stored.
    ///
    /// - The same target registered again by the same user is refreshed: every field
    ///   but `created_at` is replaced (`created_at` stays the first registration's).
    /// - A target held by another user moves to this one (the device signed in as
    ///   someone else): the other user no longer lists it, and never gets it from
    ///   [`push_targets`](Self::push_targets) again.
    /// - When the user already has `max_targets` other targets, the least recently
    ///   updated ones are dropped to make room (under concurrent registrations of one
    ///   user the cap may be passed by the racing registrations).
    async fn register_target(
        &self,
        reg: PushRegistration,
        max_targets: usize,
    ) -> Result<PushRegistration>;

    /// Removes `user`'s target `target_id`. Returns whether the user had it; another
    /// user's target is never touched (false).
    async fn unregister_target(&self, user: &UserId, target_id: &str) -> Result<bool>;

    /// The user's targets, oldest registration first.
    async fn list_targets(&self, user: &UserId) -> Result<Vec<PushRegistration>>;

    /// Mutes `mute.thread_id` for `user` (replacing an earlier mute of that thread).
    async fn set_mute(&self, user: &UserId, mute: ThreadMute) -> Result<()>;

    /// Unmutes the thread. Returns whether a mute was stored (expired ones count).
    async fn clear_mute(&self, user: &UserId, thread: &ThreadId) -> Result<bool>;

    /// The user's mutes, in no particular order. May include expired ones (compare
    /// with [`ThreadMute::active`]); stores may drop those lazily.
    async fn list_mutes(&self, user: &UserId) -> Result<Vec<ThreadMute>>;

    /// The user's targets and mute of `thread`, for one notification: ideally one read.
    async fn push_targets(&self, user: &UserId, thread: &ThreadId) -> Result<PushTargets>;
}
