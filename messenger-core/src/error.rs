//! The one error type of the core. Adapters map their own errors into it.

use std::fmt;

/// A boxed source error from an adapter's backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of failure an [`Error`] is. Each kind maps onto one protocol error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or names an invalid id (`bad_request`).
    BadRequest,
    /// The thing asked for does not exist (`not_found`).
    NotFound,
    /// The caller may not do this (`forbidden`).
    Forbidden,
    /// A text or request is over a configured limit (`too_large`).
    TooLarge,
    /// The caller is over its rate limit (`rate_limited`).
    RateLimited,
    /// A backing service is down or timed out; nothing was accepted. Retrying may succeed.
    Unavailable,
    /// A concurrent writer won a race the operation cannot resolve by itself; retrying may succeed.
    Conflict,
    /// A bug or a corrupt record (`internal`).
    Internal,
}

impl ErrorKind {
    /// The protocol v1 error code for this kind.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable | ErrorKind::Conflict => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// The core error: a kind, a message for humans and an optional source.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

/// `Result` with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the backend error that caused this one.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// A backing service is unavailable (transient).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// An internal error (a bug or corrupt data).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Not found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    /// Bad request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (without the source).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation later may succeed (a backend that is down,
    /// a timeout, a lost race). Only idempotent operations should be retried.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Conflict)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_kinds() {
        assert!(Error::unavailable("down").is_transient());
        assert!(Error::new(ErrorKind::Conflict, "race").is_transient());
        assert!(!Error::internal("bug").is_transient());
        assert!(!Error::bad_request("x").is_transient());
        assert_eq!(Error::unavailable("x").kind().code(), "unavailable");
    }

    #[test]
    fn display_includes_source() {
        let e = Error::unavailable("store down").with_source(std::io::Error::other("refused"));
        assert_eq!(e.to_string(), "unavailable: store down: refused");
        assert!(std::error::Error::source(&e).is_some());
    }
}
