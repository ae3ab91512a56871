//! Protocol v1 frames: serde types for every client and server frame, the decoder that
//! maps failures onto protocol error codes, and the encoder.
//!
//! One JSON object per WebSocket text frame, tagged by `"type"`. Unknown fields are
//! ignored. Any client frame may carry `req_id` (string or integer), echoed verbatim on
//! the direct reply.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, SessionId, ThreadId, UserId};
use crate::model::{AckStatus, PresenceStatus, ThreadKind};
use crate::push::{PushPlatform, PushRegistration, WebPushSubscription};
use crate::time::Millis;

/// A request id: string or integer, echoed verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReqId {
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    /// A string.
    Str(String),
}

/// `create_thread` kinds with their kind-specific fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateThread {
    /// `direct` or `group`.
    pub kind: ThreadKind,
    /// Direct: exactly the other user. Group: the members besides the creator.
    pub members: Vec<UserId>,
    /// Group title (ignored for direct threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Every frame a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send a message.
    SendMessage {
        /// Target thread.
        thread_id: ThreadId,
        /// The client's temporary id; the idempotency key.
        temp_id: String,
        /// The text.
        text: String,
    },
    /// Acknowledge delivery or reading up to a message.
    MessageAck {
        /// The thread.
        thread_id: ThreadId,
        /// The message acked (every message up to its seq is covered).
        message_id: MessageId,
        /// `DELIVERED` or `READ`.
        status: AckStatus,
    },
    /// Create a direct or group thread.
    CreateThread(CreateThread),
    /// Add members to a group.
    AddMembers {
        /// The group.
        thread_id: ThreadId,
        /// Users to add.
        members: Vec<UserId>,
    },
    /// Leave a group.
    LeaveThread {
        /// The group.
        thread_id: ThreadId,
    },
    /// List the caller's threads.
    ListThreads {},
    /// Read a page of history.
    FetchHistory {
        /// The thread.
        thread_id: ThreadId,
        /// Only messages with seq below this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_seq: Option<u64>,
        /// Only messages with seq above this (pages forward).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_seq: Option<u64>,
        /// Page size; default 50, capped at 200.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// Subscribe to users' presence.
    PresenceSubscribe {
        /// The users.
        user_ids: Vec<UserId>,
    },
    /// Unsubscribe from users' presence.
    PresenceUnsubscribe {
        /// The users.
        user_ids: Vec<UserId>,
    },
    /// Typing started or stopped.
    Typing {
        /// The thread.
        thread_id: ThreadId,
        /// Whether the user is typing.
        typing: bool,
    },
    /// Liveness check; answered with `pong`.
    Ping {},
    /// Register (or refresh) a device or browser that gets this user's push
    /// notifications; answered with `push_target`.
    RegisterPushTarget {
        /// `apns`, `fcm` or `webpush`.
        platform: PushPlatform,
        /// APNs device token (hex) or FCM registration token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Web Push: the browser's `PushSubscription.toJSON()` (endpoint and keys).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subscription: Option<WebPushSubscription>,
        /// The app: APNs topic (bundle id) or Android package name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app_id: Option<String>,
        /// The device's locale (BCP 47), for generic notification texts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locale: Option<String>,
        /// APNs: the app uses the development (sandbox) environment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<bool>,
    },
    /// Forget one of this user's push targets; answered with `push_target_removed`.
    UnregisterPushTarget {
        /// The id `push_target` gave.
        target_id: String,
    },
    /// List this user's push targets; answered with `push_targets`.
    ListPushTargets {},
    /// No push notifications for a thread, until a time or for ever; answered with
    /// `thread_mute`.
    MuteThread {
        /// The thread.
        thread_id: ThreadId,
        /// Until when (Unix ms, in the future); absent: for ever.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Millis>,
    },
    /// Push notifications for a thread again; answered with `thread_mute`.
    UnmuteThread {
        /// The thread.
        thread_id: ThreadId,
    },
}

impl ClientFrame {
    /// The wire `type` of this frame.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::SendMessage { .. } => "send_message",
            ClientFrame::MessageAck { .. } => "message_ack",
            ClientFrame::CreateThread(_) => "create_thread",
            ClientFrame::AddMembers { .. } => "add_members",
            ClientFrame::LeaveThread { .. } => "leave_thread",
            ClientFrame::ListThreads {} => "list_threads",
            ClientFrame::FetchHistory { .. } => "fetch_history",
            ClientFrame::PresenceSubscribe { .. } => "presence_subscribe",
            ClientFrame::PresenceUnsubscribe { .. } => "presence_unsubscribe",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Ping {} => "ping",
            ClientFrame::RegisterPushTarget { .. } => "register_push_target",
            ClientFrame::UnregisterPushTarget { .. } => "unregister_push_target",
            ClientFrame::ListPushTargets {} => "list_push_targets",
            ClientFrame::MuteThread { .. } => "mute_thread",
            ClientFrame::UnmuteThread { .. } => "unmute_thread",
        }
    }
}

/// Every client frame type name, in protocol order.
pub const CLIENT_FRAME_TYPES: [&str; 16] = [
    "send_message",
    "message_ack",
    "create_thread",
    "add_members",
    "leave_thread",
    "list_threads",
    "fetch_history",
    "presence_subscribe",
    "presence_unsubscribe",
    "typing",
    "ping",
    "register_push_target",
    "unregister_push_target",
    "list_push_targets",
    "mute_thread",
    "unmute_thread",
];

/// A decoded client frame with its optional `req_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The `req_id`, if the client sent one.
    pub req_id: Option<ReqId>,
    /// The frame.
    pub frame: ClientFrame,
}

/// Why a client frame could not be decoded; carries the protocol error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// `bad_request` or `unknown_type`.
    pub code: &'static str,
    /// What is wrong, for humans.
    pub message: String,
    /// The frame's `req_id` when it could be read, for the echo.
    pub req_id: Option<ReqId>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(default)]
    req_id: Option<serde_json::Value>,
}

/// Decodes one client text frame.
///
/// Malformed JSON, a missing or ill-typed field and an invalid id are `bad_request`;
/// a `type` that is not a client frame type is `unknown_type`.
pub fn decode_client(text: &str) -> Result<Request, DecodeError> {
    decode_client_borrowed(text)?.into_request()
}

/// A decoded client frame whose `send_message` strings are still borrowed from the
/// frame (where they hold no escapes): the engine copies the text and the temp id once,
/// into the message, and takes the thread id from its own table of active threads.
pub(crate) enum Decoded<'a> {
    /// A `send_message`; `thread_id` is a valid thread id.
    Send {
        req_id: Option<ReqId>,
        thread_id: Cow<'a, str>,
        temp_id: Cow<'a, str>,
        text: Cow<'a, str>,
    },
    /// Any other frame.
    Other(Request),
}

impl Decoded<'_> {
    /// The request with owned fields, as [`decode_client`] returns it.
    pub(crate) fn into_request(self) -> Result<Request, DecodeError> {
        match self {
            Decoded::Other(req) => Ok(req),
            Decoded::Send {
                req_id,
                thread_id,
                temp_id,
                text,
            } => match ThreadId::new(&*thread_id) {
                Ok(thread_id) => Ok(Request {
                    req_id,
                    frame: ClientFrame::SendMessage {
                        thread_id,
                        temp_id: temp_id.into_owned(),
                        text: text.into_owned(),
                    },
                }),
                // Checked when decoded; kept as an error rather than a panic.
                Err(e) => Err(DecodeError {
                    code: "bad_request",
                    message: format!("invalid `send_message`: {e}"),
                    req_id,
                }),
            },
        }
    }
}

/// [`decode_client`], with `send_message`'s strings left borrowed (see [`Decoded`]).
pub(crate) fn decode_client_borrowed(text: &str) -> Result<Decoded<'_>, DecodeError> {
    // The frames of the hot path are read in one pass into plain fields; anything else
    // (other types, a missing or ill-typed field, an invalid thread id) takes the general
    // path below, which produces the same frames and every error message.
    if let Ok(hot) = serde_json::from_str::<Hot<'_>>(text) {
        if let Some(decoded) = hot.into_decoded() {
            return Ok(decoded);
        }
    }
    decode_general(text).map(Decoded::Other)
}

/// A JSON string, borrowed from the frame when it has no escapes (a bare
/// `Option<Cow<str>>` field would always be copied).
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// The fields of the frames sent most (`send_message`, `message_ack`, `typing`,
/// `ping`), deserialized in one pass without buffering (an internally tagged enum
/// buffers every field before it knows the variant).
#[derive(Deserialize)]
struct Hot<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    req_id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    thread_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    temp_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default)]
    message_id: Option<MessageId>,
    #[serde(default)]
    status: Option<AckStatus>,
    #[serde(default)]
    typing: Option<bool>,
}

impl<'a> Hot<'a> {
    /// The frame, if this is a hot frame with every field it needs, all valid.
    fn into_decoded(self) -> Option<Decoded<'a>> {
        let req_id = req_id_of(self.req_id).ok()?;
        let thread_id = self.thread_id.map(|s| s.0);
        let frame = match &*self.ty {
            "send_message" => {
                let thread_id = thread_id.filter(|t| ThreadId::is_valid(t))?;
                return Some(Decoded::Send {
                    req_id,
                    thread_id,
                    temp_id: self.temp_id?.0,
                    text: self.text?.0,
                });
            }
            "message_ack" => ClientFrame::MessageAck {
                thread_id: ThreadId::new(&*thread_id?).ok()?,
                message_id: self.message_id?,
                status: self.status?,
            },
            "typing" => ClientFrame::Typing {
                thread_id: ThreadId::new(&*thread_id?).ok()?,
                typing: self.typing?,
            },
            "ping" => ClientFrame::Ping {},
            _ => return None,
        };
        Some(Decoded::Other(Request { req_id, frame }))
    }
}

/// The `req_id` as sent: absent or null, a string, or an integer.
fn req_id_of(v: Option<serde_json::Value>) -> Result<Option<ReqId>, DecodeError> {
    let bad = || DecodeError {
        code: "bad_request",
        message: "req_id must be a string or an integer".into(),
        req_id: None,
    };
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(ReqId::Str(s)),
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Some(ReqId::UInt(u)),
            (None, Some(i)) => Some(ReqId::Int(i)),
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    })
}

/// Every client frame: the head first (for the `req_id` echo and the type check), then
/// the frame.
fn decode_general(text: &str) -> Result<Request, DecodeError> {
    let head: Head<'_> = serde_json::from_str(text).map_err(|e| DecodeError {
        code: "bad_request",
        message: if e.is_data() {
            "a frame must be a JSON object".into()
        } else {
            format!("malformed JSON: {e}")
        },
        req_id: None,
    })?;
    let req_id = req_id_of(head.req_id)?;
    let Some(ty) = head.ty else {
        return Err(DecodeError {
            code: "bad_request",
            message: "missing field `type`".into(),
            req_id,
        });
    };
    if !CLIENT_FRAME_TYPES.contains(&&*ty) {
        return Err(DecodeError {
            code: "unknown_type",
            message: format!("unknown frame type `{ty}`"),
            req_id,
        });
    }
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok(Request { req_id, frame }),
        Err(e) => Err(DecodeError {
            code: "bad_request",
            message: format!("invalid `{ty}`: {}", strip_position(&e)),
            req_id,
        }),
    }
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A message as it appears in `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// The id.
    pub message_id: MessageId,
    /// The seq.
    pub seq: u64,
    /// The sender.
    pub sender_id: UserId,
    /// The text.
    pub text: String,
    /// When it was accepted.
    pub sent_at: Millis,
}

/// A member's receipts in `threads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Highest delivered seq.
    pub delivered_seq: u64,
    /// Highest read seq.
    pub read_seq: u64,
}

/// One thread in `threads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSummary {
    /// The thread.
    pub thread_id: ThreadId,
    /// Direct or group.
    pub kind: ThreadKind,
    /// Group title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Members.
    pub members: Vec<UserId>,
    /// The newest seq (0 when empty).
    pub last_seq: u64,
    /// Every member's watermarks, keyed by user id.
    pub receipts: std::collections::BTreeMap<UserId, Receipt>,
    /// Messages after the caller's read watermark sent by others.
    pub unread: u64,
    /// The caller muted this thread (no push notifications); absent when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
    /// When the caller's mute ends (Unix ms); absent for a mute for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<Millis>,
}

/// One push target as the protocol shows it (`push_target`, `push_targets`): never
/// the token or subscription itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTargetInfo {
    /// The target's id (for `unregister_push_target`).
    pub target_id: String,
    /// `apns`, `fcm` or `webpush`.
    pub platform: PushPlatform,
    /// The app id, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The locale, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// APNs development environment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// First registered (Unix ms).
    pub created_at: Millis,
    /// Last registered or refreshed (Unix ms).
    pub updated_at: Millis,
}

impl From<&PushRegistration> for PushTargetInfo {
    fn from(r: &PushRegistration) -> Self {
        PushTargetInfo {
            target_id: r.target_id.clone(),
            platform: r.platform,
            app_id: r.app_id.clone(),
            locale: r.locale.clone(),
            sandbox: r.sandbox,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Every frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on a connection.
    Welcome {
        /// The authenticated user.
        user_id: UserId,
        /// This session's id.
        session_id: SessionId,
        /// Server time (Unix ms).
        server_time: Millis,
    },
    /// The store accepted the message (status SENT).
    MessageSent {
        /// Echo of the request's `req_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// The thread.
        thread_id: ThreadId,
        /// The client's temp id.
        temp_id: String,
        /// The authoritative id.
        message_id: MessageId,
        /// The seq.
        seq: u64,
        /// Acceptance time.
        sent_at: Millis,
    },
    /// A new message in one of the user's threads.
    ReceiveMessage {
        /// The thread.
        thread_id: ThreadId,
        /// The id.
        message_id: MessageId,
        /// The seq.
        seq: u64,
        /// The sender.
        sender_id: UserId,
        /// The text.
        text: String,
        /// Acceptance time.
        sent_at: Millis,
    },
    /// Someone's watermark moved.
    MessageAck {
        /// The thread.
        thread_id: ThreadId,
        /// The acked message.
        message_id: MessageId,
        /// Its seq (the watermark).
        seq: u64,
        /// `DELIVERED` or `READ`.
        status: AckStatus,
        /// Who acked.
        user_id: UserId,
        /// When (Unix ms).
        at: Millis,
    },
    /// A thread's current state.
    Thread {
        /// Echo of the request's `req_id` (on the direct reply only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// The thread.
        thread_id: ThreadId,
        /// Direct or group.
        kind: ThreadKind,
        /// Group title.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        /// Members.
        members: Vec<UserId>,
    },
    /// Reply to `list_threads`.
    Threads {
        /// Echo of the request's `req_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// The caller's threads.
        threads: Vec<ThreadSummary>,
    },
    /// Reply to `fetch_history`.
    History {
        /// Echo of the request's `req_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// The thread.
        thread_id: ThreadId,
        /// Ascending by seq.
        messages: Vec<HistoryMessage>,
        /// More exist in the direction paged.
        has_more: bool,
    },
    /// A user's presence.
    Presence {
        /// Echo of the request's `req_id` (on the replies to `presence_subscribe`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// Whose.
        user_id: UserId,
        /// Online or offline.
        status: PresenceStatus,
        /// When the user went offline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<Millis>,
    },
    /// Someone is typing, or stopped.
    Typing {
        /// The thread.
        thread_id: ThreadId,
        /// Who.
        user_id: UserId,
        /// Whether typing.
        typing: bool,
    },
    /// Reply to `ping`.
    Pong {
        /// Echo of the request's `req_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
    },
    /// Reply to `register_push_target`: the stored target.
    PushTarget {
        /// Echo of the request's `req_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// The target.
        target: PushTargetInfo,
    },
    /// Reply to `list_push_targets`.
    PushTargets {
        /// Echo of the request's `req_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// The caller's targets, oldest first.
        targets: Vec<PushTargetInfo>,
    },
    /// Reply to `unregister_push_target`.
    PushTargetRemoved {
        /// Echo of the request's `req_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// The target named.
        target_id: String,
        /// Whether the caller had it (false: nothing to remove).
        removed: bool,
    },
    /// A thread's mute state for the user: the reply to `mute_thread` / `unmute_thread`,
    /// and (without `req_id`) to the user's other sessions.
    ThreadMute {
        /// Echo of the request's `req_id` (on the direct reply only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// The thread.
        thread_id: ThreadId,
        /// Whether it is muted now.
        muted: bool,
        /// When the mute ends (Unix ms); absent for ever or when not muted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Millis>,
    },
    /// A request failed.
    Error {
        /// Echo of the request's `req_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        /// One of the protocol error codes.
        code: String,
        /// What went wrong, for humans.
        message: String,
    },
}

impl ServerFrame {
    /// The wire `type` of this frame.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::MessageSent { .. } => "message_sent",
            ServerFrame::ReceiveMessage { .. } => "receive_message",
            ServerFrame::MessageAck { .. } => "message_ack",
            ServerFrame::Thread { .. } => "thread",
            ServerFrame::Threads { .. } => "threads",
            ServerFrame::History { .. } => "history",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::PushTarget { .. } => "push_target",
            ServerFrame::PushTargets { .. } => "push_targets",
            ServerFrame::PushTargetRemoved { .. } => "push_target_removed",
            ServerFrame::ThreadMute { .. } => "thread_mute",
            ServerFrame::Error { .. } => "error",
        }
    }

    /// Encodes the frame as a JSON text frame.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and no
        // Serialize impl returns an error.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"internal","message":"encode failed: {e}"}}"#)
        })
    }

    /// Decodes a server frame (for clients and tests).
    pub fn decode(text: &str) -> Result<ServerFrame, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// An `error` frame.
    pub fn error(req_id: Option<ReqId>, code: &str, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            req_id,
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// `receive_message` as the engine encodes it: the fields of
/// [`ServerFrame::ReceiveMessage`], in its order, borrowed from the stored message.
#[derive(Serialize)]
#[serde(tag = "type", rename = "receive_message")]
struct ReceiveMessageRef<'a> {
    thread_id: &'a ThreadId,
    message_id: MessageId,
    seq: u64,
    sender_id: &'a UserId,
    text: &'a str,
    sent_at: Millis,
}

/// `message_sent` as the engine encodes it: the fields of [`ServerFrame::MessageSent`],
/// in its order, borrowed.
#[derive(Serialize)]
#[serde(tag = "type", rename = "message_sent")]
struct MessageSentRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    req_id: Option<&'a ReqId>,
    thread_id: &'a ThreadId,
    temp_id: &'a str,
    message_id: MessageId,
    seq: u64,
    sent_at: Millis,
}

/// The two frames of a new message, `receive_message` (for the thread's other members)
/// and `message_sent` (for its sender, echoing `req_id`), encoded into one buffer with
/// room for both: one allocation for the bytes and one for their shared handle, instead
/// of a copy of the text, the temp id and two growing buffers per frame. Each is byte for
/// byte what [`ServerFrame::encode`] gives for the same frame.
pub(crate) fn message_frames(
    m: &crate::model::StoredMessage,
    req_id: Option<&ReqId>,
) -> (bytes::Bytes, bytes::Bytes) {
    // The fixed parts of both frames, the longest u64 and i64 numbers (ids, seqs, times,
    // an integer req_id) and the strings; a text with characters to escape grows it once.
    let req_len = match req_id {
        Some(ReqId::Str(s)) => s.len() + 2,
        _ => 20,
    };
    let room = 360
        + 2 * m.thread_id.as_str().len()
        + m.sender_id.as_str().len()
        + m.text.len()
        + m.temp_id.len()
        + req_len;
    let mut buf = Vec::with_capacity(room);
    let receive = ReceiveMessageRef {
        thread_id: &m.thread_id,
        message_id: m.message_id,
        seq: m.seq,
        sender_id: &m.sender_id,
        text: &m.text,
        sent_at: m.sent_at,
    };
    let sent = MessageSentRef {
        req_id,
        thread_id: &m.thread_id,
        temp_id: &m.temp_id,
        message_id: m.message_id,
        seq: m.seq,
        sent_at: m.sent_at,
    };
    // Writing these to a Vec cannot fail (see `ServerFrame::encode`); if it ever did,
    // the frames are encoded one by one.
    let Ok(()) = serde_json::to_writer(&mut buf, &receive) else {
        return message_frames_one_by_one(m, req_id);
    };
    let split = buf.len();
    let Ok(()) = serde_json::to_writer(&mut buf, &sent) else {
        return message_frames_one_by_one(m, req_id);
    };
    let all = bytes::Bytes::from(buf);
    (all.slice(..split), all.slice(split..))
}

fn message_frames_one_by_one(
    m: &crate::model::StoredMessage,
    req_id: Option<&ReqId>,
) -> (bytes::Bytes, bytes::Bytes) {
    let receive = ServerFrame::ReceiveMessage {
        thread_id: m.thread_id.clone(),
        message_id: m.message_id,
        seq: m.seq,
        sender_id: m.sender_id.clone(),
        text: m.text.clone(),
        sent_at: m.sent_at,
    };
    let sent = ServerFrame::MessageSent {
        req_id: req_id.cloned(),
        thread_id: m.thread_id.clone(),
        temp_id: m.temp_id.clone(),
        message_id: m.message_id,
        seq: m.seq,
        sent_at: m.sent_at,
    };
    (
        bytes::Bytes::from(receive.encode()),
        bytes::Bytes::from(sent.encode()),
    )
}

impl ClientFrame {
    /// Encodes the frame with an optional `req_id` (for clients and tests).
    pub fn encode(&self, req_id: Option<&ReqId>) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let (Some(r), Some(obj)) = (req_id, v.as_object_mut()) {
            obj.insert(
                "req_id".into(),
                serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
            );
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        decode_client(text).expect_err("should fail").code
    }

    #[test]
    fn the_one_pass_path_decodes_as_the_general_one() {
        for f in [
            r#"{"type":"send_message","req_id":7,"thread_id":"dm:a:b","temp_id":"t1","text":"hi \u00e9\n"}"#,
            r#"{"text":"x","temp_id":"t","thread_id":"g:1","type":"send_message","req_id":"r-1"}"#,
            r#"{"type":"send_message","req_id":-3,"thread_id":"dm:a:b","temp_id":"t","text":"x","extra":[1,{"a":2}]}"#,
            r#"{"type":"message_ack","thread_id":"dm:a:b","message_id":"123","status":"READ"}"#,
            r#"{"type":"typing","thread_id":"dm:a:b","typing":true,"req_id":null}"#,
            r#"{"type":"ping","req_id":9}"#,
            r#"{"type":"ping","thread_id":"not a valid id!!"}"#,
            r#"{"type":"list_threads","req_id":1,"text":"ignored"}"#,
            r#"{"type":"send_message","thread_id":"dm:a:b","temp_id":"t"}"#,
            r#"{"type":"send_message","thread_id":"dm:a:b","temp_id":"t","text":5}"#,
            r#"{"type":"send_message","thread_id":null,"temp_id":"t","text":"x"}"#,
            r#"{"type":"send_message","req_id":1.5,"thread_id":"dm:a:b","temp_id":"t","text":"x"}"#,
            r#"{"type":"nope","req_id":2}"#,
        ] {
            assert_eq!(decode_client(f), decode_general(f), "{f}");
        }
        let hot = serde_json::from_str::<Hot<'_>>(
            r#"{"type":"send_message","req_id":7,"thread_id":"dm:a:b","temp_id":"t1","text":"hi"}"#,
        )
        .expect("hot");
        assert!(
            matches!(hot.into_decoded(), Some(Decoded::Send { .. })),
            "send_message takes the one-pass path"
        );
    }

    #[test]
    fn decodes_every_frame() {
        let cases = [
            r#"{"type":"send_message","thread_id":"t1","temp_id":"x","text":"hi"}"#,
            r#"{"type":"message_ack","thread_id":"t1","message_id":"12","status":"READ"}"#,
            r#"{"type":"create_thread","kind":"direct","members":["bob"]}"#,
            r#"{"type":"create_thread","kind":"group","members":["bob","carol"],"title":"T"}"#,
            r#"{"type":"add_members","thread_id":"g:1","members":["dave"]}"#,
            r#"{"type":"leave_thread","thread_id":"g:1"}"#,
            r#"{"type":"list_threads"}"#,
            r#"{"type":"fetch_history","thread_id":"t","before_seq":10,"limit":5}"#,
            r#"{"type":"presence_subscribe","user_ids":["bob"]}"#,
            r#"{"type":"presence_unsubscribe","user_ids":["bob"]}"#,
            r#"{"type":"typing","thread_id":"t","typing":true}"#,
            r#"{"type":"ping","req_id":7,"extra":{"ignored":true}}"#,
            r#"{"type":"register_push_target","platform":"apns","token":"ab","app_id":"com.x","locale":"de","sandbox":true}"#,
            r#"{"type":"register_push_target","platform":"webpush","subscription":{"endpoint":"https://p/1","keys":{"p256dh":"BA","auth":"AA"}}}"#,
            r#"{"type":"unregister_push_target","target_id":"fcm-1"}"#,
            r#"{"type":"list_push_targets"}"#,
            r#"{"type":"mute_thread","thread_id":"t","until":1700000000000}"#,
            r#"{"type":"mute_thread","thread_id":"t"}"#,
            r#"{"type":"unmute_thread","thread_id":"t"}"#,
        ];
        for c in cases {
            let r = decode_client(c).unwrap_or_else(|e| panic!("{c}: {e:?}"));
            let again = decode_client(&r.frame.encode(r.req_id.as_ref())).expect("round trip");
            assert_eq!(r, again);
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("not json"), "bad_request");
        assert_eq!(code("[1,2]"), "bad_request");
        assert_eq!(code(r#"{"no_type":1}"#), "bad_request");
        assert_eq!(code(r#"{"type":"nope"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":5}"#), "bad_request");
        assert_eq!(
            code(r#"{"type":"send_message","thread_id":"t"}"#),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"type":"send_message","thread_id":"bad id","temp_id":"x","text":"y"}"#),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"type":"send_message","thread_id":"t","temp_id":1,"text":"y"}"#),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"type":"message_ack","thread_id":"t","message_id":"x","status":"READ"}"#),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"type":"message_ack","thread_id":"t","message_id":"1","status":"SEEN"}"#),
            "bad_request"
        );
        assert_eq!(code(r#"{"type":"ping","req_id":1.5}"#), "bad_request");
        assert_eq!(
            code(r#"{"type":"register_push_target","platform":"blackberry","token":"x"}"#),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"type":"mute_thread","thread_id":"t","until":"tomorrow"}"#),
            "bad_request"
        );
        assert_eq!(code(r#"{"type":"ping","req_id":{}}"#), "bad_request");
    }

    #[test]
    fn req_id_is_kept_on_errors() {
        let e = decode_client(r#"{"type":"nope","req_id":"abc"}"#).expect_err("unknown");
        assert_eq!(e.req_id, Some(ReqId::Str("abc".into())));
        let e = decode_client(r#"{"type":"send_message","req_id":-3}"#).expect_err("missing");
        assert_eq!(e.req_id, Some(ReqId::Int(-3)));
    }

    #[test]
    fn server_frames_encode_as_documented() {
        let f = ServerFrame::MessageSent {
            req_id: Some(ReqId::UInt(1)),
            thread_id: ThreadId::new("t").expect("id"),
            temp_id: "tmp".into(),
            message_id: MessageId(123),
            seq: 1,
            sent_at: 5,
        };
        assert_eq!(
            f.encode(),
            r#"{"type":"message_sent","req_id":1,"thread_id":"t","temp_id":"tmp","message_id":"123","seq":1,"sent_at":5}"#
        );
        assert_eq!(
            ServerFrame::Pong { req_id: None }.encode(),
            r#"{"type":"pong"}"#
        );
    }

    /// `send_message`'s strings stay borrowed from the frame unless they hold escapes,
    /// and decode to what the general path gives.
    #[test]
    fn send_message_strings_are_borrowed() {
        let plain = r#"{"type":"send_message","req_id":"r","thread_id":"dm:a:b","temp_id":"t1","text":"hi there"}"#;
        match decode_client_borrowed(plain) {
            Ok(Decoded::Send {
                req_id,
                thread_id,
                temp_id,
                text,
            }) => {
                assert_eq!(req_id, Some(ReqId::Str("r".into())));
                assert!(matches!(thread_id, Cow::Borrowed("dm:a:b")));
                assert!(matches!(temp_id, Cow::Borrowed("t1")));
                assert!(matches!(text, Cow::Borrowed("hi there")));
            }
            _ => panic!("not a borrowed send"),
        }
        let escaped =
            r#"{"type":"send_message","thread_id":"dm:a:b","temp_id":"t\"1","text":"a\nb \u00e9"}"#;
        match decode_client_borrowed(escaped) {
            Ok(Decoded::Send { temp_id, text, .. }) => {
                assert_eq!(temp_id, "t\"1");
                assert_eq!(text, "a\nb é");
            }
            _ => panic!("not a send"),
        }
        for frame in [plain, escaped] {
            assert_eq!(decode_client(frame), decode_general(frame));
        }
        // An invalid thread id takes the general path and its error.
        let bad = r#"{"type":"send_message","req_id":3,"thread_id":"no spaces","temp_id":"t","text":"x"}"#;
        let e = decode_client(bad).expect_err("invalid thread id");
        assert_eq!(e.code, "bad_request");
        assert_eq!(e.req_id, Some(ReqId::UInt(3)));
        assert!(e.message.contains("thread_id"), "{}", e.message);
    }

    /// The engine's one-buffer encoding of a message's two frames is byte for byte the
    /// general encoder's, whatever the text, the temp id and the req_id hold.
    #[test]
    fn message_frames_match_the_general_encoder() {
        let texts = [
            "hi",
            "",
            "quote \" backslash \\ newline \n tab \t \u{1} é 😀",
        ];
        let req_ids = [
            None,
            Some(ReqId::UInt(u64::MAX)),
            Some(ReqId::Int(i64::MIN)),
            Some(ReqId::Str("r\"1\\x".into())),
        ];
        for text in texts {
            for req_id in &req_ids {
                let m = crate::model::StoredMessage {
                    thread_id: ThreadId::new("dm:alice:bob").expect("id"),
                    seq: u64::MAX,
                    message_id: MessageId(u64::MAX),
                    sender_id: UserId::new("alice").expect("id"),
                    temp_id: format!("t\"{text}"),
                    text: text.to_string(),
                    sent_at: u64::MAX,
                };
                let (receive, sent) = message_frames(&m, req_id.as_ref());
                let (r1, s1) = message_frames_one_by_one(&m, req_id.as_ref());
                assert_eq!(receive, r1);
                assert_eq!(sent, s1);
                let back = ServerFrame::decode(std::str::from_utf8(&receive).expect("utf-8"))
                    .expect("decodes");
                assert!(matches!(back, ServerFrame::ReceiveMessage { text: t, .. } if t == text));
            }
        }
    }
}
