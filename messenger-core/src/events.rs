//! The event log: what downstream consumers (chat workers: push, webhooks, analytics)
//! learn from the engine, and the [`EventSink`](crate::EventSink) it is handed to.
//!
//! The engine publishes an [`Event`] after the change it describes is durable: a message
//! after the store accepted it (never for a duplicate send), a receipt after a watermark
//! moved, a membership change after the thread store applied it. Publishing never blocks
//! and never fails delivery; what the sink does with the event (produce it to Kafka,
//! keep it in memory) is the sink's business.
//!
//! The JSON form of an event (`serde_json::to_string(&event)`) is the event log's record
//! format and the body of a webhook; `docs/webhooks.md` documents every field:
//!
//! ```json
//! {"id":"7134...","created_at":1700000000000,"node":1,
//!  "type":"message.created","data":{"thread_id":"d:alice:bob", ...}}
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{MessageId, NodeId, ThreadId, UserId};
use crate::model::{AckStatus, ThreadKind};
use crate::time::Millis;

/// A unique event id (a Snowflake id from the engine's generator), the key a consumer
/// de-duplicates on: an event delivered twice (at-least-once) carries the same id.
/// Its JSON form is the decimal string, like a message id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub u64);

impl EventId {
    /// The raw 64-bit value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl From<MessageId> for EventId {
    fn from(id: MessageId) -> Self {
        EventId(id.get())
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map(EventId).map_err(serde::de::Error::custom)
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// Unique id; the de-duplication key for consumers.
    pub id: EventId,
    /// When the engine published it (ms since the Unix epoch).
    pub created_at: Millis,
    /// The node whose engine published it.
    pub node: NodeId,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// Written field by field (the same JSON as `#[serde(flatten)]` would give, without its
/// map detour): the event log encodes one event per durable change on the server's hot
/// path.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Event", 5)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("created_at", &self.created_at)?;
        st.serialize_field("node", &self.node)?;
        st.serialize_field("type", self.body.type_name())?;
        match &self.body {
            EventBody::MessageCreated(m) => st.serialize_field("data", m)?,
            EventBody::ReceiptUpdated(r) => st.serialize_field("data", r)?,
            EventBody::ThreadCreated(c) | EventBody::MembersAdded(c) | EventBody::MemberLeft(c) => {
                st.serialize_field("data", c)?
            }
        }
        st.end()
    }
}

impl Event {
    /// The thread the event is about: the event log's partition key, so a thread's
    /// events stay in the order they were published.
    pub fn thread_id(&self) -> &ThreadId {
        self.body.thread_id()
    }

    /// The event's type name (`message.created`, ...), as in its JSON.
    pub fn type_name(&self) -> &'static str {
        self.body.type_name()
    }
}

/// What an [`Event`] says happened. The JSON tags it as `"type"` with the fields under
/// `"data"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
#[non_exhaustive]
pub enum EventBody {
    /// A new message was stored (duplicate sends publish nothing).
    #[serde(rename = "message.created")]
    MessageCreated(MessageCreated),
    /// A member's delivered or read watermark moved forward.
    #[serde(rename = "receipt.updated")]
    ReceiptUpdated(ReceiptUpdated),
    /// A thread was created.
    #[serde(rename = "thread.created")]
    ThreadCreated(MembershipChanged),
    /// Members were added to a group.
    #[serde(rename = "thread.members_added")]
    MembersAdded(MembershipChanged),
    /// A member left a group.
    #[serde(rename = "thread.member_left")]
    MemberLeft(MembershipChanged),
}

impl EventBody {
    /// The thread the event is about.
    pub fn thread_id(&self) -> &ThreadId {
        match self {
            EventBody::MessageCreated(m) => &m.thread_id,
            EventBody::ReceiptUpdated(r) => &r.thread_id,
            EventBody::ThreadCreated(c) | EventBody::MembersAdded(c) | EventBody::MemberLeft(c) => {
                &c.thread_id
            }
        }
    }

    /// The type name, as in the JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::MessageCreated(_) => "message.created",
            EventBody::ReceiptUpdated(_) => "receipt.updated",
            EventBody::ThreadCreated(_) => "thread.created",
            EventBody::MembersAdded(_) => "thread.members_added",
            EventBody::MemberLeft(_) => "thread.member_left",
        }
    }
}

/// `message.created`: a message as stored, and who could not get it live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCreated {
    /// The thread.
    pub thread_id: ThreadId,
    /// The thread's kind.
    pub thread_kind: ThreadKind,
    /// The message id.
    pub message_id: MessageId,
    /// The message's seq in its thread.
    pub seq: u64,
    /// Who sent it.
    pub sender_id: UserId,
    /// The text.
    pub text: String,
    /// When the server accepted it.
    pub sent_at: Millis,
    /// How many members the thread had.
    pub member_count: usize,
    /// Members (not the sender) with no live session anywhere when the message was
    /// accepted: the ones to notify by push. Empty when that could not be determined
    /// (`offline_known` false).
    pub offline: Vec<UserId>,
    /// False when `offline` was not determined: the session directory could not be
    /// read, or (in a cluster) the thread is large and this message did not take the
    /// thread's push turn. A node sends a large thread's messages without looking its
    /// members up; only the first message per `large_group_push_interval` per thread
    /// and node looks them up, and its `offline` is exact. Consumers that push per event
    /// therefore push at most once per member, thread, node and interval in large
    /// threads, as the engine's own push sink does.
    pub offline_known: bool,
}

/// `receipt.updated`: a member acknowledged messages up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptUpdated {
    /// The thread.
    pub thread_id: ThreadId,
    /// Who acknowledged.
    pub user_id: UserId,
    /// `DELIVERED` or `READ` (READ implies DELIVERED).
    pub status: AckStatus,
    /// The new watermark: every message up to this seq.
    pub seq: u64,
    /// The message that was acknowledged (the one at `seq`).
    pub message_id: MessageId,
    /// Who sent that message.
    pub sender_id: UserId,
}

/// `thread.created`, `thread.members_added`, `thread.member_left`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChanged {
    /// The thread.
    pub thread_id: ThreadId,
    /// Its kind.
    pub kind: ThreadKind,
    /// Its title, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Who made the change (the creator, the adder, the leaver).
    pub by: UserId,
    /// The members after the change.
    pub members: Vec<UserId>,
    /// Who joined or left (every member for `thread.created`).
    pub changed: Vec<UserId>,
}
