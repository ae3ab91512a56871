//! [`MemPushRegistry`]: push targets and thread mutes, in memory.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use messenger_core::push::{PushRegistration, PushTargets, ThreadMute};
use messenger_core::time::{now_ms, Millis};
use messenger_core::{PushRegistry, Result, ThreadId, UserId};

#[derive(Default)]
struct UserPush {
    /// target id -> registration.
    targets: HashMap<String, PushRegistration>,
    /// thread -> until (`None`: for ever).
    mutes: HashMap<ThreadId, Option<Millis>>,
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, UserPush>,
    /// target id -> the user holding it.
    owners: HashMap<String, UserId>,
}

/// An in-memory [`PushRegistry`]. One lock: registrations and mutes change rarely
/// (a device registers at start-up, a user mutes a thread by hand), and a read for a
/// notification is a few map lookups.
#[derive(Default)]
pub struct MemPushRegistry {
    state: Mutex<State>,
}

impl std::fmt::Debug for MemPushRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemPushRegistry").finish_non_exhaustive()
    }
}

impl MemPushRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        messenger_core::sync::lock(&self.state)
    }
}

fn oldest_first(mut v: Vec<PushRegistration>) -> Vec<PushRegistration> {
    v.sort_by(|a, b| (a.created_at, &a.target_id).cmp(&(b.created_at, &b.target_id)));
    v
}

#[async_trait]
impl PushRegistry for MemPushRegistry {
    async fn register_target(
        &self,
        mut reg: PushRegistration,
        max_targets: usize,
    ) -> Result<PushRegistration> {
        let mut g = self.lock();
        let st = &mut *g;
        if let Some(prev) = st.owners.get(&reg.target_id) {
            if *prev != reg.user_id {
                if let Some(u) = st.users.get_mut(prev) {
                    u.targets.remove(&reg.target_id);
                }
            }
        }
        st.owners.insert(reg.target_id.clone(), reg.user_id.clone());
        let user = st.users.entry(reg.user_id.clone()).or_default();
        if let Some(old) = user.targets.get(&reg.target_id) {
            reg.created_at = old.created_at;
        }
        user.targets.insert(reg.target_id.clone(), reg.clone());
        while user.targets.len() > max_targets.max(1) {
            let Some(victim) = user
                .targets
                .values()
                .filter(|t| t.target_id != reg.target_id)
                .min_by(|a, b| (a.updated_at, &a.target_id).cmp(&(b.updated_at, &b.target_id)))
                .map(|t| t.target_id.clone())
            else {
                break;
            };
            user.targets.remove(&victim);
            st.owners.remove(&victim);
        }
        Ok(reg)
    }

    async fn unregister_target(&self, user: &UserId, target_id: &str) -> Result<bool> {
        let mut g = self.lock();
        let removed = g
            .users
            .get_mut(user)
            .and_then(|u| u.targets.remove(target_id))
            .is_some();
        if removed && g.owners.get(target_id) == Some(user) {
            g.owners.remove(target_id);
        }
        Ok(removed)
    }

    async fn list_targets(&self, user: &UserId) -> Result<Vec<PushRegistration>> {
        let g = self.lock();
        Ok(oldest_first(
            g.users
                .get(user)
                .map(|u| u.targets.values().cloned().collect())
                .unwrap_or_default(),
        ))
    }

    async fn set_mute(&self, user: &UserId, mute: ThreadMute) -> Result<()> {
        let mut g = self.lock();
        let u = g.users.entry(user.clone()).or_default();
        u.mutes.insert(mute.thread_id, mute.until);
        Ok(())
    }

    async fn clear_mute(&self, user: &UserId, thread: &ThreadId) -> Result<bool> {
        let mut g = self.lock();
        Ok(g.users
            .get_mut(user)
            .and_then(|u| u.mutes.remove(thread))
            .is_some())
    }

    async fn list_mutes(&self, user: &UserId) -> Result<Vec<ThreadMute>> {
        let mut g = self.lock();
        let Some(u) = g.users.get_mut(user) else {
            return Ok(Vec::new());
        };
        let now = now_ms();
        // Expired mutes are dropped here: nothing else would ever remove them.
        u.mutes.retain(|_, until| until.is_none_or(|t| t > now));
        Ok(u.mutes
            .iter()
            .map(|(t, until)| ThreadMute {
                thread_id: t.clone(),
                until: *until,
            })
            .collect())
    }

    async fn push_targets(&self, user: &UserId, thread: &ThreadId) -> Result<PushTargets> {
        let g = self.lock();
        let Some(u) = g.users.get(user) else {
            return Ok(PushTargets::default());
        };
        Ok(PushTargets {
            targets: oldest_first(u.targets.values().cloned().collect()),
            mute: u.mutes.get(thread).map(|until| ThreadMute {
                thread_id: thread.clone(),
                until: *until,
            }),
        })
    }
}
