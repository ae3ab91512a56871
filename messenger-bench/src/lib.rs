//! # messenger-bench
//!
//! A load generator that speaks protocol v1, a floor relay to compare against, and
//! criterion micro-benchmarks of the engine (`benches/engine.rs`).
//!
//! ```text
//! messenger-bench SCENARIO --url URL [--server-pid PID] [--connections N] [--pairs P]
//!     [--group-size G] [--rate R] [--duration SECONDS] [--json PATH]
//! messenger-bench floor --listen ADDR
//! ```
//!
//! Every scenario runs against the server at `--url` and then, in the same invocation,
//! against the floor relay ([`floor`]; by default spawned as a child process), and the
//! results table gives each figure for both and their ratio. See `docs/benchmarks.md`.

pub mod cli;
pub mod client;
pub mod floor;
pub mod hist;
pub mod proto;
pub mod report;
pub mod scenario;
pub mod sys;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::Args;
use crate::client::{BoxError, Target};
use crate::scenario::Ctx;

/// A default run id: `b` and the clock in base 36, so users of successive runs against
/// one server do not collide.
pub fn default_run_id() -> String {
    let mut n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        % 36u64.pow(7);
    let mut s = Vec::new();
    for _ in 0..7 {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    s.reverse();
    format!("b{}", String::from_utf8_lossy(&s))
}

/// Spawns `messenger-bench floor --listen 127.0.0.1:0` and returns the child and its
/// URL (read from the line it prints). The child dies with the handle.
pub async fn spawn_floor() -> Result<(Child, String), BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["floor", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = child.stdout.take().ok_or("floor child has no stdout")?;
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| "floor relay did not start")??
        .ok_or("floor relay exited")?;
    let addr = line
        .rsplit(' ')
        .next()
        .ok_or_else(|| format!("unexpected floor output: {line}"))?;
    Ok((child, format!("ws://{addr}/ws")))
}

/// Runs one load scenario against the server and the floor; prints the table and
/// writes the JSON. Returns the JSON document.
pub async fn run_scenario(args: Args) -> Result<Value, BoxError> {
    args.validate()?;
    let n = args.connections_or_default() as u64;
    // One fd per connection (reconnect holds K dropped clients and K peers), plus slack.
    let sockets = match args.scenario {
        cli::Scenario::Reconnect => 2 * n,
        _ => n,
    };
    let need = sockets + 256;
    let limit = sys::raise_nofile(need);
    if limit < need {
        eprintln!(
            "warning: open-file limit is {limit}, {need} wanted; run as root or raise `ulimit -n`"
        );
    }
    for &pid in &args.server_pid {
        if let Some(l) = sys::nofile_limit_of(pid) {
            if l < n + 100 {
                eprintln!("warning: the server (pid {pid}) may open only {l} files; start it under `ulimit -n {}`", n + 1024);
            }
        }
    }
    if let Some((lo, hi)) = sys::local_port_range() {
        let ports = (hi - lo + 1) as usize;
        if args.per_source_ip > ports {
            eprintln!(
                "warning: --per-source-ip {} exceeds the {ports} ephemeral ports",
                args.per_source_ip
            );
        }
    }
    let run_id = args.run_id.clone().unwrap_or_else(default_run_id);
    let server = if args.url == "none" {
        None
    } else {
        let ctx = Ctx {
            targets: args
                .url
                .split(',')
                .map(Target::parse)
                .collect::<Result<_, _>>()?,
            pids: args.server_pid.clone(),
            label: "server",
            is_floor: false,
            run_id: format!("{run_id}s"),
            args: args.clone(),
        };
        eprintln!(
            "== {} against the server at {}",
            args.scenario.name(),
            args.url
        );
        Some(Value::Object(scenario::run(&ctx).await?))
    };
    let floor = match args.floor.as_str() {
        "off" => None,
        f => {
            let (child, url, pid) = if f == "auto" {
                let (child, url) = spawn_floor().await?;
                let pid = child.id();
                (Some(child), url, pid)
            } else {
                (None, f.to_string(), args.floor_pid)
            };
            let ctx = Ctx {
                targets: vec![Target::parse(&url)?],
                pids: pid.into_iter().collect(),
                label: "floor",
                is_floor: true,
                run_id: format!("{run_id}f"),
                args: args.clone(),
            };
            eprintln!(
                "== {} against the floor relay at {url}",
                args.scenario.name()
            );
            let r = scenario::run(&ctx).await;
            if let Some(mut c) = child {
                let _ = c.kill().await;
            }
            Some(Value::Object(r?))
        }
    };
    println!();
    println!("{} results", args.scenario.name());
    print!("{}", report::table(server.as_ref(), floor.as_ref()));
    let mut doc = match &server {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    doc.insert("scenario".into(), json!(args.scenario.name()));
    doc.insert("url".into(), json!(args.url));
    doc.insert("machine".into(), sys::machine());
    if let Some(f) = &floor {
        doc.insert("floor".into(), f.clone());
        if let Some(r) = server.as_ref().and_then(|s| report::ratios(s, f)) {
            doc.insert("ratio_to_floor".into(), r);
        }
    }
    let doc = Value::Object(doc);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_are_valid_user_id_prefixes() {
        let id = super::default_run_id();
        assert_eq!(id.len(), 8);
        assert!(messenger_core::UserId::new(format!("{id}sp12a")).is_ok());
    }
}
