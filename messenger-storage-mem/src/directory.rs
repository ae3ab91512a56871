//! [`MemSessionDirectory`]: where each user's sessions are, in memory.

use async_trait::async_trait;
use messenger_core::model::SessionEntry;
use messenger_core::{Result, SessionDirectory, UserId};

use messenger_core::sync::Sharded;

/// An in-memory [`SessionDirectory`], sharded by user.
///
/// A user's sessions are listed in registration order; registering a session id again
/// replaces its entry (for example to move it to another node).
#[derive(Default)]
pub struct MemSessionDirectory {
    users: Sharded<UserId, Vec<SessionEntry>>,
}

impl std::fmt::Debug for MemSessionDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemSessionDirectory")
            .finish_non_exhaustive()
    }
}

impl MemSessionDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SessionDirectory for MemSessionDirectory {
    async fn register(&self, entry: &SessionEntry) -> Result<()> {
        let mut shard = self.users.shard(&entry.user_id);
        let list = shard.entry(entry.user_id.clone()).or_default();
        match list.iter_mut().find(|e| e.session_id == entry.session_id) {
            Some(e) => *e = entry.clone(),
            None => {
                // Exact: most users have one session, and a Vec's first growth would
                // make room for four (160 B per online user instead of 40).
                list.reserve_exact(1);
                list.push(entry.clone());
            }
        }
        Ok(())
    }

    async fn unregister(&self, entry: &SessionEntry) -> Result<()> {
        let mut shard = self.users.shard(&entry.user_id);
        if let Some(list) = shard.get_mut(&entry.user_id) {
            list.retain(|e| e.session_id != entry.session_id);
            if list.is_empty() {
                shard.remove(&entry.user_id);
            }
        }
        Ok(())
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<SessionEntry>>> {
        Ok(users
            .iter()
            .map(|u| self.users.shard(u).get(u).cloned().unwrap_or_default())
            .collect())
    }
}
