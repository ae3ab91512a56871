//! The background task that owns the socket.
//!
//! [`core::Core`] is the protocol logic with no I/O; [`connect`] makes one connection
//! attempt (token, TCP, TLS, upgrade, `welcome`); [`Driver`] runs the connection loop:
//! attempts with backoff, the session, the store, suspension and stopping.

pub(crate) mod connect;
pub(crate) mod core;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use messenger_core::protocol::ServerFrame;
use messenger_core::UserId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use self::connect::Opened;
use self::core::{Command, Core, Flow};
use crate::auth::TokenProvider;
use crate::error::ClientError;
use crate::event::{ConnectionState, Consumed, Event, StopReason};
use crate::store::ClientStore;
use crate::tls::Tls;

/// Housekeeping period: outbox retries, acks, positions, heartbeats.
const TICK: Duration = Duration::from_millis(250);

/// Shared between the task, the handles and the event stream.
pub(crate) struct Shared {
    pub state: watch::Sender<ConnectionState>,
    /// Set when this process's first connection finished its catch-up list.
    pub ready: watch::Sender<bool>,
    pub user_id: OnceLock<UserId>,
    consumed: Mutex<Consumed>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            state: watch::channel(ConnectionState::Connecting { attempt: 0 }).0,
            ready: watch::channel(false).0,
            user_id: OnceLock::new(),
            consumed: Mutex::new(Consumed::default()),
        }
    }

    pub fn consumed(&self) -> MutexGuard<'_, Consumed> {
        self.consumed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_consumed(&self) -> Consumed {
        std::mem::take(&mut *self.consumed())
    }
}

/// Why the offline wait or a session ended.
enum Interrupt {
    Close(Option<oneshot::Sender<()>>),
    Suspend,
    Reconnect,
    Stop(ClientError),
}

/// The result of one session.
enum End {
    Lost(String),
    Interrupt(Interrupt),
}

/// The task.
pub(crate) struct Driver {
    core: Core,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    provider: Arc<dyn TokenProvider>,
    store: Arc<dyn ClientStore>,
    tls: Tls,
    /// Events waiting for room in the stream, in order. While it is not empty the
    /// socket is not read (backpressure), so it holds at most one frame's events plus
    /// connection states, and consecutive states are folded into the latest.
    outq: VecDeque<Event>,
}

impl Driver {
    pub fn new(
        core: Core,
        cmds: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        shared: Arc<Shared>,
        provider: Arc<dyn TokenProvider>,
        store: Arc<dyn ClientStore>,
        tls: Tls,
    ) -> Driver {
        Driver {
            core,
            cmds,
            events,
            shared,
            provider,
            store,
            tls,
            outq: VecDeque::new(),
        }
    }

    /// Publishes a state: at once on the watch; in the event stream in order, never
    /// blocking (states waiting for room are folded into the latest).
    fn set_state(&mut self, s: ConnectionState) {
        self.shared.state.send_replace(s.clone());
        self.push_event(Event::Connection(s));
        self.flush_events();
    }

    fn push_event(&mut self, ev: Event) {
        if let Event::Connection(s) = &ev {
            self.shared.state.send_replace(s.clone());
            if let Some(Event::Connection(last)) = self.outq.back_mut() {
                *last = s.clone();
                return;
            }
        }
        self.outq.push_back(ev);
    }

    /// Moves what the core queued to the stream, as far as it has room.
    fn flush_events(&mut self) {
        for ev in std::mem::take(&mut self.core.events) {
            self.push_event(ev);
        }
        while let Some(ev) = self.outq.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.outq.push_front(ev);
                    return;
                }
                // The app dropped the stream: it does not listen.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.outq.clear();
                    return;
                }
            }
        }
    }

    /// One event into a reserved slot.
    fn send_reserved(
        &mut self,
        permit: Result<mpsc::OwnedPermit<Event>, mpsc::error::SendError<()>>,
    ) {
        match permit {
            Ok(p) => {
                if let Some(ev) = self.outq.pop_front() {
                    p.send(ev);
                }
            }
            Err(_) => self.outq.clear(),
        }
    }

    /// Takes in what the app consumed and writes pending changes to the store.
    async fn persist(&mut self) {
        let consumed = self.shared.take_consumed();
        if !consumed.held.is_empty() || !consumed.received.is_empty() {
            self.core.consumed(consumed);
        }
        self.save().await;
    }

    /// Writes pending changes to the store now if sends wait for it (positions and
    /// receipts alone wait for the next tick: one write per tick, not per frame).
    async fn save_sends(&mut self) {
        if self.core.sends_unsaved() {
            self.save().await;
        }
    }

    async fn save(&mut self) {
        if let Some(changes) = self.core.take_changes() {
            match self.store.save(changes.clone()).await {
                Ok(()) => self.core.saved(Instant::now()),
                Err(e) => self.core.save_failed(changes, e),
            }
        }
    }

    /// Handles one command (`None`: every handle is gone); `Some` when it interrupts
    /// the connection or the wait. `online`: a live connection that a non-forced
    /// reconnect leaves as it is.
    async fn handle_command(&mut self, cmd: Option<Command>, online: bool) -> Option<Interrupt> {
        let Some(cmd) = cmd else {
            return Some(Interrupt::Close(None));
        };
        let flow = self.core.command(cmd, Instant::now());
        match flow {
            Flow::Continue => None,
            Flow::Flush(reply) => {
                self.persist().await;
                let _ = reply.send(Ok(()));
                None
            }
            Flow::Close(r) => Some(Interrupt::Close(Some(r))),
            Flow::Suspend => Some(Interrupt::Suspend),
            Flow::Reconnect { force: false } if online => None,
            Flow::Reconnect { .. } => Some(Interrupt::Reconnect),
        }
    }

    /// Handles one command while offline; `Some` when it interrupts the wait.
    async fn offline_command(&mut self, cmd: Option<Command>) -> Option<Interrupt> {
        let interrupt = self.handle_command(cmd, false).await;
        self.save_sends().await;
        interrupt
    }

    /// Serves commands until `fut` completes or a command interrupts.
    async fn offline<F: std::future::Future>(&mut self, fut: F) -> Result<F::Output, Interrupt> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(TICK);
        loop {
            self.flush_events();
            let events = self.events.clone();
            tokio::select! {
                out = &mut fut => return Ok(out),
                cmd = self.cmds.recv() => {
                    if let Some(i) = self.offline_command(cmd).await {
                        return Err(i);
                    }
                }
                permit = events.reserve_owned(), if !self.outq.is_empty() => self.send_reserved(permit),
                _ = tick.tick() => self.persist().await,
            }
        }
    }

    pub async fn run(mut self) {
        let backoff = self.core.cfg.backoff.clone();
        let mut failures: u32 = 0;
        let mut suspended = false;
        let stop: Result<Option<oneshot::Sender<()>>, ClientError> = 'life: loop {
            if suspended {
                self.set_state(ConnectionState::Suspended);
                match self.offline(std::future::pending::<()>()).await {
                    Ok(()) | Err(Interrupt::Suspend) => continue 'life,
                    Err(Interrupt::Reconnect) => {
                        suspended = false;
                        failures = 0;
                    }
                    Err(Interrupt::Close(r)) => break Ok(r),
                    Err(Interrupt::Stop(e)) => break Err(e),
                }
            }
            self.set_state(ConnectionState::Connecting { attempt: failures });
            let attempt = connect::attempt(
                self.core.cfg.clone(),
                self.provider.clone(),
                self.tls.clone(),
            );
            let error = match self.offline(attempt).await {
                Err(Interrupt::Close(r)) => break Ok(r),
                Err(Interrupt::Stop(e)) => break Err(e),
                Err(Interrupt::Suspend) => {
                    suspended = true;
                    continue;
                }
                // Already connecting: start over at once.
                Err(Interrupt::Reconnect) => continue,
                Ok(Err(e)) if !e.is_retryable_connect() => break Err(e),
                Ok(Err(e)) => {
                    failures += 1;
                    tracing::debug!(error = %e, failures, "connect failed");
                    e
                }
                Ok(Ok(opened)) => {
                    let end = self.session(opened).await;
                    let healthy = self.core.session_synced;
                    self.core.connection_lost();
                    match end {
                        End::Interrupt(Interrupt::Close(r)) => break Ok(r),
                        End::Interrupt(Interrupt::Stop(e)) => break Err(e),
                        End::Interrupt(Interrupt::Suspend) => {
                            suspended = true;
                            continue;
                        }
                        End::Interrupt(Interrupt::Reconnect) => {
                            failures = 0;
                            continue;
                        }
                        End::Lost(reason) => {
                            tracing::info!(%reason, "connection lost; reconnecting");
                            // Only a connection that got as far as catch-up resets the
                            // backoff: a server that welcomes and drops at once must
                            // not be hammered.
                            if healthy {
                                failures = 0;
                            } else {
                                failures += 1;
                            }
                            ClientError::Connect(reason)
                        }
                    }
                }
            };
            if failures > 0 && backoff.max_retries.is_some_and(|m| failures > m) {
                break Err(ClientError::RetriesExhausted {
                    attempts: failures,
                    last: Box::new(error),
                });
            }
            let delay = backoff.delay(failures);
            self.set_state(ConnectionState::WaitingToRetry {
                attempt: failures,
                delay,
                error,
            });
            match self.offline(tokio::time::sleep(delay)).await {
                Ok(()) | Err(Interrupt::Reconnect) => {}
                Err(Interrupt::Suspend) => suspended = true,
                Err(Interrupt::Close(r)) => break Ok(r),
                Err(Interrupt::Stop(e)) => break Err(e),
            }
        };
        let (reason, close_reply) = match stop {
            Ok(r) => (StopReason::Closed, r),
            Err(e) => (StopReason::Failed(e), None),
        };
        let fail = match &reason {
            StopReason::Failed(e) => {
                tracing::warn!(error = %e, "client stopped");
                e.clone()
            }
            _ => {
                tracing::debug!("client closed");
                ClientError::Closed
            }
        };
        // Refuse what is still queued (a send made now is not stored: its caller
        // hears the error), keep what the store must keep.
        self.cmds.close();
        while let Ok(c) = self.cmds.try_recv() {
            c.refuse(&fail);
        }
        self.persist().await;
        self.core.stop(&fail);
        self.shared.state.send_replace(ConnectionState::Stopped {
            reason: reason.clone(),
        });
        if let Some(r) = close_reply {
            let _ = r.send(());
        }
        // The last word in the stream, after everything before it; waits for the app
        // to make room (or drop the stream).
        self.push_event(Event::Connection(ConnectionState::Stopped { reason }));
        for ev in self
            .core
            .events
            .drain(..)
            .chain(self.outq.drain(..))
            .collect::<Vec<_>>()
        {
            if self.events.send(ev).await.is_err() {
                break;
            }
        }
    }

    async fn session(&mut self, opened: Opened) -> End {
        let Opened {
            ws,
            user_id,
            session_id,
        } = opened;
        let (mut sink, mut stream) = ws.split();
        tracing::info!(user = %user_id, session = %session_id, queued = self.core.outbox_len(), "connected");
        if let Err(e) = self
            .core
            .connected(user_id.clone(), session_id, Instant::now())
        {
            let _ = sink.close().await;
            return End::Interrupt(Interrupt::Stop(e));
        }
        let _ = self.shared.user_id.set(user_id);
        let heartbeat = self.core.cfg.heartbeat;
        let mut last_rx = Instant::now();
        let mut last_ping = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The store first: a send is never on the wire before it is in the store.
            self.save_sends().await;
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
            self.flush_events();
            if self.core.session_synced {
                self.shared
                    .ready
                    .send_if_modified(|r| !std::mem::replace(r, true));
            }
            // Backpressure: while the app has not taken what is queued, the socket is
            // not read (acks, commands and heartbeats go on).
            let backlog = !self.outq.is_empty();
            if backlog {
                last_rx = Instant::now();
            }
            let events = self.events.clone();
            tokio::select! {
                msg = stream.next(), if !backlog => {
                    last_rx = Instant::now();
                    match msg {
                        Some(Ok(WsMessage::Text(text))) => match ServerFrame::decode(text.as_str()) {
                            Ok(frame) => self.core.on_frame(frame, Instant::now()),
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
                    if let Some(i) = self.handle_command(cmd, true).await {
                        // Owed acks and positions go out before a deliberate close.
                        self.persist().await;
                        self.core.tick(Instant::now());
                        for text in std::mem::take(&mut self.core.out) {
                            let _ = sink.feed(WsMessage::text(text)).await;
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                        return End::Interrupt(i);
                    }
                }
                permit = events.reserve_owned(), if backlog => self.send_reserved(permit),
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
                    // Positions and owed acks from what the app consumed.
                    let consumed = self.shared.take_consumed();
                    self.core.consumed(consumed);
                    self.core.tick(now);
                    self.save().await;
                }
            }
        }
    }
}
