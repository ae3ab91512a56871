//! A real HBase with its Thrift2 gateway, started once per test binary.
//!
//! `MESSENGER_TEST_HBASE=host:port` points the tests at a running gateway (with
//! `HBASE_RUN_DIR` its run dir, for tests that restart the gateway). Otherwise the
//! first caller starts one with `scripts/hbase.sh start` in a run dir of its own under
//! `target/` and a watcher stops it when the test process exits, whichever way it exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// A running HBase Thrift2 gateway.
#[derive(Debug)]
pub struct Hbase {
    /// `host:port` of the Thrift2 gateway.
    pub addr: String,
    /// The run dir of `scripts/hbase.sh` (`None` for an external one without
    /// `HBASE_RUN_DIR`).
    pub run_dir: Option<PathBuf>,
}

/// The workspace's `scripts/hbase.sh`.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/hbase.sh")
}

/// The gateway of this test binary, started on first use (blocking: call it from
/// `tokio::task::spawn_blocking` in async tests).
pub fn hbase() -> &'static Hbase {
    static H: OnceLock<Hbase> = OnceLock::new();
    H.get_or_init(|| {
        if let Ok(addr) = std::env::var("MESSENGER_TEST_HBASE") {
            return Hbase {
                addr,
                run_dir: std::env::var("HBASE_RUN_DIR").ok().map(PathBuf::from),
            };
        }
        // A run dir per test process: a previous run's watcher, still stopping its own
        // HBase, can never stop this one.
        let run_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../target/hbase-test-run-{}", std::process::id()));
        let t0 = Instant::now();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .env("HBASE_RUN_DIR", &run_dir)
            .output()
            .unwrap_or_else(|e| panic!("running scripts/hbase.sh start: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let addr = stdout
            .lines()
            .find_map(|l| l.strip_prefix("HBASE_THRIFT="))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                panic!(
                    "scripts/hbase.sh start failed ({}):\n{}\n{}",
                    out.status,
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        eprintln!(
            "HBase started by the test harness in {:?} at {addr}",
            t0.elapsed()
        );
        let watcher = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; HBASE_RUN_DIR='{d}' bash '{}' stop; rm -rf '{d}'",
            std::process::id(),
            script().display(),
            d = run_dir.display(),
        );
        // Deliberately never waited for: it outlives this process to stop HBase.
        #[allow(clippy::zombie_processes)]
        Command::new("setsid")
            .args(["sh", "-c", &watcher])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the HBase stop watcher: {e}"));
        Hbase {
            addr,
            run_dir: Some(run_dir),
        }
    })
}

/// [`hbase()`]'s address, from async code.
pub async fn hbase_addr() -> String {
    std::thread::spawn(|| hbase().addr.clone())
        .join()
        .unwrap_or_else(|_| panic!("the HBase harness panicked"))
}
