//! One WebSocket session: a reader task that feeds client frames to the engine and a
//! writer task that drains the session's bounded outbox to the socket in batches.
//!
//! Generic over `Sink`/`Stream` of tungstenite messages so it can be driven without a
//! socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use messenger_core::engine::{CloseReason, Engine, OutboxItem, Session, SessionHandle};
use messenger_core::protocol::{decode_client, ClientFrame, ServerFrame};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// Close code for a slow consumer: the session's outbound queue overflowed, or a write
/// blocked longer than the write timeout. The client should reconnect and catch up
/// with `list_threads` + `fetch_history`.
pub const CLOSE_SLOW_CONSUMER: u16 = 4000;
/// Close code for a peer that stopped answering pings (rarely seen by the peer).
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4001;
/// Close code on server shutdown (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a WebSocket protocol violation by the peer (RFC 6455).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text frame that is not valid UTF-8 (RFC 6455).
pub const CLOSE_INVALID_UTF8: u16 = 1007;
/// Close code for an incoming frame or message over the size limit (RFC 6455 "message
/// too big").
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Most frames written between two flushes.
const BATCH_FRAMES: usize = 64;
/// Stop adding frames to a batch once this many bytes are queued.
const BATCH_BYTES: usize = 64 * 1024;
/// How long the reader waits for the peer's close reply after the server closed.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What a session task needs from the server.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub(crate) engine: Engine,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Limits shared across sessions (sessions per user, thread creation rate).
    pub(crate) guards: Arc<crate::limits::Guards>,
}

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the reader tells the writer when the reader ends first.
#[derive(Debug)]
enum Ctl {
    /// Send a close frame with this code and stop.
    Close(u16, &'static str),
    /// The peer is gone or closed: finish the close handshake and stop.
    PeerGone,
}

/// Runs a session to its end and then disconnects it from the engine.
pub(crate) async fn run_session<W, R>(ctx: ConnCtx, session: Session, sink: W, stream: R)
where
    W: Sink<Message, Error = WsError> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let Session { handle, outbox } = session;
    if *ctx.shutdown.borrow() {
        handle.close(CloseReason::Shutdown);
    }
    let (ctl_tx, ctl_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(ctx.clone(), outbox, sink, ctl_rx));
    let ended = read_loop(&ctx, &handle, stream, &mut writer).await;
    if let Some(ctl) = ended {
        let _ = ctl_tx.send(ctl);
    }
    // The session ends for routing and presence now, not after the close frame is
    // written: a dead peer's full socket must not delay its presence going offline.
    ctx.engine.disconnect(&handle).await;
    // A JoinHandle must not be polled again once it completed inside the reader.
    if !writer.is_finished() {
        let wait = ctx.config.websocket.write_timeout + CLOSE_LINGER;
        if tokio::time::timeout(wait, &mut writer).await.is_err() {
            writer.abort();
        }
    }
    tracing::debug!(session = %handle.id(), user = %handle.user(), "session ended");
}

/// Reads until the peer goes away, breaks a limit, or the writer ends. Returns what the
/// writer should do, or `None` if the writer already finished.
async fn read_loop<R>(
    ctx: &ConnCtx,
    handle: &SessionHandle,
    mut stream: R,
    writer: &mut tokio::task::JoinHandle<()>,
) -> Option<Ctl>
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let dead_after = ctx.config.websocket.ping_interval * 2;
    let mut bucket = TokenBucket::new(
        ctx.config.limits.rate_limit_per_sec,
        ctx.config.limits.rate_limit_burst,
        Instant::now(),
    );
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(dead_after, stream.next()) => r,
            _ = &mut *writer => {
                // The writer closed the session (slow consumer, shutdown, write error):
                // give the peer a moment to answer the close so its unread data does
                // not turn our close into a reset.
                let _ = tokio::time::timeout(CLOSE_LINGER, async {
                    while let Some(Ok(_)) = stream.next().await {}
                })
                .await;
                return None;
            }
        };
        let msg = match next {
            Err(_) => {
                ctx.metrics.heartbeat_timeouts.inc();
                tracing::info!(session = %handle.id(), user = %handle.user(),
                    "peer silent for two ping intervals: closing");
                return Some(Ctl::Close(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout"));
            }
            Ok(None) => return Some(Ctl::PeerGone),
            Ok(Some(Err(WsError::Capacity(e)))) => {
                ctx.metrics.oversized_frames.inc();
                tracing::info!(session = %handle.id(), error = %e, "frame over the limit: closing");
                return Some(Ctl::Close(CLOSE_TOO_BIG, "frame too large"));
            }
            Ok(Some(Err(WsError::Utf8))) => {
                return Some(Ctl::Close(CLOSE_INVALID_UTF8, "text frame is not UTF-8"));
            }
            Ok(Some(Err(WsError::Protocol(e)))) => {
                tracing::debug!(session = %handle.id(), error = %e, "websocket protocol error");
                return Some(Ctl::Close(CLOSE_PROTOCOL_ERROR, "websocket protocol error"));
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(session = %handle.id(), error = %e, "read error");
                return Some(Ctl::PeerGone);
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(text) => {
                let decoded = decode_client(text.as_str());
                ctx.metrics
                    .frame_in(decoded.as_ref().ok().map(|r| r.frame.type_name()));
                if !bucket.take(Instant::now()) {
                    let req_id = match &decoded {
                        Ok(r) => r.req_id.clone(),
                        Err(e) => e.req_id.clone(),
                    };
                    reject(
                        ctx,
                        handle,
                        req_id,
                        "rate_limited",
                        "too many frames; slow down",
                    );
                    continue;
                }
                match decoded {
                    Ok(req) => {
                        if let Some((code, limit, message)) = over_limit(ctx, handle, &req.frame) {
                            ctx.metrics.limit(limit);
                            reject(ctx, handle, req.req_id, code, message);
                            continue;
                        }
                        // Boxed: the engine's request future is over 1 KiB and would
                        // otherwise sit in every idle connection's task.
                        Box::pin(ctx.engine.handle(handle, req)).await
                    }
                    Err(e) => reject(ctx, handle, e.req_id, e.code, e.message),
                }
            }
            Message::Binary(_) => {
                ctx.metrics.binary_in();
                let code = if bucket.take(Instant::now()) {
                    "bad_request"
                } else {
                    "rate_limited"
                };
                reject(
                    ctx,
                    handle,
                    None,
                    code,
                    "binary frames are reserved; send JSON text frames",
                );
            }
            // tungstenite answers pings and close frames itself; any frame counts as
            // liveness because it reset the timeout above.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
    }
}

/// The abuse limit a frame breaks, if any, as (error code, limit label, message). Such a
/// frame is answered with the error and not processed.
fn over_limit(
    ctx: &ConnCtx,
    handle: &SessionHandle,
    frame: &ClientFrame,
) -> Option<(&'static str, &'static str, String)> {
    let l = &ctx.config.limits;
    match frame {
        ClientFrame::CreateThread(_) if !ctx.guards.thread_allowed(handle.user()) => Some((
            "rate_limited",
            "threads_per_minute",
            format!(
                "too many threads created: at most {} per minute (limits.threads_per_minute)",
                l.threads_per_minute
            ),
        )),
        ClientFrame::AddMembers { members, .. } if members.len() > l.max_add_members => Some((
            "too_large",
            "add_members",
            format!(
                "at most {} members per add_members request (limits.max_add_members): split it",
                l.max_add_members
            ),
        )),
        ClientFrame::PresenceSubscribe { user_ids }
            if handle.presence_subscriptions_with(user_ids) > l.max_presence_subscriptions =>
        {
            Some((
                "too_large",
                "presence_subscriptions",
                format!(
                    "at most {} presence subscriptions per session \
                     (limits.max_presence_subscriptions): unsubscribe from some first",
                    l.max_presence_subscriptions
                ),
            ))
        }
        _ => None,
    }
}

fn reject(
    ctx: &ConnCtx,
    handle: &SessionHandle,
    req_id: Option<messenger_core::protocol::ReqId>,
    code: &'static str,
    message: impl Into<String>,
) {
    ctx.metrics.error(code);
    handle.send_frame(&ServerFrame::error(req_id, code, message));
}

/// Drains the outbox to the socket: batches frames, flushes once per batch, pings.
async fn write_loop<W>(
    ctx: ConnCtx,
    mut outbox: messenger_core::engine::Outbox,
    mut sink: W,
    mut ctl: oneshot::Receiver<Ctl>,
) where
    W: Sink<Message, Error = WsError> + Unpin,
{
    let cfg = ctx.config.clone();
    let interval = cfg.websocket.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut kinds: Vec<&'static str> = Vec::new();
    let mut accepted: Vec<Instant> = Vec::new();
    loop {
        let item = tokio::select! {
            biased;
            c = &mut ctl => {
                match c {
                    Ok(Ctl::Close(code, reason)) => close(&mut sink, code, reason, cfg.websocket.write_timeout).await,
                    Ok(Ctl::PeerGone) | Err(_) => {
                        let _ = tokio::time::timeout(CLOSE_LINGER, sink.close()).await;
                    }
                }
                return;
            }
            item = outbox.recv() => item,
            _ = ping.tick() => {
                let sent = tokio::time::timeout(cfg.websocket.write_timeout, sink.send(Message::Ping(Bytes::new()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
                continue;
            }
        };
        let first = match item {
            None => {
                close(
                    &mut sink,
                    1000,
                    "session ended",
                    cfg.websocket.write_timeout,
                )
                .await;
                return;
            }
            Some(OutboxItem::Close(CloseReason::SlowConsumer)) => {
                ctx.metrics.slow_consumer_closes.inc();
                close(
                    &mut sink,
                    CLOSE_SLOW_CONSUMER,
                    "slow consumer: reconnect and catch up",
                    cfg.websocket.write_timeout,
                )
                .await;
                return;
            }
            Some(OutboxItem::Close(CloseReason::Shutdown)) => {
                close(
                    &mut sink,
                    CLOSE_GOING_AWAY,
                    "server shutting down",
                    cfg.websocket.write_timeout,
                )
                .await;
                return;
            }
            // A reason added later: close as on shutdown, the client reconnects.
            Some(OutboxItem::Close(_)) => {
                close(
                    &mut sink,
                    CLOSE_GOING_AWAY,
                    "session closed by the server",
                    cfg.websocket.write_timeout,
                )
                .await;
                return;
            }
            Some(OutboxItem::Frame(f)) => f,
        };
        kinds.clear();
        accepted.clear();
        let batch = async {
            let mut next = Some(first);
            let mut bytes = 0usize;
            while let Some(out) = next.take() {
                bytes += out.frame.len();
                let text = match Utf8Bytes::try_from(out.frame) {
                    Ok(t) => t,
                    Err(_) => {
                        tracing::error!(kind = out.kind, "engine produced a non-UTF-8 frame");
                        continue;
                    }
                };
                sink.feed(Message::Text(text)).await?;
                kinds.push(out.kind);
                if let Some(at) = out.accepted_at {
                    accepted.push(at);
                }
                if kinds.len() < BATCH_FRAMES && bytes < BATCH_BYTES {
                    next = outbox.try_recv();
                }
            }
            sink.flush().await
        };
        match tokio::time::timeout(cfg.websocket.write_timeout, batch).await {
            Ok(Ok(())) => {
                let now = Instant::now();
                for k in &kinds {
                    ctx.metrics.frame_out(k);
                }
                for at in &accepted {
                    ctx.metrics
                        .observe_delivery(now.saturating_duration_since(*at));
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write error");
                return;
            }
            Err(_) => {
                ctx.metrics.slow_consumer_closes.inc();
                tracing::info!("write blocked past the write timeout: dropping slow consumer");
                return;
            }
        }
    }
}

async fn close<W>(sink: &mut W, code: u16, reason: &'static str, limit: Duration)
where
    W: Sink<Message, Error = WsError> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(limit, async {
        sink.send(Message::Close(Some(frame))).await?;
        sink.flush().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // Never more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }
}

/// The session handler driven through channels instead of a socket, on paused time.
#[cfg(all(test, feature = "mem"))]
mod session_tests {
    use super::*;
    use futures::channel::mpsc;
    use messenger_core::engine::EngineConfig;
    use messenger_core::UserId;

    type In = mpsc::Sender<Result<Message, WsError>>;
    type Out = mpsc::Receiver<Message>;

    async fn open(config: ServerConfig) -> (In, Out, tokio::task::JoinHandle<()>, Engine) {
        let engine = Engine::start(EngineConfig::default(), messenger_storage_mem::adapters())
            .await
            .expect("engine");
        let session = engine
            .connect(UserId::new("alice").expect("id"))
            .await
            .expect("connect");
        let metrics = Metrics::register(
            &mut prometheus_client::registry::Registry::default(),
            engine.clone(),
        );
        let ctx = ConnCtx {
            engine: engine.clone(),
            metrics: Arc::new(metrics),
            guards: Arc::new(crate::limits::Guards::new(
                &config.limits,
                &config.websocket.allowed_origins,
            )),
            config: Arc::new(config),
            shutdown: watch::channel(false).1,
        };
        let (out_tx, out_rx) = mpsc::channel::<Message>(64);
        let (in_tx, in_rx) = mpsc::channel::<Result<Message, WsError>>(64);
        let sink = out_tx.sink_map_err(|_| WsError::ConnectionClosed);
        let task = tokio::spawn(run_session(ctx, session, sink, in_rx));
        (in_tx, out_rx, task, engine)
    }

    async fn next_text(out: &mut Out) -> serde_json::Value {
        loop {
            match out.next().await.expect("open") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
                Message::Ping(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_gets_pings_then_4001_after_two_intervals() {
        let mut config = ServerConfig::default();
        config.websocket.ping_interval = Duration::from_secs(10);
        let (_in, mut out, task, engine) = open(config).await;
        assert_eq!(next_text(&mut out).await["type"], "welcome");
        let t0 = tokio::time::Instant::now();
        assert!(matches!(out.next().await, Some(Message::Ping(_))));
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        // The second ping and the timeout fall on the same instant: either order.
        let code = loop {
            match out.next().await {
                Some(Message::Ping(_)) => continue,
                Some(Message::Close(Some(f))) => break u16::from(f.code),
                other => panic!("expected a close, got {other:?}"),
            }
        };
        assert_eq!(code, 4001);
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
        task.await.expect("session ends");
        assert_eq!(engine.local_sessions(), 0, "disconnected from the engine");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_replies_without_processing() {
        let mut config = ServerConfig::default();
        config.limits.rate_limit_per_sec = 1;
        config.limits.rate_limit_burst = 2;
        let (mut inp, mut out, _task, _engine) = open(config).await;
        next_text(&mut out).await;
        for i in 0..3 {
            let f = format!(r#"{{"type":"ping","req_id":{i}}}"#);
            inp.send(Ok(Message::Text(f.into()))).await.expect("send");
        }
        assert_eq!(next_text(&mut out).await["type"], "pong");
        assert_eq!(next_text(&mut out).await["type"], "pong");
        let e = next_text(&mut out).await;
        assert_eq!(
            (e["code"].as_str(), e["req_id"].as_u64()),
            (Some("rate_limited"), Some(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_error_closes_1009() {
        let (mut inp, mut out, task, _engine) = open(ServerConfig::default()).await;
        next_text(&mut out).await;
        let err = WsError::Capacity(
            tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                size: 70_000,
                max_size: 65_536,
            },
        );
        inp.send(Err(err)).await.expect("send");
        match out.next().await {
            Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1009),
            other => panic!("expected a close, got {other:?}"),
        }
        drop(inp);
        task.await.expect("session ends");
    }
}
