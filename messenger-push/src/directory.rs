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
/// no targets, and a target its provider reports gone is unregistered. Shared targets
/// ([`with_shared_targets`](Self::with_shared_targets), e.g. the application's push
/// webhook) come with every user's, and are muted with them.
#[derive(Clone)]
pub struct RegistryDirectory {
    registry: Arc<dyn PushRegistry>,
    shared: Vec<PushTarget>,
}

impl std::fmt::Debug for RegistryDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryDirectory").finish_non_exhaustive()
    }
}

impl RegistryDirectory {
    /// A directory over `registry`.
    pub fn new(registry: Arc<dyn PushRegistry>) -> Self {
        RegistryDirectory {
            registry,
            shared: Vec::new(),
        }
    }

    /// The same directory with `shared` targets added to every user's (unless the user
    /// muted the thread). A shared target is never removed: one "gone" answer from it
    /// is logged and it stays configured.
    pub fn with_shared_targets(mut self, shared: Vec<PushTarget>) -> Self {
        self.shared = shared;
        self
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
        let now = now_ms();
        if found.mute.as_ref().is_some_and(|m| m.active(now)) {
            return Ok(Vec::new());
        }
        let mut out: Vec<PushTarget> = found.targets.iter().filter_map(target_of).collect();
        out.extend(self.shared.iter().cloned());
        Ok(out)
    }

    async fn remove(&self, user: &UserId, target_id: &str) -> Result<()> {
        if self.shared.iter().any(|t| t.id == target_id) {
            tracing::warn!(%user, target = target_id,
                "a shared push target answered \"gone\"; it stays configured");
            return Ok(());
        }
        let removed = self.registry.unregister_target(user, target_id).await?;
        tracing::info!(%user, target = target_id, removed, "push target reported gone: unregistered");
        Ok(())
    }
}
