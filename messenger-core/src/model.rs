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
///
/// Between nodes an envelope travels as JSON (the Redis and Kafka relays). This is a
/// protocol between server versions: fields and [`EnvelopeTo`] variants are added,
/// never changed. The two forms on the wire:
///
/// ```json
/// {"from_node":1,"users":["bob"],"except_session":"7","order":["d:alice:bob",3],"frame":"..."}
/// {"from_node":1,"members_of":{"thread_id":"g:1","fingerprint":17,"count":10000},
///  "except_session":"7","order":["g:1",4],"frame":"..."}
/// ```
///
/// The second form has no `users` on purpose: a node from before it fails to decode it
/// (its relay logs "undecodable message ... missing field `users`") rather than
/// decoding an envelope addressed to nobody and dropping it silently.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "EnvelopeIn")]
pub struct Envelope {
    /// The node that sent the envelope.
    pub from_node: NodeId,
    /// Whose sessions on the receiving node get the frame.
    pub to: EnvelopeTo,
    /// A session that must not get it (the sending session of a message).
    pub except_session: Option<SessionId>,
    /// Orders delivery within a thread: frames with a `(thread, seq)` key are written to
    /// sessions in seq order.
    pub order: Option<(ThreadId, u64)>,
    /// The encoded server frame.
    pub frame: String,
}

/// Whose sessions on the receiving node get an [`Envelope`]'s frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeTo {
    /// These users' sessions (on the wire: `"users": [...]`). The sender looked up
    /// where each user's sessions are.
    Users(Vec<UserId>),
    /// The receiving node's sessions of a large thread's members (on the wire:
    /// `"members_of": {...}`), resolved by that node from its own record of which of
    /// its sessions belong to the thread; the sender looked up no member.
    MembersOf(ThreadMembers),
}

/// A large thread's member list as the sender saw it, named by a fingerprint: the
/// receiving node checks that the member list it resolves the envelope with is the same
/// one, and reads the thread again from the thread store when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadMembers {
    /// The thread.
    pub thread_id: ThreadId,
    /// [`members_fingerprint`] of the member list the sender's membership check saw.
    pub fingerprint: u64,
    /// How many members that list had.
    pub count: usize,
}

/// A fingerprint of a member list, equal on every node for the same list in the same
/// order: 64-bit FNV-1a over each id's bytes followed by a `0xff` byte (which no id
/// contains). Part of the envelope protocol: never change it.
pub fn members_fingerprint(members: &[UserId]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for m in members {
        for b in m.as_str().bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The JSON form of an [`Envelope`] as read: exactly one of `users` and `members_of`.
#[derive(Deserialize)]
struct EnvelopeIn {
    from_node: NodeId,
    #[serde(default)]
    users: Option<Vec<UserId>>,
    #[serde(default)]
    members_of: Option<ThreadMembers>,
    except_session: Option<SessionId>,
    order: Option<(ThreadId, u64)>,
    frame: String,
}

/// The JSON form of an [`Envelope`] as written (borrowed: nothing is copied).
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    from_node: NodeId,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<&'a [UserId]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members_of: Option<&'a ThreadMembers>,
    except_session: &'a Option<SessionId>,
    order: &'a Option<(ThreadId, u64)>,
    frame: &'a str,
}

impl TryFrom<EnvelopeIn> for Envelope {
    type Error = String;

    fn try_from(w: EnvelopeIn) -> Result<Self, String> {
        let to = match (w.users, w.members_of) {
            (Some(u), None) => EnvelopeTo::Users(u),
            (None, Some(m)) => EnvelopeTo::MembersOf(m),
            (Some(_), Some(_)) => {
                return Err("an envelope names both `users` and `members_of`".into())
            }
            (None, None) => return Err("an envelope names neither `users` nor `members_of`".into()),
        };
        Ok(Envelope {
            from_node: w.from_node,
            to,
            except_session: w.except_session,
            order: w.order,
            frame: w.frame,
        })
    }
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (users, members_of) = match &self.to {
            EnvelopeTo::Users(u) => (Some(u.as_slice()), None),
            EnvelopeTo::MembersOf(m) => (None, Some(m)),
        };
        EnvelopeOut {
            from_node: self.from_node,
            users,
            members_of,
            except_session: &self.except_session,
            order: &self.order,
            frame: &self.frame,
        }
        .serialize(s)
    }
}
