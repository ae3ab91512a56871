//! A bot that answers every message it receives with `echo: <text>`, in the same thread.
//!
//! Run: `cargo run -p examples --example echo_bot -- --url ws://127.0.0.1:8080/ws --token echo --store echo.db`
//!
//! With `--store PATH` its outbox and positions are in SQLite: a bot killed mid-answer
//! sends the answers it had queued when it starts again, and answers what arrived while
//! it was down, each exactly once. `--max-attempts N` makes it give up (exit 1) after N
//! failed connection attempts in a row instead of retrying forever.
//!
//! It connects as the token's user (in dev auth the token is the user id) and reconnects
//! by itself when the server goes away; messages that arrived meanwhile are caught up and
//! answered too. It never answers its own messages, nor other bots' echoes, so two bots
//! in one thread do not loop.

use messenger_client::{Client, ConnectionState, Event, SqliteStore, StopReason};

fn usage() -> ! {
    eprintln!(
        "usage: echo_bot --url ws://HOST:PORT/ws --token TOKEN [--store PATH] [--max-attempts N]"
    );
    std::process::exit(2)
}

fn args() -> (String, String, Option<String>, Option<u32>) {
    let mut url = None;
    let mut token = None;
    let mut store = None;
    let mut attempts = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = it.next(),
            "--token" => token = it.next(),
            "--store" => store = it.next(),
            "--max-attempts" => {
                attempts = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    match (url, token) {
        (Some(u), Some(t)) => (u, t, store, attempts),
        _ => usage(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (url, token, store, attempts) = args();
    let store = match store {
        Some(path) => Some(SqliteStore::open(path).await?),
        None => None,
    };
    run(&url, &token, store, attempts, None).await
}

/// The bot: connects and answers until the client stops. `ready` hears when the first
/// catch-up is done.
async fn run(
    url: &str,
    token: &str,
    store: Option<SqliteStore>,
    attempts: Option<u32>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("echo_bot: connecting to {url}");
    let mut builder = Client::builder().url(url).token(token);
    if let Some(store) = store {
        builder = builder.store(store);
    }
    if let Some(n) = attempts {
        builder = builder.max_connect_attempts(n);
    }
    // Retries with backoff until the server is up; a refused token ends the program.
    let (client, mut events) = builder.connect().await?;
    let me = client.user_id().ok_or("no user id after welcome")?;
    println!("echo_bot: online as {me}");
    if let Some(r) = ready {
        let _ = r.send(());
    }
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(m) if m.sender_id != me && !m.text.starts_with("echo: ") => {
                // In the outbox (and the store) before the next event is read: a bot
                // killed now answers when it starts again; the server drops doubles.
                let temp_id = format!("echo-{}", m.message_id);
                client
                    .enqueue_with_temp_id(&m.thread_id, temp_id, format!("echo: {}", m.text))
                    .await?;
            }
            Event::SendFailed(f) => {
                eprintln!("echo_bot: could not answer in {}: {}", f.thread_id, f.error)
            }
            Event::Connection(ConnectionState::Stopped { reason }) => {
                if let StopReason::Failed(e) = reason {
                    return Err(e.into());
                }
                break;
            }
            Event::Connection(state) => println!("echo_bot: {state:?}"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_client::{Event, UserId};
    use messenger_server::{Server, ServerConfig};
    use std::time::Duration;

    /// The next `n` echoes alice receives.
    async fn echoes(events: &mut messenger_client::Events, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(Event::Message(m))) if m.text.starts_with("echo: ") => got.push(m.text),
                Ok(Some(_)) => {}
                other => panic!("after {got:?}: {other:?}"),
            }
        }
        got
    }

    /// The bot on an SQLite store against the real server; stopped (all its memory
    /// dropped) and started again on the same file, it answers what arrived meanwhile,
    /// each message exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_and_survives_a_restart_on_its_store() {
        let server = Server::builder()
            .adapters(messenger_storage_mem::adapters())
            .config(ServerConfig::default())
            .build()
            .await
            .expect("server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/tmp")
            .join(format!("echo-bot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("echo.db");

        let (alice, mut events) = Client::connect(url.clone(), "alice").await.expect("alice");
        let dm = alice
            .create_direct(&UserId::new("echo").expect("id"))
            .await
            .expect("dm")
            .thread_id;
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let bot = {
            let store = SqliteStore::open(&path).await.expect("store");
            let url = url.clone();
            tokio::spawn(async move {
                run(&url, "echo", Some(store), Some(3), Some(ready))
                    .await
                    .map_err(|e| e.to_string())
            })
        };
        // A new store starts at each thread's end: send once the bot has looked.
        is_ready.await.expect("bot ready");
        alice.send(&dm, "one").await.expect("send");
        assert_eq!(echoes(&mut events, 1).await, ["echo: one"]);
        bot.abort();
        let _ = bot.await;
        // While the bot is down.
        alice.send(&dm, "two").await.expect("send");
        alice.send(&dm, "three").await.expect("send");
        let bot = {
            let store = SqliteStore::open(&path).await.expect("store reopens");
            let url = url.clone();
            tokio::spawn(async move {
                run(&url, "echo", Some(store), Some(3), None)
                    .await
                    .map_err(|e| e.to_string())
            })
        };
        assert_eq!(echoes(&mut events, 2).await, ["echo: two", "echo: three"]);
        // "one" is not answered twice.
        if let Ok(Some(Event::Message(m))) =
            tokio::time::timeout(Duration::from_millis(500), events.recv()).await
        {
            panic!("unexpected {}", m.text);
        }
        bot.abort();
        let _ = stop.send(());
        let _ = serving.await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
