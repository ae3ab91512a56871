//! A real single-node Kafka for tests: `scripts/kafka.sh` runs it from Maven Central
//! jars on free ports.
//!
//! [`shared`] is one broker per test process: `MESSENGER_TEST_KAFKA=host:port` points
//! it at a running broker (and `KAFKA_RUN_DIR` at its run dir, for the SASL address);
//! otherwise it starts one. [`Broker::start`] starts a private broker, for tests that
//! stop and restart it. Every broker a test process started is stopped, and its run
//! dir removed, by a watcher once that process exits, however it exits. Nothing is
//! ever skipped: no Java or no jars means a failing test with the script's message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// A broker run by `scripts/kafka.sh`.
#[derive(Debug)]
pub struct Broker {
    /// The PLAINTEXT listener, `127.0.0.1:PORT` (the principal is a super user).
    pub brokers: String,
    /// The SASL/PLAIN listener, `127.0.0.1:PORT`: users `admin`/`admin-secret` (super
    /// user) and `app`/`app-secret` (only what ACLs grant).
    pub sasl_brokers: String,
    /// The run dir (config, data, logs).
    pub run_dir: PathBuf,
}

/// The workspace root (this crate lives in `messenger-test-support/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `scripts/kafka.sh`.
pub fn script() -> PathBuf {
    workspace_root().join("scripts/kafka.sh")
}

fn field<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| l.strip_prefix(name))
}

/// The broker shared by the tests of this process (started on first use).
pub fn shared() -> &'static Broker {
    static B: OnceLock<Broker> = OnceLock::new();
    B.get_or_init(|| {
        if let Ok(brokers) = std::env::var("MESSENGER_TEST_KAFKA") {
            let run_dir = std::env::var("KAFKA_RUN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| workspace_root().join("target/kafka-run"));
            let sasl_brokers = std::fs::read_to_string(run_dir.join("sasl-brokers"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            return Broker {
                brokers,
                sasl_brokers,
                run_dir,
            };
        }
        Broker::start("shared")
    })
}

impl Broker {
    /// Starts a private broker in `target/kafka-test/NAME-PID`, stopped when this
    /// process exits. Panics with the script's output if it cannot start.
    pub fn start(name: &str) -> Broker {
        let run_dir = workspace_root()
            .join("target/kafka-test")
            .join(format!("{name}-{}", std::process::id()));
        let t0 = Instant::now();
        let start = || {
            Command::new("bash")
                .arg(script())
                .arg("start")
                .env("KAFKA_RUN_DIR", &run_dir)
                .output()
                .unwrap_or_else(|e| panic!("running scripts/kafka.sh start: {e}"))
        };
        let mut out = start();
        if !out.status.success() {
            // One more try: a free port can be taken between picking and binding it.
            eprintln!(
                "scripts/kafka.sh start failed once ({}), retrying:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            out = start();
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (Some(brokers), Some(sasl)) = (
            field(&stdout, "KAFKA_BROKERS="),
            field(&stdout, "KAFKA_SASL_BROKERS="),
        ) else {
            panic!(
                "scripts/kafka.sh start failed ({}):\n{}\n{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        };
        eprintln!(
            "Kafka {name} started by the test harness in {:?} at {brokers}",
            t0.elapsed()
        );
        // Stop it when this test process exits, whichever way it exits.
        let watcher = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; KAFKA_RUN_DIR='{}' bash '{}' stop; rm -rf '{}'",
            std::process::id(),
            run_dir.display(),
            script().display(),
            run_dir.display(),
        );
        // Deliberately never waited for: it outlives this process to stop the broker.
        #[allow(clippy::zombie_processes)]
        Command::new("setsid")
            .args(["sh", "-c", &watcher])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the Kafka stop watcher: {e}"));
        Broker {
            brokers: brokers.to_string(),
            sasl_brokers: sasl.to_string(),
            run_dir,
        }
    }

    /// Runs `scripts/kafka.sh ARGS` on this broker's run dir.
    pub fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("KAFKA_RUN_DIR", &self.run_dir)
            .output()
            .unwrap_or_else(|e| panic!("running scripts/kafka.sh {args:?}: {e}"))
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(
            out.status.success(),
            "scripts/kafka.sh {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the broker, keeping its data and ports (an outage).
    pub fn stop_broker(&self) {
        self.must(&["stop-broker"]);
    }

    /// Starts the stopped broker again on the same ports and data, waiting until ready.
    pub fn start_broker(&self) {
        self.must(&["start-broker"]);
    }

    /// Runs `kafka-acls` against this broker (e.g. `["--add", "--allow-principal",
    /// "User:app", "--operation", "Read", "--topic", "*"]`).
    pub fn acl(&self, args: &[&str]) {
        let mut all = vec!["acl"];
        all.extend_from_slice(args);
        self.must(&all);
    }

    /// Runs `kafka-topics` against this broker; returns its output.
    pub fn topics(&self, args: &[&str]) -> String {
        let mut all = vec!["topics"];
        all.extend_from_slice(args);
        self.must(&all)
    }
}
