//! [`ThreadStore`] checks. Run them all with [`thread_store_tests!`](crate::thread_store_tests).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{unique_thread, unique_user, CONCURRENT_TASKS, OPS_PER_TASK};
use crate::error::ErrorKind;
use crate::ids::{ThreadId, UserId};
use crate::model::{AckStatus, NewThread, ThreadInfo, ThreadKind, UserThread, Watermark};
use crate::time::now_ms;
use crate::traits::ThreadStore;

/// A group thread to create with a fresh id.
pub fn new_group(prefix: &str, members: &[UserId]) -> NewThread {
    NewThread {
        thread_id: unique_thread(prefix),
        kind: ThreadKind::Group,
        title: Some(format!("{prefix} title")),
        members: members.to_vec(),
        created_at: now_ms(),
    }
}

async fn create(store: &dyn ThreadStore, t: NewThread) -> ThreadInfo {
    let c = store
        .create_thread(t)
        .await
        .unwrap_or_else(|e| panic!("create_thread: {e}"));
    assert!(c.created, "a fresh id is created");
    c.thread
}

async fn list(store: &dyn ThreadStore, user: &UserId) -> Vec<UserThread> {
    store
        .list_user_threads(user)
        .await
        .unwrap_or_else(|e| panic!("list_user_threads: {e}"))
}

async fn listed_ids(store: &dyn ThreadStore, user: &UserId) -> HashSet<ThreadId> {
    list(store, user)
        .await
        .into_iter()
        .map(|t| t.thread.thread_id)
        .collect()
}

fn set<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> HashSet<T> {
    items.iter().cloned().collect()
}

async fn advance(
    store: &dyn ThreadStore,
    thread: &ThreadId,
    user: &UserId,
    status: AckStatus,
    seq: u64,
) -> (Watermark, bool) {
    let u = store
        .advance_watermark(thread, user, status, seq)
        .await
        .unwrap_or_else(|e| panic!("advance_watermark: {e}"));
    (u.watermark, u.advanced)
}

fn wm(delivered_seq: u64, read_seq: u64) -> Watermark {
    Watermark {
        delivered_seq,
        read_seq,
    }
}

/// A created thread comes back as given, from `create_thread` and `get_thread`; an
/// unknown id is `None`.
pub async fn create_and_get(store: Arc<dyn ThreadStore>) {
    let (a, b, c) = (unique_user("a"), unique_user("b"), unique_user("c"));
    let t = new_group("create", &[a.clone(), b.clone(), c.clone()]);
    let info = create(&*store, t.clone()).await;
    assert_eq!(info.thread_id, t.thread_id);
    assert_eq!(info.kind, ThreadKind::Group);
    assert_eq!(info.title, t.title);
    assert_eq!(info.members, vec![a.clone(), b.clone(), c]);
    assert_eq!(info.created_at, t.created_at);
    let got = store.get_thread(&t.thread_id).await.ok().flatten();
    assert_eq!(got, Some(info));

    let direct = NewThread {
        thread_id: ThreadId::direct(&a, &b),
        kind: ThreadKind::Direct,
        title: None,
        members: vec![a.clone(), b.clone()],
        created_at: now_ms(),
    };
    let info = create(&*store, direct.clone()).await;
    assert_eq!((info.kind, info.title), (ThreadKind::Direct, None));
    assert_eq!(set(&info.members), set(&[a, b]));

    let unknown = store.get_thread(&unique_thread("nope")).await.ok();
    assert_eq!(unknown, Some(None));
}

/// Creating an existing id returns the stored thread unchanged with `created: false`.
pub async fn create_is_idempotent(store: Arc<dyn ThreadStore>) {
    let (a, b) = (unique_user("a"), unique_user("b"));
    let t = new_group("idem", &[a.clone(), b.clone()]);
    let first = create(&*store, t.clone()).await;
    let mut other = t.clone();
    other.members = vec![unique_user("x")];
    other.title = Some("another title".into());
    let again = store
        .create_thread(other)
        .await
        .unwrap_or_else(|e| panic!("create_thread again: {e}"));
    assert!(!again.created);
    assert_eq!(again.thread, first);
    assert_eq!(
        store.get_thread(&t.thread_id).await.ok().flatten(),
        Some(first)
    );
}

/// Many tasks creating the same thread at once: exactly one creates it, all get the
/// same thread, and each member lists it once.
pub async fn concurrent_create_yields_one_thread(store: Arc<dyn ThreadStore>) {
    let (a, b) = (unique_user("a"), unique_user("b"));
    let t = NewThread {
        thread_id: ThreadId::direct(&a, &b),
        kind: ThreadKind::Direct,
        title: None,
        members: vec![a.clone(), b.clone()],
        created_at: now_ms(),
    };
    let mut tasks = Vec::new();
    for i in 0..CONCURRENT_TASKS {
        let store = store.clone();
        let mut t = t.clone();
        if i % 2 == 1 {
            t.members.reverse(); // the other side creating the same direct thread
        }
        tasks.push(tokio::spawn(async move { store.create_thread(t).await }));
    }
    let mut results = Vec::new();
    for task in tasks {
        let r = task.await.unwrap_or_else(|e| panic!("creator task: {e}"));
        results.push(r.unwrap_or_else(|e| panic!("create_thread: {e}")));
    }
    assert_eq!(
        results.iter().filter(|r| r.created).count(),
        1,
        "one creation"
    );
    for r in &results {
        assert_eq!(
            r.thread, results[0].thread,
            "every caller sees the same thread"
        );
    }
    for u in [&a, &b] {
        let threads = list(&*store, u).await;
        let n = threads
            .iter()
            .filter(|x| x.thread.thread_id == t.thread_id)
            .count();
        assert_eq!(n, 1, "{u} lists the thread once");
    }
}

/// `add_members` adds new users after the existing ones and reports only them.
pub async fn add_members_reports_only_new(store: Arc<dyn ThreadStore>) {
    let (a, b, c, d) = (
        unique_user("a"),
        unique_user("b"),
        unique_user("c"),
        unique_user("d"),
    );
    let info = create(&*store, new_group("add", &[a.clone(), b.clone()])).await;
    let ch = store
        .add_members(
            &info.thread_id,
            &[b.clone(), c.clone(), d.clone(), c.clone()],
        )
        .await
        .unwrap_or_else(|e| panic!("add_members: {e}"));
    assert_eq!(ch.changed, vec![c.clone(), d.clone()]);
    assert_eq!(
        ch.thread.members,
        vec![a.clone(), b.clone(), c.clone(), d.clone()]
    );
    let ch = store
        .add_members(&info.thread_id, &[a.clone(), d.clone()])
        .await
        .unwrap_or_else(|e| panic!("add_members: {e}"));
    assert!(ch.changed.is_empty(), "already-members are ignored");
    assert_eq!(ch.thread.members.len(), 4);
    let got = store.get_thread(&info.thread_id).await.ok().flatten();
    assert_eq!(got.map(|t| t.members), Some(vec![a, b, c, d]));
}

/// `remove_member` removes one member and reports it; a non-member changes nothing.
pub async fn remove_member_reports_only_removed(store: Arc<dyn ThreadStore>) {
    let (a, b, c) = (unique_user("a"), unique_user("b"), unique_user("c"));
    let info = create(&*store, new_group("rm", &[a.clone(), b.clone(), c.clone()])).await;
    let ch = store
        .remove_member(&info.thread_id, &b)
        .await
        .unwrap_or_else(|e| panic!("remove_member: {e}"));
    assert_eq!(ch.changed, vec![b.clone()]);
    assert_eq!(ch.thread.members, vec![a.clone(), c.clone()]);
    let ch = store
        .remove_member(&info.thread_id, &b)
        .await
        .unwrap_or_else(|e| panic!("remove_member again: {e}"));
    assert!(ch.changed.is_empty(), "a non-member is ignored");
    assert_eq!(ch.thread.members, vec![a.clone(), c.clone()]);
    let got = store.get_thread(&info.thread_id).await.ok().flatten();
    assert_eq!(got.map(|t| t.members), Some(vec![a, c]));
}

/// Membership changes on an unknown thread are `not_found`.
pub async fn unknown_thread_is_not_found(store: Arc<dyn ThreadStore>) {
    let t = unique_thread("missing");
    let a = unique_user("a");
    let e = store.add_members(&t, std::slice::from_ref(&a)).await.err();
    assert_eq!(
        e.map(|e| e.kind()),
        Some(ErrorKind::NotFound),
        "add_members"
    );
    let e = store.remove_member(&t, &a).await.err();
    assert_eq!(
        e.map(|e| e.kind()),
        Some(ErrorKind::NotFound),
        "remove_member"
    );
    assert_eq!(store.get_thread(&t).await.ok(), Some(None));
}

/// A user's thread list has exactly the threads the user is a member of now.
pub async fn list_user_threads_follows_membership(store: Arc<dyn ThreadStore>) {
    let (a, b, c) = (unique_user("a"), unique_user("b"), unique_user("c"));
    assert!(
        list(&*store, &c).await.is_empty(),
        "an unknown user has none"
    );
    let t1 = create(&*store, new_group("l1", &[a.clone(), b.clone()])).await;
    let t2 = create(&*store, new_group("l2", std::slice::from_ref(&a))).await;
    let ids = |t: &[&ThreadInfo]| t.iter().map(|t| t.thread_id.clone()).collect::<Vec<_>>();
    assert_eq!(listed_ids(&*store, &a).await, set(&ids(&[&t1, &t2])));
    assert_eq!(listed_ids(&*store, &b).await, set(&ids(&[&t1])));

    store
        .add_members(&t2.thread_id, &[b.clone(), c.clone()])
        .await
        .unwrap_or_else(|e| panic!("add_members: {e}"));
    assert_eq!(listed_ids(&*store, &b).await, set(&ids(&[&t1, &t2])));
    assert_eq!(listed_ids(&*store, &c).await, set(&ids(&[&t2])));

    store
        .remove_member(&t1.thread_id, &b)
        .await
        .unwrap_or_else(|e| panic!("remove_member: {e}"));
    assert_eq!(listed_ids(&*store, &b).await, set(&ids(&[&t2])));
    assert_eq!(listed_ids(&*store, &a).await, set(&ids(&[&t1, &t2])));

    let listed = list(&*store, &a).await;
    let t1_now = listed
        .iter()
        .find(|t| t.thread.thread_id == t1.thread_id)
        .map(|t| t.thread.members.clone());
    assert_eq!(
        t1_now,
        Some(vec![a.clone()]),
        "the listed thread is current"
    );

    store
        .remove_member(&t2.thread_id, &c)
        .await
        .unwrap_or_else(|e| panic!("remove_member: {e}"));
    assert!(list(&*store, &c).await.is_empty(), "c left its only thread");
}

/// Each listed thread carries the watermarks of every current member, zeros for
/// members who never acked.
pub async fn list_user_threads_has_every_members_receipts(store: Arc<dyn ThreadStore>) {
    let (a, b, c) = (unique_user("a"), unique_user("b"), unique_user("c"));
    let t = create(
        &*store,
        new_group("rcpt", &[a.clone(), b.clone(), c.clone()]),
    )
    .await;
    advance(&*store, &t.thread_id, &a, AckStatus::Read, 4).await;
    advance(&*store, &t.thread_id, &b, AckStatus::Delivered, 6).await;
    let listed = list(&*store, &c).await;
    assert_eq!(listed.len(), 1);
    let got: HashMap<UserId, Watermark> = listed[0].receipts.iter().cloned().collect();
    let want: HashMap<UserId, Watermark> = [
        (a.clone(), wm(4, 4)),
        (b.clone(), wm(6, 0)),
        (c.clone(), wm(0, 0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    assert_eq!(listed[0].receipts.len(), 3, "one receipt per member");

    let d = unique_user("d");
    store
        .add_members(&t.thread_id, std::slice::from_ref(&d))
        .await
        .unwrap_or_else(|e| panic!("add_members: {e}"));
    let listed = list(&*store, &a).await;
    let got: HashSet<UserId> = listed[0].receipts.iter().map(|r| r.0.clone()).collect();
    assert_eq!(got, set(&[a, b, c, d]), "a new member has a receipt too");
}

/// Watermarks move only forward, and `advanced` says whether the acked one moved.
pub async fn watermark_never_moves_backwards(store: Arc<dyn ThreadStore>) {
    let a = unique_user("a");
    let t = create(&*store, new_group("wm", std::slice::from_ref(&a)))
        .await
        .thread_id;
    let s = &*store;
    use AckStatus::{Delivered, Read};
    assert_eq!(advance(s, &t, &a, Delivered, 5).await, (wm(5, 0), true));
    assert_eq!(advance(s, &t, &a, Delivered, 3).await, (wm(5, 0), false));
    assert_eq!(advance(s, &t, &a, Delivered, 5).await, (wm(5, 0), false));
    assert_eq!(advance(s, &t, &a, Delivered, 7).await, (wm(7, 0), true));
    assert_eq!(advance(s, &t, &a, Read, 2).await, (wm(7, 2), true));
    assert_eq!(advance(s, &t, &a, Read, 1).await, (wm(7, 2), false));
    assert_eq!(advance(s, &t, &a, Read, 2).await, (wm(7, 2), false));
    assert_eq!(advance(s, &t, &a, Delivered, 6).await, (wm(7, 2), false));
    let listed = list(s, &a).await;
    assert_eq!(listed[0].receipts, vec![(a, wm(7, 2))]);
}

/// READ raises DELIVERED to at least the same seq; DELIVERED never lowers READ.
pub async fn read_implies_delivered(store: Arc<dyn ThreadStore>) {
    let (a, b) = (unique_user("a"), unique_user("b"));
    let t = create(&*store, new_group("rd", &[a.clone(), b.clone()]))
        .await
        .thread_id;
    let s = &*store;
    use AckStatus::{Delivered, Read};
    assert_eq!(advance(s, &t, &a, Read, 4).await, (wm(4, 4), true));
    assert_eq!(advance(s, &t, &a, Delivered, 4).await, (wm(4, 4), false));
    assert_eq!(advance(s, &t, &a, Delivered, 2).await, (wm(4, 4), false));
    assert_eq!(advance(s, &t, &a, Delivered, 9).await, (wm(9, 4), true));
    assert_eq!(advance(s, &t, &a, Read, 6).await, (wm(9, 6), true));
    assert_eq!(advance(s, &t, &a, Read, 12).await, (wm(12, 12), true));
    // Another user's watermark is separate.
    assert_eq!(advance(s, &t, &b, Delivered, 1).await, (wm(1, 0), true));
}

/// Many tasks advancing one watermark at once leave the maxima, with READ <= DELIVERED.
pub async fn concurrent_watermarks_keep_the_max(store: Arc<dyn ThreadStore>) {
    let a = unique_user("a");
    let t = create(&*store, new_group("wm-race", std::slice::from_ref(&a)))
        .await
        .thread_id;
    let mut tasks = Vec::new();
    for task in 0..CONCURRENT_TASKS {
        let store = store.clone();
        let (t, a) = (t.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..OPS_PER_TASK {
                // A scrambled but deterministic walk over 1..=200.
                let seq = ((task * 31 + i * 17) % 200 + 1) as u64;
                let status = if (task + i) % 3 == 0 {
                    AckStatus::Read
                } else {
                    AckStatus::Delivered
                };
                let (w, _) = advance(&*store, &t, &a, status, seq).await;
                assert!(w.read_seq <= w.delivered_seq, "{w:?}");
                assert!(w.delivered_seq >= seq, "{w:?} after acking {seq}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap_or_else(|e| panic!("ack task: {e}"));
    }
    let mut max_any = 0;
    let mut max_read = 0;
    for task in 0..CONCURRENT_TASKS {
        for i in 0..OPS_PER_TASK {
            let seq = ((task * 31 + i * 17) % 200 + 1) as u64;
            max_any = max_any.max(seq);
            if (task + i) % 3 == 0 {
                max_read = max_read.max(seq);
            }
        }
    }
    let listed = list(&*store, &a).await;
    assert_eq!(listed[0].receipts, vec![(a, wm(max_any, max_read))]);
}

crate::thread_store_tests!(@checks __testkit_list (ThreadStore));

/// `get_thread_now` is either never answered (`None`, the default) or always, and then
/// agrees with `get_thread`; what it returned is a snapshot that later membership
/// changes leave alone.
pub async fn get_thread_now_agrees_with_get_thread(store: Arc<dyn ThreadStore>) {
    let (a, b, c) = (unique_user("a"), unique_user("b"), unique_user("c"));
    let t = new_group("now", &[a.clone(), b.clone()]);
    let info = create(&*store, t.clone()).await;
    let Some(now) = store.get_thread_now(&t.thread_id) else {
        assert!(
            store
                .get_thread_now(&unique_thread("now-unknown"))
                .is_none(),
            "a store answers get_thread_now always or never"
        );
        return;
    };
    let shared = now
        .unwrap_or_else(|e| panic!("get_thread_now: {e}"))
        .expect("the created thread");
    assert_eq!(*shared, info, "get_thread_now gives what get_thread gives");
    let unknown = store.get_thread_now(&unique_thread("now-unknown"));
    assert!(
        matches!(unknown, Some(Ok(None))),
        "an unknown thread is Some(Ok(None)), got {unknown:?}"
    );
    store
        .add_members(&t.thread_id, std::slice::from_ref(&c))
        .await
        .unwrap_or_else(|e| panic!("add_members: {e}"));
    assert_eq!(*shared, info, "a thread already handed out does not change");
    let after = store.get_thread_now(&t.thread_id);
    let after = after
        .and_then(|r| r.ok())
        .flatten()
        .expect("the thread after the change");
    assert_eq!(after.members, vec![a.clone(), b.clone(), c]);
    assert_eq!(
        store.get_thread(&t.thread_id).await.ok().flatten().as_ref(),
        Some(&*after)
    );
    store
        .remove_member(&t.thread_id, &b)
        .await
        .unwrap_or_else(|e| panic!("remove_member: {e}"));
    assert_eq!(
        after.members.len(),
        3,
        "a thread already handed out does not change"
    );
    let last = store
        .get_thread_now(&t.thread_id)
        .and_then(|r| r.ok())
        .flatten()
        .expect("the thread after the removal");
    assert!(
        !last.is_member(&b),
        "a removed member is gone from later answers"
    );
}
