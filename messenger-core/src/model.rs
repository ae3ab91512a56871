//! Domain types shared by the traits, the engine and the protocol.

use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, NodeId, SessionId, ThreadId, UserId};
use crate::time::Millis;

/// A message as stored: the server-assigned `seq` and id, and what the sender sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The thread it belongs to.
    pub thread_id: ThreadId,
    /// Position in the thread: starts at 1, gapless, strictly increasing.
    pub seq: u64,
    /// The Snowflake-style id.
    pub message_id: MessageId,
    /// Who sent it.
    pub sender_id: UserId,
    /// The client's temporary id, the idempotency key together with thread and sender.
    pub temp_id: String,
    /// The text.
    pub text: String,
    /// When the server accepted it (Unix ms).
    pub sent_at: Millis,
}

/// A message to append. The store assigns `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The thread to append to.
    pub thread_id: ThreadId,
    /// A fresh id from the [`IdGenerator`](crate::traits::IdGenerator); kept only if the
    /// message is not a duplicate.
    pub message_id: MessageId,
    /// Who sends it.
    pub sender_id: UserId,
    /// The idempotency key: (thread, sender, temp_id) is appended at most once.
    pub temp_id: String,
    /// The text.
    pub text: String,
    /// Acceptance time (Unix ms).
    pub sent_at: Millis,
}

/// Checks the one precondition of
/// [`MessageStore::append_batch`](crate::traits::MessageStore::append_batch): every
/// message belongs to `thread`. Adapters call it before writing anything.
pub fn check_batch(thread: &ThreadId, batch: &[NewMessage]) -> crate::Result<()> {
    match batch.iter().find(|m| m.thread_id != *thread) {
        None => Ok(()),
        Some(m) => Err(crate::Error::bad_request(format!(
            "a batch for thread {thread} holds a message for thread {}",
            m.thread_id
        ))),
    }
}

/// The result of [`MessageStore::append`](crate::traits::MessageStore::append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored message: the new one, or the original when this was a duplicate.
    pub message: StoredMessage,
    /// True when (thread, sender, temp_id) had been appended before; nothing was written.
    pub duplicate: bool,
}

/// Which page of a thread to read. Seqs are exclusive bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryQuery {
    /// Only messages with `seq < before_seq`.
    pub before_seq: Option<u64>,
    /// Only messages with `seq > after_seq`.
    pub after_seq: Option<u64>,
    /// How many at most (callers cap it; stores honour it as given, at least 1).
    pub limit: usize,
}

impl HistoryQuery {
    /// The latest `limit` messages.
    pub fn latest(limit: usize) -> Self {
        HistoryQuery {
            limit,
            ..Default::default()
        }
    }
}

/// A page of a thread, ascending by seq.
///
/// Without `after_seq` the page is the newest `limit` messages in range and `has_more`
/// says older ones exist in range; with `after_seq` it is the oldest `limit` messages in
/// range and `has_more` says newer ones exist in range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// Messages ascending by seq.
    pub messages: Vec<StoredMessage>,
    /// Whether more messages exist in the direction paged.
    pub has_more: bool,
}

/// Direct (two members, canonical id) or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadKind {
    /// A 1:1 thread.
    Direct,
    /// A group thread.
    Group,
}

impl ThreadKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadKind::Direct => "direct",
            ThreadKind::Group => "group",
        }
    }
}

/// A thread and its current members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadInfo {
    /// The thread id.
    pub thread_id: ThreadId,
    /// Direct or group.
    pub kind: ThreadKind,
    /// Group title, if any.
    pub title: Option<String>,
    /// Current members, in the order they joined.
    pub members: Vec<UserId>,
    /// Creation time (Unix ms).
    pub created_at: Millis,
}

impl ThreadInfo {
    /// Whether `user` is a member.
    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.iter().any(|m| m == user)
    }
}

/// A thread to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewThread {
    /// The id (canonical for direct threads, fresh for groups).
    pub thread_id: ThreadId,
    /// Direct or group.
    pub kind: ThreadKind,
    /// Group title.
    pub title: Option<String>,
    /// Members, creator included, without duplicates.
    pub members: Vec<UserId>,
    /// Creation time (Unix ms).
    pub created_at: Millis,
}

/// The result of [`ThreadStore::create_thread`](crate::traits::ThreadStore::create_thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedThread {
    /// The thread as stored (the existing one if it already existed).
    pub thread: ThreadInfo,
    /// False when a thread with that id already existed and was returned unchanged.
    pub created: bool,
}

/// The result of a membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    /// The thread after the change.
    pub thread: ThreadInfo,
    /// Users who were added or removed by this call (already-members and
    /// non-members are left out).
    pub changed: Vec<UserId>,
}

/// Delivery status in a `message_ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AckStatus {
    /// The message reached one of the user's devices.
    #[serde(rename = "DELIVERED")]
    Delivered,
    /// The user has seen the message.
    #[serde(rename = "READ")]
    Read,
}

impl AckStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Delivered => "DELIVERED",
            AckStatus::Read => "READ",
        }
    }
}

/// A user's per-thread watermarks: every message up to `delivered_seq` is delivered,
/// every one up to `read_seq` is read. `read_seq <= delivered_seq` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Watermark {
    /// Highest delivered seq (0: none).
    pub delivered_seq: u64,
    /// Highest read seq (0: none).
    pub read_seq: u64,
}

/// The result of advancing a watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkUpdate {
    /// The watermark after the call.
    pub watermark: Watermark,
    /// Whether the watermark for the acked status moved forward.
    pub advanced: bool,
}

/// A user's thread as listed by [`ThreadStore::list_user_threads`](crate::traits::ThreadStore::list_user_threads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserThread {
    /// The thread.
    pub thread: ThreadInfo,
    /// Watermarks of every member (members without acks have zeros).
    pub receipts: Vec<(UserId, Watermark)>,
}

/// Online or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one live session.
    Online,
    /// No live session.
    Offline,
}

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceInfo {
    /// Whose presence.
    pub user_id: UserId,
    /// Online or offline.
    pub status: PresenceStatus,
    /// When the user went offline (Unix ms); `None` while online or if never seen.
    pub last_seen: Option<Millis>,
}

/// A live session as recorded in the [`SessionDirectory`](crate::traits::SessionDirectory).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionEntry {
    /// The user.
    pub user_id: UserId,
    /// The session.
    pub session_id: SessionId,
    /// The node holding the connection.
    pub node: NodeId,
}

/// A message handed to the push path for a member with no online session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushNotification {
    /// Who should be notified.
    pub user_id: UserId,
    /// The thread.
    pub thread_id: ThreadId,
    /// The message id.
    pub message_id: MessageId,
    /// The message's seq.
    pub seq: u64,
    /// Who sent it.
    pub sender_id: UserId,
    /// The text (push providers should truncate it to what they display).
    pub text: String,
    /// When it was sent.
    pub sent_at: Millis,
}

/// Something one node asks another to deliver to its local sessions.
///
/// `frame` is an encoded server frame (UTF-8 JSON) that is written as is to each target
/// session, so a message is encoded once per send, not once per recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The node that sent the envelope.
    pub from_node: NodeId,
    /// Users on the receiving node whose sessions get the frame.
    pub users: Vec<UserId>,
    /// A session that must not get it (the sending session of a message).
    pub except_session: Option<SessionId>,
    /// Orders delivery within a thread: frames with a `(thread, seq)` key are written to
    /// sessions in seq order.
    pub order: Option<(ThreadId, u64)>,
    /// The encoded server frame.
    pub frame: String,
}
