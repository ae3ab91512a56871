//! Micro-benchmarks of the send path below the transport: the in-memory append and the
//! engine's whole `send_message` path (decode, membership, id, append, fan-out to the
//! peer's outbox, `message_sent` to the sender), draining both outboxes each time.
//! Frame encode/decode and the IdGenerator are in `messenger-core/benches/core.rs`.
//!
//! Run with `cargo bench -p messenger-bench --bench engine`.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use messenger_core::engine::{Engine, EngineConfig};
use messenger_core::model::NewMessage;
use messenger_core::{MessageStore, NodeId, ThreadId, UserId};
use messenger_storage_mem::MemBackend;

const TEXT: &str = "hello there, how are you doing today? 0123456789 abcdefghij";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn mem_append(c: &mut Criterion) {
    let rt = runtime();
    let backend = MemBackend::new();
    let ids = backend.adapters(NodeId::default()).ids;
    let store = backend.messages().clone();
    let alice = UserId::new("alice").expect("id");
    let threads: Vec<ThreadId> = (0..64)
        .map(|i| ThreadId::new(format!("dm:alice:u{i}")).expect("id"))
        .collect();
    let mut n = 0u64;
    let mut group = c.benchmark_group("mem_store");
    group.throughput(Throughput::Elements(1));
    group.bench_function("append", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    n += 1;
                    let msg = NewMessage {
                        thread_id: threads[(n % 64) as usize].clone(),
                        message_id: ids.next_id(),
                        sender_id: alice.clone(),
                        temp_id: format!("t{n}"),
                        text: TEXT.to_string(),
                        sent_at: 1_700_000_000_000,
                    };
                    std::hint::black_box(store.append(msg).await.expect("append"));
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn engine_send(c: &mut Criterion) {
    // As a cluster node would run (directory lookup on every send), and as the
    // single-node default server runs (its own session table only).
    engine_send_with(c, "send_message_direct", false);
    engine_send_with(c, "send_message_direct_single_node", true);
}

fn engine_send_with(c: &mut Criterion, name: &str, single_node: bool) {
    let rt = runtime();
    let (engine, mut alice, mut bob, thread) = rt.block_on(async {
        let mut config = EngineConfig::default();
        config.single_node = single_node;
        let engine = Engine::start(config, MemBackend::new().adapters(NodeId::default()))
            .await
            .expect("engine");
        let mut alice = engine
            .connect(UserId::new("alice").expect("id"))
            .await
            .expect("connect");
        let mut bob = engine
            .connect(UserId::new("bob").expect("id"))
            .await
            .expect("connect");
        engine
            .handle_text(
                &alice.handle,
                r#"{"type":"create_thread","kind":"direct","members":["bob"]}"#,
            )
            .await;
        while alice.outbox.try_recv().is_some() {}
        while bob.outbox.try_recv().is_some() {}
        let thread = ThreadId::direct(alice.handle.user(), bob.handle.user());
        (engine, alice, bob, thread)
    });
    let mut n = 0u64;
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            // Frames are built outside the timed loop; decoding them is part of the path.
            let frames: Vec<String> = (0..iters)
                .map(|_| {
                    n += 1;
                    format!(
                        r#"{{"type":"send_message","req_id":{n},"thread_id":"{thread}","temp_id":"t{n}","text":"{TEXT}"}}"#
                    )
                })
                .collect();
            rt.block_on(async {
                let start = Instant::now();
                for f in &frames {
                    // The send is admitted, then committed by the thread's committer
                    // task: wait for both frames.
                    engine.handle_text(&alice.handle, f).await;
                    let sent = alice.outbox.recv().await.expect("message_sent");
                    let recv = bob.outbox.recv().await.expect("receive_message");
                    std::hint::black_box((sent, recv));
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // The stores only grow: keep runs short so memory stays bounded.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = mem_append, engine_send
}
criterion_main!(benches);
