//! # messenger-server
//!
//! The messenger WebSocket server as a library, and the `messenger-server` binary
//! (feature `cli`).
//!
//! - [`Server::builder`] composes the adapters (any [`Adapters`], or one
//!   `Arc<dyn Trait>` at a time; with the default `mem` feature, unset ones are in
//!   memory), an [`Authenticator`](auth::Authenticator) and a [`ServerConfig`] into a
//!   [`Server`].
//! - [`Server::router`] (feature `axum`, on by default) is an axum `Router` serving
//!   `GET /ws` (protocol v1; token checked before the upgrade, 401 otherwise),
//!   `GET /healthz` and `GET /metrics` (OpenMetrics): nest or merge it into your own app,
//!   with your own tower layers.
//! - [`web`] (feature `axum`): the browser chat (`GET /`, `/chat.js`, `/chat.css`) as a
//!   router of its own; the binary merges it next to [`Server::router`].
//! - [`Server::serve`] runs that router on a bound `TcpListener` until a shutdown future
//!   completes, inside the caller's tokio runtime.
//! - [`Server::run_websocket`] / [`Server::run_upgraded`] run a session over a
//!   WebSocket your own HTTP stack upgraded.
//! - Cluster mode by configuration: `redis.url` puts the session directory, presence and
//!   relay on Redis (feature `redis`), `hbase.address` puts the message and thread stores
//!   on HBase (feature `hbase`). See `docs/operations.md`.
//!
//! ```no_run
//! use messenger_server::{Server, ServerConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // An accept queue of 4096, not TcpListener::bind's 128 (see bind_listener).
//! let listener = messenger_server::bind_listener("127.0.0.1:8080".parse()?)?;
//! let server = Server::builder()
//!     .config(ServerConfig::default()) // dev auth: the token is the user id
//!     .build()
//!     .await?;
//! server
//!     .serve(listener, async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `mem` | yes | in-memory adapters for whatever the builder is not given |
//! | `axum` | yes | [`Server::router`] and [`Server::serve`] |
//! | `jwks-url` | no | JWKS fetched over HTTPS (`auth.jwt.jwks_url`) |
//! | `redis` | no | cluster mode on Redis |
//! | `hbase` | no | message and thread stores on HBase |
//! | `cli` | no | the `messenger-server` binary (all of the above, config layering, logging) |
//!
//! Layout: [`config`] (settings, one struct per concern), [`auth`] (the trait, dev auth,
//! JWT), `server` (builder, server, session runner), `router` (axum), `conn` (reader and
//! writer task per session), `limits` (abuse limits shared across sessions), [`metrics`] (prometheus-client), `cluster` (the Redis and
//! HBase adapters chosen by the configuration), `cli` (the binary's configuration).
//!
//! Close codes: 1001 shutdown, 1002 WebSocket protocol error, 1007 text frame not UTF-8,
//! 1009 frame over `limits.max_frame_bytes`, [`CLOSE_SLOW_CONSUMER`] (4000) slow
//! consumer, [`CLOSE_HEARTBEAT_TIMEOUT`] (4001) silent peer. See `docs/protocol.md`.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
mod cluster;
pub mod config;
mod conn;
/// Entry points for `cargo fuzz` (feature `fuzzing`; not a stable API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod limits;
pub mod metrics;
mod ondemand;
#[cfg(feature = "push")]
mod push;
#[cfg(feature = "axum")]
mod router;
mod server;
pub mod web;

pub use config::{ConfigError, ServerConfig};
pub use conn::{
    CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_INVALID_UTF8, CLOSE_PROTOCOL_ERROR,
    CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG,
};
pub use messenger_core::engine::Adapters;
pub use server::{Server, ServerBuilder, ServerError};
/// Pending connections the kernel queues for `accept` on a listener made by
/// [`bind_listener`] (capped by `net.core.somaxconn`, 4096 by default).
///
/// `TcpListener::bind` asks for 128. A burst of connects larger than that (a reconnect
/// storm, a load generator with 256 in flight) while the accept loop waits for the CPU
/// overflows the queue: the kernel drops the SYNs, and those clients retry only after
/// 1 s, then 3 s, ... (measured: ~1 000 overflows and a connect ramp at a few hundred
/// per second while the server's core was busy).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener for [`Server::serve`] on `addr` with an accept queue of
/// [`LISTEN_BACKLOG`] (not the 128 of `TcpListener::bind`) and `SO_REUSEADDR`, so that
/// a restart may reuse a port still in TIME_WAIT. Must be called inside a Tokio
/// runtime.
pub fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The tungstenite version sessions run on (for [`Server::run_websocket`]).
pub use tokio_tungstenite::tungstenite;
