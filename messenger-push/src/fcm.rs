//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! - Credentials: a service-account JSON (`project_id`, `client_email`, `private_key`,
//!   `token_uri`). The provider signs an RS256 JWT (`iss` = client email, `scope` =
//!   `https://www.googleapis.com/auth/firebase.messaging`, `aud` = token URI, one
//!   hour), exchanges it at the token URI (`grant_type=
//!   urn:ietf:params:oauth:grant-type:jwt-bearer`) for an OAuth access token, and
//!   caches that until a minute before it expires. A refused exchange (`invalid_grant`,
//!   401/403) is refused credentials.
//! - `POST {endpoint}/v1/projects/{project}/messages:send` with
//!   `{"message": {"token", "notification": {title, body}, "data": {...}, "android":
//!   {"collapse_key", "priority": "high", "notification": {"tag"}}}}`.
//! - Answers as Google documents them: 200 delivered; 404 / `UNREGISTERED` and 400
//!   `INVALID_ARGUMENT` remove the target; 401 renews the access token and retries;
//!   403 (`SENDER_ID_MISMATCH` removes the target, others are refused credentials);
//!   429 / 5xx retry (honouring `Retry-After`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::common::{self, unix_now, ConfigError, CredentialGuard};
use crate::content::Privacy;
use crate::directory::keys;
use crate::provider::{Notification, Outcome, Platform, PushProvider, PushTarget};

/// Google's FCM endpoint.
pub const ENDPOINT: &str = "https://fcm.googleapis.com";
/// The OAuth scope FCM needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The fields of a service-account JSON the provider uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    /// The Firebase project.
    pub project_id: String,
    /// The account's email (the JWT's `iss`).
    pub client_email: String,
    /// The RSA private key (PKCS#8 PEM).
    pub private_key: String,
    /// Where access tokens come from.
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

/// How to reach FCM and sign in.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FcmConfig {
    /// The service account.
    pub account: ServiceAccount,
    /// The FCM endpoint (default [`ENDPOINT`]).
    pub endpoint: String,
    /// Extra CA certificates (PEM) to trust, for a private or test endpoint.
    pub ca_pem: Option<Vec<u8>>,
    /// Per-request timeout (default 10 s).
    pub timeout: Duration,
    /// What the notification shows.
    pub privacy: Privacy,
    /// While credentials are refused, one probe request this often (default 60 s).
    pub credential_probe: Duration,
}

impl FcmConfig {
    /// A configuration from a service-account JSON document, with the defaults above.
    pub fn from_service_account_json(json: &[u8]) -> Result<Self, ConfigError> {
        let account: ServiceAccount = serde_json::from_slice(json).map_err(|e| {
            ConfigError::Credentials(format!(
                "the FCM service account is not a service-account JSON file \
                 (project_id, client_email, private_key): {e}"
            ))
        })?;
        Ok(FcmConfig {
            account,
            endpoint: ENDPOINT.into(),
            ca_pem: None,
            timeout: Duration::from_secs(10),
            privacy: Privacy::Full,
            credential_probe: Duration::from_secs(60),
        })
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorInfo,
}

#[derive(Deserialize, Default)]
struct ErrorInfo {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
}

enum TokenError {
    Refused(String),
    Transient(Option<Duration>),
}

/// The FCM provider. Cheap to share (`Arc`).
pub struct FcmProvider {
    config: FcmConfig,
    key: EncodingKey,
    http: reqwest::Client,
    /// The access token and when to renew it; the lock is held across one exchange
    /// so concurrent sends wait for it instead of each exchanging their own.
    token: Mutex<Option<(Arc<str>, Instant)>>,
    guard: CredentialGuard,
}

impl std::fmt::Debug for FcmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmProvider")
            .field("endpoint", &self.config.endpoint)
            .field("project", &self.config.account.project_id)
            .finish_non_exhaustive()
    }
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FcmProvider {
    /// A provider; fails when the private key is not an RSA PEM or the CA is bad.
    pub fn new(config: FcmConfig) -> Result<Self, ConfigError> {
        let key =
            EncodingKey::from_rsa_pem(config.account.private_key.as_bytes()).map_err(|e| {
                ConfigError::Credentials(format!(
                    "the service account's private_key is not an RSA PEM key: {e}"
                ))
            })?;
        let http = common::http_client(config.ca_pem.as_deref(), config.timeout)?;
        let guard = CredentialGuard::new(Platform::Fcm, config.credential_probe);
        Ok(FcmProvider {
            config,
            key,
            http,
            token: Mutex::new(None),
            guard,
        })
    }

    async fn access_token(&self) -> Result<Arc<str>, TokenError> {
        let mut t = self.token.lock().await;
        if let Some((tok, renew_at)) = t.as_ref() {
            if Instant::now() < *renew_at {
                return Ok(tok.clone());
            }
        }
        let a = &self.config.account;
        let now = unix_now();
        let claims = serde_json::json!({
            "iss": a.client_email,
            "scope": SCOPE,
            "aud": a.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| TokenError::Refused(format!("signing the OAuth assertion failed: {e}")))?;
        let body = format!(
            "grant_type={}&assertion={}",
            form_escape("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            form_escape(&assertion)
        );
        let resp = self
            .http
            .post(&a.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "OAuth token exchange failed; will retry");
                TokenError::Transient(None)
            })?;
        let status = resp.status().as_u16();
        if status == 429 || status >= 500 {
            return Err(TokenError::Transient(common::retry_after(resp.headers())));
        }
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            return Err(TokenError::Refused(format!(
                "the OAuth token exchange at {} answered {status}: {}",
                a.token_uri,
                common::cut(&text, 300)
            )));
        }
        let tr: TokenResponse = resp.json().await.map_err(|e| {
            TokenError::Refused(format!("the OAuth token answer is not a token: {e}"))
        })?;
        let lifetime = Duration::from_secs(tr.expires_in.unwrap_or(3600));
        let renew_at = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        let tok: Arc<str> = tr.access_token.into();
        *t = Some((tok.clone(), renew_at));
        Ok(tok)
    }

    async fn forget_token(&self, used: &Arc<str>) {
        let mut t = self.token.lock().await;
        if t.as_ref().is_some_and(|(tok, _)| Arc::ptr_eq(tok, used)) {
            *t = None;
        }
    }

    fn message(&self, n: &Notification, t: &PushTarget) -> serde_json::Value {
        let r = self
            .config
            .privacy
            .render(n, t.keys.get(keys::LOCALE).map(String::as_str));
        let mut notification = serde_json::Map::new();
        notification.insert("title".into(), r.title.into());
        if let Some(b) = r.body {
            notification.insert("body".into(), b.into());
        }
        let collapse = crate::common::cut(n.thread_id.as_str(), 64).to_string();
        serde_json::json!({
            "message": {
                "token": t.address,
                "notification": notification,
                "data": r.data,
                "android": {
                    "collapse_key": collapse,
                    "priority": "high",
                    "notification": { "tag": collapse },
                },
            }
        })
    }

    async fn send_one(&self, n: &Notification, t: &PushTarget) -> Outcome {
        if let Some(o) = self.guard.blocked() {
            return o;
        }
        let token = match self.access_token().await {
            Ok(tok) => tok,
            Err(TokenError::Refused(why)) => return self.guard.trip(why),
            Err(TokenError::Transient(after)) => return Outcome::RetryAfter(after),
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.config.endpoint.trim_end_matches('/'),
            self.config.account.project_id
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(&*token)
            .header("content-type", "application/json")
            .body(self.message(n, t).to_string())
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return common::network_error(Platform::Fcm, &e),
        };
        let status = resp.status().as_u16();
        let after = common::retry_after(resp.headers());
        if status == 200 {
            self.guard.accepted();
            return Outcome::Delivered;
        }
        let err = resp.json::<ErrorBody>().await.unwrap_or_default().error;
        let code = err
            .details
            .iter()
            .find_map(|d| d.error_code.clone())
            .unwrap_or_else(|| err.status.clone());
        match (status, code.as_str()) {
            (404, _) | (_, "UNREGISTERED") | (400, "INVALID_ARGUMENT") => Outcome::TargetGone,
            (403, "SENDER_ID_MISMATCH") => Outcome::TargetGone,
            (401, _) => {
                // The access token expired or was revoked early: renew and retry once;
                // a refused renewal trips the guard.
                self.forget_token(&token).await;
                Outcome::RetryAfter(Some(Duration::ZERO))
            }
            (403, _) => self.guard.trip(format!("FCM 403 {code}: {}", err.message)),
            (429, _) | (500..=599, _) => Outcome::RetryAfter(after),
            _ => Outcome::Rejected(format!("FCM {status} {code}: {}", err.message)),
        }
    }
}

#[async_trait]
impl PushProvider for FcmProvider {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }

    async fn send(&self, n: &Notification, targets: &[PushTarget]) -> Vec<Outcome> {
        futures::future::join_all(targets.iter().map(|t| self.send_one(n, t))).await
    }
}
