//! [`TargetDirectory`] (who gets what where) and [`PushService`], which resolves a
//! user's targets, calls the providers and acts on their outcomes. It is the
//! `PushSink` of a single-node server and the push stage of `messenger-worker`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use messenger_core::model::PushNotification;
use messenger_core::{Error, PushSink, Result, ThreadId, UserId};

use crate::metrics::PushMetrics;
use crate::provider::{Notification, Outcome, Platform, PushProvider, PushTarget};

/// Where each user's notifications go. Issue 13's device registrations and thread
/// mutes implement this; [`StaticTargets`] sends every user's to fixed targets.
#[async_trait]
pub trait TargetDirectory: Send + Sync {
    /// The targets to notify for `user` about `thread`: none when the user has no
    /// registration or muted the thread.
    async fn targets(&self, user: &UserId, thread: &ThreadId) -> Result<Vec<PushTarget>>;

    /// Forgets a target its provider reported gone.
    async fn remove(&self, user: &UserId, target_id: &str) -> Result<()>;
}

/// Every user's notifications go to the same targets (e.g. one webhook of the
/// application's backend, which knows its users' devices). `remove` is a no-op: a
/// shared target is never one user's to forget.
#[derive(Debug, Clone, Default)]
pub struct StaticTargets(pub Vec<PushTarget>);

#[async_trait]
impl TargetDirectory for StaticTargets {
    async fn targets(&self, _user: &UserId, _thread: &ThreadId) -> Result<Vec<PushTarget>> {
        Ok(self.0.clone())
    }

    async fn remove(&self, user: &UserId, target_id: &str) -> Result<()> {
        tracing::warn!(%user, target = target_id,
            "a shared push target answered \"gone\"; it stays configured");
        Ok(())
    }
}

/// Retries of transient failures: jittered exponential backoff from `min_delay` to
/// `max_delay`, at most `attempts` tries in all (the first included).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Tries in all (default 8).
    pub attempts: u32,
    /// First delay (default 500 ms).
    pub min_delay: Duration,
    /// Longest delay (default 60 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy with the given tries and delays.
    pub fn new(attempts: u32, min_delay: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            attempts: attempts.max(1),
            min_delay,
            max_delay,
        }
    }

    /// The delays between tries (`attempts - 1` of them), jittered.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .build()
    }
}

/// Counters of a [`PushService`], by outcome.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Notifications handed to [`PushService::deliver`].
    pub notifications: AtomicU64,
    /// Targets that accepted a notification.
    pub delivered: AtomicU64,
    /// Transient failures (each retry counts).
    pub retries: AtomicU64,
    /// Targets reported gone (and removed).
    pub gone: AtomicU64,
    /// Credentials refused by a provider.
    pub credential_rejected: AtomicU64,
    /// Notifications refused for good, or given up on after the last retry.
    pub failed: AtomicU64,
}

/// What happened at each target of one notification.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Each target with its final outcome.
    pub outcomes: Vec<(PushTarget, Outcome)>,
}

impl Report {
    /// Targets whose last outcome is a failure worth recording (dead-lettering):
    /// retries given up on, credentials refused, rejections.
    pub fn failures(&self) -> impl Iterator<Item = &(PushTarget, Outcome)> {
        self.outcomes
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Delivered | Outcome::TargetGone))
    }
}

/// Resolves targets, calls the provider of each target's platform, removes targets
/// reported gone and retries transient failures.
pub struct PushService {
    providers: HashMap<Platform, Arc<dyn PushProvider>>,
    directory: Arc<dyn TargetDirectory>,
    retry: RetryPolicy,
    stats: PushStats,
    metrics: PushMetrics,
}

impl std::fmt::Debug for PushService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushService")
            .field("platforms", &self.providers.keys().collect::<Vec<_>>())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl PushService {
    /// A service over `directory` with no providers yet.
    pub fn new(directory: Arc<dyn TargetDirectory>) -> Self {
        PushService {
            providers: HashMap::new(),
            directory,
            retry: RetryPolicy::default(),
            stats: PushStats::default(),
            metrics: PushMetrics::default(),
        }
    }

    /// Adds (or replaces) the provider for its platform.
    pub fn with_provider(mut self, provider: Arc<dyn PushProvider>) -> Self {
        self.metrics.init(provider.platform());
        self.providers.insert(provider.platform(), provider);
        self
    }

    /// The retry policy of [`deliver`](Self::deliver) (default [`RetryPolicy::default`]).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The counters.
    pub fn stats(&self) -> &PushStats {
        &self.stats
    }

    /// The per-provider metrics; [`PushMetrics::register`] puts them on a `/metrics`.
    pub fn metrics(&self) -> &PushMetrics {
        &self.metrics
    }

    async fn send_once(&self, n: &Notification, targets: Vec<PushTarget>) -> Report {
        let mut by_platform: HashMap<Platform, Vec<PushTarget>> = HashMap::new();
        for t in targets {
            by_platform.entry(t.platform).or_default().push(t);
        }
        let mut report = Report::default();
        for (platform, targets) in by_platform {
            let outcomes = match self.providers.get(&platform) {
                Some(p) => {
                    let started = std::time::Instant::now();
                    let o = p.send(n, &targets).await;
                    self.metrics.observe(platform, started.elapsed());
                    o
                }
                None => targets
                    .iter()
                    .map(|_| Outcome::Rejected(format!("no {platform} provider is configured")))
                    .collect(),
            };
            for (t, o) in targets.into_iter().zip(outcomes) {
                report.outcomes.push((t, o));
            }
        }
        report
    }

    /// Delivers `n` to every target of its user: [`targets`](Self::targets), then
    /// [`deliver_to`](Self::deliver_to). `Err` only when the target directory failed,
    /// and then nothing was sent (so calling it again sends nothing twice).
    pub async fn deliver(&self, n: &Notification) -> Result<Report> {
        let targets = self.targets(n).await?;
        Ok(self.deliver_to(n, targets).await)
    }

    /// Where `n` goes: its user's targets from the directory (none for a thread the
    /// user muted). A caller that retries a failed read (the worker, while the
    /// registry's store is down) calls this, then [`deliver_to`](Self::deliver_to).
    pub async fn targets(&self, n: &Notification) -> Result<Vec<PushTarget>> {
        self.directory.targets(&n.user_id, &n.thread_id).await
    }

    /// Delivers `n` to `targets` (from [`targets`](Self::targets)), retrying transient
    /// failures with the retry policy (honouring `Retry-After`), removing targets
    /// reported gone. Returns each target's final outcome.
    pub async fn deliver_to(&self, n: &Notification, targets: Vec<PushTarget>) -> Report {
        self.stats.notifications.fetch_add(1, Ordering::Relaxed);
        let mut delays = self.retry.delays();
        let mut done = Vec::new();
        let mut pending = targets;
        while !pending.is_empty() {
            let report = self.send_once(n, std::mem::take(&mut pending)).await;
            let mut wait = Duration::ZERO;
            let next_delay = delays.next();
            for (t, o) in report.outcomes {
                let p = t.platform;
                match &o {
                    Outcome::Delivered => {
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        self.metrics.sent(p);
                    }
                    Outcome::TargetGone => {
                        self.stats.gone.fetch_add(1, Ordering::Relaxed);
                        match self.directory.remove(&n.user_id, &t.id).await {
                            Ok(()) => self.metrics.removed(p),
                            Err(e) => tracing::warn!(user = %n.user_id, target = %t.id,
                                error = %e, "could not remove a push target reported gone"),
                        }
                    }
                    Outcome::CredentialRejected(why) => {
                        self.stats
                            .credential_rejected
                            .fetch_add(1, Ordering::Relaxed);
                        self.metrics.failed(p, "credentials");
                        // The provider itself logs the refusal once, loudly; here it is
                        // one more notification that could not go out.
                        tracing::debug!(platform = %t.platform, %why,
                            "push not sent: the provider refuses our credentials");
                    }
                    Outcome::RetryAfter(after) => {
                        if let Some(d) = next_delay {
                            self.stats.retries.fetch_add(1, Ordering::Relaxed);
                            self.metrics.retried(p);
                            wait = wait.max(after.unwrap_or(d).min(self.retry.max_delay));
                            pending.push(t);
                            continue;
                        }
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        self.metrics.failed(p, "transient");
                    }
                    Outcome::Rejected(_) => {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        let reason = if self.providers.contains_key(&p) {
                            "rejected"
                        } else {
                            "no_provider"
                        };
                        self.metrics.failed(p, reason);
                    }
                }
                done.push((t, o));
            }
            if !pending.is_empty() {
                tokio::time::sleep(wait).await;
            }
        }
        Report { outcomes: done }
    }
}

/// A [`PushService`] is the push sink of a single-node server: the engine calls it off
/// the request path, and failures end up in the engine's `push_failures` counter.
#[async_trait]
impl PushSink for PushService {
    async fn push(&self, notification: PushNotification) -> Result<()> {
        let n = Notification::from(notification);
        let report = self.deliver(&n).await?;
        let failed = report
            .failures()
            .next()
            .map(|(t, o)| format!("push to {} target {} failed: {o:?}", t.platform, t.id));
        match failed {
            None => Ok(()),
            Some(why) => Err(Error::unavailable(why)),
        }
    }
}
