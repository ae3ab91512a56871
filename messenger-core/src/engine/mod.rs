//! The engine: every protocol v1 behaviour over the adapter traits, with no transport.
//!
//! A transport (the WebSocket server, a test) authenticates a user, calls
//! [`Engine::connect`], feeds each text frame to [`Engine::handle_text`], writes what
//! the session's [`Outbox`] yields to the socket, and calls [`Engine::disconnect`] when
//! the connection ends. Direct replies and fan-out share the one bounded outbox, so a
//! session sees its frames in the order the engine produced them.

mod commit;
mod interest;
mod order;
mod push;
mod session;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::sync::{lock, Sharded};
use session::SessionShared;
pub use session::{CloseReason, Outbound, Outbox, OutboxItem, Session, SessionHandle};

use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, EventBody, EventId, MembershipChanged, MessageCreated, ReceiptUpdated};
use crate::ids::{MessageId, NodeId, SessionId, ThreadId, UserId};
use crate::model::{
    AckStatus, Envelope, EnvelopeTo, HistoryQuery, NewMessage, NewThread, PresenceInfo,
    PushNotification, SessionEntry, StoredMessage, ThreadInfo, ThreadKind, ThreadMembers,
};
use crate::protocol::{
    decode_client_borrowed, ClientFrame, CreateThread, Decoded, HistoryMessage, Receipt, ReqId,
    Request, ServerFrame, ThreadSummary,
};
use crate::time::now_ms;
use crate::traits::{
    EventSink, IdGenerator, MessageStore, Presence, PushRegistry, PushSink, Relay,
    SessionDirectory, ThreadStore,
};

/// Unread counts `list_threads` reads from the store at once (one per thread with
/// unread messages).
const UNREAD_READS_AT_ONCE: usize = 8;

/// Engine settings. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// This node's id (0 to 1023); also the Snowflake node field.
    pub node_id: NodeId,
    /// Longest `text` in UTF-8 bytes (default 16 KiB); longer is `too_large`.
    pub max_text_bytes: usize,
    /// Longest `temp_id` in bytes (default 128).
    pub max_temp_id_bytes: usize,
    /// Longest group title in bytes (default 256).
    pub max_title_bytes: usize,
    /// Most members in a group (default 10 000).
    pub max_group_members: usize,
    /// `fetch_history` page size without `limit` (default 50).
    pub default_history_limit: usize,
    /// Largest `fetch_history` page (default 200); larger limits are capped.
    pub max_history_limit: usize,
    /// How long a user stays online after the last session closes (default 3 s), so a
    /// quick reconnect does not flap.
    pub presence_grace: Duration,
    /// Groups with more members than this are large (default 100): each node tracks
    /// which of its sessions belong to them, so a message costs one write per online
    /// local member rather than a lookup per member, and their push is throttled.
    pub large_group_threshold: usize,
    /// In a large group, offline members are handed to the push sink at most once per
    /// this interval per thread and node (default 60 s), so each member gets at most one
    /// push per thread and interval.
    pub large_group_push_interval: Duration,
    /// In a cluster, send each message to a large group as one envelope per node
    /// ([`EnvelopeTo::MembersOf`]: "your sessions of this thread's members"), which each
    /// node resolves from its own record of its sessions, instead of looking up every
    /// member in the [`SessionDirectory`] (default true). Needs a relay that lists its
    /// nodes ([`Relay::nodes`]); without one the members are looked up as before.
    /// Nodes from before this envelope cannot decode it (they log it and skip it, and
    /// their sessions get those messages on catch-up only): during a rolling upgrade
    /// from such a version, set it to false until every node runs this one.
    pub large_group_relay: bool,
    /// Frames a session's outbound queue holds before the session is closed as a slow
    /// consumer (default 1024).
    pub outbound_queue: usize,
    /// How long a message that arrives past a gap in seq waits for the missing ones
    /// (default 50 ms).
    pub reorder_window: Duration,
    /// True when this engine is the only node: every session is local, so the send path
    /// skips the `SessionDirectory` lookup and the relay and finds offline members from
    /// its own session table (default false). Set it only when the directory and relay
    /// are not shared with another engine.
    pub single_node: bool,
    /// Most messages handed to the store in one
    /// [`append_batch`](crate::MessageStore::append_batch) call (default 256); a thread's
    /// further queued sends go in its next call.
    pub max_send_batch: usize,
    /// Most sends one session may have admitted and not yet answered (default 64). The
    /// session's next `send_message` waits for one to be answered, so its later frames
    /// wait too.
    pub max_sends_in_flight: usize,
    /// Most push targets one user keeps (default 10); registering another drops the
    /// least recently refreshed.
    pub max_push_targets: usize,
    /// How long an envelope whose relay send failed is kept for another try (default
    /// 30 s; zero: no retry). A background task resends the waiting envelopes, oldest
    /// first, with a backoff of 100 ms to 2 s, so members on the other node get
    /// messages the relay lost during a short outage live (as late arrivals, which
    /// clients order by seq) instead of only on their next catch-up. Typing indicators
    /// are not kept.
    pub relay_retry_for: Duration,
    /// Most envelopes waiting for another try (default 10 000); past it the oldest are
    /// dropped (counted in [`EngineStats::relay_dropped`]).
    pub relay_retry_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: NodeId::default(),
            max_text_bytes: 16 * 1024,
            max_temp_id_bytes: 128,
            max_title_bytes: 256,
            max_group_members: 10_000,
            default_history_limit: 50,
            max_history_limit: 200,
            presence_grace: Duration::from_secs(3),
            large_group_threshold: 100,
            large_group_push_interval: Duration::from_secs(60),
            large_group_relay: true,
            outbound_queue: 1024,
            reorder_window: Duration::from_millis(50),
            single_node: false,
            max_send_batch: 256,
            max_sends_in_flight: 64,
            max_push_targets: 10,
            relay_retry_for: Duration::from_secs(30),
            relay_retry_capacity: 10_000,
        }
    }
}

impl EngineConfig {
    /// Defaults with the given node id.
    pub fn with_node(node_id: NodeId) -> Self {
        EngineConfig {
            node_id,
            ..Default::default()
        }
    }
}

/// The adapters the engine runs on.
#[derive(Clone)]
pub struct Adapters {
    /// Message and session ids.
    pub ids: Arc<dyn IdGenerator>,
    /// Messages.
    pub messages: Arc<dyn MessageStore>,
    /// Threads, membership, watermarks.
    pub threads: Arc<dyn ThreadStore>,
    /// Where sessions live.
    pub directory: Arc<dyn SessionDirectory>,
    /// Online/offline.
    pub presence: Arc<dyn Presence>,
    /// Push for offline members.
    pub push: Arc<dyn PushSink>,
    /// Each user's push targets and thread mutes (the push frames of the protocol).
    pub push_registry: Arc<dyn PushRegistry>,
    /// Cross-node delivery.
    pub relay: Arc<dyn Relay>,
    /// The event log for downstream consumers ([`DiscardEvents`](crate::DiscardEvents)
    /// when there are none).
    pub events: Arc<dyn EventSink>,
}

/// Counters the engine keeps; the server exports them as metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Messages accepted (new, not duplicates).
    pub messages_accepted: AtomicU64,
    /// Duplicate sends answered from the store.
    pub duplicate_sends: AtomicU64,
    /// Acks that moved a watermark.
    pub acks: AtomicU64,
    /// Push notifications handed to the sink.
    pub pushes: AtomicU64,
    /// Push notifications the sink refused.
    pub push_failures: AtomicU64,
    /// Envelopes sent to other nodes.
    pub relay_sent: AtomicU64,
    /// Relay sends that failed (first tries; the envelope then waits for a retry).
    pub relay_failures: AtomicU64,
    /// Envelopes the relay took on a later try, after their first send failed.
    pub relay_retried: AtomicU64,
    /// Envelopes given up on after failed sends: older than
    /// [`EngineConfig::relay_retry_for`], or over its capacity (those members get them
    /// on catch-up only).
    pub relay_dropped: AtomicU64,
    /// Sessions closed because their outbound queue overflowed.
    pub slow_consumers: AtomicU64,
    /// Events handed to the event sink.
    pub events_published: AtomicU64,
    /// `append_batch` calls made by the send path (group commits).
    pub store_batches: AtomicU64,
    /// Messages handed to those calls; divided by `store_batches`, the mean batch size.
    pub store_batch_messages: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl EngineStats {
    fn error(&self, code: &'static str) {
        let mut g = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *g.entry(code).or_insert(0) += 1;
    }

    /// Error replies by protocol code.
    pub fn errors_by_code(&self) -> BTreeMap<&'static str, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A message on its way to local sessions.
pub(crate) struct Delivery {
    to: Recipients,
    except: Option<SessionId>,
    frame: Bytes,
    kind: &'static str,
    accepted_at: Option<Instant>,
}

/// Whose local sessions get a delivery.
enum Recipients {
    /// Each of these users' sessions (looked up per user).
    Users(Vec<UserId>),
    /// Each of this thread's members' sessions (looked up per member): a message's
    /// delivery shares the thread with its send rather than copying the member list.
    Members(Arc<ThreadInfo>),
    /// A large thread's members' sessions, as this node tracks them.
    Large(Arc<interest::Interest>),
}

/// Per-thread state on this node: the queue of sends waiting for the store and the
/// delivery order.
struct ThreadSlot {
    commit: commit::CommitQueue,
    order: Mutex<order::OrderState>,
}

struct Inner {
    config: EngineConfig,
    a: Adapters,
    stats: EngineStats,
    /// Local sessions by user.
    sessions: Sharded<UserId, Vec<Arc<SessionShared>>>,
    /// Local presence subscribers by watched user.
    watchers: Sharded<UserId, Vec<Arc<SessionShared>>>,
    /// Per-thread commit queue and delivery order.
    slots: Sharded<ThreadId, Arc<ThreadSlot>>,
    /// Local sessions of large threads' members, and their push turns.
    large: interest::LargeThreads,
    /// Envelopes whose relay send failed, oldest first, waiting for another try.
    retry: Mutex<VecDeque<(NodeId, Envelope, Instant)>>,
    /// Wakes the retry task when `retry` gets its first envelope.
    retry_wake: Arc<tokio::sync::Notify>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The chat engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node_id", &self.inner.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts an engine: subscribes to this node's relay envelopes and to presence
    /// changes, and starts the housekeeping task. Must run inside a tokio runtime.
    pub async fn start(config: EngineConfig, adapters: Adapters) -> Result<Engine> {
        let relay_stream = adapters.relay.subscribe(config.node_id).await?;
        let presence_stream = adapters.presence.changes().await?;
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                a: adapters,
                stats: EngineStats::default(),
                sessions: Sharded::new(),
                watchers: Sharded::new(),
                slots: Sharded::new(),
                large: interest::LargeThreads::default(),
                retry: Mutex::new(VecDeque::new()),
                retry_wake: Arc::new(tokio::sync::Notify::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let weak = Arc::downgrade(&engine.inner);
        let retry_task = tokio::spawn({
            let weak = weak.clone();
            let wake = engine.inner.retry_wake.clone();
            async move {
                const FIRST: Duration = Duration::from_millis(100);
                let mut backoff = FIRST;
                loop {
                    let woken = wake.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    let waiting = match weak.upgrade() {
                        Some(inner) => !lock(&inner.retry).is_empty(),
                        None => break,
                    };
                    if !waiting {
                        backoff = FIRST;
                        woken.await;
                        continue;
                    }
                    // The backoff between tries (a timer, not a synchronisation).
                    tokio::time::sleep(backoff).await;
                    let Some(inner) = weak.upgrade() else { break };
                    backoff = if (Engine { inner }).retry_relay().await {
                        FIRST
                    } else {
                        (backoff * 2).min(Duration::from_secs(2))
                    };
                }
            }
        });
        let relay_task = tokio::spawn({
            let weak = weak.clone();
            let mut stream = relay_stream;
            async move {
                while let Some(env) = stream.next().await {
                    let Some(inner) = weak.upgrade() else { break };
                    Engine { inner }.deliver_envelope(env).await;
                }
                tracing::debug!("relay stream ended");
            }
        });
        let presence_task = tokio::spawn({
            let weak = weak.clone();
            let mut stream = presence_stream;
            async move {
                while let Some(change) = stream.next().await {
                    let Some(inner) = weak.upgrade() else { break };
                    Engine { inner }.presence_changed(change);
                }
                tracing::debug!("presence stream ended");
            }
        });
        let sweep_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                Engine { inner }.sweep();
            }
        });
        engine
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([relay_task, presence_task, sweep_task, retry_task]);
        Ok(engine)
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The engine's counters.
    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// Number of sessions connected to this node.
    pub fn local_sessions(&self) -> usize {
        let mut n = 0;
        self.inner
            .sessions
            .for_each_shard(|m| n += m.values().map(Vec::len).sum::<usize>());
        n
    }

    /// Stops the background tasks and closes every local session with
    /// [`CloseReason::Shutdown`].
    pub fn shutdown(&self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.inner.sessions.for_each_shard(|m| {
            for s in m.values().flatten() {
                s.close_with(CloseReason::Shutdown);
            }
        });
    }

    /// Opens a session for an authenticated user: registers it in the directory, marks
    /// the user online and queues `welcome`. Fails with `unavailable` when the directory
    /// or presence backend is down (nothing is left registered then).
    pub async fn connect(&self, user: UserId) -> Result<Session> {
        let inner = &self.inner;
        let session_id = SessionId::from_id(inner.a.ids.next_id().get());
        let shared = Arc::new(SessionShared::new(
            session_id.clone(),
            user.clone(),
            inner.config.outbound_queue,
            inner.config.max_sends_in_flight,
        ));
        let entry = SessionEntry {
            user_id: user.clone(),
            session_id: session_id.clone(),
            node: inner.config.node_id,
        };
        inner.a.directory.register(&entry).await?;
        if let Err(e) = inner
            .a
            .presence
            .set_online(&user, &session_id, inner.config.node_id)
            .await
        {
            let _ = inner.a.directory.unregister(&entry).await;
            return Err(e);
        }
        // `welcome` is queued before the session becomes visible to delivery, so it is
        // the session's first frame even while other sessions' messages are being
        // delivered on other tasks.
        let welcome = ServerFrame::Welcome {
            user_id: user.clone(),
            session_id,
            server_time: now_ms(),
        };
        shared.push(Outbound {
            frame: Bytes::from(welcome.encode()),
            kind: "welcome",
            accepted_at: None,
        });
        {
            let mut shard = inner.sessions.shard(&user);
            let list = shard.entry(user.clone()).or_default();
            // Exact: most users have one session (a first push would make room for four).
            list.reserve_exact(1);
            list.push(shared.clone());
        }
        inner.large.session_added(&user, &shared);
        Ok(Session {
            outbox: Outbox::new(shared.clone()),
            handle: SessionHandle { shared },
        })
    }

    /// Ends a session: it stops receiving, leaves the directory and, after the presence
    /// grace period, stops counting towards its user's presence.
    pub async fn disconnect(&self, session: &SessionHandle) {
        let inner = &self.inner;
        let s = &session.shared;
        let last_seen = now_ms();
        s.end();
        {
            let mut shard = inner.sessions.shard(&s.user);
            if let Some(list) = shard.get_mut(&s.user) {
                list.retain(|x| !Arc::ptr_eq(x, s));
                if list.is_empty() {
                    shard.remove(&s.user);
                }
            }
        }
        inner.large.session_removed(&s.user, s);
        let subs: Vec<UserId> = s.take_subscriptions();
        for watched in subs {
            self.unwatch(&watched, s);
        }
        let entry = SessionEntry {
            user_id: s.user.clone(),
            session_id: s.id.clone(),
            node: inner.config.node_id,
        };
        if let Err(e) = inner.a.directory.unregister(&entry).await {
            tracing::warn!(session = %s.id, error = %e, "could not unregister session");
        }
        let presence = inner.a.presence.clone();
        let grace = inner.config.presence_grace;
        let (user, sid) = (s.user.clone(), s.id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Err(e) = presence.set_offline(&user, &sid, last_seen).await {
                tracing::warn!(user = %user, error = %e, "could not record presence offline");
            }
        });
    }

    /// Decodes and handles one text frame from `session`. Replies and errors are queued
    /// on the session's outbox.
    pub async fn handle_text(&self, session: &SessionHandle, text: &str) {
        match decode_client_borrowed(text) {
            Ok(Decoded::Send {
                req_id,
                thread_id,
                temp_id,
                text,
            }) => match self.thread_id_of(&thread_id) {
                Ok(thread_id) => {
                    let (temp_id, text) = (temp_id.into_owned(), text.into_owned());
                    self.handle_send(&session.shared, req_id, thread_id, temp_id, text)
                        .await
                }
                Err(e) => {
                    let e = Error::from(e);
                    let code = self.error_code(&session.shared, &e);
                    self.reply(
                        &session.shared,
                        ServerFrame::error(req_id, code, e.message()),
                    );
                }
            },
            Ok(Decoded::Other(req)) => self.handle(session, req).await,
            Err(e) => {
                self.inner.stats.error(e.code);
                self.reply(
                    &session.shared,
                    ServerFrame::error(e.req_id, e.code, e.message),
                );
            }
        }
    }

    /// Handles one decoded request from `session`.
    ///
    /// Replies leave in request order. A `send_message` is admitted and queued on its
    /// thread (group commit): several sends of a session may wait for the store at once,
    /// and this returns before the send's reply. Any other frame first waits until the
    /// session's earlier sends are answered, so it sees their effects (a `fetch_history`
    /// after a send includes it) and its reply comes after theirs.
    pub async fn handle(&self, session: &SessionHandle, req: Request) {
        let s = &session.shared;
        let req_id = req.req_id;
        let frame = match req.frame {
            ClientFrame::SendMessage {
                thread_id,
                temp_id,
                text,
            } => {
                self.handle_send(s, req_id, thread_id, temp_id, text).await;
                return;
            }
            other => other,
        };
        s.wait_sends_settled().await;
        let result = match frame {
            // Handled above; a frame is never both.
            ClientFrame::SendMessage { .. } => Ok(()),
            ClientFrame::MessageAck {
                thread_id,
                message_id,
                status,
            } => self.ack(s, thread_id, message_id, status).await,
            ClientFrame::CreateThread(c) => self.create_thread(s, req_id.clone(), c).await,
            ClientFrame::AddMembers { thread_id, members } => {
                self.add_members(s, req_id.clone(), thread_id, members)
                    .await
            }
            ClientFrame::LeaveThread { thread_id } => {
                self.leave(s, req_id.clone(), thread_id).await
            }
            ClientFrame::ListThreads {} => self.list_threads(s, req_id.clone()).await,
            ClientFrame::FetchHistory {
                thread_id,
                before_seq,
                after_seq,
                limit,
            } => {
                self.fetch_history(s, req_id.clone(), thread_id, before_seq, after_seq, limit)
                    .await
            }
            ClientFrame::PresenceSubscribe { user_ids } => {
                self.presence_subscribe(s, req_id.clone(), user_ids).await
            }
            ClientFrame::PresenceUnsubscribe { user_ids } => {
                for u in user_ids {
                    if s.subscriptions().remove(&u) {
                        self.unwatch(&u, s);
                    }
                }
                Ok(())
            }
            ClientFrame::Typing { thread_id, typing } => self.typing(s, thread_id, typing).await,
            ClientFrame::Ping {} => {
                self.reply(
                    s,
                    ServerFrame::Pong {
                        req_id: req_id.clone(),
                    },
                );
                Ok(())
            }
            ClientFrame::RegisterPushTarget {
                platform,
                token,
                subscription,
                app_id,
                locale,
                sandbox,
            } => {
                let r = push::Registration {
                    platform,
                    token,
                    subscription,
                    app_id,
                    locale,
                    sandbox: sandbox.unwrap_or(false),
                };
                self.register_push_target(s, req_id.clone(), r).await
            }
            ClientFrame::UnregisterPushTarget { target_id } => {
                self.unregister_push_target(s, req_id.clone(), target_id)
                    .await
            }
            ClientFrame::ListPushTargets {} => self.list_push_targets(s, req_id.clone()).await,
            ClientFrame::MuteThread { thread_id, until } => {
                self.mute_thread(s, req_id.clone(), thread_id, until).await
            }
            ClientFrame::UnmuteThread { thread_id } => {
                self.unmute_thread(s, req_id.clone(), thread_id).await
            }
        };
        if let Err(e) = result {
            let code = self.error_code(s, &e);
            self.reply(s, ServerFrame::error(req_id, code, error_message(&e)));
        }
    }

    /// A `send_message`: takes its reply ticket, then admits it (see
    /// [`send_message`](Self::send_message)) or answers the ticket with the error.
    async fn handle_send(
        &self,
        s: &Arc<SessionShared>,
        req_id: Option<ReqId>,
        thread_id: ThreadId,
        temp_id: String,
        text: String,
    ) {
        let ticket = s.reserve_reply();
        let admitted = self
            .send_message(s, ticket, &req_id, thread_id, temp_id, text)
            .await;
        if let Err(e) = admitted {
            let code = self.error_code(s, &e);
            let error = ServerFrame::error(req_id, code, error_message(&e));
            self.fill_reply(s, ticket, error);
        }
    }

    /// The id of a thread a frame names: the engine's own copy when the thread has a
    /// slot here (it sent or delivered recently; no allocation), else a new one.
    fn thread_id_of(&self, s: &str) -> std::result::Result<ThreadId, crate::ids::InvalidId> {
        if let Some((id, _)) = self.inner.slots.shard(s).get_key_value(s) {
            return Ok(id.clone());
        }
        ThreadId::new(s)
    }

    /// The protocol code for an error answered to `s`; counts and logs it.
    fn error_code(&self, s: &SessionShared, e: &Error) -> &'static str {
        let code = e.kind().code();
        self.inner.stats.error(code);
        if matches!(e.kind(), ErrorKind::Internal) {
            tracing::error!(session = %s.id, error = %e, "internal error");
        } else if e.is_transient() {
            tracing::warn!(session = %s.id, error = %e, "backend unavailable");
        }
        code
    }

    /// Queues a direct reply on `s`, behind the session's replies still pending.
    fn reply(&self, s: &SessionShared, frame: ServerFrame) {
        let kind = frame.type_name();
        let out = Outbound {
            frame: Bytes::from(frame.encode()),
            kind,
            accepted_at: None,
        };
        if s.reply_in_order(out) == session::Pushed::KickedNow {
            self.inner
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers the request that holds `ticket` (see [`SessionShared::reserve_reply`]).
    fn fill_reply(&self, s: &SessionShared, ticket: u64, frame: ServerFrame) {
        let kind = frame.type_name();
        let out = Outbound {
            frame: Bytes::from(frame.encode()),
            kind,
            accepted_at: None,
        };
        self.fill_reply_encoded(s, ticket, out);
    }

    /// [`fill_reply`](Self::fill_reply) with a frame already encoded.
    fn fill_reply_encoded(&self, s: &SessionShared, ticket: u64, out: Outbound) {
        if s.fill_reply(ticket, out) == session::Pushed::KickedNow {
            self.inner
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn push_to(&self, s: &SessionShared, out: Outbound) {
        if s.push(out) == session::Pushed::KickedNow {
            self.inner
                .stats
                .slow_consumers
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The thread, checking that `user` is a member: `not_found` or `forbidden`.
    async fn member_thread(&self, thread_id: &ThreadId, user: &UserId) -> Result<Arc<ThreadInfo>> {
        let threads = &self.inner.a.threads;
        let thread = match threads.get_thread_now(thread_id) {
            Some(now) => now?,
            None => threads.get_thread(thread_id).await?.map(Arc::new),
        };
        let thread = thread.ok_or_else(|| Error::not_found(format!("no thread {thread_id}")))?;
        if !thread.is_member(user) {
            return Err(Error::forbidden(format!("not a member of {thread_id}")));
        }
        Ok(thread)
    }

    fn slot(&self, thread: &ThreadId) -> Arc<ThreadSlot> {
        self.inner
            .slots
            .shard(thread)
            .entry(thread.clone())
            .or_insert_with(|| {
                Arc::new(ThreadSlot {
                    commit: commit::CommitQueue::default(),
                    order: Mutex::new(order::OrderState::new()),
                })
            })
            .clone()
    }

    /// Admits a send: validates it, checks membership, waits for one of the session's
    /// in-flight slots, and queues it on its thread (see [`commit`]). Its reply fills
    /// `ticket` when the thread's batch is durable. On an error nothing is queued and the
    /// caller answers the ticket.
    async fn send_message(
        &self,
        s: &Arc<SessionShared>,
        ticket: u64,
        req_id: &Option<ReqId>,
        thread_id: ThreadId,
        temp_id: String,
        text: String,
    ) -> Result<()> {
        let cfg = &self.inner.config;
        if temp_id.is_empty() || temp_id.len() > cfg.max_temp_id_bytes {
            return Err(Error::bad_request(format!(
                "temp_id must be 1 to {} bytes",
                cfg.max_temp_id_bytes
            )));
        }
        if text.len() > cfg.max_text_bytes {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "text is {} bytes; the limit is {}",
                    text.len(),
                    cfg.max_text_bytes
                ),
            ));
        }
        if text.is_empty() {
            return Err(Error::bad_request("text must not be empty"));
        }
        let thread = self.member_thread(&thread_id, &s.user).await?;
        let large = self.large_interest(&thread);
        s.take_send_slot().await;
        let reply = commit::ReplyTo::new(s.clone(), ticket, req_id.clone());
        let msg = NewMessage {
            thread_id,
            message_id: self.inner.a.ids.next_id(),
            sender_id: s.user.clone(),
            temp_id,
            text,
            sent_at: now_ms(),
        };
        let slot = self.slot(&msg.thread_id);
        self.enqueue_send(
            &slot,
            commit::PendingSend {
                msg,
                thread,
                large,
                reply,
            },
        );
        Ok(())
    }

    /// This node's interest in `thread` if it is large (see [`interest`]).
    fn large_interest(&self, thread: &ThreadInfo) -> Option<Arc<interest::Interest>> {
        let inner = &self.inner;
        (thread.members.len() > inner.config.large_group_threshold).then(|| {
            inner
                .large
                .get(&thread.thread_id, &thread.members, &inner.sessions)
        })
    }

    /// A stored message's last steps: the event log, and push for the members with no
    /// session (`None`: unknown, the directory could not be read). `large`: the thread's
    /// interest when it is large (its push turn throttles push).
    fn accepted(
        &self,
        thread: &ThreadInfo,
        m: &StoredMessage,
        offline: Option<Vec<UserId>>,
        large: Option<&interest::Interest>,
    ) {
        let offline_known = offline.is_some();
        let offline = offline.unwrap_or_default();
        // No event (and no copy of the text) for a sink that takes none.
        if self.inner.a.events.enabled() {
            self.publish(
                Some(m.message_id.into()),
                EventBody::MessageCreated(MessageCreated {
                    thread_id: m.thread_id.clone(),
                    thread_kind: thread.kind,
                    message_id: m.message_id,
                    seq: m.seq,
                    sender_id: m.sender_id.clone(),
                    text: m.text.clone(),
                    sent_at: m.sent_at,
                    member_count: thread.members.len(),
                    offline: offline.clone(),
                    offline_known,
                }),
            );
        }
        if !offline.is_empty() {
            self.push_offline(m, offline, large);
        }
    }

    /// Hands an event to the event sink (never blocks). A message's event reuses the
    /// message id; other events get a fresh id.
    fn publish(&self, id: Option<EventId>, body: EventBody) {
        let inner = &self.inner;
        if !inner.a.events.enabled() {
            return;
        }
        let id = id.unwrap_or_else(|| inner.a.ids.next_id().into());
        inner.a.events.publish(Event {
            id,
            created_at: now_ms(),
            node: inner.config.node_id,
            body,
        });
        inner.stats.events_published.fetch_add(1, Ordering::Relaxed);
    }

    fn publish_membership(
        &self,
        make: fn(MembershipChanged) -> EventBody,
        t: &ThreadInfo,
        by: &UserId,
        changed: Vec<UserId>,
    ) {
        self.publish(
            None,
            make(MembershipChanged {
                thread_id: t.thread_id.clone(),
                kind: t.kind,
                title: t.title.clone(),
                by: by.clone(),
                members: t.members.clone(),
                changed,
            }),
        );
    }

    /// Sends `env` to `node`; on failure keeps it for another try when `retry` (see
    /// [`EngineConfig::relay_retry_for`]).
    async fn relay_send(&self, node: NodeId, env: Envelope, retry: bool) {
        let inner = &self.inner;
        let (attempt, kept) = if retry && !inner.config.relay_retry_for.is_zero() {
            (env.clone(), Some(env))
        } else {
            (env, None)
        };
        match inner.a.relay.send(node, attempt).await {
            Ok(()) => {
                inner.stats.relay_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                inner.stats.relay_failures.fetch_add(1, Ordering::Relaxed);
                let Some(env) = kept else {
                    tracing::warn!(node = %node, error = %e,
                        "relay send failed: those members get it on catch-up");
                    return;
                };
                tracing::warn!(node = %node, error = %e,
                    "relay send failed: kept for another try (and those members catch up anyway)");
                let first = {
                    let mut q = lock(&inner.retry);
                    q.push_back((node, env, Instant::now()));
                    let cap = inner.config.relay_retry_capacity;
                    self.drop_kept(&mut q, |q| q.len() > cap);
                    q.len() == 1
                };
                if first {
                    inner.retry_wake.notify_one();
                }
            }
        }
    }

    /// Drops the oldest kept envelopes while `over` says so; counts and returns them.
    fn drop_kept(
        &self,
        q: &mut VecDeque<(NodeId, Envelope, Instant)>,
        over: impl Fn(&VecDeque<(NodeId, Envelope, Instant)>) -> bool,
    ) -> u64 {
        let mut dropped = 0;
        while over(q) && q.pop_front().is_some() {
            dropped += 1;
        }
        if dropped > 0 {
            self.inner
                .stats
                .relay_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        dropped
    }

    /// Resends the envelopes waiting for another try, oldest first, until one fails
    /// (it goes back to the front; false) or none is left (true). Those older than
    /// [`EngineConfig::relay_retry_for`] are dropped.
    async fn retry_relay(&self) -> bool {
        let inner = &self.inner;
        loop {
            let next = {
                let mut q = lock(&inner.retry);
                let now = Instant::now();
                let keep = inner.config.relay_retry_for;
                let dropped = self.drop_kept(&mut q, |q| {
                    q.front()
                        .is_some_and(|(_, _, at)| now.duration_since(*at) > keep)
                });
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "relay: envelopes given up after failed sends; \
                        those members get them on catch-up"
                    );
                }
                q.pop_front()
            };
            let Some((node, env, at)) = next else {
                return true;
            };
            match inner.a.relay.send(node, env.clone()).await {
                Ok(()) => {
                    inner.stats.relay_sent.fetch_add(1, Ordering::Relaxed);
                    inner.stats.relay_retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    lock(&inner.retry).push_front((node, env, at));
                    return false;
                }
            }
        }
    }

    /// Hands `users` to the push sink on a task of its own (never blocks delivery); in a
    /// large thread only when the thread's push turn has come (see [`interest`]).
    fn push_offline(
        &self,
        m: &StoredMessage,
        users: Vec<UserId>,
        large: Option<&interest::Interest>,
    ) {
        let every = self.inner.config.large_group_push_interval;
        if let Some(i) = large {
            if !i.take_push_turn(Instant::now(), every) {
                return;
            }
        }
        let engine = self.clone();
        let m = m.clone();
        tokio::spawn(async move {
            let pushes = users.into_iter().map(|user_id| {
                let n = PushNotification {
                    user_id,
                    thread_id: m.thread_id.clone(),
                    message_id: m.message_id,
                    seq: m.seq,
                    sender_id: m.sender_id.clone(),
                    text: m.text.clone(),
                    sent_at: m.sent_at,
                };
                let engine = engine.clone();
                async move {
                    let user = n.user_id.clone();
                    match engine.inner.a.push.push(n).await {
                        Ok(()) => {
                            engine.inner.stats.pushes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            engine
                                .inner
                                .stats
                                .push_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(user = %user, error = %e, "push failed");
                        }
                    }
                }
            });
            futures::future::join_all(pushes).await;
        });
    }

    fn deliver_ordered(&self, slot: &Arc<ThreadSlot>, seq: u64, d: Delivery) {
        let mut st = slot.order.lock().unwrap_or_else(|p| p.into_inner());
        match st.admit(seq, d) {
            order::Admit::Deliver(first, then) => {
                self.deliver_local(&first);
                for d in then {
                    self.deliver_local(&d);
                }
            }
            order::Admit::Buffered => {}
            order::Admit::BufferedArmTimer => {
                let engine = self.clone();
                let slot = slot.clone();
                let window = self.inner.config.reorder_window;
                tokio::spawn(async move {
                    tokio::time::sleep(window).await;
                    let mut st = slot.order.lock().unwrap_or_else(|p| p.into_inner());
                    for d in st.flush() {
                        engine.deliver_local(&d);
                    }
                });
            }
        }
    }

    /// Writes a delivery to every local session of its users (except one).
    fn deliver_local(&self, d: &Delivery) {
        let out = || Outbound {
            frame: d.frame.clone(),
            kind: d.kind,
            accepted_at: d.accepted_at,
        };
        let users = match &d.to {
            Recipients::Users(users) => users,
            Recipients::Members(t) => &t.members,
            Recipients::Large(i) => {
                i.for_each_session(d.except.as_ref(), |t| self.push_to(t, out()));
                return;
            }
        };
        for user in users {
            // Pushing never blocks (a full queue closes the session), so the shard lock
            // is held only for the pushes, and no list of sessions is cloned per send.
            let shard = self.inner.sessions.shard(user);
            let Some(targets) = shard.get(user) else {
                continue;
            };
            for t in targets {
                if d.except.as_ref() == Some(&t.id) {
                    continue;
                }
                self.push_to(t, out());
            }
        }
    }

    /// Delivers an envelope from another node to the local sessions it names. Envelopes
    /// are handled one at a time, in the order the relay hands them over.
    async fn deliver_envelope(&self, env: Envelope) {
        let to = match env.to {
            EnvelopeTo::Users(users) => Recipients::Users(users),
            EnvelopeTo::MembersOf(t) => match self.resolve_members_of(&t).await {
                Some(i) => Recipients::Large(i),
                None => return,
            },
        };
        let d = Delivery {
            to,
            except: env.except_session,
            kind: frame_kind(&env.frame),
            frame: Bytes::from(env.frame),
            accepted_at: Some(Instant::now()),
        };
        match env.order {
            Some((thread, seq)) => {
                let slot = self.slot(&thread);
                self.deliver_ordered(&slot, seq, d);
            }
            None => self.deliver_local(&d),
        }
    }

    /// This node's interest in a large thread for the member list an envelope names:
    /// the one it has when the fingerprints agree, else one built from the thread as
    /// the thread store has it now (membership changed since: the current members get
    /// it, a member who left does not). `None` when the thread cannot be read (the
    /// members on this node get the message on catch-up).
    async fn resolve_members_of(&self, t: &ThreadMembers) -> Option<Arc<interest::Interest>> {
        let inner = &self.inner;
        if let Some(i) = inner.large.current(&t.thread_id, t.fingerprint) {
            return Some(i);
        }
        match inner.a.threads.get_thread(&t.thread_id).await {
            Ok(Some(thread)) => {
                let i = inner
                    .large
                    .get(&thread.thread_id, &thread.members, &inner.sessions);
                if i.fingerprint() != t.fingerprint {
                    tracing::debug!(thread = %t.thread_id,
                        "membership changed since the send: delivered to the current members");
                }
                Some(i)
            }
            Ok(None) => {
                tracing::warn!(thread = %t.thread_id, "envelope for an unknown thread: skipped");
                None
            }
            Err(e) => {
                tracing::warn!(thread = %t.thread_id, error = %e,
                    "could not read a large thread's members: its sessions on this node get \
                     the message on catch-up");
                None
            }
        }
    }

    /// Sends a frame to users' sessions on every node (except one session).
    async fn route(&self, users: Vec<UserId>, except: Option<SessionId>, frame: ServerFrame) {
        if users.is_empty() {
            return;
        }
        let encoded = frame.encode();
        let d = Delivery {
            to: Recipients::Users(users.clone()),
            except: except.clone(),
            frame: Bytes::from(encoded.clone()),
            kind: frame.type_name(),
            accepted_at: None,
        };
        self.deliver_local(&d);
        let inner = &self.inner;
        if inner.config.single_node {
            return;
        }
        let me = inner.config.node_id;
        let found = match inner.a.directory.lookup(&users).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, kind = d.kind, "directory lookup failed: remote sessions miss this event");
                return;
            }
        };
        let mut by_node: HashMap<NodeId, Vec<UserId>> = HashMap::new();
        for (user, entries) in users.iter().zip(found) {
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
        // A typing indicator is worth nothing late: not kept for another try.
        let retry = d.kind != "typing";
        let sends = by_node.into_iter().map(|(node, users)| {
            self.relay_send(
                node,
                Envelope {
                    from_node: me,
                    to: EnvelopeTo::Users(users),
                    except_session: except.clone(),
                    order: None,
                    frame: encoded.clone(),
                },
                retry,
            )
        });
        futures::future::join_all(sends).await;
    }

    async fn ack(
        &self,
        s: &SessionShared,
        thread_id: ThreadId,
        message_id: MessageId,
        status: AckStatus,
    ) -> Result<()> {
        self.member_thread(&thread_id, &s.user).await?;
        let m = self
            .inner
            .a
            .messages
            .get(&thread_id, message_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no message {message_id} in {thread_id}")))?;
        let upd = self
            .inner
            .a
            .threads
            .advance_watermark(&thread_id, &s.user, status, m.seq)
            .await?;
        if !upd.advanced {
            return Ok(());
        }
        self.inner.stats.acks.fetch_add(1, Ordering::Relaxed);
        self.publish(
            None,
            EventBody::ReceiptUpdated(ReceiptUpdated {
                thread_id: thread_id.clone(),
                user_id: s.user.clone(),
                status,
                seq: m.seq,
                message_id,
                sender_id: m.sender_id.clone(),
            }),
        );
        let mut users = Vec::with_capacity(2);
        if m.sender_id != s.user {
            users.push(m.sender_id.clone());
        }
        if status == AckStatus::Read {
            users.push(s.user.clone());
        }
        let frame = ServerFrame::MessageAck {
            thread_id,
            message_id,
            seq: m.seq,
            status,
            user_id: s.user.clone(),
            at: now_ms(),
        };
        self.route(users, Some(s.id.clone()), frame).await;
        Ok(())
    }

    fn distinct_others(members: &[UserId], me: &UserId) -> Vec<UserId> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            if m != me && seen.insert(m.clone()) {
                out.push(m.clone());
            }
        }
        out
    }

    async fn create_thread(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        c: CreateThread,
    ) -> Result<()> {
        let cfg = &self.inner.config;
        let now = now_ms();
        let new = match c.kind {
            ThreadKind::Direct => {
                if c.members.len() != 1 || c.members[0] == s.user {
                    return Err(Error::bad_request(
                        "a direct thread takes exactly one member: the other user",
                    ));
                }
                let other = c.members[0].clone();
                NewThread {
                    thread_id: ThreadId::direct(&s.user, &other),
                    kind: ThreadKind::Direct,
                    title: None,
                    members: vec![s.user.clone(), other],
                    created_at: now,
                }
            }
            ThreadKind::Group => {
                if let Some(t) = &c.title {
                    if t.len() > cfg.max_title_bytes {
                        return Err(Error::bad_request(format!(
                            "title is longer than {} bytes",
                            cfg.max_title_bytes
                        )));
                    }
                }
                let others = Self::distinct_others(&c.members, &s.user);
                if others.len() + 1 > cfg.max_group_members {
                    return Err(Error::bad_request(format!(
                        "a group has at most {} members",
                        cfg.max_group_members
                    )));
                }
                let mut members = Vec::with_capacity(others.len() + 1);
                members.push(s.user.clone());
                members.extend(others);
                NewThread {
                    thread_id: ThreadId::group(self.inner.a.ids.next_id()),
                    kind: ThreadKind::Group,
                    title: c.title,
                    members,
                    created_at: now,
                }
            }
        };
        let wanted = new.members.clone();
        let created = self.inner.a.threads.create_thread(new).await?;
        let t = created.thread;
        if t.kind == ThreadKind::Direct && !wanted.iter().all(|u| t.is_member(u)) {
            return Err(Error::internal(format!(
                "direct thread {} exists with other members",
                t.thread_id
            )));
        }
        self.reply(s, thread_frame(req_id, &t));
        if created.created {
            self.publish_membership(EventBody::ThreadCreated, &t, &s.user, t.members.clone());
            let others: Vec<UserId> = t.members.clone();
            self.route(others, Some(s.id.clone()), thread_frame(None, &t))
                .await;
        }
        Ok(())
    }

    async fn add_members(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        thread_id: ThreadId,
        members: Vec<UserId>,
    ) -> Result<()> {
        let thread = self.member_thread(&thread_id, &s.user).await?;
        if thread.kind != ThreadKind::Group {
            return Err(Error::forbidden("members can only be added to a group"));
        }
        let add = Self::distinct_others(&members, &s.user);
        let new_count = thread.members.len() + add.iter().filter(|u| !thread.is_member(u)).count();
        if new_count > self.inner.config.max_group_members {
            return Err(Error::bad_request(format!(
                "a group has at most {} members",
                self.inner.config.max_group_members
            )));
        }
        let change = self.inner.a.threads.add_members(&thread_id, &add).await?;
        let t = change.thread;
        self.reply(s, thread_frame(req_id, &t));
        if !change.changed.is_empty() {
            self.publish_membership(EventBody::MembersAdded, &t, &s.user, change.changed);
            self.route(
                t.members.clone(),
                Some(s.id.clone()),
                thread_frame(None, &t),
            )
            .await;
        }
        Ok(())
    }

    async fn leave(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        thread_id: ThreadId,
    ) -> Result<()> {
        let thread = self.member_thread(&thread_id, &s.user).await?;
        if thread.kind != ThreadKind::Group {
            return Err(Error::forbidden("a direct thread cannot be left"));
        }
        let change = self
            .inner
            .a
            .threads
            .remove_member(&thread_id, &s.user)
            .await?;
        let t = change.thread;
        self.reply(s, thread_frame(req_id, &t));
        if !change.changed.is_empty() {
            self.publish_membership(EventBody::MemberLeft, &t, &s.user, change.changed);
        }
        let mut users = t.members.clone();
        users.push(s.user.clone());
        self.route(users, Some(s.id.clone()), thread_frame(None, &t))
            .await;
        Ok(())
    }

    async fn list_threads(&self, s: &SessionShared, req_id: Option<ReqId>) -> Result<()> {
        let a = &self.inner.a;
        let list = a.threads.list_user_threads(&s.user).await?;
        let ids: Vec<ThreadId> = list.iter().map(|t| t.thread.thread_id.clone()).collect();
        let last = a.messages.last_seqs(&ids).await?;
        let mutes = self.active_mutes(&s.user).await;
        // Unread counts are one store read per thread with unread messages (a scan on
        // HBase): run a few at once rather than one after another, so a user with many
        // threads waits for the slowest few reads, not for their sum.
        let user = &s.user;
        let reads: Vec<_> = list
            .iter()
            .zip(&last)
            .map(|(ut, &last_seq)| {
                let mine = ut
                    .receipts
                    .iter()
                    .find(|(u, _)| u == user)
                    .map(|(_, w)| w.read_seq)
                    .unwrap_or(0);
                let thread = &ut.thread.thread_id;
                async move {
                    if mine >= last_seq {
                        Ok(0)
                    } else {
                        a.messages.count_unread(thread, user, mine).await
                    }
                }
            })
            .collect();
        let unread: Vec<u64> = futures::stream::iter(reads)
            .buffered(UNREAD_READS_AT_ONCE)
            .try_collect()
            .await?;
        let mut threads = Vec::with_capacity(list.len());
        for ((ut, last_seq), unread) in list.into_iter().zip(last).zip(unread) {
            let mut receipts: BTreeMap<UserId, Receipt> = ut
                .thread
                .members
                .iter()
                .map(|u| {
                    (
                        u.clone(),
                        Receipt {
                            delivered_seq: 0,
                            read_seq: 0,
                        },
                    )
                })
                .collect();
            for (u, w) in ut.receipts {
                if let Some(r) = receipts.get_mut(&u) {
                    *r = Receipt {
                        delivered_seq: w.delivered_seq,
                        read_seq: w.read_seq,
                    };
                }
            }
            let mute = mutes.get(&ut.thread.thread_id);
            threads.push(ThreadSummary {
                muted: mute.is_some(),
                muted_until: mute.copied().flatten(),
                thread_id: ut.thread.thread_id,
                kind: ut.thread.kind,
                title: ut.thread.title,
                members: ut.thread.members,
                last_seq,
                receipts,
                unread,
            });
        }
        self.reply(s, ServerFrame::Threads { req_id, threads });
        Ok(())
    }

    async fn fetch_history(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        thread_id: ThreadId,
        before_seq: Option<u64>,
        after_seq: Option<u64>,
        limit: Option<u64>,
    ) -> Result<()> {
        let cfg = &self.inner.config;
        let limit = match limit {
            None => cfg.default_history_limit,
            Some(0) => return Err(Error::bad_request("limit must be at least 1")),
            Some(n) => (n.min(cfg.max_history_limit as u64)) as usize,
        };
        self.member_thread(&thread_id, &s.user).await?;
        let page = self
            .inner
            .a
            .messages
            .fetch(
                &thread_id,
                HistoryQuery {
                    before_seq,
                    after_seq,
                    limit,
                },
            )
            .await?;
        let messages = page
            .messages
            .into_iter()
            .map(|m| HistoryMessage {
                message_id: m.message_id,
                seq: m.seq,
                sender_id: m.sender_id,
                text: m.text,
                sent_at: m.sent_at,
            })
            .collect();
        self.reply(
            s,
            ServerFrame::History {
                req_id,
                thread_id,
                messages,
                has_more: page.has_more,
            },
        );
        Ok(())
    }

    async fn presence_subscribe(
        &self,
        s: &Arc<SessionShared>,
        req_id: Option<ReqId>,
        user_ids: Vec<UserId>,
    ) -> Result<()> {
        let mut wanted = Vec::with_capacity(user_ids.len());
        let mut seen = HashSet::new();
        for u in user_ids {
            if seen.insert(u.clone()) {
                wanted.push(u);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        if wanted.iter().any(|u| *u != s.user) {
            let threads = self.inner.a.threads.list_user_threads(&s.user).await?;
            let shared: HashSet<&UserId> = threads
                .iter()
                .flat_map(|t| t.thread.members.iter())
                .collect();
            let refused: Vec<&str> = wanted
                .iter()
                .filter(|u| **u != s.user && !shared.contains(u))
                .map(|u| u.as_str())
                .collect();
            if !refused.is_empty() {
                return Err(Error::forbidden(format!(
                    "no shared thread with: {}",
                    refused.join(", ")
                )));
            }
        }
        for u in &wanted {
            let new = s.subscriptions().insert(u.clone());
            if new {
                self.inner
                    .watchers
                    .shard(u)
                    .entry(u.clone())
                    .or_default()
                    .push(s.clone());
            }
        }
        let now = match self.inner.a.presence.get(&wanted).await {
            Ok(v) => v,
            Err(e) => {
                for u in &wanted {
                    if s.subscriptions().remove(u) {
                        self.unwatch(u, s);
                    }
                }
                return Err(e);
            }
        };
        for p in now {
            self.reply(s, presence_frame(req_id.clone(), p));
        }
        Ok(())
    }

    fn unwatch(&self, watched: &UserId, s: &Arc<SessionShared>) {
        let mut shard = self.inner.watchers.shard(watched);
        if let Some(list) = shard.get_mut(watched) {
            list.retain(|x| !Arc::ptr_eq(x, s));
            if list.is_empty() {
                shard.remove(watched);
            }
        }
    }

    fn presence_changed(&self, p: PresenceInfo) {
        let targets: Vec<Arc<SessionShared>> =
            match self.inner.watchers.shard(&p.user_id).get(&p.user_id) {
                Some(list) => list.clone(),
                None => return,
            };
        let frame = presence_frame(None, p);
        let bytes = Bytes::from(frame.encode());
        for t in targets {
            self.push_to(
                &t,
                Outbound {
                    frame: bytes.clone(),
                    kind: "presence",
                    accepted_at: None,
                },
            );
        }
    }

    async fn typing(&self, s: &SessionShared, thread_id: ThreadId, typing: bool) -> Result<()> {
        let thread = self.member_thread(&thread_id, &s.user).await?;
        let others: Vec<UserId> = thread
            .members
            .iter()
            .filter(|u| **u != s.user)
            .cloned()
            .collect();
        self.route(
            others,
            None,
            ServerFrame::Typing {
                thread_id,
                user_id: s.user.clone(),
                typing,
            },
        )
        .await;
        Ok(())
    }

    fn sweep(&self) {
        let now = Instant::now();
        let idle = Duration::from_secs(30);
        self.inner.slots.for_each_shard(|m| {
            m.retain(|_, slot| {
                if Arc::strong_count(slot) > 1 {
                    return true;
                }
                let st = slot.order.lock().unwrap_or_else(|p| p.into_inner());
                !(st.is_quiet() && st.idle_for(now) > idle)
            });
        });
        let every = self.inner.config.large_group_push_interval;
        self.inner.large.sweep(now, idle, every);
    }
}

/// The text of an `error` frame: transient failures say that nothing was accepted.
fn error_message(e: &Error) -> String {
    match e.kind() {
        ErrorKind::Unavailable | ErrorKind::Conflict => {
            format!("{}; nothing was accepted, retry later", e.message())
        }
        _ => e.message().to_string(),
    }
}

fn thread_frame(req_id: Option<ReqId>, t: &ThreadInfo) -> ServerFrame {
    ServerFrame::Thread {
        req_id,
        thread_id: t.thread_id.clone(),
        kind: t.kind,
        title: t.title.clone(),
        members: t.members.clone(),
    }
}

fn presence_frame(req_id: Option<ReqId>, p: PresenceInfo) -> ServerFrame {
    ServerFrame::Presence {
        req_id,
        user_id: p.user_id,
        status: p.status,
        last_seen: p.last_seen,
    }
}

/// The `type` of an encoded server frame, for metrics on relayed frames.
fn frame_kind(frame: &str) -> &'static str {
    const KINDS: [&str; 15] = [
        "receive_message",
        "message_ack",
        "message_sent",
        "thread",
        "threads",
        "typing",
        "presence",
        "history",
        "welcome",
        "pong",
        "error",
        "thread_mute",
        "push_targets",
        "push_target_removed",
        "push_target",
    ];
    let Some(rest) = frame.strip_prefix(r#"{"type":""#) else {
        return "other";
    };
    KINDS
        .iter()
        .find(|k| rest.starts_with(**k) && rest[k.len()..].starts_with('"'))
        .copied()
        .unwrap_or("other")
}
