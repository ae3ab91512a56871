//! The [`Client`] handle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use messenger_core::model::{AckStatus, ThreadKind};
use messenger_core::protocol::{ClientFrame, CreateThread, ThreadSummary};
use messenger_core::{MessageId, ThreadId, UserId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ClientConfig;
use crate::driver::{self, Command, Driver, Reply, Shared, Want};
use crate::error::ClientError;
use crate::event::{ConnectionState, Events, Message, Sent, Thread};

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest messages.
    Latest,
    /// The newest messages with seq below this.
    Before(u64),
    /// The oldest messages with seq above this (paging forward).
    After(u64),
}

/// One page of a thread's history, ascending by seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The thread.
    pub thread_id: ThreadId,
    /// Ascending by seq.
    pub messages: Vec<Message>,
    /// More exist in the direction paged.
    pub has_more: bool,
}

/// A handle to a connected client. Cheap to clone; every clone talks to the same
/// background task, which owns the socket and reconnects by itself.
///
/// Dropping every handle closes the connection; [`Client::close`] does it explicitly.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cmds: mpsc::Sender<Command>,
    events: Mutex<Option<Events>>,
    shared: Arc<Shared>,
    state: watch::Receiver<ConnectionState>,
    request_timeout: Duration,
    temp_prefix: String,
    temp_counter: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user_id", &self.user_id())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8080/ws`) with `token`, with the default
    /// [`ClientConfig`]. Resolves once the server has welcomed the client and the first
    /// `list_threads` has fixed where each thread's events start (see [`InitialSync`](crate::InitialSync)).
    ///
    /// Connection failures are retried with backoff (forever by default); a refused
    /// token ([`ClientError::Auth`]) and a bad URL fail at once.
    pub async fn connect(
        url: impl Into<String>,
        token: impl Into<String>,
    ) -> Result<Client, ClientError> {
        Client::connect_with(ClientConfig::new(url, token)).await
    }

    /// Connects with a full [`ClientConfig`]. Must be called inside a tokio runtime.
    pub async fn connect_with(config: ClientConfig) -> Result<Client, ClientError> {
        driver::request(&config)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_capacity.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity.max(1));
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let shared = Arc::new(Shared {
            state: state_tx,
            user_id: OnceLock::new(),
            events_taken: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let request_timeout = config.request_timeout;
        let driver = Driver::new(config, cmd_rx, ev_tx, shared.clone(), ready_tx);
        tokio::spawn(driver.run());
        let client = Client {
            inner: Arc::new(Inner {
                cmds: cmd_tx,
                events: Mutex::new(Some(Events { rx: ev_rx })),
                shared,
                state: state_rx,
                request_timeout,
                temp_prefix: format!("c{:012x}", fastrand::u64(..) >> 16),
                temp_counter: AtomicU64::new(0),
            }),
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// The event stream. Returns `Some` the first time and `None` after, since every
    /// event goes to exactly one consumer. Take it right after connecting and drain it:
    /// once taken, a full stream makes the client wait for the app (backpressure).
    /// Until it is taken, events are buffered up to
    /// [`ClientConfig::event_capacity`] and newer ones are dropped.
    pub fn events(&self) -> Option<Events> {
        let taken = self
            .inner
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if taken.is_some() {
            self.inner
                .shared
                .events_taken
                .store(true, Ordering::Release);
        }
        taken
    }

    /// The authenticated user (from the server's `welcome`).
    pub fn user_id(&self) -> Option<UserId> {
        self.inner.shared.user_id.get().cloned()
    }

    /// The connection's state right now.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A fresh temp id, unique for this client.
    pub fn new_temp_id(&self) -> String {
        let n = self.inner.temp_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.temp_prefix)
    }

    async fn command(&self, cmd: Command) -> Result<(), ClientError> {
        self.inner
            .cmds
            .send(cmd)
            .await
            .map_err(|_| ClientError::Closed)
    }

    async fn wait<T>(
        &self,
        rx: oneshot::Receiver<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.inner.request_timeout, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(r)) => r,
        }
    }

    async fn request<T>(
        &self,
        frame: ClientFrame,
        want: impl FnOnce(Reply<T>) -> Want,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Request {
            frame,
            reply: want(tx),
        })
        .await?;
        self.wait(rx).await
    }

    async fn fire(&self, frame: ClientFrame) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Fire { frame, reply: tx }).await?;
        self.wait(rx).await
    }

    /// Sends `text` to `thread` under a fresh temp id. Resolves when the server answered
    /// `message_sent`, with the authoritative id and seq.
    ///
    /// The message waits in the outbox while the client is disconnected and is resent,
    /// under the same temp id, on every reconnect until the server confirms it; the
    /// server's idempotent send makes that safe. There is no timeout: wrap the call in
    /// one if needed (the message stays in the outbox and is still delivered; its
    /// [`Event::Sent`](crate::Event::Sent) reports the outcome). Fails with
    /// [`ClientError::Server`] when the server refuses it (`forbidden`, `too_large`,
    /// ...; `rate_limited` and `unavailable` are retried), and with the client's final
    /// error when it stops.
    pub async fn send(
        &self,
        thread: &ThreadId,
        text: impl Into<String>,
    ) -> Result<Sent, ClientError> {
        let temp_id = self.new_temp_id();
        self.send_with_temp_id(thread, temp_id, text).await
    }

    /// [`Client::send`] under the app's own temp id (unique per thread and user; sending
    /// the same temp id again yields the first message's id and seq).
    pub async fn send_with_temp_id(
        &self,
        thread: &ThreadId,
        temp_id: impl Into<String>,
        text: impl Into<String>,
    ) -> Result<Sent, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Send {
            thread_id: thread.clone(),
            temp_id: temp_id.into(),
            text: text.into(),
            reply: tx,
        })
        .await?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Marks every message of `thread` up to `message_id` read.
    pub async fn mark_read(
        &self,
        thread: &ThreadId,
        message_id: MessageId,
    ) -> Result<(), ClientError> {
        self.ack(thread, message_id, AckStatus::Read).await
    }

    /// Acks every message of `thread` up to `message_id` with `status`. (`DELIVERED` is
    /// sent automatically unless [`ClientConfig::auto_ack_delivered`] is off.)
    pub async fn ack(
        &self,
        thread: &ThreadId,
        message_id: MessageId,
        status: AckStatus,
    ) -> Result<(), ClientError> {
        self.fire(ClientFrame::MessageAck {
            thread_id: thread.clone(),
            message_id,
            status,
        })
        .await
    }

    /// Opens (or finds) the direct thread with `other`.
    pub async fn create_direct(&self, other: &UserId) -> Result<Thread, ClientError> {
        let frame = ClientFrame::CreateThread(CreateThread {
            kind: ThreadKind::Direct,
            members: vec![other.clone()],
            title: None,
        });
        self.request(frame, Want::Thread).await
    }

    /// Creates a group with `members` (the caller is always a member) and `title`.
    pub async fn create_group(
        &self,
        members: &[UserId],
        title: impl Into<String>,
    ) -> Result<Thread, ClientError> {
        let frame = ClientFrame::CreateThread(CreateThread {
            kind: ThreadKind::Group,
            members: members.to_vec(),
            title: Some(title.into()),
        });
        self.request(frame, Want::Thread).await
    }

    /// Adds `members` to a group.
    pub async fn add_members(
        &self,
        thread: &ThreadId,
        members: &[UserId],
    ) -> Result<Thread, ClientError> {
        let frame = ClientFrame::AddMembers {
            thread_id: thread.clone(),
            members: members.to_vec(),
        };
        self.request(frame, Want::Thread).await
    }

    /// Leaves a group.
    pub async fn leave_thread(&self, thread: &ThreadId) -> Result<Thread, ClientError> {
        let frame = ClientFrame::LeaveThread {
            thread_id: thread.clone(),
        };
        self.request(frame, Want::Thread).await
    }

    /// The caller's threads with `last_seq`, receipts and unread counts.
    pub async fn list_threads(&self) -> Result<Vec<ThreadSummary>, ClientError> {
        self.request(ClientFrame::ListThreads {}, Want::Threads)
            .await
    }

    /// One page of history. `limit` defaults to 50 on the server and is capped at 200.
    ///
    /// Pages are returned to the caller only; they are not events.
    pub async fn fetch_history(
        &self,
        thread: &ThreadId,
        cursor: Cursor,
        limit: Option<u64>,
    ) -> Result<HistoryPage, ClientError> {
        let (before_seq, after_seq) = match cursor {
            Cursor::Latest => (None, None),
            Cursor::Before(s) => (Some(s), None),
            Cursor::After(s) => (None, Some(s)),
        };
        let frame = ClientFrame::FetchHistory {
            thread_id: thread.clone(),
            before_seq,
            after_seq,
            limit,
        };
        self.request(frame, Want::History).await
    }

    /// Every message of `thread` after `after_seq`, paging forward until the end.
    pub async fn history_after(
        &self,
        thread: &ThreadId,
        after_seq: u64,
    ) -> Result<Vec<Message>, ClientError> {
        let mut out = Vec::new();
        let mut after = after_seq;
        loop {
            let page = self
                .fetch_history(thread, Cursor::After(after), Some(200))
                .await?;
            if let Some(last) = page.messages.last() {
                after = last.seq;
            }
            let more = page.has_more && !page.messages.is_empty();
            out.extend(page.messages);
            if !more {
                return Ok(out);
            }
        }
    }

    /// A pager that walks `thread` backwards from the newest message, `page_size` at a
    /// time (for scrollback).
    pub fn history_pager(&self, thread: &ThreadId, page_size: u64) -> HistoryPager {
        HistoryPager {
            client: self.clone(),
            thread: thread.clone(),
            page_size,
            before: None,
            done: false,
        }
    }

    /// Subscribes to the presence of `users` (who must share a thread with the caller;
    /// otherwise the whole list is refused with `forbidden`). Their current presence and
    /// every change arrive as [`Event::Presence`](crate::Event::Presence).
    pub async fn subscribe_presence(&self, users: &[UserId]) -> Result<(), ClientError> {
        if users.is_empty() {
            return Ok(());
        }
        let frame = ClientFrame::PresenceSubscribe {
            user_ids: users.to_vec(),
        };
        self.request(frame, Want::Presence).await
    }

    /// Stops presence updates for `users`.
    pub async fn unsubscribe_presence(&self, users: &[UserId]) -> Result<(), ClientError> {
        self.fire(ClientFrame::PresenceUnsubscribe {
            user_ids: users.to_vec(),
        })
        .await
    }

    /// Tells the other members that the user is (or stopped) typing in `thread`.
    pub async fn typing(&self, thread: &ThreadId, typing: bool) -> Result<(), ClientError> {
        self.fire(ClientFrame::Typing {
            thread_id: thread.clone(),
            typing,
        })
        .await
    }

    /// A protocol round trip; returns its duration.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Ping { reply: tx }).await?;
        self.wait(rx).await
    }

    /// Closes the connection for good. Sends still in the outbox fail with
    /// [`ClientError::Closed`]; the event stream ends after
    /// [`ConnectionState::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.command(Command::Close { reply: tx }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Walks a thread's history backwards, page by page (see [`Client::history_pager`]).
#[derive(Debug)]
pub struct HistoryPager {
    client: Client,
    thread: ThreadId,
    page_size: u64,
    before: Option<u64>,
    done: bool,
}

impl HistoryPager {
    /// The next older page (ascending by seq), or `None` at the start of the thread.
    pub async fn older(&mut self) -> Result<Option<HistoryPage>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let cursor = self.before.map_or(Cursor::Latest, Cursor::Before);
        let page = self
            .client
            .fetch_history(&self.thread, cursor, Some(self.page_size))
            .await?;
        match page.messages.first() {
            Some(first) => self.before = Some(first.seq),
            None => {
                self.done = true;
                return Ok(None);
            }
        }
        if !page.has_more || self.before == Some(1) {
            self.done = true;
        }
        Ok(Some(page))
    }
}
