//! [`MemThreadStore`]: threads, membership and watermarks, in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use messenger_core::model::{
    AckStatus, CreatedThread, MembershipChange, NewThread, ThreadInfo, UserThread, Watermark,
    WatermarkUpdate,
};
use messenger_core::{Error, Result, ThreadId, ThreadStore, UserId};

use messenger_core::sync::Sharded;

struct ThreadRec {
    /// Shared with readers of [`ThreadStore::get_thread_now`]; a membership change
    /// copies it if a reader still holds it, so what they hold never changes.
    info: Arc<ThreadInfo>,
    /// Creation order within this store; orders each user's thread list.
    order: u64,
    /// Watermarks of users who acked something (kept when a member leaves).
    watermarks: HashMap<UserId, Watermark>,
}

impl ThreadRec {
    fn receipts(&self) -> Vec<(UserId, Watermark)> {
        self.info
            .members
            .iter()
            .map(|m| {
                (
                    m.clone(),
                    self.watermarks.get(m).copied().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// An in-memory [`ThreadStore`].
///
/// Threads are sharded by thread id, each user's thread index by user id, so no single
/// lock is shared by all requests. `list_user_threads` returns threads in the order they
/// were created in this store, oldest first.
///
/// Lock order: a thread shard may be held while a user shard is taken, never the
/// reverse, so membership changes and the user index stay consistent without deadlock.
#[derive(Default)]
pub struct MemThreadStore {
    threads: Sharded<ThreadId, ThreadRec>,
    /// user -> (creation order -> thread id).
    by_user: Sharded<UserId, BTreeMap<u64, ThreadId>>,
    next_order: AtomicU64,
}

impl std::fmt::Debug for MemThreadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemThreadStore").finish_non_exhaustive()
    }
}

fn unknown(thread: &ThreadId) -> Error {
    Error::not_found(format!("no thread {thread}"))
}

impl MemThreadStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self, user: &UserId, order: u64, thread: &ThreadId) {
        self.by_user
            .shard(user)
            .entry(user.clone())
            .or_default()
            .insert(order, thread.clone());
    }

    fn unindex(&self, user: &UserId, order: u64) {
        let mut shard = self.by_user.shard(user);
        if let Some(list) = shard.get_mut(user) {
            list.remove(&order);
            if list.is_empty() {
                shard.remove(user);
            }
        }
    }
}

#[async_trait]
impl ThreadStore for MemThreadStore {
    async fn create_thread(&self, thread: NewThread) -> Result<CreatedThread> {
        let mut shard = self.threads.shard(&thread.thread_id);
        if let Some(existing) = shard.get(&thread.thread_id) {
            return Ok(CreatedThread {
                thread: (*existing.info).clone(),
                created: false,
            });
        }
        let mut members: Vec<UserId> = Vec::with_capacity(thread.members.len());
        for m in thread.members {
            if !members.contains(&m) {
                members.push(m);
            }
        }
        let info = ThreadInfo {
            thread_id: thread.thread_id,
            kind: thread.kind,
            title: thread.title,
            members,
            created_at: thread.created_at,
        };
        let order = self.next_order.fetch_add(1, Ordering::Relaxed);
        for m in &info.members {
            self.index(m, order, &info.thread_id);
        }
        shard.insert(
            info.thread_id.clone(),
            ThreadRec {
                info: Arc::new(info.clone()),
                order,
                watermarks: HashMap::new(),
            },
        );
        Ok(CreatedThread {
            thread: info,
            created: true,
        })
    }

    async fn get_thread(&self, thread: &ThreadId) -> Result<Option<ThreadInfo>> {
        Ok(self
            .threads
            .shard(thread)
            .get(thread)
            .map(|r| (*r.info).clone()))
    }

    fn get_thread_now(&self, thread: &ThreadId) -> Option<Result<Option<Arc<ThreadInfo>>>> {
        Some(Ok(self
            .threads
            .shard(thread)
            .get(thread)
            .map(|r| r.info.clone())))
    }

    async fn add_members(&self, thread: &ThreadId, members: &[UserId]) -> Result<MembershipChange> {
        let mut shard = self.threads.shard(thread);
        let rec = shard.get_mut(thread).ok_or_else(|| unknown(thread))?;
        let mut changed = Vec::new();
        for m in members {
            if !rec.info.is_member(m) {
                Arc::make_mut(&mut rec.info).members.push(m.clone());
                self.index(m, rec.order, thread);
                changed.push(m.clone());
            }
        }
        Ok(MembershipChange {
            thread: (*rec.info).clone(),
            changed,
        })
    }

    async fn remove_member(&self, thread: &ThreadId, member: &UserId) -> Result<MembershipChange> {
        let mut shard = self.threads.shard(thread);
        let rec = shard.get_mut(thread).ok_or_else(|| unknown(thread))?;
        let before = rec.info.members.len();
        if rec.info.is_member(member) {
            Arc::make_mut(&mut rec.info).members.retain(|m| m != member);
        }
        let changed = if rec.info.members.len() < before {
            self.unindex(member, rec.order);
            vec![member.clone()]
        } else {
            Vec::new()
        };
        Ok(MembershipChange {
            thread: (*rec.info).clone(),
            changed,
        })
    }

    async fn list_user_threads(&self, user: &UserId) -> Result<Vec<UserThread>> {
        // Copy the index out first: a user shard is never held while a thread shard is taken.
        let ids: Vec<ThreadId> = self
            .by_user
            .shard(user)
            .get(user)
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let shard = self.threads.shard(&id);
            // The user may have left between the two reads.
            if let Some(rec) = shard.get(&id).filter(|r| r.info.is_member(user)) {
                out.push(UserThread {
                    thread: (*rec.info).clone(),
                    receipts: rec.receipts(),
                });
            }
        }
        Ok(out)
    }

    async fn advance_watermark(
        &self,
        thread: &ThreadId,
        user: &UserId,
        status: AckStatus,
        seq: u64,
    ) -> Result<WatermarkUpdate> {
        let mut shard = self.threads.shard(thread);
        let rec = shard.get_mut(thread).ok_or_else(|| unknown(thread))?;
        let wm = rec.watermarks.entry(user.clone()).or_default();
        let advanced = match status {
            AckStatus::Delivered => seq > wm.delivered_seq,
            AckStatus::Read => seq > wm.read_seq,
        };
        if status == AckStatus::Read {
            wm.read_seq = wm.read_seq.max(seq);
        }
        wm.delivered_seq = wm.delivered_seq.max(seq);
        Ok(WatermarkUpdate {
            watermark: *wm,
            advanced,
        })
    }
}
