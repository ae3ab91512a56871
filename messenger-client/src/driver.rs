//! The background task that owns the socket.
//!
//! [`Core`] is the protocol logic with no I/O: it takes connection events, server
//! frames, app commands and timer ticks, and queues frames to write and events to emit.
//! [`run`] wraps it with the WebSocket, the reconnect loop and the channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use messenger_core::model::AckStatus;
use messenger_core::protocol::{ClientFrame, ReqId, ServerFrame, ThreadSummary};
use messenger_core::{MessageId, SessionId, ThreadId, UserId};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::{ClientConfig, InitialSync};
use crate::error::ClientError;
use crate::event::{ConnectionState, Event, Message, Presence, Receipt, Sent, Thread, Typing};
use crate::outbox::{Outbox, SendReply};
use crate::sequencer::{Sequencer, Step};
use crate::HistoryPage;

/// How long a send refused as transient (`rate_limited`, `unavailable`) waits.
const SEND_RETRY: Duration = Duration::from_secs(1);
/// How long a catch-up refused as transient waits.
const CATCH_UP_RETRY: Duration = Duration::from_secs(1);
/// Housekeeping period: outbox retries, heartbeats, abandoned requests.
const TICK: Duration = Duration::from_millis(250);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A reply channel for a request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// What a handle asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue a message in the outbox (and write it if connected).
    Send {
        thread_id: ThreadId,
        temp_id: String,
        text: String,
        reply: SendReply,
    },
    /// A request with a direct reply.
    Request { frame: ClientFrame, reply: Want },
    /// A frame without a reply on success: confirmed by a `ping` right behind it.
    Fire {
        frame: ClientFrame,
        reply: Reply<()>,
    },
    /// Round trip.
    Ping { reply: Reply<Duration> },
    /// Stop for good.
    Close { reply: oneshot::Sender<()> },
}

/// The reply a request waits for.
#[derive(Debug)]
pub(crate) enum Want {
    Thread(Reply<Thread>),
    Threads(Reply<Vec<ThreadSummary>>),
    History(Reply<HistoryPage>),
    Presence(Reply<()>),
}

#[derive(Debug)]
enum Pending {
    Send {
        thread_id: ThreadId,
        temp_id: String,
    },
    Want(Want),
    /// The frame of a `Fire`; its confirmation waits under `ping`.
    FireHead {
        ping: u64,
    },
    FirePing {
        head: u64,
        reply: Reply<()>,
    },
    Ping(Instant, Reply<Duration>),
    CatchUpList,
    Fill {
        thread_id: ThreadId,
    },
}

/// The `req_id` of automatic `DELIVERED` acks: they have no reply on success, so they
/// are not tracked; a refusal is only logged.
const AUTO_ACK: &str = "auto-ack";

impl Pending {
    fn fail(self, err: ClientError) {
        match self {
            Pending::Want(Want::Thread(r)) => drop(r.send(Err(err))),
            Pending::Want(Want::Threads(r)) => drop(r.send(Err(err))),
            Pending::Want(Want::History(r)) => drop(r.send(Err(err))),
            Pending::Want(Want::Presence(r)) => drop(r.send(Err(err))),
            Pending::FirePing { reply, .. } => drop(reply.send(Err(err))),
            Pending::Ping(_, r) => drop(r.send(Err(err))),
            Pending::Send { .. }
            | Pending::FireHead { .. }
            | Pending::CatchUpList
            | Pending::Fill { .. } => {}
        }
    }

    /// The app stopped waiting (timed out or dropped the future).
    fn abandoned(&self) -> bool {
        match self {
            Pending::Want(Want::Thread(r)) => r.is_closed(),
            Pending::Want(Want::Threads(r)) => r.is_closed(),
            Pending::Want(Want::History(r)) => r.is_closed(),
            Pending::Want(Want::Presence(r)) => r.is_closed(),
            Pending::FirePing { reply, .. } => reply.is_closed(),
            Pending::Ping(_, r) => r.is_closed(),
            _ => false,
        }
    }
}

/// Whether a command stops the client.
pub(crate) enum Flow {
    Continue,
    Close(oneshot::Sender<()>),
}

/// The protocol state machine, without I/O.
pub(crate) struct Core {
    cfg: ClientConfig,
    outbox: Outbox,
    seq: Sequencer,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    user_id: Option<UserId>,
    /// The first catch-up (which applies [`InitialSync`]) is done.
    pub synced: bool,
    /// This connection's catch-up list was answered: the connection was healthy.
    pub session_synced: bool,
    catch_up_at: Option<Instant>,
    /// Per thread, the newest message from others not yet acked `DELIVERED`: acks go
    /// out on the next tick, one per thread, so a busy thread does not spend the
    /// session's rate limit on acks. Kept across reconnects.
    acks_due: HashMap<ThreadId, (u64, MessageId)>,
    /// Frames to write, in order.
    pub out: Vec<String>,
    /// Events to emit, in order.
    pub events: Vec<Event>,
}

impl Core {
    pub fn new(cfg: ClientConfig) -> Core {
        Core {
            cfg,
            outbox: Outbox::default(),
            seq: Sequencer::default(),
            pending: HashMap::new(),
            next_req: 1,
            user_id: None,
            synced: false,
            session_synced: false,
            catch_up_at: None,
            acks_due: HashMap::new(),
            out: Vec::new(),
            events: Vec::new(),
        }
    }

    fn request(&mut self, frame: &ClientFrame, p: Pending) -> u64 {
        let id = self.next_req;
        self.next_req += 1;
        self.out.push(frame.encode(Some(&ReqId::UInt(id))));
        self.pending.insert(id, p);
        id
    }

    /// Sends waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// A connection is up: emit the state, resend the outbox, start catch-up.
    pub fn connected(&mut self, user_id: UserId, session_id: SessionId, now: Instant) {
        self.user_id = Some(user_id.clone());
        self.session_synced = false;
        self.events
            .push(Event::Connection(ConnectionState::Connected {
                user_id,
                session_id,
            }));
        self.flush_outbox(now);
        self.catch_up();
    }

    fn catch_up(&mut self) {
        self.catch_up_at = None;
        self.request(&ClientFrame::ListThreads {}, Pending::CatchUpList);
    }

    fn flush_outbox(&mut self, now: Instant) {
        for (thread_id, temp_id, text) in self.outbox.due(now) {
            let frame = ClientFrame::SendMessage {
                thread_id: thread_id.clone(),
                temp_id: temp_id.clone(),
                text,
            };
            self.request(&frame, Pending::Send { thread_id, temp_id });
        }
    }

    /// The connection is gone: replies that were owed fail; sends stay in the outbox.
    pub fn connection_lost(&mut self) {
        for (_, p) in self.pending.drain() {
            p.fail(ClientError::Disconnected);
        }
        self.outbox.connection_lost();
        self.seq.connection_lost();
        self.out.clear();
    }

    /// The client stops for good.
    pub fn stop(&mut self, err: &ClientError) {
        for (_, p) in self.pending.drain() {
            p.fail(err.clone());
        }
        self.outbox.fail_all(err);
        self.out.clear();
    }

    /// A command while no connection is up.
    pub fn offline_command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Send {
                thread_id,
                temp_id,
                text,
                reply,
            } => {
                self.outbox.push(thread_id, temp_id, text, reply);
            }
            Command::Request { reply, .. } => Pending::Want(reply).fail(ClientError::Disconnected),
            Command::Fire { reply, .. } => drop(reply.send(Err(ClientError::Disconnected))),
            Command::Ping { reply } => drop(reply.send(Err(ClientError::Disconnected))),
            Command::Close { reply } => return Flow::Close(reply),
        }
        Flow::Continue
    }

    /// A command while connected.
    pub fn online_command(&mut self, cmd: Command, now: Instant) -> Flow {
        match cmd {
            Command::Send {
                thread_id,
                temp_id,
                text,
                reply,
            } => {
                if self.outbox.push(thread_id, temp_id, text, reply) {
                    self.flush_outbox(now);
                }
            }
            Command::Request { frame, reply } => {
                self.request(&frame, Pending::Want(reply));
            }
            Command::Fire { frame, reply } => {
                let ping = self.next_req + 1;
                let head = self.request(&frame, Pending::FireHead { ping });
                self.request(&ClientFrame::Ping {}, Pending::FirePing { head, reply });
            }
            Command::Ping { reply } => {
                self.request(&ClientFrame::Ping {}, Pending::Ping(now, reply));
            }
            Command::Close { reply } => return Flow::Close(reply),
        }
        Flow::Continue
    }

    /// Housekeeping while connected.
    pub fn tick(&mut self, now: Instant) {
        self.flush_outbox(now);
        for (thread_id, (_, message_id)) in std::mem::take(&mut self.acks_due) {
            let frame = ClientFrame::MessageAck {
                thread_id,
                message_id,
                status: AckStatus::Delivered,
            };
            self.out
                .push(frame.encode(Some(&ReqId::Str(AUTO_ACK.into()))));
        }
        if self.catch_up_at.is_some_and(|t| t <= now) {
            self.catch_up();
        }
        self.pending.retain(|_, p| !p.abandoned());
        // A confirmation nobody waits for any more takes its frame's entry with it.
        let pending = &self.pending;
        let orphans: Vec<u64> = pending
            .iter()
            .filter_map(|(id, p)| match p {
                Pending::FireHead { ping } if !pending.contains_key(ping) => Some(*id),
                _ => None,
            })
            .collect();
        for id in orphans {
            self.pending.remove(&id);
        }
    }

    fn take(&mut self, req_id: &Option<ReqId>) -> Option<Pending> {
        match req_id {
            Some(ReqId::UInt(n)) => self.pending.remove(n),
            _ => None,
        }
    }

    /// Hands a sequencer step to the app and asks for the fill it needs.
    fn apply(&mut self, thread_id: &ThreadId, step: Step) {
        for m in step.deliver {
            if self.cfg.auto_ack_delivered && Some(&m.sender_id) != self.user_id.as_ref() {
                let due = self
                    .acks_due
                    .entry(thread_id.clone())
                    .or_insert((0, m.message_id));
                if m.seq > due.0 {
                    *due = (m.seq, m.message_id);
                }
            }
            self.events.push(Event::Message(m));
        }
        if let Some(after) = step.fill_after {
            self.fetch_fill(thread_id, after);
        }
    }

    fn fetch_fill(&mut self, thread_id: &ThreadId, after: u64) {
        let frame = ClientFrame::FetchHistory {
            thread_id: thread_id.clone(),
            before_seq: None,
            after_seq: Some(after),
            limit: Some(self.cfg.fill_page),
        };
        self.request(
            &frame,
            Pending::Fill {
                thread_id: thread_id.clone(),
            },
        );
    }

    /// Before the first catch-up, a thread the client has no position for starts per
    /// [`InitialSync`]; a position from [`ClientConfig::resume`] always wins.
    fn position_unknown(&mut self, thread_id: &ThreadId, server_last: u64) {
        if self.seq.position(thread_id).is_some() {
            return;
        }
        if let Some(&last) = self.cfg.resume.get(thread_id) {
            self.seq.start_at(thread_id, last);
        } else if !self.synced && self.cfg.initial_sync == InitialSync::Latest {
            self.seq.start_at(thread_id, server_last);
        }
    }

    fn offer(&mut self, m: Message) {
        let thread_id = m.thread_id.clone();
        self.position_unknown(&thread_id, m.seq.saturating_sub(1));
        let step = self.seq.offer(m);
        self.apply(&thread_id, step);
    }

    /// A frame from the server.
    pub fn on_frame(&mut self, frame: ServerFrame, now: Instant) {
        match frame {
            ServerFrame::Welcome { .. } => {
                tracing::debug!("ignoring a second welcome");
            }
            ServerFrame::MessageSent {
                req_id,
                thread_id,
                temp_id,
                message_id,
                seq,
                sent_at,
            } => {
                let _ = self.take(&req_id);
                let Some(item) = self.outbox.take(&thread_id, &temp_id) else {
                    tracing::debug!(%thread_id, %temp_id, "message_sent for no pending send");
                    return;
                };
                let sent = Sent {
                    thread_id: thread_id.clone(),
                    temp_id,
                    message_id,
                    seq,
                    sent_at,
                };
                for w in item.waiters {
                    let _ = w.send(Ok(sent.clone()));
                }
                self.events.push(Event::Sent(sent));
                if let Some(me) = self.user_id.clone() {
                    self.offer(Message {
                        thread_id,
                        message_id,
                        seq,
                        sender_id: me,
                        text: item.text,
                        sent_at,
                    });
                }
            }
            ServerFrame::ReceiveMessage {
                thread_id,
                message_id,
                seq,
                sender_id,
                text,
                sent_at,
            } => self.offer(Message {
                thread_id,
                message_id,
                seq,
                sender_id,
                text,
                sent_at,
            }),
            ServerFrame::MessageAck {
                thread_id,
                message_id,
                seq,
                status,
                user_id,
                at,
            } => self.events.push(Event::Receipt(Receipt {
                thread_id,
                message_id,
                seq,
                status,
                user_id,
                at,
            })),
            ServerFrame::Thread {
                req_id,
                thread_id,
                kind,
                title,
                members,
            } => {
                let t = Thread {
                    thread_id,
                    kind,
                    title,
                    members,
                };
                if let Some(Pending::Want(Want::Thread(r))) = self.take(&req_id) {
                    let _ = r.send(Ok(t.clone()));
                }
                self.events.push(Event::Thread(t));
            }
            ServerFrame::Threads { req_id, threads } => match self.take(&req_id) {
                Some(Pending::Want(Want::Threads(r))) => drop(r.send(Ok(threads))),
                Some(Pending::CatchUpList) => self.on_catch_up_list(&threads),
                _ => tracing::debug!("unexpected threads frame"),
            },
            ServerFrame::History {
                req_id,
                thread_id,
                messages,
                has_more,
            } => {
                let messages: Vec<Message> = messages
                    .into_iter()
                    .map(|m| Message::from_history(&thread_id, m))
                    .collect();
                match self.take(&req_id) {
                    Some(Pending::Want(Want::History(r))) => drop(r.send(Ok(HistoryPage {
                        thread_id,
                        messages,
                        has_more,
                    }))),
                    Some(Pending::Fill { thread_id: t }) => {
                        let step = self.seq.fill_page(&t, messages, has_more);
                        self.apply(&t, step);
                    }
                    _ => tracing::debug!("unexpected history frame"),
                }
            }
            ServerFrame::Presence {
                req_id,
                user_id,
                status,
                last_seen,
            } => {
                if let Some(Pending::Want(Want::Presence(r))) = self.take(&req_id) {
                    let _ = r.send(Ok(()));
                }
                self.events.push(Event::Presence(Presence {
                    user_id,
                    status,
                    last_seen,
                }));
            }
            ServerFrame::Typing {
                thread_id,
                user_id,
                typing,
            } => self.events.push(Event::Typing(Typing {
                thread_id,
                user_id,
                typing,
            })),
            ServerFrame::Pong { req_id } => match self.take(&req_id) {
                Some(Pending::FirePing { head, reply }) => {
                    self.pending.remove(&head);
                    let _ = reply.send(Ok(()));
                }
                Some(Pending::Ping(t0, r)) => drop(r.send(Ok(now.saturating_duration_since(t0)))),
                _ => {}
            },
            ServerFrame::Error {
                req_id,
                code,
                message,
            } => self.on_error(req_id, &code, message, now),
        }
    }

    fn on_catch_up_list(&mut self, threads: &[ThreadSummary]) {
        for t in threads {
            self.position_unknown(&t.thread_id, t.last_seq);
            if let Some(after) = self.seq.catch_up(&t.thread_id, t.last_seq) {
                self.fetch_fill(&t.thread_id, after);
            }
        }
        self.synced = true;
        self.session_synced = true;
    }

    fn on_error(&mut self, req_id: Option<ReqId>, code: &str, message: String, now: Instant) {
        let err = ClientError::server(code, message);
        let transient = err.code().is_some_and(|c| c.is_transient());
        if matches!(&req_id, Some(ReqId::Str(s)) if s == AUTO_ACK) {
            tracing::debug!(error = %err, "delivered ack refused");
            return;
        }
        let Some(p) = self.take(&req_id) else {
            tracing::warn!(error = %err, ?req_id, "server error for no pending request");
            return;
        };
        match p {
            Pending::Send { thread_id, temp_id } => {
                if transient {
                    if let Some(item) = self.outbox.get_mut(&thread_id, &temp_id) {
                        item.in_flight = false;
                        item.retry_at = Some(now + SEND_RETRY);
                    }
                } else if let Some(item) = self.outbox.take(&thread_id, &temp_id) {
                    for w in item.waiters {
                        let _ = w.send(Err(err.clone()));
                    }
                }
            }
            Pending::FireHead { ping } => {
                if let Some(p) = self.pending.remove(&ping) {
                    p.fail(err);
                }
            }
            Pending::CatchUpList => {
                tracing::warn!(error = %err, "catch-up refused; retrying");
                self.catch_up_at = Some(now + CATCH_UP_RETRY);
            }
            Pending::Fill { thread_id } => {
                if transient {
                    tracing::warn!(error = %err, %thread_id, "fill refused; retrying with catch-up");
                    self.seq.fill_aborted(&thread_id);
                    self.catch_up_at = Some(now + CATCH_UP_RETRY);
                } else {
                    tracing::warn!(error = %err, %thread_id, "fill impossible; delivering what is held");
                    let step = self.seq.fill_failed(&thread_id);
                    self.apply(&thread_id, step);
                }
            }
            other => other.fail(err),
        }
    }
}

/// The result of one connection.
enum End {
    Lost(String),
    Close(Option<oneshot::Sender<()>>),
}

/// Shared with the handles.
pub(crate) struct Shared {
    pub state: watch::Sender<ConnectionState>,
    pub user_id: OnceLock<UserId>,
    /// The app took the event stream ([`Client::events`](crate::Client::events)).
    pub events_taken: AtomicBool,
}

/// The task.
pub(crate) struct Driver {
    core: Core,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    ready: Option<oneshot::Sender<Result<(), ClientError>>>,
}

impl Driver {
    pub fn new(
        cfg: ClientConfig,
        cmds: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        shared: Arc<Shared>,
        ready: oneshot::Sender<Result<(), ClientError>>,
    ) -> Driver {
        Driver {
            core: Core::new(cfg),
            cmds,
            events,
            shared,
            ready: Some(ready),
        }
    }

    async fn emit_state(&mut self, s: ConnectionState) {
        self.shared.state.send_replace(s.clone());
        self.emit(Event::Connection(s)).await;
    }

    /// Hands one event to the app. Once the app holds the stream, a full channel
    /// blocks (backpressure); before, events beyond the channel's capacity are
    /// dropped so an app that never listens cannot stall the client. A dropped
    /// stream only means the app does not listen.
    async fn emit(&mut self, ev: Event) {
        if self.shared.events_taken.load(Ordering::Acquire) {
            let _ = self.events.send(ev).await;
        } else if let Err(mpsc::error::TrySendError::Full(ev)) = self.events.try_send(ev) {
            tracing::debug!(?ev, "event stream not taken and full: dropping an event");
        }
    }

    async fn emit_queued(&mut self) {
        for ev in std::mem::take(&mut self.core.events) {
            if let Event::Connection(s) = &ev {
                self.shared.state.send_replace(s.clone());
            }
            self.emit(ev).await;
        }
    }

    /// Handles commands until `fut` completes; `Err` if the app closed the client.
    async fn offline<F: std::future::Future>(
        &mut self,
        fut: F,
    ) -> Result<F::Output, Option<oneshot::Sender<()>>> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                cmd = self.cmds.recv() => match cmd {
                    None => return Err(None),
                    Some(c) => {
                        if let Flow::Close(r) = self.core.offline_command(c) {
                            return Err(Some(r));
                        }
                    }
                },
            }
        }
    }

    pub async fn run(mut self) {
        let backoff = self.core.cfg.backoff.clone();
        let mut failures: u32 = 0;
        let outcome: Result<Option<oneshot::Sender<()>>, ClientError> = loop {
            self.emit_state(ConnectionState::Connecting { attempt: failures })
                .await;
            let cfg = self.core.cfg.clone();
            let opened = match self.offline(open(&cfg)).await {
                Ok(r) => r,
                Err(close) => break Ok(close),
            };
            match opened {
                Ok((ws, user_id, session_id)) => {
                    let _ = self.shared.user_id.set(user_id.clone());
                    match self.session(ws, user_id, session_id).await {
                        End::Close(r) => break Ok(r),
                        End::Lost(reason) => {
                            tracing::info!(%reason, "connection lost; reconnecting");
                            // Only a connection that got as far as catch-up resets the
                            // backoff: a server that welcomes and drops at once must
                            // not be hammered.
                            if self.core.session_synced {
                                failures = 0;
                            } else {
                                failures += 1;
                                if backoff.max_retries.is_some_and(|m| failures > m) {
                                    break Err(ClientError::RetriesExhausted {
                                        attempts: failures,
                                        last: Box::new(ClientError::Connect(reason)),
                                    });
                                }
                            }
                            self.core.connection_lost();
                            self.emit_state(ConnectionState::Disconnected { reason })
                                .await;
                        }
                    }
                }
                Err(e) if !e.is_retryable_connect() => break Err(e),
                Err(e) => {
                    failures += 1;
                    tracing::debug!(error = %e, failures, "connect failed");
                    if backoff.max_retries.is_some_and(|m| failures > m) {
                        break Err(ClientError::RetriesExhausted {
                            attempts: failures,
                            last: Box::new(e),
                        });
                    }
                }
            }
            let delay = backoff.delay(failures);
            self.emit_state(ConnectionState::Reconnecting {
                attempt: failures,
                delay,
            })
            .await;
            if let Err(close) = self.offline(tokio::time::sleep(delay)).await {
                break Ok(close);
            }
        };
        let (err, close_reply) = match outcome {
            Ok(r) => (None, r),
            Err(e) => (Some(e), None),
        };
        match &err {
            Some(e) => tracing::warn!(error = %e, "client stopped"),
            None => tracing::debug!("client closed"),
        }
        let fail = err.clone().unwrap_or(ClientError::Closed);
        if let Some(r) = self.ready.take() {
            let _ = r.send(Err(fail.clone()));
        }
        // Refuse what is still queued.
        self.cmds.close();
        while let Ok(c) = self.cmds.try_recv() {
            let _ = self.core.offline_command(c);
        }
        self.core.stop(&fail);
        self.emit_state(ConnectionState::Closed { error: err })
            .await;
        if let Some(r) = close_reply {
            let _ = r.send(());
        }
    }

    async fn session(&mut self, ws: Ws, user_id: UserId, session_id: SessionId) -> End {
        let (mut sink, mut stream) = ws.split();
        tracing::info!(user = %user_id, session = %session_id, queued = self.core.outbox_len(), "connected");
        self.core.connected(user_id, session_id, Instant::now());
        let heartbeat = self.core.cfg.heartbeat;
        let mut last_rx = Instant::now();
        let mut last_ping = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !self.core.out.is_empty() {
                for text in std::mem::take(&mut self.core.out) {
                    if let Err(e) = sink.feed(WsMessage::text(text)).await {
                        return End::Lost(format!("write failed: {e}"));
                    }
                }
                if let Err(e) = sink.flush().await {
                    return End::Lost(format!("write failed: {e}"));
                }
            }
            self.emit_queued().await;
            tokio::select! {
                msg = stream.next() => {
                    last_rx = Instant::now();
                    match msg {
                        Some(Ok(WsMessage::Text(text))) => match ServerFrame::decode(text.as_str()) {
                            Ok(frame) => {
                                self.core.on_frame(frame, Instant::now());
                                // `connect` resolves once the first catch-up has fixed
                                // where each thread starts.
                                if self.core.synced {
                                    if let Some(r) = self.ready.take() {
                                        let _ = r.send(Ok(()));
                                    }
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "ignoring an undecodable frame"),
                        },
                        Some(Ok(WsMessage::Close(frame))) => {
                            let reason = frame.map(|f| format!("closed by server: {} {}", u16::from(f.code), f.reason))
                                .unwrap_or_else(|| "closed by server".into());
                            return End::Lost(reason);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return End::Lost(format!("read failed: {e}")),
                        None => return End::Lost("connection closed".into()),
                    }
                }
                cmd = self.cmds.recv() => {
                    let close = match cmd {
                        None => Some(None),
                        Some(c) => match self.core.online_command(c, Instant::now()) {
                            Flow::Continue => None,
                            Flow::Close(r) => Some(Some(r)),
                        },
                    };
                    if let Some(reply) = close {
                        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                        return End::Close(reply);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.saturating_duration_since(last_rx) > heartbeat * 2 {
                        return End::Lost("heartbeat timeout".into());
                    }
                    if now.saturating_duration_since(last_ping) >= heartbeat {
                        last_ping = now;
                        if let Err(e) = sink.send(WsMessage::Ping(Default::default())).await {
                            return End::Lost(format!("write failed: {e}"));
                        }
                    }
                    self.core.tick(now);
                }
            }
        }
    }
}

/// Opens a connection and waits for `welcome`.
async fn open(cfg: &ClientConfig) -> Result<(Ws, UserId, SessionId), ClientError> {
    let mut req = request(cfg)?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", cfg.token))
        .map_err(|_| ClientError::InvalidToken)?;
    req.headers_mut().insert(AUTHORIZATION, bearer);
    let connect = async {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .map_err(map_ws_error)?;
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    return match ServerFrame::decode(text.as_str()) {
                        Ok(ServerFrame::Welcome {
                            user_id,
                            session_id,
                            ..
                        }) => Ok((ws, user_id, session_id)),
                        Ok(other) => Err(ClientError::Protocol(format!(
                            "expected welcome, got {}",
                            other.type_name()
                        ))),
                        Err(e) => Err(ClientError::Protocol(format!("bad welcome: {e}"))),
                    };
                }
                Some(Ok(WsMessage::Close(_))) | None => {
                    return Err(ClientError::Connect("closed before welcome".into()))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ClientError::Connect(e.to_string())),
            }
        }
    };
    tokio::time::timeout(cfg.connect_timeout, connect)
        .await
        .map_err(|_| ClientError::Connect("connect timed out".into()))?
}

/// Checks the URL and builds the upgrade request.
pub(crate) fn request(
    cfg: &ClientConfig,
) -> Result<tungstenite::handshake::client::Request, ClientError> {
    if !(cfg.url.starts_with("ws://") || cfg.url.starts_with("wss://")) {
        return Err(ClientError::InvalidUrl(format!(
            "{}: the scheme must be ws:// or wss://",
            cfg.url
        )));
    }
    cfg.url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::InvalidUrl(format!("{}: {e}", cfg.url)))
}

fn map_ws_error(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            if status == 401 || status == 403 {
                ClientError::Auth(status)
            } else {
                ClientError::Http(status)
            }
        }
        tungstenite::Error::Url(e) => ClientError::InvalidUrl(e.to_string()),
        other => ClientError::Connect(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::protocol::{decode_client, HistoryMessage};

    fn t(s: &str) -> ThreadId {
        ThreadId::new(s).expect("thread")
    }

    fn u(s: &str) -> UserId {
        UserId::new(s).expect("user")
    }

    fn core(cfg: ClientConfig) -> Core {
        Core::new(cfg)
    }

    /// The frames written since the last call, decoded, with their req ids.
    fn written(c: &mut Core) -> Vec<(u64, ClientFrame)> {
        std::mem::take(&mut c.out)
            .iter()
            .map(|s| {
                let r = decode_client(s).expect("valid frame");
                match r.req_id {
                    Some(ReqId::UInt(n)) => (n, r.frame),
                    Some(ReqId::Str(s)) if s == AUTO_ACK => (0, r.frame),
                    other => panic!("req id {other:?}"),
                }
            })
            .collect()
    }

    fn connect(c: &mut Core) {
        c.connected(u("alice"), SessionId::from_id(1), Instant::now());
    }

    fn receive(thread: &str, seq: u64, from: &str) -> ServerFrame {
        ServerFrame::ReceiveMessage {
            thread_id: t(thread),
            message_id: MessageId(100 + seq),
            seq,
            sender_id: u(from),
            text: format!("m{seq}"),
            sent_at: 0,
        }
    }

    fn delivered(c: &mut Core) -> Vec<u64> {
        std::mem::take(&mut c.events)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.seq),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn outbox_is_flushed_on_connect_before_catch_up_and_new_sends() {
        let mut c = core(ClientConfig::new("ws://x/ws", "alice"));
        let mut waits = Vec::new();
        for i in 0..3 {
            let (tx, rx) = oneshot::channel();
            waits.push(rx);
            let cmd = Command::Send {
                thread_id: t("t"),
                temp_id: format!("tmp-{i}"),
                text: format!("queued {i}"),
                reply: tx,
            };
            assert!(matches!(c.offline_command(cmd), Flow::Continue));
        }
        assert!(c.out.is_empty(), "nothing written while offline");
        connect(&mut c);
        let frames = written(&mut c);
        let kinds: Vec<&str> = frames.iter().map(|(_, f)| f.type_name()).collect();
        assert_eq!(
            kinds,
            [
                "send_message",
                "send_message",
                "send_message",
                "list_threads"
            ]
        );
        let temps: Vec<String> = frames
            .iter()
            .filter_map(|(_, f)| match f {
                ClientFrame::SendMessage { temp_id, .. } => Some(temp_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(temps, ["tmp-0", "tmp-1", "tmp-2"]);

        // The connection drops before any answer: the same temp ids go out again.
        c.connection_lost();
        connect(&mut c);
        let again = written(&mut c);
        assert_eq!(again.len(), 4);
        // The server reconciles the first one.
        let (req, _) = again[0];
        c.on_frame(
            ServerFrame::MessageSent {
                req_id: Some(ReqId::UInt(req)),
                thread_id: t("t"),
                temp_id: "tmp-0".into(),
                message_id: MessageId(77),
                seq: 1,
                sent_at: 5,
            },
            Instant::now(),
        );
        let sent = waits.remove(0).await.expect("reply").expect("sent");
        assert_eq!((sent.message_id, sent.seq), (MessageId(77), 1));
        assert_eq!(delivered(&mut c), vec![1], "own message joins the stream");
    }

    #[tokio::test]
    async fn catch_up_fetches_after_the_last_seq_and_pages() {
        let cfg = ClientConfig::new("ws://x/ws", "alice")
            .resume(t("old"), 2)
            .auto_ack_delivered(false);
        let mut c = core(cfg);
        connect(&mut c);
        let (list_req, _) = written(&mut c)[0].clone();
        let summary = |id: &str, last_seq| ThreadSummary {
            thread_id: t(id),
            kind: messenger_core::model::ThreadKind::Group,
            title: None,
            members: vec![u("alice"), u("bob")],
            last_seq,
            receipts: Default::default(),
            unread: 0,
        };
        c.on_frame(
            ServerFrame::Threads {
                req_id: Some(ReqId::UInt(list_req)),
                threads: vec![summary("old", 5), summary("fresh", 9)],
            },
            Instant::now(),
        );
        // `old` resumes after 2; `fresh` starts at its last seq (InitialSync::Latest).
        let fills = written(&mut c);
        assert_eq!(fills.len(), 1);
        let (
            fill_req,
            ClientFrame::FetchHistory {
                thread_id,
                after_seq,
                ..
            },
        ) = fills[0].clone()
        else {
            panic!("expected a fetch")
        };
        assert_eq!((thread_id, after_seq), (t("old"), Some(2)));
        let page = |seqs: &[u64]| -> Vec<HistoryMessage> {
            seqs.iter()
                .map(|&s| HistoryMessage {
                    message_id: MessageId(100 + s),
                    seq: s,
                    sender_id: u("bob"),
                    text: format!("m{s}"),
                    sent_at: 0,
                })
                .collect()
        };
        c.on_frame(
            ServerFrame::History {
                req_id: Some(ReqId::UInt(fill_req)),
                thread_id: t("old"),
                messages: page(&[3, 4]),
                has_more: true,
            },
            Instant::now(),
        );
        assert_eq!(delivered(&mut c), vec![3, 4]);
        let next = written(&mut c);
        let (req, ClientFrame::FetchHistory { after_seq, .. }) = next[0].clone() else {
            panic!("expected the next page")
        };
        assert_eq!(after_seq, Some(4));
        c.on_frame(
            ServerFrame::History {
                req_id: Some(ReqId::UInt(req)),
                thread_id: t("old"),
                messages: page(&[5]),
                has_more: false,
            },
            Instant::now(),
        );
        assert_eq!(delivered(&mut c), vec![5]);
        assert!(c.out.is_empty());
        // Live: `fresh` continues from 9; a duplicate is dropped.
        c.on_frame(receive("fresh", 10, "bob"), Instant::now());
        c.on_frame(receive("fresh", 10, "bob"), Instant::now());
        assert_eq!(delivered(&mut c), vec![10]);
    }

    #[tokio::test]
    async fn delivered_is_acked_once_per_tick_for_others_only() {
        let mut c = core(ClientConfig::new("ws://x/ws", "alice"));
        connect(&mut c);
        let _ = written(&mut c);
        c.synced = true;
        c.seq.start_at(&t("t"), 0);
        c.on_frame(receive("t", 1, "alice"), Instant::now());
        c.tick(Instant::now());
        assert!(written(&mut c).is_empty(), "own messages are not acked");
        c.on_frame(receive("t", 3, "bob"), Instant::now());
        let frames = written(&mut c);
        assert!(
            matches!(
                &frames[..],
                [(
                    _,
                    ClientFrame::FetchHistory {
                        after_seq: Some(1),
                        ..
                    }
                )]
            ),
            "a gap asks for a fill, no ack yet: {frames:?}"
        );
        c.on_frame(receive("t", 2, "bob"), Instant::now());
        assert!(written(&mut c).is_empty(), "acks wait for the tick");
        c.tick(Instant::now());
        let frames = written(&mut c);
        assert!(
            matches!(
                &frames[..],
                [(
                    _,
                    ClientFrame::MessageAck {
                        message_id: MessageId(103),
                        status: AckStatus::Delivered,
                        ..
                    }
                )]
            ),
            "one ack covers 2 and 3: {frames:?}"
        );
        assert_eq!(delivered(&mut c), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn errors_are_routed_to_their_callers() {
        let mut c = core(ClientConfig::new("ws://x/ws", "alice"));
        connect(&mut c);
        let _ = written(&mut c);
        let now = Instant::now();
        // A fire-and-confirm frame refused by the server.
        let (tx, rx) = oneshot::channel();
        let frame = ClientFrame::Typing {
            thread_id: t("t"),
            typing: true,
        };
        c.online_command(Command::Fire { frame, reply: tx }, now);
        let frames = written(&mut c);
        assert_eq!(frames[1].1.type_name(), "ping");
        c.on_frame(
            ServerFrame::error(Some(ReqId::UInt(frames[0].0)), "forbidden", "no"),
            now,
        );
        c.on_frame(
            ServerFrame::Pong {
                req_id: Some(ReqId::UInt(frames[1].0)),
            },
            now,
        );
        assert_eq!(
            rx.await.expect("reply").expect_err("refused").code(),
            Some(&crate::ErrorCode::Forbidden)
        );
        // A rate-limited send stays queued and is retried; a forbidden one fails.
        let (tx, mut rx) = oneshot::channel();
        c.online_command(
            Command::Send {
                thread_id: t("t"),
                temp_id: "a".into(),
                text: "x".into(),
                reply: tx,
            },
            now,
        );
        let (req, _) = written(&mut c)[0].clone();
        c.on_frame(
            ServerFrame::error(Some(ReqId::UInt(req)), "rate_limited", "slow"),
            now,
        );
        assert!(rx.try_recv().is_err(), "still pending");
        c.tick(now);
        assert!(c.out.is_empty(), "not before the retry time");
        c.tick(now + SEND_RETRY);
        let (req, _) = written(&mut c)[0].clone();
        c.on_frame(
            ServerFrame::error(Some(ReqId::UInt(req)), "forbidden", "no"),
            now,
        );
        assert_eq!(
            rx.await.expect("reply").expect_err("refused").code(),
            Some(&crate::ErrorCode::Forbidden)
        );
        // Requests in flight fail with Disconnected when the connection drops.
        let (tx, rx) = oneshot::channel();
        c.online_command(
            Command::Request {
                frame: ClientFrame::ListThreads {},
                reply: Want::Threads(tx),
            },
            now,
        );
        c.connection_lost();
        assert_eq!(rx.await.expect("reply"), Err(ClientError::Disconnected));
    }

    #[tokio::test]
    async fn nothing_is_tracked_forever() {
        let mut c = core(ClientConfig::new("ws://x/ws", "alice"));
        connect(&mut c);
        let _ = written(&mut c);
        let now = Instant::now();
        // Confirmed fire-and-forget frames leave nothing behind.
        let (tx, rx) = oneshot::channel();
        let frame = ClientFrame::Typing {
            thread_id: t("t"),
            typing: true,
        };
        c.online_command(Command::Fire { frame, reply: tx }, now);
        let frames = written(&mut c);
        c.on_frame(
            ServerFrame::Pong {
                req_id: Some(ReqId::UInt(frames[1].0)),
            },
            now,
        );
        assert_eq!(rx.await.expect("reply"), Ok(()));
        // Automatic acks are not tracked at all.
        c.seq.start_at(&t("t"), 0);
        for seq in 1..=50 {
            c.on_frame(receive("t", seq, "bob"), now);
        }
        c.tick(now);
        assert_eq!(written(&mut c).len(), 1, "fifty messages, one ack");
        // An abandoned confirmation is swept with its frame.
        let (tx, rx) = oneshot::channel();
        let frame = ClientFrame::Typing {
            thread_id: t("t"),
            typing: false,
        };
        c.online_command(Command::Fire { frame, reply: tx }, now);
        drop(rx);
        c.tick(now);
        assert!(
            c.pending
                .values()
                .all(|p| matches!(p, Pending::CatchUpList)),
            "only the unanswered catch-up remains: {:?}",
            c.pending
        );
    }
}
