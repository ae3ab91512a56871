//! A real `redis-server` on a free 127.0.0.1 port, started by the tests.
//!
//! [`shared()`] starts one server per test binary (on first use); it is killed when the
//! test process exits, even on a panic or abort: the server is started by a small
//! `sh` wrapper that kills it as soon as its stdin (a pipe held by this process) closes.
//! [`RedisServer::start()`] starts a dedicated one, for tests that stop and restart it.
//! Set `REDIS_SERVER` to use another binary than `redis-server` from `PATH`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::process::free_port;

/// A redis-server child process on 127.0.0.1.
pub struct RedisServer {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    dir: PathBuf,
    proc: Mutex<Option<(Child, u32)>>,
}

fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    /// Starts a dedicated server on a free port; panics with a clear message if
    /// `redis-server` is not installed.
    pub fn start() -> RedisServer {
        static N: AtomicU64 = AtomicU64::new(0);
        let ok = Command::new(binary())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "`{}` not found or not runnable: install redis-server (apt-get install -y \
             redis-server); scripts/test.sh does it. These tests never skip.",
            binary()
        );
        let dir = std::env::temp_dir().join(format!(
            "messenger-redis-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create redis temp dir");
        let s = RedisServer {
            port: free_port(),
            dir,
            proc: Mutex::new(None),
        };
        s.spawn();
        s
    }

    fn spawn(&self) {
        // The wrapper prints the server's pid, then waits for EOF on stdin (this
        // process exiting, or `stop()`), then kills the server.
        let script = format!(
            "'{bin}' --port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{dir}' \
             --daemonize no --loglevel warning --logfile '{dir}/redis.log' & pid=$!; \
             echo $pid; cat >/dev/null; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null",
            bin = binary(),
            port = self.port,
            dir = self.dir.display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh to start redis-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("wrapper stdout"))
            .read_line(&mut line)
            .expect("read redis-server pid");
        let pid: u32 = line.trim().parse().expect("redis-server pid");
        *self.proc.lock().unwrap_or_else(|p| p.into_inner()) = Some((child, pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on 127.0.0.1:{} within 10 s; see {}/redis.log",
                self.port,
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server with SIGKILL and waits until the port refuses connections.
    pub fn kill(&self) {
        if let Some((mut child, pid)) = self.proc.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            drop(child.stdin.take());
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "redis-server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub fn restart(&self) {
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server shared by every test of this binary.
pub fn shared() -> &'static RedisServer {
    static S: OnceLock<RedisServer> = OnceLock::new();
    S.get_or_init(RedisServer::start)
}

/// A key prefix unique to this call, so tests sharing a server never see each other.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
