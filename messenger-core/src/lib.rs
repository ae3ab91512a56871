//! # messenger-core
//!
//! The transport- and storage-agnostic heart of messenger, a real-time chat backend.
//!
//! - [`ids`]: validated ids ([`UserId`], [`ThreadId`], [`MessageId`], ...).
//! - [`protocol`]: protocol v1 frames and the decoder that maps bad input onto error codes.
//! - [`traits`]: the adapter traits [`IdGenerator`], [`MessageStore`], [`ThreadStore`],
//!   [`SessionDirectory`], [`Presence`], [`PushSink`], [`PushRegistry`] and [`Relay`].
//! - [`push`]: push targets (devices, browsers) and thread mutes, with their validation.
//! - [`events`]: the event log the engine publishes to an [`EventSink`] (messages,
//!   receipts, membership changes) for chat workers.
//! - [`idgen`]: the Snowflake id generator.
//! - [`engine`]: every protocol behaviour over the traits; transports only move frames.
//! - `testkit` (feature): conformance suites that every adapter runs with one macro.
//! - `mock` (feature): mockall mocks of every trait (`MockMessageStore`, ...).
//!
//! ```no_run
//! # async fn demo(adapters: messenger_core::engine::Adapters) -> messenger_core::Result<()> {
//! use messenger_core::engine::{Engine, EngineConfig, OutboxItem};
//! use messenger_core::UserId;
//!
//! let engine = Engine::start(EngineConfig::default(), adapters).await?;
//! let mut alice = engine.connect(UserId::new("alice")?).await?;
//! engine.handle_text(&alice.handle, r#"{"type":"ping","req_id":1}"#).await;
//! while let Some(OutboxItem::Frame(out)) = alice.outbox.recv().await {
//!     println!("{}", String::from_utf8_lossy(&out.frame)); // welcome, then pong
//! #   break;
//! }
//! # Ok(()) }
//! ```

pub mod engine;
pub mod error;
pub mod events;
pub mod idgen;
pub mod ids;
pub mod model;
pub mod protocol;
pub mod push;
#[doc(hidden)]
pub mod sync;
pub mod time;
pub mod traits;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{BoxError, Error, ErrorKind, Result};
pub use ids::{InvalidId, MessageId, NodeId, SessionId, ThreadId, UserId};
pub use traits::{
    DiscardEvents, EventSink, IdGenerator, MessageStore, Presence, PushRegistry, PushSink, Relay,
    SessionDirectory, ThreadStore,
};

#[cfg(feature = "mock")]
pub use traits::{
    MockEventSink, MockIdGenerator, MockMessageStore, MockPresence, MockPushRegistry, MockPushSink,
    MockRelay, MockSessionDirectory, MockThreadStore,
};
