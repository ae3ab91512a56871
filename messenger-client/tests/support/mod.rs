//! What the client's end-to-end tests share: the real server in process, HAProxy as a
//! TLS terminator with a CA made by the test, scratch directories.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use messenger_core::NodeId;
use messenger_server::{Server, ServerConfig};
use messenger_storage_mem::MemBackend;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

pub fn server_config() -> ServerConfig {
    let mut c = ServerConfig::default();
    c.websocket.drain_timeout = Duration::from_millis(500);
    c.presence.grace = Duration::from_millis(200);
    c
}

pub async fn bind(addr: SocketAddr) -> TcpListener {
    // The port may linger briefly after a shutdown.
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr}: {last:?}");
}

pub async fn start(backend: &MemBackend, addr: SocketAddr, config: ServerConfig) -> Running {
    let listener = bind(addr).await;
    let addr = listener.local_addr().expect("addr");
    let server = Server::builder()
        .adapters(backend.adapters(NodeId::default()))
        .config(config)
        .build()
        .await
        .expect("server");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = server
            .serve(listener, async {
                let _ = rx.await;
            })
            .await;
    });
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

/// A scratch directory under the target dir, unique per call.
pub fn scratch(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "client-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1.
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server's certificate then its private key, PEM (HAProxy's `crt` format).
    pub server_pem: String,
}

pub fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "messenger test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    TestPki {
        ca_pem: ca_cert.pem(),
        server_pem: format!("{}{}", cert.pem(), key.serialize_pem()),
    }
}

/// A process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy_bin() -> String {
    std::env::var("HAPROXY").unwrap_or_else(|_| "haproxy".into())
}

/// HAProxy terminating TLS on a free port of 127.0.0.1 with `pki`'s server
/// certificate, in front of `backend`. Returns the process and its port.
pub fn start_tls_terminator(dir: &Path, pki: &TestPki, backend: SocketAddr) -> (Proc, u16) {
    let ok = Command::new(haproxy_bin())
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{}` not found or not runnable: install HAProxy (apt-get install -y haproxy); \
         scripts/test.sh does it. This test never skips.",
        haproxy_bin()
    );
    let crt = dir.join("server.pem");
    std::fs::write(&crt, &pki.server_pem).expect("write server.pem");
    let port = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h

frontend wss
    bind 127.0.0.1:{port} ssl crt {crt}
    default_backend chat

backend chat
    server s1 {backend}
",
            crt = crt.display()
        ),
    )
    .expect("write haproxy.cfg");
    let log = dir.join("haproxy.log");
    let child = Command::new(haproxy_bin())
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.join("haproxy.err")).expect("log"))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn haproxy");
    let proc = Proc { child, log };
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "haproxy not up: {}",
            std::fs::read_to_string(dir.join("haproxy.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc, port)
}

/// A plain HTTP/1.1 GET on the server's listener; the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => text,
    }
}
