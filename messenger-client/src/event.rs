//! What the client hands to the app: [`Event`]s on the [`Events`] stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use messenger_core::model::{AckStatus, PresenceStatus, ThreadKind};
use messenger_core::protocol::HistoryMessage;
use messenger_core::time::Millis;
use messenger_core::{MessageId, SessionId, ThreadId, UserId};
use tokio::sync::mpsc;

use crate::driver::Shared;
use crate::error::ClientError;
use crate::store::AckDue;

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

/// Why the client stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The app closed it ([`Client::close`](crate::Client::close), or every handle
    /// dropped).
    Closed,
    /// It cannot go on: the token was refused ([`ClientError::Auth`]), connect attempts
    /// ran out ([`ClientError::RetriesExhausted`]), the wrong user, a failing store...
    Failed(ClientError),
}

/// The connection's state, for the app's "connecting…" / "offline, retrying in 5 s"
/// banners. Also [`Client::state`](crate::Client::state) and
/// [`Client::state_changes`](crate::Client::state_changes).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection: getting a token, TCP, TLS, the upgrade, `welcome`.
    Connecting {
        /// Failed attempts in a row before this one (0: the first).
        attempt: u32,
    },
    /// Connected and authenticated; the outbox is being flushed and catch-up started.
    Connected {
        /// The authenticated user.
        user_id: UserId,
        /// This session's id.
        session_id: SessionId,
    },
    /// Not connected; the next attempt starts after `delay` (or at once on
    /// [`Client::reconnect_now`](crate::Client::reconnect_now)).
    WaitingToRetry {
        /// Failed attempts in a row so far.
        attempt: u32,
        /// The jittered wait before the next attempt.
        delay: Duration,
        /// Why the last attempt failed or the connection ended.
        error: ClientError,
    },
    /// Disconnected on purpose by [`Client::suspend`](crate::Client::suspend) (app in
    /// the background); nothing happens until [`Client::resume`](crate::Client::resume).
    /// Sends are kept in the outbox meanwhile.
    Suspended,
    /// Stopped for good.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

/// A send the server refused for good (`forbidden`, `too_large`, `bad_request`...):
/// it left the outbox. Sends that a caller awaits also fail there; this event is how
/// the app learns about sends restored from a persistent outbox, or queued with
/// [`Client::enqueue`](crate::Client::enqueue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailed {
    /// The thread.
    pub thread_id: ThreadId,
    /// The send's temp id.
    pub temp_id: String,
    /// Why.
    pub error: ClientError,
}

/// Something the app should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message, in seq order per thread, each exactly once (the app's own included).
    /// Never dropped: when the app does not read, the client stops reading the socket.
    Message(Message),
    /// One of the app's sends was accepted (the "sent" mark).
    Sent(Sent),
    /// One of the app's sends was refused for good and left the outbox.
    SendFailed(SendFailed),
    /// A delivered/read receipt (the "delivered" and "read" marks). Emitted only when
    /// it moves the member's watermark forward: a stale receipt (relayed receipts can
    /// cross during a failover) or one already known from a catch-up is not shown.
    Receipt(Receipt),
    /// A presence change of a subscribed user.
    Presence(Presence),
    /// A typing indicator.
    Typing(Typing),
    /// A thread was created or changed.
    Thread(Thread),
    /// The user muted or unmuted a thread (from this or another of the user's
    /// sessions): push notifications for it stop or resume.
    ThreadMute(ThreadMute),
    /// The connection's state changed. While the app is not reading, consecutive
    /// state changes are folded into the latest (messages never are).
    Connection(ConnectionState),
}

/// A thread's mute state for the user (push notifications for it are off while muted).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadMute {
    /// The thread.
    pub thread_id: ThreadId,
    /// Whether it is muted now.
    pub muted: bool,
    /// When the mute ends (Unix ms); `None` for ever or when not muted.
    pub until: Option<u64>,
}

/// What the app has taken from the stream, per thread, for the client's task to act
/// on: `DELIVERED` acks for what it received and the position it holds.
#[derive(Debug, Default)]
pub(crate) struct Consumed {
    /// Newest message from someone else received, per thread.
    pub received: HashMap<ThreadId, AckDue>,
    /// Last seq held (the app came back for more after it), per thread.
    pub held: HashMap<ThreadId, u64>,
}

/// The stream of [`Event`]s: a bounded channel, also a [`futures::Stream`]. Returned
/// with the [`Client`](crate::Client) by the builder, so it exists from the first
/// frame.
///
/// - **Backpressure, not loss.** When the stream is full the client stops reading the
///   socket (the server's slow-consumer close and the catch-up after it then apply),
///   so replies to requests wait too: drain it, and do slow work in a spawned task.
/// - **Acks follow the app.** A message from someone else is acked `DELIVERED` only
///   once the app has received it from this stream, never when it was merely queued.
/// - **Positions follow the app.** A message counts as held (the thread's position in
///   the [`ClientStore`](crate::ClientStore)) once the app asks for the next event
///   after it, or drops the stream. An app killed while handling a message gets it
///   again after a restart (same `message_id`): nothing is lost, and at most the
///   messages in hand are seen twice.
///
/// Dropping the stream means the app stops listening: later messages are neither
/// acked nor held, and a restarted client fetches them again.
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Event>,
    pub(crate) shared: Arc<Shared>,
    /// The message handed out last: held once the app comes back.
    pub(crate) in_hand: Option<(ThreadId, u64)>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("in_hand", &self.in_hand)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// The next event, or `None` once the client has stopped. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Event> {
        self.release();
        let ev = self.rx.recv().await;
        self.took(ev.as_ref());
        ev
    }

    /// The next event if one is ready now.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.release();
        let ev = self.rx.try_recv().ok();
        self.took(ev.as_ref());
        ev
    }

    /// The message in hand is done with: its thread's position moves.
    fn release(&mut self) {
        if let Some((thread, seq)) = self.in_hand.take() {
            let mut c = self.shared.consumed();
            let held = c.held.entry(thread).or_insert(seq);
            *held = (*held).max(seq);
        }
    }

    fn took(&mut self, ev: Option<&Event>) {
        let Some(Event::Message(m)) = ev else { return };
        self.in_hand = Some((m.thread_id.clone(), m.seq));
        if self.shared.user_id.get() != Some(&m.sender_id) {
            let mut c = self.shared.consumed();
            let due = c.received.entry(m.thread_id.clone()).or_insert(AckDue {
                seq: m.seq,
                message_id: m.message_id,
            });
            if m.seq >= due.seq {
                *due = AckDue {
                    seq: m.seq,
                    message_id: m.message_id,
                };
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.release();
    }
}

impl futures::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.release();
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(ev) = &polled {
            self.took(ev.as_ref());
        }
        polled
    }
}
