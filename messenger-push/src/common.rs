//! What the HTTP providers share: the client (rustls, HTTP/2, a configurable CA),
//! `Retry-After`, and the credential guard that reports a refused key once and stops
//! hammering the provider with it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::provider::{Outcome, Platform};

/// Why a provider could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key or credential file is malformed.
    #[error("{0}")]
    Credentials(String),
    /// The HTTP client could not be built (bad CA certificate, ...).
    #[error("{0}")]
    Http(String),
}

/// An HTTP client for a provider: rustls (ring), HTTP/2 when the server offers it
/// (ALPN), the public web PKI plus `extra_ca_pem` when given (a test or private CA).
pub(crate) fn http_client(
    extra_ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<reqwest::Client, ConfigError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(600))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_while_idle(true);
    if let Some(pem) = extra_ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ConfigError::Http(format!("the CA file is not PEM certificates: {e}")))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build()
        .map_err(|e| ConfigError::Http(format!("cannot build the HTTP client: {e}")))
}

/// `Retry-After` in seconds (the HTTP-date form is rare from push services and is
/// treated as absent: the caller's backoff applies).
pub(crate) fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The outcome of a network error (connect, TLS, timeout, reset): try again later.
pub(crate) fn network_error(platform: Platform, e: &reqwest::Error) -> Outcome {
    tracing::debug!(%platform, error = %e, "push request failed; will retry");
    Outcome::RetryAfter(None)
}

/// Remembers that a provider refused our credentials. While tripped, sends fail at
/// once with [`Outcome::CredentialRejected`] (no request leaves), except one probe per
/// `probe_every`, so a fixed key (or a provider that recovered) is noticed. The error
/// is logged once when it trips, and once when it clears.
#[derive(Debug)]
pub(crate) struct CredentialGuard {
    platform: Platform,
    probe_every: Duration,
    state: Mutex<Option<(String, Instant)>>,
}

impl CredentialGuard {
    pub(crate) fn new(platform: Platform, probe_every: Duration) -> Self {
        CredentialGuard {
            platform,
            probe_every,
            state: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Instant)>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(outcome)` when requests must not go out now.
    pub(crate) fn blocked(&self) -> Option<Outcome> {
        let mut s = self.lock();
        let (why, last) = s.as_mut()?;
        if last.elapsed() >= self.probe_every {
            // Let this one through as a probe; the next ones wait for its answer.
            *last = Instant::now();
            return None;
        }
        Some(Outcome::CredentialRejected(why.clone()))
    }

    /// The provider refused our credentials: `why` says what it answered.
    pub(crate) fn trip(&self, why: String) -> Outcome {
        let mut s = self.lock();
        if s.is_none() {
            tracing::error!(platform = %self.platform, reason = %why,
                "the push provider refused our credentials: fix the key / service account \
                 in the configuration. Notifications through it fail (no retries) until then; \
                 one probe every {:?}", self.probe_every);
        }
        *s = Some((why.clone(), Instant::now()));
        Outcome::CredentialRejected(why)
    }

    /// A request was accepted: the credentials work (again).
    pub(crate) fn accepted(&self) {
        let mut s = self.lock();
        if s.take().is_some() {
            tracing::warn!(platform = %self.platform, "the push provider accepts our credentials again");
        }
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(crate) use crate::webhook::unix_now;
