//! Small concurrency helpers shared by the engine and adapters.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

/// A hash map split into 64 independently locked shards, so that no single lock sits on
/// a hot path. Never hold a shard across an `.await`.
///
/// Keys are hashed with foldhash, randomly seeded per map: several times cheaper than
/// the standard SipHash on short ids (hashing was about 7 % of the server's CPU in the
/// pairs benchmark) while keeping client-chosen ids from being aimed at one bucket.
pub struct Sharded<K, V> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, V, RandomState>>]>,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Sharded {
            hasher: RandomState::default(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(RandomState::default())))
                .collect(),
        }
    }

    /// The locked shard that holds `key`.
    pub fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V, RandomState>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        lock(&self.shards[i])
    }

    /// Runs `f` on every shard in turn, each locked while `f` runs.
    pub fn for_each_shard(&self, mut f: impl FnMut(&mut HashMap<K, V, RandomState>)) {
        for s in self.shards.iter() {
            f(&mut lock(s));
        }
    }
}

impl<K: Hash + Eq, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> std::fmt::Debug for Sharded<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded").field("shards", &SHARDS).finish()
    }
}

/// Locks a mutex, ignoring poisoning: a poisoned lock only means another thread panicked
/// while holding it, and the plain data these maps hold stays consistent between
/// statements.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
