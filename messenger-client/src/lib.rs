//! # messenger-client
//!
//! The async Rust SDK for messenger's protocol v1. It makes the delivery guarantee
//! effortless: every message reaches the app exactly once, in seq order per thread,
//! across disconnects and server restarts.
//!
//! ```no_run
//! use messenger_client::{Client, Event, UserId};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("ws://127.0.0.1:8080/ws", "alice").await?;
//! let mut events = client.events().expect("taken once");
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
//! - One background task owns the WebSocket. [`Client`] is a cheap handle that talks to
//!   it over a bounded channel; requests carry a `req_id` and wait for the reply with
//!   that id (or a typed [`ClientError`]). Events leave through the bounded [`Events`]
//!   stream.
//! - **Outbox.** [`Client::send`] puts the message in a local outbox keyed by (thread,
//!   temp id). Every (re)connect resends the whole outbox, oldest first and before any
//!   new request, with the same temp ids; the server's idempotent send returns the
//!   original id and seq for a message it already stored, so nothing is doubled.
//! - **Catch-up.** After every `welcome` the client asks `list_threads` and fetches
//!   `fetch_history` after the last seq it handed to the app, page by page, for every
//!   thread that is behind.
//! - **Gap filling.** A live message more than one past the last seq is held and the
//!   missing range is fetched from history; held messages are released in order.
//!   Messages are also de-duplicated by `message_id`.
//! - **Reconnection.** Exponential backoff with full jitter ([`BackoffConfig`]),
//!   bounded by `max` and optionally by `max_retries`. A refused token
//!   ([`ClientError::Auth`]) is never retried.
//! - **Acks.** Messages from others are acked `DELIVERED` as they are handed to the app
//!   (coalesced per thread, configurable); [`Client::mark_read`] acks `READ`.
//!
//! Layout: [`client`] (the handle), [`event`] (what the app receives), [`config`],
//! [`error`]; the protocol state machine (`driver`), the per-thread ordering
//! (`sequencer`) and the `outbox` are private and unit-tested without sockets.

pub mod client;
pub mod config;
mod driver;
pub mod error;
pub mod event;
mod outbox;
mod sequencer;

pub use client::{Client, Cursor, HistoryPage, HistoryPager};
pub use config::{BackoffConfig, ClientConfig, InitialSync};
pub use error::{ClientError, ErrorCode};
pub use event::{ConnectionState, Event, Events, Message, Presence, Receipt, Sent, Thread, Typing};
pub use messenger_core::model::{AckStatus, PresenceStatus, ThreadKind};
pub use messenger_core::protocol::{Receipt as ReceiptSummary, ThreadSummary};
pub use messenger_core::{MessageId, SessionId, ThreadId, UserId};
