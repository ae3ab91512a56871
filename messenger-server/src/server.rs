//! The builder and the server: engine, authenticator, metrics and session runner.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Sink, Stream};
use messenger_core::engine::{Adapters, Engine, EngineConfig};
use messenger_core::idgen::Snowflake;
use messenger_core::{
    DiscardEvents, EventSink, IdGenerator, MessageStore, NodeId, Presence, PushRegistry, PushSink,
    Relay, SessionDirectory, ThreadStore, UserId,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::auth::{AuthError, Authenticator, JwtSetupError};
use crate::config::{ConfigError, ServerConfig};
use crate::conn::{run_session, ConnCtx};
use crate::limits::Guards;
use crate::metrics::{Metrics, SharedRegistry};
use crate::ondemand::ReadOnDemand;

/// Why the server could not be built or could not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The JWT keys could not be loaded.
    #[error("JWT keys: {0}")]
    Auth(#[from] JwtSetupError),
    /// An adapter is missing (only without the `mem` feature).
    #[error("no {0} adapter was given")]
    MissingAdapter(&'static str),
    /// The engine could not start (an adapter is down), or refused a session.
    #[error("engine: {0}")]
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
    /// The embedded store's data directory cannot be used (not a directory, not
    /// writable, held by another process, written by a newer version); the message
    /// says what to do.
    #[error("{0}")]
    DataDir(String),
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
    /// The server is shutting down: no new session.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The user already holds `limits.max_sessions_per_user` sessions on this node.
    #[error("too many sessions for this user on this node (limit {0})")]
    TooManySessions(usize),
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
    auth: Option<Arc<dyn Authenticator>>,
    registry: Option<SharedRegistry>,
    ids: Option<Arc<dyn IdGenerator>>,
    messages: Option<Arc<dyn MessageStore>>,
    threads: Option<Arc<dyn ThreadStore>>,
    directory: Option<Arc<dyn SessionDirectory>>,
    presence: Option<Arc<dyn Presence>>,
    push: Option<Arc<dyn PushSink>>,
    push_registry: Option<Arc<dyn PushRegistry>>,
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

    /// The authenticator of `/ws` requests (default: the one `config.auth` describes,
    /// see [`auth::from_config`](crate::auth::from_config)).
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Registers the server's metrics in this registry (under the `messenger_` prefix)
    /// instead of a private one; `/metrics` then serves the whole registry, the
    /// embedder's own series included.
    pub fn metrics_registry(mut self, registry: SharedRegistry) -> Self {
        self.registry = Some(registry);
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
        self.push_registry = Some(a.push_registry);
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

    /// Where users' push targets and thread mutes are stored (default: the store the
    /// configuration names, HBase with `hbase.address`, else memory).
    pub fn push_registry(mut self, v: Arc<dyn PushRegistry>) -> Self {
        self.push_registry = Some(v);
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

    /// `registry`: where the push providers' metrics go (feature `push`).
    fn into_adapters(
        mut self,
        #[cfg_attr(not(feature = "push"), allow(unused_variables))] registry: &SharedRegistry,
    ) -> Result<(ServerConfig, Adapters), ServerError> {
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
        #[cfg(feature = "push")]
        let push_unset = self.push.is_none();
        // Only the `push` feature replaces the push sink below.
        #[cfg_attr(not(feature = "push"), allow(unused_mut))]
        let mut adapters = Adapters {
            ids: pick!(ids, "id generator"),
            messages: pick!(messages, "message store"),
            threads: pick!(threads, "thread store"),
            directory: pick!(directory, "session directory"),
            presence: pick!(presence, "presence"),
            push: pick!(push, "push sink"),
            push_registry: pick!(push_registry, "push registry"),
            relay: pick!(relay, "relay"),
            events: self.events.unwrap_or_else(|| Arc::new(DiscardEvents)),
        };
        #[cfg(feature = "push")]
        if push_unset {
            if let Some(service) =
                crate::push::service(&self.config.push, adapters.push_registry.clone())?
            {
                let mut reg = registry.write().unwrap_or_else(|p| p.into_inner());
                service
                    .metrics()
                    .register(reg.sub_registry_with_prefix("messenger"));
                adapters.push = service;
            }
        }
        Ok((self.config, adapters))
    }

    /// Loads the authenticator's keys, connects the backends the configuration names
    /// (HBase, then Redis, which claims `node_id`) for the adapters not set explicitly,
    /// and starts the engine. Must run inside a tokio runtime.
    ///
    /// Errors: [`ServerError::Config`] for a refused configuration, [`ServerError::Auth`]
    /// when the JWT keys cannot be loaded, [`ServerError::Backend`] when Redis or HBase
    /// cannot be used, [`ServerError::NodeIdConflict`] when another live node holds
    /// `node_id`.
    pub async fn build(mut self) -> Result<Server, ServerError> {
        self.config.validate()?;
        let auth = match self.auth.take() {
            Some(a) => a,
            None => crate::auth::from_config(&self.config.auth).await?,
        };
        let registry = self.registry.take().unwrap_or_default();
        // The push registry comes with the stores the server connects; an embedder
        // that brings its own stores brings its registry too (or gets the memory one).
        let need_stores = self.messages.is_none() || self.threads.is_none();
        let need_sessions =
            self.directory.is_none() || self.presence.is_none() || self.relay.is_none();
        // Only when this server makes its own in-memory directory and relay is it sure
        // to be the one node; an embedder's adapters may be shared with other engines.
        let single_node =
            self.directory.is_none() && self.relay.is_none() && self.config.redis.url.is_none();
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
        self.push_registry = self.push_registry.or(backends.push_registry);
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
            let (config, adapters) = self.into_adapters(&registry)?;
            let mut ec = EngineConfig::with_node(config.node_id);
            ec.max_text_bytes = config.limits.max_text_bytes;
            ec.outbound_queue = config.limits.outbound_queue;
            ec.presence_grace = config.presence.grace;
            ec.max_group_members = config.limits.max_group_members;
            ec.single_node = single_node;
            ec.large_group_relay = config.redis.large_group_relay;
            #[cfg(feature = "push")]
            {
                ec.large_group_threshold = config.push.large_group_threshold;
                ec.large_group_push_interval = config.push.large_group_interval;
            }
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
        let metrics = {
            let mut reg = registry.write().unwrap_or_else(|p| p.into_inner());
            #[cfg(feature = "kafka")]
            if let Some(log) = &event_log {
                reg.sub_registry_with_prefix("messenger")
                    .register_collector(Box::new(crate::metrics::EventLogCollector(log.clone())));
                tracing::info!(brokers = ?config.kafka.brokers, "event log: produced to Kafka");
            }
            Arc::new(Metrics::register(&mut reg, engine.clone()))
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let guards = Arc::new(Guards::new(
            &config.limits,
            &config.websocket.allowed_origins,
        ));
        // Rate-limit keys idle for a minute are dropped, so their memory follows the
        // active addresses and users. The task ends with the server.
        let weak = Arc::downgrade(&guards);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(g) => g.retain_recent(),
                    None => return,
                }
            }
        });
        let config = Arc::new(config);
        Ok(Server {
            inner: Arc::new(Inner {
                ctx: ConnCtx {
                    engine,
                    metrics,
                    config,
                    shutdown: stop_rx,
                    guards,
                },
                auth,
                registry,
                stop: stop_tx,
                sessions: Mutex::new(JoinSet::new()),
                #[cfg(feature = "redis")]
                redis: Mutex::new(redis),
                #[cfg(feature = "kafka")]
                event_log,
                adapters_in_use: format!("stores: {stores}; sessions: {sessions}"),
            }),
        })
    }
}

/// A built server: the engine, the authenticator and the metrics, ready to run
/// sessions. Cheap to clone (one `Arc`).
///
/// Run it with [`serve`](Server::serve) on a listener, mount [`router`](Server::router)
/// in an axum app, or hand it WebSockets upgraded elsewhere with
/// [`run_websocket`](Server::run_websocket) / [`run_upgraded`](Server::run_upgraded).
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) ctx: ConnCtx,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) registry: SharedRegistry,
    stop: watch::Sender<bool>,
    sessions: Mutex<JoinSet<()>>,
    #[cfg(feature = "redis")]
    redis: Mutex<Option<messenger_redis::RedisCluster>>,
    #[cfg(feature = "kafka")]
    event_log: Option<Arc<messenger_kafka::KafkaEventLog>>,
    adapters_in_use: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.inner.ctx.config)
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
        &self.inner.ctx.engine
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.ctx.config
    }

    /// The authenticator of `/ws` requests.
    pub fn authenticator(&self) -> &Arc<dyn Authenticator> {
        &self.inner.auth
    }

    /// Runs the server's [`Authenticator`] on a request's parts, counting a refusal in
    /// `messenger_unauthorized_total{reason}`: for hosts that upgrade `/ws` themselves
    /// and then call [`run_websocket`](Server::run_websocket).
    pub async fn authenticate(&self, request: &http::request::Parts) -> Result<UserId, AuthError> {
        let r = self.inner.auth.authenticate(request).await;
        if let Err(e) = &r {
            self.inner.ctx.metrics.unauthorized(e.reason());
            tracing::debug!(peer = ?crate::auth::peer_addr(request), reason = %e, "refused /ws");
        }
        r
    }

    /// Which adapters the server runs on, e.g.
    /// `stores: hbase 127.0.0.1:9090 (tables messenger_*); sessions: redis ...`.
    pub fn adapters_in_use(&self) -> &str {
        &self.inner.adapters_in_use
    }

    /// Whether this node still holds its node id in Redis (always true without Redis).
    pub fn holds_node_id(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(r) = &*self.inner.redis.lock().unwrap_or_else(|p| p.into_inner()) {
            return r.claim_held();
        }
        true
    }

    /// Completes when another instance takes this node's id in Redis (never without
    /// Redis). [`serve`](Server::serve) stops then; an embedder serving
    /// [`router`](Server::router) should stop too.
    pub async fn node_id_lost(&self) {
        #[cfg(feature = "redis")]
        {
            let claim = self
                .inner
                .redis
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|r| r.claim_receiver());
            if let Some(mut rx) = claim {
                if rx.wait_for(|held| !held).await.is_ok() {
                    return;
                }
            }
        }
        std::future::pending::<()>().await
    }

    /// The metrics registry `/metrics` serves.
    pub fn metrics_registry(&self) -> &SharedRegistry {
        &self.inner.registry
    }

    /// The `/metrics` text (OpenMetrics) right now.
    pub fn metrics_text(&self) -> String {
        let reg = self
            .inner
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner());
        crate::metrics::encode(&reg)
    }

    /// Whether [`shutdown`](Server::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// The tungstenite settings the server applies to its WebSockets (small buffers,
    /// incoming size limits): use them when upgrading yourself.
    pub fn websocket_config(&self) -> WebSocketConfig {
        ws_config(&self.inner.ctx.config)
    }

    /// Runs a session for `user` over a WebSocket the caller upgraded (any
    /// `Sink`/`Stream` of tungstenite messages, such as a
    /// [`WebSocketStream`](tokio_tungstenite::WebSocketStream) built with
    /// [`websocket_config`](Server::websocket_config)) until it ends. Authenticate the
    /// user before calling this. The session counts in the metrics, closes with 1001 on
    /// [`shutdown`](Server::shutdown) and is waited for by it.
    ///
    /// Errors: [`ServerError::ShuttingDown`], [`ServerError::TooManySessions`] when the
    /// user holds `limits.max_sessions_per_user` sessions on this node already, or
    /// [`ServerError::Engine`] when the engine cannot register the session (an adapter
    /// is down).
    pub async fn run_websocket<S>(&self, user: UserId, mut ws: S) -> Result<(), ServerError>
    where
        S: Sink<Message, Error = WsError>
            + Stream<Item = Result<Message, WsError>>
            + Unpin
            + Send
            + 'static,
    {
        if self.is_shutting_down() {
            return Err(ServerError::ShuttingDown);
        }
        let slot = self.session_slot(&user)?;
        let mut session = self.inner.ctx.engine.connect(user).await?;
        let ctx = self.inner.ctx.clone();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        // The task owns the session and the socket once; everything below borrows them.
        self.track(async move {
            run_counted(&ctx, &mut session, &mut ws).await;
            drop(slot);
            let _ = done_tx.send(());
        });
        let _ = done.await;
        Ok(())
    }

    /// Runs a session for `user` over raw upgraded I/O (the bytes after a `101
    /// Switching Protocols` answer, for example hyper's `Upgraded` in `TokioIo`),
    /// applying [`websocket_config`](Server::websocket_config). See
    /// [`run_websocket`](Server::run_websocket).
    pub async fn run_upgraded<IO>(&self, user: UserId, io: IO) -> Result<(), ServerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let c = &self.inner.ctx.config;
        let io = ReadOnDemand::new(io, c.websocket.read_buffer_bytes);
        let ws =
            WebSocketStream::from_raw_socket(io, Role::Server, Some(session_ws_config(c))).await;
        self.run_websocket(user, ws).await
    }

    /// One of `user`'s `limits.max_sessions_per_user` session slots on this node (given
    /// back when dropped), or [`ServerError::TooManySessions`], counted in
    /// `messenger_limit_refusals_total{limit="sessions_per_user"}`.
    pub(crate) fn session_slot(
        &self,
        user: &UserId,
    ) -> Result<crate::limits::SessionSlot, ServerError> {
        self.inner.ctx.guards.session_slot(user).ok_or_else(|| {
            self.inner.ctx.metrics.limit("sessions_per_user");
            let max = self.inner.ctx.config.limits.max_sessions_per_user;
            tracing::info!(user = %user, max, "session refused: too many sessions for this user");
            ServerError::TooManySessions(max)
        })
    }

    /// Spawns a session task the server waits for on shutdown.
    pub(crate) fn track<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut set = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Reap finished sessions so the set holds only live ones.
        while set.try_join_next().is_some() {}
        set.spawn(fut);
    }

    /// Stops the server's sessions: every session is closed with 1001, the engine stops
    /// taking work, sessions get `websocket.drain_timeout` to finish and are dropped
    /// after it; in cluster mode this node's sessions leave Redis and its node id is
    /// released. Idempotent. [`serve`](Server::serve) calls it on its way out; an
    /// embedder serving [`router`](Server::router) calls it after its own server stopped
    /// accepting.
    pub async fn shutdown(&self) {
        let first = !self.inner.stop.send_replace(true);
        if first {
            tracing::info!("shutting down: closing sessions");
        }
        self.inner.ctx.engine.shutdown();
        let mut set = std::mem::take(
            &mut *self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let drained = tokio::time::timeout(self.inner.ctx.config.websocket.drain_timeout, async {
            while set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = set.len(),
                "drain timeout: dropping remaining sessions"
            );
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        #[cfg(feature = "redis")]
        {
            let cluster = self
                .inner
                .redis
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(r) = cluster {
                let lost = !r.claim_held();
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
        }
        #[cfg(feature = "kafka")]
        if let (true, Some(log)) = (first, &self.inner.event_log) {
            // Sessions are closed: no more events. Give the brokers a moment for the rest.
            if log.close(Duration::from_secs(5)).await == 0 {
                tracing::info!("event log flushed to Kafka");
            }
        }
        if first {
            tracing::info!("shutdown complete");
        }
    }
}

/// Runs a session over `ws` with the connection metrics around it. Borrows what the
/// session task owns (see [`run_session`]).
pub(crate) async fn run_counted<S>(
    ctx: &ConnCtx,
    session: &mut messenger_core::engine::Session,
    ws: &mut S,
) where
    S: Sink<Message, Error = WsError>
        + Stream<Item = Result<Message, WsError>>
        + Unpin
        + Send
        + 'static,
{
    tracing::debug!(user = %session.handle.user(), session = %session.handle.id(), "session open");
    ctx.metrics.connections_open.inc();
    ctx.metrics.connections_total.inc();
    run_session(ctx, session, ws).await;
    ctx.metrics.connections_open.dec();
}

/// The tungstenite configuration of the server's own sessions, which run over
/// [`ReadOnDemand`]: tungstenite's read buffer starts empty and grows only to the frames
/// it is given (`websocket.read_buffer_bytes` is the size of the socket reads, whose
/// buffer exists only while data is in flight).
pub(crate) fn session_ws_config(c: &ServerConfig) -> WebSocketConfig {
    ws_config(c).read_buffer_size(0)
}

/// The tungstenite configuration: small buffers, incoming size limits.
pub(crate) fn ws_config(c: &ServerConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(c.websocket.read_buffer_bytes)
        .write_buffer_size(c.websocket.write_buffer_bytes)
        // Outgoing frames can be large (a history page); writes are bounded by the
        // batch size and the bounded outbox instead.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(c.limits.max_frame_bytes))
        .max_frame_size(Some(c.limits.max_frame_bytes))
}
