//! `[push]`: the push sink built from the configured providers (feature `push`).

use std::sync::Arc;
use std::time::Duration;

use messenger_core::{PushRegistry, PushSink};
use messenger_push::{
    ApnsConfig, ApnsProvider, FcmConfig, FcmProvider, Privacy, PushService, RegistryDirectory,
    RetryPolicy, VapidKey, WebPushConfig, WebPushProvider,
};

use crate::config::{ConfigError, PushPrivacy, PushSettings};

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        ConfigError::Invalid(format!("{what} {}: cannot read it: {e}", path.display()))
    })
}

fn ca(path: &Option<std::path::PathBuf>) -> Result<Option<Vec<u8>>, ConfigError> {
    path.as_ref().map(|p| read("push CA file", p)).transpose()
}

fn bad(what: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{what}: {e}"))
}

/// A [`PushService`] over `registry` with every configured provider; `None` when no
/// provider is configured.
pub(crate) fn sink(
    c: &PushSettings,
    registry: Arc<dyn PushRegistry>,
) -> Result<Option<Arc<dyn PushSink>>, ConfigError> {
    if !c.enabled() {
        return Ok(None);
    }
    let privacy = match c.privacy {
        PushPrivacy::Full => Privacy::Full,
        PushPrivacy::SenderOnly => Privacy::SenderOnly,
        PushPrivacy::Generic => Privacy::Generic,
    };
    let mut service =
        PushService::new(Arc::new(RegistryDirectory::new(registry))).with_retry(RetryPolicy::new(
            c.attempts,
            Duration::from_millis(500),
            Duration::from_secs(60),
        ));
    let mut names = Vec::new();
    if let Some(a) = &c.apns {
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
        cfg.ca_pem = ca(&a.ca_file)?;
        cfg.privacy = privacy;
        let p = ApnsProvider::new(cfg).map_err(|e| bad("push.apns", e))?;
        service = service.with_provider(Arc::new(p));
        names.push("apns");
    }
    if let Some(f) = &c.fcm {
        let json = read("push.fcm.service_account_file", &f.service_account_file)?;
        let mut cfg =
            FcmConfig::from_service_account_json(&json).map_err(|e| bad("push.fcm", e))?;
        if let Some(e) = &f.endpoint {
            cfg.endpoint = e.clone();
        }
        cfg.ca_pem = ca(&f.ca_file)?;
        cfg.privacy = privacy;
        let p = FcmProvider::new(cfg).map_err(|e| bad("push.fcm", e))?;
        service = service.with_provider(Arc::new(p));
        names.push("fcm");
    }
    if let Some(w) = &c.webpush {
        let key = read("push.webpush.vapid_key_file", &w.vapid_key_file)?;
        let vapid =
            VapidKey::parse(&String::from_utf8_lossy(&key)).map_err(|e| bad("push.webpush", e))?;
        tracing::info!(application_server_key = %vapid.public_key_base64url(),
            "Web Push: browsers subscribe with this VAPID public key");
        let mut cfg = WebPushConfig::new(vapid, &w.subject);
        cfg.ca_pem = ca(&w.ca_file)?;
        cfg.privacy = privacy;
        let p = WebPushProvider::new(cfg).map_err(|e| bad("push.webpush", e))?;
        service = service.with_provider(Arc::new(p));
        names.push("webpush");
    }
    tracing::info!(providers = ?names, privacy = ?c.privacy, "push notifications on");
    Ok(Some(Arc::new(service)))
}
