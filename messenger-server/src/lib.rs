//! # messenger-server
//!
//! The messenger WebSocket server as a library, and the `messenger-server` binary.
//!
//! - [`Server::builder`] composes the adapters (any [`Adapters`], or one
//!   `Arc<dyn Trait>` at a time; with the default `mem` feature, unset ones are
//!   in memory) and a [`ServerConfig`] into a [`Server`].
//! - [`Server::serve`] runs on a bound `TcpListener` until a shutdown future completes,
//!   inside the caller's tokio runtime, next to its other services.
//! - One listener serves `GET /ws` (protocol v1, token in `Authorization: Bearer` or
//!   `?token=`, 401 before the upgrade), `GET /healthz`, `GET /metrics` (Prometheus)
//!   and the browser chat at `GET /` ([`web`]).
//!
//! - Cluster mode by configuration: `redis_url` puts the session directory, presence and
//!   relay on Redis (feature `redis`, claims `node_id`, refused if another live node
//!   holds it), `hbase` puts the message and thread stores on HBase (feature `hbase`).
//!   Both features are on by default; see [`cluster`] and `docs/operations.md`.
//!
//! Layout: [`config`] (settings), [`auth`] (dev auth and JWT HS256), [`http`] (the
//! request head and upgrade checks), `conn` (reader and writer task per session),
//! [`metrics`], [`cli`] (the binary's file/env/flag configuration), [`cluster`] (the
//! Redis and HBase adapters chosen by the configuration), [`web`] (the embedded browser
//! chat).
//!
//! ```no_run
//! use messenger_server::{Server, ServerConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
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
//! Close codes: 1001 shutdown, 1002 WebSocket protocol error, 1007 text frame not UTF-8,
//! 1009 frame over `max_frame_bytes`,
//! [`CLOSE_SLOW_CONSUMER`] (4000) slow consumer, [`CLOSE_HEARTBEAT_TIMEOUT`] (4001)
//! silent peer. See `docs/protocol.md`.

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
mod conn;
pub mod http;
pub mod metrics;
mod server;
pub mod web;

pub use config::{AuthMode, ConfigError, ServerConfig};
pub use conn::{
    TokenBucket, CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_INVALID_UTF8,
    CLOSE_PROTOCOL_ERROR, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG,
};
pub use messenger_core::engine::Adapters;
pub use server::{Server, ServerBuilder, ServerError};
