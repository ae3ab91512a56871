//! Two engines (two "nodes" in one process) whose directory, presence and relay are
//! the Redis adapters; the stores are in memory, shared through one `MemBackend`.

mod common;

use std::time::Duration;

use messenger_core::engine::{Engine, EngineConfig, OutboxItem, Session};
use messenger_core::{NodeId, UserId};
use messenger_redis::RedisCluster;
use messenger_storage_mem::MemBackend;

async fn next_of(session: &mut Session, kind: &str) -> String {
    let want = format!(r#""type":"{kind}""#);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match session.outbox.recv().await {
                Some(OutboxItem::Frame(out)) => {
                    let text = String::from_utf8_lossy(&out.frame).into_owned();
                    if text.contains(&want) {
                        return text;
                    }
                }
                other => panic!("session ended: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} frame"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_and_presence_cross_nodes_through_redis() {
    let opts = common::fast_options("engines");
    let backend = MemBackend::new();
    let mut engines = Vec::new();
    let mut clusters = Vec::new();
    for n in [1, 2] {
        let node = NodeId::new(n).unwrap();
        let c = RedisCluster::connect(&common::shared().url(), node, opts.clone())
            .await
            .unwrap();
        let mut adapters = backend.adapters(node);
        adapters.directory = c.directory();
        adapters.presence = c.presence();
        adapters.relay = c.relay();
        let mut config = EngineConfig::with_node(node);
        config.presence_grace = Duration::from_millis(200);
        engines.push(Engine::start(config, adapters).await.unwrap());
        clusters.push(c);
    }
    let (alice_id, bob_id) = (common::unique_prefix("alice"), common::unique_prefix("bob"));
    let mut alice = engines[0]
        .connect(UserId::new(&alice_id).unwrap())
        .await
        .unwrap();
    let mut bob = engines[1]
        .connect(UserId::new(&bob_id).unwrap())
        .await
        .unwrap();

    engines[0]
        .handle_text(
            &alice.handle,
            &format!(r#"{{"type":"create_thread","kind":"direct","members":["{bob_id}"]}}"#),
        )
        .await;
    let thread = next_of(&mut alice, "thread").await;
    let id = thread
        .split(r#""thread_id":""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let send =
        format!(r#"{{"type":"send_message","thread_id":"{id}","temp_id":"x1","text":"hi"}}"#);
    engines[0].handle_text(&alice.handle, &send).await;
    let got = next_of(&mut bob, "receive_message").await;
    assert!(got.contains(r#""text":"hi""#), "{got}");

    // bob watches alice; alice leaves node 1; bob on node 2 sees her go offline.
    engines[1]
        .handle_text(
            &bob.handle,
            &format!(r#"{{"type":"presence_subscribe","user_ids":["{alice_id}"]}}"#),
        )
        .await;
    let now = next_of(&mut bob, "presence").await;
    assert!(now.contains(r#""status":"online""#), "{now}");
    engines[0].disconnect(&alice.handle).await;
    let change = next_of(&mut bob, "presence").await;
    assert!(change.contains(r#""status":"offline""#), "{change}");
    for c in clusters {
        c.shutdown().await.unwrap();
    }
}

/// Nodes whose directory, presence and relay are on Redis (the stores in memory, one
/// `MemBackend`), one key prefix per call; `relay` picks each node's relay from its
/// cluster connection.
async fn redis_nodes(
    name: &str,
    relay: fn(&RedisCluster) -> std::sync::Arc<dyn messenger_core::Relay>,
) -> messenger_core::testkit::engine::NodeAdapters {
    let backend = MemBackend::new();
    let opts = common::fast_options(name);
    let url = tokio::task::spawn_blocking(|| common::shared().url())
        .await
        .unwrap_or_else(|e| panic!("redis harness: {e}"));
    messenger_core::testkit::engine::node_adapters(move |node| {
        let (backend, opts, url) = (backend.clone(), opts.clone(), url.clone());
        async move {
            // The adapters keep the cluster's tasks alive.
            let c = RedisCluster::connect(&url, node, opts)
                .await
                .unwrap_or_else(|e| panic!("redis: {e}"));
            let mut a = backend.adapters(node);
            a.directory = c.directory();
            a.presence = c.presence();
            a.relay = relay(&c);
            a
        }
    })
}

/// The engine-level checks with the session directory, presence and relay on Redis
/// (the stores in memory), one key prefix per check.
mod engine_checks {
    messenger_core::engine_tests!(|| crate::redis_nodes("engine", |c| c.relay()));
}

/// The large-thread path (one `members_of` envelope per node, no directory lookup per
/// member) with a relay that cannot list its nodes itself (as Kafka's), its node list
/// answered from the claims in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_groups_across_nodes_with_live_nodes_from_redis() {
    let nodes = redis_nodes("live-engine", |c| {
        c.relay_with_live_nodes(std::sync::Arc::new(common::Unlisted(c.relay())))
    })
    .await;
    messenger_core::testkit::engine::large_groups_across_nodes(nodes).await;
}
