//! An application that embeds the messenger server in its own tokio runtime, with the
//! in-memory adapters and its own `PushSink`.
//!
//! Run: `cargo run -p examples --example embedded -- --listen 127.0.0.1:8080`
//!
//! The app owns the runtime and runs the server next to its other services (here, a
//! notification worker fed by the push sink). On start it plays a short demo: alice
//! writes to bob, who is offline, so the message goes to the push sink. Then it keeps
//! serving (connect with the `chat` example) until Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use messenger_client::{Client, UserId};
use messenger_core::model::PushNotification;
use messenger_core::PushSink;
use messenger_server::{Server, ServerConfig};
use tokio::sync::mpsc;

/// Hands notifications to the app's notification worker over a bounded channel.
struct AppPush {
    tx: mpsc::Sender<PushNotification>,
}

#[async_trait]
impl PushSink for AppPush {
    async fn push(&self, n: PushNotification) -> messenger_core::Result<()> {
        // Never block delivery on a slow worker: drop and report when it is behind.
        self.tx
            .try_send(n)
            .map_err(|e| messenger_core::Error::unavailable(format!("push worker: {e}")))
    }
}

fn listen_addr() -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:8080".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = args.next().ok_or("--listen needs ADDR")?,
            other => {
                return Err(
                    format!("unknown argument {other}; usage: embedded [--listen ADDR]").into(),
                )
            }
        }
    }
    Ok(addr.parse()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = listen_addr()?;
    // The application's own runtime: two workers, named threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("app-worker")
        .enable_all()
        .build()?;
    runtime.block_on(app(addr))
}

async fn app(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    // The app's notification worker.
    let (push_tx, mut push_rx) = mpsc::channel::<PushNotification>(1024);
    let worker = tokio::spawn(async move {
        while let Some(n) = push_rx.recv().await {
            println!(
                "[push] to {}: {} wrote in {} (seq {}): {}",
                n.user_id, n.sender_id, n.thread_id, n.seq, n.text
            );
        }
    });

    // The server: in-memory adapters, the app's push sink, dev auth on loopback.
    let config = ServerConfig::default();
    let server = Server::builder()
        .adapters(messenger_storage_mem::adapters())
        .push_sink(Arc::new(AppPush { tx: push_tx }))
        .config(config)
        .build()
        .await?;
    let listener = messenger_server::bind_listener(addr)?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stop_rx.await;
    }));
    println!("embedded server on {url} (dev auth: the token is the user id)");

    // Demo: alice writes to bob, who has no session: the push sink gets it.
    let (alice, _events) = Client::connect(url.clone(), "alice").await?;
    let dm = alice.create_direct(&UserId::new("bob")?).await?;
    let sent = alice.send(&dm.thread_id, "are you there, bob?").await?;
    println!(
        "alice's message is stored: id {} seq {}",
        sent.message_id, sent.seq
    );
    alice.close().await;

    println!("serving; try `cargo run -p examples --example chat -- --url {url} --token bob`. Ctrl-C stops.");
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(());
    serving.await??;
    worker.abort();
    Ok(())
}
