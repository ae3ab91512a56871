//! The axum integration: [`Server::router`] and [`Server::serve`].
//!
//! The router upgrades `/ws` itself on hyper's upgrade mechanism (no axum `ws`
//! feature), so the WebSocket gets the server's tungstenite settings (1 KiB buffers,
//! frame limit) and the session runs on the same reader and writer tasks as any
//! [`Server::run_upgraded`] session.
//!
//! `serve` is the router on its own accept loop (hyper's HTTP/1.1 connection builder):
//! a connection limit that holds for upgraded sockets too, a deadline on the request
//! head, header count and size limits from [`Limits`](crate::config::Limits), the peer
//! address in each request's extensions ([`PeerAddr`]), accept errors retried with
//! backoff, and a graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tower::ServiceExt;

use crate::auth::PeerAddr;
use crate::ondemand::ReadOnDemand;
use crate::server::{run_counted, session_ws_config, Server, ServerError};

impl Server {
    /// An axum [`Router`] serving `GET /ws` (the protocol; token checked by the
    /// [`Authenticator`](crate::auth::Authenticator) before the upgrade), `GET /healthz`
    /// and `GET /metrics`. Nest or merge it into your app; your tower layers apply to it
    /// as to any route:
    ///
    /// ```no_run
    /// # async fn demo(server: messenger_server::Server) -> std::io::Result<()> {
    /// use axum::routing::get;
    /// let app = axum::Router::new()
    ///     .route("/", get(|| async { "my app" }))
    ///     .nest("/chat", server.router()); // /chat/ws, /chat/healthz, /chat/metrics
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// axum::serve(
    ///     listener,
    ///     // Dev auth needs the peer address; JWT does not.
    ///     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    /// )
    /// .with_graceful_shutdown(async move {
    ///     let _ = tokio::signal::ctrl_c().await;
    ///     server.shutdown().await; // closes sessions with 1001
    /// })
    /// .await
    /// # }
    /// ```
    ///
    /// Sessions of this router close with 1001 on [`Server::shutdown`]. The
    /// `limits.max_connections`, `max_headers`, `max_head_bytes` and the handshake
    /// timeout are those of the HTTP server that runs the router ([`serve`](Self::serve)
    /// applies them; with `axum::serve`, hyper's defaults apply).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws", any(ws))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Serves [`router`](Self::router) on `listener` until `shutdown` completes (or, in
    /// cluster mode, another instance takes this node's id: then it returns
    /// [`ServerError::LostNodeId`]); then stops accepting and runs
    /// [`Server::shutdown`].
    ///
    /// Refuses dev auth on a non-loopback listener unless `auth.insecure_dev_auth`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let router = self.router();
        self.serve_router(listener, router, shutdown).await
    }

    /// [`serve`](Self::serve) with another router: [`router`](Self::router) merged
    /// with routes of your own (`server.router().merge(static_files)`), served with the
    /// server's connection limit, header limits, deadlines, peer addresses and shutdown.
    pub async fn serve_router(
        self,
        listener: TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let local = listener.local_addr()?;
        self.config().check_listen(local)?;
        let lost = AtomicBool::new(false);
        let stop = async {
            tokio::select! {
                _ = shutdown => {}
                _ = self.node_id_lost() => {
                    tracing::error!(node = %self.config().node_id,
                        "node id taken over by another instance: shutting down");
                    lost.store(true, Relaxed);
                }
            }
        };
        let accepted = accept_loop(&self, listener, router, stop).await;
        self.shutdown().await;
        accepted?;
        if lost.load(Relaxed) {
            return Err(ServerError::LostNodeId(self.config().node_id));
        }
        Ok(())
    }
}

async fn accept_loop(
    server: &Server,
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let cfg = server.config().clone();
    let limit = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let mut conns = JoinSet::new();
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    tracing::info!(addr = %listener.local_addr()?, "listening");
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (tcp, peer) = tokio::select! {
            c = accept(&listener) => c,
            _ = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        // Over the connection rate of its address, the connection is answered 429 on
        // its first request and closed (a clear answer rather than a silent reset).
        let refused = server.inner.ctx.guards.connect_refused(peer.ip());
        if refused {
            server.inner.ctx.metrics.limit("connect_rate");
            tracing::debug!(%peer, "connection over the connection rate of its address: 429");
        }
        let io = TokioIo::new(Permitted {
            io: tcp,
            _permit: permit,
        });
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
            if refused {
                return futures::future::Either::Left(std::future::ready(Ok(too_many_connects())));
            }
            req.extensions_mut().insert(PeerAddr(peer));
            futures::future::Either::Right(router.clone().oneshot(req.map(Body::new)))
        });
        let http = http_builder(&cfg, !refused);
        let mut closing = closing.clone();
        conns.spawn(async move {
            let conn = http.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { let _ = closing.wait_for(|c| *c).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("no longer accepting");
    // Idle keep-alive connections close now, requests in flight finish.
    let _ = closing_tx.send(true);
    let wait = server.config().websocket.drain_timeout;
    if tokio::time::timeout(wait, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        conns.abort_all();
    }
    Ok(())
}

/// hyper's HTTP/1.1 settings for [`Server::serve`]'s connections: the head deadline and
/// the header count and size limits.
pub(crate) fn http_builder(
    cfg: &crate::ServerConfig,
    keep_alive: bool,
) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.websocket.handshake_timeout)
        .max_headers(cfg.limits.max_headers)
        .max_buf_size(cfg.limits.max_head_bytes)
        .keep_alive(keep_alive);
    http
}

/// Accepts one connection, retrying errors (such as running out of file descriptors)
/// with exponential backoff up to one second.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(1);
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A connection holding its slot of `max_connections` for as long as the socket lives,
/// after an upgrade too.
struct Permitted {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Permitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Permitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn too_many_connects() -> Response {
    let mut r = plain(
        StatusCode::TOO_MANY_REQUESTS,
        "too many connection attempts from your address: retry later with backoff\n",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn healthz(State(server): State<Server>) -> Response {
    if server.is_shutting_down() || !server.holds_node_id() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    plain(StatusCode::OK, "ok\n")
}

async fn metrics(State(server): State<Server>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        server.metrics_text(),
    )
        .into_response()
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A `Sec-WebSocket-Key` must be 16 bytes in base64: 22 characters and `==`.
fn valid_key(key: &HeaderValue) -> bool {
    let k = key.as_bytes();
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

async fn ws(State(server): State<Server>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let origin = parts.headers.get(header::ORIGIN).map(|o| o.as_bytes());
    if !server.inner.ctx.guards.origin_allowed(origin) {
        server.inner.ctx.metrics.limit("origin");
        tracing::debug!(origin = ?parts.headers.get(header::ORIGIN), "refused /ws: origin not allowed");
        return plain(
            StatusCode::FORBIDDEN,
            "origin not allowed (websocket.allowed_origins)\n",
        );
    }
    let user = match server.authenticate(&parts).await {
        Ok(u) => u,
        Err(e) => {
            let status = e.status();
            let mut r = plain(
                status,
                if status == StatusCode::UNAUTHORIZED {
                    "unauthorized\n"
                } else {
                    "authentication unavailable\n"
                },
            );
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return r;
        }
    };
    let h = &parts.headers;
    if parts.method != Method::GET
        || parts.version < http::Version::HTTP_11
        || !has_token(h, header::UPGRADE, "websocket")
        || !has_token(h, header::CONNECTION, "upgrade")
    {
        return plain(StatusCode::BAD_REQUEST, "expected a websocket upgrade\n");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 required\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|k| valid_key(k)) else {
        return plain(StatusCode::BAD_REQUEST, "expected a websocket upgrade\n");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        // HTTP/2, or a caller that drives the router without a connection.
        return plain(
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded (HTTP/1.1 required)\n",
        );
    };
    // Nothing from the request outlives the handshake.
    drop(parts);
    if server.is_shutting_down() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let Ok(slot) = server.session_slot(&user) else {
        return plain(
            StatusCode::TOO_MANY_REQUESTS,
            "too many sessions for this user (limits.max_sessions_per_user): close one\n",
        );
    };
    let ctx = server.inner.ctx.clone();
    let mut session = match ctx.engine.connect(user.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "connect failed: 503");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "service unavailable\n");
        }
    };
    // The session's task for as long as the connection lives: it owns the context,
    // the session and the WebSocket once, and everything it awaits borrows them (every
    // byte of this future is paid by every idle connection).
    server.track(async move {
        let wait = ctx.config.websocket.write_timeout;
        match tokio::time::timeout(wait, on_upgrade).await {
            Ok(Ok(upgraded)) => {
                let io = ReadOnDemand::new(
                    TokioIo::new(upgraded),
                    ctx.config.websocket.read_buffer_bytes,
                );
                let mut ws = WebSocketStream::from_raw_socket(
                    io,
                    Role::Server,
                    Some(session_ws_config(&ctx.config)),
                )
                .await;
                run_counted(&ctx, &mut session, &mut ws).await;
            }
            _ => {
                tracing::debug!(user = %session.handle.user(), "upgrade did not complete");
                ctx.engine.disconnect(&session.handle).await;
            }
        }
        drop(slot);
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = r.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        rh.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
