//! The builder, the server and its accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use messenger_core::engine::{Adapters, Engine, EngineConfig};
use messenger_core::idgen::Snowflake;
use messenger_core::{
    DiscardEvents, EventSink, IdGenerator, MessageStore, NodeId, Presence, PushSink, Relay,
    SessionDirectory, ThreadStore,
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
    /// A backend named in the configuration (Redis, HBase) could not be used at start.
    #[error("{context}: {source}. {hint}")]
    Backend {
        /// What was being done.
        context: String,
        /// What the operator should do.
        hint: String,
        /// The adapter's error.
        #[source]
        source: messenger_core::Error,
    },
    /// Another live node holds this node id in Redis.
    #[error(
        "node id {node} is already claimed in Redis by another live messenger-server: \
         every node needs its own --node-id. If the process that had this id crashed, its \
         claim expires {ttl:?} after its last heartbeat (--redis-node-ttl): start again \
         after that, or pick a free id. ({source})"
    )]
    NodeIdConflict {
        /// The contested id.
        node: NodeId,
        /// The claim's time to live.
        ttl: Duration,
        /// The adapter's error.
        #[source]
        source: messenger_core::Error,
    },
    /// Another instance took this node's id while it was running (two processes with one
    /// id, or this one stalled past the node TTL); the server stopped.
    #[error(
        "node id {0} was taken over in Redis by another instance; this node stopped. \
         Give every node its own --node-id"
    )]
    LostNodeId(NodeId),
}

/// Composes the adapters and the configuration into a [`Server`].
///
/// Start from a whole [`Adapters`] with [`adapters`](Self::adapters), or set each
/// adapter on its own. Adapters left unset come from the configuration: Redis for the
/// session directory, presence and relay when `redis_url` is set (feature `redis`),
/// HBase for the message and thread stores when `hbase` is set (feature `hbase`), a
/// Snowflake generator for `node_id` for ids, and otherwise the in-memory ones (feature
/// `mem`).
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
    events: Option<Arc<dyn EventSink>>,
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
        self.events = Some(a.events);
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

    /// The event log sink (default: events are discarded).
    pub fn event_sink(mut self, v: Arc<dyn EventSink>) -> Self {
        self.events = Some(v);
        self
    }

    fn into_adapters(mut self) -> Result<(ServerConfig, Adapters), ServerError> {
        // Ids carry the node id in the Snowflake node field, so they are unique across
        // nodes with distinct ids.
        if self.ids.is_none() {
            self.ids = Some(Arc::new(Snowflake::new(self.config.node_id)));
        }
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
            events: self.events.unwrap_or_else(|| Arc::new(DiscardEvents)),
        };
        Ok((self.config, adapters))
    }

    /// Connects the backends the configuration names (HBase, then Redis, which claims
    /// `node_id`) for the adapters not set explicitly, and starts the engine. Must run
    /// inside a tokio runtime.
    ///
    /// Errors: [`ServerError::Backend`] when Redis or HBase cannot be used,
    /// [`ServerError::NodeIdConflict`] when another live node holds `node_id`.
    pub async fn build(mut self) -> Result<Server, ServerError> {
        self.config
            .validate(self.config.listen)
            .or_else(|e| match e {
                // The listen address is checked by `serve` against the real listener.
                ConfigError::InsecureDevAuth(_) => Ok(()),
                e => Err(e),
            })?;
        let need_stores = self.messages.is_none() || self.threads.is_none();
        let need_sessions =
            self.directory.is_none() || self.presence.is_none() || self.relay.is_none();
        // Only when this server makes its own in-memory directory and relay is it sure
        // to be the one node; an embedder's adapters may be shared with other engines.
        let single_node =
            self.directory.is_none() && self.relay.is_none() && self.config.redis_url.is_none();
        let backends = crate::cluster::connect(&self.config, need_stores, need_sessions).await?;
        let stores = if self.messages.is_some() && self.threads.is_some() {
            "given by the embedder".to_string()
        } else {
            backends.stores.clone()
        };
        let sessions = if need_sessions {
            backends.sessions.clone()
        } else {
            "given by the embedder".to_string()
        };
        self.messages = self.messages.or(backends.messages);
        self.threads = self.threads.or(backends.threads);
        self.directory = self.directory.or(backends.directory);
        self.presence = self.presence.or(backends.presence);
        self.relay = self.relay.or(backends.relay);
        #[cfg(feature = "kafka")]
        let event_log = backends.event_log;
        #[cfg(feature = "kafka")]
        if let (None, Some(log)) = (&self.events, &event_log) {
            self.events = Some(log.clone() as Arc<dyn EventSink>);
        }
        #[cfg(feature = "redis")]
        let redis = backends.redis;
        let started = async {
            let (config, adapters) = self.into_adapters()?;
            let mut ec = EngineConfig::with_node(config.node_id);
            ec.max_text_bytes = config.max_text_bytes;
            ec.outbound_queue = config.outbound_queue;
            ec.presence_grace = config.presence_grace;
            ec.single_node = single_node;
            let engine = Engine::start(ec, adapters).await?;
            Ok::<_, ServerError>((config, engine))
        }
        .await;
        let (config, engine) = match started {
            Ok(v) => v,
            Err(e) => {
                #[cfg(feature = "redis")]
                if let Some(r) = redis {
                    // Release the node id at once rather than after the TTL.
                    let _ = r.shutdown().await;
                }
                return Err(e);
            }
        };
        tracing::info!(
            node = %config.node_id,
            stores = %stores,
            sessions = %sessions,
            "adapters in use (stores: messages and threads; sessions: directory, presence, relay)"
        );
        let metrics = Arc::new(Metrics::default());
        #[cfg(feature = "kafka")]
        if let Some(log) = &event_log {
            let _ = metrics.event_log.set(log.clone());
            tracing::info!(brokers = ?config.kafka, "event log: produced to Kafka");
        }
        Ok(Server {
            engine,
            auth: Authenticator::new(config.auth.clone()),
            config: Arc::new(config),
            metrics,
            #[cfg(feature = "redis")]
            redis,
            adapters_in_use: format!("stores: {stores}; sessions: {sessions}"),
        })
    }
}

/// A built server: the engine plus the transport around it.
pub struct Server {
    engine: Engine,
    auth: Authenticator,
    config: Arc<ServerConfig>,
    metrics: Arc<Metrics>,
    #[cfg(feature = "redis")]
    redis: Option<messenger_redis::RedisCluster>,
    adapters_in_use: String,
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

    /// Which adapters the server runs on, e.g.
    /// `stores: hbase 127.0.0.1:9090 (tables messenger_*); sessions: redis ...`.
    pub fn adapters_in_use(&self) -> &str {
        &self.adapters_in_use
    }

    /// Whether this node still holds its node id in Redis (always true without Redis).
    pub fn holds_node_id(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(r) = &self.redis {
            return r.claim_held();
        }
        true
    }

    /// The `/metrics` text right now.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self.engine.stats())
    }

    /// Serves `listener` until `shutdown` completes; then stops accepting, closes every
    /// session with 1001, waits up to `drain_timeout` for them to finish and returns.
    ///
    /// Refuses dev auth on a non-loopback listener unless `allow_insecure_dev_auth`.
    ///
    /// In cluster mode (Redis) it also stops, and returns [`ServerError::LostNodeId`],
    /// when another instance takes this node's id; on return it removes this node's
    /// sessions from Redis (their users go offline at once) and releases the id.
    pub async fn serve(
        #[allow(unused_mut)] mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        #[cfg(feature = "redis")]
        let redis = self.redis.take();
        #[cfg(feature = "redis")]
        let result = {
            let lost = async {
                match &redis {
                    Some(r) => r.lost_claim().await,
                    None => std::future::pending().await,
                }
            };
            let node = self.config.node_id;
            let lost_flag = std::sync::atomic::AtomicBool::new(false);
            let stop = async {
                tokio::select! {
                    _ = shutdown => {}
                    _ = lost => {
                        tracing::error!(%node, "node id taken over by another instance: shutting down");
                        lost_flag.store(true, Relaxed);
                    }
                }
            };
            let r = self.serve_inner(listener, stop).await;
            match r {
                Ok(()) if lost_flag.load(Relaxed) => Err(ServerError::LostNodeId(node)),
                r => r,
            }
        };
        #[cfg(not(feature = "redis"))]
        let result = self.serve_inner(listener, shutdown).await;
        #[cfg(feature = "kafka")]
        if let Some(log) = self.metrics.event_log.get() {
            // Sessions are closed: no more events. Give the brokers a moment for the rest.
            let left = log.close(Duration::from_secs(5)).await;
            if left == 0 {
                tracing::info!("event log flushed to Kafka");
            }
        }
        #[cfg(feature = "redis")]
        if let Some(r) = redis {
            let lost = matches!(result, Err(ServerError::LostNodeId(_)));
            match r.shutdown().await {
                // The new holder's claim and sessions are left alone (token mismatch).
                Ok(()) if lost => tracing::info!(
                    "stopped the redis tasks; the node id belongs to the other instance"
                ),
                Ok(()) => tracing::info!(
                    "left the cluster: sessions removed from redis, node id released"
                ),
                Err(e) => tracing::warn!(error = %e,
                    "could not leave the cluster cleanly; other nodes reap this node after the node TTL"),
            }
        }
        result
    }

    async fn serve_inner(
        &self,
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
        (method, path) => match crate::web::asset(path) {
            Some(a) if method == "GET" => {
                http::respond(&mut tcp, 200, a.content_type, crate::web::HEADERS, a.body).await
            }
            Some(_) => {
                http::respond(&mut tcp, 405, "text/plain", "allow: GET\r\n", b"use GET\n").await
            }
            None => http::respond(&mut tcp, 404, "text/plain", "", b"not found\n").await,
        },
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
