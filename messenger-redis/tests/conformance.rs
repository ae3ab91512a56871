//! The messenger-core conformance suites against the Redis adapters, on one shared
//! redis-server (the suites use unique ids).
//!
//! Each check gets its own key prefix and a cluster connected as node 0. The suites
//! register sessions on arbitrary node ids (1..=1023); in this crate a session of a
//! node with no live claim counts as dead, so the factory marks those ids as live
//! nodes (a claim key with a long TTL) before the check starts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use messenger_core::{NodeId, Presence, Relay, SessionDirectory};
use messenger_redis::RedisCluster;

async fn cluster() -> RedisCluster {
    let opts = common::fast_options("conf");
    let client = redis::Client::open(common::shared().url()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test redis");
    let mut pipe = redis::pipe();
    for n in 1..=NodeId::MAX {
        pipe.cmd("SET")
            .arg(format!("{}:node:{n}", opts.key_prefix))
            .arg("conformance-fixture")
            .arg("PX")
            .arg(Duration::from_secs(300).as_millis() as u64)
            .ignore();
    }
    pipe.query_async::<()>(&mut con)
        .await
        .expect("mark the suite's nodes live");
    RedisCluster::connect(&common::shared().url(), NodeId::new(0).unwrap(), opts)
        .await
        .expect("connect node 0")
}

messenger_core::session_directory_tests!(|| async {
    cluster().await.directory() as Arc<dyn SessionDirectory>
});

messenger_core::presence_tests!(|| async { cluster().await.presence() as Arc<dyn Presence> });

messenger_core::relay_tests!(|| async { cluster().await.relay() as Arc<dyn Relay> });
