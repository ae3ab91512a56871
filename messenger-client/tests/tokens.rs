//! Credentials that expire, against the real server with an HS256 secret: the provider
//! is asked for every (re)connect, once more on a 401, and the client stops with a
//! typed error when the fresh token is refused too.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use messenger_client::{
    BackoffConfig, Client, ClientError, ConnectionState, Event, Events, StopReason, TokenError,
    TokenRequest, UserId,
};
use messenger_server::config::JwtConfig;
use messenger_server::ServerConfig;
use messenger_storage_mem::MemBackend;
use support::{server_config, start};

const LIMIT: Duration = Duration::from_secs(30);
const SECRET: &[u8] = b"the-test-secret";

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn jwt(secret: &[u8], user: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encode jwt")
}

fn jwt_config(secret: &[u8]) -> ServerConfig {
    let mut cfg = server_config();
    let mut jwt = JwtConfig::hs256(String::from_utf8_lossy(secret));
    jwt.leeway = Duration::ZERO;
    cfg.auth.jwt = Some(jwt);
    cfg
}

/// A provider as apps write them: a cached token, a fresh one on `Refresh`; it
/// records what it was asked.
#[derive(Clone)]
struct Provider {
    cached: Arc<Mutex<String>>,
    asked: Arc<Mutex<Vec<TokenRequest>>>,
    secret: Arc<Mutex<Vec<u8>>>,
}

impl Provider {
    fn new(initial: String) -> Provider {
        Provider {
            cached: Arc::new(Mutex::new(initial)),
            asked: Arc::new(Mutex::new(Vec::new())),
            secret: Arc::new(Mutex::new(SECRET.to_vec())),
        }
    }

    fn asked(&self) -> Vec<TokenRequest> {
        self.asked.lock().expect("lock").clone()
    }

    fn provider(
        &self,
    ) -> impl Fn(TokenRequest) -> std::future::Ready<Result<String, TokenError>> + Send + Sync + 'static
    {
        let me = self.clone();
        move |req| {
            me.asked.lock().expect("lock").push(req);
            let mut cached = me.cached.lock().expect("lock");
            if req == TokenRequest::Refresh {
                let secret = me.secret.lock().expect("lock").clone();
                *cached = jwt(&secret, "alice", now() + 60);
            }
            std::future::ready(Ok(cached.clone()))
        }
    }
}

async fn wait_state(events: &mut Events, want: impl Fn(&ConnectionState) -> bool) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Event::Connection(s))) if want(&s) => return,
            Ok(Some(_)) => {}
            other => panic!("state never reached: {other:?}"),
        }
    }
}

fn fast() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        multiplier: 2.0,
        max_retries: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_and_a_refused_fresh_one_stops_the_client() {
    tokio::time::timeout(LIMIT, async {
        let mem = MemBackend::new();
        let server = start(
            &mem,
            "127.0.0.1:0".parse().expect("addr"),
            jwt_config(SECRET),
        )
        .await;
        let addr = server.addr;
        // The app's cached token expired a minute ago.
        let p = Provider::new(jwt(SECRET, "alice", now() - 60));
        let (alice, mut events) = Client::builder()
            .url(server.url())
            .token_provider(p.provider())
            .backoff(fast())
            .connect()
            .await
            .expect("connects with the refreshed token");
        assert_eq!(p.asked(), [TokenRequest::Connect, TokenRequest::Refresh]);
        assert_eq!(alice.user_id(), Some(UserId::new("alice").expect("id")));

        // Every reconnect asks again; the cached (fresh) token is good.
        let first = loop {
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Some(Event::Connection(ConnectionState::Connected { session_id, .. }))) => {
                    break session_id
                }
                Ok(Some(_)) => {}
                other => panic!("{other:?}"),
            }
        };
        alice.reconnect_now().await.expect("reconnect");
        wait_state(
            &mut events,
            |s| matches!(s, ConnectionState::Connected { session_id, .. } if *session_id != first),
        )
        .await;
        alice.ping().await.expect("online");
        assert_eq!(
            p.asked(),
            [
                TokenRequest::Connect,
                TokenRequest::Refresh,
                TokenRequest::Connect
            ]
        );

        // The server comes back with another secret: the cached token and the fresh
        // one (still signed with the old secret) are refused; the client stops, typed,
        // and the send waiting in the outbox fails with the reason.
        let thread = alice
            .create_direct(&UserId::new("bob").expect("id"))
            .await
            .expect("thread")
            .thread_id;
        server.stop().await;
        wait_state(&mut events, |s| {
            matches!(s, ConnectionState::WaitingToRetry { .. })
        })
        .await;
        let pending = {
            let alice = alice.clone();
            tokio::spawn(async move { alice.send(&thread, "held").await })
        };
        let server = start(&mem, addr, jwt_config(b"rotated-secret")).await;
        wait_state(&mut events, |s| {
            matches!(
                s,
                ConnectionState::Stopped {
                    reason: StopReason::Failed(ClientError::Auth(401))
                }
            )
        })
        .await;
        assert_eq!(pending.await.expect("join"), Err(ClientError::Auth(401)));
        let asked = p.asked();
        assert_eq!(
            &asked[asked.len() - 2..],
            [TokenRequest::Connect, TokenRequest::Refresh],
            "one refresh per refusal, then stop: {asked:?}"
        );
        server.stop().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_failures_are_retried_when_transient_and_final_when_not() {
    tokio::time::timeout(LIMIT, async {
        let mem = MemBackend::new();
        let server = start(
            &mem,
            "127.0.0.1:0".parse().expect("addr"),
            jwt_config(SECRET),
        )
        .await;
        // Twice "the auth backend is unreachable", then a token.
        let calls = Arc::new(Mutex::new(0u32));
        let c = calls.clone();
        let (alice, mut events) = Client::builder()
            .url(server.url())
            .token_provider(move |_req: TokenRequest| {
                let n = {
                    let mut n = c.lock().expect("lock");
                    *n += 1;
                    *n
                };
                async move {
                    if n <= 2 {
                        Err(TokenError::transient("auth backend unreachable"))
                    } else {
                        Ok(jwt(SECRET, "alice", now() + 60))
                    }
                }
            })
            .backoff(fast())
            .build()
            .await
            .expect("build");
        let mut waits = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Some(Event::Connection(ConnectionState::WaitingToRetry { error, .. }))) => {
                    assert!(
                        matches!(error, ClientError::Token(ref t) if t.is_transient()),
                        "{error:?}"
                    );
                    waits += 1;
                }
                Ok(Some(Event::Connection(ConnectionState::Connected { .. }))) => break,
                Ok(Some(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, 2);
        alice.wait_connected().await.expect("connected");
        alice.close().await;

        // The user signed out: a permanent failure stops the client at once.
        let (_bob, mut events) = Client::builder()
            .url(server.url())
            .token_provider(|_req: TokenRequest| async {
                Err::<String, _>(TokenError::permanent("signed out"))
            })
            .build()
            .await
            .expect("build");
        wait_state(&mut events, |s| {
            matches!(
                s,
                ConnectionState::Stopped {
                    reason: StopReason::Failed(ClientError::Token(t))
                } if !t.is_transient()
            )
        })
        .await;
        server.stop().await;
    })
    .await
    .expect("bounded");
}
