//! Authentication of `/ws` requests: the [`Authenticator`] trait and the built-in ones.
//!
//! An authenticator sees the request's [`Parts`] (method, URI, headers, extensions)
//! before the upgrade and returns the user id, or an [`AuthError`]; a refusal is answered
//! with `401` (`503` for [`AuthError::Unavailable`]) and no WebSocket is opened.
//!
//! - [`DevAuth`]: the token is the user id. Loopback peers only unless built with
//!   `allow_remote` (the `--insecure-dev-auth` flag).
//! - [`JwtAuth`]: JWTs on `jsonwebtoken`: HS256 (a secret), RS256, ES256 and EdDSA (a
//!   PEM public key, or a JWKS file or URL refreshed and cached, keys picked by `kid`);
//!   `sub` is the user id, `exp` is required, `aud` and `iss` are checked when
//!   configured.
//! - Your own: implement [`Authenticator`] (for example a session cookie looked up in
//!   your database) and give it to
//!   [`ServerBuilder::authenticator`](crate::ServerBuilder::authenticator).
//!
//! The token of the built-ins comes from [`bearer_token`]: `Authorization: Bearer`,
//! else the `token` query parameter (browsers cannot set headers on a WebSocket).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::request::Parts;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use messenger_core::UserId;

use crate::config::{AuthConfig, JwtConfig};

/// Why a request was refused. Answered with HTTP 401 (503 for
/// [`Unavailable`](AuthError::Unavailable)); the reason is logged and counted in
/// `messenger_auth_refusals_total{reason}`, never sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in the request.
    #[error("missing token")]
    MissingToken,
    /// Not a well-formed JWT (three base64url parts of JSON).
    #[error("malformed token")]
    Malformed,
    /// The token's `alg` is not the one of the verifying key (or not supported).
    #[error("algorithm not accepted")]
    Algorithm,
    /// No configured key matches the token's `kid`.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// A required claim (`exp`, `sub`) is absent or of the wrong type.
    #[error("missing or invalid claim {0}")]
    MissingClaim(&'static str),
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` does not name an accepted audience.
    #[error("wrong audience")]
    Audience,
    /// `iss` is not an accepted issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `sub` (or the dev token) is not a valid user id.
    #[error("invalid user id")]
    BadUser,
    /// Dev auth from a peer that is not on loopback (or whose address is unknown).
    #[error("dev auth accepts loopback peers only")]
    NotLoopback,
    /// A custom authenticator's refusal.
    #[error("refused: {0}")]
    Refused(String),
    /// The authenticator cannot decide now (its key set cannot be loaded): HTTP 503.
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status the server answers with: 401, or 503 for `Unavailable`.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// Every [`reason`](Self::reason) label.
    pub const REASONS: &'static [&'static str] = &[
        "missing_token",
        "malformed",
        "algorithm",
        "unknown_key",
        "signature",
        "missing_claim",
        "expired",
        "not_yet_valid",
        "audience",
        "issuer",
        "bad_user",
        "not_loopback",
        "refused",
        "unavailable",
    ];

    /// A short stable label for metrics (`missing_token`, `expired`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed => "malformed",
            AuthError::Algorithm => "algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Signature => "signature",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Audience => "audience",
            AuthError::Issuer => "issuer",
            AuthError::BadUser => "bad_user",
            AuthError::NotLoopback => "not_loopback",
            AuthError::Refused(_) => "refused",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

/// Decides who a `/ws` request is, before the upgrade.
///
/// Called once per upgrade request with the request's parts; must not block (do I/O
/// asynchronously). The request's extensions hold the peer address as
/// [`PeerAddr`] when the server was started with [`Server::serve`](crate::Server), and
/// as `axum::extract::ConnectInfo<SocketAddr>` when the embedder serves with
/// `into_make_service_with_connect_info`.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The user the request stands for, or why not.
    async fn authenticate(&self, request: &Parts) -> Result<UserId, AuthError>;
}

#[async_trait]
impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    async fn authenticate(&self, request: &Parts) -> Result<UserId, AuthError> {
        (**self).authenticate(request).await
    }
}

/// The peer address of a connection, put in each request's extensions by
/// [`Server::serve`](crate::Server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The peer address from [`PeerAddr`] or axum's `ConnectInfo<SocketAddr>`.
pub fn peer_addr(request: &Parts) -> Option<SocketAddr> {
    if let Some(p) = request.extensions.get::<PeerAddr>() {
        return Some(p.0);
    }
    #[cfg(feature = "axum")]
    if let Some(c) = request
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(c.0);
    }
    None
}

/// The bearer token: `Authorization: Bearer TOKEN`, else the `token` query parameter
/// (percent-decoded).
pub fn bearer_token(request: &Parts) -> Option<Cow<'_, str>> {
    if let Some(v) = request.headers.get(http::header::AUTHORIZATION) {
        if let Ok(v) = v.to_str() {
            let v = v.trim();
            if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
                return Some(Cow::Borrowed(v[7..].trim()));
            }
        }
    }
    let q = request.uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Development auth: the token is the user id.
///
/// Refuses peers that are not on loopback (or whose address is unknown) unless
/// `allow_remote` is set; [`Server::serve`](crate::Server) also refuses to listen on a
/// non-loopback address with it.
#[derive(Debug, Clone, Default)]
pub struct DevAuth {
    allow_remote: bool,
}

impl DevAuth {
    /// Loopback peers only.
    pub fn new() -> Self {
        DevAuth::default()
    }

    /// Any peer (the `--insecure-dev-auth` flag). Never in production.
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }
}

#[async_trait]
impl Authenticator for DevAuth {
    async fn authenticate(&self, request: &Parts) -> Result<UserId, AuthError> {
        if !self.allow_remote && !peer_addr(request).is_some_and(|a| a.ip().is_loopback()) {
            return Err(AuthError::NotLoopback);
        }
        let token = bearer_token(request).ok_or(AuthError::MissingToken)?;
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        UserId::new(token.as_ref()).map_err(|_| AuthError::BadUser)
    }
}

/// Why a [`JwtAuth`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSetupError {
    /// No key source, or more than one.
    #[error("auth.jwt needs exactly one key source")]
    KeySource,
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key or key set is not usable.
    #[error("{0}")]
    BadKey(String),
    /// A JWKS URL without the `jwks-url` feature.
    #[error("auth.jwt.jwks_url needs messenger-server's `jwks-url` feature")]
    NoHttpClient,
}

/// One verifying key and the algorithms it may verify.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    algs: &'static [Algorithm],
}

/// Keys by `kid` (`None`: a key without one).
#[derive(Clone, Default)]
struct KeySet {
    by_kid: HashMap<String, Key>,
    unnamed: Vec<Key>,
}

impl KeySet {
    fn single(key: Key) -> Self {
        KeySet {
            by_kid: HashMap::new(),
            unnamed: vec![key],
        }
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    /// The key for a token with `kid` and `alg`: by kid when the token names one;
    /// otherwise the only key that accepts `alg`.
    fn pick(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.by_kid.get(kid).or_else(|| {
                // A single key without a kid of its own verifies any kid.
                (self.by_kid.is_empty() && self.unnamed.len() == 1).then(|| &self.unnamed[0])
            }),
            None => {
                let mut fits = self
                    .by_kid
                    .values()
                    .chain(self.unnamed.iter())
                    .filter(|k| k.algs.contains(&alg));
                match (fits.next(), fits.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }
}

const HS: &[Algorithm] = &[Algorithm::HS256];
const RS: &[Algorithm] = &[Algorithm::RS256];
const ES: &[Algorithm] = &[Algorithm::ES256];
const ES384: &[Algorithm] = &[Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

fn pem_key(pem: &[u8]) -> Result<Key, JwtSetupError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key { key, algs: RS });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Key { key, algs: ES });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(Key { key, algs: ED });
    }
    Err(JwtSetupError::BadKey(
        "auth.jwt.public_key_file: not a PEM RSA, EC P-256 or Ed25519 public key".into(),
    ))
}

fn jwk_key(jwk: &Jwk) -> Result<Key, String> {
    let algs = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (_, Some(KeyAlgorithm::RS256)) | (AlgorithmParameters::RSA(_), None) => RS,
        (_, Some(KeyAlgorithm::ES256)) => ES,
        (_, Some(KeyAlgorithm::ES384)) => ES384,
        (_, Some(KeyAlgorithm::EdDSA)) | (AlgorithmParameters::OctetKeyPair(_), None) => ED,
        (AlgorithmParameters::EllipticCurve(p), None) => match p.curve {
            EllipticCurve::P256 => ES,
            EllipticCurve::P384 => ES384,
            _ => return Err("unsupported EC curve".into()),
        },
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err("symmetric (oct) keys are not accepted from a JWKS".into())
        }
        (_, Some(a)) => return Err(format!("unsupported alg {a:?}")),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Key { key, algs })
}

/// Parses a JWKS document; keys that cannot be used are skipped with a warning.
fn parse_jwks(text: &[u8], origin: &str) -> Result<KeySet, JwtSetupError> {
    let set: JwkSet = serde_json::from_slice(text)
        .map_err(|e| JwtSetupError::BadKey(format!("{origin}: not a JWKS document: {e}")))?;
    let mut out = KeySet::default();
    for jwk in &set.keys {
        match jwk_key(jwk) {
            Ok(k) => match &jwk.common.key_id {
                Some(kid) => {
                    out.by_kid.insert(kid.clone(), k);
                }
                None => out.unnamed.push(k),
            },
            Err(e) => {
                tracing::warn!(%origin, kid = ?jwk.common.key_id, error = %e, "JWKS key skipped")
            }
        }
    }
    if out.len() == 0 {
        return Err(JwtSetupError::BadKey(format!(
            "{origin}: no usable key (RSA, EC P-256 or Ed25519)"
        )));
    }
    Ok(out)
}

#[derive(Clone)]
enum JwksSource {
    File(PathBuf),
    #[cfg(feature = "jwks-url")]
    Url(String, reqwest::Client),
}

impl JwksSource {
    fn origin(&self) -> String {
        match self {
            JwksSource::File(p) => p.display().to_string(),
            #[cfg(feature = "jwks-url")]
            JwksSource::Url(u, _) => u.clone(),
        }
    }

    async fn load(&self) -> Result<KeySet, JwtSetupError> {
        match self {
            JwksSource::File(p) => {
                let text = tokio::fs::read(p)
                    .await
                    .map_err(|source| JwtSetupError::Read {
                        path: p.clone(),
                        source,
                    })?;
                parse_jwks(&text, &self.origin())
            }
            #[cfg(feature = "jwks-url")]
            JwksSource::Url(u, client) => {
                let resp = client
                    .get(u)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| JwtSetupError::BadKey(format!("fetching {u}: {e}")))?;
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| JwtSetupError::BadKey(format!("reading {u}: {e}")))?;
                parse_jwks(&body, u)
            }
        }
    }
}

/// A JWKS kept fresh: reloaded when older than the refresh interval, and at once
/// (at most every [`FORCED_REFRESH_MIN`]) when a token names an unknown `kid`.
struct Jwks {
    source: JwksSource,
    refresh: Duration,
    state: RwLock<(Arc<KeySet>, Instant)>,
    reloading: tokio::sync::Mutex<Instant>,
}

/// Shortest time between two reloads forced by unknown `kid`s.
pub const FORCED_REFRESH_MIN: Duration = Duration::from_secs(10);

impl Jwks {
    fn current(&self) -> (Arc<KeySet>, Instant) {
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        (g.0.clone(), g.1)
    }

    /// Reloads unless another task is doing it (then the current set is used).
    async fn reload(&self, forced: bool) -> Arc<KeySet> {
        let Ok(mut last_forced) = self.reloading.try_lock() else {
            return self.current().0;
        };
        if forced && last_forced.elapsed() < FORCED_REFRESH_MIN {
            return self.current().0;
        }
        if forced {
            *last_forced = Instant::now();
        }
        match self.source.load().await {
            Ok(set) => {
                let set = Arc::new(set);
                *self.state.write().unwrap_or_else(|p| p.into_inner()) =
                    (set.clone(), Instant::now());
                tracing::debug!(origin = %self.source.origin(), keys = set.len(), "JWKS reloaded");
                set
            }
            Err(e) => {
                tracing::warn!(origin = %self.source.origin(), error = %e,
                    "JWKS reload failed; keeping the keys loaded before");
                let mut g = self.state.write().unwrap_or_else(|p| p.into_inner());
                // Try again after another interval, not on every request.
                g.1 = Instant::now();
                g.0.clone()
            }
        }
    }
}

enum Keys {
    Static(KeySet),
    Jwks(Jwks),
}

/// JWT verification on `jsonwebtoken` (see the [module docs](self)).
pub struct JwtAuth {
    keys: Keys,
    audience: Vec<String>,
    issuer: Vec<String>,
    leeway: Duration,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    /// HS256 with `secret`, default leeway, no `aud`/`iss` checks.
    pub fn hs256(secret: &[u8]) -> Self {
        JwtAuth {
            keys: Keys::Static(KeySet::single(Key {
                key: DecodingKey::from_secret(secret),
                algs: HS,
            })),
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::from_secs(30),
        }
    }

    /// Builds the verifier `config` describes, reading key files and loading a JWKS
    /// once (a JWKS that cannot be loaded at start is an error).
    pub async fn from_config(config: &JwtConfig) -> Result<Self, JwtSetupError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| JwtSetupError::Read {
                path: p.clone(),
                source,
            })
        };
        let keys = if let Some(s) = config.secret.as_deref().filter(|s| !s.is_empty()) {
            Keys::Static(KeySet::single(Key {
                key: DecodingKey::from_secret(s.as_bytes()),
                algs: HS,
            }))
        } else if let Some(p) = &config.secret_file {
            let mut s = read(p)?;
            while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                s.pop();
            }
            if s.is_empty() {
                return Err(JwtSetupError::BadKey(format!(
                    "{}: the JWT secret is empty",
                    p.display()
                )));
            }
            Keys::Static(KeySet::single(Key {
                key: DecodingKey::from_secret(&s),
                algs: HS,
            }))
        } else if let Some(p) = &config.public_key_file {
            Keys::Static(KeySet::single(pem_key(&read(p)?)?))
        } else {
            let source = if let Some(p) = &config.jwks_file {
                JwksSource::File(p.clone())
            } else if let Some(u) = &config.jwks_url {
                #[cfg(feature = "jwks-url")]
                {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .map_err(|e| JwtSetupError::BadKey(format!("HTTP client: {e}")))?;
                    JwksSource::Url(u.clone(), client)
                }
                #[cfg(not(feature = "jwks-url"))]
                {
                    let _ = u;
                    return Err(JwtSetupError::NoHttpClient);
                }
            } else {
                return Err(JwtSetupError::KeySource);
            };
            let set = source.load().await?;
            Keys::Jwks(Jwks {
                source,
                refresh: config.jwks_refresh.max(Duration::from_secs(1)),
                state: RwLock::new((Arc::new(set), Instant::now())),
                reloading: tokio::sync::Mutex::new(
                    Instant::now()
                        .checked_sub(FORCED_REFRESH_MIN)
                        .unwrap_or_else(Instant::now),
                ),
            })
        };
        Ok(JwtAuth {
            keys,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway: config.leeway,
        })
    }

    /// Accept only tokens whose `aud` names one of these.
    pub fn with_audience(mut self, aud: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.audience = aud.into_iter().map(Into::into).collect();
        self
    }

    /// Accept only tokens whose `iss` is one of these.
    pub fn with_issuer(mut self, iss: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.issuer = iss.into_iter().map(Into::into).collect();
        self
    }

    /// Clock leeway on `exp` and `nbf`.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Verifies `token` and returns its `sub`.
    pub async fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let kid = header.kid.as_deref();
        let keys = match &self.keys {
            Keys::Static(set) => Cow::Borrowed(set),
            Keys::Jwks(j) => {
                let (mut set, at) = j.current();
                if at.elapsed() >= j.refresh {
                    set = j.reload(false).await;
                }
                if set.pick(kid, header.alg).is_none() && kid.is_some() {
                    set = j.reload(true).await;
                }
                Cow::Owned((*set).clone())
            }
        };
        let key = keys
            .pick(kid, header.alg)
            .ok_or(if kid.is_some() || keys.len() > 1 {
                AuthError::UnknownKey
            } else {
                AuthError::Algorithm
            })?;
        if !key.algs.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = key.algs.to_vec();
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        if !self.issuer.is_empty() {
            v.set_issuer(&self.issuer);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(map_jwt_error)?;
        UserId::new(data.claims.sub).map_err(|_| AuthError::BadUser)
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => AuthError::Signature,
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAudience => AuthError::Audience,
        K::InvalidIssuer => AuthError::Issuer,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => AuthError::Algorithm,
        K::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingClaim("exp"),
        K::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
        K::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
        K::MissingRequiredClaim(_) | K::InvalidSubject => AuthError::MissingClaim("sub"),
        // `exp` of the wrong type or `sub` not a string fail claim decoding.
        K::Json(err) => {
            let m = err.to_string();
            if m.contains("exp") {
                AuthError::MissingClaim("exp")
            } else if m.contains("sub") || m.contains("invalid type") {
                AuthError::MissingClaim("sub")
            } else {
                AuthError::Malformed
            }
        }
        _ => AuthError::Malformed,
    }
}

#[async_trait]
impl Authenticator for JwtAuth {
    async fn authenticate(&self, request: &Parts) -> Result<UserId, AuthError> {
        let token = bearer_token(request).ok_or(AuthError::MissingToken)?;
        self.verify(&token).await
    }
}

/// The built-in authenticator `config` describes: [`JwtAuth`] when it has a JWT key
/// source, else [`DevAuth`].
pub async fn from_config(config: &AuthConfig) -> Result<Arc<dyn Authenticator>, JwtSetupError> {
    match &config.jwt {
        Some(j) if j.has_key_source() => Ok(Arc::new(JwtAuth::from_config(j).await?)),
        _ => Ok(Arc::new(
            DevAuth::new().allow_remote(config.insecure_dev_auth),
        )),
    }
}

/// Signs `claims` (a JSON object) as an HS256 JWT: for tests, tools and examples that
/// need tokens for a server running with a secret.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = jsonwebtoken::Header::new(Algorithm::HS256);
    // HS256 signing with any key length and a JSON value cannot fail.
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts(uri: &str, auth: Option<&str>, peer: Option<&str>) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let (mut p, ()) = b.body(()).expect("request").into_parts();
        if let Some(peer) = peer {
            p.extensions.insert(PeerAddr(peer.parse().expect("addr")));
        }
        p
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[test]
    fn token_from_header_or_query() {
        let p = parts("/ws?x=1&token=al%69ce", None, None);
        assert_eq!(bearer_token(&p).as_deref(), Some("alice"));
        let p = parts("/ws?token=q", Some("Bearer  hdr "), None);
        assert_eq!(bearer_token(&p).as_deref(), Some("hdr"));
        let p = parts("/ws", Some("Basic x"), None);
        assert_eq!(bearer_token(&p), None);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[tokio::test]
    async fn dev_auth_refusals() {
        let a = DevAuth::new();
        let ok = parts("/ws?token=bob", None, Some("127.0.0.1:5"));
        assert_eq!(a.authenticate(&ok).await.expect("ok").as_str(), "bob");
        let remote = parts("/ws?token=bob", None, Some("10.0.0.1:5"));
        assert_eq!(a.authenticate(&remote).await, Err(AuthError::NotLoopback));
        let unknown = parts("/ws?token=bob", None, None);
        assert_eq!(a.authenticate(&unknown).await, Err(AuthError::NotLoopback));
        assert!(DevAuth::new()
            .allow_remote(true)
            .authenticate(&remote)
            .await
            .is_ok());
        let none = parts("/ws", None, Some("127.0.0.1:5"));
        assert_eq!(a.authenticate(&none).await, Err(AuthError::MissingToken));
        let empty = parts("/ws?token=", None, Some("127.0.0.1:5"));
        assert_eq!(a.authenticate(&empty).await, Err(AuthError::MissingToken));
        let bad = parts("/ws?token=no%20spaces", None, Some("127.0.0.1:5"));
        assert_eq!(a.authenticate(&bad).await, Err(AuthError::BadUser));
    }

    #[tokio::test]
    async fn hs256_refusals() {
        let a = JwtAuth::hs256(b"k");
        let exp = now() + 60;
        let good = sign_hs256(b"k", &json!({"sub":"alice","exp":exp}));
        assert_eq!(a.verify(&good).await.expect("ok").as_str(), "alice");
        let cases = [
            (
                sign_hs256(b"other", &json!({"sub":"alice","exp":exp})),
                AuthError::Signature,
            ),
            (
                sign_hs256(b"k", &json!({"sub":"alice"})),
                AuthError::MissingClaim("exp"),
            ),
            (
                sign_hs256(b"k", &json!({"sub":"alice","exp":"soon"})),
                AuthError::MissingClaim("exp"),
            ),
            (
                sign_hs256(b"k", &json!({"exp":exp})),
                AuthError::MissingClaim("sub"),
            ),
            (
                sign_hs256(b"k", &json!({"sub":"alice","exp":now() - 120})),
                AuthError::Expired,
            ),
            (
                sign_hs256(b"k", &json!({"sub":"alice","exp":exp,"nbf":now() + 120})),
                AuthError::NotYetValid,
            ),
            (
                sign_hs256(b"k", &json!({"sub":"bad id","exp":exp})),
                AuthError::BadUser,
            ),
            ("a.b".to_string(), AuthError::Malformed),
            ("a.b.c.d".to_string(), AuthError::Malformed),
        ];
        for (token, want) in cases {
            assert_eq!(a.verify(&token).await, Err(want.clone()), "{want:?}");
        }
        // Within the leeway.
        let t = sign_hs256(b"k", &json!({"sub":"alice","exp":now() - 10}));
        assert!(a.verify(&t).await.is_ok());
        // alg none is refused even with a valid-looking body.
        // {"alg":"none"} . {"sub":"alice","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(
            a.verify(none).await,
            Err(AuthError::Malformed | AuthError::Algorithm)
        ));
        // HS384 with the right secret: wrong algorithm for this key.
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS384),
            &json!({"sub":"alice","exp":exp}),
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .expect("sign");
        assert_eq!(a.verify(&t).await, Err(AuthError::Algorithm));
    }

    #[tokio::test]
    async fn audience_and_issuer() {
        let a = JwtAuth::hs256(b"k")
            .with_audience(["chat"])
            .with_issuer(["https://idp"]);
        let exp = now() + 60;
        let ok = sign_hs256(
            b"k",
            &json!({"sub":"a","exp":exp,"aud":"chat","iss":"https://idp"}),
        );
        assert!(a.verify(&ok).await.is_ok());
        let aud = sign_hs256(
            b"k",
            &json!({"sub":"a","exp":exp,"aud":"other","iss":"https://idp"}),
        );
        assert_eq!(a.verify(&aud).await, Err(AuthError::Audience));
        let no_aud = sign_hs256(b"k", &json!({"sub":"a","exp":exp,"iss":"https://idp"}));
        assert_eq!(a.verify(&no_aud).await, Err(AuthError::Audience));
        let no_iss = sign_hs256(b"k", &json!({"sub":"a","exp":exp,"aud":"chat"}));
        assert_eq!(a.verify(&no_iss).await, Err(AuthError::Issuer));
        let iss = sign_hs256(
            b"k",
            &json!({"sub":"a","exp":exp,"aud":"chat","iss":"https://evil"}),
        );
        assert_eq!(a.verify(&iss).await, Err(AuthError::Issuer));
    }
}
