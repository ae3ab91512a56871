//! The [`Client`] handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use messenger_core::model::{AckStatus, ThreadKind};
use messenger_core::protocol::{ClientFrame, CreateThread, PushTargetInfo, ThreadSummary};
use messenger_core::push::{PushPlatform, WebPushSubscription};
use messenger_core::{MessageId, ThreadId, UserId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::TokenProvider;
use crate::builder::ClientBuilder;
use crate::config::Settings;
use crate::driver::core::{Command, Core, Reply, Want};
use crate::driver::{Driver, Shared};
use crate::error::ClientError;
use crate::event::{ConnectionState, Events, Message, Sent, StopReason, Thread, ThreadMute};
use crate::store::{ClientStore, OutboxEntry, StoredState};
use crate::tls::Tls;

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

/// A handle to the client. Cheap to clone; every clone talks to the same background
/// task, which owns the socket, reconnects by itself and keeps the store.
///
/// Made by [`Client::builder`] (or [`Client::connect`]), which returns it together
/// with its [`Events`]. Dropping every handle closes the connection;
/// [`Client::close`] does it explicitly.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cmds: mpsc::Sender<Command>,
    shared: Arc<Shared>,
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
    /// A [`ClientBuilder`]: URL, token or token provider, store, TLS, timeouts.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// Connects to `url` (e.g. `ws://127.0.0.1:8080/ws`) with a fixed `token` and the
    /// defaults (in-memory store, unbounded retries): the shortest way in. Resolves once
    /// the server has welcomed the client and the first catch-up fixed where each
    /// thread's events start. Shorthand for
    /// `Client::builder().url(url).token(token).connect()`.
    pub async fn connect(
        url: impl Into<String>,
        token: impl Into<String>,
    ) -> Result<(Client, Events), ClientError> {
        Client::builder().url(url).token(token).connect().await
    }

    /// Starts the task (the builder checked everything).
    pub(crate) fn start(
        settings: Settings,
        provider: Arc<dyn TokenProvider>,
        store: Arc<dyn ClientStore>,
        stored: StoredState,
        tls: Tls,
    ) -> (Client, Events) {
        let (cmd_tx, cmd_rx) = mpsc::channel(settings.command_capacity.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(settings.event_capacity.max(1));
        let shared = Arc::new(Shared::new());
        if let Some(u) = &stored.user_id {
            let _ = shared.user_id.set(u.clone());
        }
        let request_timeout = settings.request_timeout;
        let core = Core::new(Arc::new(settings), stored);
        let driver = Driver::new(core, cmd_rx, ev_tx, shared.clone(), provider, store, tls);
        tokio::spawn(driver.run());
        let client = Client {
            inner: Arc::new(Inner {
                cmds: cmd_tx,
                shared: shared.clone(),
                request_timeout,
                temp_prefix: format!("c{:012x}", fastrand::u64(..) >> 16),
                temp_counter: AtomicU64::new(0),
            }),
        };
        let events = Events {
            rx: ev_rx,
            shared,
            in_hand: None,
        };
        (client, events)
    }

    /// Waits until this client's first connection is up and its catch-up list was
    /// answered. Fails with the reason if the client stops first.
    pub async fn wait_connected(&self) -> Result<(), ClientError> {
        let mut ready = self.inner.shared.ready.subscribe();
        let mut state = self.inner.shared.state.subscribe();
        loop {
            if *ready.borrow_and_update() {
                return Ok(());
            }
            if let ConnectionState::Stopped { reason } = &*state.borrow_and_update() {
                return Err(match reason {
                    StopReason::Failed(e) => e.clone(),
                    _ => ClientError::Closed,
                });
            }
            tokio::select! {
                r = ready.changed() => if r.is_err() { return Err(ClientError::Closed) },
                r = state.changed() => if r.is_err() { return Err(ClientError::Closed) },
            }
        }
    }

    /// The authenticated user (from the store or the server's `welcome`).
    pub fn user_id(&self) -> Option<UserId> {
        self.inner.shared.user_id.get().cloned()
    }

    /// The connection's state right now.
    pub fn state(&self) -> ConnectionState {
        self.inner.shared.state.borrow().clone()
    }

    /// A watch on the state: every change, latest first, apart from the event stream
    /// (for a UI banner that lives elsewhere in the app).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.inner.shared.state.subscribe()
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
    /// The message goes to the outbox, in the store, before it is written to the
    /// server; it waits there while the client is disconnected and is resent, under
    /// the same temp id, on every reconnect (and after a restart, with a persistent
    /// store) until the server confirms it; the server's idempotent send makes that
    /// safe. There is no timeout: wrap the call in one if needed (the message stays in
    /// the outbox and is still delivered; its [`Event::Sent`](crate::Event::Sent)
    /// reports the outcome). Fails with [`ClientError::Server`] when the server refuses
    /// it (`forbidden`, `too_large`, ...; `rate_limited` and `unavailable` are
    /// retried), [`ClientError::Store`] when the store cannot keep it (it was not sent),
    /// and with the client's final error when it stops (a persistent store still holds
    /// it for the next run).
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
            reply: Some(tx),
            stored: None,
        })
        .await?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Queues `text` for `thread` and returns its temp id as soon as the store holds
    /// it, without waiting for the server: the fire-and-forget send of an offline-first
    /// app. The outcome arrives as [`Event::Sent`](crate::Event::Sent) or
    /// [`Event::SendFailed`](crate::Event::SendFailed) with that temp id.
    pub async fn enqueue(
        &self,
        thread: &ThreadId,
        text: impl Into<String>,
    ) -> Result<String, ClientError> {
        let temp_id = self.new_temp_id();
        self.enqueue_with_temp_id(thread, temp_id.clone(), text)
            .await?;
        Ok(temp_id)
    }

    /// [`Client::enqueue`] under the app's own temp id.
    pub async fn enqueue_with_temp_id(
        &self,
        thread: &ThreadId,
        temp_id: impl Into<String>,
        text: impl Into<String>,
    ) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Send {
            thread_id: thread.clone(),
            temp_id: temp_id.into(),
            text: text.into(),
            reply: None,
            stored: Some(tx),
        })
        .await?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// The sends waiting for the server, oldest first (e.g. to show "sending…" after a
    /// restart).
    pub async fn outbox(&self) -> Result<Vec<OutboxEntry>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Outbox { reply: tx }).await?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Writes to the store everything the client must remember now: positions of what
    /// the app has handled, owed acks, receipts (sends are always stored before they
    /// are written). Call it when the app goes to the background.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Flush { reply: tx }).await?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Disconnects on purpose (the app went to the background): owed acks and
    /// positions are written, the socket closed, and nothing is attempted until
    /// [`Client::resume`]. Sends keep going to the outbox. State
    /// [`ConnectionState::Suspended`].
    pub async fn suspend(&self) -> Result<(), ClientError> {
        self.command(Command::Suspend).await
    }

    /// Ends a suspension or a backoff wait: connects now.
    pub async fn resume(&self) -> Result<(), ClientError> {
        self.command(Command::Reconnect { force: false }).await
    }

    /// Replaces the connection now, whatever the state (the network changed: the old
    /// socket may be dead without knowing it). Also ends a suspension or a backoff
    /// wait, and resets the attempt count.
    pub async fn reconnect_now(&self) -> Result<(), ClientError> {
        self.command(Command::Reconnect { force: true }).await
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
    /// sent automatically for what the app received, unless
    /// [`ClientBuilder::auto_ack_delivered`] is off.)
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
    /// every change arrive as [`Event::Presence`](crate::Event::Presence). The client
    /// subscribes again on every reconnect (subscriptions belong to a server session),
    /// so the current presence arrives again after each one.
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

    /// Registers (or refreshes) an APNs device token for the user's push notifications.
    /// `topic` is the app's bundle id; `sandbox` for development builds. Registering
    /// the same token again refreshes it (same `target_id`).
    pub async fn register_apns(
        &self,
        token: &str,
        topic: &str,
        sandbox: bool,
        locale: Option<&str>,
    ) -> Result<PushTargetInfo, ClientError> {
        self.register_push(
            PushPlatform::Apns,
            Some(token),
            None,
            Some(topic),
            sandbox,
            locale,
        )
        .await
    }

    /// Registers (or refreshes) an FCM registration token; `app_id` is the Android
    /// package name, if any.
    pub async fn register_fcm(
        &self,
        token: &str,
        app_id: Option<&str>,
        locale: Option<&str>,
    ) -> Result<PushTargetInfo, ClientError> {
        self.register_push(PushPlatform::Fcm, Some(token), None, app_id, false, locale)
            .await
    }

    /// Registers (or refreshes) a browser's Web Push subscription
    /// (`PushSubscription.toJSON()`: an https endpoint with `p256dh` and `auth` keys).
    pub async fn register_web_push(
        &self,
        subscription: WebPushSubscription,
        locale: Option<&str>,
    ) -> Result<PushTargetInfo, ClientError> {
        self.register_push(
            PushPlatform::WebPush,
            None,
            Some(subscription),
            None,
            false,
            locale,
        )
        .await
    }

    async fn register_push(
        &self,
        platform: PushPlatform,
        token: Option<&str>,
        subscription: Option<WebPushSubscription>,
        app_id: Option<&str>,
        sandbox: bool,
        locale: Option<&str>,
    ) -> Result<PushTargetInfo, ClientError> {
        let frame = ClientFrame::RegisterPushTarget {
            platform,
            token: token.map(str::to_string),
            subscription,
            app_id: app_id.map(str::to_string),
            locale: locale.map(str::to_string),
            sandbox: sandbox.then_some(true),
        };
        self.request(frame, Want::PushTarget).await
    }

    /// Forgets one of the user's push targets (by the `target_id` registration gave).
    /// Returns whether the user had it.
    pub async fn unregister_push_target(&self, target_id: &str) -> Result<bool, ClientError> {
        let frame = ClientFrame::UnregisterPushTarget {
            target_id: target_id.to_string(),
        };
        self.request(frame, Want::PushTargetRemoved).await
    }

    /// The user's push targets, oldest first (never their tokens).
    pub async fn list_push_targets(&self) -> Result<Vec<PushTargetInfo>, ClientError> {
        self.request(ClientFrame::ListPushTargets {}, Want::PushTargets)
            .await
    }

    /// Mutes push notifications for `thread`, until `until` (Unix ms) or for ever.
    /// The user's other sessions get [`Event::ThreadMute`](crate::Event::ThreadMute).
    pub async fn mute_thread(
        &self,
        thread: &ThreadId,
        until: Option<u64>,
    ) -> Result<ThreadMute, ClientError> {
        let frame = ClientFrame::MuteThread {
            thread_id: thread.clone(),
            until,
        };
        self.request(frame, Want::ThreadMute).await
    }

    /// Unmutes `thread`.
    pub async fn unmute_thread(&self, thread: &ThreadId) -> Result<ThreadMute, ClientError> {
        let frame = ClientFrame::UnmuteThread {
            thread_id: thread.clone(),
        };
        self.request(frame, Want::ThreadMute).await
    }

    /// A protocol round trip; returns its duration.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Ping { reply: tx }).await?;
        self.wait(rx).await
    }

    /// Closes the connection for good. Owed acks and positions are written first.
    /// Sends still in the outbox fail for their callers with [`ClientError::Closed`]
    /// (a persistent store keeps them for the next run); the event stream ends after
    /// [`ConnectionState::Stopped`].
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
