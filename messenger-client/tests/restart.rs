//! Kill and restart, as real processes: an app (this binary run as `app`) with an
//! SQLite store is killed (SIGKILL) with messages in its outbox, restarted while the
//! server is down, then the server comes back. Each queued message is sent exactly
//! once under the same temp id, and every thread resumes after the seq the app held,
//! without refetching what it held.
//!
//! `harness = false`: `main` is the parent unless the first argument is `app`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use messenger_client::{Client, ConnectionState, Event, SqliteStore, ThreadId, UserId};
use messenger_storage_mem::MemBackend;
use support::{scratch, server_config, start};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if args.get(1).map(String::as_str) == Some("app") {
        rt.block_on(app(&args[2], &args[3]));
        return;
    }
    let t0 = Instant::now();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), parent())
            .await
            .expect("the restart test took too long")
    });
    // The plain closing line test runners read.
    println!("test kill_and_restart_sends_each_queued_message_once_and_resumes_every_thread ... ok ({:?})", t0.elapsed());
    println!("1 passed, 0 failed");
}

/// The app: prints what happens, one line each; takes commands on stdin.
async fn app(url: &str, store: &str) {
    let store = SqliteStore::open(store).await.expect("open store");
    let (client, mut events) = Client::builder()
        .url(url)
        .token("bob")
        .store(store)
        .backoff(messenger_client::BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            multiplier: 2.0,
            max_retries: None,
        })
        .build()
        .await
        .expect("build");
    for e in client.outbox().await.expect("outbox") {
        println!("OUTBOX {} {} {}", e.thread_id, e.temp_id, e.text);
    }
    println!("STARTED");
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Message(m)) => println!("MSG {} {} {}", m.thread_id, m.seq, m.text),
                Some(Event::Sent(s)) => println!("SENT {} {} {}", s.thread_id, s.temp_id, s.seq),
                Some(Event::Connection(ConnectionState::Connected { .. })) => println!("ONLINE"),
                Some(Event::Connection(ConnectionState::WaitingToRetry { .. })) => println!("OFFLINE"),
                Some(_) => {}
                None => return,
            },
            line = commands.recv() => {
                let Some(line) = line else { return };
                let mut parts = line.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("send"), Some(thread), Some(text)) => {
                        let thread = ThreadId::new(thread).expect("thread id");
                        let temp = client.enqueue(&thread, text).await.expect("enqueue");
                        println!("QUEUED {thread} {temp} {text}");
                    }
                    (Some("flush"), _, _) => {
                        client.flush().await.expect("flush");
                        println!("FLUSHED");
                    }
                    other => panic!("unknown command {other:?}"),
                }
            }
        }
        let _ = std::io::stdout().flush();
    }
}

/// A running app process and its output.
struct App {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl App {
    fn start(url: &str, store: &std::path::Path) -> App {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .arg("app")
            .arg(url)
            .arg(store)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn app");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        App {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to app");
    }

    /// Waits for a line starting with `prefix`; returns it.
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!("app never printed {prefix:?}; it printed {:#?}", self.seen),
            }
        }
    }

    /// Every line printed so far (and within `settle` more).
    fn drain(&mut self, settle: Duration) -> Vec<String> {
        while let Ok(l) = self.lines.recv_timeout(settle) {
            self.seen.push(l);
        }
        self.seen.clone()
    }

    fn kill(mut self) {
        // SIGKILL: no destructor, no close, no flush runs in the app.
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }
}

fn msgs(lines: &[String], thread: &ThreadId) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("MSG ")?;
            let mut p = rest.splitn(3, ' ');
            let (t, seq, text) = (p.next()?, p.next()?, p.next()?);
            (t == thread.as_str()).then(|| (seq.parse().ok(), text.to_string()))
        })
        .filter_map(|(s, t)| s.map(|s| (s, t)))
        .collect()
}

async fn parent() {
    let dir = scratch("restart");
    let store = dir.join("bob.db");
    let mem = MemBackend::new();
    let server = start(&mem, "127.0.0.1:0".parse().expect("addr"), server_config()).await;
    let addr = server.addr;
    let url = server.url();
    let (alice, _alice_events) = Client::connect(url.clone(), "alice").await.expect("alice");
    let bob = UserId::new("bob").expect("id");
    let dm = alice.create_direct(&bob).await.expect("dm").thread_id;
    let group = alice
        .create_group(std::slice::from_ref(&bob), "team")
        .await
        .expect("group")
        .thread_id;

    // The app, online: it holds five messages of each thread.
    let mut app = App::start(&url, &store);
    app.expect("ONLINE");
    for i in 1..=5 {
        alice.send(&dm, format!("dm {i}")).await.expect("send");
        alice
            .send(&group, format!("group {i}"))
            .await
            .expect("send");
    }
    for _ in 0..10 {
        app.expect("MSG ");
    }
    app.send("flush");
    app.expect("FLUSHED");

    // Offline: the user writes three messages per thread; the app is killed.
    server.stop().await;
    app.expect("OFFLINE");
    let mut queued = Vec::new();
    for i in 1..=3 {
        for t in [&dm, &group] {
            app.send(&format!("send {t} reply {i} in {t}"));
            let l = app.expect("QUEUED ");
            let mut p = l.splitn(4, ' ');
            p.next();
            let (thread, temp) = (p.next().expect("thread"), p.next().expect("temp"));
            queued.push((thread.to_string(), temp.to_string()));
        }
    }
    let first_run = app.drain(Duration::from_millis(50));
    app.kill();
    assert_eq!(msgs(&first_run, &dm).len(), 5);

    // While the app is dead, alice writes more.
    let server = start(&mem, addr, server_config()).await;
    let (alice, _alice_events) = Client::connect(url.clone(), "alice").await.expect("alice");
    for i in 6..=7 {
        alice.send(&dm, format!("dm {i}")).await.expect("send");
        alice
            .send(&group, format!("group {i}"))
            .await
            .expect("send");
    }
    alice.close().await;
    server.stop().await;

    // Restarted offline: the outbox is there, same temp ids, in order.
    let mut app = App::start(&url, &store);
    app.expect("STARTED");
    let outbox: Vec<(String, String)> = app
        .seen
        .iter()
        .filter_map(|l| {
            let mut p = l.strip_prefix("OUTBOX ")?.splitn(3, ' ');
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect();
    assert_eq!(outbox, queued, "the same sends, same temp ids, same order");
    app.expect("OFFLINE");

    // Online again.
    let server = start(&mem, addr, server_config()).await;
    app.expect("ONLINE");
    for _ in 0..queued.len() {
        app.expect("SENT ");
    }
    // Each thread: alice's two new messages, then the app's three, nothing it held.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = app.drain(Duration::from_millis(50));
        if msgs(&lines, &dm).len() >= 5 && msgs(&lines, &group).len() >= 5 {
            break app.drain(Duration::from_millis(300));
        }
        assert!(Instant::now() < deadline, "catch-up incomplete: {lines:#?}");
    };
    for (t, name) in [(&dm, "dm"), (&group, "group")] {
        let got = msgs(&lines, t);
        let seqs: Vec<u64> = got.iter().map(|m| m.0).collect();
        assert_eq!(
            seqs,
            (6..=10).collect::<Vec<_>>(),
            "{name}: resumes after seq 5, each once: {got:?}"
        );
        assert_eq!(got[0].1, format!("{name} 6"));
        assert_eq!(got[1].1, format!("{name} 7"));
        let replies: Vec<&str> = got[2..].iter().map(|m| m.1.as_str()).collect();
        assert_eq!(
            replies,
            (1..=3)
                .map(|i| format!("reply {i} in {t}"))
                .collect::<Vec<_>>()
        );
    }
    let sent: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| {
            let mut p = l.strip_prefix("SENT ")?.splitn(3, ' ');
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect();
    assert_eq!(
        sent, queued,
        "every queued send confirmed under its temp id"
    );
    // The server holds each reply exactly once.
    let (alice, _alice_events) = Client::connect(url.clone(), "alice").await.expect("alice");
    for t in [&dm, &group] {
        let all = alice.history_after(t, 0).await.expect("history");
        assert_eq!(all.len(), 10);
        for i in 1..=3 {
            let text = format!("reply {i} in {t}");
            assert_eq!(all.iter().filter(|m| m.text == text).count(), 1, "{text}");
        }
    }
    // Killed again after everything was sent: nothing is resent.
    app.send("flush");
    app.expect("FLUSHED");
    app.kill();
    let mut app = App::start(&url, &store);
    app.expect("STARTED");
    assert!(
        !app.seen.iter().any(|l| l.starts_with("OUTBOX ")),
        "an empty outbox after confirmation: {:?}",
        app.seen
    );
    app.expect("ONLINE");
    let lines = app.drain(Duration::from_millis(300));
    assert!(
        msgs(&lines, &dm).is_empty() && msgs(&lines, &group).is_empty(),
        "{lines:#?}"
    );
    app.kill();
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
