//! [`SessionDirectory`] checks. Run them all with
//! [`session_directory_tests!`](crate::session_directory_tests).

use std::collections::HashSet;
use std::sync::Arc;

use super::{unique_node, unique_session, unique_user, CONCURRENT_TASKS, OPS_PER_TASK};
use crate::ids::{NodeId, UserId};
use crate::model::SessionEntry;
use crate::traits::SessionDirectory;

/// A fresh session of `user` on `node`.
pub fn new_entry(user: &UserId, node: NodeId) -> SessionEntry {
    SessionEntry {
        user_id: user.clone(),
        session_id: unique_session(),
        node,
    }
}

async fn register(dir: &dyn SessionDirectory, e: &SessionEntry) {
    dir.register(e)
        .await
        .unwrap_or_else(|err| panic!("register {e:?}: {err}"));
}

async fn unregister(dir: &dyn SessionDirectory, e: &SessionEntry) {
    dir.unregister(e)
        .await
        .unwrap_or_else(|err| panic!("unregister {e:?}: {err}"));
}

async fn lookup(dir: &dyn SessionDirectory, users: &[UserId]) -> Vec<HashSet<SessionEntry>> {
    let got = dir
        .lookup(users)
        .await
        .unwrap_or_else(|e| panic!("lookup: {e}"));
    assert_eq!(got.len(), users.len(), "one answer per user");
    for (u, entries) in users.iter().zip(&got) {
        for e in entries {
            assert_eq!(&e.user_id, u, "an entry of another user");
        }
        let unique: HashSet<&SessionEntry> = entries.iter().collect();
        assert_eq!(unique.len(), entries.len(), "a session listed twice");
    }
    got.into_iter().map(|v| v.into_iter().collect()).collect()
}

fn set(entries: &[&SessionEntry]) -> HashSet<SessionEntry> {
    entries.iter().map(|e| (*e).clone()).collect()
}

/// A user with no session has an empty list.
pub async fn unknown_user_has_no_sessions(dir: Arc<dyn SessionDirectory>) {
    let got = lookup(&*dir, &[unique_user("nobody")]).await;
    assert_eq!(got, vec![HashSet::new()]);
    assert!(dir.lookup(&[]).await.is_ok_and(|v| v.is_empty()));
}

/// One user with several sessions on several nodes has all of them, with their nodes.
pub async fn sessions_on_several_nodes(dir: Arc<dyn SessionDirectory>) {
    let a = unique_user("a");
    let (n1, n2) = (unique_node(), unique_node());
    let e1 = new_entry(&a, n1);
    let e2 = new_entry(&a, n2);
    let e3 = new_entry(&a, n2);
    for e in [&e1, &e2, &e3] {
        register(&*dir, e).await;
    }
    let got = lookup(&*dir, &[a]).await;
    assert_eq!(got, vec![set(&[&e1, &e2, &e3])]);
}

/// Unregistering removes that session only; an unknown session is ignored.
pub async fn unregister_removes_only_that_session(dir: Arc<dyn SessionDirectory>) {
    let (a, b) = (unique_user("a"), unique_user("b"));
    let node = unique_node();
    let a1 = new_entry(&a, node);
    let a2 = new_entry(&a, unique_node());
    let b1 = new_entry(&b, node);
    for e in [&a1, &a2, &b1] {
        register(&*dir, e).await;
    }
    unregister(&*dir, &a1).await;
    let got = lookup(&*dir, &[a.clone(), b.clone()]).await;
    assert_eq!(got, vec![set(&[&a2]), set(&[&b1])]);
    unregister(&*dir, &a1).await; // again: ignored
    unregister(&*dir, &new_entry(&a, node)).await; // never registered: ignored
    unregister(&*dir, &new_entry(&unique_user("c"), node)).await; // unknown user
    assert_eq!(
        lookup(&*dir, std::slice::from_ref(&a)).await,
        vec![set(&[&a2])]
    );
    unregister(&*dir, &a2).await;
    assert_eq!(
        lookup(&*dir, &[a, b]).await,
        vec![HashSet::new(), set(&[&b1])]
    );
}

/// Registering the same session twice lists it once.
pub async fn register_twice_lists_once(dir: Arc<dyn SessionDirectory>) {
    let a = unique_user("a");
    let e = new_entry(&a, unique_node());
    register(&*dir, &e).await;
    register(&*dir, &e).await;
    let got = dir
        .lookup(&[a])
        .await
        .unwrap_or_else(|err| panic!("lookup: {err}"));
    assert_eq!(got, vec![vec![e]]);
}

/// Answers come in input order, including unknown and repeated users.
pub async fn lookup_keeps_input_order(dir: Arc<dyn SessionDirectory>) {
    let users: Vec<UserId> = (0..5).map(|i| unique_user(&format!("u{i}"))).collect();
    let node = unique_node();
    let mut entries = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mine: Vec<SessionEntry> = (0..i).map(|_| new_entry(u, node)).collect();
        for e in &mine {
            register(&*dir, e).await;
        }
        entries.push(mine.into_iter().collect::<HashSet<_>>());
    }
    let order = [4usize, 0, 2, 2, 1, 3];
    let query: Vec<UserId> = order.iter().map(|&i| users[i].clone()).collect();
    let got = lookup(&*dir, &query).await;
    let want: Vec<HashSet<SessionEntry>> = order.iter().map(|&i| entries[i].clone()).collect();
    assert_eq!(got, want);
}

/// Many tasks registering sessions of one user at once: all of them are listed.
pub async fn concurrent_registrations(dir: Arc<dyn SessionDirectory>) {
    let a = unique_user("a");
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENT_TASKS {
        let dir = dir.clone();
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let node = unique_node();
            let mut mine = Vec::new();
            for _ in 0..OPS_PER_TASK / 5 {
                let e = new_entry(&a, node);
                register(&*dir, &e).await;
                mine.push(e);
            }
            mine
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("register task: {e}")));
    }
    assert_eq!(lookup(&*dir, &[a]).await, vec![all]);
}

crate::session_directory_tests!(@checks __testkit_list (SessionDirectory));
