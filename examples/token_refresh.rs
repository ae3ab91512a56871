//! Short-lived JWTs rotated by a token provider, against the real server.
//!
//! Run a server with an HS256 secret, then this example with the same secret (here it
//! plays the app's backend and mints the tokens itself):
//!
//! ```sh
//! MESSENGER_JWT_SECRET=change-me cargo run -p messenger-server --features cli
//! MESSENGER_JWT_SECRET=change-me cargo run -p examples --example token_refresh -- \
//!     --url ws://127.0.0.1:8080/ws --user alice --ttl 5 --rounds 6
//! ```
//!
//! Each token lives `--ttl` seconds. The provider hands out its cached token while it
//! has more than a fifth of its life left and mints a new one otherwise, or when the
//! server refused the last one (`TokenRequest::Refresh`). Every round the example sends
//! a note to itself and then replaces the connection (as a phone switching networks
//! does), so you watch tokens expire and rotate without the app noticing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use messenger_client::{Client, ClientError, ConnectionState, Event, TokenError, TokenRequest};

/// Mints HS256 JWTs for one user, as an app's auth backend would.
#[derive(Clone)]
pub struct JwtProvider {
    secret: Arc<Vec<u8>>,
    user: String,
    ttl: Duration,
    /// The cached token and when it expires (Unix seconds).
    cached: Arc<Mutex<Option<(String, u64)>>>,
    /// Tokens minted so far.
    pub minted: Arc<Mutex<u32>>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtProvider {
    /// A provider for `user`, tokens valid `ttl`.
    pub fn new(secret: impl Into<Vec<u8>>, user: impl Into<String>, ttl: Duration) -> Self {
        JwtProvider {
            secret: Arc::new(secret.into()),
            user: user.into(),
            ttl,
            cached: Arc::new(Mutex::new(None)),
            minted: Arc::new(Mutex::new(0)),
        }
    }

    fn mint(&self) -> Result<(String, u64), TokenError> {
        let iat = now_secs();
        let exp = iat + self.ttl.as_secs().max(1);
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &Claims {
                sub: &self.user,
                exp,
                iat,
            },
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )
        .map_err(|e| TokenError::permanent(format!("cannot sign a token: {e}")))?;
        *self.minted.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        println!(
            "token_refresh: minted a token for {} valid until {exp}",
            self.user
        );
        Ok((token, exp))
    }

    /// The provider's answer to `request`.
    pub fn token(&self, request: TokenRequest) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let margin = (self.ttl.as_secs() / 5).max(1);
        let fresh_enough = matches!(&*cached, Some((_, exp)) if *exp > now_secs() + margin);
        if request == TokenRequest::Refresh || !fresh_enough {
            *cached = Some(self.mint()?);
        }
        cached
            .as_ref()
            .map(|(t, _)| t.clone())
            .ok_or_else(|| TokenError::transient("no token"))
    }
}

/// Connects with `provider`, then `rounds` times: a note to itself, a forced reconnect,
/// `every` apart. Returns the notes' seqs.
pub async fn run(
    url: &str,
    provider: JwtProvider,
    rounds: u32,
    every: Duration,
) -> Result<Vec<u64>, ClientError> {
    let p = provider.clone();
    let (client, mut events) = Client::builder()
        .url(url)
        .token_provider(move |req: TokenRequest| {
            let answer = p.token(req);
            async move { answer }
        })
        .max_connect_attempts(5)
        .connect()
        .await?;
    println!("token_refresh: connected as {:?}", client.user_id());
    let notes = client.create_group(&[], "notes to self").await?.thread_id;
    let mut session = match client.state() {
        ConnectionState::Connected { session_id, .. } => Some(session_id),
        _ => None,
    };
    let mut seqs = Vec::new();
    for round in 1..=rounds {
        let sent = client.send(&notes, format!("round {round}")).await?;
        println!(
            "token_refresh: round {round}: note stored at seq {}",
            sent.seq
        );
        seqs.push(sent.seq);
        if round == rounds {
            break;
        }
        tokio::time::sleep(every).await;
        client.reconnect_now().await?;
        // Wait for the new connection (its token came from the provider).
        loop {
            match events.recv().await {
                Some(Event::Connection(ConnectionState::Connected { session_id, .. }))
                    if Some(&session_id) != session.as_ref() =>
                {
                    println!("token_refresh: reconnected as session {session_id}");
                    session = Some(session_id);
                    break;
                }
                Some(Event::Connection(ConnectionState::Stopped { reason })) => {
                    return Err(match reason {
                        messenger_client::StopReason::Failed(e) => e,
                        _ => ClientError::Closed,
                    })
                }
                Some(_) => {}
                None => return Err(ClientError::Closed),
            }
        }
    }
    client.close().await;
    Ok(seqs)
}

fn usage() -> ! {
    eprintln!(
        "usage: MESSENGER_JWT_SECRET=... token_refresh [--url ws://127.0.0.1:8080/ws] [--user alice] [--ttl SECS] [--rounds N]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("MESSENGER_JWT_SECRET").unwrap_or_else(|_| {
        eprintln!("MESSENGER_JWT_SECRET is not set: give the server's HS256 secret");
        usage()
    });
    let (mut url, mut user, mut ttl, mut rounds) = (
        "ws://127.0.0.1:8080/ws".to_string(),
        "alice".to_string(),
        5u64,
        6u32,
    );
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--url" => url = v,
            "--user" => user = v,
            "--ttl" => ttl = v.parse().unwrap_or_else(|_| usage()),
            "--rounds" => rounds = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let provider = JwtProvider::new(secret.into_bytes(), user, Duration::from_secs(ttl));
    // A round every ~0.6 ttl: tokens expire between rounds and get replaced.
    let every = Duration::from_millis(ttl * 600);
    let seqs = run(&url, provider.clone(), rounds, every).await?;
    println!(
        "token_refresh: {} notes stored ({seqs:?}), {} tokens minted",
        seqs.len(),
        provider.minted.lock().map(|m| *m).unwrap_or(0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_server::config::JwtConfig;
    use messenger_server::{Server, ServerConfig};

    /// Against the real server with an HS256 secret and no clock leeway: 1 s tokens,
    /// rounds 0.8 s apart, so most reconnects need a new token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_lived_tokens_rotate_across_reconnects() {
        let secret = b"example-secret".to_vec();
        let mut config = ServerConfig::default();
        let mut jwt = JwtConfig::hs256(String::from_utf8_lossy(&secret));
        jwt.leeway = Duration::ZERO;
        config.auth.jwt = Some(jwt);
        let server = Server::builder()
            .adapters(messenger_storage_mem::adapters())
            .config(config)
            .build()
            .await
            .expect("server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        let provider = JwtProvider::new(secret, "alice", Duration::from_secs(1));
        let seqs = tokio::time::timeout(
            Duration::from_secs(30),
            run(&url, provider.clone(), 4, Duration::from_millis(800)),
        )
        .await
        .expect("bounded")
        .expect("every round connected");
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        let minted = *provider.minted.lock().expect("lock");
        assert!(
            minted >= 3,
            "tokens rotated: {minted} minted for 4 connections"
        );
        let _ = stop.send(());
        let _ = serving.await;
    }
}
