//! Sessions as the engine sees them: a bounded outbound queue and a kick signal.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::ids::{SessionId, UserId};
use crate::sync::lock;

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
#[non_exhaustive]
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

/// A session's state shared between the engine and the transport.
///
/// The outbound queue is a `VecDeque` behind a mutex rather than a channel: an idle
/// session's empty queue allocates nothing (a channel preallocates a block of slots per
/// session), which matters at hundreds of thousands of connections. For the same reason
/// what only a session that makes requests needs (presence subscriptions, send slots,
/// reply order) is allocated on its first request ([`Active`]): about half of this
/// struct, which every connection pays.
pub(crate) struct SessionShared {
    pub(crate) id: SessionId,
    pub(crate) user: UserId,
    queue: Mutex<VecDeque<Outbound>>,
    capacity: usize,
    /// Wakes the writer: a frame was queued, a close was requested or the session ended.
    wake: Notify,
    close: OnceLock<CloseReason>,
    ended: AtomicBool,
    /// Sends a session may have waiting for the store at once.
    sends_in_flight: usize,
    active: OnceLock<Box<Active>>,
}

/// The part of a session's state that its requests use, allocated on the first one.
struct Active {
    /// Users whose presence this session follows.
    subscriptions: Mutex<HashSet<UserId>>,
    /// Free in-flight send slots: a send takes one when admitted and gives it back when
    /// answered, so a session's sends waiting for the store stay bounded.
    send_slots: Semaphore,
    /// Direct replies held back so they leave in request order (see [`ReplyOrder`]).
    replies: Mutex<ReplyOrder>,
    /// Notified when the last reply held in `replies` is released.
    settled: Notify,
}

/// The session's direct replies in request order. Every send takes a ticket when it
/// arrives; its reply fills the ticket when its batch returns, and replies are released
/// to the outbound queue only from the front, so a later request's reply never
/// overtakes an earlier one. Any other frame runs only once no ticket is open (see
/// [`SessionShared::wait_sends_settled`]), so it sees the effect of the sends before it.
#[derive(Default)]
struct ReplyOrder {
    /// Ticket number of `slots[0]`.
    first: u64,
    /// Open or filled tickets, oldest first; empty when the session has nothing pending.
    slots: VecDeque<Option<Outbound>>,
}

/// Queues shrink back when drained after growing past this many slots.
const SHRINK_ABOVE: usize = 64;

impl SessionShared {
    pub(crate) fn new(
        id: SessionId,
        user: UserId,
        capacity: usize,
        sends_in_flight: usize,
    ) -> Self {
        SessionShared {
            id,
            user,
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            wake: Notify::new(),
            close: OnceLock::new(),
            ended: AtomicBool::new(false),
            sends_in_flight: sends_in_flight.max(1),
            active: OnceLock::new(),
        }
    }

    /// The request state, allocated on first use.
    fn active(&self) -> &Active {
        self.active.get_or_init(|| {
            Box::new(Active {
                subscriptions: Mutex::new(HashSet::new()),
                send_slots: Semaphore::new(self.sends_in_flight),
                replies: Mutex::new(ReplyOrder::default()),
                settled: Notify::new(),
            })
        })
    }

    fn replies(&self) -> std::sync::MutexGuard<'_, ReplyOrder> {
        lock(&self.active().replies)
    }

    /// Whether replies are held back for sends still waiting (never, before any request).
    fn replies_pending(&self) -> bool {
        self.active
            .get()
            .is_some_and(|a| !lock(&a.replies).slots.is_empty())
    }

    /// The users whose presence this session follows.
    pub(crate) fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        lock(&self.active().subscriptions)
    }

    /// Takes the session's presence subscriptions (none, before any request).
    pub(crate) fn take_subscriptions(&self) -> Vec<UserId> {
        self.active
            .get()
            .map(|a| lock(&a.subscriptions).drain().collect())
            .unwrap_or_default()
    }

    /// Opens a ticket for the reply of a request that will be answered later (a send).
    pub(crate) fn reserve_reply(&self) -> u64 {
        let mut r = self.replies();
        r.slots.push_back(None);
        r.first + r.slots.len() as u64 - 1
    }

    /// Fills `ticket` with its reply and releases every reply at the front that is ready.
    pub(crate) fn fill_reply(&self, ticket: u64, out: Outbound) -> Pushed {
        let mut r = self.replies();
        let Some(slot) = ticket
            .checked_sub(r.first)
            .and_then(|i| r.slots.get_mut(i as usize))
        else {
            return Pushed::Dropped;
        };
        *slot = Some(out);
        let mut pushed = Pushed::Queued;
        while let Some(Some(_)) = r.slots.front() {
            if let Some(Some(out)) = r.slots.pop_front() {
                r.first += 1;
                if self.push(out) == Pushed::KickedNow {
                    pushed = Pushed::KickedNow;
                }
            }
        }
        if r.slots.is_empty() {
            self.active().settled.notify_waiters();
        }
        pushed
    }

    /// Queues a direct reply behind the replies still open, or at once if there are none.
    pub(crate) fn reply_in_order(&self, out: Outbound) -> Pushed {
        let Some(active) = self.active.get() else {
            return self.push(out);
        };
        let mut r = lock(&active.replies);
        if r.slots.is_empty() {
            drop(r);
            return self.push(out);
        }
        r.slots.push_back(Some(out));
        Pushed::Queued
    }

    /// Waits until every reply ticket of this session is filled and released: the
    /// session's earlier sends are durable (or failed) and answered.
    pub(crate) async fn wait_sends_settled(&self) {
        let Some(active) = self.active.get() else {
            return;
        };
        loop {
            let notified = active.settled.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release in between is not missed.
            notified.as_mut().enable();
            if !self.replies_pending() {
                return;
            }
            notified.await;
        }
    }

    /// Waits for a free in-flight send slot (the session's reader waits here, which
    /// pushes back on a client that sends faster than its thread commits).
    pub(crate) async fn take_send_slot(&self) {
        // The semaphore is never closed, so acquiring only waits.
        if let Ok(permit) = self.active().send_slots.acquire().await {
            permit.forget();
        }
    }

    /// Gives back a slot taken by [`take_send_slot`](Self::take_send_slot).
    pub(crate) fn release_send_slot(&self) {
        self.active().send_slots.add_permits(1);
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Outbound>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame; a full queue kicks the session as a slow consumer.
    pub(crate) fn push(&self, out: Outbound) -> Pushed {
        if self.close.get().is_some() || self.ended.load(Ordering::Acquire) {
            return Pushed::Dropped;
        }
        {
            let mut q = self.queue();
            if q.len() < self.capacity {
                q.push_back(out);
                drop(q);
                self.wake.notify_one();
                return Pushed::Queued;
            }
        }
        if self.close_with(CloseReason::SlowConsumer) {
            tracing::info!(session = %self.id, user = %self.user,
                "outbound queue full: closing slow consumer");
            Pushed::KickedNow
        } else {
            Pushed::Dropped
        }
    }

    /// Asks the writer to close; true if this call set the reason.
    pub(crate) fn close_with(&self, reason: CloseReason) -> bool {
        if self.close.set(reason).is_ok() {
            self.wake.notify_one();
            true
        } else {
            false
        }
    }

    /// The session is gone: nothing more is queued and the outbox ends once drained.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The next queued frame. A queue that grew large shrinks as soon as it is drained;
    /// a small one keeps its storage while the session is busy (no allocation per frame)
    /// until [`Outbox::release_idle`].
    fn pop(&self) -> Option<Outbound> {
        let mut q = self.queue();
        let item = q.pop_front();
        if q.is_empty() && q.capacity() > SHRINK_ABOVE {
            *q = VecDeque::new();
        }
        item
    }

    /// Gives the queue's storage back if it is empty.
    fn release_idle(&self) {
        let mut q = self.queue();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
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
    shared: std::sync::Arc<SessionShared>,
}

impl Outbox {
    pub(crate) fn new(shared: std::sync::Arc<SessionShared>) -> Self {
        Outbox { shared }
    }

    /// The next frame, or a close request (which comes before any frame still queued).
    /// `None` once the session is disconnected and the queue is drained.
    pub async fn recv(&mut self) -> Option<OutboxItem> {
        loop {
            if let Some(reason) = self.shared.close.get() {
                return Some(OutboxItem::Close(*reason));
            }
            if let Some(out) = self.shared.pop() {
                return Some(OutboxItem::Frame(out));
            }
            if self.shared.ended.load(Ordering::Acquire) {
                return None;
            }
            // `notify_one` stores a permit when nobody waits, so a wake-up between the
            // checks above and this await is not lost.
            self.shared.wake.notified().await;
        }
    }

    /// A frame if one is queued right now (for batching writes), unless a close is pending.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        if self.shared.close.get().is_some() {
            return None;
        }
        self.shared.pop()
    }

    /// Gives the queue's storage back if nothing is queued, for a transport whose
    /// connection has been idle for a while (the server does it at each ping): an idle
    /// session then holds no queue. Cheap; the next frame allocates it again.
    pub fn release_idle(&mut self) {
        self.shared.release_idle();
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

    /// How many users this session would watch after subscribing to `more` (its
    /// current presence subscriptions and those of `more` it does not hold yet), for
    /// a transport's per-session subscription limit.
    pub fn presence_subscriptions_with(&self, more: &[UserId]) -> usize {
        let Some(active) = self.shared.active.get() else {
            let mut new: Vec<&UserId> = more.iter().collect();
            new.sort_unstable();
            new.dedup();
            return new.len();
        };
        let subs = lock(&active.subscriptions);
        let mut new: Vec<&UserId> = more.iter().filter(|u| !subs.contains(*u)).collect();
        new.sort_unstable();
        new.dedup();
        subs.len() + new.len()
    }

    /// Queues an already encoded frame on this session (for transports that answer
    /// some frames themselves, such as a rate-limit error).
    /// Returns false if the frame was dropped (queue full or session closing).
    ///
    /// The frame is queued behind the session's replies still pending (sends waiting
    /// for the store), so replies stay in request order.
    pub fn send_frame(&self, frame: &crate::protocol::ServerFrame) -> bool {
        self.shared.reply_in_order(Outbound {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Outbound {
        Outbound {
            frame: Bytes::from_static(b"{}"),
            kind: "pong",
            accepted_at: None,
        }
    }

    #[tokio::test]
    async fn an_idle_session_gives_its_queue_back_and_a_busy_one_keeps_it() {
        let shared = std::sync::Arc::new(SessionShared::new(
            SessionId::from_id(1),
            UserId::new("u").expect("id"),
            16,
            4,
        ));
        let mut outbox = Outbox::new(shared.clone());
        assert_eq!(
            shared.queue().capacity(),
            0,
            "nothing before the first frame"
        );
        shared.push(frame());
        assert!(matches!(outbox.recv().await, Some(OutboxItem::Frame(_))));
        // Drained by the writer: the storage stays for the next frame.
        assert!(shared.queue().capacity() > 0);
        shared.push(frame());
        assert!(outbox.try_recv().is_some());
        outbox.release_idle();
        assert_eq!(shared.queue().capacity(), 0, "released when idle");
        // Not while frames wait.
        shared.push(frame());
        outbox.release_idle();
        assert_eq!(shared.queue().len(), 1);
        assert!(outbox.try_recv().is_some());
    }
}
