//! Heap allocations per message on the engine's send path, counted by a counting global
//! allocator (`stats_alloc` over the system allocator): a count, not a time, so it is
//! the same on a busy machine as on a quiet one.
//!
//! Each case sends 2 000 messages after 500 of warm-up and prints the allocations (and
//! bytes) per send, everything included: decoding the client frame, membership, id,
//! append to the in-memory store, group commit, encoding `receive_message` and
//! `message_sent`, queueing them on the outboxes and draining them (the transport's
//! writes are not included: they are the server's, see `conn.rs`).
//!
//! The SQLite case runs the same sends on the server binary's default store (an empty
//! data directory under the system's temp directory, removed afterwards; full sync):
//! everything the store does on its own threads is counted too.
//!
//! Run with `cargo bench -p messenger-bench --bench allocs`.

use std::alloc::System;

use messenger_core::engine::{Engine, EngineConfig, Session};
use messenger_core::{NodeId, UserId};
use std::sync::Arc;

use messenger_storage_mem::MemBackend;
use messenger_storage_sqlite::{SqliteOptions, SqliteStore};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TEXT: &str = "hello there, how are you doing today? 0123456789 abcdefghij";
const WARMUP: usize = 500;
const SENDS: usize = 2_000;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("{:<44} {:>12} {:>14}", "case", "allocs/send", "bytes/send");
    for (name, single_node, members, sqlite) in [
        ("direct, single node, in-memory store", true, 2, false),
        ("direct, cluster mode (directory lookup)", false, 2, false),
        ("group of 10, single node", true, 10, false),
        ("group of 100, single node", true, 100, false),
        ("direct, single node, SQLite store", true, 2, true),
    ] {
        let (allocs, bytes) = rt.block_on(case(single_node, members, sqlite));
        println!("{name:<44} {allocs:>12.1} {bytes:>14.0}");
    }
}

/// Allocations and bytes per send for one sender in a thread of `members`, on the
/// in-memory stores or (`sqlite`) on the SQLite store.
async fn case(single_node: bool, members: usize, sqlite: bool) -> (f64, f64) {
    let mut config = EngineConfig::default();
    config.single_node = single_node;
    let mut adapters = MemBackend::new().adapters(NodeId::default());
    let dir = std::env::temp_dir().join(format!("messenger-allocs-{}", std::process::id()));
    if sqlite {
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(SqliteOptions::new(&dir))
            .await
            .expect("sqlite store");
        adapters.messages = Arc::new(store.clone());
        adapters.threads = Arc::new(store);
    }
    let engine = Engine::start(config, adapters).await.expect("engine");
    let mut sessions: Vec<Session> = Vec::with_capacity(members);
    for i in 0..members {
        let user = UserId::new(format!("u{i}")).expect("id");
        sessions.push(engine.connect(user).await.expect("connect"));
    }
    let thread = if members == 2 {
        engine
            .handle_text(
                &sessions[0].handle,
                r#"{"type":"create_thread","req_id":1,"kind":"direct","members":["u1"]}"#,
            )
            .await;
        "dm:u0:u1".to_string()
    } else {
        let others: Vec<String> = (1..members).map(|i| format!("\"u{i}\"")).collect();
        let frame = format!(
            r#"{{"type":"create_thread","req_id":1,"kind":"group","members":[{}]}}"#,
            others.join(",")
        );
        engine.handle_text(&sessions[0].handle, &frame).await;
        // The thread id is in the creator's `thread` reply.
        let mut id = None;
        while let Some(out) = sessions[0].outbox.try_recv() {
            let v: serde_json::Value = serde_json::from_slice(&out.frame).expect("json");
            if v["type"] == "thread" {
                id = v["thread_id"].as_str().map(str::to_string);
            }
        }
        id.expect("thread reply")
    };
    for s in &mut sessions {
        while s.outbox.try_recv().is_some() {}
    }
    let frames: Vec<String> = (0..WARMUP + SENDS)
        .map(|n| {
            format!(
                r#"{{"type":"send_message","req_id":{n},"thread_id":"{thread}","temp_id":"t{n}","text":"{TEXT}"}}"#
            )
        })
        .collect();
    let mut region = None;
    for (n, f) in frames.iter().enumerate() {
        if n == WARMUP {
            region = Some(Region::new(GLOBAL));
        }
        engine.handle_text(&sessions[0].handle, f).await;
        // The sender's `message_sent`, then every other member's `receive_message`.
        for s in &mut sessions {
            let out = s.outbox.recv().await.expect("frame");
            std::hint::black_box(out);
        }
    }
    let stats = region.expect("measured").change();
    engine.shutdown();
    drop(engine);
    if sqlite {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let per = |v: usize| v as f64 / SENDS as f64;
    (
        per(stats.allocations + stats.reallocations),
        per(stats.bytes_allocated),
    )
}
