//! The chaos suite on real processes (harness: the `messenger-chaos` crate): three
//! `messenger-server` nodes behind HAProxy on Redis and HBase, each node reaching them
//! through a fault-injecting proxy, and SDK clients with SQLite outboxes chatting 1:1
//! and in groups through the balancer while faults are injected one at a time (SIGKILL,
//! SIGSTOP/SIGCONT, Redis restart, HBase gateway restart, latency, black hole, reset)
//! and then together. Afterwards every ledger is checked against history: each
//! confirmed send stored once at its seq, seqs 1..N, each member received each message
//! exactly once and in order, receipts never move backwards, a dead or stalled node's
//! users offline within the bound. See docs/reliability.md.
//!
//! `short_profile_kafka` runs a second cluster with Kafka (a broker of its own) as the
//! cross-node relay and the event log: the broker SIGKILLed and restarted while traffic
//! flows, then a combined round with the broker killed too; after each, cross-node
//! delivery must work again within `RELAY_RESUME_BOUND`, and the same ledger checks hold.
//!
//! `short_profile` and `short_profile_kafka` run in scripts/test.sh (a few minutes each,
//! one after the other). `MESSENGER_CHAOS_SERVER_BIN` names another messenger-server
//! binary (built with `--features cli`). The long profile (`MESSENGER_TEST_CHAOS_KAFKA=1`:
//! on Kafka, with the broker's faults added; `MESSENGER_TEST_CHAOS_KAFKA_STOP=1`: the
//! broker stopped with a controlled shutdown in combined rounds, which reproduces a
//! librdkafka defect, see docs/reliability.md):
//!
//! ```sh
//! MESSENGER_TEST_CHAOS_ROUNDS=40 MESSENGER_TEST_CHAOS_SEED=7 \
//!   cargo test -p messenger-server --features cli --test chaos -- --ignored --nocapture
//! ```

use std::time::Duration;

use messenger_chaos::{run, Cluster, ClusterConfig, Profile};

/// The profiles run one at a time: each loads the machine on its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chaos(profile: Profile, kafka: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let hbase = tokio::task::spawn_blocking(messenger_test_support::hbase::hbase)
        .await
        .expect("hbase harness");
    let dir = messenger_test_support::process::tmp_dir(&format!("chaos-{}", profile.name));
    let mut cluster = Cluster::start(ClusterConfig {
        // A copy of the binary can be named (a long run while other builds replace
        // target/debug/messenger-server with other feature sets).
        server_bin: std::env::var_os("MESSENGER_CHAOS_SERVER_BIN")
            .map(Into::into)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_messenger-server").into()),
        nodes: 3,
        dir: dir.clone(),
        node_ttl: Duration::from_secs(2),
        hbase: hbase.addr.clone(),
        hbase_run_dir: hbase.run_dir.clone(),
        extra_args: Vec::new(),
        fault_proxies: true,
        kafka,
    })
    .await;
    let report = run(&mut cluster, &profile).await;
    eprintln!("chaos ({} profile):\n{report}", profile.name);
    assert!(
        report.violations.is_empty(),
        "{} violation(s); logs in {}\n{report}\n{}",
        report.violations.len(),
        dir.display(),
        cluster.logs()
    );
    assert!(report.confirmed > 0, "no traffic: {report}");
    if kafka {
        assert!(
            !report.relay_resumed.is_empty(),
            "no Kafka fault checked: {report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_profile() {
    chaos(Profile::short(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_profile_kafka() {
    chaos(Profile::short_kafka(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long profile: run with --ignored (see the module doc)"]
async fn long_profile() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env("MESSENGER_TEST_CHAOS_ROUNDS", 40) as u32;
    let kafka = env("MESSENGER_TEST_CHAOS_KAFKA", 0) != 0;
    let profile = Profile {
        kafka_controlled_stop: env("MESSENGER_TEST_CHAOS_KAFKA_STOP", 0) != 0,
        ..Profile::long(rounds, env("MESSENGER_TEST_CHAOS_SEED", 7))
    };
    chaos(profile, kafka).await;
}
