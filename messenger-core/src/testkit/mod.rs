//! Conformance suites that every adapter runs.
//!
//! One module of `pub async fn` checks per trait, and one exported macro per trait that
//! turns every check into a `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]`:
//!
//! | trait | checks | macro |
//! |---|---|---|
//! | [`MessageStore`](crate::MessageStore) | [`message_store`] | [`message_store_tests!`](crate::message_store_tests) |
//! | [`ThreadStore`](crate::ThreadStore) | [`thread_store`] | [`thread_store_tests!`](crate::thread_store_tests) |
//! | [`SessionDirectory`](crate::SessionDirectory) | [`session_directory`] | [`session_directory_tests!`](crate::session_directory_tests) |
//! | [`Presence`](crate::Presence) | [`presence`] | [`presence_tests!`](crate::presence_tests) |
//! | [`Relay`](crate::Relay) | [`relay`] | [`relay_tests!`](crate::relay_tests) |
//! | [`PushRegistry`](crate::PushRegistry) | [`push_registry`] | [`push_registry_tests!`](crate::push_registry_tests) |
//! | the [`Engine`](crate::engine::Engine) over a whole backend | [`engine`] | [`engine_tests!`](crate::engine_tests) |
//!
//! An adapter crate enables the feature in its dev-dependencies
//! (`messenger-core = { ..., features = ["testkit"] }`, plus `tokio` with `macros` and
//! `rt-multi-thread`) and writes one line per trait, in any test module:
//!
//! ```ignore
//! mod conformance {
//!     use std::sync::Arc;
//!     messenger_core::message_store_tests!(|| async {
//!         Arc::new(MyStore::connect_for_tests().await) as Arc<dyn messenger_core::MessageStore>
//!     });
//! }
//! ```
//!
//! The argument is any expression that can be called with no arguments and returns a
//! future of `Arc<dyn Trait>` (a closure `|| async { ... }` or an `async fn` path). It is
//! called once per check. The macro expands into a child module (`message_store_conformance`,
//! ...) that glob-imports its parent, so the expression may use the parent's names.
//!
//! The checks never assume a fresh backend: each uses ids made unique per run with
//! [`unique_user`], [`unique_thread`] and friends, and ignores what other users of a
//! shared backend (Redis, HBase) do concurrently. Each check is bounded in time
//! ([`CHECK_TIMEOUT`]) and in work (concurrent checks use 8 tasks x 25 operations).

pub mod engine;
pub mod message_store;
pub mod presence;
pub mod push_registry;
pub mod relay;
pub mod session_directory;
pub mod thread_store;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::idgen::Snowflake;
use crate::ids::{MessageId, NodeId, SessionId, ThreadId, UserId};

/// How long one check may run before it fails.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a check waits for an event that must arrive (a presence change, an envelope).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many tasks the concurrency checks run at once.
pub const CONCURRENT_TASKS: usize = 8;

/// How many operations each task of a concurrency check performs.
pub const OPS_PER_TASK: usize = 25;

fn run_base() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    *BASE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Mix the clock and the process id so that concurrent test processes differ.
        (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    })
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A suffix unique to this process run and this call: `<run base36>-<counter>`.
pub fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", base36(run_base() >> 8))
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps at most `max` bytes of `prefix` that are valid in every id kind.
fn clean(prefix: &str, max: usize) -> String {
    prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(max)
        .collect()
}

/// A user id unique to this run, starting with `prefix` (e.g. `alice-1x2y3z-7`).
pub fn unique_user(prefix: &str) -> UserId {
    let id = format!("{}-{}", clean(prefix, 24), unique_suffix());
    UserId::new(id).unwrap_or_else(|e| panic!("testkit made a bad user id: {e}"))
}

/// A thread id unique to this run, starting with `prefix`.
pub fn unique_thread(prefix: &str) -> ThreadId {
    let id = format!("tk.{}-{}", clean(prefix, 48), unique_suffix());
    ThreadId::new(id).unwrap_or_else(|e| panic!("testkit made a bad thread id: {e}"))
}

/// A session id unique to this run.
pub fn unique_session() -> SessionId {
    SessionId::new(format!("s-tk-{}", unique_suffix()))
        .unwrap_or_else(|e| panic!("testkit made a bad session id: {e}"))
}

/// A node id that differs from the previous 1023 this process made (1 to 1023), and
/// is likely to differ from those of another process sharing the backend.
pub fn unique_node() -> NodeId {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let v = (run_base().wrapping_add(n) % u64::from(NodeId::MAX)) + 1;
    NodeId::new(v as u16).unwrap_or_else(|e| panic!("testkit made a bad node id: {e}"))
}

/// A fresh message id from a process-wide Snowflake generator.
pub fn unique_message_id() -> MessageId {
    static GEN: OnceLock<Snowflake> = OnceLock::new();
    GEN.get_or_init(|| {
        let node =
            NodeId::new((run_base() % u64::from(NodeId::MAX + 1)) as u16).unwrap_or_default();
        Snowflake::new(node)
    })
    .next()
}

/// Runs one check, failing it if it takes longer than [`CHECK_TIMEOUT`].
pub async fn bounded<F: Future>(name: &str, check: F) -> F::Output {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(out) => out,
        Err(_) => panic!("conformance check {name} took longer than {CHECK_TIMEOUT:?}"),
    }
}

/// Waits up to [`EVENT_TIMEOUT`] for `fut`, panicking with `what` when it does not finish.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(EVENT_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {EVENT_TIMEOUT:?} waiting for {what}"),
    }
}

/// One check of a suite: called with the subject, it panics on a failure.
pub type Check<T> = fn(std::sync::Arc<T>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Expands to `pub fn all()`, every check of a suite by name. Used by the per-trait
/// macros; not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __testkit_list {
    ($trait:ident, [$($check:ident),* $(,)?]) => {
        /// Every check of this suite with its name, in the order the macro runs them:
        /// for a runner of your own (an example, a smoke binary). Each is bounded by
        /// [`bounded`](crate::testkit::bounded) when you wrap it.
        pub fn all() -> Vec<(&'static str, $crate::testkit::Check<dyn $crate::$trait>)> {
            vec![$(
                (
                    stringify!($check),
                    (|s| Box::pin($check(s))) as $crate::testkit::Check<dyn $crate::$trait>,
                )
            ),*]
        }
    };
}

/// Expands to one test per check. Used by the per-trait macros; not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __testkit_suite {
    ($module:ident, $suite:ident, $factory:expr, [$($check:ident),* $(,)?]) => {
        #[allow(unused_imports, non_snake_case)]
        mod $module {
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let subject = ($factory)().await;
                    $crate::testkit::bounded(
                        concat!(stringify!($suite), "::", stringify!($check)),
                        $crate::testkit::$suite::$check(subject),
                    )
                    .await;
                }
            )*
        }
    };
}

/// Generates the [`MessageStore`](crate::MessageStore) conformance tests (module
/// `message_store_conformance`), one per check in [`message_store`].
///
/// `$factory`: called with no arguments, returns a future of
/// `Arc<dyn messenger_core::MessageStore>`.
#[macro_export]
macro_rules! message_store_tests {
    // The list of checks, kept once: the tests above and `message_store::all()` come from it.
    (@checks $then:ident ($($args:tt)*)) => {
        $crate::$then!(
            $($args)*,
            [
                append_assigns_seq_from_one_in_order,
                append_keeps_the_fields,
                concurrent_appends_are_gapless,
                duplicate_temp_id_returns_original,
                same_temp_id_other_sender_or_thread_is_new,
                concurrent_duplicates_store_one,
                get_finds_by_id_within_thread,
                last_seqs_in_input_order,
                count_unread_skips_own_messages,
                fetch_empty_or_unknown_thread,
                fetch_latest,
                fetch_before,
                fetch_after,
                fetch_between,
                paging_walks_every_message_once,
                append_batch_assigns_consecutive_seqs,
                append_batch_refuses_another_thread,
                append_batch_with_duplicates,
                concurrent_batches_are_gapless,
                concurrent_duplicate_batches_store_one,
                append_batch_now_keeps_the_batch_contract,
            ]
        );
    };
    ($factory:expr $(,)?) => {
        $crate::message_store_tests!(@checks __testkit_suite (message_store_conformance, message_store, $factory));
    };
}

/// Generates the [`ThreadStore`](crate::ThreadStore) conformance tests (module
/// `thread_store_conformance`), one per check in [`thread_store`].
///
/// `$factory`: called with no arguments, returns a future of
/// `Arc<dyn messenger_core::ThreadStore>`.
#[macro_export]
macro_rules! thread_store_tests {
    // The list of checks, kept once: the tests above and `thread_store::all()` come from it.
    (@checks $then:ident ($($args:tt)*)) => {
        $crate::$then!(
            $($args)*,
            [
                create_and_get,
                create_is_idempotent,
                concurrent_create_yields_one_thread,
                add_members_reports_only_new,
                remove_member_reports_only_removed,
                unknown_thread_is_not_found,
                list_user_threads_follows_membership,
                list_user_threads_has_every_members_receipts,
                watermark_never_moves_backwards,
                read_implies_delivered,
                concurrent_watermarks_keep_the_max,
                get_thread_now_agrees_with_get_thread,
            ]
        );
    };
    ($factory:expr $(,)?) => {
        $crate::thread_store_tests!(@checks __testkit_suite (thread_store_conformance, thread_store, $factory));
    };
}

/// Generates the [`SessionDirectory`](crate::SessionDirectory) conformance tests (module
/// `session_directory_conformance`), one per check in [`session_directory`].
///
/// `$factory`: called with no arguments, returns a future of
/// `Arc<dyn messenger_core::SessionDirectory>`.
#[macro_export]
macro_rules! session_directory_tests {
    // The list of checks, kept once: the tests above and `session_directory::all()` come from it.
    (@checks $then:ident ($($args:tt)*)) => {
        $crate::$then!(
            $($args)*,
            [
                unknown_user_has_no_sessions,
                sessions_on_several_nodes,
                unregister_removes_only_that_session,
                register_twice_lists_once,
                lookup_keeps_input_order,
                concurrent_registrations,
            ]
        );
    };
    ($factory:expr $(,)?) => {
        $crate::session_directory_tests!(@checks __testkit_suite (session_directory_conformance, session_directory, $factory));
    };
}

/// Generates the [`Presence`](crate::Presence) conformance tests (module
/// `presence_conformance`), one per check in [`presence`].
///
/// `$factory`: called with no arguments, returns a future of
/// `Arc<dyn messenger_core::Presence>`.
#[macro_export]
macro_rules! presence_tests {
    // The list of checks, kept once: the tests above and `presence::all()` come from it.
    (@checks $then:ident ($($args:tt)*)) => {
        $crate::$then!(
            $($args)*,
            [
                unknown_user_is_offline,
                online_then_offline_with_last_seen,
                several_sessions_one_transition,
                events_only_on_transitions,
                get_keeps_input_order,
                changes_start_now,
                every_subscriber_gets_changes,
            ]
        );
    };
    ($factory:expr $(,)?) => {
        $crate::presence_tests!(@checks __testkit_suite (presence_conformance, presence, $factory));
    };
}

/// Generates the [`Relay`](crate::Relay) conformance tests (module `relay_conformance`),
/// one per check in [`relay`].
///
/// `$factory`: called with no arguments, returns a future of
/// `Arc<dyn messenger_core::Relay>`.
#[macro_export]
macro_rules! relay_tests {
    // The list of checks, kept once: the tests above and `relay::all()` come from it.
    (@checks $then:ident ($($args:tt)*)) => {
        $crate::$then!(
            $($args)*,
            [
                delivers_to_the_addressed_node_only,
                send_without_subscriber_is_ok,
                envelope_round_trips,
                delivers_every_envelope_once,
                lists_subscribed_nodes,
            ]
        );
    };
    ($factory:expr $(,)?) => {
        $crate::relay_tests!(@checks __testkit_suite (relay_conformance, relay, $factory));
    };
}

/// Generates the [`PushRegistry`](crate::PushRegistry) conformance tests (module
/// `push_registry_conformance`), one per check in [`push_registry`].
///
/// `$factory`: called with no arguments, returns a future of
/// `Arc<dyn messenger_core::PushRegistry>`.
#[macro_export]
macro_rules! push_registry_tests {
    // The list of checks, kept once: the tests above and `push_registry::all()` come from it.
    (@checks $then:ident ($($args:tt)*)) => {
        $crate::$then!(
            $($args)*,
            [
                register_and_list,
                webpush_keys_round_trip,
                reregister_refreshes,
                unregister_only_own,
                target_moves_to_the_new_user,
                cap_drops_least_recently_updated,
                mutes_set_list_clear,
                muted_thread_has_no_targets,
                concurrent_claims_leave_one_holder,
            ]
        );
    };
    ($factory:expr $(,)?) => {
        $crate::push_registry_tests!(@checks __testkit_suite (push_registry_conformance, push_registry, $factory));
    };
}

/// Generates the engine-level tests (module `engine_conformance`), one per check in
/// [`engine`]: the protocol's rules through a real engine over your backend.
///
/// `$factory`: called with no arguments, returns a future of a
/// [`NodeAdapters`](crate::testkit::engine::NodeAdapters) (the adapters of one fresh
/// backend for a node id; called twice with different ids by the cross-node check):
///
/// ```ignore
/// messenger_core::engine_tests!(|| async {
///     let backend = messenger_storage_mem::MemBackend::new();
///     messenger_core::testkit::engine::node_adapters(move |node| {
///         let b = backend.clone();
///         async move { b.adapters(node) }
///     })
/// });
/// ```
#[macro_export]
macro_rules! engine_tests {
    (@checks $then:ident ($($args:tt)*)) => {
        $crate::$then!(
            $($args)*,
            [
                send_reaches_every_session_once_in_order,
                resend_returns_the_original_and_delivers_once,
                concurrent_senders_are_gapless_and_ordered,
                acks_only_move_forward,
                list_threads_counts_unread_per_thread,
                history_pages_by_range,
                offline_members_get_a_push,
                two_nodes_deliver_to_each_other,
                large_groups_across_nodes,
            ]
        );
    };
    ($factory:expr $(,)?) => {
        $crate::engine_tests!(@checks __testkit_suite (engine_conformance, engine, $factory));
    };
}
