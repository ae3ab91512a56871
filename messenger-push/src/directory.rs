//! [`RegistryDirectory`]: the [`TargetDirectory`] over the store's device registrations
//! and thread mutes ([`PushRegistry`]).

use std::sync::Arc;

use async_trait::async_trait;
use messenger_core::push::{PushPlatform, PushRegistration};
use messenger_core::time::now_ms;
use messenger_core::{PushRegistry, Result, ThreadId, UserId};

use crate::provider::{Platform, PushTarget};
use crate::service::TargetDirectory;

/// Target keys a provider reads: the app (APNs topic), the APNs environment, the
/// locale and the Web Push subscription keys.
pub mod keys {
    /// The app id (APNs topic, FCM package name).
    pub const APP_ID: &str = "app_id";
    /// `"true"` for an APNs development (sandbox) token.
    pub const SANDBOX: &str = "sandbox";
    /// The device locale (BCP 47).
    pub const LOCALE: &str = "locale";
    /// Web Push: the browser's P-256 public key (base64url).
    pub const P256DH: &str = "p256dh";
    /// Web Push: the 16-byte authentication secret (base64url).
    pub const AUTH: &str = "auth";
}

/// The users' registered devices and browsers, from the store: a muted thread gives
/// no targets, and a target its provider reports gone is unregistered.
#[derive(Clone)]
pub struct RegistryDirectory {
    registry: Arc<dyn PushRegistry>,
}

impl std::fmt::Debug for RegistryDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryDirectory").finish_non_exhaustive()
    }
}

impl RegistryDirectory {
    /// A directory over `registry`.
    pub fn new(registry: Arc<dyn PushRegistry>) -> Self {
        RegistryDirectory { registry }
    }
}

/// The provider-facing view of a registration.
pub fn target_of(r: &PushRegistration) -> Option<PushTarget> {
    let platform = match r.platform {
        PushPlatform::Apns => Platform::Apns,
        PushPlatform::Fcm => Platform::Fcm,
        PushPlatform::WebPush => Platform::WebPush,
        _ => return None,
    };
    let mut t = PushTarget::new(r.target_id.clone(), platform, r.address.clone());
    if let Some(a) = &r.app_id {
        t.keys.insert(keys::APP_ID.into(), a.clone());
    }
    if let Some(l) = &r.locale {
        t.keys.insert(keys::LOCALE.into(), l.clone());
    }
    if r.sandbox {
        t.keys.insert(keys::SANDBOX.into(), "true".into());
    }
    if let Some(k) = &r.keys {
        t.keys.insert(keys::P256DH.into(), k.p256dh.clone());
        t.keys.insert(keys::AUTH.into(), k.auth.clone());
    }
    Some(t)
}

#[async_trait]
impl TargetDirectory for RegistryDirectory {
    async fn targets(&self, user: &UserId, thread: &ThreadId) -> Result<Vec<PushTarget>> {
        let found = self.registry.push_targets(user, thread).await?;
        Ok(found
            .deliverable(now_ms())
            .iter()
            .filter_map(target_of)
            .collect())
    }

    async fn remove(&self, user: &UserId, target_id: &str) -> Result<()> {
        let removed = self.registry.unregister_target(user, target_id).await?;
        tracing::info!(%user, target = target_id, removed, "push target reported gone: unregistered");
        Ok(())
    }
}
