//! What the client hands to the app: [`Event`]s on the [`Events`] stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use messenger_core::model::{AckStatus, PresenceStatus, ThreadKind};
use messenger_core::protocol::HistoryMessage;
use messenger_core::time::Millis;
use messenger_core::{MessageId, SessionId, ThreadId, UserId};
use tokio::sync::mpsc;

use crate::error::ClientError;

/// One message of a thread, from anyone (the app's own messages included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The thread.
    pub thread_id: ThreadId,
    /// The authoritative id.
    pub message_id: MessageId,
    /// Position in the thread: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// Who sent it.
    pub sender_id: UserId,
    /// The text.
    pub text: String,
    /// When the server accepted it (Unix ms).
    pub sent_at: Millis,
}

impl Message {
    pub(crate) fn from_history(thread_id: &ThreadId, m: HistoryMessage) -> Message {
        Message {
            thread_id: thread_id.clone(),
            message_id: m.message_id,
            seq: m.seq,
            sender_id: m.sender_id,
            text: m.text,
            sent_at: m.sent_at,
        }
    }
}

/// The server accepted one of the app's sends: its temp id now has an authoritative id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The thread.
    pub thread_id: ThreadId,
    /// The temp id the send used.
    pub temp_id: String,
    /// The authoritative id.
    pub message_id: MessageId,
    /// The message's seq.
    pub seq: u64,
    /// When the server accepted it (Unix ms).
    pub sent_at: Millis,
}

/// Someone's delivered or read watermark moved in a thread where the app sent a message
/// (or, for `READ`, the app's own user read on another device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The thread.
    pub thread_id: ThreadId,
    /// The acked message; every message up to `seq` is covered.
    pub message_id: MessageId,
    /// The watermark.
    pub seq: u64,
    /// `Delivered` or `Read` (read implies delivered).
    pub status: AckStatus,
    /// Who acked.
    pub user_id: UserId,
    /// When (Unix ms).
    pub at: Millis,
}

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// Whose.
    pub user_id: UserId,
    /// Online or offline.
    pub status: PresenceStatus,
    /// When the user went offline.
    pub last_seen: Option<Millis>,
}

/// Someone started or stopped typing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typing {
    /// The thread.
    pub thread_id: ThreadId,
    /// Who.
    pub user_id: UserId,
    /// Whether typing.
    pub typing: bool,
}

/// A thread's current state (created, members added, someone left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// The thread.
    pub thread_id: ThreadId,
    /// Direct or group.
    pub kind: ThreadKind,
    /// Group title.
    pub title: Option<String>,
    /// Members.
    pub members: Vec<UserId>,
}

/// The connection's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection (attempt counts failures in a row, 0 first).
    Connecting {
        /// Failed attempts so far.
        attempt: u32,
    },
    /// Connected and authenticated; the outbox was flushed and catch-up started.
    Connected {
        /// The authenticated user.
        user_id: UserId,
        /// This session's id.
        session_id: SessionId,
    },
    /// The connection is gone; the client will reconnect.
    Disconnected {
        /// Why, for humans.
        reason: String,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// Failed attempts in a row so far.
        attempt: u32,
        /// The jittered wait.
        delay: Duration,
    },
    /// The client stopped for good: closed by the app (`error` is `None`), refused
    /// authentication, or ran out of retries.
    Closed {
        /// Why it stopped, if not closed by the app.
        error: Option<ClientError>,
    },
}

/// Something the app should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message, in seq order per thread, each exactly once (the app's own included).
    Message(Message),
    /// One of the app's sends was accepted (the "sent" mark).
    Sent(Sent),
    /// A delivered/read receipt (the "delivered" and "read" marks).
    Receipt(Receipt),
    /// A presence change of a subscribed user.
    Presence(Presence),
    /// A typing indicator.
    Typing(Typing),
    /// A thread was created or changed.
    Thread(Thread),
    /// The connection's state changed.
    Connection(ConnectionState),
}

/// The stream of [`Event`]s: a bounded channel, also a [`futures::Stream`].
///
/// Drain it: when it is full the client stops reading from the server, so replies to
/// requests wait too. It ends when the client is closed.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
