//! What a store costs a send: sequential `send` round trips (stored in the outbox,
//! written, `message_sent`) against the real server on loopback, with the
//! `MemoryStore` and with the `SqliteStore` (`synchronous = FULL`: one fsync per
//! batch of sends). Prints the median and p99 per store.
//!
//! `cargo bench -p messenger-client --all-features --bench sends [-- N]` (N sends per
//! store, default 1000); under `cargo test` it runs 20 as a smoke test.

use std::time::{Duration, Instant};

use messenger_client::{Client, ClientStore, MemoryStore, SqliteStore, UserId};
use messenger_server::{Server, ServerConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(url: &str, user: &str, store: impl ClientStore, n: usize) -> Vec<Duration> {
    let (client, mut events) = Client::builder()
        .url(url)
        .token(user)
        .store(store)
        .connect()
        .await
        .expect("connect");
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let thread = client
        .create_group(&[UserId::new("reader").expect("id")], "bench")
        .await
        .expect("group")
        .thread_id;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        client
            .send(&thread, format!("message {i}"))
            .await
            .expect("send");
        took.push(t0.elapsed());
    }
    client.close().await;
    took.sort();
    took
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench { 1000 } else { 20 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut config = ServerConfig::default();
        config.limits.rate_limit_per_sec = 1_000_000;
        config.limits.rate_limit_burst = 1_000_000;
        let server = Server::builder()
            .adapters(messenger_storage_mem::adapters())
            .config(config)
            .build()
            .await
            .expect("server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        tokio::spawn(server.serve(listener, std::future::pending::<()>()));
        let dir = std::env::temp_dir().join(format!("messenger-sends-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let memory = run(&url, "mem", MemoryStore::new(), n).await;
        let sqlite = SqliteStore::open(dir.join("bench.db"))
            .await
            .expect("store");
        let sqlite = run(&url, "sqlite", sqlite, n).await;
        for (name, took) in [("MemoryStore", &memory), ("SqliteStore", &sqlite)] {
            println!(
                "{name}: {n} sequential sends, median {:?}, p99 {:?}",
                percentile(took, 0.5),
                percentile(took, 0.99)
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    });
}
