//! [`MemoryStore`]: the default store, in memory.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{apply, ClientStore, StoreChanges, StoreError, StoredState};

/// A [`ClientStore`] in memory: the default. Nothing survives the process, but clones
/// share one state, so a client built again on a clone of the same `MemoryStore` (in
/// the same process) resumes where the previous one stopped: its outbox, positions and
/// receipts. Test harnesses use that to restart clients without files.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<StoredState>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A copy of what the store holds now.
    pub fn snapshot(&self) -> StoredState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl ClientStore for MemoryStore {
    async fn load(&self) -> Result<StoredState, StoreError> {
        Ok(self.snapshot())
    }

    async fn save(&self, changes: StoreChanges) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        apply(&mut state, changes);
        Ok(())
    }
}
