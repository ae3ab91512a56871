//! [`ClientBuilder`]: how an app makes a [`Client`].

use std::sync::Arc;
use std::time::Duration;

use messenger_core::ThreadId;

use crate::auth::{StaticToken, TokenError, TokenProvider};
use crate::client::Client;
use crate::config::{BackoffConfig, InitialSync, Settings};
use crate::error::ClientError;
use crate::event::Events;
use crate::store::{ClientStore, MemoryStore};
use crate::tls::{Certificate, TlsBackend, TlsSettings};

/// Builds a [`Client`], in the spirit of matrix-rust-sdk's `ClientBuilder`:
///
/// ```no_run
/// # use std::time::Duration;
/// # use messenger_client::{Client, MemoryStore, TokenRequest, TokenError};
/// # async fn demo() -> Result<(), messenger_client::ClientError> {
/// let (client, mut events) = Client::builder()
///     .url("wss://chat.example.com/ws")
///     .token_provider(|req: TokenRequest| async move {
///         // Ask the app's backend; on TokenRequest::Refresh, skip any cache.
///         Ok::<_, TokenError>("a-jwt".to_string())
///     })
///     .store(MemoryStore::new())
///     .connect_timeout(Duration::from_secs(5))
///     .max_connect_attempts(5)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
///
/// [`build`](Self::build) returns at once with the client and its event stream, and
/// the client connects in the background (offline-first: sends wait in the outbox).
/// [`connect`](Self::connect) also waits for the first connection and catch-up.
#[must_use = "a builder does nothing until build() or connect()"]
pub struct ClientBuilder {
    settings: Settings,
    token: Option<Arc<dyn TokenProvider>>,
    store: Option<Arc<dyn ClientStore>>,
    tls: TlsSettings,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("settings", &self.settings)
            .field("token", &self.token.as_ref().map(|_| "<provider>"))
            .field("store", &self.store.as_ref().map(|_| "<store>"))
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder::new()
    }
}

impl ClientBuilder {
    /// A builder with the defaults (no URL and no token yet).
    pub fn new() -> ClientBuilder {
        ClientBuilder {
            settings: Settings::new(String::new()),
            token: None,
            store: None,
            tls: TlsSettings::default(),
        }
    }

    /// The server's WebSocket endpoint: `ws://host:port/ws` or `wss://host/ws`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.settings.url = url.into();
        self
    }

    /// A token that never changes (dev auth: the user id). Replaces any provider.
    pub fn token(self, token: impl Into<String>) -> Self {
        self.token_provider(StaticToken::new(token))
    }

    /// Where tokens come from: asked before every connection attempt and once more
    /// when the server refuses one (see [`TokenProvider`]). An async closure
    /// `|req: TokenRequest| async move { Ok::<_, TokenError>(token) }` works.
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token = Some(Arc::new(provider));
        self
    }

    /// Where the outbox, each thread's position and receipts are kept. Default: a
    /// fresh [`MemoryStore`] (nothing survives the process). Use
    /// [`SqliteStore`](crate::SqliteStore) (feature `sqlite`) or your own.
    pub fn store(mut self, store: impl ClientStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// A shared store handle.
    pub fn store_arc(mut self, store: Arc<dyn ClientStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Time allowed for one attempt: token, TCP, TLS, upgrade and `welcome`. Default
    /// 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Reconnection backoff (full jitter). Default 250 ms doubling to 30 s, unbounded.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// Stop with [`ClientError::RetriesExhausted`] after `attempts` failed connection
    /// attempts in a row (a connection that reached catch-up resets the count). Sets
    /// [`BackoffConfig::max_retries`] to `attempts - 1`. Default: unbounded.
    pub fn max_connect_attempts(mut self, attempts: u32) -> Self {
        self.settings.backoff.max_retries = Some(attempts.saturating_sub(1));
        self
    }

    /// How long a request (other than `send`) waits for its reply. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// The client pings this often and replaces a connection silent for twice as
    /// long. Default 15 s.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.settings.heartbeat = every;
        self
    }

    /// Capacity of the event stream; when full, the client stops reading the socket.
    /// Default 1024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.settings.event_capacity = capacity.max(1);
        self
    }

    /// Ack `DELIVERED` the messages from others that the app received from the
    /// stream (coalesced: one ack per thread every 250 ms at most). Default true.
    pub fn auto_ack_delivered(mut self, on: bool) -> Self {
        self.settings.auto_ack_delivered = on;
        self
    }

    /// Where a new store starts in threads it has no position for. Default
    /// [`InitialSync::Latest`].
    pub fn initial_sync(mut self, sync: InitialSync) -> Self {
        self.settings.initial_sync = sync;
        self
    }

    /// Declares that the app already holds `thread` up to `last_seq` (for apps that
    /// keep positions themselves); a larger position in the store wins.
    pub fn resume(mut self, thread: ThreadId, last_seq: u64) -> Self {
        self.settings.resume.insert(thread, last_seq);
        self
    }

    /// Trust `cert` as a root for `wss://` (a private CA).
    pub fn add_root_certificate(mut self, cert: Certificate) -> Self {
        self.tls.roots.push(cert);
        self
    }

    /// Trust the built-in roots (Mozilla's for rustls, the system's for native TLS)
    /// besides the added ones. Default true; false trusts only
    /// [`add_root_certificate`](Self::add_root_certificate)s.
    pub fn tls_built_in_roots(mut self, on: bool) -> Self {
        self.tls.built_in_roots = on;
        self
    }

    /// Which TLS implementation to use when both features are on. Default rustls.
    pub fn tls_backend(mut self, backend: TlsBackend) -> Self {
        self.tls.backend = Some(backend);
        self
    }

    /// A complete rustls configuration (client certificates, pinning, ...): replaces
    /// the root settings.
    #[cfg(feature = "rustls")]
    pub fn rustls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls.rustls = Some(config);
        self.tls.backend = Some(TlsBackend::Rustls);
        self
    }

    /// A complete native-tls connector: replaces the root settings.
    #[cfg(feature = "native-tls")]
    pub fn native_tls_connector(mut self, connector: native_tls::TlsConnector) -> Self {
        self.tls.native = Some(connector);
        self.tls.backend = Some(TlsBackend::NativeTls);
        self
    }

    /// Builds the client: checks the settings, reads the store and starts connecting
    /// in the background. Returns the client and its event stream together, so no
    /// event can happen before the app can see it. Must be called inside a tokio
    /// runtime.
    ///
    /// Fails at once on a missing or bad URL, no token, bad TLS settings, or a store
    /// that cannot be read; connection problems show up as states
    /// ([`ConnectionState`](crate::ConnectionState)) instead.
    pub async fn build(self) -> Result<(Client, Events), ClientError> {
        if self.settings.url.is_empty() {
            return Err(ClientError::InvalidUrl("no url: call .url(..)".into()));
        }
        crate::driver::connect::request(&self.settings.url)?;
        let token = self.token.ok_or_else(|| {
            ClientError::Token(TokenError::permanent(
                "no token: call .token(..) or .token_provider(..)",
            ))
        })?;
        let tls = self.tls.build()?;
        let store: Arc<dyn ClientStore> = match self.store {
            Some(s) => s,
            None => Arc::new(MemoryStore::new()),
        };
        let stored = store.load().await.map_err(ClientError::Store)?;
        Ok(Client::start(self.settings, token, store, stored, tls))
    }

    /// [`build`](Self::build), then waits until the first connection is up and its
    /// catch-up has fixed where each thread starts. Fails if the client stops first
    /// (token refused, attempts exhausted: bound them with
    /// [`max_connect_attempts`](Self::max_connect_attempts)).
    pub async fn connect(self) -> Result<(Client, Events), ClientError> {
        let (client, events) = self.build().await?;
        client.wait_connected().await?;
        Ok((client, events))
    }
}
