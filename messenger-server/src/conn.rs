//! One WebSocket session in one task: it reads client frames and feeds them to the
//! engine, drains the session's bounded outbox to the socket in batches, sends pings and
//! watches the peer's liveness, all from one `select!` loop.
//!
//! One task instead of a reader and a writer: an idle connection holds one future (no
//! second task, no `BiLock` between the halves, no channel between them), and a frame
//! queued for the session wakes the task that writes it, with no hop through another.
//! Liveness costs no timer per frame: the read path stores the instant of the last frame,
//! and one timer per connection, re-armed only when it fires, sends the pings and closes
//! a peer silent for two ping intervals.
//!
//! Generic over a `Sink + Stream` of tungstenite messages so it can be driven without a
//! socket.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use messenger_core::engine::{CloseReason, Engine, Outbox, OutboxItem, Session, SessionHandle};
use messenger_core::protocol::{decode_client, ClientFrame, Request, ServerFrame};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
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

/// A token bucket: `rate` tokens per second, at most `burst` stored. On tokio's clock,
/// so the pacing timer and the bucket agree (and paused-time tests hold).
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate_per_sec: u32, burst: u32, now: tokio::time::Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// How long from `now` until a token is there (zero if one is).
    pub(crate) fn until_token(&self, now: tokio::time::Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + dt * self.rate).min(self.burst);
        if tokens >= 1.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }

    /// Takes a token that `until_token` said is due, even if the clock has not quite
    /// reached it (a timer may fire a little early or the rate may round): the bucket
    /// goes negative by the remainder, so the average rate still holds.
    pub(crate) fn take_due(&mut self, now: tokio::time::Instant) {
        if !self.take(now) {
            self.tokens -= 1.0;
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: tokio::time::Instant) -> bool {
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

/// How a session's loop ended, and what is left to do on the socket.
#[derive(Debug)]
enum End {
    /// Send a close frame with this code and reason, then give the peer a moment to
    /// answer it.
    Close(u16, &'static str),
    /// The peer closed or went away: finish the close handshake if there is one.
    PeerGone,
    /// The socket is unusable (write error, write timeout): drop it.
    Dead,
}

/// Runs a session to its end and disconnects it from the engine.
///
/// Everything is borrowed: the caller's task owns the socket, the context and the
/// session once. An `async fn` stores the arguments it takes by value in its future
/// (and again where its body moves them on), so each level that took the WebSocket
/// (320 B) and the context by value added their size to every idle connection's task.
pub(crate) async fn run_session<S>(ctx: &ConnCtx, session: &mut Session, ws: &mut S)
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let Session { handle, outbox } = session;
    if *ctx.shutdown.borrow() {
        handle.close(CloseReason::Shutdown);
    }
    let end = drive(ctx, handle, outbox, ws).await;
    // The session ends for routing and presence now, not after the close frame is
    // written: a dead peer's full socket must not delay its presence going offline.
    ctx.engine.disconnect(handle).await;
    let write_timeout = ctx.config.websocket.write_timeout;
    match end {
        End::Close(code, reason) => {
            if close(ws, code, reason, write_timeout).await {
                // Give the peer a moment to answer the close so its unread data does not
                // turn our close into a reset.
                let _ = tokio::time::timeout(CLOSE_LINGER, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
        }
        End::PeerGone => {
            let _ = tokio::time::timeout(CLOSE_LINGER, ws.close()).await;
        }
        End::Dead => {}
    }
    tracing::debug!(session = %handle.id(), user = %handle.user(), "session ended");
}

/// The session's loop over its outbox, its socket and its timer (pings and the
/// liveness deadline).
async fn drive<S>(ctx: &ConnCtx, handle: &SessionHandle, outbox: &mut Outbox, ws: &mut S) -> End
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    // The settings are read from `ctx` where they are used rather than copied into
    // locals: every local kept across an await is a few bytes of every idle task.
    let interval = || ctx.config.websocket.ping_interval;
    let dead_after = || ctx.config.websocket.ping_interval * 2;
    let start = tokio::time::Instant::now();
    // One timer per connection, for both the next ping and the liveness deadline. The
    // instant of the last frame read is only stored; the timer is re-armed from it when
    // it fires, so reading a frame costs no timer operation.
    let mut next_ping = start + interval();
    let mut last_read = start;
    let mut timer = pin!(tokio::time::sleep_until(next_ping));
    let mut bucket = TokenBucket::new(
        ctx.config.limits.rate_limit_per_sec,
        ctx.config.limits.rate_limit_burst,
        tokio::time::Instant::now(),
    );
    let mut batch = Batch::default();
    // A frame over the session's frame rate, held (not refused) until its token is due;
    // nothing more is read from the socket meanwhile, so the client's frames keep their
    // order and the backpressure reaches its socket. Boxed: one pointer in an idle task.
    let mut held: Held = None;
    loop {
        // Unbiased: a session flooded with deliveries still reads its own frames, and a
        // chatty peer does not starve its deliveries.
        tokio::select! {
            item = outbox.recv() => {
                let first = match item {
                    Some(OutboxItem::Frame(f)) => f,
                    None => return End::Close(1000, "session ended"),
                    Some(OutboxItem::Close(CloseReason::SlowConsumer)) => {
                        ctx.metrics.slow_consumer_closes.inc();
                        return End::Close(CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and catch up");
                    }
                    Some(OutboxItem::Close(CloseReason::Shutdown)) => {
                        return End::Close(CLOSE_GOING_AWAY, "server shutting down");
                    }
                    // A reason added later: close as on shutdown, the client reconnects.
                    Some(OutboxItem::Close(_)) => {
                        return End::Close(CLOSE_GOING_AWAY, "session closed by the server");
                    }
                };
                let written = batch.write(ctx, ws, outbox, first).await;
                if let Err(end) = batch.done(ctx, written) {
                    return end;
                }
            }
            next = ws.next(), if held.is_none() => {
                last_read = tokio::time::Instant::now();
                // The item is consumed by a plain function, so nothing of it (a message
                // and an error are 200 B) is kept across the engine's await below.
                let req = match on_read(ctx, handle, next, last_read, &mut bucket, &mut held) {
                    Ok(req) => req,
                    Err(end) => return end,
                };
                if let Some((_, due)) = &held {
                    if *due < timer.deadline() {
                        timer.as_mut().reset(*due);
                    }
                }
                if let Some(f) = req.and_then(|req| handle_request(ctx, handle, req)) {
                    f.await;
                }
            }
            () = &mut timer => {
                let now = tokio::time::Instant::now();
                if let Some((_, due)) = &held {
                    if now >= *due {
                        let req = held.take().and_then(|(msg, _)| {
                            bucket.take_due(now);
                            on_message(ctx, handle, *msg)
                        });
                        if let Some(f) = req.and_then(|req| handle_request(ctx, handle, req)) {
                            f.await;
                        }
                    }
                }
                if now >= last_read + dead_after() {
                    ctx.metrics.heartbeat_timeouts.inc();
                    tracing::info!(session = %handle.id(), user = %handle.user(),
                        "peer silent for two ping intervals: closing");
                    return End::Close(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout");
                }
                if now >= next_ping {
                    // Boxed: once per ping interval, and it would otherwise be a state
                    // of every idle connection's task.
                    let ping = ws.send(Message::Ping(Bytes::new()));
                    let sent = Box::pin(tokio::time::timeout(ctx.config.websocket.write_timeout, ping)).await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return End::Dead,
                        Err(_) => {
                            ctx.metrics.slow_consumer_closes.inc();
                            tracing::info!(session = %handle.id(), "ping blocked past the write timeout: dropping slow consumer");
                            return End::Dead;
                        }
                    }
                    // Once per ping interval: an empty outbound queue gives its storage
                    // back (a busy session allocates it again once per interval, an
                    // idle one holds none).
                    outbox.release_idle();
                    // A late tick delays the next ping rather than bunching them.
                    next_ping += interval();
                    if next_ping <= now {
                        next_ping = now + interval();
                    }
                }
                let mut next = next_ping.min(last_read + dead_after());
                if let Some((_, due)) = &held {
                    next = next.min(*due);
                }
                timer.as_mut().reset(next);
            }
        }
    }
}

/// A frame from the peer is held, not handled, while it is over the session's frame rate
/// (until the token it waits for is due); nothing more is read meanwhile.
type Held = Option<(Box<Message>, tokio::time::Instant)>;

/// One item read from the socket at `now`: the end of the session, or the request to
/// hand to the engine, if there is one. A frame over the frame rate goes to `held`.
fn on_read(
    ctx: &ConnCtx,
    handle: &SessionHandle,
    next: Option<Result<Message, WsError>>,
    now: tokio::time::Instant,
    bucket: &mut TokenBucket,
    held: &mut Held,
) -> Result<Option<Request>, End> {
    let msg = match next {
        None => return Err(End::PeerGone),
        Some(Ok(m)) => m,
        Some(Err(WsError::Capacity(e))) => {
            ctx.metrics.oversized_frames.inc();
            tracing::info!(session = %handle.id(), error = %e, "frame over the limit: closing");
            return Err(End::Close(CLOSE_TOO_BIG, "frame too large"));
        }
        Some(Err(WsError::Utf8)) => {
            return Err(End::Close(CLOSE_INVALID_UTF8, "text frame is not UTF-8"));
        }
        Some(Err(WsError::Protocol(e))) => {
            tracing::debug!(session = %handle.id(), error = %e, "websocket protocol error");
            return Err(End::Close(CLOSE_PROTOCOL_ERROR, "websocket protocol error"));
        }
        Some(Err(e)) => {
            tracing::debug!(session = %handle.id(), error = %e, "read error");
            return Err(End::PeerGone);
        }
    };
    let counted = matches!(msg, Message::Text(_) | Message::Binary(_));
    if counted && !bucket.take(now) {
        let due = now + bucket.until_token(now);
        ctx.metrics.frames_paced.inc();
        *held = Some((Box::new(msg), due));
        return Ok(None);
    }
    Ok(on_message(ctx, handle, msg))
}

/// One frame from the peer, within the session's frame rate (the caller paces the rest):
/// the request to hand to the engine, if it is one (errors are answered here).
fn on_message(ctx: &ConnCtx, handle: &SessionHandle, msg: Message) -> Option<Request> {
    match msg {
        Message::Text(text) => {
            let decoded = decode_client(text.as_str());
            ctx.metrics
                .frame_in(decoded.as_ref().ok().map(|r| r.frame.type_name()));
            match decoded {
                Ok(req) => return Some(req),
                Err(e) => reject(ctx, handle, e.req_id, e.code, e.message),
            }
        }
        Message::Binary(_) => {
            ctx.metrics.binary_in();
            reject(
                ctx,
                handle,
                None,
                "bad_request",
                "binary frames are reserved; send JSON text frames",
            );
        }
        // tungstenite answers pings and close frames itself (a close then ends the
        // stream); any frame counts as liveness.
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
    }
    None
}

/// A decoded request: checked against the abuse limits, then handed to the engine.
fn handle_request<'a>(
    ctx: &'a ConnCtx,
    handle: &'a SessionHandle,
    req: Request,
) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>> {
    if let Some((code, limit, message)) = over_limit(ctx, handle, &req.frame) {
        ctx.metrics.limit(limit);
        reject(ctx, handle, req.req_id, code, message);
        return None;
    }
    // Boxed, with the request in it: the engine's request future is over 1 KiB, and
    // the request itself a few hundred bytes; unboxed, both would be a state of every
    // idle connection's task.
    Some(Box::pin(ctx.engine.handle(handle, req)))
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

/// The frames of one write batch, for the metrics counted once it is flushed. Empty
/// until the first batch; kept for the next.
#[derive(Default)]
struct Batch {
    kinds: Vec<&'static str>,
    accepted: Vec<Instant>,
}

impl Batch {
    /// Writes `first` and whatever else is queued (up to a batch), with one flush, within
    /// the write timeout; [`done`](Self::done) then counts it.
    ///
    /// A plain function returning the timeout around a `poll_fn`, not an `async fn`:
    /// its state (the frame in hand, a few references and the timer) is the only write
    /// state an idle connection's task reserves room for, about a third of what an
    /// `async` version needs (which keeps its arguments and each awaited `feed` as well).
    fn write<'a, S>(
        &'a mut self,
        ctx: &ConnCtx,
        ws: &'a mut S,
        outbox: &'a mut Outbox,
        first: messenger_core::engine::Outbound,
    ) -> impl std::future::Future<Output = Result<Result<(), WsError>, tokio::time::error::Elapsed>> + 'a
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        self.kinds.clear();
        self.accepted.clear();
        let (kinds, accepted) = (&mut self.kinds, &mut self.accepted);
        let mut next = Some(first);
        let mut bytes = 0usize;
        let batch = futures::future::poll_fn(move |cx| {
            while let Some(out) = next.take() {
                match std::pin::Pin::new(&mut *ws).poll_ready(cx) {
                    std::task::Poll::Ready(Ok(())) => {}
                    std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => {
                        next = Some(out);
                        return std::task::Poll::Pending;
                    }
                }
                bytes += out.frame.len();
                kinds.push(out.kind);
                if let Some(at) = out.accepted_at {
                    accepted.push(at);
                }
                // A text frame straight from the engine's shared bytes: the engine
                // encodes every frame from a `String`, so it is UTF-8 already, and
                // checking it again for each recipient (what `Message::Text` needs)
                // would cost a pass over every copy.
                let frame = Frame::message(out.frame, OpCode::Data(Data::Text), true);
                std::pin::Pin::new(&mut *ws).start_send(Message::Frame(frame))?;
                if kinds.len() < BATCH_FRAMES && bytes < BATCH_BYTES {
                    next = outbox.try_recv();
                }
            }
            std::pin::Pin::new(&mut *ws).poll_flush(cx)
        });
        tokio::time::timeout(ctx.config.websocket.write_timeout, batch)
    }

    /// Counts a written batch in the metrics, or turns its failure into the session's end.
    fn done(
        &mut self,
        ctx: &ConnCtx,
        written: Result<Result<(), WsError>, tokio::time::error::Elapsed>,
    ) -> Result<(), End> {
        match written {
            Ok(Ok(())) => {
                let now = Instant::now();
                for k in &self.kinds {
                    ctx.metrics.frame_out(k);
                }
                for at in &self.accepted {
                    ctx.metrics
                        .observe_delivery(now.saturating_duration_since(*at));
                }
                // A batch that grew large gives its memory back.
                if self.kinds.capacity() > BATCH_FRAMES {
                    self.kinds = Vec::new();
                    self.accepted = Vec::new();
                }
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write error");
                Err(End::Dead)
            }
            Err(_) => {
                ctx.metrics.slow_consumer_closes.inc();
                tracing::info!("write blocked past the write timeout: dropping slow consumer");
                Err(End::Dead)
            }
        }
    }
}

/// Sends a close frame within `limit`; true if it was written.
async fn close<W>(sink: &mut W, code: u16, reason: &'static str, limit: Duration) -> bool
where
    W: Sink<Message, Error = WsError> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    };
    matches!(
        tokio::time::timeout(limit, async {
            sink.send(Message::Close(Some(frame))).await?;
            sink.flush().await
        })
        .await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let t0 = tokio::time::Instant::now();
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

    /// A sink and a stream as one socket.
    struct Duplex<W, R> {
        tx: W,
        rx: R,
    }

    impl<W: Sink<Message, Error = WsError> + Unpin, R: Unpin> Sink<Message> for Duplex<W, R> {
        type Error = WsError;
        fn poll_ready(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), WsError>> {
            std::pin::Pin::new(&mut self.tx).poll_ready(cx)
        }
        fn start_send(mut self: std::pin::Pin<&mut Self>, m: Message) -> Result<(), WsError> {
            std::pin::Pin::new(&mut self.tx).start_send(m)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), WsError>> {
            std::pin::Pin::new(&mut self.tx).poll_flush(cx)
        }
        fn poll_close(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), WsError>> {
            std::pin::Pin::new(&mut self.tx).poll_close(cx)
        }
    }

    impl<W: Unpin, R: Stream + Unpin> Stream for Duplex<W, R> {
        type Item = R::Item;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<R::Item>> {
            std::pin::Pin::new(&mut self.rx).poll_next(cx)
        }
    }

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
        let ws = Duplex {
            tx: out_tx.sink_map_err(|_| WsError::ConnectionClosed),
            rx: in_rx,
        };
        let (mut session, mut ws) = (session, ws);
        let task = tokio::spawn(async move { run_session(&ctx, &mut session, &mut ws).await });
        (in_tx, out_rx, task, engine)
    }

    async fn next_text(out: &mut Out) -> serde_json::Value {
        loop {
            match out.next().await.expect("open") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
                // The session writes engine frames as raw text frames.
                Message::Frame(f) => {
                    assert_eq!(f.header().opcode, OpCode::Data(Data::Text));
                    return serde_json::from_slice(f.payload()).expect("json");
                }
                Message::Ping(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The code of the close frame that comes next, skipping pings.
    async fn close_code(out: &mut Out) -> u16 {
        loop {
            match out.next().await {
                Some(Message::Ping(_)) => continue,
                Some(Message::Close(Some(f))) => return u16::from(f.code),
                other => panic!("expected a close, got {other:?}"),
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
        let code = close_code(&mut out).await;
        assert_eq!(code, 4001);
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
        task.await.expect("session ends");
        assert_eq!(engine.local_sessions(), 0, "disconnected from the engine");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_is_closed_two_intervals_after_its_last_frame_not_before() {
        let mut config = ServerConfig::default();
        config.websocket.ping_interval = Duration::from_secs(10);
        let (mut inp, mut out, task, _engine) = open(config).await;
        assert_eq!(next_text(&mut out).await["type"], "welcome");
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(7)).await;
        inp.send(Ok(Message::Pong(Bytes::new())))
            .await
            .expect("send");
        // Pings keep coming every interval; the close comes 20 s after the pong (t = 27),
        // not 20 s after the start.
        let code = close_code(&mut out).await;
        assert_eq!(code, 4001);
        assert_eq!(t0.elapsed(), Duration::from_secs(27));
        drop(inp);
        task.await.expect("session ends");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_over_the_rate_are_paced_not_refused() {
        let mut config = ServerConfig::default();
        config.limits.rate_limit_per_sec = 1;
        config.limits.rate_limit_burst = 2;
        let (mut inp, mut out, _task, _engine) = open(config).await;
        next_text(&mut out).await;
        let t0 = tokio::time::Instant::now();
        for i in 0..3 {
            let f = format!(r#"{{"type":"ping","req_id":{i}}}"#);
            inp.send(Ok(Message::Text(f.into()))).await.expect("send");
        }
        for i in 0..3 {
            let r = next_text(&mut out).await;
            assert_eq!(
                (r["type"].as_str(), r["req_id"].as_u64()),
                (Some("pong"), Some(i))
            );
        }
        // The burst at once, the third a token later.
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn sends_over_the_rate_are_stored_in_the_order_written() {
        let mut config = ServerConfig::default();
        config.limits.rate_limit_per_sec = 1;
        config.limits.rate_limit_burst = 2;
        let (mut inp, mut out, _task, _engine) = open(config).await;
        next_text(&mut out).await;
        let create = r#"{"type":"create_thread","req_id":0,"kind":"direct","members":["bob"]}"#;
        inp.send(Ok(Message::Text(create.into())))
            .await
            .expect("send");
        let thread = next_text(&mut out).await;
        assert_eq!(thread["type"], "thread", "{thread}");
        let thread_id = thread["thread_id"].as_str().expect("thread_id").to_owned();
        let t0 = tokio::time::Instant::now();
        // One token left, then one a second: s0 at once, s1..s3 held a second each,
        // never refused, stored in the order they were written.
        for i in 0..4 {
            let f = serde_json::json!({"type":"send_message","req_id":i + 1,
                "thread_id":thread_id,"temp_id":format!("s{i}"),"text":"x"});
            inp.send(Ok(Message::Text(f.to_string().into())))
                .await
                .expect("send");
        }
        for i in 0..4u64 {
            let r = next_text(&mut out).await;
            assert_eq!(r["type"], "message_sent", "{r}");
            assert_eq!(r["temp_id"], format!("s{i}"), "{r}");
            assert_eq!(r["seq"], i + 1, "{r}");
        }
        assert!(
            t0.elapsed() >= Duration::from_secs(3),
            "paced at the rate: {:?}",
            t0.elapsed()
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
