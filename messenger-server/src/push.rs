//! `[push]`: the push sink built from the configured providers (feature `push`). The
//! sections and the provider set are `messenger_push::settings`, shared with
//! messenger-worker.

use std::sync::Arc;

use messenger_core::PushRegistry;
use messenger_push::{PushService, PushSettings};

use crate::config::ConfigError;

/// A [`PushService`] over `registry` with every configured provider; `None` when no
/// provider is configured.
pub(crate) fn service(
    c: &PushSettings,
    registry: Arc<dyn PushRegistry>,
) -> Result<Option<Arc<PushService>>, ConfigError> {
    c.service(Some(registry))
        .map(|s| s.map(Arc::new))
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}
