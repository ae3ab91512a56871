//! Sessions as the engine sees them: a bounded outbound queue and a kick signal.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::ids::{SessionId, UserId};

/// One encoded server frame on its way to a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The encoded frame (UTF-8 JSON).
    pub frame: Bytes,
    /// The frame's `type`, for metrics.
    pub kind: &'static str,
    /// When the message in a `receive_message` frame was accepted on this node (or
    /// reached it through the relay), for the accept-to-socket latency histogram.
    pub accepted_at: Option<Instant>,
}

/// Why the engine asks the transport to close a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue overflowed: the client reads too slowly. It should reconnect
    /// and catch up from history.
    SlowConsumer,
    /// The engine is shutting down.
    Shutdown,
}

/// What happened to a frame pushed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    Dropped,
    /// The queue was full and this push closed the session as a slow consumer.
    KickedNow,
}

pub(crate) struct SessionShared {
    pub(crate) id: SessionId,
    pub(crate) user: UserId,
    tx: mpsc::Sender<Outbound>,
    close: OnceLock<CloseReason>,
    kick: Notify,
    /// Users whose presence this session follows.
    pub(crate) subscriptions: Mutex<HashSet<UserId>>,
}

impl SessionShared {
    pub(crate) fn new(
        id: SessionId,
        user: UserId,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            SessionShared {
                id,
                user,
                tx,
                close: OnceLock::new(),
                kick: Notify::new(),
                subscriptions: Mutex::new(HashSet::new()),
            },
            rx,
        )
    }

    /// Queues a frame; a full queue kicks the session as a slow consumer.
    pub(crate) fn push(&self, out: Outbound) -> Pushed {
        if self.close.get().is_some() {
            return Pushed::Dropped;
        }
        match self.tx.try_send(out) {
            Ok(()) => Pushed::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.close_with(CloseReason::SlowConsumer) {
                    tracing::info!(session = %self.id, user = %self.user,
                        "outbound queue full: closing slow consumer");
                    Pushed::KickedNow
                } else {
                    Pushed::Dropped
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Pushed::Dropped,
        }
    }

    /// Asks the writer to close; true if this call set the reason.
    pub(crate) fn close_with(&self, reason: CloseReason) -> bool {
        if self.close.set(reason).is_ok() {
            self.kick.notify_one();
            true
        } else {
            false
        }
    }
}

/// What [`Outbox::recv`] yields.
#[derive(Debug)]
pub enum OutboxItem {
    /// A frame to write.
    Frame(Outbound),
    /// The engine wants the connection closed for this reason.
    Close(CloseReason),
}

/// The receiving end of a session's bounded outbound queue; the transport's writer
/// task drains it.
pub struct Outbox {
    rx: mpsc::Receiver<Outbound>,
    shared: std::sync::Arc<SessionShared>,
}

impl Outbox {
    pub(crate) fn new(rx: mpsc::Receiver<Outbound>, shared: std::sync::Arc<SessionShared>) -> Self {
        Outbox { rx, shared }
    }

    /// The next frame, or a close request. `None` once the session is disconnected and
    /// the queue is drained.
    pub async fn recv(&mut self) -> Option<OutboxItem> {
        if let Some(reason) = self.shared.close.get() {
            return Some(OutboxItem::Close(*reason));
        }
        tokio::select! {
            biased;
            _ = self.shared.kick.notified() => {
                self.shared.close.get().map(|r| OutboxItem::Close(*r))
            }
            m = self.rx.recv() => m.map(OutboxItem::Frame),
        }
    }

    /// A frame if one is queued right now (for batching writes), unless a close is pending.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        if self.shared.close.get().is_some() {
            return None;
        }
        self.rx.try_recv().ok()
    }
}

/// The transport's handle on a connected session.
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) shared: std::sync::Arc<SessionShared>,
}

impl SessionHandle {
    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.shared.id
    }

    /// The authenticated user.
    pub fn user(&self) -> &UserId {
        &self.shared.user
    }

    /// Asks the writer to close the session (for example on shutdown).
    pub fn close(&self, reason: CloseReason) {
        self.shared.close_with(reason);
    }

    /// Why the engine asked for this session to close, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close.get().copied()
    }

    /// Queues an already encoded frame on this session (for transports that answer
    /// some frames themselves, such as a rate-limit error).
    /// Returns false if the frame was dropped (queue full or session closing).
    pub fn send_frame(&self, frame: &crate::protocol::ServerFrame) -> bool {
        self.shared.push(Outbound {
            frame: Bytes::from(frame.encode()),
            kind: frame.type_name(),
            accepted_at: None,
        }) == Pushed::Queued
    }
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.shared.id)
            .field("user", &self.shared.user)
            .finish()
    }
}

/// A connected session: the handle for requests and the outbox for the writer.
pub struct Session {
    /// Pass this to [`Engine::handle_text`](super::Engine::handle_text) and
    /// [`Engine::disconnect`](super::Engine::disconnect).
    pub handle: SessionHandle,
    /// Drain this to the socket; `welcome` is already queued.
    pub outbox: Outbox,
}
