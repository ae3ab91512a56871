//! Web Push for browsers: RFC 8030 delivery, VAPID (RFC 8292) identification and
//! RFC 8291 (`aes128gcm`, RFC 8188) payload encryption.
//!
//! - `POST {subscription endpoint}` with `Content-Encoding: aes128gcm`, `TTL`,
//!   `Urgency: high`, `Topic` (per thread: a newer notification replaces an undelivered
//!   older one) and `Authorization: vapid t=JWT, k=PUBLIC_KEY`. The JWT (ES256 with the
//!   VAPID key: `aud` = the endpoint's origin, `exp` = 12 h, `sub` = the contact) is
//!   cached per origin for an hour.
//! - The body is one RFC 8188 record encrypted for the subscription's `p256dh` key
//!   and `auth` secret with a fresh ephemeral key and salt per message; its plaintext
//!   is the JSON `{"title", "body"?, "data": {...}}` the service worker shows.
//! - Answers: 2xx delivered; 404 / 410 remove the subscription; 401 / 403 are refused
//!   VAPID credentials; 429 / 5xx retry (honouring `Retry-After`); 413 and other 4xx
//!   reject the notification.
//!
//! Hand-written on RustCrypto primitives (`p256` ECDH, `hkdf`, `aes-gcm`): the
//! `web-push` and `ece` crates encrypt through OpenSSL, which this workspace keeps out
//! of its servers (rustls/ring and RustCrypto only).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::ecdh::diffie_hellman;
use p256::elliptic_curve::rand_core::{OsRng, RngCore};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use p256::{PublicKey, SecretKey};
use sha2::{Digest, Sha256};

use crate::common::{self, ConfigError, CredentialGuard};
use crate::content::Privacy;
use crate::directory::keys;
use crate::provider::{Notification, Outcome, Platform, PushProvider, PushTarget};

/// Record size announced in the header (one record holds the whole payload).
const RECORD_SIZE: u32 = 4096;
/// Largest plaintext that fits one record (record size - delimiter - tag).
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - 1 - 16;

/// The application server's VAPID key pair.
#[derive(Clone)]
pub struct VapidKey {
    secret: SecretKey,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.public_key_base64url())
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    /// Reads a P-256 private key: PKCS#8 PEM, SEC1 PEM (`EC PRIVATE KEY`), or the
    /// 32 raw bytes in base64url (what `web-push generate-vapid-keys` prints).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let t = text.trim();
        let secret = if t.starts_with("-----BEGIN PRIVATE KEY") {
            SecretKey::from_pkcs8_pem(t).map_err(|e| e.to_string())
        } else if t.starts_with("-----BEGIN EC PRIVATE KEY") {
            SecretKey::from_sec1_pem(t).map_err(|e| e.to_string())
        } else {
            URL_SAFE_NO_PAD
                .decode(t.trim_end_matches('='))
                .map_err(|e| e.to_string())
                .and_then(|b| SecretKey::from_slice(&b).map_err(|e| e.to_string()))
        }
        .map_err(|e| {
            ConfigError::Credentials(format!(
                "the VAPID private key is neither a P-256 PEM nor 32 base64url bytes: {e}"
            ))
        })?;
        Ok(VapidKey { secret })
    }

    /// A fresh key pair (for `messenger-push`'s tools and tests).
    pub fn generate() -> Self {
        VapidKey {
            secret: SecretKey::random(&mut OsRng),
        }
    }

    /// The public key as browsers take it (`applicationServerKey`): the uncompressed
    /// point, base64url.
    pub fn public_key_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    /// The private key, 32 bytes base64url.
    pub fn private_key_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.to_bytes())
    }

    fn encoding_key(&self) -> Result<EncodingKey, ConfigError> {
        let der = self
            .secret
            .to_pkcs8_der()
            .map_err(|e| ConfigError::Credentials(format!("VAPID key encoding: {e}")))?;
        Ok(EncodingKey::from_ec_der(der.as_bytes()))
    }
}

/// Encrypts `plaintext` for a subscription (RFC 8291, one `aes128gcm` record):
/// `salt(16) | rs(4) | idlen(1)=65 | ephemeral public key(65) | ciphertext+tag`.
pub fn encrypt(p256dh: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    // A fresh key per message, used for this one agreement only.
    let eph = SecretKey::random(&mut OsRng);
    encrypt_with(p256dh, auth, plaintext, &eph, salt)
}

fn encrypt_with(
    p256dh: &[u8],
    auth: &[u8],
    plaintext: &[u8],
    eph: &SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, String> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(format!(
            "payload of {} bytes is over the {MAX_PLAINTEXT}-byte record",
            plaintext.len()
        ));
    }
    let ua_public = PublicKey::from_sec1_bytes(p256dh)
        .map_err(|_| "p256dh is not a P-256 point".to_string())?;
    let ua_bytes = ua_public.to_encoded_point(false);
    let as_public = eph.public_key().to_encoded_point(false);
    let shared = diffie_hellman(eph.to_nonzero_scalar(), ua_public.as_affine());
    // RFC 8291 3.3/3.4: IKM from the ECDH secret and the auth secret, keyed on both
    // public keys; then RFC 8188's content encryption key and nonce from IKM and salt.
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_bytes.as_bytes());
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes().as_slice())
        .expand(&key_info, &mut ikm)
        .map_err(|e| e.to_string())?;
    let prk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|e| e.to_string())?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|e| e.to_string())?;
    let mut padded = Vec::with_capacity(plaintext.len() + 1);
    padded.extend_from_slice(plaintext);
    padded.push(0x02); // the last (and only) record's delimiter, no padding
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|e| e.to_string())?;
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), padded.as_slice())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    out.push(65);
    out.extend_from_slice(as_public.as_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// How to sign Web Push requests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WebPushConfig {
    /// The VAPID key pair (its public key is the `applicationServerKey` the browsers
    /// subscribed with).
    pub vapid: VapidKey,
    /// The contact in every VAPID JWT (`mailto:ops@example.com` or an https URL).
    pub subject: String,
    /// `TTL`: how long the push service keeps a message for an offline browser
    /// (default 1 day).
    pub ttl: Duration,
    /// Extra CA certificates (PEM) to trust, for a private or test push service.
    pub ca_pem: Option<Vec<u8>>,
    /// Per-request timeout (default 10 s).
    pub timeout: Duration,
    /// What the notification shows.
    pub privacy: Privacy,
    /// While credentials are refused, one probe request this often (default 60 s).
    pub credential_probe: Duration,
}

impl WebPushConfig {
    /// A configuration with the defaults above.
    pub fn new(vapid: VapidKey, subject: impl Into<String>) -> Self {
        WebPushConfig {
            vapid,
            subject: subject.into(),
            ttl: Duration::from_secs(24 * 3600),
            ca_pem: None,
            timeout: Duration::from_secs(10),
            privacy: Privacy::Full,
            credential_probe: Duration::from_secs(60),
        }
    }
}

/// The Web Push provider. Cheap to share (`Arc`).
pub struct WebPushProvider {
    config: WebPushConfig,
    key: EncodingKey,
    public: String,
    http: reqwest::Client,
    jwts: Mutex<HashMap<String, (String, Instant)>>,
    guard: CredentialGuard,
}

impl std::fmt::Debug for WebPushProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushProvider")
            .field("vapid_public_key", &self.public)
            .field("subject", &self.config.subject)
            .finish_non_exhaustive()
    }
}

const JWT_LIFETIME: Duration = Duration::from_secs(12 * 3600);
const JWT_REUSE: Duration = Duration::from_secs(3600);

fn origin(endpoint: &str) -> Option<String> {
    let u = reqwest::Url::parse(endpoint).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

impl WebPushProvider {
    /// A provider; fails when the CA is bad.
    pub fn new(config: WebPushConfig) -> Result<Self, ConfigError> {
        let key = config.vapid.encoding_key()?;
        let public = config.vapid.public_key_base64url();
        let http = common::http_client(config.ca_pem.as_deref(), config.timeout)?;
        let guard = CredentialGuard::new(Platform::WebPush, config.credential_probe);
        Ok(WebPushProvider {
            config,
            key,
            public,
            http,
            jwts: Mutex::new(HashMap::new()),
            guard,
        })
    }

    fn vapid_jwt(&self, aud: &str) -> Result<String, String> {
        let mut m = self.jwts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((jwt, at)) = m.get(aud) {
            if at.elapsed() < JWT_REUSE {
                return Ok(jwt.clone());
            }
        }
        let exp = common::unix_now() + JWT_LIFETIME.as_secs();
        let claims = serde_json::json!({ "aud": aud, "exp": exp, "sub": self.config.subject });
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .map_err(|e| format!("signing the VAPID JWT failed: {e}"))?;
        if m.len() > 1024 {
            m.clear();
        }
        m.insert(aud.to_string(), (jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    fn plaintext(&self, n: &Notification, t: &PushTarget) -> Vec<u8> {
        let r = self
            .config
            .privacy
            .render(n, t.keys.get(keys::LOCALE).map(String::as_str));
        let mut v = serde_json::json!({ "title": r.title, "data": r.data });
        if let (Some(b), Some(o)) = (r.body, v.as_object_mut()) {
            o.insert("body".into(), b.into());
        }
        v.to_string().into_bytes()
    }

    async fn send_one(&self, n: &Notification, t: &PushTarget) -> Outcome {
        if let Some(o) = self.guard.blocked() {
            return o;
        }
        let decode = |k: &str| {
            t.keys
                .get(k)
                .and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok())
        };
        let (Some(p256dh), Some(auth)) = (decode(keys::P256DH), decode(keys::AUTH)) else {
            return Outcome::Rejected("the subscription has no usable p256dh/auth keys".into());
        };
        let Some(aud) = origin(&t.address) else {
            return Outcome::Rejected(format!("not a URL: {}", t.address));
        };
        let body = match encrypt(&p256dh, &auth, &self.plaintext(n, t)) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Rejected(format!("cannot encrypt for this subscription: {e}"))
            }
        };
        let jwt = match self.vapid_jwt(&aud) {
            Ok(j) => j,
            Err(e) => return self.guard.trip(e),
        };
        let topic = URL_SAFE_NO_PAD.encode(&Sha256::digest(n.thread_id.as_str().as_bytes())[..24]);
        let resp = self
            .http
            .post(&t.address)
            .header("authorization", format!("vapid t={jwt}, k={}", self.public))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", self.config.ttl.as_secs().to_string())
            .header("urgency", "high")
            .header("topic", topic)
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return common::network_error(Platform::WebPush, &e),
        };
        let status = resp.status().as_u16();
        let after = common::retry_after(resp.headers());
        match status {
            200..=299 => {
                self.guard.accepted();
                Outcome::Delivered
            }
            404 | 410 => Outcome::TargetGone,
            401 | 403 => {
                let text = resp.text().await.unwrap_or_default();
                self.guard.trip(format!(
                    "Web Push {status} from {aud}: {}",
                    common::cut(&text, 200)
                ))
            }
            429 | 500..=599 => Outcome::RetryAfter(after),
            _ => {
                let text = resp.text().await.unwrap_or_default();
                Outcome::Rejected(format!("Web Push {status}: {}", common::cut(&text, 200)))
            }
        }
    }
}

#[async_trait]
impl PushProvider for WebPushProvider {
    fn platform(&self) -> Platform {
        Platform::WebPush
    }

    async fn send(&self, n: &Notification, targets: &[PushTarget]) -> Vec<Outcome> {
        futures::future::join_all(targets.iter().map(|t| self.send_one(n, t))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).expect("base64url")
    }

    /// RFC 8291, Appendix A: fixed sender key and salt give exactly the RFC's body.
    #[test]
    fn reproduces_the_rfc_8291_example() {
        let eph = SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
            .expect("key");
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().expect("salt");
        let body = encrypt_with(
            &b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"),
            &b64("BTBZMqHH6r4Tts7J_aSIgg"),
            b"When I grow up, I want to be a watermelon",
            &eph,
            salt,
        )
        .expect("encrypt");
        assert_eq!(
            URL_SAFE_NO_PAD.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn vapid_keys_parse_in_every_common_form() {
        let k = VapidKey::generate();
        let raw = VapidKey::parse(&k.private_key_base64url()).expect("raw");
        assert_eq!(raw.public_key_base64url(), k.public_key_base64url());
        assert!(VapidKey::parse("not a key").is_err());
        assert_eq!(
            origin("https://push.example:8443/a/b?c").as_deref(),
            Some("https://push.example:8443")
        );
        assert!(encrypt(&[4; 65], &[0; 16], &vec![b'x'; MAX_PLAINTEXT + 1]).is_err());
    }
}
