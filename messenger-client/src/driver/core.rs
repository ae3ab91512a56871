//! The protocol state machine, without I/O: it takes connection events, server frames,
//! app commands, what the app consumed and timer ticks, and queues frames to write,
//! events to emit and changes for the store.

use std::collections::HashMap;
use std::time::Duration;

use messenger_core::model::AckStatus;
use messenger_core::protocol::{ClientFrame, PushTargetInfo, ReqId, ServerFrame, ThreadSummary};
use messenger_core::time::now_ms;
use messenger_core::{SessionId, ThreadId, UserId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{InitialSync, Settings};
use crate::error::ClientError;
use crate::event::{
    ConnectionState, Consumed, Event, Message, Presence, Receipt, SendFailed, Sent, Thread,
    ThreadMute, Typing,
};
use crate::outbox::{Outbox, Pushed, SendReply, StoredReply};
use crate::sequencer::{Sequencer, Step};
use crate::store::{
    AckDue, OutboxEntry, ReceiptMark, StoreChanges, StoreError, StoredState, ThreadPosition,
};
use crate::HistoryPage;

/// How long a send refused as transient (`rate_limited`, `unavailable`) waits.
pub(crate) const SEND_RETRY: Duration = Duration::from_secs(1);
/// How long a catch-up refused as transient waits.
const CATCH_UP_RETRY: Duration = Duration::from_secs(1);
/// Sends written and not yet answered, at most (the server's default per-session cap,
/// `EngineConfig::max_sends_in_flight`). The server answers a session's frames in
/// order and runs any other request only after the sends before it are answered, so
/// with a whole outbox written at once (after an outage: hundreds) a catch-up or a gap
/// fill would wait behind all of it; under sustained load it never ran, and the thread
/// stayed stuck behind the gap (the chaos long profile: two users received nothing of
/// one thread for ten minutes while sending in it). With the cap, a read waits for at
/// most this many sends.
pub(crate) const MAX_SENDS_IN_FLIGHT: usize = 64;

/// A reply channel for a request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// What a handle asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue a message in the outbox (stored first, then written if connected).
    Send {
        thread_id: ThreadId,
        temp_id: String,
        text: String,
        /// Resolved by `message_sent` (or a refusal).
        reply: Option<SendReply>,
        /// Resolved once the store holds it.
        stored: Option<StoredReply>,
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
    /// Write everything the app consumed and queued to the store.
    Flush { reply: Reply<()> },
    /// The outbox as it is.
    Outbox {
        reply: oneshot::Sender<Vec<OutboxEntry>>,
    },
    /// Disconnect until resumed.
    Suspend,
    /// Connect now: end a suspension or a backoff wait; `force` also replaces a live
    /// connection (network switch).
    Reconnect { force: bool },
    /// Stop for good.
    Close { reply: oneshot::Sender<()> },
}

impl Command {
    /// The client is stopping: the caller hears `err` (a close is simply done).
    pub fn refuse(self, err: &ClientError) {
        match self {
            Command::Send { reply, stored, .. } => {
                if let Some(r) = reply {
                    let _ = r.send(Err(err.clone()));
                }
                if let Some(r) = stored {
                    let _ = r.send(Err(err.clone()));
                }
            }
            Command::Request { reply, .. } => reply.fail(err.clone()),
            Command::Fire { reply, .. } | Command::Flush { reply } => {
                let _ = reply.send(Err(err.clone()));
            }
            Command::Ping { reply } => drop(reply.send(Err(err.clone()))),
            // Dropped: the caller hears `Closed`, not an empty outbox.
            Command::Outbox { reply } => drop(reply),
            Command::Close { reply } => drop(reply.send(())),
            Command::Suspend | Command::Reconnect { .. } => {}
        }
    }
}

/// The reply a request waits for.
#[derive(Debug)]
pub(crate) enum Want {
    Thread(Reply<Thread>),
    Threads(Reply<Vec<ThreadSummary>>),
    History(Reply<HistoryPage>),
    Presence(Reply<()>),
    PushTarget(Reply<PushTargetInfo>),
    PushTargets(Reply<Vec<PushTargetInfo>>),
    PushTargetRemoved(Reply<bool>),
    ThreadMute(Reply<ThreadMute>),
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
    /// The presence subscriptions sent again on a new connection (nobody waits).
    Resubscribe,
}

/// The `req_id` of automatic `DELIVERED` acks: they have no reply on success, so they
/// are not tracked; a refusal is only logged.
pub(crate) const AUTO_ACK: &str = "auto-ack";

impl Pending {
    fn fail(self, err: ClientError) {
        match self {
            Pending::Want(w) => w.fail(err),
            Pending::FirePing { reply, .. } => drop(reply.send(Err(err))),
            Pending::Ping(_, r) => drop(r.send(Err(err))),
            Pending::Send { .. }
            | Pending::FireHead { .. }
            | Pending::CatchUpList
            | Pending::Fill { .. }
            | Pending::Resubscribe => {}
        }
    }

    /// The app stopped waiting (timed out or dropped the future).
    fn abandoned(&self) -> bool {
        match self {
            Pending::Want(Want::Thread(r)) => r.is_closed(),
            Pending::Want(Want::Threads(r)) => r.is_closed(),
            Pending::Want(Want::History(r)) => r.is_closed(),
            Pending::Want(Want::Presence(r)) => r.is_closed(),
            Pending::Want(Want::PushTarget(r)) => r.is_closed(),
            Pending::Want(Want::PushTargets(r)) => r.is_closed(),
            Pending::Want(Want::PushTargetRemoved(r)) => r.is_closed(),
            Pending::Want(Want::ThreadMute(r)) => r.is_closed(),
            Pending::FirePing { reply, .. } => reply.is_closed(),
            Pending::Ping(_, r) => r.is_closed(),
            _ => false,
        }
    }
}

impl Want {
    pub fn fail(self, err: ClientError) {
        match self {
            Want::Thread(r) => drop(r.send(Err(err))),
            Want::Threads(r) => drop(r.send(Err(err))),
            Want::History(r) => drop(r.send(Err(err))),
            Want::Presence(r) => drop(r.send(Err(err))),
            Want::PushTarget(r) => drop(r.send(Err(err))),
            Want::PushTargets(r) => drop(r.send(Err(err))),
            Want::PushTargetRemoved(r) => drop(r.send(Err(err))),
            Want::ThreadMute(r) => drop(r.send(Err(err))),
        }
    }
}

/// What a command asks of the connection loop.
pub(crate) enum Flow {
    Continue,
    Close(oneshot::Sender<()>),
    Suspend,
    Reconnect {
        force: bool,
    },
    /// Reply once the store has everything.
    Flush(Reply<()>),
}

/// The protocol state machine, without I/O.
pub(crate) struct Core {
    pub cfg: std::sync::Arc<Settings>,
    outbox: Outbox,
    seq: Sequencer,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    /// The client's user: from the store, then from the first `welcome`.
    pub user_id: Option<UserId>,
    /// The first catch-up of the store (which applies [`InitialSync`]) is done.
    pub synced: bool,
    /// This connection's catch-up list was answered: the connection was healthy.
    pub session_synced: bool,
    /// Whether a connection is up.
    online: bool,
    /// Users whose presence the app subscribed to: subscriptions belong to a server
    /// session, so they are sent again on every new connection.
    presence_watch: std::collections::BTreeSet<UserId>,
    /// Subscriptions asked for and not yet answered, by request id: watched once the
    /// server accepts them.
    presence_asked: HashMap<u64, Vec<UserId>>,
    catch_up_at: Option<Instant>,
    /// What the store holds (or will, after the pending save) per thread.
    positions: HashMap<ThreadId, ThreadPosition>,
    /// The newest `DELIVERED` written per thread on this run.
    acked: HashMap<ThreadId, u64>,
    /// The acks written on the current connection: owed again if it turns out dead
    /// (acks have no reply; a connection the server already dropped swallows them).
    acks_on_connection: HashMap<ThreadId, AckDue>,
    /// The highest delivered and read seq seen per (thread, member): a receipt frame at
    /// or below it is stale (frames relayed by different nodes can cross during a
    /// failover) and is not shown to the app, so the watermarks it sees never go back.
    receipt_marks: HashMap<(ThreadId, UserId), (u64, u64)>,
    /// Changes not yet handed to the store.
    changes: StoreChanges,
    /// Frames to write, in order.
    pub out: Vec<String>,
    /// Events to emit, in order.
    pub events: Vec<Event>,
}

impl Core {
    pub fn new(cfg: std::sync::Arc<Settings>, stored: StoredState) -> Core {
        let mut seq = Sequencer::default();
        let mut positions = HashMap::new();
        for (t, p) in stored.threads {
            seq.start_at(&t, p.held_seq);
            positions.insert(t, p);
        }
        for (t, &last) in &cfg.resume {
            let p: &mut ThreadPosition = positions.entry(t.clone()).or_default();
            if last > p.held_seq {
                p.held_seq = last;
            }
            seq.advance_to(t, p.held_seq);
        }
        let receipt_marks = stored
            .receipts
            .into_iter()
            .map(|r| ((r.thread_id, r.user_id), (r.delivered_seq, r.read_seq)))
            .collect();
        let mut outbox = Outbox::default();
        for e in stored.outbox {
            outbox.restore(e);
        }
        Core {
            cfg,
            outbox,
            seq,
            pending: HashMap::new(),
            next_req: 1,
            user_id: stored.user_id,
            synced: stored.synced,
            session_synced: false,
            online: false,
            presence_watch: Default::default(),
            presence_asked: HashMap::new(),
            catch_up_at: None,
            positions,
            acked: HashMap::new(),
            acks_on_connection: HashMap::new(),
            receipt_marks,
            changes: StoreChanges::default(),
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

    /// A connection is up: check the user, emit the state, resend the outbox, start
    /// catch-up. `Err` when the server welcomed another user than the store's.
    pub fn connected(
        &mut self,
        user_id: UserId,
        session_id: SessionId,
        now: Instant,
    ) -> Result<(), ClientError> {
        match &self.user_id {
            Some(expected) if expected != &user_id => {
                return Err(ClientError::WrongUser {
                    expected: expected.clone(),
                    got: user_id,
                })
            }
            Some(_) => {}
            None => {
                self.user_id = Some(user_id.clone());
                self.changes.user_id = Some(user_id.clone());
            }
        }
        self.online = true;
        self.session_synced = false;
        self.events
            .push(Event::Connection(ConnectionState::Connected {
                user_id,
                session_id,
            }));
        // The catch-up first: its list (and the fills it asks for) then waits behind no
        // resent send.
        self.catch_up();
        self.flush_outbox(now);
        if !self.presence_watch.is_empty() {
            let user_ids = self.presence_watch.iter().cloned().collect();
            self.request(
                &ClientFrame::PresenceSubscribe { user_ids },
                Pending::Resubscribe,
            );
        }
        Ok(())
    }

    fn catch_up(&mut self) {
        self.catch_up_at = None;
        self.request(&ClientFrame::ListThreads {}, Pending::CatchUpList);
    }

    fn flush_outbox(&mut self, now: Instant) {
        if !self.online {
            return;
        }
        let room = MAX_SENDS_IN_FLIGHT.saturating_sub(self.outbox.in_flight());
        for (thread_id, temp_id, text) in self.outbox.due(now, room) {
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
        self.online = false;
        for (thread, due) in std::mem::take(&mut self.acks_on_connection) {
            self.set_position(&thread, |p| {
                if p.ack_due.is_none_or(|d| d.seq < due.seq) {
                    p.ack_due = Some(due);
                }
            });
        }
        for (_, p) in self.pending.drain() {
            p.fail(ClientError::Disconnected);
        }
        self.presence_asked.clear();
        self.outbox.connection_lost();
        self.seq.connection_lost();
        self.out.clear();
    }

    /// The client stops for good: every caller fails; the store keeps the outbox.
    pub fn stop(&mut self, err: &ClientError) {
        self.online = false;
        for (_, p) in self.pending.drain() {
            p.fail(err.clone());
        }
        self.outbox.fail_all(err);
        self.out.clear();
    }

    /// Changes for the store, if any (then [`Core::saved`] or [`Core::save_failed`]).
    pub fn take_changes(&mut self) -> Option<StoreChanges> {
        if self.changes.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.changes))
        }
    }

    /// The store took the last changes: queued sends may go out.
    pub fn saved(&mut self, now: Instant) {
        self.outbox.all_stored();
        self.flush_outbox(now);
    }

    /// The store refused `changes`: sends in them fail (they were never written to
    /// the server); the rest is kept to be written again with the next save.
    pub fn save_failed(&mut self, mut changes: StoreChanges, err: StoreError) {
        tracing::warn!(error = %err, "client store refused a save");
        let error = ClientError::Store(err);
        self.outbox.drop_unstored(&error);
        changes.outbox_added.clear();
        let newer = std::mem::take(&mut self.changes);
        let mut merged = changes;
        merged.user_id = newer.user_id.or(merged.user_id);
        merged.synced |= newer.synced;
        merged.outbox_added = newer.outbox_added;
        merged.outbox_removed.extend(newer.outbox_removed);
        merged.threads.extend(newer.threads);
        merged.receipts.extend(newer.receipts);
        self.changes = merged;
    }

    /// Whether sends wait for the store.
    pub fn sends_unsaved(&self) -> bool {
        !self.changes.outbox_added.is_empty()
    }

    fn set_position(&mut self, thread: &ThreadId, f: impl FnOnce(&mut ThreadPosition)) {
        let p = self.positions.entry(thread.clone()).or_default();
        let before = *p;
        f(p);
        if *p != before {
            self.changes.threads.insert(thread.clone(), *p);
        }
    }

    /// What the app took from the stream: positions to hold and acks to owe.
    pub fn consumed(&mut self, c: Consumed) {
        for (thread, seq) in c.held {
            self.set_position(&thread, |p| p.held_seq = p.held_seq.max(seq));
        }
        if !self.cfg.auto_ack_delivered {
            return;
        }
        for (thread, due) in c.received {
            let acked = self.acked.get(&thread).copied().unwrap_or(0);
            if due.seq <= acked {
                continue;
            }
            self.set_position(&thread, |p| {
                if p.ack_due.is_none_or(|d| d.seq < due.seq) {
                    p.ack_due = Some(due);
                }
            });
        }
    }

    /// A command, online or not.
    pub fn command(&mut self, cmd: Command, now: Instant) -> Flow {
        match cmd {
            Command::Send {
                thread_id,
                temp_id,
                text,
                reply,
                stored,
            } => {
                let entry = OutboxEntry {
                    thread_id,
                    temp_id,
                    text,
                    queued_at: now_ms(),
                };
                if self.outbox.push(entry.clone(), reply, stored) == Pushed::New {
                    self.changes.outbox_added.push(entry);
                }
            }
            Command::Request { reply, .. } if !self.online => reply.fail(ClientError::Disconnected),
            Command::Request { frame, reply } => {
                let id = self.request(&frame, Pending::Want(reply));
                if let ClientFrame::PresenceSubscribe { user_ids } = frame {
                    self.presence_asked.insert(id, user_ids);
                }
            }
            Command::Fire { reply, .. } if !self.online => {
                drop(reply.send(Err(ClientError::Disconnected)))
            }
            Command::Fire { frame, reply } => {
                if let ClientFrame::PresenceUnsubscribe { user_ids } = &frame {
                    for u in user_ids {
                        self.presence_watch.remove(u);
                    }
                }
                let ping = self.next_req + 1;
                let head = self.request(&frame, Pending::FireHead { ping });
                self.request(&ClientFrame::Ping {}, Pending::FirePing { head, reply });
            }
            Command::Ping { reply } if !self.online => {
                drop(reply.send(Err(ClientError::Disconnected)))
            }
            Command::Ping { reply } => {
                self.request(&ClientFrame::Ping {}, Pending::Ping(now, reply));
            }
            Command::Outbox { reply } => drop(reply.send(self.outbox.entries())),
            Command::Flush { reply } => return Flow::Flush(reply),
            Command::Suspend => return Flow::Suspend,
            Command::Reconnect { force } => return Flow::Reconnect { force },
            Command::Close { reply } => return Flow::Close(reply),
        }
        Flow::Continue
    }

    /// Housekeeping while connected: retries, owed acks, catch-up retry, sweeping.
    pub fn tick(&mut self, now: Instant) {
        self.flush_outbox(now);
        let owed: Vec<(ThreadId, AckDue)> = self
            .positions
            .iter()
            .filter_map(|(t, p)| p.ack_due.map(|d| (t.clone(), d)))
            .collect();
        for (thread_id, due) in owed {
            let frame = ClientFrame::MessageAck {
                thread_id: thread_id.clone(),
                message_id: due.message_id,
                status: AckStatus::Delivered,
            };
            self.out
                .push(frame.encode(Some(&ReqId::Str(AUTO_ACK.into()))));
            let acked = self.acked.entry(thread_id.clone()).or_insert(0);
            *acked = (*acked).max(due.seq);
            self.acks_on_connection.insert(thread_id.clone(), due);
            self.set_position(&thread_id, |p| p.ack_due = None);
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

    /// Before the store's first catch-up, a thread the client has no position for
    /// starts per [`InitialSync`]; the position is stored so a restart keeps it.
    fn position_unknown(&mut self, thread_id: &ThreadId, server_last: u64) {
        if self.seq.position(thread_id).is_some() {
            return;
        }
        if !self.synced && self.cfg.initial_sync == InitialSync::Latest {
            self.seq.start_at(thread_id, server_last);
            self.set_position(thread_id, |p| p.held_seq = p.held_seq.max(server_last));
        }
    }

    fn offer(&mut self, m: Message) {
        let thread_id = m.thread_id.clone();
        self.position_unknown(&thread_id, m.seq.saturating_sub(1));
        let step = self.seq.offer(m);
        self.apply(&thread_id, step);
    }

    /// Records a member's watermarks; returns whether either moved forward.
    fn receipt(
        &mut self,
        thread_id: &ThreadId,
        user_id: &UserId,
        delivered: u64,
        read: u64,
    ) -> bool {
        let mark = self
            .receipt_marks
            .entry((thread_id.clone(), user_id.clone()))
            .or_default();
        let delivered = delivered.max(read);
        let moved = delivered > mark.0 || read > mark.1;
        mark.0 = mark.0.max(delivered);
        mark.1 = mark.1.max(read);
        if !moved {
            return false;
        }
        self.changes.receipts.push(ReceiptMark {
            thread_id: thread_id.clone(),
            user_id: user_id.clone(),
            delivered_seq: delivered,
            read_seq: read,
        });
        true
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
                self.changes
                    .outbox_removed
                    .push((thread_id.clone(), temp_id.clone()));
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
                // A slot of MAX_SENDS_IN_FLIGHT is free.
                self.flush_outbox(now);
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
            } => {
                let (delivered, read) = match status {
                    AckStatus::Delivered => (seq, 0),
                    AckStatus::Read => (seq, seq),
                };
                if !self.receipt(&thread_id, &user_id, delivered, read) {
                    tracing::debug!(%thread_id, %user_id, seq, "ignoring a stale receipt");
                    return;
                }
                self.events.push(Event::Receipt(Receipt {
                    thread_id,
                    message_id,
                    seq,
                    status,
                    user_id,
                    at,
                }))
            }
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
                if let Some(ReqId::UInt(n)) = &req_id {
                    if let Some(users) = self.presence_asked.remove(n) {
                        self.presence_watch.extend(users);
                    }
                }
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
            ServerFrame::PushTarget { req_id, target } => {
                if let Some(Pending::Want(Want::PushTarget(r))) = self.take(&req_id) {
                    let _ = r.send(Ok(target));
                }
            }
            ServerFrame::PushTargets { req_id, targets } => {
                if let Some(Pending::Want(Want::PushTargets(r))) = self.take(&req_id) {
                    let _ = r.send(Ok(targets));
                }
            }
            ServerFrame::PushTargetRemoved {
                req_id, removed, ..
            } => {
                if let Some(Pending::Want(Want::PushTargetRemoved(r))) = self.take(&req_id) {
                    let _ = r.send(Ok(removed));
                }
            }
            ServerFrame::ThreadMute {
                req_id,
                thread_id,
                muted,
                until,
            } => {
                let m = ThreadMute {
                    thread_id,
                    muted,
                    until,
                };
                match self.take(&req_id) {
                    Some(Pending::Want(Want::ThreadMute(r))) => drop(r.send(Ok(m))),
                    _ => self.events.push(Event::ThreadMute(m)),
                }
            }
            ServerFrame::Error {
                req_id,
                code,
                message,
            } => self.on_error(req_id, &code, message, now),
            // Frames added to the protocol later: a client ignores what it does not know.
            other => tracing::debug!(kind = other.type_name(), "ignoring an unknown frame"),
        }
    }

    fn on_catch_up_list(&mut self, threads: &[ThreadSummary]) {
        for t in threads {
            self.position_unknown(&t.thread_id, t.last_seq);
            if let Some(after) = self.seq.catch_up(&t.thread_id, t.last_seq) {
                self.fetch_fill(&t.thread_id, after);
            }
            for (user, r) in &t.receipts {
                if r.delivered_seq > 0 || r.read_seq > 0 {
                    self.receipt(&t.thread_id, user, r.delivered_seq, r.read_seq);
                }
            }
        }
        if !self.synced {
            self.synced = true;
            self.changes.synced = true;
        }
        self.session_synced = true;
    }

    fn on_error(&mut self, req_id: Option<ReqId>, code: &str, message: String, now: Instant) {
        let err = ClientError::server(code, message);
        let transient = err.code().is_some_and(|c| c.is_transient());
        if matches!(&req_id, Some(ReqId::Str(s)) if s == AUTO_ACK) {
            tracing::debug!(error = %err, "delivered ack refused");
            return;
        }
        if let Some(ReqId::UInt(n)) = &req_id {
            self.presence_asked.remove(n);
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
                    tracing::warn!(error = %err, %thread_id, %temp_id, "send refused for good");
                    self.changes
                        .outbox_removed
                        .push((thread_id.clone(), temp_id.clone()));
                    item.fail(&err);
                    self.events.push(Event::SendFailed(SendFailed {
                        thread_id,
                        temp_id,
                        error: err,
                    }));
                }
                self.flush_outbox(now);
            }
            Pending::FireHead { ping } => {
                if let Some(p) = self.pending.remove(&ping) {
                    p.fail(err);
                }
            }
            Pending::Resubscribe => {
                // Refused now (no shared thread any more, or over the limit): keep the
                // rest of the app's subscriptions; the app saw the original outcome.
                tracing::warn!(error = %err, "presence resubscription refused");
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

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::protocol::{decode_client, HistoryMessage};
    use messenger_core::MessageId;

    fn t(s: &str) -> ThreadId {
        ThreadId::new(s).expect("thread")
    }

    fn u(s: &str) -> UserId {
        UserId::new(s).expect("user")
    }

    fn settings() -> Settings {
        Settings::new("ws://x/ws".into())
    }

    fn core(cfg: Settings) -> Core {
        Core::new(std::sync::Arc::new(cfg), StoredState::default())
    }

    /// The app received these messages from the stream (and came back for more).
    fn consume(c: &mut Core, thread: &str, from_others: &[(u64, u64)], held: u64) {
        let mut consumed = Consumed::default();
        if let Some(&(seq, id)) = from_others.last() {
            consumed.received.insert(
                t(thread),
                AckDue {
                    seq,
                    message_id: MessageId(id),
                },
            );
        }
        consumed.held.insert(t(thread), held);
        c.consumed(consumed);
    }

    /// Stores whatever is pending, as the driver does.
    fn save(c: &mut Core) -> Option<StoreChanges> {
        let changes = c.take_changes();
        c.saved(Instant::now());
        changes
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
        c.connected(u("alice"), SessionId::from_id(1), Instant::now())
            .expect("same user");
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
    async fn outbox_is_flushed_on_connect_after_the_catch_up_list_and_before_new_sends() {
        let mut c = core(settings());
        let mut waits = Vec::new();
        for i in 0..3 {
            let (tx, rx) = oneshot::channel();
            waits.push(rx);
            let cmd = Command::Send {
                thread_id: t("t"),
                temp_id: format!("tmp-{i}"),
                text: format!("queued {i}"),
                reply: Some(tx),
                stored: None,
            };
            assert!(matches!(c.command(cmd, Instant::now()), Flow::Continue));
        }
        assert!(c.out.is_empty(), "nothing written while offline");
        let changes = save(&mut c).expect("the sends are stored");
        assert_eq!(changes.outbox_added.len(), 3);
        connect(&mut c);
        let frames = written(&mut c);
        let kinds: Vec<&str> = frames.iter().map(|(_, f)| f.type_name()).collect();
        assert_eq!(
            kinds,
            [
                "list_threads",
                "send_message",
                "send_message",
                "send_message"
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
        let (req, _) = again[1];
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

    /// The server runs a session's frames in order and any request only after the sends
    /// before it are answered: a whole outbox written at once would hold the catch-up
    /// and every gap fill behind it. So the catch-up list goes first, and at most
    /// MAX_SENDS_IN_FLIGHT sends wait for an answer; each answer lets the next one go.
    #[test]
    fn sends_in_flight_are_capped_so_a_fill_waits_behind_few() {
        let mut c = core(settings());
        let n = MAX_SENDS_IN_FLIGHT + 36;
        for i in 0..n {
            let cmd = Command::Send {
                thread_id: t("t"),
                temp_id: format!("tmp-{i}"),
                text: format!("queued {i}"),
                reply: None,
                stored: None,
            };
            assert!(matches!(c.command(cmd, Instant::now()), Flow::Continue));
        }
        save(&mut c).expect("the sends are stored");
        connect(&mut c);
        let frames = written(&mut c);
        assert_eq!(frames[0].1.type_name(), "list_threads");
        let sends: Vec<(u64, String)> = frames
            .iter()
            .filter_map(|(req, f)| match f {
                ClientFrame::SendMessage { temp_id, .. } => Some((*req, temp_id.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(sends.len(), MAX_SENDS_IN_FLIGHT, "only the cap goes out");
        assert_eq!(sends[0].1, "tmp-0");
        // A live message past a gap: its fill waits behind the capped sends only.
        c.on_frame(receive("g", 1, "bob"), Instant::now());
        c.on_frame(receive("g", 5, "bob"), Instant::now());
        let fill = written(&mut c);
        assert_eq!(fill.len(), 1);
        assert_eq!(fill[0].1.type_name(), "fetch_history");
        // An answer frees a slot: the next oldest send goes out.
        c.on_frame(
            ServerFrame::MessageSent {
                req_id: Some(ReqId::UInt(sends[0].0)),
                thread_id: t("t"),
                temp_id: sends[0].1.clone(),
                message_id: MessageId(900),
                seq: 1,
                sent_at: 0,
            },
            Instant::now(),
        );
        let next: Vec<String> = written(&mut c)
            .into_iter()
            .filter_map(|(_, f)| match f {
                ClientFrame::SendMessage { temp_id, .. } => Some(temp_id),
                _ => None,
            })
            .collect();
        assert_eq!(next, [format!("tmp-{MAX_SENDS_IN_FLIGHT}")]);
        // A lost connection: the resend after the next list is capped again.
        c.connection_lost();
        connect(&mut c);
        let again = written(&mut c);
        assert_eq!(again[0].1.type_name(), "list_threads");
        assert_eq!(again.len(), 1 + MAX_SENDS_IN_FLIGHT);
    }

    #[tokio::test]
    async fn catch_up_fetches_after_the_last_seq_and_pages() {
        let mut cfg = settings();
        cfg.resume.insert(t("old"), 2);
        cfg.auto_ack_delivered = false;
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
            muted: false,
            muted_until: None,
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
    async fn delivered_is_acked_only_for_what_the_app_received() {
        let mut c = core(settings());
        connect(&mut c);
        let _ = written(&mut c);
        c.synced = true;
        c.seq.start_at(&t("t"), 0);
        c.on_frame(receive("t", 1, "alice"), Instant::now());
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
            "a gap asks for a fill, no ack: {frames:?}"
        );
        c.on_frame(receive("t", 2, "bob"), Instant::now());
        assert_eq!(delivered(&mut c), vec![1, 2, 3]);
        c.tick(Instant::now());
        assert!(
            written(&mut c).is_empty(),
            "queued for the app is not received by the app: no ack"
        );
        // The app took 1 (its own) and 2 from the stream.
        consume(&mut c, "t", &[(2, 102)], 1);
        assert!(written(&mut c).is_empty(), "acks wait for the tick");
        c.tick(Instant::now());
        let frames = written(&mut c);
        assert!(
            matches!(
                &frames[..],
                [(
                    _,
                    ClientFrame::MessageAck {
                        message_id: MessageId(102),
                        status: AckStatus::Delivered,
                        ..
                    }
                )]
            ),
            "one ack up to what the app received: {frames:?}"
        );
        let changes = save(&mut c).expect("positions");
        assert_eq!(
            changes.threads.get(&t("t")),
            Some(&ThreadPosition {
                held_seq: 1,
                ack_due: None
            }),
            "held what the app came back from; the ack is no longer owed"
        );
        // Received again (older) is not acked twice; the next one is.
        consume(&mut c, "t", &[(2, 102)], 2);
        c.tick(Instant::now());
        assert!(written(&mut c).is_empty());
        consume(&mut c, "t", &[(3, 103)], 3);
        c.tick(Instant::now());
        assert_eq!(written(&mut c).len(), 1);
    }

    #[tokio::test]
    async fn a_restart_resumes_positions_owed_acks_and_the_outbox() {
        let mut stored = StoredState {
            user_id: Some(u("alice")),
            synced: true,
            ..Default::default()
        };
        stored.threads.insert(
            t("t"),
            ThreadPosition {
                held_seq: 4,
                ack_due: Some(AckDue {
                    seq: 4,
                    message_id: MessageId(104),
                }),
            },
        );
        stored.outbox.push(OutboxEntry {
            thread_id: t("t"),
            temp_id: "kept".into(),
            text: "from before".into(),
            queued_at: 1,
        });
        let mut c = Core::new(std::sync::Arc::new(settings()), stored);
        // Another user's token: refused.
        let wrong = c.connected(u("mallory"), SessionId::from_id(1), Instant::now());
        assert!(
            matches!(wrong, Err(ClientError::WrongUser { .. })),
            "{wrong:?}"
        );
        connect(&mut c);
        let frames = written(&mut c);
        // The catch-up's list first, then the outbox.
        assert_eq!(frames[0].1.type_name(), "list_threads", "{frames:?}");
        let list_req = frames[0].0;
        assert!(
            matches!(&frames[1].1, ClientFrame::SendMessage { temp_id, .. } if temp_id == "kept"),
            "{frames:?}"
        );
        c.tick(Instant::now());
        let frames = written(&mut c);
        assert!(
            frames.iter().any(|(_, f)| matches!(
                f,
                ClientFrame::MessageAck {
                    message_id: MessageId(104),
                    ..
                }
            )),
            "the owed ack goes out: {frames:?}"
        );
        // Catch-up continues after the held seq, not from the server's start.
        let list = ServerFrame::Threads {
            req_id: Some(ReqId::UInt(list_req)),
            threads: vec![ThreadSummary {
                thread_id: t("t"),
                kind: messenger_core::model::ThreadKind::Group,
                title: None,
                members: vec![u("alice"), u("bob")],
                last_seq: 9,
                receipts: Default::default(),
                unread: 0,
                muted: false,
                muted_until: None,
            }],
        };
        c.on_frame(list, Instant::now());
        let frames = written(&mut c);
        assert!(
            matches!(
                &frames[..],
                [(
                    _,
                    ClientFrame::FetchHistory {
                        after_seq: Some(4),
                        ..
                    }
                )]
            ),
            "{frames:?}"
        );
    }

    #[tokio::test]
    async fn errors_are_routed_to_their_callers() {
        let mut c = core(settings());
        connect(&mut c);
        let _ = written(&mut c);
        let now = Instant::now();
        // A fire-and-confirm frame refused by the server.
        let (tx, rx) = oneshot::channel();
        let frame = ClientFrame::Typing {
            thread_id: t("t"),
            typing: true,
        };
        c.command(Command::Fire { frame, reply: tx }, now);
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
        c.command(
            Command::Send {
                thread_id: t("t"),
                temp_id: "a".into(),
                text: "x".into(),
                reply: Some(tx),
                stored: None,
            },
            now,
        );
        assert!(c.out.is_empty(), "not before the store has it");
        save(&mut c);
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
        c.command(
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
        let mut c = core(settings());
        connect(&mut c);
        let _ = written(&mut c);
        let now = Instant::now();
        // Confirmed fire-and-forget frames leave nothing behind.
        let (tx, rx) = oneshot::channel();
        let frame = ClientFrame::Typing {
            thread_id: t("t"),
            typing: true,
        };
        c.command(Command::Fire { frame, reply: tx }, now);
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
            consume(&mut c, "t", &[(seq, 100 + seq)], seq);
        }
        c.tick(now);
        assert_eq!(written(&mut c).len(), 1, "fifty messages, one ack");
        // An abandoned confirmation is swept with its frame.
        let (tx, rx) = oneshot::channel();
        let frame = ClientFrame::Typing {
            thread_id: t("t"),
            typing: false,
        };
        c.command(Command::Fire { frame, reply: tx }, now);
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

    /// Receipt frames relayed by different nodes can cross during a failover: the app
    /// sees each member's watermarks only move forward, a stale or repeated one is not
    /// shown, and a READ raises the delivered mark too.
    #[test]
    fn stale_receipts_are_not_shown() {
        let mut c = core(settings());
        connect(&mut c);
        let ack = |seq: u64, status: AckStatus| ServerFrame::MessageAck {
            thread_id: t("g"),
            message_id: MessageId(100 + seq),
            seq,
            status,
            user_id: u("bob"),
            at: 0,
        };
        c.events.clear();
        for (seq, status) in [
            (5, AckStatus::Delivered),
            (9, AckStatus::Delivered),
            (7, AckStatus::Delivered),
            (9, AckStatus::Delivered),
            (8, AckStatus::Read),
            (6, AckStatus::Read),
            (8, AckStatus::Delivered),
            (12, AckStatus::Delivered),
        ] {
            c.on_frame(ack(seq, status), Instant::now());
        }
        let shown: Vec<(u64, AckStatus)> = std::mem::take(&mut c.events)
            .into_iter()
            .filter_map(|e| match e {
                Event::Receipt(r) => Some((r.seq, r.status)),
                _ => None,
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                (5, AckStatus::Delivered),
                (9, AckStatus::Delivered),
                (8, AckStatus::Read),
                (12, AckStatus::Delivered),
            ]
        );
    }

    #[test]
    fn presence_subscriptions_are_renewed_on_every_connection() {
        let mut c = core(settings());
        connect(&mut c);
        written(&mut c);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let sub = ClientFrame::PresenceSubscribe {
            user_ids: vec![u("bob"), u("carol")],
        };
        c.command(
            Command::Request {
                frame: sub,
                reply: Want::Presence(tx),
            },
            Instant::now(),
        );
        let (id, _) = written(&mut c).pop().expect("subscribe written");
        // Accepted: the server answers with the current presence under the req id.
        for who in ["bob", "carol"] {
            c.on_frame(
                ServerFrame::Presence {
                    req_id: Some(ReqId::UInt(id)),
                    user_id: u(who),
                    status: messenger_core::model::PresenceStatus::Online,
                    last_seen: None,
                },
                Instant::now(),
            );
        }
        c.connection_lost();
        connect(&mut c);
        let again: Vec<ClientFrame> = written(&mut c).into_iter().map(|(_, f)| f).collect();
        assert!(
            again
                .iter()
                .any(|f| matches!(f, ClientFrame::PresenceSubscribe { user_ids }
                if user_ids == &vec![u("bob"), u("carol")])),
            "{again:?}"
        );
        // Unsubscribed users are not renewed; a refused subscription never was.
        let (tx, _rx) = tokio::sync::oneshot::channel();
        c.command(
            Command::Fire {
                frame: ClientFrame::PresenceUnsubscribe {
                    user_ids: vec![u("bob")],
                },
                reply: tx,
            },
            Instant::now(),
        );
        let (tx, _rx) = tokio::sync::oneshot::channel();
        c.command(
            Command::Request {
                frame: ClientFrame::PresenceSubscribe {
                    user_ids: vec![u("mallory")],
                },
                reply: Want::Presence(tx),
            },
            Instant::now(),
        );
        let refused = written(&mut c)
            .into_iter()
            .find(|(_, f)| matches!(f, ClientFrame::PresenceSubscribe { .. }))
            .expect("written")
            .0;
        c.on_frame(
            ServerFrame::error(Some(ReqId::UInt(refused)), "forbidden", "no shared thread"),
            Instant::now(),
        );
        c.connection_lost();
        connect(&mut c);
        let again: Vec<ClientFrame> = written(&mut c).into_iter().map(|(_, f)| f).collect();
        assert!(
            again
                .iter()
                .any(|f| matches!(f, ClientFrame::PresenceSubscribe { user_ids }
                if user_ids == &vec![u("carol")])),
            "{again:?}"
        );
    }
}
