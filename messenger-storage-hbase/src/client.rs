//! The Thrift2 connection pool: blocking Thrift calls on `spawn_blocking`, at most
//! `pool_size` at once, broken connections dropped and reopened, errors mapped into the
//! core [`Error`], retries only where the caller says the call is idempotent.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger_core::{Error, ErrorKind};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel, WriteHalf,
};
use tokio::sync::Semaphore;

use crate::gen::hbase::{THBaseServiceSyncClient, TIOError, TIllegalArgument};
use crate::HBaseOptions;

/// One blocking Thrift2 connection.
pub(crate) type Client = THBaseServiceSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<TTcpChannel>>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<TTcpChannel>>>,
>;

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotent {
    /// Same effect however often it runs (get, scan, put of fixed cells): retried.
    Yes,
    /// Conditional or counting mutations: sent once, the caller resolves ambiguity.
    No,
}

struct Inner {
    addr: String,
    connect_timeout: Duration,
    call_timeout: Duration,
    retries: u32,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A bounded pool of Thrift2 connections.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    pub(crate) fn new(opts: &HBaseOptions) -> Pool {
        let size = opts.pool_size.max(1);
        Pool {
            inner: Arc::new(Inner {
                addr: opts.addr.clone(),
                connect_timeout: opts.connect_timeout,
                call_timeout: opts.call_timeout,
                retries: opts.retries,
                idle: Mutex::new(Vec::with_capacity(size)),
                permits: Arc::new(Semaphore::new(size)),
            }),
        }
    }

    /// Runs `f` on a pooled connection off the async worker threads. `what` names the
    /// operation in errors. Idempotent calls are retried on transient errors with backoff.
    pub(crate) async fn call<T, F>(
        &self,
        what: &'static str,
        idem: Idempotent,
        f: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(&mut Client) -> thrift::Result<T> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let attempts = match idem {
            Idempotent::Yes => self.inner.retries + 1,
            Idempotent::No => 1,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call_once(what, f.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < attempts => {
                    let backoff = Duration::from_millis(50 * 4u64.pow(attempt.min(4) - 1));
                    tracing::debug!(op = what, attempt, error = %e, "retrying idempotent HBase call");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn call_once<T, F>(&self, what: &'static str, f: Arc<F>) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(&mut Client) -> thrift::Result<T> + Send + Sync + 'static,
    {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::unavailable("HBase pool closed"))?;
        let inner = self.inner.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = inner.idle.lock().ok().and_then(|mut v| v.pop());
            let mut client = match pooled {
                Some(c) => c,
                None => connect(&inner.addr, inner.connect_timeout, inner.call_timeout).map_err(
                    |e| {
                        Error::unavailable(format!(
                            "HBase Thrift2 {what}: connect to {}",
                            inner.addr
                        ))
                        .with_source(e)
                    },
                )?,
            };
            match f(&mut client) {
                Ok(v) => {
                    if let Ok(mut idle) = inner.idle.lock() {
                        idle.push(client);
                    }
                    Ok(v)
                }
                Err(e) => {
                    if breaks_connection(&e) {
                        // The gateway went away or the stream is out of step: this
                        // connection is useless and so, most likely, are the idle ones.
                        if let Ok(mut idle) = inner.idle.lock() {
                            idle.clear();
                        }
                    } else if let Ok(mut idle) = inner.idle.lock() {
                        idle.push(client);
                    }
                    Err(map_error(what, e))
                }
            }
        })
        .await;
        match joined {
            Ok(r) => r,
            Err(e) => {
                Err(Error::internal(format!("HBase {what}: blocking task failed")).with_source(e))
            }
        }
    }
}

fn connect(
    addr: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> std::io::Result<Client> {
    let mut last = None;
    for sa in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, connect_timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(call_timeout))?;
                stream.set_write_timeout(Some(call_timeout))?;
                let channel = TTcpChannel::with_stream(stream);
                let (r, w) = channel
                    .split()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let input = TBinaryInputProtocol::new(TBufferedReadTransport::new(r), true);
                let output = TBinaryOutputProtocol::new(TBufferedWriteTransport::new(w), true);
                return Ok(THBaseServiceSyncClient::new(input, output));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
}

/// Transport and protocol errors leave the connection in an unknown state.
fn breaks_connection(e: &thrift::Error) -> bool {
    matches!(
        e,
        thrift::Error::Transport(_) | thrift::Error::Protocol(_) | thrift::Error::Application(_)
    )
}

/// Maps a Thrift or HBase error into the core error.
///
/// - transport errors (refused, reset, timeout, EOF) and protocol errors (a half-read
///   reply): `unavailable` — the gateway is down or the call timed out;
/// - `TIOError` (HBase's IOException through the gateway): `unavailable` when HBase says it
///   can be retried or when it is one of the "not there right now" failures (retries
///   exhausted, region moving, master initialising, connection refused), `internal` for
///   everything that will fail again (table missing, bad family, do-not-retry);
/// - `TIllegalArgument` and application errors: `internal` (a bug in this adapter).
pub(crate) fn map_error(what: &'static str, e: thrift::Error) -> Error {
    match e {
        thrift::Error::Transport(t) => {
            Error::unavailable(format!("HBase Thrift2 {what}: transport"))
                .with_source(t.to_string())
        }
        thrift::Error::Protocol(p) => {
            Error::unavailable(format!("HBase Thrift2 {what}: protocol")).with_source(p.to_string())
        }
        thrift::Error::Application(a) => {
            Error::internal(format!("HBase Thrift2 {what}: application error"))
                .with_source(a.to_string())
        }
        thrift::Error::User(u) => {
            if let Some(io) = u.downcast_ref::<TIOError>() {
                let msg = io.message.clone().unwrap_or_default();
                let kind = io_error_kind(io.can_retry, &msg);
                Error::new(kind, format!("HBase {what}: {}", first_line(&msg)))
            } else if let Some(ia) = u.downcast_ref::<TIllegalArgument>() {
                Error::internal(format!(
                    "HBase {what}: illegal argument: {}",
                    first_line(ia.message.as_deref().unwrap_or(""))
                ))
            } else {
                Error::internal(format!("HBase {what}: {u}"))
            }
        }
    }
}

pub(crate) fn io_error_kind(can_retry: Option<bool>, msg: &str) -> ErrorKind {
    const PERMANENT: &[&str] = &[
        "TableNotFoundException",
        "NoSuchColumnFamilyException",
        "DoNotRetryIOException",
        "TableNotEnabledException",
        "IllegalArgumentException",
    ];
    if can_retry == Some(false) || PERMANENT.iter().any(|p| msg.contains(p)) {
        ErrorKind::Internal
    } else {
        ErrorKind::Unavailable
    }
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    if line.len() > 300 {
        let mut end = 300;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        &line[..end]
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hbase_errors_map_to_transient_or_not() {
        let io = |retry: Option<bool>, msg: &str| {
            map_error(
                "op",
                thrift::Error::User(Box::new(TIOError {
                    message: Some(msg.into()),
                    can_retry: retry,
                })),
            )
        };
        assert!(io(None, "RetriesExhaustedException: region moving").is_transient());
        assert!(io(Some(true), "PleaseHoldException: Master is initializing").is_transient());
        assert!(!io(Some(false), "anything").is_transient());
        assert!(!io(None, "org.apache.hadoop.hbase.TableNotFoundException: t").is_transient());
        let refused = thrift::Error::Transport(thrift::TransportError::new(
            thrift::TransportErrorKind::NotOpen,
            "refused",
        ));
        assert_eq!(map_error("op", refused).kind(), ErrorKind::Unavailable);
        let bad = thrift::Error::User(Box::new(TIllegalArgument {
            message: Some("bad".into()),
        }));
        assert_eq!(map_error("op", bad).kind(), ErrorKind::Internal);
    }

    #[tokio::test]
    async fn nothing_listening_is_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let pool = Pool::new(&HBaseOptions::new(format!("127.0.0.1:{port}")));
        let e = pool
            .call("ping", Idempotent::Yes, |c| {
                crate::gen::hbase::TTHBaseServiceSyncClient::get_thrift_server_type(c)
            })
            .await
            .err()
            .map(|e| e.kind());
        assert_eq!(e, Some(ErrorKind::Unavailable));
    }
}
