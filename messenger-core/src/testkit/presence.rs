//! [`Presence`] checks. Run them all with [`presence_tests!`](crate::presence_tests).
//!
//! The change stream of a shared backend carries other users' events too; the checks
//! only look at events of their own unique users. To show that no event was emitted, a
//! check makes a transition of a sentinel user afterwards and expects the sentinel's
//! event to come next.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;

use super::{unique_node, unique_session, unique_user, within};
use crate::ids::UserId;
use crate::model::{PresenceInfo, PresenceStatus};
use crate::time::now_ms;
use crate::traits::Presence;

fn online(user: &UserId) -> PresenceInfo {
    PresenceInfo {
        user_id: user.clone(),
        status: PresenceStatus::Online,
        last_seen: None,
    }
}

fn offline(user: &UserId, last_seen: Option<u64>) -> PresenceInfo {
    PresenceInfo {
        user_id: user.clone(),
        status: PresenceStatus::Offline,
        last_seen,
    }
}

async fn changes(p: &dyn Presence) -> BoxStream<'static, PresenceInfo> {
    p.changes().await.unwrap_or_else(|e| panic!("changes: {e}"))
}

/// The next event about one of `users`, skipping other users' events.
pub async fn next_event_for(
    stream: &mut BoxStream<'static, PresenceInfo>,
    users: &[&UserId],
) -> PresenceInfo {
    within("a presence change", async {
        loop {
            match stream.next().await {
                Some(ev) if users.contains(&&ev.user_id) => return ev,
                Some(_) => continue,
                None => panic!("the presence change stream ended"),
            }
        }
    })
    .await
}

async fn get1(p: &dyn Presence, user: &UserId) -> PresenceInfo {
    let mut got = p
        .get(std::slice::from_ref(user))
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(got.len(), 1);
    got.remove(0)
}

/// A user never seen is offline with no `last_seen`.
pub async fn unknown_user_is_offline(p: Arc<dyn Presence>) {
    let u = unique_user("ghost");
    assert_eq!(get1(&*p, &u).await, offline(&u, None));
}

/// First session: online (no `last_seen`) with an event; last session gone: offline with
/// the given `last_seen` and an event; online again clears `last_seen`.
pub async fn online_then_offline_with_last_seen(p: Arc<dyn Presence>) {
    let u = unique_user("u");
    let mut events = changes(&*p).await;
    let s = unique_session();
    p.set_online(&u, &s, unique_node())
        .await
        .unwrap_or_else(|e| panic!("set_online: {e}"));
    assert_eq!(get1(&*p, &u).await, online(&u));
    assert_eq!(next_event_for(&mut events, &[&u]).await, online(&u));

    let at = now_ms();
    p.set_offline(&u, &s, at)
        .await
        .unwrap_or_else(|e| panic!("set_offline: {e}"));
    assert_eq!(get1(&*p, &u).await, offline(&u, Some(at)));
    assert_eq!(
        next_event_for(&mut events, &[&u]).await,
        offline(&u, Some(at))
    );

    p.set_online(&u, &unique_session(), unique_node())
        .await
        .unwrap_or_else(|e| panic!("set_online: {e}"));
    assert_eq!(get1(&*p, &u).await, online(&u));
    assert_eq!(next_event_for(&mut events, &[&u]).await, online(&u));
}

/// With sessions on several nodes the user stays online until the last one goes.
pub async fn several_sessions_one_transition(p: Arc<dyn Presence>) {
    let u = unique_user("multi");
    let (s1, s2, s3) = (unique_session(), unique_session(), unique_session());
    let (n1, n2) = (unique_node(), unique_node());
    for (s, n) in [(&s1, n1), (&s2, n2), (&s3, n2)] {
        p.set_online(&u, s, n)
            .await
            .unwrap_or_else(|e| panic!("set_online: {e}"));
    }
    let at = now_ms();
    p.set_offline(&u, &s2, at)
        .await
        .unwrap_or_else(|e| panic!("set_offline: {e}"));
    assert_eq!(get1(&*p, &u).await, online(&u), "two sessions left");
    p.set_offline(&u, &unique_session(), at)
        .await
        .unwrap_or_else(|e| panic!("set_offline unknown: {e}"));
    assert_eq!(
        get1(&*p, &u).await,
        online(&u),
        "an unknown session changes nothing"
    );
    p.set_offline(&u, &s1, at)
        .await
        .unwrap_or_else(|e| panic!("set_offline: {e}"));
    assert_eq!(get1(&*p, &u).await, online(&u), "one session left");
    p.set_offline(&u, &s3, at + 1)
        .await
        .unwrap_or_else(|e| panic!("set_offline: {e}"));
    assert_eq!(get1(&*p, &u).await, offline(&u, Some(at + 1)));
}

/// Events come only on real transitions: a second session, a session leaving while
/// another stays, and a repeated offline emit nothing.
pub async fn events_only_on_transitions(p: Arc<dyn Presence>) {
    let u = unique_user("trans");
    let sentinel = unique_user("sentinel");
    let mut events = changes(&*p).await;
    let (s1, s2) = (unique_session(), unique_session());
    let node = unique_node();
    let ok = |r: crate::Result<()>| r.unwrap_or_else(|e| panic!("presence call: {e}"));
    ok(p.set_online(&u, &s1, node).await);
    ok(p.set_online(&u, &s2, unique_node()).await);
    ok(p.set_online(&u, &s2, unique_node()).await);
    ok(p.set_offline(&u, &s1, now_ms()).await);
    let at = now_ms();
    ok(p.set_offline(&u, &s2, at).await);
    ok(p.set_offline(&u, &s2, at + 5).await);
    ok(p.set_offline(&u, &unique_session(), at + 6).await);
    ok(p.set_online(&sentinel, &unique_session(), node).await);

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_event_for(&mut events, &[&u, &sentinel]).await);
    }
    assert_eq!(
        seen,
        vec![online(&u), offline(&u, Some(at)), online(&sentinel)],
        "exactly one event per transition"
    );
    assert_eq!(get1(&*p, &u).await, offline(&u, Some(at)), "last_seen kept");
}

/// `get` answers in input order.
pub async fn get_keeps_input_order(p: Arc<dyn Presence>) {
    let (a, b, c) = (unique_user("a"), unique_user("b"), unique_user("c"));
    let sb = unique_session();
    p.set_online(&a, &unique_session(), unique_node())
        .await
        .unwrap_or_else(|e| panic!("set_online: {e}"));
    p.set_online(&b, &sb, unique_node())
        .await
        .unwrap_or_else(|e| panic!("set_online: {e}"));
    p.set_offline(&b, &sb, 1234)
        .await
        .unwrap_or_else(|e| panic!("set_offline: {e}"));
    let got = p
        .get(&[c.clone(), a.clone(), b.clone(), a.clone()])
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(
        got,
        vec![
            offline(&c, None),
            online(&a),
            offline(&b, Some(1234)),
            online(&a)
        ]
    );
}

/// A new subscriber gets changes from now on, not earlier ones.
pub async fn changes_start_now(p: Arc<dyn Presence>) {
    let u = unique_user("late");
    let s = unique_session();
    p.set_online(&u, &s, unique_node())
        .await
        .unwrap_or_else(|e| panic!("set_online: {e}"));
    let mut events = changes(&*p).await;
    let at = now_ms();
    p.set_offline(&u, &s, at)
        .await
        .unwrap_or_else(|e| panic!("set_offline: {e}"));
    assert_eq!(
        next_event_for(&mut events, &[&u]).await,
        offline(&u, Some(at)),
        "the earlier online event is not replayed"
    );
}

/// Every subscriber gets every change.
pub async fn every_subscriber_gets_changes(p: Arc<dyn Presence>) {
    let u = unique_user("fan");
    let mut first = changes(&*p).await;
    let mut second = changes(&*p).await;
    p.set_online(&u, &unique_session(), unique_node())
        .await
        .unwrap_or_else(|e| panic!("set_online: {e}"));
    assert_eq!(next_event_for(&mut first, &[&u]).await, online(&u));
    assert_eq!(next_event_for(&mut second, &[&u]).await, online(&u));
}

crate::presence_tests!(@checks __testkit_list (Presence));
