//! A tap on the cluster's presence channel in Redis (`{prefix}:presence`): every
//! presence event the nodes publish, time-stamped when it arrives here.
//!
//! The documented presence bound after a node dies is about *publication*: the reaper
//! publishes `offline` within `ttl + ttl/3 + op_timeout` of the dead node's last
//! heartbeat, and the event's `last_seen` is that heartbeat (docs/operations.md, "A node
//! dies"). Timing that from a client's receipt would add the client's own delivery path
//! (its node, its socket, its event loop, a reconnect when its node was the victim), which
//! on a loaded machine can take seconds and is not what the bound promises. The tap reads
//! on a thread of its own with blocking I/O, so a busy async runtime in this process does
//! not delay its time stamps.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One published presence event.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its user.
    pub user_id: String,
    /// `online` or `offline`.
    pub status: String,
    /// Its `last_seen` (Unix ms), for `offline`.
    pub last_seen: Option<u64>,
    /// When it arrived here (Unix ms).
    pub at_ms: u64,
    /// When it arrived here (monotonic).
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    events: Mutex<Vec<Published>>,
    changed: Condvar,
    stop: AtomicBool,
}

/// The tap; stops when dropped.
pub struct PresenceTap {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PresenceTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceTap").finish_non_exhaustive()
    }
}

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl PresenceTap {
    /// Subscribes to `channel` on the Redis at `127.0.0.1:port` and returns once the
    /// subscription is confirmed; a broken connection (a Redis restart) is re-opened.
    pub fn start(port: u16, channel: &str) -> PresenceTap {
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        let channel = channel.to_string();
        std::thread::Builder::new()
            .name("presence-tap".into())
            .spawn(move || {
                let mut ready = Some(ready_tx);
                while !s.stop.load(Ordering::Relaxed) {
                    if let Err(e) = tap(port, &channel, &s, &mut ready) {
                        tracing::debug!(%e, "presence tap: reconnecting");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .expect("presence tap thread");
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the presence tap subscribed to Redis within 30 s");
        PresenceTap { shared }
    }

    /// Waits until an `offline` event of `user` that arrived after `since` is seen, for at
    /// most `limit` from `since`.
    pub async fn offline_after(
        &self,
        user: &str,
        since: Instant,
        limit: Duration,
    ) -> Option<Published> {
        let shared = self.shared.clone();
        let user = user.to_string();
        tokio::task::spawn_blocking(move || shared.offline_after(&user, since, limit))
            .await
            .ok()
            .flatten()
    }
}

impl Shared {
    fn offline_after(&self, user: &str, since: Instant, limit: Duration) -> Option<Published> {
        let end = since + limit;
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(e) = events
                .iter()
                .find(|e| e.user_id == user && e.status == "offline" && e.at >= since)
            {
                return Some(e.clone());
            }
            let left = end.checked_duration_since(Instant::now())?;
            events = self
                .changed
                .wait_timeout(events, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for PresenceTap {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection's life: SUBSCRIBE, then read pushed messages until an error or stop.
fn tap(
    port: u16,
    channel: &str,
    s: &Shared,
    ready: &mut Option<std::sync::mpsc::Sender<()>>,
) -> std::io::Result<()> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    // Wake up now and then to notice `stop`.
    conn.set_read_timeout(Some(Duration::from_millis(500)))?;
    write!(
        conn,
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
        channel.len()
    )?;
    let mut r = BufReader::new(conn);
    loop {
        let frame = match read_value(&mut r, s) {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        };
        let at = Instant::now();
        let at_ms = unix_ms();
        match frame.first().map(String::as_str) {
            Some("subscribe") => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            Some("message") => {
                let Some(payload) = frame.get(2) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
                    continue;
                };
                let p = Published {
                    user_id: v["user_id"].as_str().unwrap_or_default().to_string(),
                    status: v["status"].as_str().unwrap_or_default().to_string(),
                    last_seen: v["last_seen"].as_u64(),
                    at_ms,
                    at,
                };
                s.events.lock().unwrap_or_else(|p| p.into_inner()).push(p);
                s.changed.notify_all();
            }
            _ => {}
        }
    }
}

/// Reads one RESP array of bulk strings or integers (what pub/sub pushes); `None` once
/// asked to stop.
fn read_value(r: &mut BufReader<TcpStream>, s: &Shared) -> std::io::Result<Option<Vec<String>>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let Some(head) = read_line(r, s)? else {
        return Ok(None);
    };
    let n: usize = head
        .strip_prefix('*')
        .ok_or_else(|| bad("expected an array"))?
        .parse()
        .map_err(|_| bad("array length"))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(line) = read_line(r, s)? else {
            return Ok(None);
        };
        if let Some(len) = line.strip_prefix('$') {
            let len: usize = len.parse().map_err(|_| bad("bulk length"))?;
            let mut buf = vec![0u8; len + 2];
            read_exact(r, &mut buf, s)?;
            buf.truncate(len);
            out.push(String::from_utf8_lossy(&buf).into_owned());
        } else if let Some(i) = line.strip_prefix(':') {
            out.push(i.to_string());
        } else {
            return Err(bad("unexpected RESP item"));
        }
    }
    Ok(Some(out))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn read_line(r: &mut BufReader<TcpStream>, s: &Shared) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    loop {
        match r.read_line(&mut line) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "redis closed",
                ))
            }
            Ok(_) if line.ends_with("\r\n") => {
                line.truncate(line.len() - 2);
                return Ok(Some(line));
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                if s.stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_exact(r: &mut BufReader<TcpStream>, buf: &mut [u8], s: &Shared) -> std::io::Result<()> {
    use std::io::Read;
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "redis closed",
                ))
            }
            Ok(n) => got += n,
            Err(e) if is_timeout(&e) => {
                if s.stop.load(Ordering::Relaxed) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
