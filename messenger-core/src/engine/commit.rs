//! Group commit of sends: the engine's write path.
//!
//! `send_message` is admitted in the session's reader (validated, membership checked,
//! given a message id and a reply ticket) and queued on its thread's [`CommitQueue`];
//! [`Engine::handle`] then returns, so a session may have several sends in flight (at
//! most [`EngineConfig::max_sends_in_flight`](super::EngineConfig::max_sends_in_flight)).
//! Replies still leave the session in request order: each fills its ticket, and the
//! session releases replies from the front only (`SessionShared::fill_reply`).
//!
//! Each thread has at most one store call in flight on this node. The first send that
//! finds its thread idle starts a committer task for it; the committer hands everything
//! queued to [`MessageStore::append_batch`](crate::MessageStore::append_batch), and
//! sends that arrive while that call is in flight wait and go together in the next call.
//! There is no timer: an idle thread's send goes to the store at once, and batches grow
//! only as much as the store is slow. When the queue is empty the committer ends.
//!
//! When a batch returns (durable, seqs assigned), for each message in seq order:
//! local delivery (through the thread's order state), then `message_sent` to its sender
//! (duplicates get the original's `message_sent` and deliver nothing). On a single node
//! the event and push follow each message at once. In a cluster, remote fan-out of the
//! batch (directory lookup, relay envelopes, push) then runs while the next batch's
//! store call is in flight, so the store never waits for the relay and the relay sees
//! a thread's batches in order.
//!
//! Every admitted send gets exactly one reply: `message_sent`, or an `error` when the
//! store call fails, and an `internal` error if its [`PendingSend`] is dropped without
//! one (a store that panicked; the runtime shutting down).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use super::interest::Interest;
use super::session::SessionShared;
use super::{Delivery, Engine, Recipients, ThreadSlot};
use crate::error::{Error, Result};
use crate::ids::{NodeId, UserId};
use crate::model::{
    Appended, Envelope, EnvelopeTo, NewMessage, StoredMessage, ThreadInfo, ThreadMembers,
};
use crate::protocol::{message_frames, ReqId, ServerFrame};
use crate::sync::lock;

/// One thread's queue of admitted sends.
#[derive(Default)]
pub(super) struct CommitQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    /// Admitted sends not yet handed to the store, in admission order.
    waiting: VecDeque<PendingSend>,
    /// Whether a committer task is running for this thread.
    running: bool,
}

impl CommitQueue {
    /// Queues `send`; true if the caller must start the committer.
    fn push(&self, send: PendingSend) -> bool {
        let mut st = lock(&self.state);
        st.waiting.push_back(send);
        !std::mem::replace(&mut st.running, true)
    }

    /// Takes up to `max` queued sends: their messages for the store, and what each
    /// needs once stored (in a vector reused across batches, see [`spare_batch`]). When
    /// there are none and `may_stop`, the committer is marked stopped under the same
    /// lock, so a send queued right after starts a new one.
    fn take(&self, max: usize, may_stop: bool) -> (Vec<NewMessage>, Vec<Admitted>) {
        let mut st = lock(&self.state);
        if st.waiting.is_empty() && may_stop {
            st.running = false;
        }
        let n = st.waiting.len().min(max);
        if n == 0 {
            return (Vec::new(), Vec::new());
        }
        let mut msgs = spare_msgs();
        msgs.reserve(n);
        let mut admitted = spare_batch();
        for p in st.waiting.drain(..n) {
            msgs.push(p.msg);
            admitted.push(Admitted {
                thread: p.thread,
                large: p.large,
                reply: p.reply,
            });
        }
        (msgs, admitted)
    }

    fn stop(&self) {
        lock(&self.state).running = false;
    }
}

/// An admitted send waiting for its store call.
pub(super) struct PendingSend {
    pub(super) msg: NewMessage,
    /// The thread as the membership check saw it: who gets the message.
    pub(super) thread: Arc<ThreadInfo>,
    /// This node's sessions of the thread's members, when the thread is large.
    pub(super) large: Option<Arc<Interest>>,
    pub(super) reply: ReplyTo,
}

/// A send of a batch handed to the store: everything but its message.
struct Admitted {
    thread: Arc<ThreadInfo>,
    large: Option<Arc<Interest>>,
    reply: ReplyTo,
}

/// Most sends a recycled batch vector may hold room for (see [`spare_batch`]).
const SPARE_BATCH_MAX: usize = 64;

/// A batch taken from the queue: the messages for the store and the rest of each send.
type Batch = (Vec<NewMessage>, Vec<Admitted>);

thread_local! {
    /// An empty batch vector to reuse: a thread's committer usually starts, takes one
    /// send and ends, so a fresh vector per batch was an allocation per send. One per
    /// worker thread, of bounded size, rather than one per thread slot.
    static SPARE_BATCH: Cell<Vec<Admitted>> = const { Cell::new(Vec::new()) };
    /// The same for the messages of a batch, when the store hands the vector back
    /// ([`MessageStore::append_batch_now`](crate::MessageStore::append_batch_now)).
    static SPARE_MSGS: Cell<Vec<NewMessage>> = const { Cell::new(Vec::new()) };
}

/// The worker thread's spare message vector (empty), or a new one.
fn spare_msgs() -> Vec<NewMessage> {
    SPARE_MSGS.try_with(Cell::take).unwrap_or_default()
}

/// Keeps an emptied message vector for the next batch on this worker thread.
fn recycle_msgs(mut v: Vec<NewMessage>) {
    v.clear();
    if v.capacity() <= SPARE_BATCH_MAX {
        let _ = SPARE_MSGS.try_with(|c| c.set(v));
    }
}

/// The worker thread's spare batch vector (empty), or a new one.
fn spare_batch() -> Vec<Admitted> {
    SPARE_BATCH.try_with(Cell::take).unwrap_or_default()
}

/// Keeps an emptied batch vector for the next batch on this worker thread.
fn recycle_batch(mut v: Vec<Admitted>) {
    v.clear();
    if v.capacity() <= SPARE_BATCH_MAX {
        let _ = SPARE_BATCH.try_with(|c| c.set(v));
    }
}

/// Where a send's one reply goes: its session and its reply ticket (see
/// [`SessionShared::reserve_reply`]: replies leave in request order). Holds one of the
/// session's in-flight send slots (taken by [`SessionShared::take_send_slot`]) and gives
/// it back when dropped; dropped without a reply, it answers with an `internal` error so
/// no admitted send goes unanswered.
pub(super) struct ReplyTo {
    pub(super) session: Arc<SessionShared>,
    ticket: u64,
    req_id: Option<ReqId>,
    replied: bool,
}

impl ReplyTo {
    /// The reply target of a send holding `ticket`, whose in-flight slot has been taken.
    pub(super) fn new(session: Arc<SessionShared>, ticket: u64, req_id: Option<ReqId>) -> Self {
        ReplyTo {
            session,
            ticket,
            req_id,
            replied: false,
        }
    }

    /// Answers the send with `frame` (built around the request's `req_id`).
    fn answer(mut self, engine: &Engine, frame: impl FnOnce(Option<ReqId>) -> ServerFrame) {
        self.replied = true;
        engine.fill_reply(&self.session, self.ticket, frame(self.req_id.take()));
    }

    /// Answers the send with its `message_sent`, already encoded around [`Self::req_id`].
    fn answer_sent(mut self, engine: &Engine, frame: Bytes) {
        self.replied = true;
        let out = super::Outbound {
            frame,
            kind: "message_sent",
            accepted_at: None,
        };
        engine.fill_reply_encoded(&self.session, self.ticket, out);
    }

    /// The request's `req_id`, echoed by the reply.
    fn req_id(&self) -> Option<&ReqId> {
        self.req_id.as_ref()
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if !self.replied {
            let frame = ServerFrame::error(
                self.req_id.take(),
                "internal",
                "the send was abandoned before the store answered; retry with the same temp_id",
            );
            self.session.fill_reply(
                self.ticket,
                super::Outbound {
                    frame: Bytes::from(frame.encode()),
                    kind: "error",
                    accepted_at: None,
                },
            );
        }
        self.session.release_send_slot();
    }
}

/// A message stored by a batch, on its way to other nodes and the push sink.
struct Committed {
    thread: Arc<ThreadInfo>,
    large: Option<Arc<Interest>>,
    message: StoredMessage,
    frame: Bytes,
    sender: Arc<SessionShared>,
}

/// Marks the committer stopped if its task ends without doing so (a panic in a store).
struct RunningGuard(Arc<ThreadSlot>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.commit.stop();
        }
    }
}

impl Engine {
    /// Queues an admitted send on its thread and starts the thread's committer if none
    /// is running.
    ///
    /// The committer starts in the sender's own task: it is polled once here, so when
    /// the store answers at once (the in-memory store) the batch is stored, delivered to
    /// the local sessions' queues and answered before this returns, with no task spawned
    /// and no hop through another task. Only what cannot finish in that first poll (a
    /// store call or a remote fan-out still in flight, a second batch queued meanwhile)
    /// continues on a task of its own.
    ///
    /// On a single node with a store that appends without waiting
    /// ([`MessageStore::append_batch_now`](crate::MessageStore::append_batch_now)), the
    /// first batch runs right here instead (see [`commit_now`](Self::commit_now)), with
    /// no committer future at all.
    pub(super) fn enqueue_send(&self, slot: &Arc<ThreadSlot>, send: PendingSend) {
        if !slot.commit.push(send) {
            return;
        }
        let mut first = None;
        if self.inner.config.single_node {
            // As below: a panicking store answers its batch (`internal`, when the sends
            // are dropped) and must not take the sender's session down.
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.commit_now(slot))) {
                Ok(Now::Done) => return,
                // Sends queued while this batch ran: the committer task goes on with them,
                // so this task does one batch for others at most.
                Ok(Now::More(batch)) => {
                    tokio::spawn(self.clone().run_commits(slot.clone(), Some(batch)));
                    return;
                }
                Ok(Now::CannotWait(batch)) => first = Some(batch),
                Err(_) => {
                    slot.commit.stop();
                    tracing::error!(
                        "the message store panicked in a send batch: its sends were answered \
                         with `internal`"
                    );
                    return;
                }
            }
        }
        {
            let mut committer = Box::pin(self.clone().run_commits(slot.clone(), first));
            let mut cx = Context::from_waker(Waker::noop());
            // A store that panics must not take the sender's session down with it: the
            // unwinding committer has already answered its batch (`internal` errors) and
            // marked the thread idle (`RunningGuard`), as it does on a task of its own.
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| committer.as_mut().poll(&mut cx)));
            match polled {
                // Polled again by the task with its own waker: a future that registered
                // the no-op one here is woken through the task's from then on.
                Ok(Poll::Pending) => {
                    tokio::spawn(committer);
                }
                Ok(Poll::Ready(())) => {}
                Err(_) => tracing::error!(
                    "the message store panicked in a send batch: its sends were answered \
                     with `internal`"
                ),
            }
        }
    }

    /// One batch of the thread, in the caller's task, when the store appends without
    /// waiting; on a single node only, where a batch leaves nothing to do for other
    /// nodes once its local deliveries, replies, events and pushes are handed on.
    fn commit_now(&self, slot: &Arc<ThreadSlot>) -> Now {
        let max = self.inner.config.max_send_batch.max(1);
        let (mut msgs, batch) = slot.commit.take(max, true);
        let Some(thread_id) = msgs.first().map(|m| m.thread_id.clone()) else {
            // Nothing queued: `take` marked the committer stopped.
            return Now::Done;
        };
        let Some(result) = self
            .inner
            .a
            .messages
            .append_batch_now(&thread_id, &mut msgs)
        else {
            return Now::CannotWait((msgs, batch));
        };
        let stats = &self.inner.stats;
        stats.store_batches.fetch_add(1, Ordering::Relaxed);
        stats
            .store_batch_messages
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        recycle_msgs(msgs);
        let committed = self.complete_batch(slot, batch, result);
        debug_assert!(committed.is_empty(), "nothing to fan out on a single node");
        let (msgs, batch) = slot.commit.take(max, true);
        if batch.is_empty() {
            Now::Done
        } else {
            Now::More((msgs, batch))
        }
    }

    /// The committer of one thread: one store call at a time, each taking everything
    /// queued meanwhile (up to `max_send_batch`), starting with `first` if given; ends
    /// when the queue is empty. It yields once before its second batch, so the sender's
    /// task that started it (see [`enqueue_send`](Self::enqueue_send)) does at most one
    /// batch for others.
    async fn run_commits(self, slot: Arc<ThreadSlot>, mut first: Option<Batch>) {
        let _guard = RunningGuard(slot.clone());
        let max = self.inner.config.max_send_batch.max(1);
        let mut fan_out = None;
        let mut batches = 0u32;
        loop {
            let (msgs, batch) = match first.take() {
                Some(b) => b,
                None => slot.commit.take(max, fan_out.is_none()),
            };
            if batch.is_empty() {
                match fan_out.take() {
                    // Finish the last batch's fan-out, then look at the queue again.
                    Some(f) => {
                        f.await;
                        continue;
                    }
                    None => return,
                }
            }
            batches = batches.saturating_add(1);
            if batches == 2 {
                tokio::task::yield_now().await;
            }
            let Some(thread_id) = msgs.first().map(|m| m.thread_id.clone()) else {
                continue;
            };
            let stats = &self.inner.stats;
            stats.store_batches.fetch_add(1, Ordering::Relaxed);
            stats
                .store_batch_messages
                .fetch_add(msgs.len() as u64, Ordering::Relaxed);
            let append = self.inner.a.messages.append_batch(&thread_id, msgs);
            let result = match fan_out.take() {
                Some(f) => futures::future::join(append, f).await.0,
                None => append.await,
            };
            let committed = self.complete_batch(&slot, batch, result);
            fan_out = Some(self.fan_out_batch(committed));
        }
    }

    /// A batch came back from the store: for each message in seq order, local delivery
    /// and then the sender's reply. Returns the new messages for remote fan-out.
    fn complete_batch(
        &self,
        slot: &Arc<ThreadSlot>,
        mut batch: Vec<Admitted>,
        result: Result<Vec<Appended>>,
    ) -> Vec<Committed> {
        let results = match result {
            Ok(r) if r.len() == batch.len() => r,
            Ok(r) => {
                let e = Error::internal(format!(
                    "the message store answered {} results for a batch of {}",
                    r.len(),
                    batch.len()
                ));
                for p in batch.drain(..) {
                    self.fail_send(p.reply, &e);
                }
                recycle_batch(batch);
                return Vec::new();
            }
            Err(e) => {
                for p in batch.drain(..) {
                    self.fail_send(p.reply, &e);
                }
                recycle_batch(batch);
                return Vec::new();
            }
        };
        // Durable from here on: whatever must happen only after durability goes here.
        let stats = &self.inner.stats;
        let single_node = self.inner.config.single_node;
        let mut committed = Vec::new();
        for (p, appended) in batch.drain(..).zip(results) {
            let m = appended.message;
            if appended.duplicate {
                stats.duplicate_sends.fetch_add(1, Ordering::Relaxed);
                p.reply.answer(self, |req_id| ServerFrame::MessageSent {
                    req_id,
                    thread_id: m.thread_id.clone(),
                    temp_id: m.temp_id.clone(),
                    message_id: m.message_id,
                    seq: m.seq,
                    sent_at: m.sent_at,
                });
                continue;
            }
            stats.messages_accepted.fetch_add(1, Ordering::Relaxed);
            let (frame, sent) = message_frames(&m, p.reply.req_id());
            self.deliver_ordered(
                slot,
                m.seq,
                Delivery {
                    to: match &p.large {
                        Some(i) => Recipients::Large(i.clone()),
                        None => Recipients::Members(p.thread.clone()),
                    },
                    except: Some(p.reply.session.id.clone()),
                    frame: frame.clone(),
                    kind: "receive_message",
                    accepted_at: Some(Instant::now()),
                },
            );
            let sender = p.reply.session.clone();
            p.reply.answer_sent(self, sent);
            if single_node {
                // Nothing to send to other nodes: the event and push go out now.
                self.accepted_on_one_node(&p.thread, &m, p.large.as_deref());
                continue;
            }
            committed.push(Committed {
                thread: p.thread,
                large: p.large,
                message: m,
                frame,
                sender,
            });
        }
        recycle_batch(batch);
        committed
    }

    /// [`accepted`](Engine::accepted) on a single node: every session is local, so the
    /// members with no session are those missing from the session table.
    fn accepted_on_one_node(
        &self,
        thread: &ThreadInfo,
        m: &StoredMessage,
        large: Option<&Interest>,
    ) {
        let sessions = &self.inner.sessions;
        let offline: Vec<UserId> = match large {
            Some(i) => i.offline(&m.sender_id),
            None => thread
                .members
                .iter()
                .filter(|u| **u != m.sender_id && !sessions.shard(*u).contains_key(*u))
                .cloned()
                .collect(),
        };
        self.accepted(thread, m, Some(offline), large);
    }

    fn fail_send(&self, reply: ReplyTo, e: &Error) {
        let code = self.error_code(&reply.session, e);
        let message = super::error_message(e);
        reply.answer(self, |req_id| ServerFrame::error(req_id, code, message));
    }

    /// Remote fan-out of a batch's new messages, then for each message in seq order
    /// [`accepted`](Engine::accepted) (the event log, push for members with no session
    /// anywhere). Failures are logged: the messages are stored and members get them on
    /// catch-up.
    ///
    /// A large thread (with [`large_group_relay`](super::EngineConfig::large_group_relay)
    /// and a relay that lists its nodes) costs one envelope per other live node and
    /// message, each naming the member list by its fingerprint, and no directory lookup:
    /// each node delivers to its own sessions of the members (see [`super::interest`]).
    /// Only the message that takes the thread's push turn (once per
    /// `large_group_push_interval`) looks the members up, for its offline list; the
    /// others' events say `offline_known: false`.
    ///
    /// Any other thread: one directory lookup per distinct member list (one per batch
    /// unless membership changed inside it) and one envelope per remote node with
    /// sessions of its members, per message.
    async fn fan_out_batch(&self, batch: Vec<Committed>) {
        if batch.is_empty() {
            return;
        }
        let inner = &self.inner;
        let me = inner.config.node_id;
        let mut sends = Vec::new();
        let mut after: Vec<After> = Vec::with_capacity(batch.len());
        // The relay's live nodes, asked at most once per batch.
        let mut nodes: Option<Option<Vec<NodeId>>> = None;
        let mut start = 0;
        while start < batch.len() {
            let members = &batch[start].thread.members;
            let end = batch[start..]
                .iter()
                .position(|c| c.thread.members != *members)
                .map_or(batch.len(), |k| start + k);
            let group = &batch[start..end];
            start = end;
            let large = group[0]
                .large
                .as_ref()
                .filter(|_| inner.config.large_group_relay);
            if let Some(interest) = large {
                if nodes.is_none() {
                    nodes = Some(self.relay_nodes().await);
                }
                if let Some(Some(list)) = &nodes {
                    let now = Instant::now();
                    let every = inner.config.large_group_push_interval;
                    for c in group {
                        let frame = String::from_utf8_lossy(&c.frame).into_owned();
                        for node in list.iter().filter(|n| **n != me) {
                            let env = Envelope {
                                from_node: me,
                                to: EnvelopeTo::MembersOf(ThreadMembers {
                                    thread_id: c.message.thread_id.clone(),
                                    fingerprint: interest.fingerprint(),
                                    count: interest.members().len(),
                                }),
                                except_session: Some(c.sender.id.clone()),
                                order: Some((c.message.thread_id.clone(), c.message.seq)),
                                frame: frame.clone(),
                            };
                            sends.push(self.relay_send(*node, env, true));
                        }
                        after.push(if interest.take_push_turn(now, every) {
                            After::PushTurn
                        } else {
                            After::Offline(None)
                        });
                    }
                    continue;
                }
            }
            let sessions = match inner.a.directory.lookup(members).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(thread = %group[0].thread.thread_id, error = %e,
                        "directory lookup failed: remote members get these messages on catch-up");
                    after.extend(group.iter().map(|_| After::Offline(None)));
                    continue;
                }
            };
            let mut by_node: HashMap<NodeId, Vec<UserId>> = HashMap::new();
            let mut no_session: Vec<&UserId> = Vec::new();
            for (user, entries) in members.iter().zip(sessions.iter()) {
                if entries.is_empty() {
                    no_session.push(user);
                    continue;
                }
                let mut nodes: Vec<NodeId> = entries
                    .iter()
                    .map(|e| e.node)
                    .filter(|n| *n != me)
                    .collect();
                nodes.sort_unstable();
                nodes.dedup();
                for n in nodes {
                    by_node.entry(n).or_default().push(user.clone());
                }
            }
            for c in group {
                if !by_node.is_empty() {
                    let frame = String::from_utf8_lossy(&c.frame).into_owned();
                    for (node, users) in &by_node {
                        let env = Envelope {
                            from_node: me,
                            to: EnvelopeTo::Users(users.clone()),
                            except_session: Some(c.sender.id.clone()),
                            order: Some((c.message.thread_id.clone(), c.message.seq)),
                            frame: frame.clone(),
                        };
                        sends.push(self.relay_send(*node, env, true));
                    }
                }
                let offline: Vec<UserId> = no_session
                    .iter()
                    .filter(|u| ***u != c.message.sender_id)
                    .map(|u| (*u).clone())
                    .collect();
                after.push(After::Offline(Some(offline)));
            }
        }
        // Polled in order, so each relay connection sees a thread's envelopes in seq
        // order; receivers restore order anyway (see `order`).
        futures::future::join_all(sends).await;
        for (c, a) in batch.iter().zip(after) {
            match a {
                After::Offline(offline) => {
                    self.accepted(&c.thread, &c.message, offline, c.large.as_deref())
                }
                // The turn is taken: push is not gated again.
                After::PushTurn => {
                    let offline = self.offline_anywhere(&c.thread, &c.message.sender_id).await;
                    self.accepted(&c.thread, &c.message, offline, None)
                }
            }
        }
    }

    /// The relay's live nodes (see [`Relay::nodes`](crate::Relay::nodes)); `None` when
    /// it cannot tell or the call failed (the caller looks the members up instead).
    async fn relay_nodes(&self) -> Option<Vec<NodeId>> {
        match self.inner.a.relay.nodes().await {
            Ok(Some(mut list)) => {
                list.sort_unstable();
                list.dedup();
                Some(list)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e,
                    "the relay could not list its nodes: looking the members up instead");
                None
            }
        }
    }

    /// The members of `thread`, other than `sender`, with no session on any node (one
    /// directory lookup of every member); `None` when the directory cannot be read.
    async fn offline_anywhere(&self, thread: &ThreadInfo, sender: &UserId) -> Option<Vec<UserId>> {
        match self.inner.a.directory.lookup(&thread.members).await {
            Ok(found) => Some(
                thread
                    .members
                    .iter()
                    .zip(found)
                    .filter(|(u, entries)| entries.is_empty() && *u != sender)
                    .map(|(u, _)| u.clone())
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(thread = %thread.thread_id, error = %e,
                    "directory lookup failed: no push for this large thread's turn");
                None
            }
        }
    }
}

/// How [`Engine::commit_now`] left the thread.
enum Now {
    /// Its batch is done and nothing else was queued: the committer is stopped.
    Done,
    /// Its batch is done; these sends queued meanwhile (the committer still runs).
    More(Batch),
    /// The store cannot append without waiting: this batch goes to the committer task.
    CannotWait(Batch),
}

/// What a committed message's event and push get once its envelopes are sent.
enum After {
    /// Its offline members (`None`: unknown), push gated by the thread's push turn
    /// when it is large.
    Offline(Option<Vec<UserId>>),
    /// A large thread's message that took the thread's push turn: look its offline
    /// members up, then push to them.
    PushTurn,
}
