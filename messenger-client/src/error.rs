//! The typed errors every fallible SDK call returns.

use std::fmt;

use messenger_core::UserId;

use crate::auth::TokenError;
use crate::store::StoreError;

/// A protocol v1 error code, as carried by the server's `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed JSON, a missing or ill-typed field, a bad id.
    BadRequest,
    /// A frame type the server does not know.
    UnknownType,
    /// Not authenticated.
    Unauthorized,
    /// Not a member, not allowed.
    Forbidden,
    /// No such thread or user.
    NotFound,
    /// Text over the server's limit.
    TooLarge,
    /// Too many frames; slow down.
    RateLimited,
    /// A backing store is down; nothing was accepted.
    Unavailable,
    /// A server bug.
    Internal,
    /// A code this SDK version does not know.
    Other(String),
}

impl ErrorCode {
    /// Parses a wire code.
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "bad_request" => ErrorCode::BadRequest,
            "unknown_type" => ErrorCode::UnknownType,
            "unauthorized" => ErrorCode::Unauthorized,
            "forbidden" => ErrorCode::Forbidden,
            "not_found" => ErrorCode::NotFound,
            "too_large" => ErrorCode::TooLarge,
            "rate_limited" => ErrorCode::RateLimited,
            "unavailable" => ErrorCode::Unavailable,
            "internal" => ErrorCode::Internal,
            other => ErrorCode::Other(other.to_string()),
        }
    }

    /// The wire code.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(s) => s,
        }
    }

    /// Whether the same request may succeed later (`rate_limited`, `unavailable`).
    pub fn is_transient(&self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Unavailable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in the SDK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered the request with an `error` frame.
    #[error("server refused the request: {code}: {message}")]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's explanation, for humans.
        message: String,
    },
    /// The request needs a live connection and there is none right now (the client is
    /// reconnecting), or the connection dropped before the reply came. Sends are not
    /// affected: they wait in the outbox.
    #[error("not connected")]
    Disconnected,
    /// No reply within [`ClientBuilder::request_timeout`](crate::ClientBuilder::request_timeout).
    #[error("request timed out")]
    Timeout,
    /// The client was closed ([`Client::close`](crate::Client::close)) or its background
    /// task ended.
    #[error("client closed")]
    Closed,
    /// The URL cannot be used (not `ws://` or `wss://`, unparsable, or `wss://` built
    /// without a TLS feature).
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// The token cannot be sent in an HTTP header.
    #[error("the token is not a valid HTTP header value")]
    InvalidToken,
    /// The server refused the token before the upgrade (HTTP 401 or 403), and then the
    /// fresh one the [`TokenProvider`](crate::TokenProvider) gave on
    /// [`TokenRequest::Refresh`](crate::TokenRequest::Refresh). Final.
    #[error("authentication refused (HTTP {0})")]
    Auth(u16),
    /// The [`TokenProvider`](crate::TokenProvider) failed. A transient failure counts
    /// as a failed attempt (retried with backoff); a permanent one stops the client.
    #[error("{0}")]
    Token(TokenError),
    /// TLS: a bad root certificate or TLS setting (at build), or a failed handshake
    /// (retried like any failed connection: it may be a captive portal).
    #[error("tls: {0}")]
    Tls(String),
    /// The [`ClientStore`](crate::ClientStore) failed: a send that could not be stored
    /// is refused with this (nothing was written to the server); at build, the store
    /// could not be read.
    #[error("{0}")]
    Store(StoreError),
    /// The server authenticated another user than the one the store belongs to (or
    /// than this client's earlier connections). Final: one client, one user.
    #[error("the store belongs to {expected}, but the token is {got}'s")]
    WrongUser {
        /// The store's (or the earlier connections') user.
        expected: UserId,
        /// The user the server welcomed.
        got: UserId,
    },
    /// The server refused the upgrade with another HTTP status.
    #[error("upgrade refused (HTTP {0})")]
    Http(u16),
    /// The TCP or WebSocket connection failed or broke.
    #[error("connection failed: {0}")]
    Connect(String),
    /// Reconnection gave up after `attempts` failed attempts
    /// ([`BackoffConfig::max_retries`](crate::BackoffConfig::max_retries)).
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted {
        /// Failed attempts in a row.
        attempts: u32,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
    /// The server sent something that breaks protocol v1.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server error code, if this is a [`ClientError::Server`].
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn server(code: &str, message: impl Into<String>) -> ClientError {
        ClientError::Server {
            code: ErrorCode::parse(code),
            message: message.into(),
        }
    }

    /// Whether reconnecting may cure this error (not auth, a bad URL or token, a
    /// permanent token provider failure, the wrong user, a failing store, closing).
    pub fn is_retryable_connect(&self) -> bool {
        match self {
            ClientError::Token(t) => t.is_transient(),
            ClientError::Auth(_)
            | ClientError::InvalidUrl(_)
            | ClientError::InvalidToken
            | ClientError::Closed
            | ClientError::WrongUser { .. }
            | ClientError::Store(_) => false,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in [
            "bad_request",
            "unknown_type",
            "unauthorized",
            "forbidden",
            "not_found",
            "too_large",
            "rate_limited",
            "unavailable",
            "internal",
            "teapot",
        ] {
            assert_eq!(ErrorCode::parse(c).as_str(), c);
        }
        assert!(ErrorCode::RateLimited.is_transient());
        assert!(!ErrorCode::Forbidden.is_transient());
        let e = ClientError::server("forbidden", "not a member");
        assert_eq!(e.code(), Some(&ErrorCode::Forbidden));
        assert!(!ClientError::Auth(401).is_retryable_connect());
        assert!(ClientError::Connect("refused".into()).is_retryable_connect());
        assert!(ClientError::Tls("handshake".into()).is_retryable_connect());
        assert!(ClientError::Token(TokenError::transient("offline")).is_retryable_connect());
        assert!(!ClientError::Token(TokenError::permanent("signed out")).is_retryable_connect());
    }
}
