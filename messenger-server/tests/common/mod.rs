//! Test harness: a server on 127.0.0.1:0 and a real WebSocket client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use messenger_server::{Server, ServerConfig, ServerError};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), ServerError>>>,
}

/// A config for tests: short presence grace, everything else default.
pub fn test_config() -> ServerConfig {
    let mut c = ServerConfig::default();
    c.presence.grace = Duration::from_millis(300);
    c.websocket.drain_timeout = Duration::from_secs(3);
    c.limits.rate_limit_per_sec = 10_000;
    c.limits.rate_limit_burst = 10_000;
    c
}

pub async fn start(config: ServerConfig) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::builder()
        .config(config)
        .build()
        .await
        .expect("build");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        stop: Some(tx),
        task: Some(task),
    }
}

impl TestServer {
    pub async fn client(&self, token: &str) -> Client {
        Client::connect(self.addr, token).await
    }

    /// Triggers shutdown and waits for serve to return.
    pub async fn stop(&mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve returns in time")
            .expect("join")
    }

    /// A raw HTTP GET; returns (status, body).
    pub async fn get(&self, path: &str, extra: &str) -> (u16, String) {
        http_get(self.addr, path, extra).await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics", "").await.1
    }
}

pub async fn http_get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub welcome: Value,
}

/// Tries to open `/ws` with `token` in the query; the HTTP status on refusal.
pub async fn try_connect(addr: SocketAddr, token: Option<&str>) -> Result<Ws, u16> {
    let url = match token {
        Some(t) => format!("ws://{addr}/ws?token={t}"),
        None => format!("ws://{addr}/ws"),
    };
    connect_req(url.into_client_request().expect("request")).await
}

/// Tries to open `/ws` with `Authorization: Bearer token`.
pub async fn try_connect_bearer(addr: SocketAddr, token: &str) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    connect_req(req).await
}

async fn connect_req(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr, token: &str) -> Client {
        let ws = try_connect(addr, Some(token)).await.expect("upgrade");
        Client::from_ws(ws).await
    }

    pub async fn from_ws(ws: Ws) -> Client {
        let mut c = Client {
            ws,
            welcome: Value::Null,
        };
        let w = c.expect("welcome").await;
        c.welcome = w;
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .await
            .expect("send");
    }

    /// The next JSON frame (skips control frames); panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("read ok");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
                Message::Close(c) => panic!("unexpected close: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame, which must be of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], ty, "expected {ty}, got {v}");
        v
    }

    /// The next frame, which must be an `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Sends `v` with a req_id and returns the direct reply (which must echo it).
    pub async fn request(&mut self, mut v: Value, req_id: Value) -> Value {
        v["req_id"] = req_id.clone();
        self.send(v).await;
        let r = self.recv().await;
        assert_eq!(r["req_id"], req_id, "reply {r} does not echo req_id");
        r
    }

    /// Asserts nothing but control frames arrive within `ms`.
    pub async fn silence(&mut self, ms: u64) {
        let end = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(end, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => panic!("unexpected frame: {t}"),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("unexpected end: {other:?}"),
            }
        }
    }

    /// Reads until a close frame; returns its code (None if the stream just ended).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn ping(&mut self) {
        let r = self.request(json!({"type":"ping"}), json!("p")).await;
        assert_eq!(r["type"], "pong");
    }

    pub async fn create_direct(&mut self, other: &str) -> String {
        let r = self
            .request(
                json!({"type":"create_thread","kind":"direct","members":[other]}),
                json!("cd"),
            )
            .await;
        assert_eq!(r["type"], "thread", "{r}");
        r["thread_id"].as_str().expect("id").to_string()
    }

    /// Sends a message and returns its `message_sent`.
    pub async fn send_msg(&mut self, thread: &str, temp: &str, text: &str) -> Value {
        let r = self
            .request(
                json!({"type":"send_message","thread_id":thread,"temp_id":temp,"text":text}),
                json!(temp),
            )
            .await;
        assert_eq!(r["type"], "message_sent", "{r}");
        r
    }
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}
