//! # messenger-push
//!
//! Push notifications for members with no live session, and signed webhooks.
//!
//! - [`PushProvider`]: one per platform (webhook here; APNs, FCM and Web Push come with
//!   device registration). It gets a [`Notification`] and the recipient's
//!   [`PushTarget`]s of its platform and reports one [`Outcome`] per target: delivered,
//!   retry (after a delay), target gone, credentials rejected, rejected.
//! - [`TargetDirectory`]: which targets a user has for a thread (mutes give none);
//!   [`StaticTargets`] sends everyone's notifications to fixed targets.
//! - [`PushService`]: resolves targets, calls providers, removes gone targets, retries
//!   transient failures with jittered exponential backoff ([`RetryPolicy`]) and reports
//!   what failed for good. It implements `messenger_core::PushSink`, so a single-node
//!   server uses it directly; `messenger-worker` uses it behind the Kafka event log.
//! - [`webhook`]: the signature scheme ([`webhook::sign`], [`webhook::verify`]), the
//!   HTTP client that maps responses onto outcomes, and [`WebhookProvider`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use messenger_push::{webhook::WebhookClient, Platform, PushService, PushTarget,
//!     StaticTargets, WebhookProvider};
//!
//! let client = WebhookClient::new(b"secret".to_vec(), Duration::from_secs(10))?;
//! let push = PushService::new(Arc::new(StaticTargets(vec![PushTarget::new(
//!     "app", Platform::Webhook, "https://app.example/push")])))
//!     .with_provider(Arc::new(WebhookProvider::new(client)));
//! // `Arc::new(push)` is a `PushSink` for `ServerBuilder::push_sink`.
//! # Ok(()) }
//! ```

mod provider;
mod service;
pub mod webhook;

pub use provider::{Notification, Outcome, Platform, PushProvider, PushTarget};
pub use service::{PushService, PushStats, Report, RetryPolicy, StaticTargets, TargetDirectory};
pub use webhook::WebhookProvider;
