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
    println!("echo_bot: connecting to {url}");
    let mut builder = Client::builder().url(url).token(token);
    if let Some(path) = store {
        builder = builder.store(SqliteStore::open(path).await?);
    }
    if let Some(n) = attempts {
        builder = builder.max_connect_attempts(n);
    }
    // Retries with backoff until the server is up; a refused token ends the program.
    let (client, mut events) = builder.connect().await?;
    let me = client.user_id().ok_or("no user id after welcome")?;
    println!("echo_bot: online as {me}");
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
