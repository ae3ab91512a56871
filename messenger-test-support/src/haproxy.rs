//! HAProxy in front of `messenger-server` processes, as docs/operations.md describes
//! it: `leastconn`, health checks on `/healthz`, sessions of a node marked down shut
//! (so clients reconnect to the others at once).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{free_port, Proc};

/// Whether `GET /healthz` on `addr` answers 200 within a second.
pub fn healthz(addr: SocketAddr) -> bool {
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

/// The HAProxy configuration: listen on `listen_port`, balance over `nodes` (id,
/// address), health checks every `check_ms` (a node is down after two failures).
pub fn config(listen_port: u16, nodes: &[(u16, SocketAddr)], check_ms: u32) -> String {
    let mut c = format!(
        "global
    # Each proxied connection uses two file descriptors: raise `ulimit -n` (and this)
    # together in production.
    maxconn 4000

defaults
    mode http
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A WebSocket becomes a tunnel after the 101; ping/pong every 15 s keeps it busy.
    timeout tunnel 1h
    timeout client-fin 5s

frontend messenger
    bind 127.0.0.1:{listen_port}
    default_backend messenger_nodes

backend messenger_nodes
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    # Says which node served the upgrade (used by the tests; harmless in production).
    http-response set-header X-Served-By %[srv_name]
    default-server inter {check_ms}ms fall 2 rise 2 on-marked-down shutdown-sessions
"
    );
    for (id, addr) in nodes {
        c.push_str(&format!("    server node{id} {addr} check\n"));
    }
    c
}

/// The `haproxy` binary (`HAPROXY` or from PATH).
pub fn bin() -> String {
    std::env::var("HAPROXY").unwrap_or_else(|_| "haproxy".into())
}

/// Starts HAProxy in the foreground on a free port with [`config`] (checks every
/// 500 ms), its config and log in `dir`; returns (process, port) once it answers.
pub fn start(dir: &Path, nodes: &[(u16, SocketAddr)]) -> (Proc, u16) {
    let ok = Command::new(bin())
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{}` not found or not runnable: install HAProxy (apt-get install -y haproxy); \
         scripts/test.sh does it. These tests never skip.",
        bin()
    );
    let port = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config(port, nodes, 500)).expect("write haproxy.cfg");
    let check = Command::new(bin())
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("haproxy -c");
    assert!(
        check.status.success(),
        "haproxy rejects its config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = Command::new(bin());
    cmd.arg("-db").arg("-f").arg(&cfg);
    let proc = Proc::spawn("haproxy", cmd, dir.join("haproxy.log"));
    let end = Instant::now() + Duration::from_secs(10);
    while !healthz(SocketAddr::from(([127, 0, 0, 1], port))) {
        assert!(Instant::now() < end, "haproxy not up: {}", proc.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, port)
}
