//! Local endpoints that speak each provider's real protocol, for tests and benchmarks
//! (these machines cannot reach Apple or Google). Feature `testkit`.
//!
//! - [`FakeApns`]: HTTP/2 over TLS (a test CA), checks the ES256 provider token with
//!   the public key (`kid`, `iss`, `iat` fresh), the headers (`apns-topic`,
//!   `apns-push-type: alert`, `apns-collapse-id`, `apns-id`) and the JSON; answers as
//!   Apple does (410 `Unregistered`, 400 `BadDeviceToken`, 403
//!   `InvalidProviderToken`, scripted 429/5xx).
//! - [`FakeFcm`]: the OAuth token endpoint (checks the RS256 assertion: `iss`, `scope`,
//!   `aud`) and `messages:send` (checks the access token it issued); 404
//!   `UNREGISTERED` for gone tokens.
//! - [`FakeWebPush`]: a push service that checks the VAPID JWT against the `k` key
//!   and its own origin, and decrypts the RFC 8291 body with the subscription's
//!   private key; 410 for gone subscriptions.
//!
//! Every endpoint records what it accepted and can be told to fail the next requests
//! ([`Failure`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::ecdh::diffie_hellman;
use p256::elliptic_curve::rand_core::{OsRng, RngCore};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// The RSA key of [`FakeFcm`]'s test service account (test-only, never a real one).
pub const FCM_TEST_KEY_PEM: &str = include_str!("fcm-test-key.pem");
const FCM_TEST_PUBLIC_PEM: &str = include_str!("fcm-test-key.pub.pem");

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`.
pub struct TestPki {
    /// The CA certificate (PEM): what the providers' `ca_pem` trusts.
    pub ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl TestPki {
    /// A fresh CA and server certificate; the server offers `h2` and `http/1.1`.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "messenger-push test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let der_key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der_key)
        .expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestPki {
            ca_pem: ca_cert.pem(),
            config: Arc::new(config),
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// A listener on a free port of 127.0.0.1 and its `https://localhost:PORT` origin.
pub async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, format!("https://localhost:{port}"))
}

/// Serves `router` over TLS (HTTP/2 or HTTP/1.1 by ALPN) on `listener`.
pub fn serve_tls(pki: &TestPki, listener: tokio::net::TcpListener, router: Router) -> SocketAddr {
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.config.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

/// A scripted answer for the next request.
#[derive(Debug, Clone)]
pub struct Failure {
    /// HTTP status.
    pub status: u16,
    /// Response body (JSON for APNs and FCM).
    pub body: String,
    /// `Retry-After` seconds, if any.
    pub retry_after: Option<u64>,
}

impl Failure {
    /// A status with a JSON body.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Failure {
            status,
            body: body.into(),
            retry_after: None,
        }
    }

    /// With `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn response(&self) -> Response {
        let mut r = (
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [("content-type", "application/json")],
            self.body.clone(),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = s.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
        }
        r
    }
}

use crate::webhook::unix_now as now;

fn err(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------------------- APNs

/// One notification [`FakeApns`] accepted.
#[derive(Debug, Clone)]
pub struct ApnsRequest {
    /// The device token from the path.
    pub token: String,
    /// Every request header.
    pub headers: HashMap<String, String>,
    /// The JSON payload.
    pub payload: serde_json::Value,
}

#[derive(Default)]
struct ApnsState {
    accepted: Vec<ApnsRequest>,
    failures: VecDeque<Failure>,
    gone: HashSet<String>,
    bad: HashSet<String>,
    jwts: HashSet<String>,
    requests: u64,
}

/// A local APNs: see the module docs.
#[derive(Clone)]
pub struct FakeApns {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The `.p8` signing key (PKCS#8 PEM) the provider should use.
    pub key_pem: String,
    /// The key id it expects in `kid`.
    pub key_id: String,
    /// The team id it expects in `iss`.
    pub team_id: String,
    state: Arc<Mutex<ApnsState>>,
    decoding: Arc<DecodingKey>,
}

impl FakeApns {
    /// Starts one on a free port, with a fresh signing key.
    pub async fn start(pki: &TestPki) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let decoding =
            DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).expect("public key");
        let (listener, url) = bind().await;
        let fake = FakeApns {
            url,
            key_pem: key.serialize_pem(),
            key_id: "KEYID12345".into(),
            team_id: "TEAMID1234".into(),
            state: Arc::default(),
            decoding: Arc::new(decoding),
        };
        let router = Router::new()
            .route("/3/device/{token}", post(apns_handler))
            .with_state(fake.clone());
        serve_tls(pki, listener, router);
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ApnsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What it accepted, in order.
    pub fn accepted(&self) -> Vec<ApnsRequest> {
        self.lock().accepted.clone()
    }

    /// Every request it got (accepted or not).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Distinct provider tokens seen.
    pub fn provider_tokens(&self) -> usize {
        self.lock().jwts.len()
    }

    /// From now on `token` answers 410 `Unregistered`.
    pub fn unregister(&self, token: &str) {
        self.lock().gone.insert(token.to_string());
    }

    /// From now on `token` answers 400 `BadDeviceToken`.
    pub fn bad_token(&self, token: &str) {
        self.lock().bad.insert(token.to_string());
    }

    /// The next request gets `f`.
    pub fn fail_next(&self, f: Failure) {
        self.lock().failures.push_back(f);
    }
}

async fn apns_handler(
    State(s): State<FakeApns>,
    Path(token): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reason = |status: StatusCode, r: &str| err(status, serde_json::json!({ "reason": r }));
    {
        let mut st = s.lock();
        st.requests += 1;
        if let Some(f) = st.failures.pop_front() {
            return f.response();
        }
    }
    if version != Version::HTTP_2 {
        return reason(StatusCode::BAD_REQUEST, "BadHttpVersion");
    }
    let Some(auth) = header(&headers, "authorization") else {
        return reason(StatusCode::FORBIDDEN, "MissingProviderToken");
    };
    let Some(jwt) = auth.strip_prefix("bearer ") else {
        return reason(StatusCode::FORBIDDEN, "InvalidProviderToken");
    };
    // A token verified before is trusted again (as Apple does, which caches them and
    // asks for a new one at most once an hour).
    let known = s.lock().jwts.contains(jwt);
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims = HashSet::from(["iss".to_string()]);
    v.validate_exp = false;
    v.set_issuer(&[&s.team_id]);
    let ok = known
        || jsonwebtoken::decode_header(jwt)
            .ok()
            .is_some_and(|h| h.kid.as_deref() == Some(s.key_id.as_str()))
            && jsonwebtoken::decode::<serde_json::Value>(jwt, &s.decoding, &v)
                .ok()
                .and_then(|d| d.claims.get("iat").and_then(|i| i.as_u64()))
                .is_some_and(|iat| iat + 3600 > now() && iat <= now() + 60);
    if !ok {
        return reason(StatusCode::FORBIDDEN, "InvalidProviderToken");
    }
    let topic = header(&headers, "apns-topic");
    if topic.is_none() {
        return reason(StatusCode::BAD_REQUEST, "MissingTopic");
    }
    if header(&headers, "apns-push-type").as_deref() != Some("alert") {
        return reason(StatusCode::BAD_REQUEST, "InvalidPushType");
    }
    if header(&headers, "apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return reason(StatusCode::BAD_REQUEST, "BadCollapseId");
    }
    if token.len() < 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reason(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return reason(StatusCode::BAD_REQUEST, "PayloadEmpty");
    };
    if body.len() > 4096 {
        return reason(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    if payload.pointer("/aps/alert").is_none() {
        return reason(StatusCode::BAD_REQUEST, "BadPayload");
    }
    let mut st = s.lock();
    st.jwts.insert(jwt.to_string());
    if st.gone.contains(&token) {
        return err(
            StatusCode::GONE,
            serde_json::json!({ "reason": "Unregistered", "timestamp": now() * 1000 }),
        );
    }
    if st.bad.contains(&token) {
        return reason(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    st.accepted.push(ApnsRequest {
        token,
        headers,
        payload,
    });
    let mut r = StatusCode::OK.into_response();
    if let Some(id) = header_of(&st, "apns-id") {
        if let Ok(v) = id.parse() {
            r.headers_mut().insert("apns-id", v);
        }
    }
    r
}

fn header_of(st: &ApnsState, name: &str) -> Option<String> {
    st.accepted
        .last()
        .and_then(|a| a.headers.get(name).cloned())
}

// ----------------------------------------------------------------------------- FCM

/// One message [`FakeFcm`] accepted (the `message` object).
pub type FcmMessage = serde_json::Value;

#[derive(Default)]
struct FcmState {
    accepted: Vec<FcmMessage>,
    failures: VecDeque<Failure>,
    token_failures: VecDeque<Failure>,
    gone: HashSet<String>,
    issued: HashSet<String>,
    exchanges: u64,
    requests: u64,
}

/// A local FCM with its OAuth token endpoint: see the module docs.
#[derive(Clone)]
pub struct FakeFcm {
    /// `https://127.0.0.1:PORT` (the FCM endpoint).
    pub url: String,
    /// `{url}/token`.
    pub token_uri: String,
    /// The project in the service account.
    pub project_id: String,
    /// The account's email.
    pub client_email: String,
    state: Arc<Mutex<FcmState>>,
    decoding: Arc<DecodingKey>,
}

impl FakeFcm {
    /// Starts one on a free port.
    pub async fn start(pki: &TestPki) -> Self {
        let (listener, url) = bind().await;
        let fake = FakeFcm {
            token_uri: format!("{url}/token"),
            url,
            project_id: "messenger-test".into(),
            client_email: "push@messenger-test.iam.gserviceaccount.com".into(),
            state: Arc::default(),
            decoding: Arc::new(
                DecodingKey::from_rsa_pem(FCM_TEST_PUBLIC_PEM.as_bytes()).expect("public key"),
            ),
        };
        let router = Router::new()
            .route("/token", post(fcm_token))
            .route("/v1/projects/{project}/{action}", post(fcm_send))
            .with_state(fake.clone());
        serve_tls(pki, listener, router);
        fake
    }

    /// The service-account JSON a provider loads.
    pub fn service_account_json(&self) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": "test",
            "private_key": FCM_TEST_KEY_PEM,
            "client_email": self.client_email,
            "token_uri": self.token_uri,
        })
        .to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FcmState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What it accepted, in order.
    pub fn accepted(&self) -> Vec<FcmMessage> {
        self.lock().accepted.clone()
    }

    /// Token exchanges that succeeded.
    pub fn exchanges(&self) -> u64 {
        self.lock().exchanges
    }

    /// `messages:send` requests (accepted or not).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// From now on `token` answers 404 `UNREGISTERED`.
    pub fn unregister(&self, token: &str) {
        self.lock().gone.insert(token.to_string());
    }

    /// Revokes every access token issued so far (the next send gets 401).
    pub fn revoke_access_tokens(&self) {
        self.lock().issued.clear();
    }

    /// The next `messages:send` gets `f`.
    pub fn fail_next(&self, f: Failure) {
        self.lock().failures.push_back(f);
    }

    /// The next token exchange gets `f`.
    pub fn fail_next_exchange(&self, f: Failure) {
        self.lock().token_failures.push_back(f);
    }
}

async fn fcm_token(State(s): State<FakeFcm>, headers: HeaderMap, body: String) -> Response {
    let oauth = |status: StatusCode, e: &str| {
        err(
            status,
            serde_json::json!({ "error": e, "error_description": e }),
        )
    };
    if let Some(f) = s.lock().token_failures.pop_front() {
        return f.response();
    }
    if header(&headers, "content-type").as_deref() != Some("application/x-www-form-urlencoded") {
        return oauth(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[&s.client_email]);
    v.set_audience(&[&s.token_uri]);
    let claims = match jsonwebtoken::decode::<serde_json::Value>(assertion, &s.decoding, &v) {
        Ok(d) => d.claims,
        Err(_) => return oauth(StatusCode::BAD_REQUEST, "invalid_grant"),
    };
    if claims.get("scope").and_then(|x| x.as_str()) != Some(crate::fcm::SCOPE) {
        return oauth(StatusCode::BAD_REQUEST, "invalid_scope");
    }
    let mut raw = [0u8; 24];
    OsRng.fill_bytes(&mut raw);
    let token = format!("ya29.{}", URL_SAFE_NO_PAD.encode(raw));
    let mut st = s.lock();
    st.issued.insert(token.clone());
    st.exchanges += 1;
    axum::Json(serde_json::json!({
        "access_token": token, "expires_in": 3599, "token_type": "Bearer"
    }))
    .into_response()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fcm_error(status: StatusCode, code: &str, detail: Option<&str>) -> Response {
    let mut e = serde_json::json!({
        "error": { "code": status.as_u16(), "message": code, "status": code }
    });
    if let Some(d) = detail {
        e["error"]["details"] = serde_json::json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": d,
        }]);
    }
    err(status, e)
}

async fn fcm_send(
    State(s): State<FakeFcm>,
    Path((project, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut st = s.lock();
        st.requests += 1;
        if let Some(f) = st.failures.pop_front() {
            return f.response();
        }
    }
    if project != s.project_id || action != "messages:send" {
        return fcm_error(StatusCode::NOT_FOUND, "NOT_FOUND", None);
    }
    let bearer = header(&headers, "authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string));
    if !bearer.is_some_and(|b| s.lock().issued.contains(&b)) {
        return fcm_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", None);
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", None);
    };
    let Some(msg) = v.get("message").cloned() else {
        return fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", None);
    };
    let Some(token) = msg
        .get("token")
        .and_then(|t| t.as_str())
        .map(str::to_string)
    else {
        return fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", None);
    };
    // FCM takes data values as strings only.
    if msg
        .get("data")
        .and_then(|d| d.as_object())
        .is_some_and(|d| d.values().any(|x| !x.is_string()))
    {
        return fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
        );
    }
    let mut st = s.lock();
    if st.gone.contains(&token) {
        return fcm_error(StatusCode::NOT_FOUND, "NOT_FOUND", Some("UNREGISTERED"));
    }
    st.accepted.push(msg);
    let n = st.accepted.len();
    axum::Json(serde_json::json!({
        "name": format!("projects/{}/messages/{n}", s.project_id)
    }))
    .into_response()
}

// ------------------------------------------------------------------------ Web Push

/// A browser's side of one subscription: its keys, to decrypt what arrives.
#[derive(Clone)]
pub struct Subscription {
    /// The endpoint URL.
    pub endpoint: String,
    /// `keys.p256dh`, base64url.
    pub p256dh: String,
    /// `keys.auth`, base64url.
    pub auth: String,
    secret: SecretKey,
    public: Vec<u8>,
    auth_raw: [u8; 16],
}

/// One message [`FakeWebPush`] accepted, decrypted.
#[derive(Debug, Clone)]
pub struct WebPushMessage {
    /// The subscription id (the endpoint's last path segment).
    pub subscription: String,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
    /// Every request header.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct WebPushState {
    subs: HashMap<String, Subscription>,
    /// Authorization headers verified before (a push service caches them too).
    verified: HashSet<String>,
    accepted: Vec<WebPushMessage>,
    failures: VecDeque<Failure>,
    gone: HashSet<String>,
    requests: u64,
}

/// A local Web Push service: see the module docs.
#[derive(Clone)]
pub struct FakeWebPush {
    /// `https://localhost:PORT`.
    pub url: String,
    state: Arc<Mutex<WebPushState>>,
}

/// Decrypts an RFC 8291 `aes128gcm` body with the receiver's key and auth secret.
pub fn decrypt(body: &[u8], receiver: &SecretKey, auth: &[u8]) -> Result<Vec<u8>, String> {
    let public = receiver.public_key().to_encoded_point(false);
    decrypt_with(body, receiver, public.as_bytes(), auth)
}

fn decrypt_with(
    body: &[u8],
    receiver: &SecretKey,
    receiver_public: &[u8],
    auth: &[u8],
) -> Result<Vec<u8>, String> {
    if body.len() < 21 {
        return Err("short header".into());
    }
    let salt = &body[..16];
    let idlen = body[20] as usize;
    let keyid = body.get(21..21 + idlen).ok_or("short key id")?;
    let sealed = &body[21 + idlen..];
    let sender = PublicKey::from_sec1_bytes(keyid).map_err(|_| "key id is not a P-256 point")?;
    let shared = diffie_hellman(receiver.to_nonzero_scalar(), sender.as_affine());
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(receiver_public);
    info.extend_from_slice(keyid);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes().as_slice())
        .expand(&info, &mut ikm)
        .map_err(|e| e.to_string())?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|e| e.to_string())?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|e| e.to_string())?;
    let mut plain = Aes128Gcm::new_from_slice(&cek)
        .map_err(|e| e.to_string())?
        .decrypt(Nonce::from_slice(&nonce), sealed)
        .map_err(|_| "authentication tag mismatch".to_string())?;
    while plain.last() == Some(&0) {
        plain.pop();
    }
    if plain.pop() != Some(2) {
        return Err("missing last-record delimiter".into());
    }
    Ok(plain)
}

impl FakeWebPush {
    /// Starts one on a free port.
    pub async fn start(pki: &TestPki) -> Self {
        let (listener, url) = bind().await;
        let fake = FakeWebPush {
            url,
            state: Arc::default(),
        };
        let router = Router::new()
            .route("/push/{id}", post(webpush_handler))
            .with_state(fake.clone());
        serve_tls(pki, listener, router);
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WebPushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new browser subscription on this service.
    pub fn subscribe(&self) -> Subscription {
        let secret = SecretKey::random(&mut OsRng);
        let mut auth_raw = [0u8; 16];
        OsRng.fill_bytes(&mut auth_raw);
        let mut id = [0u8; 12];
        OsRng.fill_bytes(&mut id);
        let id = URL_SAFE_NO_PAD.encode(id);
        let public = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let sub = Subscription {
            endpoint: format!("{}/push/{id}", self.url),
            p256dh: URL_SAFE_NO_PAD.encode(&public),
            auth: URL_SAFE_NO_PAD.encode(auth_raw),
            secret,
            public,
            auth_raw,
        };
        self.lock().subs.insert(id, sub.clone());
        sub
    }

    /// What it accepted, in order.
    pub fn accepted(&self) -> Vec<WebPushMessage> {
        self.lock().accepted.clone()
    }

    /// Every request it got.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// From now on the subscription answers 410 Gone.
    pub fn unsubscribe(&self, endpoint: &str) {
        if let Some(id) = endpoint.rsplit('/').next() {
            self.lock().gone.insert(id.to_string());
        }
    }

    /// The next request gets `f`.
    pub fn fail_next(&self, f: Failure) {
        self.lock().failures.push_back(f);
    }
}

fn vapid_ok(auth: &str, origin: &str) -> Result<(), String> {
    let rest = auth.strip_prefix("vapid ").ok_or("not a vapid scheme")?;
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("k", v)) => k = Some(v.to_string()),
            _ => {}
        }
    }
    let (t, k) = (t.ok_or("no t=")?, k.ok_or("no k=")?);
    let point = URL_SAFE_NO_PAD
        .decode(&k)
        .map_err(|_| "k is not base64url")?;
    if point.len() != 65 || point[0] != 4 {
        return Err("k is not an uncompressed P-256 point".into());
    }
    let key = DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
    .map_err(|e| e.to_string())?;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[origin]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&t, &key, &v)
        .map_err(|e| format!("VAPID JWT refused: {e}"))?
        .claims;
    let exp = claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0);
    if exp > now() + 24 * 3600 {
        return Err("exp more than 24 h ahead".into());
    }
    let sub = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("");
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err("sub is neither mailto: nor https:".into());
    }
    Ok(())
}

async fn webpush_handler(
    State(s): State<FakeWebPush>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = s.url.clone();
    let sub = {
        let mut st = s.lock();
        st.requests += 1;
        if let Some(f) = st.failures.pop_front() {
            return f.response();
        }
        if st.gone.contains(&id) {
            return (
                StatusCode::GONE,
                "push subscription has unsubscribed or expired",
            )
                .into_response();
        }
        match st.subs.get(&id) {
            Some(sub) => sub.clone(),
            None => return (StatusCode::NOT_FOUND, "no such subscription").into_response(),
        }
    };
    let auth = header(&headers, "authorization").unwrap_or_default();
    if !s.lock().verified.contains(&auth) {
        if let Err(e) = vapid_ok(&auth, &origin) {
            return (StatusCode::UNAUTHORIZED, e).into_response();
        }
        s.lock().verified.insert(auth);
    }
    if header(&headers, "content-encoding").as_deref() != Some("aes128gcm") {
        return (
            StatusCode::BAD_REQUEST,
            "content-encoding must be aes128gcm",
        )
            .into_response();
    }
    if header(&headers, "ttl")
        .and_then(|t| t.parse::<u64>().ok())
        .is_none()
    {
        return (StatusCode::BAD_REQUEST, "TTL header missing").into_response();
    }
    if body.len() > 4096 {
        return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
    }
    let plaintext = match decrypt_with(&body, &sub.secret, &sub.public, &sub.auth_raw) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("cannot decrypt: {e}")).into_response(),
    };
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    s.lock().accepted.push(WebPushMessage {
        subscription: id,
        plaintext,
        headers,
    });
    StatusCode::CREATED.into_response()
}
