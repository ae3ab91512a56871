//! The `[push]` configuration sections, shared by `messenger-server` and
//! `messenger-worker` so that both binaries read the same keys, and
//! [`PushSettings::service`], which builds the provider set they both run.
//!
//! | section | struct |
//! |---|---|
//! | `[push]` | [`PushSettings`]: privacy, tries, the large-group throttle |
//! | `[push.apns]` | [`ApnsSettings`] |
//! | `[push.fcm]` | [`FcmSettings`] |
//! | `[push.webpush]` | [`WebPushSettings`] |
//! | `[push.webhook]` | [`WebhookSettings`] (also each `[[webhooks]]` of the worker) |
//!
//! Every struct is `serde` with unknown keys refused; durations are humantime strings
//! (`"500ms"`, `"60s"`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use messenger_core::PushRegistry;
use serde::{Deserialize, Serialize};

use crate::apns::{ApnsConfig, ApnsProvider};
use crate::content::Privacy;
use crate::directory::RegistryDirectory;
use crate::fcm::{FcmConfig, FcmProvider};
use crate::provider::{Platform, PushTarget};
use crate::service::{PushService, RetryPolicy, StaticTargets, TargetDirectory};
use crate::webhook::{WebhookClient, WebhookProvider};
use crate::webpush::{VapidKey, WebPushConfig, WebPushProvider};

/// `[push]`: notifications for members with no live session, through APNs, FCM and Web
/// Push to the devices and browsers users registered (`register_push_target`), and/or
/// to one signed webhook of the application's backend; nothing for a thread the member
/// muted. With no provider configured nothing leaves the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PushSettings {
    /// What a notification shows, and so what leaves the process: `full` (sender and
    /// text, the default), `sender_only` (sender and "New message") or `generic`
    /// ("New message").
    pub privacy: Privacy,
    /// Tries per notification and target for transient failures (429, 5xx, network),
    /// with jittered exponential backoff from 500 ms to 60 s honouring `Retry-After`.
    /// Default 5.
    pub attempts: u32,
    /// Groups with more members than this get throttled push. Default 100.
    pub large_group_threshold: usize,
    /// In such a group, at most one push per member and thread per this interval.
    /// Default 60 s.
    #[serde(with = "humantime_serde")]
    pub large_group_interval: Duration,
    /// APNs (token-based auth).
    pub apns: Option<ApnsSettings>,
    /// Firebase Cloud Messaging (HTTP v1).
    pub fcm: Option<FcmSettings>,
    /// Web Push (VAPID).
    pub webpush: Option<WebPushSettings>,
    /// The webhook provider: every notification is POSTed, signed, to this endpoint of
    /// the application's backend (which knows its users' devices itself).
    pub webhook: Option<WebhookSettings>,
    /// Server only. A server that produces the event log to Kafka (`[kafka] brokers`)
    /// refuses to start with providers of its own, because `messenger-worker` sends
    /// push from that log with the same sections and every notification would go out
    /// twice. `true` says that no worker of the deployment sends push and this server
    /// does. Default false. (The worker refuses the key: it is the one that sends.)
    pub send_with_event_log: bool,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            privacy: Privacy::Full,
            attempts: 5,
            large_group_threshold: 100,
            large_group_interval: Duration::from_secs(60),
            apns: None,
            fcm: None,
            webpush: None,
            webhook: None,
            send_with_event_log: false,
        }
    }
}

/// `[push.apns]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ApnsSettings {
    /// The `.p8` signing key file (PKCS#8 PEM).
    pub key_file: PathBuf,
    /// Its key id.
    pub key_id: String,
    /// The Apple developer team id.
    pub team_id: String,
    /// `apns-topic` (bundle id) for targets registered without an `app_id`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Default `https://api.push.apple.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// For `sandbox` targets. Default `https://api.sandbox.push.apple.com`.
    #[serde(default)]
    pub sandbox_endpoint: Option<String>,
    /// Extra CA certificates (PEM file) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[push.fcm]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FcmSettings {
    /// The service-account JSON file (project id, client email, private key, token URI).
    pub service_account_file: PathBuf,
    /// Default `https://fcm.googleapis.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Extra CA certificates (PEM file) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[push.webpush]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WebPushSettings {
    /// The VAPID private key file: P-256 PEM, or the 32 bytes base64url. Its public key
    /// is the `applicationServerKey` browsers subscribe with (logged at start).
    pub vapid_key_file: PathBuf,
    /// The contact in every VAPID JWT: `mailto:...` or `https://...`.
    pub subject: String,
    /// Extra CA certificates (PEM file) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A webhook endpoint: a URL with its signing secret (`[push.webhook]`, and each of the
/// worker's `[[webhooks]]`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhookSettings {
    /// Where to POST (`http://` or `https://`).
    pub url: String,
    /// The HMAC secret, or
    #[serde(default)]
    pub secret: Option<String>,
    /// the name of an environment variable that holds it (keeps it out of the file).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Per-request timeout (default 10s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_env", &self.secret_env)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl WebhookSettings {
    /// An endpoint at `url` signed with `secret`, with the default timeout.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        WebhookSettings {
            url: url.into(),
            secret: Some(secret.into()),
            secret_env: None,
            timeout: default_timeout(),
        }
    }

    /// The secret, from the settings or the environment; `what` names the endpoint in
    /// the error.
    pub fn secret(&self, what: &str) -> Result<String, String> {
        match (&self.secret, &self.secret_env) {
            (Some(s), _) if !s.is_empty() => Ok(s.clone()),
            (_, Some(var)) => std::env::var(var).map_err(|_| {
                format!("{what}: the environment variable {var} (secret_env) is not set")
            }),
            _ => Err(format!(
                "{what}: a signing secret is required (secret = \"...\" or secret_env = \"VAR\")"
            )),
        }
    }

    /// Refuses a URL that is not `http(s)://` and a missing secret.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "{what}.url must be an http:// or https:// URL, got {:?}",
                self.url
            ));
        }
        self.secret(what).map(drop)
    }
}

/// Why [`PushSettings::service`] could not build the providers. The message says what
/// to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

fn read(what: &str, path: &Path) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path)
        .map_err(|e| SettingsError(format!("{what} {}: cannot read it: {e}", path.display())))
}

fn ca(what: &str, path: &Option<PathBuf>) -> Result<Option<Vec<u8>>, SettingsError> {
    path.as_ref().map(|p| read(what, p)).transpose()
}

fn bad(what: &str, e: impl std::fmt::Display) -> SettingsError {
    SettingsError(format!("{what}: {e}"))
}

impl PushSettings {
    /// Whether any provider is configured (APNs, FCM, Web Push or the webhook).
    pub fn enabled(&self) -> bool {
        self.device_providers() || self.webhook.is_some()
    }

    /// Whether a provider that sends to the devices and browsers users registered is
    /// configured (APNs, FCM, Web Push): those need the users' registrations, a
    /// [`PushRegistry`].
    pub fn device_providers(&self) -> bool {
        self.apns.is_some() || self.fcm.is_some() || self.webpush.is_some()
    }

    /// The names of the configured providers, for logs.
    pub fn provider_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.apns.is_some() {
            v.push(Platform::Apns.as_str());
        }
        if self.fcm.is_some() {
            v.push(Platform::Fcm.as_str());
        }
        if self.webpush.is_some() {
            v.push(Platform::WebPush.as_str());
        }
        if self.webhook.is_some() {
            v.push(Platform::Webhook.as_str());
        }
        v
    }

    /// The retry policy of push deliveries: `attempts` tries, 500 ms to 60 s apart.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::new(
            self.attempts,
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
    }

    /// Refuses values that cannot work (without reading any file): no tries, a Web
    /// Push subject that is no contact, a webhook without URL or secret, a zero
    /// large-group interval.
    pub fn validate(&self) -> Result<(), String> {
        if self.attempts == 0 {
            return Err("push.attempts must be at least 1".into());
        }
        if let Some(w) = &self.webpush {
            if !(w.subject.starts_with("mailto:") || w.subject.starts_with("https://")) {
                return Err("push.webpush.subject must be a mailto: or https:// contact".into());
            }
        }
        if let Some(w) = &self.webhook {
            w.validate("push.webhook")?;
        }
        Ok(())
    }

    /// The [`PushService`] with every configured provider: `Ok(None)` when none is.
    ///
    /// `registry` is where users' registrations and thread mutes live. APNs, FCM and
    /// Web Push need it (an error otherwise); with it a muted thread gives no
    /// notification at all, the webhook's included. Without it (a worker with only
    /// `[push.webhook]`) every notification goes to the webhook.
    pub fn service(
        &self,
        registry: Option<Arc<dyn PushRegistry>>,
    ) -> Result<Option<PushService>, SettingsError> {
        self.validate().map_err(SettingsError)?;
        if !self.enabled() {
            return Ok(None);
        }
        let shared: Vec<PushTarget> = self
            .webhook
            .iter()
            .map(|w| PushTarget::new("push-webhook", Platform::Webhook, &w.url))
            .collect();
        let directory: Arc<dyn TargetDirectory> = match registry {
            Some(r) => Arc::new(RegistryDirectory::new(r).with_shared_targets(shared)),
            None if self.device_providers() => {
                return Err(SettingsError(format!(
                    "push providers {:?} send to the devices users registered, but no \
                     registry of them is reachable here",
                    self.provider_names()
                )))
            }
            None => Arc::new(StaticTargets(shared)),
        };
        let privacy = self.privacy;
        let mut service = PushService::new(directory).with_retry(self.retry());
        if let Some(a) = &self.apns {
            let mut cfg = ApnsConfig::new(
                read("push.apns.key_file", &a.key_file)?,
                &a.key_id,
                &a.team_id,
            );
            cfg.default_topic = a.topic.clone();
            if let Some(e) = &a.endpoint {
                cfg.endpoint = e.clone();
            }
            if let Some(e) = &a.sandbox_endpoint {
                cfg.sandbox_endpoint = e.clone();
            }
            cfg.ca_pem = ca("push.apns.ca_file", &a.ca_file)?;
            cfg.privacy = privacy;
            let p = ApnsProvider::new(cfg).map_err(|e| bad("push.apns", e))?;
            service = service.with_provider(Arc::new(p));
        }
        if let Some(f) = &self.fcm {
            let json = read("push.fcm.service_account_file", &f.service_account_file)?;
            let mut cfg =
                FcmConfig::from_service_account_json(&json).map_err(|e| bad("push.fcm", e))?;
            if let Some(e) = &f.endpoint {
                cfg.endpoint = e.clone();
            }
            cfg.ca_pem = ca("push.fcm.ca_file", &f.ca_file)?;
            cfg.privacy = privacy;
            let p = FcmProvider::new(cfg).map_err(|e| bad("push.fcm", e))?;
            service = service.with_provider(Arc::new(p));
        }
        if let Some(w) = &self.webpush {
            let key = read("push.webpush.vapid_key_file", &w.vapid_key_file)?;
            let vapid = VapidKey::parse(&String::from_utf8_lossy(&key))
                .map_err(|e| bad("push.webpush", e))?;
            tracing::info!(application_server_key = %vapid.public_key_base64url(),
                "Web Push: browsers subscribe with this VAPID public key");
            let mut cfg = WebPushConfig::new(vapid, &w.subject);
            cfg.ca_pem = ca("push.webpush.ca_file", &w.ca_file)?;
            cfg.privacy = privacy;
            let p = WebPushProvider::new(cfg).map_err(|e| bad("push.webpush", e))?;
            service = service.with_provider(Arc::new(p));
        }
        if let Some(w) = &self.webhook {
            let secret = w.secret("push.webhook").map_err(SettingsError)?;
            let client = WebhookClient::new(secret.into_bytes(), w.timeout)
                .map_err(|e| bad("push.webhook client", e))?;
            service = service.with_provider(Arc::new(WebhookProvider::new(client)));
        }
        tracing::info!(providers = ?self.provider_names(), privacy = ?privacy,
            "push notifications on");
        Ok(Some(service))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_parse_with_defaults_and_refuse_unknown_keys() {
        let s: PushSettings = serde_json::from_value(serde_json::json!({
            "privacy": "generic",
            "large_group_interval": "5s",
            "webhook": {"url": "https://app.example/push", "secret": "s"},
        }))
        .expect("settings");
        assert_eq!(s.privacy, Privacy::Generic);
        assert_eq!(s.attempts, 5);
        assert_eq!(s.large_group_threshold, 100);
        assert_eq!(s.large_group_interval, Duration::from_secs(5));
        assert!(s.enabled() && !s.device_providers());
        assert!(s.validate().is_ok());
        let bad: Result<PushSettings, _> =
            serde_json::from_value(serde_json::json!({"apns": {"key_file": "k", "key_id": "i",
                "team_id": "t", "colour": "red"}}));
        assert!(bad.is_err(), "unknown keys are refused");
    }

    #[test]
    fn device_providers_without_a_registry_are_refused() {
        let s: PushSettings = serde_json::from_value(serde_json::json!({
            "webpush": {"vapid_key_file": "/nonexistent", "subject": "mailto:a@b"},
        }))
        .expect("settings");
        let e = s.service(None).expect_err("refused");
        assert!(e.to_string().contains("registry"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let mut s = PushSettings {
            attempts: 0,
            ..PushSettings::default()
        };
        assert!(s.validate().unwrap_err().contains("push.attempts"));
        s.attempts = 1;
        s.webhook = Some(WebhookSettings::new("ftp://x", "s"));
        assert!(s.validate().unwrap_err().contains("push.webhook.url"));
        s.webhook = Some(WebhookSettings {
            secret: None,
            ..WebhookSettings::new("https://x", "")
        });
        assert!(s.validate().unwrap_err().contains("secret"));
        assert!(!format!("{:?}", WebhookSettings::new("https://x", "hunter2")).contains("hunter2"));
    }
}
