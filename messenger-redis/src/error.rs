//! Maps redis-rs errors into the core [`Error`].

use messenger_core::Error;
use redis::{RedisError, ServerErrorKind};

/// Redis I/O, connection, timeout and "server busy" errors become `unavailable`
/// (transient); anything else (a protocol or type error, a script bug) is `internal`.
pub(crate) fn map(what: &str, e: RedisError) -> Error {
    if is_transient(&e) {
        Error::unavailable(format!("redis: {what}")).with_source(e)
    } else {
        Error::internal(format!("redis: {what}")).with_source(e)
    }
}

fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

/// A record in Redis that this crate did not write in that shape.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt record in redis: {what}"))
}
