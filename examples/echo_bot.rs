//! A bot that answers every message it receives with `echo: <text>`, in the same thread.
//!
//! Run: `cargo run -p examples --example echo_bot -- --url ws://127.0.0.1:8080/ws --token echo`
//!
//! It connects as the token's user (in dev auth the token is the user id) and reconnects
//! by itself when the server goes away; messages that arrived meanwhile are caught up and
//! answered too. It never answers its own messages, nor other bots' echoes, so two bots
//! in one thread do not loop.

use messenger_client::{Client, ClientConfig, ConnectionState, Event};

fn usage() -> ! {
    eprintln!("usage: echo_bot --url ws://HOST:PORT/ws --token TOKEN");
    std::process::exit(2)
}

fn args() -> (String, String) {
    let mut url = None;
    let mut token = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = it.next(),
            "--token" => token = it.next(),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    match (url, token) {
        (Some(u), Some(t)) => (u, t),
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
    let (url, token) = args();
    println!("echo_bot: connecting to {url}");
    // Retries with backoff until the server is up; a refused token ends the program.
    let client = Client::connect_with(ClientConfig::new(url, token)).await?;
    let me = client.user_id().ok_or("no user id after welcome")?;
    println!("echo_bot: online as {me}");
    let mut events = client.events().ok_or("event stream already taken")?;
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(m) if m.sender_id != me && !m.text.starts_with("echo: ") => {
                let reply = format!("echo: {}", m.text);
                let client = client.clone();
                // Sends run beside the event loop so it keeps draining events.
                tokio::spawn(async move {
                    if let Err(e) = client.send(&m.thread_id, reply).await {
                        eprintln!("echo_bot: could not answer in {}: {e}", m.thread_id);
                    }
                });
            }
            Event::Connection(ConnectionState::Closed { error }) => {
                if let Some(e) = error {
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
