//! Every `messenger-core` conformance suite that applies to the SQLite store (messages,
//! threads, push registry), and the engine-level checks with the stores on SQLite.

mod common;

use std::sync::Arc;

use messenger_core::{MessageStore, PushRegistry, ThreadStore};

messenger_core::message_store_tests!(|| async {
    Arc::new(common::fresh_store("messages").await) as Arc<dyn MessageStore>
});

messenger_core::thread_store_tests!(|| async {
    Arc::new(common::fresh_store("threads").await) as Arc<dyn ThreadStore>
});

messenger_core::push_registry_tests!(|| async {
    Arc::new(common::fresh_store("push").await) as Arc<dyn PushRegistry>
});

/// The suites do not need a fresh store: run them again on one store shared by every
/// check (many threads, concurrent group commits of unrelated requests).
mod shared_store {
    use super::*;
    use messenger_storage_sqlite::SqliteStore;
    use tokio::sync::OnceCell;

    async fn store() -> SqliteStore {
        static S: OnceCell<SqliteStore> = OnceCell::const_new();
        S.get_or_init(|| common::fresh_store("shared"))
            .await
            .clone()
    }

    messenger_core::message_store_tests!(|| async {
        Arc::new(store().await) as Arc<dyn MessageStore>
    });
    messenger_core::thread_store_tests!(|| async {
        Arc::new(store().await) as Arc<dyn ThreadStore>
    });
}

/// The engine-level checks with messages and threads on SQLite (sessions, presence and
/// relay in memory), one fresh store per check, shared by both nodes of the check.
mod engine {
    use super::common;
    use messenger_storage_mem::MemBackend;
    use std::sync::Arc;

    messenger_core::engine_tests!(|| async {
        let backend = MemBackend::new();
        let store = common::fresh_store("engine").await;
        messenger_core::testkit::engine::node_adapters(move |node| {
            let (backend, store) = (backend.clone(), store.clone());
            async move {
                let mut a = backend.adapters(node);
                a.messages = Arc::new(store.clone());
                a.threads = Arc::new(store.clone());
                a.push_registry = Arc::new(store);
                a
            }
        })
    });
}
