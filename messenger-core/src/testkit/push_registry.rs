//! [`PushRegistry`] checks. Run them all with [`push_registry_tests!`](crate::push_registry_tests).

use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{unique_suffix, unique_thread, unique_user, CONCURRENT_TASKS};
use crate::ids::{ThreadId, UserId};
use crate::push::{PushPlatform, PushRegistration, ThreadMute, WebPushKeys, WebPushSubscription};
use crate::time::now_ms;
use crate::traits::PushRegistry;

/// A fresh, valid APNs token (64 hex digits), unique to this run.
pub fn unique_apns_token() -> String {
    let d = Sha256::digest(format!("apns-{}", unique_suffix()).as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A valid APNs registration of a fresh token for `user`, updated at `at`.
pub fn apns_registration(user: &UserId, at: u64) -> PushRegistration {
    let mut r = PushRegistration::validate(
        user.clone(),
        PushPlatform::Apns,
        Some(unique_apns_token()),
        None,
        Some("com.example.chat".into()),
        Some("en-GB".into()),
        false,
        at,
    )
    .unwrap_or_else(|e| panic!("testkit made a bad registration: {e}"));
    r.updated_at = at;
    r
}

/// The same registration as `r`, held by `user` and refreshed at `at`.
pub fn reregistered(r: &PushRegistration, user: &UserId, at: u64) -> PushRegistration {
    let mut r = r.clone();
    r.user_id = user.clone();
    r.created_at = at;
    r.updated_at = at;
    r
}

async fn register(store: &dyn PushRegistry, r: PushRegistration, max: usize) -> PushRegistration {
    store
        .register_target(r, max)
        .await
        .unwrap_or_else(|e| panic!("register_target: {e}"))
}

async fn ids(store: &dyn PushRegistry, user: &UserId) -> Vec<String> {
    store
        .list_targets(user)
        .await
        .unwrap_or_else(|e| panic!("list_targets: {e}"))
        .into_iter()
        .map(|r| r.target_id)
        .collect()
}

async fn targets_for(store: &dyn PushRegistry, user: &UserId, thread: &ThreadId) -> Vec<String> {
    store
        .push_targets(user, thread)
        .await
        .unwrap_or_else(|e| panic!("push_targets: {e}"))
        .deliverable(now_ms())
        .into_iter()
        .map(|r| r.target_id)
        .collect()
}

/// Registered targets come back with every field, oldest first; other users see none.
pub async fn register_and_list(store: Arc<dyn PushRegistry>) {
    let (a, b) = (unique_user("a"), unique_user("b"));
    let t1 = apns_registration(&a, 1_000);
    let mut t2 = apns_registration(&a, 2_000);
    t2.created_at = 2_000;
    t2.sandbox = true;
    let s1 = register(&*store, t1.clone(), 10).await;
    assert_eq!(s1, t1, "register_target returns what it stored");
    register(&*store, t2.clone(), 10).await;
    let listed = store
        .list_targets(&a)
        .await
        .unwrap_or_else(|e| panic!("list_targets: {e}"));
    assert_eq!(listed, vec![t1, t2], "oldest first, every field kept");
    assert!(ids(&*store, &b).await.is_empty(), "another user has none");
    assert!(
        ids(&*store, &unique_user("nobody")).await.is_empty(),
        "an unknown user has none"
    );
}

/// A Web Push subscription keeps its endpoint and keys.
pub async fn webpush_keys_round_trip(store: Arc<dyn PushRegistry>) {
    let a = unique_user("a");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut point = vec![4u8];
    point.extend([9u8; 64]);
    let reg = PushRegistration::validate(
        a.clone(),
        PushPlatform::WebPush,
        None,
        Some(WebPushSubscription {
            endpoint: format!("https://push.example/sub/{}", unique_suffix()),
            keys: WebPushKeys {
                p256dh: b64(&point),
                auth: b64(&[3u8; 16]),
            },
        }),
        None,
        Some("de".into()),
        false,
        5,
    )
    .unwrap_or_else(|e| panic!("valid subscription: {e}"));
    register(&*store, reg.clone(), 10).await;
    let got = store
        .push_targets(&a, &unique_thread("t"))
        .await
        .unwrap_or_else(|e| panic!("push_targets: {e}"));
    assert_eq!(got.targets, vec![reg]);
    assert_eq!(got.mute, None);
}

/// Registering a target again refreshes it: one entry, new fields, first `created_at`.
pub async fn reregister_refreshes(store: Arc<dyn PushRegistry>) {
    let a = unique_user("a");
    let r = apns_registration(&a, 1_000);
    register(&*store, r.clone(), 10).await;
    let mut again = reregistered(&r, &a, 5_000);
    again.locale = Some("fr-FR".into());
    let stored = register(&*store, again.clone(), 10).await;
    assert_eq!(stored.created_at, 1_000, "created_at stays the first one's");
    assert_eq!(stored.updated_at, 5_000);
    let listed = store
        .list_targets(&a)
        .await
        .unwrap_or_else(|e| panic!("list_targets: {e}"));
    assert_eq!(listed.len(), 1, "one registration per target: {listed:?}");
    assert_eq!(listed[0].locale.as_deref(), Some("fr-FR"));
    assert_eq!(listed[0].created_at, 1_000);
}

/// A user removes only their own targets.
pub async fn unregister_only_own(store: Arc<dyn PushRegistry>) {
    let (a, b) = (unique_user("a"), unique_user("b"));
    let r = apns_registration(&a, 1);
    register(&*store, r.clone(), 10).await;
    let by_b = store
        .unregister_target(&b, &r.target_id)
        .await
        .unwrap_or_else(|e| panic!("unregister_target: {e}"));
    assert!(!by_b, "another user's target is not removed");
    assert_eq!(ids(&*store, &a).await, vec![r.target_id.clone()]);
    let by_a = store
        .unregister_target(&a, &r.target_id)
        .await
        .unwrap_or_else(|e| panic!("unregister_target: {e}"));
    assert!(by_a);
    assert!(ids(&*store, &a).await.is_empty());
    let again = store
        .unregister_target(&a, &r.target_id)
        .await
        .unwrap_or_else(|e| panic!("unregister_target: {e}"));
    assert!(!again, "removing twice reports nothing removed");
}

/// A device registered by another user moves to that user: the first no longer lists
/// it nor gets it for a notification, and cannot remove it.
pub async fn target_moves_to_the_new_user(store: Arc<dyn PushRegistry>) {
    let (a, b) = (unique_user("a"), unique_user("b"));
    let thread = unique_thread("t");
    let r = apns_registration(&a, 1);
    register(&*store, r.clone(), 10).await;
    register(&*store, reregistered(&r, &b, 2), 10).await;
    assert!(ids(&*store, &a).await.is_empty(), "a lost the device");
    assert!(targets_for(&*store, &a, &thread).await.is_empty());
    assert_eq!(ids(&*store, &b).await, vec![r.target_id.clone()]);
    assert_eq!(
        targets_for(&*store, &b, &thread).await,
        vec![r.target_id.clone()]
    );
    let by_a = store
        .unregister_target(&a, &r.target_id)
        .await
        .unwrap_or_else(|e| panic!("unregister_target: {e}"));
    assert!(!by_a, "a cannot remove b's device");
    assert_eq!(ids(&*store, &b).await, vec![r.target_id]);
}

/// Over the cap, the least recently updated targets go; a refreshed one stays.
pub async fn cap_drops_least_recently_updated(store: Arc<dyn PushRegistry>) {
    let a = unique_user("a");
    let regs: Vec<PushRegistration> = (0..3).map(|i| apns_registration(&a, 100 + i)).collect();
    for r in &regs {
        register(&*store, r.clone(), 3).await;
    }
    // Refresh the oldest: now the second is the least recently updated.
    register(&*store, reregistered(&regs[0], &a, 500), 3).await;
    let fourth = apns_registration(&a, 600);
    register(&*store, fourth.clone(), 3).await;
    let mut got = ids(&*store, &a).await;
    got.sort();
    let mut want = vec![
        regs[0].target_id.clone(),
        regs[2].target_id.clone(),
        fourth.target_id,
    ];
    want.sort();
    assert_eq!(got, want, "the least recently updated target was dropped");
}

/// Mutes are set, replaced, listed and cleared per user and thread.
pub async fn mutes_set_list_clear(store: Arc<dyn PushRegistry>) {
    let (a, b) = (unique_user("a"), unique_user("b"));
    let (t1, t2) = (unique_thread("m1"), unique_thread("m2"));
    let later = now_ms() + 3_600_000;
    let set = |t: &ThreadId, until| ThreadMute {
        thread_id: t.clone(),
        until,
    };
    store
        .set_mute(&a, set(&t1, None))
        .await
        .unwrap_or_else(|e| panic!("set_mute: {e}"));
    store
        .set_mute(&a, set(&t2, Some(later)))
        .await
        .unwrap_or_else(|e| panic!("set_mute: {e}"));
    let mut listed = store
        .list_mutes(&a)
        .await
        .unwrap_or_else(|e| panic!("list_mutes: {e}"));
    listed.sort_by(|x, y| x.thread_id.cmp(&y.thread_id));
    let mut want = vec![set(&t1, None), set(&t2, Some(later))];
    want.sort_by(|x, y| x.thread_id.cmp(&y.thread_id));
    assert_eq!(listed, want);
    assert!(store
        .list_mutes(&b)
        .await
        .unwrap_or_else(|e| panic!("list_mutes: {e}"))
        .is_empty());
    // Replacing: a mute for ever becomes a timed one.
    store
        .set_mute(&a, set(&t1, Some(later + 1)))
        .await
        .unwrap_or_else(|e| panic!("set_mute: {e}"));
    let got = store
        .push_targets(&a, &t1)
        .await
        .unwrap_or_else(|e| panic!("push_targets: {e}"));
    assert_eq!(got.mute, Some(set(&t1, Some(later + 1))));
    assert!(store
        .clear_mute(&a, &t1)
        .await
        .unwrap_or_else(|e| panic!("clear_mute: {e}")));
    assert!(!store
        .clear_mute(&a, &t1)
        .await
        .unwrap_or_else(|e| panic!("clear_mute: {e}")));
    assert!(!store
        .clear_mute(&b, &t2)
        .await
        .unwrap_or_else(|e| panic!("clear_mute: {e}")));
    let left = store
        .list_mutes(&a)
        .await
        .unwrap_or_else(|e| panic!("list_mutes: {e}"));
    assert_eq!(left, vec![set(&t2, Some(later))]);
}

/// A muted thread gives no targets until the mute ends; other threads are unaffected.
pub async fn muted_thread_has_no_targets(store: Arc<dyn PushRegistry>) {
    let a = unique_user("a");
    let (muted, expired, other) = (unique_thread("m"), unique_thread("x"), unique_thread("o"));
    let r = apns_registration(&a, 1);
    register(&*store, r.clone(), 10).await;
    store
        .set_mute(
            &a,
            ThreadMute {
                thread_id: muted.clone(),
                until: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("set_mute: {e}"));
    store
        .set_mute(
            &a,
            ThreadMute {
                thread_id: expired.clone(),
                until: Some(now_ms().saturating_sub(1_000)),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("set_mute: {e}"));
    assert!(targets_for(&*store, &a, &muted).await.is_empty());
    assert_eq!(
        targets_for(&*store, &a, &expired).await,
        vec![r.target_id.clone()],
        "an expired mute no longer holds"
    );
    assert_eq!(targets_for(&*store, &a, &other).await, vec![r.target_id]);
}

/// Many users registering one device at once: afterwards exactly one of them holds
/// it, and only that one gets it for a notification.
pub async fn concurrent_claims_leave_one_holder(store: Arc<dyn PushRegistry>) {
    let base = apns_registration(&unique_user("seed"), 1);
    let users: Vec<UserId> = (0..CONCURRENT_TASKS)
        .map(|i| unique_user(&format!("c{i}")))
        .collect();
    let tasks = users.iter().enumerate().map(|(i, u)| {
        let (store, r) = (store.clone(), reregistered(&base, u, 10 + i as u64));
        tokio::spawn(async move { register(&*store, r, 10).await })
    });
    for t in futures::future::join_all(tasks).await {
        t.unwrap_or_else(|e| panic!("task: {e}"));
    }
    let thread = unique_thread("t");
    let mut holders = Vec::new();
    for u in &users {
        let listed = ids(&*store, u).await;
        let pushed = targets_for(&*store, u, &thread).await;
        assert_eq!(listed, pushed, "{u}: list and push agree");
        if !listed.is_empty() {
            holders.push(u.clone());
        }
    }
    assert_eq!(holders.len(), 1, "one holder, got {holders:?}");
}

crate::push_registry_tests!(@checks __testkit_list (PushRegistry));
