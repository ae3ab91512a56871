//! Entry points for `cargo fuzz` (feature `fuzzing`; not a stable API): what the server
//! does with bytes before the WebSocket upgrade, and JWT verification.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::auth::{Authenticator, PeerAddr};
use crate::config::JwtConfig;
use crate::{Server, ServerConfig};

/// The HS256 secret of [`jwt`]'s authenticator (for seed tokens).
pub const JWT_SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";

struct Harness {
    rt: tokio::runtime::Runtime,
    server: Server,
    /// Built once: building the router per input was half of `http_request`'s own time
    /// (route-table inserts), a cost no real connection pays.
    router: axum::Router,
    jwt: Arc<dyn Authenticator>,
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fn with<R>(f: impl FnOnce(&Harness) -> R) -> R {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let (server, jwt) = rt.block_on(async {
                let mut c = ServerConfig::default();
                c.websocket.allowed_origins = vec!["https://chat.example.com".into()];
                c.websocket.handshake_timeout = Duration::from_millis(200);
                let server = Server::builder().config(c).build().await.expect("server");
                let auth = crate::config::AuthConfig {
                    jwt: Some(JwtConfig::hs256(JWT_SECRET)),
                    ..Default::default()
                };
                let jwt = crate::auth::from_config(&auth).await.expect("jwt");
                (server, jwt)
            });
            let router = server.router();
            Harness {
                rt,
                server,
                router,
                jwt,
            }
        });
        f(h)
    })
}

/// Serves `bytes` as one client connection's input to the router on hyper with the
/// server's limits (dev auth, an `Origin` allow-list), then closes the client side.
/// Panics when a handler panics or when the answer is not HTTP/1.x; a `101` is only
/// allowed for a request that really asked for a WebSocket upgrade.
pub fn http_request(bytes: &[u8]) {
    with(|h| {
        let server = &h.server;
        let router = h.router.clone();
        let answer = h.rt.block_on(async {
            let (mut client, conn) = tokio::io::duplex(64 * 1024);
            let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
            let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
                req.extensions_mut().insert(PeerAddr(peer));
                router.clone().oneshot(req.map(Body::new))
            });
            let http = crate::router::http_builder(server.config(), false);
            let serving = tokio::spawn(
                http.serve_connection(TokioIo::new(conn), service)
                    .with_upgrades(),
            );
            let _ = client.write_all(bytes).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut out)).await;
            drop(client);
            match tokio::time::timeout(Duration::from_secs(2), serving).await {
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => {}
            }
            out
        });
        if answer.is_empty() {
            return;
        }
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        assert!(
            answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1.x answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(64)])
        );
        if answer.starts_with(b"HTTP/1.1 101") {
            let asked = String::from_utf8_lossy(bytes).to_ascii_lowercase();
            assert!(
                asked.contains("upgrade") && asked.contains("sec-websocket-key"),
                "101 without an upgrade request"
            );
        }
    })
}

/// Verifies `token` (as `Authorization: Bearer` and as `?token=`) with an HS256
/// authenticator. Panics when a handler panics or a token is accepted that was not
/// signed with [`JWT_SECRET`] (the fuzzer cannot forge one).
pub fn jwt(token: &[u8]) {
    with(|h| {
        let jwt = h.jwt.clone();
        h.rt.block_on(async move {
            let Ok(text) = std::str::from_utf8(token) else {
                return;
            };
            let mut req = http::Request::builder().uri("/ws");
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {text}")) {
                req = req.header(http::header::AUTHORIZATION, v);
            }
            if let Ok(req) = req.body(()) {
                let (parts, ()) = req.into_parts();
                let r = jwt.authenticate(&parts).await;
                assert!(r.is_err() || is_signed(text), "accepted {text:?}: {r:?}");
            }
            let uri = format!("/ws?token={}", text);
            if let Ok(req) = http::Request::builder().uri(uri).body(()) {
                let (parts, ()) = req.into_parts();
                let r = jwt.authenticate(&parts).await;
                // In a query, `&` ends the token's value (a signed seed token followed by
                // `&...` is that token).
                let as_query = text.split('&').next().unwrap_or_default();
                assert!(
                    r.is_err() || is_signed(text) || is_signed(as_query),
                    "accepted {text:?}: {r:?}"
                );
            }
        })
    })
}

/// Whether `token` carries a real HS256 signature under [`JWT_SECRET`] (seed tokens);
/// expiry and claims are not checked here.
fn is_signed(token: &str) -> bool {
    let key = jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes());
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_exp = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(token.trim(), &key, &v).is_ok()
}
