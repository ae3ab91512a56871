//! An existing axum application that mounts the chat server next to its own routes.
//!
//! Run: `cargo run -p examples --example axum_app -- --listen 127.0.0.1:3000`
//! Then: `curl http://127.0.0.1:3000/` (the app), `curl http://127.0.0.1:3000/chat/healthz`
//! (the chat server), and chat with `cargo run -p examples --example chat -- --url
//! ws://127.0.0.1:3000/chat/ws --token alice`.
//!
//! The app owns the router, the listener and the lifecycle: `Server::router()` is nested
//! under `/chat`, the app's own tower layer (a middleware that stamps every response
//! and counts requests) wraps its routes and the chat routes alike, and `axum::serve`
//! runs it all. On Ctrl-C the app stops accepting and `Server::shutdown` closes the
//! chat sessions with 1001.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use messenger_server::{Server, ServerConfig};

/// The application's own state.
#[derive(Clone, Default)]
struct AppState {
    requests: Arc<AtomicU64>,
}

/// The application's own layer: counts every request and stamps every response.
async fn stamp(State(state): State<AppState>, req: Request, next: Next) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert("x-served-by", HeaderValue::from_static("my-app"));
    resp
}

/// The whole application: its routes, the chat server under `/chat`, its layer on top.
fn app(chat: &Server, state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { "my app's home page\n" }))
        .route(
            "/api/requests",
            get(|State(s): State<AppState>| async move {
                format!("{}\n", s.requests.load(Ordering::Relaxed))
            }),
        )
        .with_state(state.clone())
        // The chat router has no state of its own to share: nest it once the app's
        // routes have theirs.
        .nest("/chat", chat.router())
        .layer(middleware::from_fn_with_state(state, stamp))
}

/// Serves `app` on `listener` until `stop` completes, then shuts the chat down.
async fn run(
    listener: tokio::net::TcpListener,
    chat: Server,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(&chat, AppState::default());
    axum::serve(
        listener,
        // Dev auth accepts loopback peers only, so it needs the peer address.
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        stop.await;
        chat.shutdown().await;
    })
    .await
}

fn listen_addr() -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:3000".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = args.next().ok_or("--listen needs ADDR")?,
            other => {
                return Err(
                    format!("unknown argument {other}; usage: axum_app [--listen ADDR]").into(),
                )
            }
        }
    }
    Ok(addr.parse()?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = listen_addr()?;
    let chat = Server::builder()
        .config(ServerConfig::default()) // in memory, dev auth on loopback
        .build()
        .await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "app on http://{0}/ ; chat at ws://{0}/chat/ws?token=alice ; Ctrl-C stops",
        listener.local_addr()?
    );
    run(listener, chat, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_client::{Client, Event, UserId};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 GET; the response head and body as text.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("answer in time")
            .expect("read");
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_mounted_inside_an_axum_app() {
        let chat = Server::builder().build().await.expect("build");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(run(listener, chat.clone(), async {
            let _ = stop_rx.await;
        }));

        // The app's own routes, with its layer.
        let home = get(addr, "/").await;
        assert!(home.starts_with("HTTP/1.1 200"), "{home}");
        assert!(home.contains("my app's home page"));
        assert!(home.to_ascii_lowercase().contains("x-served-by: my-app"));
        // The chat server's routes under /chat, with the app's layer too.
        let health = get(addr, "/chat/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.to_ascii_lowercase().contains("x-served-by: my-app"));
        let unauth = get(addr, "/chat/ws").await;
        assert!(unauth.starts_with("HTTP/1.1 401"), "{unauth}");
        assert!(get(addr, "/ws").await.starts_with("HTTP/1.1 404"));

        // Chat through the mounted router with the SDK.
        let url = format!("ws://{addr}/chat/ws");
        let (alice, _alice_events) = Client::connect(url.clone(), "alice").await.expect("alice");
        let (bob, mut bob_events) = Client::connect(url.clone(), "bob").await.expect("bob");
        let dm = alice
            .create_direct(&UserId::new("bob").expect("id"))
            .await
            .expect("thread");
        let sent = alice
            .send(&dm.thread_id, "hi from axum")
            .await
            .expect("send");
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match bob_events.recv().await {
                    Some(Event::Message(m)) if m.sender_id.as_str() == "alice" => break m,
                    Some(_) => continue,
                    None => panic!("bob's events ended"),
                }
            }
        })
        .await
        .expect("bob receives in time");
        assert_eq!((got.seq, got.text.as_str()), (sent.seq, "hi from axum"));
        let metrics = get(addr, "/chat/metrics").await;
        assert!(
            metrics.contains("messenger_messages_accepted_total 1"),
            "{metrics}"
        );
        // The layer saw every request, the upgrades included.
        let n: u64 = get(addr, "/api/requests")
            .await
            .rsplit("\r\n\r\n")
            .next()
            .and_then(|b| b.trim().parse().ok())
            .expect("a count");
        assert!(n >= 7, "{n}");

        // Shutdown: the app stops, the chat sessions are closed by the server.
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(15), serving)
            .await
            .expect("stops in time")
            .expect("join")
            .expect("serve");
        assert!(chat.is_shutting_down());
        assert_eq!(chat.engine().local_sessions(), 0);
        alice.close().await;
        bob.close().await;
    }
}
