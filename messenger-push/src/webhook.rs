//! Signed webhooks: the signature scheme, an HTTP client that maps responses onto
//! [`Outcome`]s, and [`WebhookProvider`], the push provider that posts notifications to
//! the application's backend.
//!
//! Every request carries
//! `Messenger-Signature: t=UNIX_SECONDS,v1=HEX(HMAC_SHA256(secret, "UNIX_SECONDS." + body))`.
//! A receiver recomputes the MAC over the raw body with its copy of the secret, compares
//! in constant time and refuses a timestamp older than its tolerance (5 minutes is
//! usual) to stop replays: [`verify`] does exactly that. `docs/webhooks.md` has a
//! worked example.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::provider::{Notification, Outcome, Platform, PushProvider, PushTarget};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Messenger-Signature";
/// The header naming the event (or notification) id of a single-event request.
pub const ID_HEADER: &str = "Messenger-Event-Id";
/// The header with the 1-based attempt number.
pub const ATTEMPT_HEADER: &str = "Messenger-Attempt";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `Messenger-Signature` value for `body` signed at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The header is not `t=...,v1=...`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is outside the tolerance (a replay, or a clock far off).
    #[error("signature timestamp outside the tolerance")]
    Expired,
    /// No `v1` signature matches the body.
    #[error("signature does not match the body")]
    Mismatch,
}

/// Checks a `Messenger-Signature` header against the raw `body`: a `v1` MAC over
/// `"t.body"` with `secret`, and `t` within `tolerance` of `now` (Unix seconds).
/// Several `v1=` entries may appear (secret rotation); one match is enough.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if sigs.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if now.abs_diff(t) > tolerance.as_secs() {
        return Err(VerifyError::Expired);
    }
    for s in sigs {
        if mac(secret, t, body).verify_slice(&s).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Posts signed JSON bodies and maps each response onto an [`Outcome`]:
/// 2xx delivered; 410 target gone; 401/403 credentials rejected; 408, 429 and 5xx (with
/// `Retry-After` if given), connection errors and timeouts retry; any other status is a
/// permanent rejection.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    secret: Bytes,
}

impl WebhookClient {
    /// A client that signs with `secret` and gives up on a request after `timeout`.
    pub fn new(secret: impl Into<Bytes>, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("messenger-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(WebhookClient {
            http,
            secret: secret.into(),
        })
    }

    /// POSTs `body` (JSON) to `url`, signed now, with the id and attempt headers.
    pub async fn post(&self, url: &str, body: Bytes, id: Option<&str>, attempt: u32) -> Outcome {
        let sig = sign(&self.secret, unix_now(), &body);
        let mut req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sig)
            .header(ATTEMPT_HEADER, attempt.to_string());
        if let Some(id) = id {
            req = req.header(ID_HEADER, id);
        }
        match req.body(body).send().await {
            Ok(resp) => classify(
                resp.status().as_u16(),
                resp.headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
            ),
            Err(e) => {
                tracing::debug!(%url, error = %e, "webhook request failed");
                Outcome::RetryAfter(None)
            }
        }
    }
}

/// Maps an HTTP status (and `Retry-After` in seconds) onto an [`Outcome`].
pub fn classify(status: u16, retry_after: Option<&str>) -> Outcome {
    let after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::TargetGone,
        401 | 403 => Outcome::CredentialRejected(format!("HTTP {status}")),
        408 | 425 | 429 | 500..=599 => Outcome::RetryAfter(after),
        s => Outcome::Rejected(format!("HTTP {s}")),
    }
}

/// The webhook push provider: each notification is POSTed, signed, to the target's
/// address (a URL of the application's backend, which delivers it however it likes:
/// e-mail, SMS, its own push service). Body: `{"type":"push.notification",
/// "id":..., "user_id":..., "thread_id":..., "message_id":..., "seq":..., "sender_id":...,
/// "text":..., "sent_at":...}`; `Messenger-Event-Id` is the notification id.
#[derive(Debug, Clone)]
pub struct WebhookProvider {
    client: WebhookClient,
}

impl WebhookProvider {
    /// A provider that signs with `secret`.
    pub fn new(client: WebhookClient) -> Self {
        WebhookProvider { client }
    }

    /// The JSON body posted for `n`.
    pub fn body(n: &Notification) -> Bytes {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            r#type: &'static str,
            #[serde(flatten)]
            n: &'a Notification,
        }
        serde_json::to_vec(&Body {
            r#type: "push.notification",
            n,
        })
        .map(Bytes::from)
        .unwrap_or_default()
    }
}

#[async_trait]
impl PushProvider for WebhookProvider {
    fn platform(&self) -> Platform {
        Platform::Webhook
    }

    async fn send(&self, n: &Notification, targets: &[PushTarget]) -> Vec<Outcome> {
        let body = Self::body(n);
        let sends = targets
            .iter()
            .map(|t| self.client.post(&t.address, body.clone(), Some(&n.id), 1));
        futures::future::join_all(sends).await
    }
}
