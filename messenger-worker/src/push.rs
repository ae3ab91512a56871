//! The push stage: one notification per offline member of a `message.created`, sent
//! through the [`PushService`], in each thread's event order.
//!
//! A failed read of the push registry (the servers' HBase down or timing out) is not a
//! reason to give a notification up: nothing was sent yet, and the registry comes
//! back. The notification waits and the read is tried again with jittered exponential
//! backoff, for as long as it takes; the partition's offset does not pass the event
//! meanwhile. Only a failure that another try cannot mend (a corrupt registration, a
//! refused request) dead-letters it. Later events of the same thread wait behind it
//! ([`Turns`]), so a thread's notifications keep their order; other threads' go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use messenger_core::events::MessageCreated;
use messenger_core::time::now_ms;
use messenger_core::UserId;
use messenger_push::{Notification, Outcome, PushService, PushTarget};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// A record for the dead-letter topic.
pub(crate) struct DeadLetter {
    /// `push`, `webhook`, `undecodable` (the `kind` label of `dead_lettered_total`).
    pub kind: &'static str,
    /// The record key (the thread id for push).
    pub key: String,
    /// The record.
    pub record: Value,
}

struct TurnMap {
    tails: HashMap<String, (u64, oneshot::Receiver<()>)>,
    next: u64,
}

/// Per-key (per-thread) order of the push stage: each event takes a [`Turn`] in the
/// order it was read, and its pushes start only once the turn before it (the same
/// thread's previous event) has ended. Events of other threads never wait.
pub(crate) struct Turns {
    map: Mutex<TurnMap>,
}

impl Turns {
    pub fn new() -> Arc<Turns> {
        Arc::new(Turns {
            map: Mutex::new(TurnMap {
                tails: HashMap::new(),
                next: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TurnMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next turn of `key`. Take turns in the events' order (the consumer loop does,
    /// before it hands the event to a task of its own).
    pub fn take(self: &Arc<Self>, key: &str) -> Turn {
        let (done, rx) = oneshot::channel();
        let mut g = self.lock();
        g.next += 1;
        let gen = g.next;
        let prev = g.tails.insert(key.to_owned(), (gen, rx)).map(|(_, r)| r);
        Turn {
            turns: self.clone(),
            key: key.to_owned(),
            gen,
            prev,
            done: Some(done),
        }
    }

    /// Keys with a turn not yet ended.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().tails.len()
    }
}

/// One event's place in its thread's order; dropping it lets the next one go.
pub(crate) struct Turn {
    turns: Arc<Turns>,
    key: String,
    gen: u64,
    prev: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// Waits until the previous turn of the same key has ended.
    pub async fn wait(&mut self) {
        if let Some(prev) = self.prev.take() {
            // Err: the previous turn's sender was dropped, which is how it ends.
            let _ = prev.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        {
            let mut g = self.turns.lock();
            if g.tails
                .get(&self.key)
                .is_some_and(|(gen, _)| *gen == self.gen)
            {
                g.tails.remove(&self.key);
            }
        }
        // Dropped before its own wait (a task that ended early): the next turn must
        // still not overtake the previous one, so the hand-over waits for it.
        if let (Some(prev), Some(done)) = (self.prev.take(), self.done.take()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = prev.await;
                    drop(done);
                });
            }
        }
    }
}

/// Logs an outage of the push registry once, and its end.
struct Outage {
    /// When the last "cannot read" warning was logged, while the registry is failing.
    down_since_warned: Mutex<Option<Instant>>,
}

impl Outage {
    fn failed(&self, error: &messenger_core::Error, delay: Duration) {
        let mut g = self
            .down_since_warned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if g.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            *g = Some(Instant::now());
            tracing::warn!(%error, retry_in = ?delay,
                "cannot read the push registry (users' push targets and mutes): \
                 notifications wait and are tried again with backoff, none is dropped or \
                 dead-lettered; check the registry's store (hbase.address)");
        } else {
            tracing::debug!(%error, retry_in = ?delay, "push registry read failed again");
        }
    }

    fn answered(&self, failed_reads: u64) {
        let was_down = self
            .down_since_warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        if was_down {
            tracing::info!(
                failed_reads,
                "the push registry answers again: waiting notifications are sent"
            );
        }
    }
}

/// Decrements the waiting gauge however the wait ends.
struct Waiting<'a>(&'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.push_registry_waiting.dec();
    }
}

/// The push stage of the worker (see the module docs).
pub(crate) struct PushStage {
    service: PushService,
    metrics: Arc<Metrics>,
    backoff: ExponentialBuilder,
    outage: Outage,
    turns: Arc<Turns>,
}

impl PushStage {
    /// First delay before reading the registry again.
    pub const MIN_DELAY: Duration = Duration::from_millis(100);
    /// Longest delay between tries: how soon after the registry is back notifications
    /// move again.
    pub const MAX_DELAY: Duration = Duration::from_secs(5);

    pub fn new(service: PushService, metrics: Arc<Metrics>) -> PushStage {
        PushStage::with_delays(service, metrics, Self::MIN_DELAY, Self::MAX_DELAY)
    }

    pub fn with_delays(
        service: PushService,
        metrics: Arc<Metrics>,
        min: Duration,
        max: Duration,
    ) -> PushStage {
        PushStage {
            service,
            metrics,
            backoff: ExponentialBuilder::default()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
            outage: Outage {
                down_since_warned: Mutex::new(None),
            },
            turns: Turns::new(),
        }
    }

    /// The next turn of `thread` (the event log's record key). Take it in the events'
    /// order.
    pub fn turn(&self, thread: &str) -> Turn {
        self.turns.take(thread)
    }

    #[cfg(test)]
    pub fn service(&self) -> &PushService {
        &self.service
    }

    /// Notifies `recipients` of `m` once `turn` comes (the thread's earlier events are
    /// through this stage; `None`: at once), and returns what must be dead-lettered.
    pub async fn notify(
        &self,
        turn: Option<&mut Turn>,
        m: &MessageCreated,
        recipients: Vec<UserId>,
    ) -> Vec<DeadLetter> {
        if let Some(turn) = turn {
            turn.wait().await;
        }
        let work = recipients.into_iter().map(|user| {
            let n = Notification::new(
                user,
                m.thread_id.clone(),
                m.message_id,
                m.seq,
                m.sender_id.clone(),
                &m.text,
                m.sent_at,
            );
            self.push_one(n)
        });
        futures::future::join_all(work)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The user's targets, read again after transient failures for as long as it takes;
    /// `Err` only for a failure another read cannot mend.
    async fn targets(&self, n: &Notification) -> Result<Vec<PushTarget>, messenger_core::Error> {
        let mut delays = None;
        let mut failed = 0u64;
        let mut waiting = None;
        loop {
            match self.service.targets(n).await {
                Ok(t) => {
                    if failed > 0 {
                        self.outage.answered(failed);
                    }
                    return Ok(t);
                }
                Err(e) if e.is_transient() => {
                    failed += 1;
                    self.metrics.push_registry_retries.inc();
                    if waiting.is_none() {
                        self.metrics.push_registry_waiting.inc();
                        waiting = Some(Waiting(&self.metrics));
                    }
                    let d = delays
                        .get_or_insert_with(|| self.backoff.build())
                        .next()
                        .unwrap_or(Self::MAX_DELAY);
                    self.outage.failed(&e, d);
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn push_one(&self, n: Notification) -> Vec<DeadLetter> {
        let key = n.thread_id.as_str().to_string();
        let targets = match self.targets(&n).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(user = %n.user_id, thread = %n.thread_id, error = %e,
                    "the push registry refused a read for good: the notification is \
                     dead-lettered");
                let record = serde_json::json!({
                    "kind": "push", "failed_at": now_ms(),
                    "error": format!("target directory: {e}"), "notification": n,
                });
                return vec![DeadLetter {
                    kind: "push",
                    key,
                    record,
                }];
            }
        };
        let report = self.service.deliver_to(&n, targets).await;
        let mut dead = Vec::new();
        for (t, o) in &report.outcomes {
            self.metrics
                .pushes
                .get_or_create(&vec![("outcome", o.label().to_string())])
                .inc();
            if !matches!(o, Outcome::Delivered | Outcome::TargetGone) {
                let record = serde_json::json!({
                    "kind": "push",
                    "failed_at": now_ms(),
                    "error": format!("{o:?}"),
                    "target": t,
                    "notification": n,
                });
                dead.push(DeadLetter {
                    kind: "push",
                    key: key.clone(),
                    record,
                });
            }
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use async_trait::async_trait;
    use messenger_core::model::ThreadKind;
    use messenger_core::push::{PushPlatform, PushRegistration, PushTargets, ThreadMute};
    use messenger_core::{Error, MessageId, PushRegistry, Result, ThreadId};
    use messenger_push::{Platform, PushProvider, RegistryDirectory};
    use messenger_storage_mem::MemPushRegistry;

    /// The memory registry behind a switch: reads of the chosen (user, thread) pairs
    /// fail with `kind` while the switch is on (a store that is down, or a region of
    /// it).
    struct Failing {
        inner: MemPushRegistry,
        failing: Mutex<HashSet<(String, String)>>,
        on: AtomicBool,
        permanent: bool,
        failures: AtomicU64,
    }

    impl Failing {
        fn new(permanent: bool) -> Arc<Failing> {
            Arc::new(Failing {
                inner: MemPushRegistry::new(),
                failing: Mutex::new(HashSet::new()),
                on: AtomicBool::new(true),
                permanent,
                failures: AtomicU64::new(0),
            })
        }

        fn fail(&self, user: &str, thread: &str) {
            self.failing
                .lock()
                .expect("lock")
                .insert((user.into(), thread.into()));
        }
    }

    #[async_trait]
    impl PushRegistry for Failing {
        async fn register_target(
            &self,
            reg: PushRegistration,
            max: usize,
        ) -> Result<PushRegistration> {
            self.inner.register_target(reg, max).await
        }
        async fn unregister_target(&self, user: &UserId, target_id: &str) -> Result<bool> {
            self.inner.unregister_target(user, target_id).await
        }
        async fn list_targets(&self, user: &UserId) -> Result<Vec<PushRegistration>> {
            self.inner.list_targets(user).await
        }
        async fn set_mute(&self, user: &UserId, mute: ThreadMute) -> Result<()> {
            self.inner.set_mute(user, mute).await
        }
        async fn clear_mute(&self, user: &UserId, thread: &ThreadId) -> Result<bool> {
            self.inner.clear_mute(user, thread).await
        }
        async fn list_mutes(&self, user: &UserId) -> Result<Vec<ThreadMute>> {
            self.inner.list_mutes(user).await
        }
        async fn push_targets(&self, user: &UserId, thread: &ThreadId) -> Result<PushTargets> {
            let key = (user.as_str().to_string(), thread.as_str().to_string());
            if self.on.load(Ordering::SeqCst) && self.failing.lock().expect("lock").contains(&key) {
                self.failures.fetch_add(1, Ordering::SeqCst);
                return Err(if self.permanent {
                    Error::internal("corrupt registration row")
                } else {
                    Error::unavailable("HBase Thrift2 get: transport")
                });
            }
            self.inner.push_targets(user, thread).await
        }
    }

    /// Records what it is asked to send, in order: (user, thread, seq).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String, u64)>>);

    #[async_trait]
    impl PushProvider for Recorder {
        fn platform(&self) -> Platform {
            Platform::Apns
        }
        async fn send(&self, n: &Notification, targets: &[PushTarget]) -> Vec<Outcome> {
            self.0.lock().expect("lock").push((
                n.user_id.as_str().into(),
                n.thread_id.as_str().into(),
                n.seq,
            ));
            targets.iter().map(|_| Outcome::Delivered).collect()
        }
    }

    impl Recorder {
        fn sent(&self) -> Vec<(String, String, u64)> {
            self.0.lock().expect("lock").clone()
        }
    }

    fn uid(s: &str) -> UserId {
        UserId::new(s).expect("user")
    }

    async fn stage(registry: Arc<Failing>, users: &[&str]) -> (Arc<PushStage>, Arc<Recorder>) {
        for (i, u) in users.iter().enumerate() {
            let reg = PushRegistration::validate(
                uid(u),
                PushPlatform::Apns,
                Some(format!("{:064x}", i + 1)),
                None,
                Some("com.example.chat".into()),
                None,
                false,
                now_ms(),
            )
            .expect("registration");
            registry.register_target(reg, 10).await.expect("register");
        }
        let recorder = Arc::new(Recorder::default());
        let service = PushService::new(Arc::new(RegistryDirectory::new(registry)))
            .with_provider(recorder.clone());
        let metrics = Metrics::new(Some(service.metrics()));
        let stage = PushStage::with_delays(
            service,
            metrics,
            Duration::from_millis(1),
            Duration::from_millis(20),
        );
        (Arc::new(stage), recorder)
    }

    fn created(thread: &str, seq: u64, offline: &[&str]) -> MessageCreated {
        MessageCreated {
            thread_id: ThreadId::new(thread).expect("thread"),
            thread_kind: ThreadKind::Group,
            message_id: MessageId(seq),
            seq,
            sender_id: uid("alice"),
            text: format!("m{seq}"),
            sent_at: 0,
            member_count: 3,
            offline: offline.iter().map(|u| uid(u)).collect(),
            offline_known: true,
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// bob's registry row of thread g:1 cannot be read (the store is down for it):
    /// his notification waits and is retried, never dead-lettered; carol's in the same
    /// thread, one event later, waits behind it (thread order); dave's in another
    /// thread goes at once. When the store answers again everything is sent, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_outage_delays_notifications_in_thread_order_and_loses_none() {
        let registry = Failing::new(false);
        registry.fail("bob", "g:1");
        let (stage, sent) = stage(registry.clone(), &["bob", "carol", "dave"]).await;
        let events = [
            ("g:1", created("g:1", 1, &["bob"])),
            ("g:1", created("g:1", 2, &["carol"])),
            ("g:2", created("g:2", 1, &["dave"])),
        ];
        let mut tasks = Vec::new();
        for (key, m) in events {
            // Turns are taken in the read order, as the consumer loop does.
            let mut turn = stage.turn(key);
            let stage = stage.clone();
            tasks.push(tokio::spawn(async move {
                let recipients = m.offline.clone();
                let dead = stage.notify(Some(&mut turn), &m, recipients).await;
                drop(turn);
                dead.len()
            }));
        }
        until("dave's push and bob's third failed read", || {
            sent.sent().iter().any(|s| s.0 == "dave")
                && registry.failures.load(Ordering::SeqCst) >= 3
        })
        .await;
        assert_eq!(
            sent.sent(),
            vec![("dave".to_string(), "g:2".to_string(), 1)],
            "only the other thread's notification went out; carol's waits behind bob's"
        );
        assert!(stage.metrics.push_registry_retries.get() >= 3);
        assert_eq!(stage.metrics.push_registry_waiting.get(), 1);

        registry.on.store(false, Ordering::SeqCst);
        let mut dead = 0;
        for t in tasks {
            dead += t.await.expect("task");
        }
        assert_eq!(dead, 0, "a transient registry failure dead-letters nothing");
        let g1: Vec<_> = sent
            .sent()
            .into_iter()
            .filter(|s| s.1 == "g:1")
            .map(|s| (s.0, s.2))
            .collect();
        assert_eq!(
            g1,
            vec![("bob".to_string(), 1), ("carol".to_string(), 2)],
            "thread order kept, each once"
        );
        assert_eq!(stage.metrics.push_registry_waiting.get(), 0);
        assert_eq!(
            stage
                .service()
                .stats()
                .notifications
                .load(Ordering::Relaxed),
            3,
            "each notification counted once, retries not"
        );
        assert_eq!(stage.turns.len(), 0, "no turn left behind");
    }

    /// A failure another read cannot mend (`internal`: a corrupt row) is dead-lettered
    /// at once with what failed; no retry.
    #[tokio::test]
    async fn a_permanent_registry_failure_is_dead_lettered() {
        let registry = Failing::new(true);
        registry.fail("bob", "g:1");
        let (stage, sent) = stage(registry.clone(), &["bob"]).await;
        let mut turn = stage.turn("g:1");
        let m = created("g:1", 1, &["bob"]);
        let dead = stage.notify(Some(&mut turn), &m, m.offline.clone()).await;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].kind, "push");
        assert_eq!(dead[0].key, "g:1");
        let error = dead[0].record["error"].as_str().expect("error");
        assert!(error.contains("corrupt registration row"), "{error}");
        assert_eq!(dead[0].record["notification"]["user_id"], "bob");
        assert_eq!(registry.failures.load(Ordering::SeqCst), 1, "not retried");
        assert_eq!(stage.metrics.push_registry_retries.get(), 0);
        assert!(sent.sent().is_empty());
    }

    /// A turn dropped before it waited (its task ended early) still holds the next one
    /// back until the one before it has ended.
    #[tokio::test]
    async fn a_turn_dropped_early_keeps_the_order() {
        let turns = Turns::new();
        let first = turns.take("t");
        let second = turns.take("t");
        let mut third = turns.take("t");
        drop(second);
        let waiter = tokio::spawn(async move { third.wait().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the third waits for the first");
        drop(first);
        waiter.await.expect("third's turn came");
    }
}
