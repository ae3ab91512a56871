//! Apple Push Notification service over HTTP/2 with token-based authentication.
//!
//! - `POST {endpoint}/3/device/{token}` with `authorization: bearer JWT`,
//!   `apns-topic` (the registration's app id, else the configured topic),
//!   `apns-push-type: alert`, `apns-priority: 10`, `apns-expiration`, `apns-id`
//!   (derived from the notification id: retries carry the same id) and
//!   `apns-collapse-id` (per thread: a newer notification of a thread replaces the
//!   older one on the lock screen).
//! - The provider token is an ES256 JWT (`kid` = key id, `iss` = team id, `iat`) signed
//!   with the `.p8` key; it is cached and refreshed before Apple's one-hour limit
//!   (every 50 minutes by default, never more often than every 20 minutes unless Apple
//!   says it expired).
//! - Answers as Apple documents them: 200 delivered; 410 `Unregistered` and 400
//!   `BadDeviceToken` / `DeviceTokenNotForTopic` remove the target; 403
//!   `ExpiredProviderToken` renews the token and retries; other 403s (bad key, team,
//!   topic) are refused credentials; 429 and 5xx retry (honouring `Retry-After`);
//!   other 4xx reject the notification.
//! - Development tokens (`sandbox`) go to the sandbox endpoint.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::common::{self, unix_now, ConfigError, CredentialGuard};
use crate::content::Privacy;
use crate::directory::keys;
use crate::provider::{Notification, Outcome, Platform, PushProvider, PushTarget};

/// Apple's production endpoint.
pub const PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's development endpoint.
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";

/// How to reach APNs and sign in.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApnsConfig {
    /// The `.p8` signing key (PKCS#8 PEM, P-256) from the Apple developer account.
    pub key_pem: Vec<u8>,
    /// Its key id (10 characters).
    pub key_id: String,
    /// The team id (10 characters).
    pub team_id: String,
    /// The `apns-topic` (bundle id) for targets registered without an app id.
    pub default_topic: Option<String>,
    /// Production endpoint (default [`PRODUCTION`]).
    pub endpoint: String,
    /// Endpoint for development tokens (default [`SANDBOX`]).
    pub sandbox_endpoint: String,
    /// Extra CA certificates (PEM) to trust, for a private or test endpoint.
    pub ca_pem: Option<Vec<u8>>,
    /// Per-request timeout (default 10 s).
    pub timeout: Duration,
    /// Provider token lifetime before renewal (default 50 min; Apple refuses tokens
    /// older than 1 h and renewals more often than every 20 min).
    pub token_refresh: Duration,
    /// `apns-expiration`: how long Apple keeps trying an offline device (default 1 day).
    pub expiration: Duration,
    /// What the notification shows.
    pub privacy: Privacy,
    /// While credentials are refused, one probe request this often (default 60 s).
    pub credential_probe: Duration,
}

impl ApnsConfig {
    /// A configuration with the defaults above.
    pub fn new(key_pem: Vec<u8>, key_id: impl Into<String>, team_id: impl Into<String>) -> Self {
        ApnsConfig {
            key_pem,
            key_id: key_id.into(),
            team_id: team_id.into(),
            default_topic: None,
            endpoint: PRODUCTION.into(),
            sandbox_endpoint: SANDBOX.into(),
            ca_pem: None,
            timeout: Duration::from_secs(10),
            token_refresh: Duration::from_secs(50 * 60),
            expiration: Duration::from_secs(24 * 3600),
            privacy: Privacy::Full,
            credential_probe: Duration::from_secs(60),
        }
    }
}

#[derive(Deserialize)]
struct ApnsError {
    #[serde(default)]
    reason: String,
}

/// The APNs provider. Cheap to share (`Arc`); one HTTP/2 connection per endpoint
/// carries every request concurrently.
pub struct ApnsProvider {
    config: ApnsConfig,
    key: EncodingKey,
    http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
    guard: CredentialGuard,
}

impl std::fmt::Debug for ApnsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsProvider")
            .field("endpoint", &self.config.endpoint)
            .field("key_id", &self.config.key_id)
            .field("team_id", &self.config.team_id)
            .finish_non_exhaustive()
    }
}

/// A stable `apns-id` (canonical UUID form) from the notification id, so a retry is
/// recognisably the same notification.
fn apns_id(notification_id: &str) -> String {
    let h = Sha256::digest(notification_id.as_bytes());
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// `apns-collapse-id` is at most 64 bytes: the thread id, or its hash when longer.
fn collapse_id(thread: &str) -> String {
    if thread.len() <= 64 {
        thread.to_string()
    } else {
        hex::encode(&Sha256::digest(thread.as_bytes())[..32])
    }
}

impl ApnsProvider {
    /// A provider; fails when the key is not a P-256 PKCS#8 PEM or the CA is bad.
    pub fn new(config: ApnsConfig) -> Result<Self, ConfigError> {
        let key = EncodingKey::from_ec_pem(&config.key_pem).map_err(|e| {
            ConfigError::Credentials(format!(
                "the APNs key is not a PKCS#8 PEM P-256 key (the .p8 file): {e}"
            ))
        })?;
        let http = common::http_client(config.ca_pem.as_deref(), config.timeout)?;
        let guard = CredentialGuard::new(Platform::Apns, config.credential_probe);
        Ok(ApnsProvider {
            config,
            key,
            http,
            token: Mutex::new(None),
            guard,
        })
    }

    /// The current provider token, signing a new one when it is due.
    fn provider_token(&self) -> Result<String, String> {
        let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((jwt, at)) = t.as_ref() {
            if at.elapsed() < self.config.token_refresh {
                return Ok(jwt.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.config.key_id.clone());
        let claims = serde_json::json!({ "iss": self.config.team_id, "iat": unix_now() });
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the APNs provider token failed: {e}"))?;
        *t = Some((jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn payload(&self, n: &Notification, locale: Option<&str>) -> serde_json::Value {
        let r = self.config.privacy.render(n, locale);
        let mut alert = serde_json::Map::new();
        alert.insert("title".into(), r.title.into());
        if let Some(b) = r.body {
            alert.insert("body".into(), b.into());
        }
        let mut v = serde_json::json!({
            "aps": {
                "alert": alert,
                "sound": "default",
                "thread-id": n.thread_id.as_str(),
                "mutable-content": 1,
            },
        });
        if let Some(o) = v.as_object_mut() {
            for (k, val) in r.data {
                o.insert(k, val.into());
            }
        }
        v
    }

    async fn send_one(&self, n: &Notification, t: &PushTarget) -> Outcome {
        if let Some(o) = self.guard.blocked() {
            return o;
        }
        let Some(topic) = t
            .keys
            .get(keys::APP_ID)
            .or(self.config.default_topic.as_ref())
        else {
            return Outcome::Rejected(
                "no apns-topic: the target has no app id and no default topic is configured".into(),
            );
        };
        let jwt = match self.provider_token() {
            Ok(j) => j,
            Err(e) => return self.guard.trip(e),
        };
        let base = if t.keys.get(keys::SANDBOX).is_some_and(|v| v == "true") {
            &self.config.sandbox_endpoint
        } else {
            &self.config.endpoint
        };
        let url = format!("{}/3/device/{}", base.trim_end_matches('/'), t.address);
        let body = self.payload(n, t.keys.get(keys::LOCALE).map(String::as_str));
        let expiration = unix_now() + self.config.expiration.as_secs();
        let resp = self
            .http
            .post(url)
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-expiration", expiration.to_string())
            .header("apns-id", apns_id(&n.id))
            .header("apns-collapse-id", collapse_id(n.thread_id.as_str()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return common::network_error(Platform::Apns, &e),
        };
        let status = resp.status().as_u16();
        let after = common::retry_after(resp.headers());
        if status == 200 {
            self.guard.accepted();
            return Outcome::Delivered;
        }
        let reason = resp
            .json::<ApnsError>()
            .await
            .map(|e| e.reason)
            .unwrap_or_default();
        match (status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => {
                Outcome::TargetGone
            }
            (403, "ExpiredProviderToken") => {
                self.forget_token();
                Outcome::RetryAfter(Some(Duration::ZERO))
            }
            (403, _) => self.guard.trip(format!("APNs 403 {reason}")),
            (429, _) | (500..=599, _) => Outcome::RetryAfter(after),
            _ => Outcome::Rejected(format!("APNs {status} {reason}")),
        }
    }
}

#[async_trait]
impl PushProvider for ApnsProvider {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    async fn send(&self, n: &Notification, targets: &[PushTarget]) -> Vec<Outcome> {
        futures::future::join_all(targets.iter().map(|t| self.send_one(n, t))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fit_apple_limits() {
        let id = apns_id("1:bob");
        assert_eq!(id.len(), 36);
        assert_eq!(id, apns_id("1:bob"));
        assert_eq!(collapse_id("dm:a:b"), "dm:a:b");
        assert_eq!(collapse_id(&"g".repeat(100)).len(), 64);
    }
}
