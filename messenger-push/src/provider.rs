//! The provider interface: a notification, the recipient's targets, per-target outcomes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use messenger_core::model::PushNotification;
use messenger_core::time::Millis;
use messenger_core::{MessageId, ThreadId, UserId};
use serde::{Deserialize, Serialize};

/// One push notification for one user: what a provider renders and sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable id, `MESSAGE_ID:USER_ID`: the same for every attempt and every path
    /// (worker or single-node sink), so a receiver de-duplicates on it.
    pub id: String,
    /// Who is notified.
    pub user_id: UserId,
    /// The thread (providers use it as the collapse key / thread id).
    pub thread_id: ThreadId,
    /// The message.
    pub message_id: MessageId,
    /// Its seq.
    pub seq: u64,
    /// Who sent it.
    pub sender_id: UserId,
    /// The text, cut to [`Notification::MAX_PREVIEW`] bytes on a char boundary.
    pub text: String,
    /// When it was sent.
    pub sent_at: Millis,
}

impl Notification {
    /// Longest text preview kept (bytes): what lock screens show, and within every
    /// provider's payload limit (APNs 4 KiB, FCM 4 KiB, Web Push ~4 KiB).
    pub const MAX_PREVIEW: usize = 1024;

    /// A notification for `user` about a stored message.
    pub fn new(
        user_id: UserId,
        thread_id: ThreadId,
        message_id: MessageId,
        seq: u64,
        sender_id: UserId,
        text: &str,
        sent_at: Millis,
    ) -> Self {
        let mut end = text.len().min(Self::MAX_PREVIEW);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Notification {
            id: format!("{message_id}:{user_id}"),
            user_id,
            thread_id,
            message_id,
            seq,
            sender_id,
            text: text[..end].to_string(),
            sent_at,
        }
    }
}

impl From<PushNotification> for Notification {
    fn from(n: PushNotification) -> Self {
        Notification::new(
            n.user_id,
            n.thread_id,
            n.message_id,
            n.seq,
            n.sender_id,
            &n.text,
            n.sent_at,
        )
    }
}

/// Which kind of provider a target belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Platform {
    /// An HTTPS endpoint of the application's backend ([`WebhookProvider`](crate::WebhookProvider)).
    Webhook,
    /// Apple Push Notification service (a device token).
    Apns,
    /// Firebase Cloud Messaging (a registration token).
    Fcm,
    /// Web Push (RFC 8030; a subscription endpoint with `p256dh` and `auth` keys).
    WebPush,
}

impl Platform {
    /// The lowercase name used in configuration, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Webhook => "webhook",
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
            Platform::WebPush => "web_push",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Somewhere one user's notifications go: a device, a browser, a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTarget {
    /// Stable id of the registration (what [`TargetDirectory::remove`](crate::TargetDirectory::remove) takes).
    pub id: String,
    /// The provider that serves it.
    pub platform: Platform,
    /// The device token, registration token, subscription endpoint or URL.
    pub address: String,
    /// Provider-specific fields (Web Push `p256dh`/`auth`, APNs `topic`/`sandbox`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, String>,
}

impl PushTarget {
    /// A target with no extra keys.
    pub fn new(id: impl Into<String>, platform: Platform, address: impl Into<String>) -> Self {
        PushTarget {
            id: id.into(),
            platform,
            address: address.into(),
            keys: BTreeMap::new(),
        }
    }
}

/// What happened to a notification at one target.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The provider accepted it.
    Delivered,
    /// A transient failure (network, timeout, 5xx, 429): try again, after the given
    /// delay if the provider named one (`Retry-After`), else after the caller's backoff.
    RetryAfter(Option<Duration>),
    /// The target no longer exists (APNs `Unregistered`, FCM `UNREGISTERED`, Web Push
    /// 404/410, webhook 410): forget it; never retry.
    TargetGone,
    /// The provider refused our credentials (bad key, expired token, 401/403): every
    /// notification through this provider fails until the operator fixes its
    /// configuration. Not retried per notification; dead-lettered and alerted on.
    CredentialRejected(String),
    /// This notification is refused for good (malformed, too large): not retried.
    Rejected(String),
}

impl Outcome {
    /// A short label for metrics: `delivered`, `retry`, `gone`, `credentials`, `rejected`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::RetryAfter(_) => "retry",
            Outcome::TargetGone => "gone",
            Outcome::CredentialRejected(_) => "credentials",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// A push provider: APNs, FCM, Web Push, a webhook. One instance serves every target
/// of its [`platform`](Self::platform) and holds its own connections and credentials.
#[async_trait]
pub trait PushProvider: Send + Sync {
    /// The platform whose targets this provider serves.
    fn platform(&self) -> Platform;

    /// Sends `notification` to each of `targets` (all of this provider's platform, all
    /// the same user's). Returns one [`Outcome`] per target, in the same order. Never
    /// retries by itself: the caller decides, from the outcomes, what to try again.
    async fn send(&self, notification: &Notification, targets: &[PushTarget]) -> Vec<Outcome>;
}
