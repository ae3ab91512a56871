//! Abuse limits that need state across connections: sessions per user, connection
//! attempts per source address, threads created per user, and the `Origin` allow-list.
//!
//! The per-key rates are `governor` GCRA limiters (one small cell per key, no task per
//! key); keys not seen for a while are dropped by [`Guards::retain_recent`], which the
//! server runs once a minute. Per-frame limits that need no shared state (members per
//! `add_members`, presence subscriptions per session) are checked in the session reader
//! (`conn.rs`). Every refusal is counted in `messenger_limit_refusals_total{limit}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use messenger_core::UserId;

use crate::config::Limits;

/// The `limit` label values of `messenger_limit_refusals_total`.
pub(crate) const LIMITS: &[&str] = &[
    "sessions_per_user",
    "connect_rate",
    "origin",
    "threads_per_minute",
    "add_members",
    "presence_subscriptions",
];

/// Shared limit state of one server.
pub(crate) struct Guards {
    max_sessions: usize,
    sessions: Mutex<HashMap<UserId, usize>>,
    // The connection rate and the Origin list are checked by `serve` and the router
    // (feature `axum`).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    connect: Option<DefaultKeyedRateLimiter<IpAddr>>,
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    connect_loopback: bool,
    threads: DefaultKeyedRateLimiter<UserId>,
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    origins: Vec<String>,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards")
            .field("max_sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

impl Guards {
    /// The guards for these limits and allowed origins (validated configuration).
    pub(crate) fn new(l: &Limits, origins: &[String]) -> Self {
        let connect = (l.connect_rate_per_sec > 0).then(|| {
            RateLimiter::keyed(
                Quota::per_second(nz(l.connect_rate_per_sec)).allow_burst(nz(l.connect_rate_burst)),
            )
        });
        Guards {
            max_sessions: l.max_sessions_per_user,
            sessions: Mutex::new(HashMap::new()),
            connect,
            connect_loopback: l.connect_rate_loopback,
            threads: RateLimiter::keyed(Quota::per_minute(nz(l.threads_per_minute))),
            origins: origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
        }
    }

    /// Takes one of `user`'s session slots on this node, or `None` when the user holds
    /// `max_sessions_per_user` already. The slot is given back when dropped.
    pub(crate) fn session_slot(self: &Arc<Self>, user: &UserId) -> Option<SessionSlot> {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(user.clone()).or_insert(0);
        if *n >= self.max_sessions {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            guards: self.clone(),
            user: user.clone(),
        })
    }

    /// Whether a new connection from `ip` is over the connection rate.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn connect_refused(&self, ip: IpAddr) -> bool {
        match &self.connect {
            Some(l) if self.connect_loopback || !ip.is_loopback() => l.check_key(&ip).is_err(),
            _ => false,
        }
    }

    /// Whether `user` may create one more thread now (takes a token if so).
    pub(crate) fn thread_allowed(&self, user: &UserId) -> bool {
        self.threads.check_key(user).is_ok()
    }

    /// Whether a request with this `Origin` header value (if any) may open `/ws`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn origin_allowed(&self, origin: Option<&[u8]>) -> bool {
        match origin {
            _ if self.origins.is_empty() => true,
            None => true,
            Some(o) => self
                .origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(o)),
        }
    }

    /// Forgets rate-limit keys whose budget is full again (memory stays bounded by the
    /// keys active in the last period).
    pub(crate) fn retain_recent(&self) {
        if let Some(c) = &self.connect {
            c.retain_recent();
        }
        self.threads.retain_recent();
    }
}

/// One session slot of a user, given back when dropped.
pub(crate) struct SessionSlot {
    guards: Arc<Guards>,
    user: UserId,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut m = self
            .guards
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// Whether `o` is written as an origin: `scheme://host[:port]`, nothing after.
pub(crate) fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> UserId {
        UserId::new(u).expect("id")
    }

    #[test]
    fn session_slots_are_counted_per_user_and_given_back() {
        let l = Limits {
            max_sessions_per_user: 2,
            ..Limits::default()
        };
        let g = Arc::new(Guards::new(&l, &[]));
        let a1 = g.session_slot(&user("a")).expect("first");
        let _a2 = g.session_slot(&user("a")).expect("second");
        assert!(g.session_slot(&user("a")).is_none(), "third refused");
        assert!(
            g.session_slot(&user("b")).is_some(),
            "other users unaffected"
        );
        drop(a1);
        assert!(g.session_slot(&user("a")).is_some(), "a slot came back");
    }

    #[test]
    fn connect_rate_spares_loopback_unless_asked() {
        let mut l = Limits {
            connect_rate_per_sec: 1,
            connect_rate_burst: 2,
            ..Limits::default()
        };
        let g = Guards::new(&l, &[]);
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let far: IpAddr = "192.0.2.7".parse().expect("ip");
        assert!((0..10).all(|_| !g.connect_refused(lo)));
        assert!(!g.connect_refused(far) && !g.connect_refused(far));
        assert!(g.connect_refused(far), "burst of 2 spent");
        l.connect_rate_loopback = true;
        let g = Guards::new(&l, &[]);
        assert!(!g.connect_refused(lo) && !g.connect_refused(lo));
        assert!(g.connect_refused(lo));
        l.connect_rate_per_sec = 0;
        let g = Guards::new(&l, &[]);
        assert!((0..10).all(|_| !g.connect_refused(far)), "0 turns it off");
    }

    #[test]
    fn origins() {
        let g = Guards::new(&Limits::default(), &["https://Chat.Example.com".into()]);
        assert!(g.origin_allowed(None));
        assert!(g.origin_allowed(Some(b"https://chat.example.com")));
        assert!(!g.origin_allowed(Some(b"https://evil.example")));
        assert!(!g.origin_allowed(Some(b"http://chat.example.com")));
        let open = Guards::new(&Limits::default(), &[]);
        assert!(open.origin_allowed(Some(b"https://anything")));
        assert!(valid_origin("https://a.b:8443") && valid_origin("http://[::1]:80"));
        assert!(!valid_origin("https://a.b/") && !valid_origin("a.b") && !valid_origin("*"));
    }
}
