//! Every `messenger-core` conformance suite against the in-memory adapters.

use std::sync::Arc;

use messenger_core::{MessageStore, Presence, PushRegistry, Relay, SessionDirectory, ThreadStore};
use messenger_storage_mem::{
    MemMessageStore, MemPresence, MemPushRegistry, MemRelay, MemSessionDirectory, MemThreadStore,
};

messenger_core::message_store_tests!(|| async {
    Arc::new(MemMessageStore::new()) as Arc<dyn MessageStore>
});

messenger_core::thread_store_tests!(|| async {
    Arc::new(MemThreadStore::new()) as Arc<dyn ThreadStore>
});

messenger_core::session_directory_tests!(|| async {
    Arc::new(MemSessionDirectory::new()) as Arc<dyn SessionDirectory>
});

messenger_core::presence_tests!(|| async { Arc::new(MemPresence::new()) as Arc<dyn Presence> });

/// A factory may also be an `async fn`.
async fn fresh_relay() -> Arc<dyn Relay> {
    Arc::new(MemRelay::new())
}

messenger_core::relay_tests!(fresh_relay);

messenger_core::push_registry_tests!(|| async {
    Arc::new(MemPushRegistry::new()) as Arc<dyn PushRegistry>
});

/// The suites do not need a fresh backend: run them again on one shared backend, as a
/// Redis or HBase adapter would.
mod shared_backend {
    use super::*;
    use messenger_storage_mem::MemBackend;
    use std::sync::OnceLock;

    fn backend() -> &'static MemBackend {
        static B: OnceLock<MemBackend> = OnceLock::new();
        B.get_or_init(MemBackend::new)
    }

    messenger_core::message_store_tests!(|| async {
        backend().messages().clone() as Arc<dyn MessageStore>
    });
    messenger_core::thread_store_tests!(|| async {
        backend().threads().clone() as Arc<dyn ThreadStore>
    });
    messenger_core::session_directory_tests!(|| async {
        backend().directory().clone() as Arc<dyn SessionDirectory>
    });
    messenger_core::presence_tests!(|| async { backend().presence().clone() as Arc<dyn Presence> });
    messenger_core::relay_tests!(|| async {
        Arc::new(backend().relay().clone()) as Arc<dyn Relay>
    });
    messenger_core::push_registry_tests!(|| async {
        backend().push_registry().clone() as Arc<dyn PushRegistry>
    });
}

/// The engine-level checks over a fresh in-memory backend per check.
mod engine {
    messenger_core::engine_tests!(|| async {
        let backend = messenger_storage_mem::MemBackend::new();
        messenger_core::testkit::engine::node_adapters(move |node| {
            let b = backend.clone();
            async move { b.adapters(node) }
        })
    });
}
