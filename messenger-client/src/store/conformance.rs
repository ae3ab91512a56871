//! The conformance suite every [`ClientStore`] passes (feature `testkit`).
//!
//! `run` takes a function that opens the store under test; it is called again to
//! "restart" (a persistent store must return what the first instance saved; call it
//! only after the previous instance is dropped, as a restarted app would).
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_store_conforms() {
//!     let dir = tempdir();
//!     messenger_client::store::conformance::run(|| async { MyStore::open(&dir).await.unwrap() }).await;
//! }
//! ```

use std::future::Future;

use messenger_core::{MessageId, ThreadId, UserId};

use super::{AckDue, ClientStore, OutboxEntry, ReceiptMark, StoreChanges, ThreadPosition};

fn t(s: &str) -> ThreadId {
    ThreadId::new(s).expect("valid thread id")
}

fn u(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

fn entry(thread: &str, temp: &str, text: &str, at: u64) -> OutboxEntry {
    OutboxEntry {
        thread_id: t(thread),
        temp_id: temp.into(),
        text: text.into(),
        queued_at: at,
    }
}

/// Runs every check; panics with what broke.
pub async fn run<S, F, Fut>(open: F)
where
    S: ClientStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = open().await;
    let empty = store.load().await.expect("load an empty store");
    assert_eq!(empty, Default::default(), "a new store is empty");

    // Outbox: order of additions, duplicates ignored, removal by key.
    let mut c = StoreChanges {
        user_id: Some(u("alice")),
        ..Default::default()
    };
    c.outbox_added = vec![
        entry("g:1", "a", "first", 10),
        entry("g:2", "b", "second ✓ ünïcode", 11),
        entry("g:1", "c", "third", 12),
    ];
    store.save(c).await.expect("save outbox");
    let c = StoreChanges {
        outbox_added: vec![
            entry("g:1", "a", "first again", 99),
            entry("g:1", "d", "fourth", 13),
        ],
        outbox_removed: vec![(t("g:2"), "b".into()), (t("g:9"), "nope".into())],
        ..Default::default()
    };
    store.save(c).await.expect("save outbox changes");
    let s = store.load().await.expect("load");
    assert_eq!(s.user_id, Some(u("alice")));
    assert!(!s.synced);
    let temps: Vec<(&str, &str)> = s
        .outbox
        .iter()
        .map(|e| (e.temp_id.as_str(), e.text.as_str()))
        .collect();
    assert_eq!(
        temps,
        [("a", "first"), ("c", "third"), ("d", "fourth")],
        "oldest first, duplicate keys keep the first, removals applied"
    );
    assert_eq!(s.outbox[0].queued_at, 10);

    // Positions: held_seq never moves backwards; ack_due replaced as given.
    let mut c = StoreChanges {
        synced: true,
        ..Default::default()
    };
    let due = AckDue {
        seq: 7,
        message_id: MessageId(u64::from(u32::MAX) << 20),
    };
    c.threads.insert(
        t("g:1"),
        ThreadPosition {
            held_seq: 7,
            ack_due: Some(due),
        },
    );
    c.threads
        .insert(t("d:alice:bob"), ThreadPosition::default());
    store.save(c).await.expect("save positions");
    let mut c = StoreChanges::default();
    c.threads.insert(
        t("g:1"),
        ThreadPosition {
            held_seq: 5,
            ack_due: None,
        },
    );
    store.save(c).await.expect("save an older position");
    let s = store.load().await.expect("load");
    assert!(s.synced);
    assert_eq!(
        s.threads.get(&t("g:1")),
        Some(&ThreadPosition {
            held_seq: 7,
            ack_due: None
        }),
        "held_seq keeps the maximum; ack_due cleared"
    );
    assert_eq!(
        s.threads.get(&t("d:alice:bob")),
        Some(&ThreadPosition::default())
    );

    // Receipts merge by maximum, per (thread, user).
    let mark = |thread: &str, user: &str, d, r| ReceiptMark {
        thread_id: t(thread),
        user_id: u(user),
        delivered_seq: d,
        read_seq: r,
    };
    store
        .save(StoreChanges {
            receipts: vec![mark("g:1", "bob", 5, 2), mark("g:1", "carol", 1, 1)],
            ..Default::default()
        })
        .await
        .expect("save receipts");
    store
        .save(StoreChanges {
            receipts: vec![mark("g:1", "bob", 4, 3)],
            ..Default::default()
        })
        .await
        .expect("save receipts");
    let mut receipts = store.load().await.expect("load").receipts;
    receipts.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!(
        receipts,
        [mark("g:1", "bob", 5, 3), mark("g:1", "carol", 1, 1)]
    );

    // An empty batch is fine.
    store
        .save(StoreChanges::default())
        .await
        .expect("empty save");

    // Everything survives a restart.
    let before = store.load().await.expect("load");
    drop(store);
    let store = open().await;
    let after = store.load().await.expect("load after reopening");
    assert_eq!(after.user_id, before.user_id);
    assert_eq!(after.synced, before.synced);
    assert_eq!(after.outbox, before.outbox);
    assert_eq!(after.threads, before.threads);
    let mut a = after.receipts.clone();
    let mut b = before.receipts.clone();
    a.sort_by(|x, y| (&x.thread_id, &x.user_id).cmp(&(&y.thread_id, &y.user_id)));
    b.sort_by(|x, y| (&x.thread_id, &x.user_id).cmp(&(&y.thread_id, &y.user_id)));
    assert_eq!(a, b);

    // Concurrent saves from many tasks all land (the client saves from one task, but a
    // store must not lose a batch under contention).
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .save(StoreChanges {
                    outbox_added: vec![entry("g:c", &format!("k{i}"), "x", i)],
                    ..Default::default()
                })
                .await
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("concurrent save");
    }
    let s = store.load().await.expect("load");
    assert_eq!(
        s.outbox.iter().filter(|e| e.thread_id == t("g:c")).count(),
        32
    );
}
