//! Tests against a real HBase: the conformance suites, appenders in two processes, and a
//! Thrift gateway killed and restarted mid-traffic.
//!
//! HBase comes from messenger-test-support's harness: `MESSENGER_TEST_HBASE=host:port`
//! points them at a running Thrift2 gateway; without it the first test starts one with
//! `scripts/hbase.sh start` and a watcher stops it when this process exits. Nothing is
//! ever skipped: no HBase means failing tests.
//! The gateway-restart test needs the HBase run dir (`HBASE_RUN_DIR`, or the one this
//! harness started) to run a gateway of its own.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_core::model::{HistoryQuery, NewMessage};
use messenger_core::time::now_ms;
use messenger_core::{
    ErrorKind, MessageId, MessageStore, PushRegistry, ThreadId, ThreadStore, UserId,
};
use messenger_storage_hbase::{HBaseOptions, HBaseStore};

use messenger_test_support::hbase::{hbase, script};

fn options(addr: &str) -> HBaseOptions {
    HBaseOptions::new(addr).with_table_prefix("mtest_")
}

async fn store() -> HBaseStore {
    let addr = tokio::task::spawn_blocking(|| hbase().addr.clone())
        .await
        .unwrap_or_else(|e| panic!("harness: {e}"));
    HBaseStore::connect(options(&addr))
        .await
        .unwrap_or_else(|e| panic!("connect to HBase at {addr}: {e}"))
}

mod conformance {
    use super::*;
    messenger_core::message_store_tests!(|| async {
        Arc::new(store().await) as Arc<dyn MessageStore>
    });
    messenger_core::thread_store_tests!(|| async {
        Arc::new(store().await) as Arc<dyn ThreadStore>
    });
    messenger_core::push_registry_tests!(|| async {
        Arc::new(store().await) as Arc<dyn PushRegistry>
    });

    /// The batch race through two store instances (two processes' worth of thread state
    /// and connection pools) on one HBase.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_batches_from_two_store_instances() {
        let a = Arc::new(store().await) as Arc<dyn MessageStore>;
        let b = Arc::new(store().await) as Arc<dyn MessageStore>;
        messenger_core::testkit::bounded(
            "concurrent_batches_two_stores",
            messenger_core::testkit::message_store::concurrent_batches_two_stores(a, b),
        )
        .await;
    }
}

/// The thread store suite again with every thread in the member cache (its minimum at
/// 0): each check's reads go through the stamp check.
mod conformance_member_cache {
    use super::*;
    messenger_core::thread_store_tests!(|| async {
        let addr = tokio::task::spawn_blocking(|| hbase().addr.clone())
            .await
            .unwrap_or_else(|e| panic!("harness: {e}"));
        let mut opts = options(&addr);
        opts.member_cache_min = Some(0);
        Arc::new(
            HBaseStore::connect(opts)
                .await
                .unwrap_or_else(|e| panic!("connect to HBase at {addr}: {e}")),
        ) as Arc<dyn ThreadStore>
    });
}

/// Two processes' stores on one thread: what one changes, the other's next
/// `get_thread` returns, although it serves the thread from its member cache. The
/// changes come faster than the clock ticks (the same member added and removed again,
/// so the list's length returns to an earlier one): every change still gets a stamp
/// of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_cache_sees_every_change_made_by_another_process() {
    use messenger_core::model::{NewThread, ThreadKind};
    let addr = tokio::task::spawn_blocking(|| hbase().addr.clone())
        .await
        .unwrap_or_else(|e| panic!("harness: {e}"));
    let cached = || {
        let mut o = options(&addr);
        o.member_cache_min = Some(8);
        o
    };
    let a = HBaseStore::connect(cached()).await.unwrap();
    let b = HBaseStore::connect(cached()).await.unwrap();
    let t = ThreadId::new(unique("g:cache")).unwrap();
    let members: Vec<UserId> = (0..40)
        .map(|i| UserId::new(format!("cm{i}")).unwrap())
        .collect();
    a.create_thread(NewThread {
        thread_id: t.clone(),
        kind: ThreadKind::Group,
        title: Some("cached".into()),
        members: members.clone(),
        created_at: now_ms(),
    })
    .await
    .unwrap();
    let first = a.get_thread(&t).await.unwrap().unwrap();
    assert_eq!(first.members, members);
    // Served again from the cache: the same info.
    assert_eq!(a.get_thread(&t).await.unwrap().unwrap(), first);

    let x = UserId::new("cm-extra").unwrap();
    for round in 0..25 {
        let added = b.add_members(&t, std::slice::from_ref(&x)).await.unwrap();
        assert_eq!(added.changed, vec![x.clone()]);
        let seen = a.get_thread(&t).await.unwrap().unwrap();
        assert_eq!(
            seen.members, added.thread.members,
            "round {round}: after add"
        );
        assert!(seen.is_member(&x));
        let removed = b.remove_member(&t, &x).await.unwrap();
        assert_eq!(removed.changed, vec![x.clone()]);
        let seen = a.get_thread(&t).await.unwrap().unwrap();
        assert_eq!(seen.members, members, "round {round}: after remove");
        assert!(!seen.is_member(&x));
        // And the other way round: a's change, b's read.
        a.add_members(&t, std::slice::from_ref(&x)).await.unwrap();
        assert!(b.get_thread(&t).await.unwrap().unwrap().is_member(&x));
        a.remove_member(&t, &x).await.unwrap();
        assert!(!b.get_thread(&t).await.unwrap().unwrap().is_member(&x));
    }
    let last = a.get_thread(&t).await.unwrap().unwrap();
    assert_eq!(
        (last.title.as_deref(), last.kind),
        (Some("cached"), ThreadKind::Group)
    );
    assert_eq!(last.created_at, first.created_at);
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), now_ms())
}

fn new_msg(thread: &ThreadId, sender: &UserId, temp_id: String, id: u64) -> NewMessage {
    NewMessage {
        thread_id: thread.clone(),
        message_id: MessageId(id),
        sender_id: sender.clone(),
        temp_id,
        text: format!("hello {id}"),
        sent_at: now_ms(),
    }
}

/// Appends `per_task` unique messages from each of `tasks` tasks plus every shared
/// temp_id once per task; returns (seq, message id) of each acknowledged unique message.
async fn appender(
    store: Arc<HBaseStore>,
    thread: ThreadId,
    who: &str,
    tasks: usize,
    per_task: usize,
    shared: usize,
) -> Vec<(u64, u64)> {
    let shared_sender = UserId::new("shared-sender").unwrap_or_else(|e| panic!("{e}"));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (store, thread, who) = (store.clone(), thread.clone(), who.to_owned());
        let shared_sender = shared_sender.clone();
        handles.push(tokio::spawn(async move {
            let sender = UserId::new(format!("{who}-{task}")).unwrap_or_else(|e| panic!("{e}"));
            let base = (u64::from(std::process::id()) << 32) | ((task as u64) << 20);
            let mut acked = Vec::new();
            for i in 0..per_task {
                let m = new_msg(&thread, &sender, format!("t{i}"), base + i as u64);
                let a = store
                    .append(m)
                    .await
                    .unwrap_or_else(|e| panic!("append: {e}"));
                assert!(!a.duplicate);
                acked.push((a.message.seq, a.message.message_id.get()));
                if i < shared {
                    let m = new_msg(
                        &thread,
                        &shared_sender,
                        format!("s{i}"),
                        base + 10_000 + i as u64,
                    );
                    store
                        .append(m)
                        .await
                        .unwrap_or_else(|e| panic!("shared append: {e}"));
                }
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap_or_else(|e| panic!("task: {e}")));
    }
    all
}

async fn all_messages(
    store: &HBaseStore,
    thread: &ThreadId,
) -> Vec<messenger_core::model::StoredMessage> {
    store
        .fetch(thread, HistoryQuery::latest(100_000))
        .await
        .unwrap_or_else(|e| panic!("fetch: {e}"))
        .messages
}

const CHILD_TASKS: usize = 4;
const CHILD_PER_TASK: usize = 40;
const SHARED: usize = 10;

/// The second process of [`two_processes_append_gapless`]; runs only when that test
/// spawns this binary with `--ignored` and the thread in `MESSENGER_CHILD_THREAD`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of two_processes_append_gapless"]
async fn two_process_child() {
    let thread = std::env::var("MESSENGER_CHILD_THREAD").unwrap_or_else(|_| {
        panic!("MESSENGER_CHILD_THREAD is not set: run two_processes_append_gapless")
    });
    let thread = ThreadId::new(thread).unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(store().await);
    let acked = appender(store, thread, "child", CHILD_TASKS, CHILD_PER_TASK, SHARED).await;
    // Report acknowledgements to the parent on stdout.
    for (seq, id) in acked {
        println!("ACK {seq} {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_append_gapless() {
    let store = Arc::new(store().await);
    let thread = ThreadId::new(unique("two-proc")).unwrap_or_else(|e| panic!("{e}"));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let addr = hbase().addr.clone();
    let child = tokio::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "two_process_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MESSENGER_TEST_HBASE", &addr)
        .env("MESSENGER_CHILD_THREAD", thread.as_str())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning the second process: {e}"));
    let t0 = Instant::now();
    let mine = appender(store.clone(), thread.clone(), "parent", 4, 40, SHARED).await;
    let out = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("second process: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "second process failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<(u64, u64)> = stdout
        .lines()
        // libtest prints "test two_process_child ... " before the first line.
        .filter_map(|l| l.find("ACK ").map(|i| &l[i + 4..]))
        .filter_map(|l| {
            let mut p = l.split(' ').map(|x| x.parse::<u64>().ok());
            Some((p.next()??, p.next()??))
        })
        .collect();
    assert_eq!(theirs.len(), CHILD_TASKS * CHILD_PER_TASK, "child acks");
    let unique_total = mine.len() + theirs.len();
    let total = unique_total + SHARED;
    let msgs = all_messages(&store, &thread).await;
    eprintln!(
        "two processes: {} messages ({} shared temp_ids) in {:?}",
        msgs.len(),
        SHARED,
        t0.elapsed()
    );
    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "seqs exactly 1..N"
    );
    let ids: HashSet<u64> = msgs.iter().map(|m| m.message_id.get()).collect();
    assert_eq!(ids.len(), total, "no duplicate message");
    let by_seq: BTreeMap<u64, u64> = msgs.iter().map(|m| (m.seq, m.message_id.get())).collect();
    for (seq, id) in mine.iter().chain(&theirs) {
        assert_eq!(
            by_seq.get(seq),
            Some(id),
            "acknowledged message at seq {seq}"
        );
    }
    let shared: Vec<_> = msgs
        .iter()
        .filter(|m| m.sender_id.as_str() == "shared-sender")
        .collect();
    assert_eq!(
        shared.len(),
        SHARED,
        "each shared temp_id stored once across both processes"
    );
    assert_eq!(
        store
            .last_seqs(&[thread])
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        vec![total as u64]
    );
}

fn gateway(cmd: &str, name: &str, port: Option<u16>) -> String {
    let h = hbase();
    let run_dir = h.run_dir.clone().unwrap_or_else(|| {
        panic!("the gateway restart test needs HBASE_RUN_DIR when MESSENGER_TEST_HBASE is set")
    });
    let mut c = Command::new("bash");
    c.arg(script())
        .arg(cmd)
        .arg(name)
        .env("HBASE_RUN_DIR", run_dir);
    if let Some(p) = port {
        c.arg(p.to_string());
    }
    let out = c.output().unwrap_or_else(|e| panic!("hbase.sh {cmd}: {e}"));
    assert!(
        out.status.success(),
        "hbase.sh {cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_killed_and_restarted_mid_traffic() {
    let name = format!("chaos{}", std::process::id());
    let started = tokio::task::spawn_blocking({
        let name = name.clone();
        move || gateway("gateway-start", &name, None)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = started
        .lines()
        .find_map(|l| l.strip_prefix("HBASE_THRIFT="))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no address from gateway-start: {started}"));
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad address {addr}"));
    let mut opts = options(&addr).with_timeouts(Duration::from_secs(1), Duration::from_secs(3));
    opts.retries = 1;
    let store = Arc::new(
        HBaseStore::connect(opts)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}")),
    );
    let thread = ThreadId::new(unique("chaos")).unwrap_or_else(|e| panic!("{e}"));
    let sender = UserId::new("chaos-sender").unwrap_or_else(|e| panic!("{e}"));

    // One writer: every message is retried with the same temp_id (and a fresh id, as a
    // resending client would cause) until it is acknowledged.
    let total = 60usize;
    let writer = {
        let (store, thread, sender) = (store.clone(), thread.clone(), sender.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut unavailable = 0;
            let mut next_id = 1u64 << 40;
            for i in 0..total {
                loop {
                    next_id += 1;
                    match store
                        .append(new_msg(&thread, &sender, format!("c{i}"), next_id))
                        .await
                    {
                        Ok(a) => {
                            acked.push((a.message.seq, a.message.message_id.get()));
                            break;
                        }
                        Err(e) => {
                            assert!(
                                e.is_transient(),
                                "non-transient error while the gateway was down: {e}"
                            );
                            unavailable += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, unavailable)
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let n = name.clone();
    tokio::task::spawn_blocking(move || gateway("gateway-kill", &n, None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let down = store.fetch(&thread, HistoryQuery::latest(10)).await;
    match down {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "while down: {e}"),
        Ok(_) => panic!("fetch succeeded with the gateway killed"),
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = name.clone();
    tokio::task::spawn_blocking(move || gateway("gateway-start", &n, Some(port)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("gateway down for {:?}", killed_at.elapsed());
    let (acked, unavailable) = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .unwrap_or_else(|_| panic!("writer did not recover"))
        .unwrap_or_else(|e| panic!("writer: {e}"));
    assert!(unavailable > 0, "the writer never saw the outage");
    let msgs = all_messages(&store, &thread).await;
    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "gapless, one per temp_id"
    );
    let by_seq: BTreeMap<u64, u64> = msgs.iter().map(|m| (m.seq, m.message_id.get())).collect();
    for (seq, id) in &acked {
        assert_eq!(
            by_seq.get(seq),
            Some(id),
            "acknowledged message at seq {seq} kept"
        );
    }
    eprintln!("outage: {unavailable} unavailable answers, all {total} messages kept");
    let n = name.clone();
    tokio::task::spawn_blocking(move || gateway("gateway-kill", &n, None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// An appender died right after its claim: its message is stored but has no idempotency
/// or id row and the watermark lags. `last_seqs` is exact, `get` finds it, a retry of its
/// temp_id is its duplicate, and the next append records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_stored_without_bookkeeping_is_found_and_recorded() {
    let store = store().await;
    let thread = ThreadId::new(unique("unrecorded")).unwrap_or_else(|e| panic!("{e}"));
    let sender = UserId::new("crash-sender").unwrap_or_else(|e| panic!("{e}"));
    let orphan = new_msg(&thread, &sender, "tmp".into(), 111);
    store
        .__inject_unrecorded_message(&orphan, 1)
        .await
        .unwrap_or_else(|e| panic!("inject: {e}"));
    assert_eq!(
        store
            .last_seqs(std::slice::from_ref(&thread))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        vec![1],
        "last_seqs follows the block row, not the lagging watermark"
    );
    let got = store
        .get(&thread, MessageId(111))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.map(|m| m.seq), Some(1), "found without its id row");
    let retry = store
        .append(new_msg(&thread, &sender, "tmp".into(), 222))
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert!(
        retry.duplicate,
        "the retry is the stored message's duplicate"
    );
    assert_eq!(
        (retry.message.seq, retry.message.message_id),
        (1, MessageId(111))
    );
    let next = store
        .append(new_msg(&thread, &sender, "next".into(), 333))
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!((next.message.seq, next.duplicate), (2, false));
    // A process that never saw the thread relies on the rows the recovery wrote.
    let fresh = self::store().await;
    let again = fresh
        .append(new_msg(&thread, &sender, "tmp".into(), 444))
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert!(again.duplicate);
    assert_eq!(again.message.message_id, MessageId(111));
    assert_eq!(all_messages(&fresh, &thread).await.len(), 2);
}

/// Another process appended and died before its bookkeeping while this process holds a
/// stale view of the thread: this process's next claim loses, reads that message,
/// appends after it, and a retry of the dead process's temp_id here is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecorded_message_of_another_process_is_seen_by_a_warm_appender() {
    let store = store().await;
    let thread = ThreadId::new(unique("unrecorded2")).unwrap_or_else(|e| panic!("{e}"));
    let alice = UserId::new("alice").unwrap_or_else(|e| panic!("{e}"));
    let bob = UserId::new("bob").unwrap_or_else(|e| panic!("{e}"));
    for i in 1..=3u64 {
        store
            .append(new_msg(&thread, &alice, format!("a{i}"), i))
            .await
            .unwrap_or_else(|e| panic!("append: {e}"));
    }
    store
        .__inject_unrecorded_message(&new_msg(&thread, &bob, "b1".into(), 40), 4)
        .await
        .unwrap_or_else(|e| panic!("inject: {e}"));
    let batch = vec![
        new_msg(&thread, &alice, "a4".into(), 5),
        new_msg(&thread, &bob, "b1".into(), 41),
        new_msg(&thread, &alice, "a5".into(), 6),
    ];
    let got = store
        .append_batch(&thread, batch)
        .await
        .unwrap_or_else(|e| panic!("append_batch: {e}"));
    let shape: Vec<(u64, bool)> = got.iter().map(|a| (a.message.seq, a.duplicate)).collect();
    assert_eq!(shape, vec![(5, false), (4, true), (6, false)]);
    assert_eq!(got[1].message.message_id, MessageId(40));
    let seqs: Vec<u64> = all_messages(&store, &thread)
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let found = store
        .get(&thread, MessageId(40))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.map(|m| m.seq), Some(4));
}

/// A table written by schema v1 is refused at connect, migrated by `migrate_v1`, and
/// then serves the same messages under the same seqs, ids and temp_ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_v1_table_is_refused_then_migrated() {
    let addr = tokio::task::spawn_blocking(|| hbase().addr.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let opts = HBaseOptions::new(&addr).with_table_prefix(format!(
        "mmig{}_{}_",
        std::process::id(),
        now_ms()
    ));
    let old = HBaseStore::__open_without_schema_check(opts.clone())
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let long = ThreadId::new(unique("v1-long")).unwrap_or_else(|e| panic!("{e}"));
    let short = ThreadId::new(unique("v1-short")).unwrap_or_else(|e| panic!("{e}"));
    let alice = UserId::new("alice").unwrap_or_else(|e| panic!("{e}"));
    // 130 messages cross the first block boundary (128).
    for (t, n) in [(&long, 130u64), (&short, 5)] {
        for seq in 1..=n {
            old.__write_v1_message(&new_msg(t, &alice, format!("t{seq}"), 1000 + seq), seq)
                .await
                .unwrap_or_else(|e| panic!("v1 write: {e}"));
        }
    }
    let refused = HBaseStore::connect(opts.clone()).await.err();
    let msg = refused.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("hbase_migrate"),
        "refused with a pointer to the migration: {msg}"
    );

    let report = messenger_storage_hbase::migrate_v1(opts.clone(), true)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    assert_eq!((report.threads, report.messages), (2, 135), "{report:?}");
    assert_eq!(report.threads_with_gaps, 0);
    assert_eq!(
        report.v1_rows_deleted,
        3 * 135,
        "message, claim and id rows"
    );

    let store = HBaseStore::connect(opts)
        .await
        .unwrap_or_else(|e| panic!("connect after migration: {e}"));
    let msgs = all_messages(&store, &long).await;
    assert_eq!(
        msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=130).collect::<Vec<_>>()
    );
    assert!(msgs
        .iter()
        .all(|m| m.message_id == MessageId(1000 + m.seq) && m.temp_id == format!("t{}", m.seq)));
    assert_eq!(
        store
            .last_seqs(&[long.clone(), short.clone()])
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        vec![130, 5]
    );
    let got = store
        .get(&long, MessageId(1129))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.map(|m| m.seq), Some(129));
    let retry = store
        .append(new_msg(&short, &alice, "t2".into(), 9))
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert!(retry.duplicate, "idempotency survives the migration");
    assert_eq!(retry.message.message_id, MessageId(1002));
    let next = store
        .append(new_msg(&long, &alice, "new".into(), 9))
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!((next.message.seq, next.duplicate), (131, false));
}
