//! Authentication against the real server over real WebSocket upgrades: JWTs with every
//! key type and key source (HS256 secret, RS256 / ES256 / EdDSA PEM keys, a JWKS file
//! and a JWKS URL served over HTTP on loopback, refreshed and picked by `kid`), the
//! refusal paths (401 before the upgrade), and an embedder's own `Authenticator`.
//! The keys under `tests/keys/` are test-only (see its README).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use common::{start, test_config, try_connect, try_connect_bearer, Client, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use messenger_core::UserId;
use messenger_server::auth::{AuthError, Authenticator};
use messenger_server::config::JwtConfig;
use messenger_server::{Server, ServerConfig, ServerError};
use serde_json::{json, Value};

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("test key")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A signing key of the tests.
#[derive(Clone, Copy)]
enum Signer {
    Rsa,
    Rsa2,
    Ec,
    Ed,
}

impl Signer {
    fn alg(self) -> Algorithm {
        match self {
            Signer::Rsa | Signer::Rsa2 => Algorithm::RS256,
            Signer::Ec => Algorithm::ES256,
            Signer::Ed => Algorithm::EdDSA,
        }
    }

    fn encoding_key(self) -> EncodingKey {
        match self {
            Signer::Rsa => EncodingKey::from_rsa_pem(&read_key("rsa.key")),
            Signer::Rsa2 => EncodingKey::from_rsa_pem(&read_key("rsa2.key")),
            Signer::Ec => EncodingKey::from_ec_pem(&read_key("ec.key")),
            Signer::Ed => EncodingKey::from_ed_pem(&read_key("ed.key")),
        }
        .expect("test signing key")
    }

    fn public_pem(self) -> PathBuf {
        key_path(match self {
            Signer::Rsa => "rsa.pub.pem",
            Signer::Rsa2 => "rsa2.pub.pem",
            Signer::Ec => "ec.pub.pem",
            Signer::Ed => "ed.pub.pem",
        })
    }

    fn sign(self, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(self.alg());
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &self.encoding_key()).expect("sign")
    }
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 300})
}

async fn accepted(srv: &TestServer, token: &str, user: &str) {
    let ws = try_connect_bearer(srv.addr, token)
        .await
        .unwrap_or_else(|s| panic!("token for {user} refused with {s}"));
    let c = Client::from_ws(ws).await;
    assert_eq!(c.welcome["user_id"], user);
}

async fn refused(srv: &TestServer, token: &str, what: &str) {
    assert_eq!(
        try_connect_bearer(srv.addr, token).await.err(),
        Some(401),
        "{what} must be refused with 401 before the upgrade"
    );
}

fn jwt_config(j: JwtConfig) -> ServerConfig {
    let mut c = test_config();
    c.auth.jwt = Some(j);
    c
}

fn pem_config(s: Signer) -> ServerConfig {
    let mut j = JwtConfig::default();
    j.public_key_file = Some(s.public_pem());
    jwt_config(j)
}

/// RS256, ES256 and EdDSA with a PEM public key: accepted, and every refusal path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_keys_of_every_type_and_their_refusals() {
    for (s, other) in [
        (Signer::Rsa, Signer::Rsa2),
        (Signer::Ec, Signer::Rsa),
        (Signer::Ed, Signer::Ec),
    ] {
        let srv = start(pem_config(s)).await;
        accepted(&srv, &s.sign(None, &claims("alice")), "alice").await;
        // `?token=` works like the header.
        let ws = try_connect(srv.addr, Some(&s.sign(None, &claims("bob"))))
            .await
            .expect("query token");
        assert_eq!(Client::from_ws(ws).await.welcome["user_id"], "bob");
        refused(
            &srv,
            &other.sign(None, &claims("alice")),
            "another key's token",
        )
        .await;
        refused(
            &srv,
            &s.sign(None, &json!({"sub":"alice","exp":now() - 3600})),
            "an expired token",
        )
        .await;
        refused(
            &srv,
            &s.sign(
                None,
                &json!({"sub":"alice","exp":now() + 300,"nbf":now() + 3600}),
            ),
            "a token not yet valid",
        )
        .await;
        refused(
            &srv,
            &s.sign(None, &json!({"sub":"alice"})),
            "a token without exp",
        )
        .await;
        refused(
            &srv,
            &s.sign(None, &json!({"exp":now() + 300})),
            "a token without sub",
        )
        .await;
        refused(
            &srv,
            &s.sign(None, &json!({"sub":"not a user id","exp":now() + 300})),
            "a sub that is no user id",
        )
        .await;
        // Algorithm confusion: HS256 "signed" with the public key's bytes.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("alice"),
            &EncodingKey::from_secret(&std::fs::read(s.public_pem()).expect("pem")),
        )
        .expect("sign");
        refused(&srv, &forged, "HS256 with the public key as secret").await;
        refused(&srv, "not.a.jwt", "garbage").await;
        refused(&srv, "alice", "a dev token").await;
        assert_eq!(try_connect(srv.addr, None).await.err(), Some(401));
        let m = srv.metrics().await;
        // Another RSA key's token fails on its signature; another type's on its alg.
        let wrong_key = if matches!(s, Signer::Rsa) {
            "signature"
        } else {
            "algorithm"
        };
        for reason in [
            wrong_key,
            "expired",
            "not_yet_valid",
            "missing_claim",
            "bad_user",
        ] {
            assert!(
                !m.contains(&format!(
                    "messenger_unauthorized_total{{reason=\"{reason}\"}} 0"
                )),
                "{reason} not counted:\n{m}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_and_issuer_are_checked_when_configured() {
    let mut j = JwtConfig::default();
    j.public_key_file = Some(Signer::Rsa.public_pem());
    j.audience = vec!["chat".into()];
    j.issuer = vec!["https://idp.test/".into()];
    let srv = start(jwt_config(j)).await;
    let exp = now() + 300;
    let ok = json!({"sub":"alice","exp":exp,"aud":"chat","iss":"https://idp.test/"});
    accepted(&srv, &Signer::Rsa.sign(None, &ok), "alice").await;
    // `aud` may be a list that contains ours.
    let list = json!({"sub":"alice","exp":exp,"aud":["x","chat"],"iss":"https://idp.test/"});
    accepted(&srv, &Signer::Rsa.sign(None, &list), "alice").await;
    for (bad, what) in [
        (
            json!({"sub":"a","exp":exp,"aud":"other","iss":"https://idp.test/"}),
            "wrong aud",
        ),
        (
            json!({"sub":"a","exp":exp,"iss":"https://idp.test/"}),
            "no aud",
        ),
        (
            json!({"sub":"a","exp":exp,"aud":"chat","iss":"https://evil.test/"}),
            "wrong iss",
        ),
        (json!({"sub":"a","exp":exp,"aud":"chat"}), "no iss"),
    ] {
        refused(&srv, &Signer::Rsa.sign(None, &bad), what).await;
    }
}

/// A scratch directory for a JWKS file this test rewrites.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msgsrv-auth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_picks_keys_by_kid_and_follows_rotation() {
    let dir = scratch("jwks-file");
    let file = dir.join("jwks.json");
    std::fs::copy(key_path("jwks.json"), &file).expect("copy");
    let mut j = JwtConfig::default();
    j.jwks_file = Some(file.clone());
    let srv = start(jwt_config(j)).await;
    for (s, kid) in [
        (Signer::Rsa, "rsa-1"),
        (Signer::Ec, "ec-1"),
        (Signer::Ed, "ed-1"),
    ] {
        accepted(&srv, &s.sign(Some(kid), &claims("alice")), "alice").await;
    }
    refused(
        &srv,
        &Signer::Rsa.sign(Some("ec-1"), &claims("alice")),
        "an RS256 token naming an EC key",
    )
    .await;
    // Without a kid, the one key of the token's algorithm verifies it.
    accepted(&srv, &Signer::Rsa.sign(None, &claims("dave")), "dave").await;
    // Rotation: the file now holds rsa-2 and ec-1. A token naming the new kid makes
    // the server reload at once.
    std::fs::copy(key_path("jwks-rotated.json"), &file).expect("rotate");
    accepted(
        &srv,
        &Signer::Rsa2.sign(Some("rsa-2"), &claims("bob")),
        "bob",
    )
    .await;
    refused(
        &srv,
        &Signer::Rsa.sign(Some("rsa-1"), &claims("alice")),
        "a token of the rotated-out key",
    )
    .await;
    refused(
        &srv,
        &Signer::Rsa.sign(Some("nope"), &claims("alice")),
        "an unknown kid",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JWKS endpoint on loopback that counts its fetches.
struct JwksEndpoint {
    url: String,
    doc: Arc<Mutex<Vec<u8>>>,
    fetches: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn jwks_endpoint(initial: &str) -> JwksEndpoint {
    use axum::routing::get;
    let doc = Arc::new(Mutex::new(read_key(initial)));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let (d, f) = (d.clone(), f.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                let body = d.lock().unwrap_or_else(|p| p.into_inner()).clone();
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("addr")
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    JwksEndpoint {
        url,
        doc,
        fetches,
        _task: task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_cached_and_refreshed() {
    let idp = jwks_endpoint("jwks.json").await;
    let mut j = JwtConfig::default();
    j.jwks_url = Some(idp.url.clone());
    let srv = start(jwt_config(j)).await;
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "fetched once at start"
    );
    for _ in 0..3 {
        accepted(
            &srv,
            &Signer::Ec.sign(Some("ec-1"), &claims("alice")),
            "alice",
        )
        .await;
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "cached between refreshes"
    );
    // The issuer rotates: a token naming the new kid triggers one fetch.
    *idp.doc.lock().unwrap_or_else(|p| p.into_inner()) = read_key("jwks-rotated.json");
    accepted(
        &srv,
        &Signer::Rsa2.sign(Some("rsa-2"), &claims("bob")),
        "bob",
    )
    .await;
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    // Unknown kids do not make the server hammer the issuer.
    for i in 0..5 {
        refused(
            &srv,
            &Signer::Rsa.sign(Some(&format!("forged-{i}")), &claims("eve")),
            "an unknown kid",
        )
        .await;
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        2,
        "at most one forced reload per 10 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_key_sources_fail_the_start() {
    let mut j = JwtConfig::default();
    j.jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
    let r = Server::builder().config(jwt_config(j)).build().await;
    assert!(matches!(r, Err(ServerError::Auth(_))), "{r:?}");
    let mut j = JwtConfig::default();
    j.public_key_file = Some(key_path("README.md"));
    let r = Server::builder().config(jwt_config(j)).build().await;
    assert!(matches!(r, Err(ServerError::Auth(_))), "{r:?}");
    let mut j = JwtConfig::default();
    j.jwks_file = Some(key_path("missing.json"));
    let r = Server::builder().config(jwt_config(j)).build().await;
    assert!(matches!(r, Err(ServerError::Auth(_))), "{r:?}");
}

/// An embedder's own session check: a cookie looked up in "their database".
struct CookieSessions {
    sessions: Vec<(&'static str, &'static str)>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Authenticator for CookieSessions {
    async fn authenticate(&self, req: &http::request::Parts) -> Result<UserId, AuthError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(AuthError::Unavailable("session database down".into()));
        }
        let cookies = req
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::MissingToken)?;
        let sid = cookies
            .split(';')
            .find_map(|c| c.trim().strip_prefix("sid="))
            .ok_or(AuthError::MissingToken)?;
        let user = self
            .sessions
            .iter()
            .find(|(s, _)| *s == sid)
            .map(|(_, u)| *u)
            .ok_or_else(|| AuthError::Refused("unknown session".into()))?;
        UserId::new(user).map_err(|_| AuthError::BadUser)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedders_own_authenticator() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = Server::builder()
        .config(test_config())
        .authenticator(CookieSessions {
            sessions: vec![("s3cr3t", "carol")],
            down: down.clone(),
        })
        .build()
        .await
        .expect("build");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tokio::spawn(server.clone().serve(listener, std::future::pending()));
    let with_cookie = |c: &str| {
        let mut r = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("request");
        r.headers_mut().insert("cookie", c.parse().expect("cookie"));
        r
    };
    let (ws, _) = tokio_tungstenite::connect_async(with_cookie("theme=dark; sid=s3cr3t"))
        .await
        .expect("a known session");
    assert_eq!(Client::from_ws(ws).await.welcome["user_id"], "carol");
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        status(tokio_tungstenite::connect_async(with_cookie("sid=guess")).await),
        401
    );
    // A token is not a session for this authenticator.
    assert_eq!(try_connect(addr, Some("carol")).await.err(), Some(401));
    down.store(true, Ordering::SeqCst);
    assert_eq!(
        status(tokio_tungstenite::connect_async(with_cookie("sid=s3cr3t")).await),
        503,
        "an authenticator that cannot decide answers 503"
    );
    let m = server.metrics_text();
    assert!(
        m.contains("messenger_unauthorized_total{reason=\"refused\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("messenger_unauthorized_total{reason=\"unavailable\"} 1"),
        "{m}"
    );
    serving.abort();
}
