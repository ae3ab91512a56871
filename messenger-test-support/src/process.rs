//! Child processes for tests: killed on drop, with their logs, and small waiting helpers.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// The workspace root (from a crate directory's `CARGO_MANIFEST_DIR`).
pub fn workspace_root(manifest_dir: &str) -> PathBuf {
    PathBuf::from(manifest_dir).join("..")
}

/// A temporary directory unique to this test process and `name`.
pub fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("messenger-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, SIGKILLed when dropped. Its stdout goes to `log` and its stderr to
/// `log` with the extension `err`.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// A name for messages.
    pub name: String,
    /// Its stdout log (stderr: the same path with extension `err`).
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with its output in `log` / `log.err`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = std::fs::File::create(log.with_extension("err")).expect("log file");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to 15 s for it to exit; returns the exit code.
    pub fn sigterm(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not exit after SIGTERM; log {}",
            self.name,
            self.log.display()
        );
    }

    /// Its stdout and stderr logs.
    pub fn log_text(&self) -> String {
        let mut t = std::fs::read_to_string(&self.log).unwrap_or_default();
        t.push_str(&std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default());
        t
    }

    /// Resident memory (VmRSS) in KiB from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

/// Resident memory (VmRSS) of `pid` in KiB from /proc (0 if unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}
