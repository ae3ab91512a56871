//! # messenger-client
//!
//! The async Rust SDK for messenger's protocol v1, for apps that ship: `wss://`,
//! tokens that expire, nothing lost silently, and a store that survives restarts.
//! Every message reaches the app exactly once, in seq order per thread, across
//! disconnects, server restarts and (with a persistent store) app restarts.
//!
//! ```no_run
//! use messenger_client::{Client, Event, UserId};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::builder()
//!     .url("ws://127.0.0.1:8080/ws")
//!     .token("alice") // dev auth; see `token_provider` for real tokens
//!     .connect()
//!     .await?;
//! let thread = client.create_direct(&UserId::new("bob")?).await?;
//! let sent = client.send(&thread.thread_id, "hi bob").await?;
//! println!("sent as {} (seq {})", sent.message_id, sent.seq);
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("[{}#{}] {}: {}", m.thread_id, m.seq, m.sender_id, m.text);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## How it works
//! - **One task, a handle and a stream.** A background task owns the WebSocket.
//!   [`ClientBuilder::build`] returns the [`Client`] handle and the [`Events`] stream
//!   together, so the stream exists before the first frame. Requests carry a `req_id`
//!   and wait for the reply with that id (or a typed [`ClientError`]).
//! - **No silent loss.** [`Event::Message`] is never dropped: a full stream stops the
//!   client reading the socket (backpressure; the server's slow-consumer close and the
//!   catch-up after it then apply). `DELIVERED` is acked only for messages the app
//!   received from the stream, and a thread's position moves only once the app came
//!   back for the next event.
//! - **Outbox.** A send goes to the [`ClientStore`] first, then to the server under its
//!   temp id; every (re)connect resends the whole outbox, oldest first, with the same
//!   temp ids, after asking for the catch-up and with at most 64 sends awaiting an
//!   answer at a time (the server answers a session in order, so a catch-up or a gap
//!   fill never waits behind a whole outbox); the server's idempotent send makes that
//!   safe. With
//!   [`SqliteStore`] (feature `sqlite`) the outbox, positions and receipts survive the
//!   app being killed.
//! - **Catch-up and gap filling.** After every `welcome`: `list_threads`, then
//!   `fetch_history` after the last seq held, page by page; a live message past a gap
//!   is held while the gap is fetched. Messages are de-duplicated by `message_id`.
//! - **Credentials.** A [`TokenProvider`] is asked for a token before every connection
//!   attempt and, when the server refuses one (401), once more for a fresh one before
//!   the client stops with [`ClientError::Auth`].
//! - **TLS.** `wss://` through rustls (feature `rustls`, default: Mozilla's roots or
//!   your own with [`ClientBuilder::add_root_certificate`]) or the platform's TLS
//!   (feature `native-tls`).
//! - **Reconnection.** Exponential backoff with full jitter ([`BackoffConfig`]),
//!   bounded when asked ([`ClientBuilder::max_connect_attempts`]); the app sees
//!   [`ConnectionState`]s: connecting, connected, waiting to retry (with the delay),
//!   suspended, stopped (with the reason).
//!
//! Layout: [`builder`], [`client`] (the handle), [`event`] (what the app receives),
//! [`auth`], [`tls`], [`store`], [`config`], [`error`]; the protocol state machine and
//! connection loop (`driver`), the per-thread ordering (`sequencer`) and the `outbox`
//! are private and unit-tested without sockets.

pub mod auth;
pub mod builder;
pub mod client;
pub mod config;
mod driver;
/// Entry points for `cargo fuzz` (feature `fuzzing`; not a stable API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use driver::fuzzing;
pub mod error;
pub mod event;
mod outbox;
mod sequencer;
pub mod store;
pub mod tls;

pub use auth::{StaticToken, TokenError, TokenProvider, TokenRequest};
pub use builder::ClientBuilder;
pub use client::{Client, Cursor, HistoryPage, HistoryPager};
pub use config::{BackoffConfig, InitialSync};
pub use error::{ClientError, ErrorCode};
pub use event::{
    ConnectionState, Event, Events, Message, Presence, Receipt, SendFailed, Sent, StopReason,
    Thread, ThreadMute, Typing,
};
pub use messenger_core::model::{AckStatus, PresenceStatus, ThreadKind};
pub use messenger_core::protocol::{PushTargetInfo, Receipt as ReceiptSummary, ThreadSummary};
pub use messenger_core::push::{PushPlatform, WebPushKeys, WebPushSubscription};
pub use messenger_core::{MessageId, SessionId, ThreadId, UserId};
#[cfg(feature = "native-tls")]
pub use native_tls;
#[cfg(feature = "rustls")]
pub use rustls;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{ClientStore, MemoryStore, OutboxEntry, StoreError};
pub use tls::{Certificate, TlsBackend};
