//! The floor relay: a minimal WebSocket relay with no logic and no storage, run with the
//! same load as the server so every figure can be given as a ratio to it.
//!
//! It speaks just enough of protocol v1 for the scenarios, with the same per-connection
//! shape as the server (one task per connection that drains a lazily allocated bounded
//! queue with batched writes and reads the socket, small tungstenite buffers), so it
//! stays the upper bound the server is compared with:
//! - the upgrade at any path with `?token=USER` (dev auth; 401 without a token), then
//!   `welcome`;
//! - `send_message`: `message_sent` to the sender and `receive_message` to every other
//!   session of the thread's members. Members of a direct thread come from its canonical
//!   id `dm:<a>:<b>`; a group's members from the `create_thread` that made it (the one
//!   table the floor keeps). `message_id` and `seq` come from one global counter;
//! - `create_thread`: `thread` with the canonical direct id, or `fg-N` for a group;
//!   `add_members`: `thread` with the group's members (no notes to the other members);
//! - `list_threads`: an empty `threads`; `fetch_history`: an empty `history`;
//! - `ping`: `pong`. Everything else is ignored.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use messenger_core::{ThreadId, UserId};

/// Frames a session's outbound queue holds; past that the floor drops frames for it
/// (and counts them), where the server would close a slow consumer.
pub const QUEUE: usize = 4096;
/// Most frames written before one flush.
const BATCH: usize = 256;
const SHARDS: usize = 64;

/// A session's outbound queue: empty and unallocated while idle (like the server's),
/// a wake-up for its task when a frame is queued.
#[derive(Default)]
pub struct Queue {
    frames: Mutex<std::collections::VecDeque<Utf8Bytes>>,
    wake: Notify,
}

impl Queue {
    fn frames(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Utf8Bytes>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next frame, waiting for one.
    async fn next(&self) -> Utf8Bytes {
        loop {
            if let Some(f) = self.frames().pop_front() {
                return f;
            }
            // `notify_one` keeps a permit when nobody waits: no wake-up is lost.
            self.wake.notified().await;
        }
    }

    fn try_next(&self) -> Option<Utf8Bytes> {
        let mut q = self.frames();
        let f = q.pop_front();
        if q.is_empty() && q.capacity() > 64 {
            q.shrink_to(0);
        }
        f
    }
}

type SessionTx = Arc<Queue>;
/// Sessions of one shard: user -> (session number, queue).
type Shard = HashMap<String, Vec<(u64, SessionTx)>>;

/// The relay's state: who is connected, and the groups created so far.
#[derive(Default)]
pub struct Floor {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    groups: RwLock<HashMap<String, Arc<[String]>>>,
    next_id: AtomicU64,
    next_session: AtomicU64,
    /// Frames dropped because a session's queue was full.
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for Floor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Floor")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    req_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thread_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    temp_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    members: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    title: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Welcome {
        user_id: &'a str,
        session_id: String,
        server_time: u64,
    },
    MessageSent {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a RawValue>,
        thread_id: &'a str,
        temp_id: &'a str,
        message_id: String,
        seq: u64,
        sent_at: u64,
    },
    ReceiveMessage {
        thread_id: &'a str,
        message_id: String,
        seq: u64,
        sender_id: &'a str,
        text: &'a str,
        sent_at: u64,
    },
    Thread {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a RawValue>,
        thread_id: &'a str,
        kind: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'a str>,
        members: &'a [String],
    },
    Threads {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a RawValue>,
        threads: [(); 0],
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a RawValue>,
        thread_id: &'a str,
        messages: [(); 0],
        has_more: bool,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a RawValue>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        req_id: Option<&'a RawValue>,
        code: &'a str,
        message: &'a str,
    },
}

impl Out<'_> {
    fn bytes(&self) -> Utf8Bytes {
        // These structs hold only strings, integers and raw JSON: serializing cannot fail.
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_default())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The WebSocket settings of a floor connection: the server's default buffers (1 KiB
/// read, writes coalesced up to 1 KiB before they reach the socket).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

impl Floor {
    /// An empty relay.
    pub fn new() -> Arc<Floor> {
        Arc::new(Floor {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ..Default::default()
        })
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(user) as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, user: &str, sid: u64, tx: SessionTx) {
        self.shard(user)
            .entry(user.to_string())
            .or_default()
            .push((sid, tx));
    }

    fn unregister(&self, user: &str, sid: u64) {
        let mut shard = self.shard(user);
        if let Some(list) = shard.get_mut(user) {
            list.retain(|(s, _)| *s != sid);
            if list.is_empty() {
                shard.remove(user);
            }
        }
    }

    fn push(&self, tx: &SessionTx, frame: Utf8Bytes) {
        let mut q = tx.frames();
        if q.len() >= QUEUE {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(frame);
        drop(q);
        tx.wake.notify_one();
    }

    fn deliver(&self, member: &str, except: u64, frame: &Utf8Bytes) {
        let shard = self.shard(member);
        if let Some(list) = shard.get(member) {
            for (sid, tx) in list {
                if *sid != except {
                    self.push(tx, frame.clone());
                }
            }
        }
    }

    fn handle(&self, user: &str, sid: u64, tx: &SessionTx, text: &str) {
        let f = match serde_json::from_str::<In<'_>>(text) {
            Ok(f) => f,
            Err(_) => {
                let e = Out::Error {
                    req_id: None,
                    code: "bad_request",
                    message: "malformed frame",
                };
                self.push(tx, e.bytes());
                return;
            }
        };
        let req_id = f.req_id;
        let bad = |message: &str| {
            self.push(
                tx,
                Out::Error {
                    req_id,
                    code: "bad_request",
                    message,
                }
                .bytes(),
            )
        };
        match &*f.ty {
            "send_message" => {
                let (Some(thread), Some(temp), Some(body)) = (&f.thread_id, &f.temp_id, &f.text)
                else {
                    return bad("send_message needs thread_id, temp_id and text");
                };
                let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
                let sent_at = now_ms();
                let recv = Out::ReceiveMessage {
                    thread_id: thread,
                    message_id: id.to_string(),
                    seq: id,
                    sender_id: user,
                    text: body,
                    sent_at,
                }
                .bytes();
                if let Some(rest) = thread.strip_prefix("dm:") {
                    for member in rest.split(':') {
                        self.deliver(member, sid, &recv);
                    }
                } else {
                    let members = self
                        .groups
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&**thread)
                        .cloned();
                    for member in members.iter().flat_map(|m| m.iter()) {
                        self.deliver(member, sid, &recv);
                    }
                }
                let sent = Out::MessageSent {
                    req_id,
                    thread_id: thread,
                    temp_id: temp,
                    message_id: id.to_string(),
                    seq: id,
                    sent_at,
                };
                self.push(tx, sent.bytes());
            }
            "create_thread" => {
                let others: Vec<String> = f
                    .members
                    .iter()
                    .flatten()
                    .map(|m| m.to_string())
                    .filter(|m| m != user)
                    .collect();
                let mut members = vec![user.to_string()];
                members.extend(others);
                let (thread_id, kind) = if f.kind.as_deref() == Some("direct") {
                    if members.len() != 2 {
                        return bad("a direct thread has exactly one other member");
                    }
                    match (UserId::new(&members[0]), UserId::new(&members[1])) {
                        (Ok(a), Ok(b)) => (ThreadId::direct(&a, &b).to_string(), "direct"),
                        _ => return bad("bad user id"),
                    }
                } else {
                    let id = format!("fg-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
                    self.groups
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), members.clone().into());
                    (id, "group")
                };
                let reply = Out::Thread {
                    req_id,
                    thread_id: &thread_id,
                    kind,
                    title: f.title.as_deref(),
                    members: &members,
                }
                .bytes();
                let note = Out::Thread {
                    req_id: None,
                    thread_id: &thread_id,
                    kind,
                    title: f.title.as_deref(),
                    members: &members,
                }
                .bytes();
                for m in &members[1..] {
                    self.deliver(m, sid, &note);
                }
                self.push(tx, reply);
            }
            "add_members" => {
                let Some(thread) = &f.thread_id else {
                    return bad("add_members needs thread_id");
                };
                let members: Arc<[String]> = {
                    let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
                    let Some(old) = groups.get(&**thread) else {
                        return bad("no such group");
                    };
                    let mut all = old.to_vec();
                    let mut seen: std::collections::HashSet<String> = all.iter().cloned().collect();
                    for m in f.members.iter().flatten() {
                        if seen.insert(m.to_string()) {
                            all.push(m.to_string());
                        }
                    }
                    let all: Arc<[String]> = all.into();
                    groups.insert(thread.to_string(), all.clone());
                    all
                };
                let reply = Out::Thread {
                    req_id,
                    thread_id: thread,
                    kind: "group",
                    title: None,
                    members: &members,
                }
                .bytes();
                self.push(tx, reply);
            }
            "list_threads" => self.push(
                tx,
                Out::Threads {
                    req_id,
                    threads: [],
                }
                .bytes(),
            ),
            "fetch_history" => self.push(
                tx,
                Out::History {
                    req_id,
                    thread_id: f.thread_id.as_deref().unwrap_or(""),
                    messages: [],
                    has_more: false,
                }
                .bytes(),
            ),
            "ping" => self.push(tx, Out::Pong { req_id }.bytes()),
            _ => {}
        }
    }
}

fn token_of(req: &Request) -> Option<String> {
    let q = req.uri().query()?;
    q.split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty() && t.len() <= 64)
        .map(str::to_string)
}

// tungstenite's handshake callback type fixes the large error variant.
#[allow(clippy::result_large_err)]
async fn connection(floor: Arc<Floor>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut user = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match token_of(req) {
            Some(t) => {
                user = Some(t);
                Ok(resp)
            }
            None => {
                let mut e = ErrorResponse::new(Some("missing token".into()));
                *e.status_mut() = StatusCode::UNAUTHORIZED;
                Err(e)
            }
        }
    };
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(ws_config()))
        .await
    {
        Ok(ws) => ws,
        Err(_) => return,
    };
    let Some(user) = user else { return };
    let sid = floor.next_session.fetch_add(1, Ordering::Relaxed) + 1;
    let mut ws = ws;
    let tx: SessionTx = Arc::default();
    let welcome = Out::Welcome {
        user_id: &user,
        session_id: format!("f-{sid}"),
        server_time: now_ms(),
    };
    floor.push(&tx, welcome.bytes());
    floor.register(&user, sid, tx.clone());
    // One task per connection, as the server: queued frames (written in batches with
    // one flush) and the socket, neither starving the other.
    loop {
        tokio::select! {
            first = tx.next() => {
                if ws.feed(Message::Text(first)).await.is_err() {
                    break;
                }
                for _ in 1..BATCH {
                    match tx.try_next() {
                        Some(m) => {
                            if ws.feed(Message::Text(m)).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    }
                }
                if ws.flush().await.is_err() {
                    break;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => floor.handle(&user, sid, &tx, t.as_str()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    floor.unregister(&user, sid);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(None)).await;
}

/// Serves the floor relay on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let floor = Floor::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => {
                    tokio::spawn(connection(floor.clone(), tcp));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("floor: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Binds `addr` and serves until `shutdown`; prints `floor relay listening on ADDR` first
/// (a parent process reads that line to learn the port).
pub async fn run(addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
    // The server's listen backlog (4096, not bind's 128), so a connect burst is queued
    // the same way for both.
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    println!("floor relay listening on {}", listener.local_addr()?);
    serve(listener, shutdown).await;
    Ok(())
}
