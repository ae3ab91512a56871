//! Client settings and the reconnection backoff.

use std::collections::HashMap;
use std::time::Duration;

use messenger_core::ThreadId;

/// Exponential backoff with full jitter for reconnection.
///
/// Before retry `n` (0-based) the client sleeps a uniformly random time in
/// `[0, min(max, initial * multiplier^n)]` ("full jitter"), so a fleet of clients that
/// lost the same server does not come back in lockstep.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// The ceiling of the first delay. Default 250 ms.
    pub initial: Duration,
    /// The largest ceiling. Default 30 s.
    pub max: Duration,
    /// Growth of the ceiling per failed attempt. Default 2.0.
    pub multiplier: f64,
    /// Failed attempts in a row before the client gives up (`None`: never). A
    /// connection that got as far as catch-up resets the count; one dropped before
    /// that counts as a failure. Default `None`.
    pub max_retries: Option<u32>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_retries: None,
        }
    }
}

impl BackoffConfig {
    /// The jitter ceiling before retry `attempt` (0-based):
    /// `min(max, initial * multiplier^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let mult = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let exp = i32::try_from(attempt).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * mult.powi(exp);
        let max = self.max.as_secs_f64();
        if !secs.is_finite() || secs >= max {
            self.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    /// A random delay before retry `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        Duration::from_secs_f64(ceiling.as_secs_f64() * fastrand::f64())
    }
}

/// Where the client starts in threads it has no position for on its first connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialSync {
    /// Start at each thread's `last_seq` as of the first connection (when `connect`
    /// resolves): only newer messages become events; the app reads older ones with the
    /// history helpers. The default.
    #[default]
    Latest,
    /// Deliver every thread's whole history as events, from seq 1.
    Full,
}

/// Everything the client needs to connect and behave.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server's WebSocket endpoint, e.g. `ws://127.0.0.1:8080/ws`.
    pub url: String,
    /// The token, sent as `Authorization: Bearer <token>` (in dev auth: the user id).
    pub token: String,
    /// Reconnection backoff.
    pub backoff: BackoffConfig,
    /// Ack `DELIVERED` the messages from others handed to the app (coalesced: at most
    /// one ack per thread every 250 ms, for the newest).
    /// Default true.
    pub auto_ack_delivered: bool,
    /// How long a request (other than `send`) waits for its reply. Default 10 s.
    pub request_timeout: Duration,
    /// Time allowed for TCP connect, WebSocket upgrade and `welcome`. Default 10 s.
    pub connect_timeout: Duration,
    /// The client pings this often; a connection silent for twice as long is treated
    /// as dead and replaced. Default 15 s.
    pub heartbeat: Duration,
    /// Capacity of the event channel. When the app does not drain events, the client
    /// stops reading the socket (backpressure) rather than buffer without bound.
    /// Default 1024.
    pub event_capacity: usize,
    /// Capacity of the command channel from the handles to the background task.
    /// Default 256.
    pub command_capacity: usize,
    /// Page size for catch-up and gap fills (the server caps it at 200). Default 200.
    pub fill_page: u64,
    /// Where to start in threads the client holds no position for, on its first
    /// connection. Default [`InitialSync::Latest`].
    pub initial_sync: InitialSync,
    /// Per-thread positions the app already holds (e.g. from its own database): the
    /// client catches these threads up from the given seq on its first connection, so
    /// nothing is missed or repeated across app restarts.
    pub resume: HashMap<ThreadId, u64>,
}

impl ClientConfig {
    /// A configuration with the defaults for `url` and `token`.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            token: token.into(),
            backoff: BackoffConfig::default(),
            auto_ack_delivered: true,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            event_capacity: 1024,
            command_capacity: 256,
            fill_page: 200,
            initial_sync: InitialSync::Latest,
            resume: HashMap::new(),
        }
    }

    /// Sets the backoff.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Turns automatic `DELIVERED` acks on or off.
    pub fn auto_ack_delivered(mut self, on: bool) -> Self {
        self.auto_ack_delivered = on;
        self
    }

    /// Sets the request timeout.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Sets where the first connection starts in unknown threads.
    pub fn initial_sync(mut self, s: InitialSync) -> Self {
        self.initial_sync = s;
        self
    }

    /// Declares that the app already holds `thread` up to `last_seq`.
    pub fn resume(mut self, thread: ThreadId, last_seq: u64) -> Self {
        self.resume.insert(thread, last_seq);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_and_caps() {
        let b = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            max_retries: None,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(1600));
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
        // A nonsensical multiplier does not shrink or explode the delay.
        let flat = BackoffConfig {
            multiplier: f64::NAN,
            ..b.clone()
        };
        assert_eq!(flat.ceiling(10), Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_stays_within_bounds_and_spreads() {
        let b = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(3),
            multiplier: 2.0,
            max_retries: Some(10),
        };
        for attempt in 0..12 {
            let ceiling = b.ceiling(attempt);
            let mut lo = Duration::MAX;
            let mut hi = Duration::ZERO;
            let mut sum = 0.0;
            let n = 4000;
            for _ in 0..n {
                let d = b.delay(attempt);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
                lo = lo.min(d);
                hi = hi.max(d);
                sum += d.as_secs_f64();
            }
            // Full jitter covers the whole range, not just the top of it.
            let c = ceiling.as_secs_f64();
            assert!(lo.as_secs_f64() < c * 0.05, "attempt {attempt}: min {lo:?}");
            assert!(hi.as_secs_f64() > c * 0.95, "attempt {attempt}: max {hi:?}");
            let mean = sum / n as f64;
            assert!(
                (mean - c / 2.0).abs() < c * 0.05,
                "attempt {attempt}: mean {mean}"
            );
        }
    }
}
