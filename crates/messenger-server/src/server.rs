//! The builder, the server and its accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use messenger_core::engine::{Adapters, Engine, EngineConfig};
use messenger_core::{
    IdGenerator, MessageStore, Presence, PushSink, Relay, SessionDirectory, ThreadStore,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::auth::Authenticator;
use crate::config::{ConfigError, ServerConfig};
use crate::conn::{run_session, ConnCtx};
use crate::http::{self, HeadError, RequestHead, UpgradeError};
use crate::metrics::Metrics;

/// Why the server could not be built or could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An adapter is missing (only without the `mem` feature).
    #[error("no {0} adapter was given")]
    MissingAdapter(&'static str),
    /// The engine could not start (an adapter is down).
    #[error("engine failed to start: {0}")]
    Engine(#[from] messenger_core::Error),
    /// The listener failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Composes the adapters and the configuration into a [`Server`].
///
/// Start from a whole [`Adapters`] with [`adapters`](Self::adapters), or set each
/// adapter on its own; with the `mem` feature (default) any adapter left unset is the
/// in-memory one.
#[derive(Default)]
#[must_use]
pub struct ServerBuilder {
    config: ServerConfig,
    ids: Option<Arc<dyn IdGenerator>>,
    messages: Option<Arc<dyn MessageStore>>,
    threads: Option<Arc<dyn ThreadStore>>,
    directory: Option<Arc<dyn SessionDirectory>>,
    presence: Option<Arc<dyn Presence>>,
    push: Option<Arc<dyn PushSink>>,
    relay: Option<Arc<dyn Relay>>,
}

impl ServerBuilder {
    /// A builder with the default configuration and no adapters set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Every adapter at once (replaces any set before).
    pub fn adapters(mut self, a: Adapters) -> Self {
        self.ids = Some(a.ids);
        self.messages = Some(a.messages);
        self.threads = Some(a.threads);
        self.directory = Some(a.directory);
        self.presence = Some(a.presence);
        self.push = Some(a.push);
        self.relay = Some(a.relay);
        self
    }

    /// The id generator.
    pub fn id_generator(mut self, v: Arc<dyn IdGenerator>) -> Self {
        self.ids = Some(v);
        self
    }

    /// The message store.
    pub fn message_store(mut self, v: Arc<dyn MessageStore>) -> Self {
        self.messages = Some(v);
        self
    }

    /// The thread store.
    pub fn thread_store(mut self, v: Arc<dyn ThreadStore>) -> Self {
        self.threads = Some(v);
        self
    }

    /// The session directory.
    pub fn session_directory(mut self, v: Arc<dyn SessionDirectory>) -> Self {
        self.directory = Some(v);
        self
    }

    /// Presence.
    pub fn presence(mut self, v: Arc<dyn Presence>) -> Self {
        self.presence = Some(v);
        self
    }

    /// The push sink.
    pub fn push_sink(mut self, v: Arc<dyn PushSink>) -> Self {
        self.push = Some(v);
        self
    }

    /// The cross-node relay.
    pub fn relay(mut self, v: Arc<dyn Relay>) -> Self {
        self.relay = Some(v);
        self
    }

    fn into_adapters(self) -> Result<(ServerConfig, Adapters), ServerError> {
        #[cfg(feature = "mem")]
        let d = messenger_storage_mem::MemBackend::new().adapters(self.config.node_id);
        #[cfg(feature = "mem")]
        macro_rules! pick {
            ($field:ident, $name:literal) => {
                self.$field.unwrap_or(d.$field)
            };
        }
        #[cfg(not(feature = "mem"))]
        macro_rules! pick {
            ($field:ident, $name:literal) => {
                self.$field.ok_or(ServerError::MissingAdapter($name))?
            };
        }
        let adapters = Adapters {
            ids: pick!(ids, "id generator"),
            messages: pick!(messages, "message store"),
            threads: pick!(threads, "thread store"),
            directory: pick!(directory, "session directory"),
            presence: pick!(presence, "presence"),
            push: pick!(push, "push sink"),
            relay: pick!(relay, "relay"),
        };
        Ok((self.config, adapters))
    }

    /// Starts the engine on the adapters. Must run inside a tokio runtime.
    pub async fn build(self) -> Result<Server, ServerError> {
        let (config, adapters) = self.into_adapters()?;
        let mut ec = EngineConfig::with_node(config.node_id);
        ec.max_text_bytes = config.max_text_bytes;
        ec.outbound_queue = config.outbound_queue;
        ec.presence_grace = config.presence_grace;
        let engine = Engine::start(ec, adapters).await?;
        Ok(Server {
            engine,
            auth: Authenticator::new(config.auth.clone()),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
        })
    }
}

/// A built server: the engine plus the transport around it.
pub struct Server {
    engine: Engine,
    auth: Authenticator,
    config: Arc<ServerConfig>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A [`ServerBuilder`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// The engine (for in-process sessions or stats).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The `/metrics` text right now.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self.engine.stats())
    }

    /// Serves `listener` until `shutdown` completes; then stops accepting, closes every
    /// session with 1001, waits up to `drain_timeout` for them to finish and returns.
    ///
    /// Refuses dev auth on a non-loopback listener unless `allow_insecure_dev_auth`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let local = listener.local_addr()?;
        self.config.validate(local)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = ConnCtx {
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            shutdown: stop_rx,
        };
        let shared = Arc::new(Shared {
            ctx,
            auth: self.auth.clone(),
        });
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        tracing::info!(addr = %local, "listening");
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let (tcp, peer) = tokio::select! {
                r = accept(&listener) => r,
                _ = &mut shutdown => break,
            };
            let shared = shared.clone();
            tasks.spawn(async move {
                handle_connection(&shared, tcp, peer).await;
                drop(permit);
            });
        }
        tracing::info!("shutting down: no longer accepting, closing sessions");
        drop(listener);
        let _ = stop_tx.send(true);
        self.engine.shutdown();
        let drained = tokio::time::timeout(self.config.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "drain timeout: dropping remaining connections"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

struct Shared {
    ctx: ConnCtx,
    auth: Authenticator,
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

async fn handle_connection(shared: &Shared, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let cfg = &shared.ctx.config;
    let mut stop = shared.ctx.shutdown.clone();
    let read = tokio::select! {
        r = tokio::time::timeout(cfg.handshake_timeout, http::read_head(&mut tcp)) => r,
        // On shutdown a connection still sending its request head is just dropped.
        _ = stop.wait_for(|s| *s) => return,
    };
    let head = match read {
        Err(_) => {
            let _ = http::respond(&mut tcp, 408, "text/plain", "", b"request timeout\n").await;
            return;
        }
        Ok(Err(HeadError::TooLarge)) => {
            let _ =
                http::respond(&mut tcp, 431, "text/plain", "", b"request head too large\n").await;
            return;
        }
        Ok(Err(HeadError::Malformed(_))) => {
            let _ = http::respond(&mut tcp, 400, "text/plain", "", b"bad request\n").await;
            return;
        }
        Ok(Err(_)) => return,
        Ok(Ok(h)) => h,
    };
    let (head, rest) = head;
    let r = match (head.method.as_str(), head.path.as_str()) {
        (_, "/ws") => return upgrade(shared, tcp, peer, head, rest).await,
        ("GET", "/healthz") => http::respond(&mut tcp, 200, "text/plain", "", b"ok\n").await,
        ("GET", "/metrics") => {
            let body = shared.ctx.metrics.render(shared.ctx.engine.stats());
            http::respond(
                &mut tcp,
                200,
                "text/plain; version=0.0.4",
                "",
                body.as_bytes(),
            )
            .await
        }
        (_, "/healthz" | "/metrics") => {
            http::respond(&mut tcp, 405, "text/plain", "allow: GET\r\n", b"use GET\n").await
        }
        _ => http::respond(&mut tcp, 404, "text/plain", "", b"not found\n").await,
    };
    if let Err(e) = r {
        tracing::debug!(%peer, error = %e, "http response failed");
    }
}

async fn upgrade(
    shared: &Shared,
    mut tcp: TcpStream,
    peer: SocketAddr,
    head: RequestHead,
    rest: Vec<u8>,
) {
    let ctx = &shared.ctx;
    let user = match head
        .token()
        .ok_or(crate::auth::AuthError::Missing)
        .and_then(|t| shared.auth.verify(&t))
    {
        Ok(u) => u,
        Err(e) => {
            ctx.metrics.unauthorized.fetch_add(1, Relaxed);
            tracing::debug!(%peer, reason = %e, "refused /ws: 401");
            let _ = http::respond(
                &mut tcp,
                401,
                "text/plain",
                "www-authenticate: Bearer\r\n",
                b"unauthorized\n",
            )
            .await;
            return;
        }
    };
    let key = match http::check_upgrade(&head) {
        Ok(k) => k.to_string(),
        Err(UpgradeError::Version) => {
            let _ = http::respond(
                &mut tcp,
                426,
                "text/plain",
                "sec-websocket-version: 13\r\n",
                b"websocket version 13 required\n",
            )
            .await;
            return;
        }
        Err(_) => {
            let _ = http::respond(
                &mut tcp,
                400,
                "text/plain",
                "",
                b"expected a websocket upgrade\n",
            )
            .await;
            return;
        }
    };
    if *ctx.shutdown.borrow() {
        let _ = http::respond(&mut tcp, 503, "text/plain", "", b"shutting down\n").await;
        return;
    }
    let session = match ctx.engine.connect(user.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, user = %user, error = %e, "connect failed: 503");
            let _ = http::respond(&mut tcp, 503, "text/plain", "", b"service unavailable\n").await;
            return;
        }
    };
    let answer = http::switching_protocols(&key);
    // Nothing from the request outlives the handshake.
    drop((head, key));
    let wrote = tokio::time::timeout(ctx.config.write_timeout, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.flush().await
    })
    .await;
    drop(answer);
    if !matches!(wrote, Ok(Ok(()))) {
        ctx.engine.disconnect(&session.handle).await;
        return;
    }
    let ws_config = ws_config(&ctx.config);
    let ws = if rest.is_empty() {
        WebSocketStream::from_raw_socket(tcp, Role::Server, Some(ws_config)).await
    } else {
        WebSocketStream::from_partially_read(tcp, rest, Role::Server, Some(ws_config)).await
    };
    tracing::debug!(%peer, user = %user, session = %session.handle.id(), "session open");
    ctx.metrics.connections_open.fetch_add(1, Relaxed);
    ctx.metrics.connections_total.fetch_add(1, Relaxed);
    let (sink, stream) = ws.split();
    run_session(ctx.clone(), session, sink, stream).await;
    ctx.metrics.connections_open.fetch_sub(1, Relaxed);
}

/// The tungstenite configuration: small buffers, incoming size limits.
fn ws_config(c: &ServerConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        // Outgoing frames can be large (a history page); writes are bounded by the
        // batch size and the bounded outbox instead.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(c.max_frame_bytes))
        .max_frame_size(Some(c.max_frame_bytes))
}
