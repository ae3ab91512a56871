//! The binary on its default durable store (SQLite in a data directory), as real
//! processes: a SIGKILL in the middle of traffic from many clients loses no confirmed
//! message, the default directory, the lock against a second process, and the bad
//! inputs that must exit non-zero with a message that says what to do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use messenger_test_support::process::{free_port, tmp_dir, wait_until, Proc};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const BIN: &str = env!("CARGO_BIN_EXE_messenger-server");

/// A fresh, not yet existing data directory for this test process.
fn data_dir(name: &str) -> PathBuf {
    tmp_dir("durable").join(name)
}

fn server_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("MESSENGER_JWT_SECRET")
        .env("RUST_LOG", "info");
    c
}

/// Starts the binary on `dir` and waits until /healthz answers.
fn start(dir: &Path, name: &str) -> (Proc, SocketAddr) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir_s = dir.display().to_string();
    let cmd = server_cmd(&[
        "--listen",
        &listen,
        "--data-dir",
        &dir_s,
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ]);
    let log = tmp_dir("durable").join(format!("{name}-{port}.log"));
    let mut proc = Proc::spawn(name, cmd, log);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(s)) = proc.child.try_wait() {
            panic!("{name} exited ({s}) at start:\n{}", proc.log_text());
        }
        if healthz(addr) {
            return (proc, addr);
        }
        assert!(
            Instant::now() < end,
            "{name} not healthy in 60 s:\n{}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 12 && buf.starts_with(b"HTTP/1.1 200"))
}

/// A client that sends one request at a time and waits for its reply.
struct User {
    name: String,
    ws: Ws,
    next_req: u64,
}

impl User {
    async fn connect(addr: SocketAddr, name: &str) -> User {
        let url = format!("ws://{addr}/ws?token={name}");
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let mut u = User {
            name: name.into(),
            ws,
            next_req: 0,
        };
        let w = u.next_frame().await.expect("welcome");
        assert_eq!(w["type"], "welcome", "{w}");
        u
    }

    async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("json"))
                }
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Sends `v` with a fresh req_id and returns its reply (other frames are skipped).
    async fn request(&mut self, mut v: Value) -> Value {
        self.next_req += 1;
        let id = format!("{}-r{}", self.name, self.next_req);
        v["req_id"] = json!(id);
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
        while let Some(r) = self.next_frame().await {
            if r["req_id"] == json!(id) {
                return r;
            }
        }
        panic!("{}: no reply to {v}", self.name);
    }

    /// Every message of `thread`, page by page from the start.
    async fn history(&mut self, thread: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        let mut after = 0u64;
        loop {
            let h = self
                .request(json!({"type":"fetch_history","thread_id":thread,"after_seq":after,"limit":100}))
                .await;
            assert_eq!(h["type"], "history", "{h}");
            let page = h["messages"].as_array().expect("messages").clone();
            let Some(last) = page.last() else { break };
            after = last["seq"].as_u64().expect("seq");
            all.extend(page);
        }
        all
    }
}

/// What one sending client saw before the server died.
#[derive(Default)]
struct Sent {
    /// (thread, temp_id) of every send_message written to the socket.
    written: Vec<(String, String)>,
    /// temp_id -> (thread, message_id, seq) of every `message_sent`.
    confirmed: HashMap<String, (String, String, u64)>,
}

/// Sends without waiting for each reply (up to `WINDOW` in flight, as clients pipeline),
/// alternating between `threads`, until the connection dies. Counts confirmations in
/// `total`.
async fn send_until_dead(
    ws: Ws,
    name: String,
    threads: Vec<String>,
    sent: Arc<Mutex<Sent>>,
    total: Arc<std::sync::atomic::AtomicUsize>,
) {
    const WINDOW: usize = 24;
    let (mut tx, mut rx) = ws.split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let reader = {
        let (sent, window, total) = (sent.clone(), window.clone(), total.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                match v["type"].as_str() {
                    Some("message_sent") => {
                        let temp = v["temp_id"].as_str().expect("temp_id").to_string();
                        let rec = (
                            v["thread_id"].as_str().expect("thread").to_string(),
                            v["message_id"].as_str().expect("id").to_string(),
                            v["seq"].as_u64().expect("seq"),
                        );
                        sent.lock().expect("lock").confirmed.insert(temp, rec);
                        total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        window.add_permits(1);
                    }
                    Some("error") => panic!("error reply during traffic: {v}"),
                    _ => {}
                }
            }
            // The server is gone: wake the sender if its window is full.
            window.close();
        })
    };
    for i in 0u64.. {
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        let thread = &threads[i as usize % threads.len()];
        let temp = format!("{name}-{i}");
        let frame =
            json!({"type":"send_message","req_id":i,"thread_id":thread,"temp_id":temp,"text":temp});
        sent.lock()
            .expect("lock")
            .written
            .push((thread.clone(), temp.clone()));
        if tx
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
        if reader.is_finished() {
            break;
        }
    }
    // The reader ends when the killed server's socket closes.
    reader.await.expect("reader");
}

/// SIGKILL in the middle of traffic from many clients, then a restart on the same
/// directory: every message that got `message_sent` is in history with the same
/// `message_id` and `seq`, seqs are gapless, nothing is stored twice, and resending a
/// `temp_id` after the restart returns the original message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_traffic_loses_no_confirmed_message() {
    const CLIENTS: usize = 12;
    let dir = data_dir("kill");
    let (mut server, addr) = start(&dir, "kill-1");
    assert!(
        server.log_text().contains("SQLite store in"),
        "the start notice names the store:\n{}",
        server.log_text()
    );

    // One group of everyone, and a direct thread per pair of clients.
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("k{i}")).collect();
    let mut users = Vec::new();
    for n in &names {
        users.push(User::connect(addr, n).await);
    }
    let others: Vec<&String> = names[1..].iter().collect();
    let g = users[0]
        .request(json!({"type":"create_thread","kind":"group","title":"all","members":others}))
        .await;
    let group = g["thread_id"].as_str().expect("group id").to_string();
    let mut threads_of: Vec<Vec<String>> = vec![vec![group.clone()]; CLIENTS];
    for i in (0..CLIENTS).step_by(2) {
        let r = users[i]
            .request(json!({"type":"create_thread","kind":"direct","members":[names[i + 1]]}))
            .await;
        let d = r["thread_id"].as_str().expect("direct id").to_string();
        threads_of[i].push(d.clone());
        threads_of[i + 1].push(d);
    }

    let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut sent = Vec::new();
    for (i, u) in users.into_iter().enumerate() {
        let s = Arc::new(Mutex::new(Sent::default()));
        sent.push(s.clone());
        tasks.push(tokio::spawn(send_until_dead(
            u.ws,
            names[i].clone(),
            threads_of[i].clone(),
            s,
            total.clone(),
        )));
    }
    // Kill while the traffic runs (sends in flight on every connection).
    let t = total.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("2000 confirmed sends", Duration::from_secs(60), || {
            t.load(std::sync::atomic::Ordering::Relaxed) >= 2000
        })
    })
    .await
    .expect("join");
    server.sigkill();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("clients see the connection die")
            .expect("client task");
    }
    let confirmed: usize = sent
        .iter()
        .map(|s| s.lock().expect("lock").confirmed.len())
        .sum();
    let written: usize = sent
        .iter()
        .map(|s| s.lock().expect("lock").written.len())
        .sum();
    eprintln!("killed with {confirmed} confirmed of {written} sends written");
    assert!(written > confirmed, "the kill landed with sends in flight");

    // Restart on the same directory (the dead process's lock is gone with it).
    let t0 = Instant::now();
    let (mut server, addr) = start(&dir, "kill-2");
    eprintln!("restarted in {:?}", t0.elapsed());

    // Every sender resends every temp_id it wrote that was not confirmed, and a few
    // confirmed ones: a confirmed one returns the original; either way each temp_id
    // ends up stored once.
    let mut resent: HashMap<String, (String, String, u64)> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let mut u = User::connect(addr, name).await;
        let (written, confirmed) = {
            let s = sent[i].lock().expect("lock");
            (s.written.clone(), s.confirmed.clone())
        };
        let mut confirmed_checked = 0;
        for (thread, temp) in &written {
            let original = confirmed.get(temp);
            if original.is_some() && confirmed_checked >= 5 {
                continue;
            }
            let r = u
                .request(
                    json!({"type":"send_message","thread_id":thread,"temp_id":temp,"text":temp}),
                )
                .await;
            assert_eq!(r["type"], "message_sent", "{r}");
            let got = (
                thread.clone(),
                r["message_id"].as_str().expect("id").to_string(),
                r["seq"].as_u64().expect("seq"),
            );
            if let Some(o) = original {
                assert_eq!(
                    &got, o,
                    "resending {temp} after the restart returns the original"
                );
                confirmed_checked += 1;
            }
            resent.insert(temp.clone(), got);
        }
    }

    // History: gapless seqs from 1, each temp_id (the text) once, every confirmation kept.
    let mut reader = User::connect(addr, &names[0]).await;
    let mut all_threads = BTreeSet::new();
    for ts in &threads_of {
        all_threads.extend(ts.iter().cloned());
    }
    let mut stored: HashMap<String, (String, String, u64)> = HashMap::new();
    let mut per_thread = BTreeMap::new();
    for t in &all_threads {
        // The reader is a member of the group and of its own direct thread only; read
        // each direct thread as one of its members.
        let who = names
            .iter()
            .enumerate()
            .find(|(i, _)| threads_of[*i].contains(t))
            .map(|(_, n)| n.clone())
            .expect("a member");
        let msgs = if who == names[0] || *t == group {
            reader.history(t).await
        } else {
            User::connect(addr, &who).await.history(t).await
        };
        let seqs: Vec<u64> = msgs
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        let expect: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expect, "thread {t}: seqs gapless from 1");
        for m in &msgs {
            let text = m["text"].as_str().expect("text").to_string();
            let rec = (
                t.clone(),
                m["message_id"].as_str().expect("id").to_string(),
                m["seq"].as_u64().expect("seq"),
            );
            assert!(
                stored.insert(text.clone(), rec).is_none(),
                "{text} stored twice"
            );
        }
        per_thread.insert(t.clone(), seqs.len());
    }
    for s in &sent {
        let s = s.lock().expect("lock");
        for (temp, rec) in &s.confirmed {
            assert_eq!(
                stored.get(temp),
                Some(rec),
                "{temp} got message_sent before the kill: same message_id and seq after it"
            );
        }
    }
    for (temp, rec) in &resent {
        assert_eq!(
            stored.get(temp),
            Some(rec),
            "{temp}: the resend's reply is what is stored"
        );
    }
    assert_eq!(
        stored.len(),
        written,
        "every send written is stored exactly once"
    );
    eprintln!("history after restart: {per_thread:?}");
    assert_eq!(server.sigterm(), Some(0), "{}", server.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

fn run(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut c = server_cmd(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.stdin(Stdio::null())
        .output()
        .expect("run messenger-server")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// No arguments: the data (messages and push settings) is kept in ./messenger-data (said
/// at start) and survives a restart; a second process on the same directory is refused while the first runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_directory_lock_and_restart() {
    let cwd = data_dir("cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = server_cmd(&["--listen", &listen]);
    cmd.current_dir(&cwd);
    let mut first = Proc::spawn("default", cmd, tmp_dir("durable").join("default.log"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(
        "the default server answers",
        Duration::from_secs(60),
        || healthz(addr),
    );
    let data = cwd.join("messenger-data");
    let notice = first.log_text();
    assert!(
        notice.contains(&format!("SQLite store in {}", data.display())),
        "{notice}"
    );
    assert!(data.join("messenger.db").is_file());

    let mut a = User::connect(addr, "d-alice").await;
    let t = a
        .request(json!({"type":"create_thread","kind":"direct","members":["d-bob"]}))
        .await["thread_id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = a
        .request(json!({"type":"send_message","thread_id":t,"temp_id":"one","text":"kept"}))
        .await;
    assert_eq!(r["seq"], 1, "{r}");
    let r = a.request(json!({"type":"mute_thread","thread_id":t})).await;
    assert_eq!(r["muted"], true, "{r}");

    // A second process on the same directory: exit 4, names the holder and what to do.
    let other = free_port().to_string();
    let out = run(&["--listen", &format!("127.0.0.1:{other}")], Some(&cwd));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("in use by another running process")
            && e.contains(&format!("pid {}", first.pid()))
            && e.contains("--data-dir"),
        "{e}"
    );
    // The first one is unharmed.
    let r = a.request(json!({"type":"ping"})).await;
    assert_eq!(r["type"], "pong", "{r}");
    drop(a);
    assert_eq!(first.sigterm(), Some(0), "{}", first.log_text());

    // Restart: the message is there.
    let mut cmd = server_cmd(&["--listen", &listen]);
    cmd.current_dir(&cwd);
    let _second = Proc::spawn("default-2", cmd, tmp_dir("durable").join("default-2.log"));
    wait_until(
        "the restarted server answers",
        Duration::from_secs(60),
        || healthz(addr),
    );
    let mut b = User::connect(addr, "d-bob").await;
    let h = b.history(&t).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["text"], "kept");
    // Push settings are in the store too.
    let mut a = User::connect(addr, "d-alice").await;
    let r = a.request(json!({"type":"list_threads"})).await;
    assert_eq!(r["threads"][0]["muted"], true, "{r}");
}

/// Bad input exits non-zero with a message that says what to do.
#[test]
fn bad_data_directories_exit_with_what_to_do() {
    let listen = format!("127.0.0.1:{}", free_port());

    // A file where the directory should be.
    let file = data_dir("a-file");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, b"not a directory").expect("write");
    let out = run(
        &[
            "--listen",
            &listen,
            "--data-dir",
            &file.display().to_string(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a directory") && stderr(&out).contains("--data-dir"),
        "{}",
        stderr(&out)
    );

    // A directory nobody may write to. Root writes anywhere, so as root use one the
    // kernel refuses (sysfs).
    let ro = data_dir("read-only");
    std::fs::create_dir_all(&ro).expect("mkdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let probe = ro.join("probe");
    let ro_target = if std::fs::write(&probe, b"x").is_ok() {
        let _ = std::fs::remove_file(&probe);
        PathBuf::from("/sys/kernel")
    } else {
        ro.clone()
    };
    let out = run(
        &[
            "--listen",
            &listen,
            "--data-dir",
            &ro_target.display().to_string(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write to the data directory")
            && stderr(&out).contains("permissions"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // A store written by a newer version.
    let newer = data_dir("newer");
    std::fs::create_dir_all(&newer).expect("mkdir");
    let c = rusqlite::Connection::open(newer.join("messenger.db")).expect("sqlite");
    c.pragma_update(None, "application_id", 0x4d73_6752)
        .expect("app id");
    c.pragma_update(None, "user_version", 99).expect("version");
    drop(c);
    let out = run(
        &[
            "--listen",
            &listen,
            "--data-dir",
            &newer.display().to_string(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("schema version 99")
            && stderr(&out).contains("newer messenger-server"),
        "{}",
        stderr(&out)
    );

    // Unknown store and sync names, and SQLite in cluster mode without HBase.
    let out = run(&["--listen", &listen, "--store", "rocks"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`sqlite`"), "{}", stderr(&out));
    let out = run(&["--listen", &listen, "--sync", "sometimes"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`full`"), "{}", stderr(&out));
    let out = run(
        &[
            "--listen",
            &listen,
            "--redis",
            "redis://127.0.0.1:1",
            "--node-id",
            "1",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--hbase") && stderr(&out).contains("--store memory"),
        "{}",
        stderr(&out)
    );
}
