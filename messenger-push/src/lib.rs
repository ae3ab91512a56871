//! # messenger-push
//!
//! Push notifications for members with no live session, and signed webhooks.
//!
//! - [`PushProvider`]: one per platform: [`ApnsProvider`] (HTTP/2, ES256 provider
//!   token), [`FcmProvider`] (HTTP v1, service-account OAuth), [`WebPushProvider`]
//!   (RFC 8030 + VAPID + RFC 8291) and the signed [`WebhookProvider`]. It gets a [`Notification`] and the recipient's
//!   [`PushTarget`]s of its platform and reports one [`Outcome`] per target: delivered,
//!   retry (after a delay), target gone, credentials rejected, rejected.
//! - [`TargetDirectory`]: which targets a user has for a thread (mutes give none);
//!   [`RegistryDirectory`] reads the store's device registrations and thread mutes
//!   (`messenger_core::PushRegistry`); [`StaticTargets`] sends everyone's
//!   notifications to fixed targets.
//! - [`Privacy`]: what a notification shows (full text, sender only, or "New
//!   message") and so what leaves the server.
//! - [`PushService`]: resolves targets, calls providers, removes gone targets, retries
//!   transient failures with jittered exponential backoff ([`RetryPolicy`]) and reports
//!   what failed for good. It implements `messenger_core::PushSink`, so a single-node
//!   server uses it directly; `messenger-worker` uses it behind the Kafka event log.
//! - [`settings`]: the `[push]` configuration sections messenger-server and
//!   messenger-worker share, and [`PushSettings::service`], which builds the
//!   [`PushService`] with every configured provider.
//! - [`metrics`]: per-provider counters and a latency histogram ([`PushMetrics`]) on
//!   `prometheus-client`, for each binary's `/metrics`.
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

pub mod apns;
mod common;
pub mod content;
mod directory;
pub mod fcm;
pub mod metrics;
mod provider;
mod service;
pub mod settings;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webhook;
pub mod webpush;

pub use apns::{ApnsConfig, ApnsProvider};
pub use common::ConfigError;
pub use content::Privacy;
pub use directory::{keys, target_of, RegistryDirectory};
pub use fcm::{FcmConfig, FcmProvider};
pub use metrics::PushMetrics;
pub use provider::{Notification, Outcome, Platform, PushProvider, PushTarget};
pub use service::{PushService, PushStats, Report, RetryPolicy, StaticTargets, TargetDirectory};
pub use settings::{
    ApnsSettings, FcmSettings, PushSettings, SettingsError, WebPushSettings, WebhookSettings,
};
pub use webhook::WebhookProvider;
pub use webpush::{VapidKey, WebPushConfig, WebPushProvider};
