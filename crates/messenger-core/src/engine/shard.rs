//! A simple sharded hash map so that no single lock sits on the send path.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

pub(crate) struct Sharded<K, V> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, V>>]>,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    pub(crate) fn new() -> Self {
        Sharded {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub(crate) fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means another thread panicked while holding it; the
        // maps hold plain data that stays consistent, so keep going.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn for_each_shard(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for s in self.shards.iter() {
            let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g);
        }
    }
}
