//! Credentials that expire: the [`TokenProvider`].

use std::future::Future;

use async_trait::async_trait;

/// Why the client asks for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRequest {
    /// Before a connection attempt (every one, reconnects included). A cached token
    /// that is still good is the right answer.
    Connect,
    /// The server refused the last token (HTTP 401/403): a fresh one, please. Asked
    /// once per refusal; if the fresh token is refused too, the client stops with
    /// [`ClientError::Auth`](crate::ClientError::Auth).
    Refresh,
}

/// Why the provider could not give a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token provider: {message}")]
pub struct TokenError {
    message: String,
    transient: bool,
}

impl TokenError {
    /// A failure that may pass (the auth backend is unreachable): the client counts a
    /// failed attempt and retries with backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        TokenError {
            message: message.into(),
            transient: true,
        }
    }

    /// A failure that will not pass (the user signed out): the client stops.
    pub fn permanent(message: impl Into<String>) -> Self {
        TokenError {
            message: message.into(),
            transient: false,
        }
    }

    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The explanation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Gives the client a token for every (re)connect.
///
/// Implement it for the app's session manager, or pass an async closure
/// `|req: TokenRequest| async move { ... }`. The client calls it before every
/// connection attempt with [`TokenRequest::Connect`], and once more with
/// [`TokenRequest::Refresh`] when the server refused the token. It runs on the
/// client's task: keep it quick (cache the token, refresh it when asked).
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// A token for `request`.
    async fn token(&self, request: TokenRequest) -> Result<String, TokenError>;
}

#[async_trait]
impl<F, Fut> TokenProvider for F
where
    F: Fn(TokenRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
{
    async fn token(&self, request: TokenRequest) -> Result<String, TokenError> {
        (self)(request).await
    }
}

/// A token that never changes (dev auth, long-lived bot tokens). Refreshing returns
/// the same token, so a refused one stops the client after one more try.
#[derive(Clone)]
pub struct StaticToken(String);

impl StaticToken {
    /// Wraps `token`.
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken(token.into())
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self, _request: TokenRequest) -> Result<String, TokenError> {
        Ok(self.0.clone())
    }
}
