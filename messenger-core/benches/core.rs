//! Micro-benchmarks of the core: id generation, frame encode and decode.
#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Run with `cargo bench -p messenger-core --bench core`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use messenger_core::idgen::Snowflake;
use messenger_core::protocol::{decode_client, ServerFrame};
use messenger_core::{MessageId, NodeId, ThreadId, UserId};

fn idgen(c: &mut Criterion) {
    let g = Snowflake::new(NodeId::new(1).expect("node"));
    let mut group = c.benchmark_group("idgen");
    group.throughput(Throughput::Elements(1));
    group.bench_function("snowflake_next", |b| {
        b.iter(|| std::hint::black_box(g.next()))
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let send = r#"{"type":"send_message","req_id":17,"thread_id":"dm:alice:bob","temp_id":"c-000123","text":"hello there, how are you doing today?"}"#;
    let receive = ServerFrame::ReceiveMessage {
        thread_id: ThreadId::new("dm:alice:bob").expect("id"),
        message_id: MessageId(1_234_567_890_123_456),
        seq: 42,
        sender_id: UserId::new("alice").expect("id"),
        text: "hello there, how are you doing today?".into(),
        sent_at: 1_700_000_000_000,
    };
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_send_message", |b| {
        b.iter(|| std::hint::black_box(decode_client(std::hint::black_box(send))))
    });
    group.bench_function("encode_receive_message", |b| {
        b.iter_batched(
            || receive.clone(),
            |f| std::hint::black_box(f.encode()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, idgen, frames);
criterion_main!(benches);
