//! A terminal chat client: 1:1 and group chats with sent, delivered and read marks and
//! presence.
//!
//! Run: `cargo run -p examples --example chat -- --url ws://127.0.0.1:8080/ws --token alice --store alice.db`
//! (start a server first, e.g. `cargo run -p messenger-server --features cli`; open a second terminal
//! with `--token bob --store bob.db`).
//!
//! `--store PATH` keeps the outbox, each thread's position and receipts in SQLite: quit
//! (or kill) the chat with messages still unsent, start it again, even with the server
//! down, and they go out once it is back, each exactly once; threads resume where you
//! left them. Without `--store` everything is in memory. `--ca PEM` trusts a private
//! CA for `wss://` URLs.
//!
//! Commands (one per line; anything else is sent to the current thread):
//! - `/dm bob`: open the direct thread with bob (and watch his presence)
//! - `/group bob,carol Weekend plans`: create a group with a title
//! - `/threads`: list threads with unread counts; `/open N` switches to thread N (or
//!   `/open THREAD_ID`, offline too)
//! - `/history [N]`: the last N (default 20) messages of the current thread
//! - `/add dave,erin`, `/leave`: change a group's members
//! - `/who bob,carol`: watch presence
//! - `/quit`
//!
//! Marks: `✓` sent (stored by the server), `✓✓` delivered to the other side's device,
//! `read by X` when X has read it. Messages shown in the current thread are marked read.

use messenger_client::{
    AckStatus, Certificate, Client, ConnectionState, Cursor, Event, Message, PresenceStatus,
    SqliteStore, StopReason, ThreadId, UserId,
};
use tokio::io::{AsyncBufReadExt, BufReader};

fn usage() -> ! {
    eprintln!("usage: chat [--url ws://127.0.0.1:8080/ws] --token TOKEN [--store PATH] [--ca PEM]");
    std::process::exit(2)
}

struct Args {
    url: String,
    token: String,
    store: Option<String>,
    ca: Option<String>,
}

fn args() -> Args {
    let mut url = "ws://127.0.0.1:8080/ws".to_string();
    let (mut token, mut store, mut ca) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = it.next().unwrap_or_else(|| usage()),
            "--token" => token = it.next(),
            "--store" => store = it.next(),
            "--ca" => ca = it.next(),
            _ => usage(),
        }
    }
    Args {
        url,
        token: token.unwrap_or_else(|| usage()),
        store,
        ca,
    }
}

fn users(list: &str) -> Result<Vec<UserId>, messenger_client::ClientError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            UserId::new(s.trim())
                .map_err(|e| messenger_client::ClientError::Protocol(e.to_string()))
        })
        .collect()
}

/// What the screen knows.
#[derive(Default)]
struct Ui {
    current: Option<ThreadId>,
    listed: Vec<ThreadId>,
}

fn show(m: &Message, me: Option<&UserId>) {
    let who = if Some(&m.sender_id) == me {
        "me"
    } else {
        m.sender_id.as_str()
    };
    println!("[{} #{}] {who}: {}", m.thread_id, m.seq, m.text);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let mut builder = Client::builder().url(&args.url).token(&args.token);
    if let Some(path) = &args.store {
        builder = builder.store(SqliteStore::open(path).await?);
    }
    if let Some(ca) = &args.ca {
        for cert in Certificate::from_pem(&std::fs::read(ca)?)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    // Returns at once: the client connects in the background (sends wait in the outbox).
    let (client, mut events) = builder.build().await?;
    let pending = client.outbox().await?;
    if !pending.is_empty() {
        println!(
            "{} message(s) from last time wait to be sent",
            pending.len()
        );
    }
    println!(
        "connecting to {}. /dm USER to start; /threads to list.",
        args.url
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut ui = Ui::default();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                if let Err(e) = command(&client, &mut ui, line.trim()).await {
                    println!("! {e}");
                }
                if line.trim() == "/quit" {
                    break;
                }
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                // Known from the store, or from the first `welcome`.
                let me = client.user_id();
                on_event(&client, &mut ui, me.as_ref(), event);
            }
        }
    }
    client.close().await;
    Ok(())
}

fn on_event(client: &Client, ui: &mut Ui, me: Option<&UserId>, event: Event) {
    match event {
        Event::Message(m) => {
            if ui.current.is_none() {
                println!("now in {} (the first thread with news)", m.thread_id);
                ui.current = Some(m.thread_id.clone());
            }
            show(&m, me);
            if Some(&m.sender_id) != me && ui.current.as_ref() == Some(&m.thread_id) {
                let (client, thread, id) = (client.clone(), m.thread_id.clone(), m.message_id);
                tokio::spawn(async move { client.mark_read(&thread, id).await });
            }
        }
        Event::Sent(s) => println!("  ✓ #{} sent", s.seq),
        Event::SendFailed(f) => println!("  ✗ not sent in {}: {}", f.thread_id, f.error),
        Event::Receipt(r) if Some(&r.user_id) != me => {
            let mark = match r.status {
                AckStatus::Delivered => "✓✓ delivered to",
                AckStatus::Read => "read by",
            };
            println!(
                "  {mark} {} (up to #{} in {})",
                r.user_id, r.seq, r.thread_id
            );
        }
        Event::Presence(p) => match p.status {
            PresenceStatus::Online => println!("  • {} is online", p.user_id),
            PresenceStatus::Offline => println!("  ◦ {} is offline", p.user_id),
        },
        Event::Typing(t) if t.typing => println!("  {} is typing in {}…", t.user_id, t.thread_id),
        Event::Thread(t) => {
            let title = t.title.as_deref().unwrap_or("");
            let members: Vec<&str> = t.members.iter().map(|u| u.as_str()).collect();
            println!("  thread {} {title} [{}]", t.thread_id, members.join(", "));
        }
        Event::Connection(ConnectionState::Connected { user_id, .. }) => {
            println!("  (online as {user_id})")
        }
        Event::Connection(ConnectionState::WaitingToRetry { delay, error, .. }) => println!(
            "  (offline: {error}; retrying in {} ms, messages you send are queued)",
            delay.as_millis()
        ),
        Event::Connection(ConnectionState::Stopped { reason }) => match reason {
            StopReason::Failed(e) => println!("  (stopped: {e})"),
            _ => println!("  (closed)"),
        },
        _ => {}
    }
}

async fn command(
    client: &Client,
    ui: &mut Ui,
    line: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "" | "/quit" => {}
        "/dm" => {
            let other = UserId::new(rest.trim())?;
            let t = client.create_direct(&other).await?;
            println!("now in {}", t.thread_id);
            ui.current = Some(t.thread_id);
            client.subscribe_presence(&[other]).await?;
        }
        "/group" => {
            let (list, title) = rest.split_once(' ').unwrap_or((rest, ""));
            let t = client.create_group(&users(list)?, title.trim()).await?;
            println!("now in {}", t.thread_id);
            ui.current = Some(t.thread_id);
        }
        "/threads" => {
            let threads = client.list_threads().await?;
            ui.listed = threads.iter().map(|t| t.thread_id.clone()).collect();
            for (i, t) in threads.iter().enumerate() {
                let members: Vec<&str> = t.members.iter().map(|u| u.as_str()).collect();
                println!(
                    "{i}: {} {} [{}] {} messages, {} unread",
                    t.thread_id,
                    t.title.as_deref().unwrap_or(""),
                    members.join(", "),
                    t.last_seq,
                    t.unread
                );
            }
        }
        "/open" => {
            // A number from /threads, or a thread id (works offline too).
            let t = match rest.trim().parse::<usize>() {
                Ok(i) => ui
                    .listed
                    .get(i)
                    .cloned()
                    .ok_or("no such thread; /threads first")?,
                Err(_) => ThreadId::new(rest.trim())?,
            };
            println!("now in {t}");
            ui.current = Some(t);
        }
        "/history" => {
            let t = ui.current.clone().ok_or("no current thread")?;
            let n = if rest.trim().is_empty() {
                20
            } else {
                rest.trim().parse()?
            };
            let page = client.fetch_history(&t, Cursor::Latest, Some(n)).await?;
            let me = client.user_id();
            for m in &page.messages {
                show(m, me.as_ref());
            }
            if let Some(last) = page.messages.last() {
                client.mark_read(&t, last.message_id).await?;
            }
        }
        "/add" => {
            let t = ui.current.clone().ok_or("no current thread")?;
            client.add_members(&t, &users(rest)?).await?;
        }
        "/leave" => {
            let t = ui.current.take().ok_or("no current thread")?;
            client.leave_thread(&t).await?;
        }
        "/who" => client.subscribe_presence(&users(rest)?).await?,
        c if c.starts_with('/') => println!("! unknown command {c}"),
        _ => {
            let t = ui
                .current
                .clone()
                .ok_or("no current thread: /dm USER or /group first")?;
            // Stored in the outbox before this returns; the ✓ comes with the Sent event.
            client.enqueue(&t, line).await?;
        }
    }
    Ok(())
}
