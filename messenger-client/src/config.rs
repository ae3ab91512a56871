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

/// Where the client starts in threads it has no position for, on the first
/// connection of a new store (after that, new threads start at seq 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialSync {
    /// Start at each thread's `last_seq` as of the first catch-up: only newer messages
    /// become events; the app reads older ones with the history helpers. The default.
    #[default]
    Latest,
    /// Deliver every thread's whole history as events, from seq 1.
    Full,
}

/// Everything the client needs to connect and behave (filled by the
/// [`ClientBuilder`](crate::ClientBuilder)).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The server's WebSocket endpoint.
    pub url: String,
    pub backoff: BackoffConfig,
    pub auto_ack_delivered: bool,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub heartbeat: Duration,
    pub event_capacity: usize,
    pub command_capacity: usize,
    pub fill_page: u64,
    pub initial_sync: InitialSync,
    pub resume: HashMap<ThreadId, u64>,
}

impl Settings {
    /// The defaults for `url`.
    pub fn new(url: String) -> Self {
        Settings {
            url,
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
