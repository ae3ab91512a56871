//! This node's interest in large threads: which of its sessions belong to each large
//! thread, kept up to date as sessions come and go, so a message to a group of 10 000
//! costs one write per online local session instead of a session lookup per member.
//!
//! A thread is large when it has more members than
//! [`EngineConfig::large_group_threshold`](super::EngineConfig::large_group_threshold).
//! Its [`Interest`] is built on the first send that needs it (one pass over the members
//! and the session table) and replaced when the membership a send saw differs from the
//! one it was built from; sessions that connect or disconnect meanwhile update every
//! interest that names their user. Interests not used for a while are dropped by the
//! engine's sweep.
//!
//! In a cluster the same record resolves the envelopes other nodes send for a large
//! thread ([`EnvelopeTo::MembersOf`](crate::model::EnvelopeTo::MembersOf)): one per
//! node and message, naming the member list by its fingerprint. An interest built from
//! that member list answers it at once ([`LargeThreads::current`]); otherwise the
//! engine reads the thread from the thread store and builds one (a member added or
//! removed since: the store's list is the current one).
//!
//! The interest also gates push for the thread: offline members of a large thread are
//! handed to the push sink at most once per interval for the whole thread, so a busy
//! group costs no per-member throttle bookkeeping per message.
//!
//! Lock order: the interest table, then an interest's `online`, then a session table
//! shard. The session table is never held while the interest table is taken.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::session::SessionShared;
use crate::ids::{SessionId, ThreadId, UserId};
use crate::model::members_fingerprint;
use crate::sync::{lock, Sharded};

/// The local sessions of one large thread's members, for one member list.
pub(crate) struct Interest {
    /// The member list this interest was built from.
    members: Vec<UserId>,
    /// [`members_fingerprint`] of `members`: what envelopes name it by.
    fingerprint: u64,
    member_set: HashSet<UserId>,
    /// Members with at least one session on this node, and those sessions.
    online: Mutex<HashMap<UserId, Vec<Arc<SessionShared>>>>,
    /// Last use (a send or a delivery), and the last push hand-off.
    times: Mutex<Times>,
}

struct Times {
    used: Instant,
    pushed: Option<Instant>,
}

impl Interest {
    /// The member list it was built from.
    pub(crate) fn members(&self) -> &[UserId] {
        &self.members
    }

    /// The fingerprint of that member list.
    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Calls `f` for every local session of the thread's members, except `except`.
    pub(crate) fn for_each_session(
        &self,
        except: Option<&SessionId>,
        mut f: impl FnMut(&SessionShared),
    ) {
        let online = lock(&self.online);
        for s in online.values().flatten() {
            if except != Some(&s.id) {
                f(s);
            }
        }
    }

    /// The members, other than `sender`, with no session on this node.
    pub(crate) fn offline(&self, sender: &UserId) -> Vec<UserId> {
        let online = lock(&self.online);
        self.members
            .iter()
            .filter(|u| *u != sender && !online.contains_key(*u))
            .cloned()
            .collect()
    }

    /// Whether push may be handed off now (at most once per `every` for the thread);
    /// if so, records it.
    pub(crate) fn take_push_turn(&self, now: Instant, every: Duration) -> bool {
        let mut t = lock(&self.times);
        match t.pushed {
            Some(at) if now.saturating_duration_since(at) < every => false,
            _ => {
                t.pushed = Some(now);
                true
            }
        }
    }

    fn touch(&self, now: Instant) {
        lock(&self.times).used = now;
    }

    /// Whether the sweep may drop it: unused for `idle` and no push turn still running.
    fn expired(&self, now: Instant, idle: Duration, push_every: Duration) -> bool {
        let t = lock(&self.times);
        now.saturating_duration_since(t.used) > idle
            && t.pushed
                .is_none_or(|p| now.saturating_duration_since(p) >= push_every)
    }

    fn add(&self, user: &UserId, s: &Arc<SessionShared>) {
        if !self.member_set.contains(user) {
            return;
        }
        let mut online = lock(&self.online);
        let list = online.entry(user.clone()).or_default();
        // A session registered while this interest was being built is found twice.
        if !list.iter().any(|x| Arc::ptr_eq(x, s)) {
            list.push(s.clone());
        }
    }

    fn remove(&self, user: &UserId, s: &Arc<SessionShared>) {
        if !self.member_set.contains(user) {
            return;
        }
        let mut online = lock(&self.online);
        if let Some(list) = online.get_mut(user) {
            list.retain(|x| !Arc::ptr_eq(x, s));
            if list.is_empty() {
                online.remove(user);
            }
        }
    }
}

/// Every large thread this node has sent or delivered to recently.
#[derive(Default)]
pub(crate) struct LargeThreads {
    table: Mutex<HashMap<ThreadId, Arc<Interest>>>,
}

impl LargeThreads {
    /// The interest of `thread` for exactly `members`, built (or rebuilt, when the
    /// membership changed) from `sessions`, this node's session table.
    pub(crate) fn get(
        &self,
        thread: &ThreadId,
        members: &[UserId],
        sessions: &Sharded<UserId, Vec<Arc<SessionShared>>>,
    ) -> Arc<Interest> {
        let now = Instant::now();
        let mut table = lock(&self.table);
        if let Some(i) = table.get(thread) {
            // One pass of pointer comparisons when the store hands out the same ids.
            if i.members == members {
                i.touch(now);
                return i.clone();
            }
        }
        // Built under the table lock: a session that registers meanwhile either is
        // seen here or waits for the lock and then finds this interest (`add`).
        let mut online: HashMap<UserId, Vec<Arc<SessionShared>>> = HashMap::new();
        for u in members {
            if let Some(list) = sessions.shard(u).get(u) {
                online.insert(u.clone(), list.clone());
            }
        }
        let pushed = table.get(thread).and_then(|old| lock(&old.times).pushed);
        let interest = Arc::new(Interest {
            members: members.to_vec(),
            fingerprint: members_fingerprint(members),
            member_set: members.iter().cloned().collect(),
            online: Mutex::new(online),
            times: Mutex::new(Times { used: now, pushed }),
        });
        table.insert(thread.clone(), interest.clone());
        interest
    }

    /// The interest of `thread` if it was built from the member list whose fingerprint
    /// is `fingerprint` (see [`members_fingerprint`]).
    pub(crate) fn current(&self, thread: &ThreadId, fingerprint: u64) -> Option<Arc<Interest>> {
        let table = lock(&self.table);
        let i = table.get(thread).filter(|i| i.fingerprint == fingerprint)?;
        i.touch(Instant::now());
        Some(i.clone())
    }

    /// A session of `user` registered in the session table (call after inserting it).
    pub(crate) fn session_added(&self, user: &UserId, s: &Arc<SessionShared>) {
        let table = lock(&self.table);
        for i in table.values() {
            i.add(user, s);
        }
    }

    /// A session of `user` left the session table (call after removing it).
    pub(crate) fn session_removed(&self, user: &UserId, s: &Arc<SessionShared>) {
        let table = lock(&self.table);
        for i in table.values() {
            i.remove(user, s);
        }
    }

    /// Drops interests unused for `idle` whose push interval has passed.
    pub(crate) fn sweep(&self, now: Instant, idle: Duration, push_every: Duration) {
        lock(&self.table).retain(|_, i| !i.expired(now, idle, push_every));
    }
}
