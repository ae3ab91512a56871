//! Token verification: dev auth (the token is the user id) and JWT HS256.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use messenger_core::UserId;
use sha2::Sha256;

use crate::config::AuthMode;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused (answered with HTTP 401; the reason is only logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("missing token")]
    Missing,
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not HS256.
    #[error("unsupported alg")]
    Algorithm,
    /// The signature does not match.
    #[error("bad signature")]
    Signature,
    /// No `exp` claim, or not a number.
    #[error("missing exp")]
    MissingExp,
    /// `exp` is in the past (beyond the leeway) or `nbf` in the future.
    #[error("expired or not yet valid")]
    Expired,
    /// `sub` (or the dev token) is not a valid user id.
    #[error("invalid user id")]
    BadUser,
}

/// Verifies tokens according to an [`AuthMode`].
#[derive(Debug, Clone)]
pub struct Authenticator {
    mode: AuthMode,
}

impl Authenticator {
    /// A verifier for `mode`.
    pub fn new(mode: AuthMode) -> Self {
        Authenticator { mode }
    }

    /// The user the token stands for.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        match &self.mode {
            AuthMode::Dev => UserId::new(token).map_err(|_| AuthError::BadUser),
            AuthMode::Jwt { secret, leeway } => verify_hs256(secret, token, *leeway, now_secs()),
        }
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Verifies an HS256 JWT at time `now` (Unix seconds) and returns its `sub`.
///
/// Rejects any `alg` other than `HS256`, a bad signature (compared in constant time),
/// a missing or non-numeric `exp`, `exp` earlier than `now - leeway`, `nbf` later than
/// `now + leeway`, and a `sub` that is not a valid user id.
pub fn verify_hs256(
    secret: &[u8],
    token: &str,
    leeway: Duration,
    now: f64,
) -> Result<UserId, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: serde_json::Value = decode_json(h)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(AuthError::Algorithm);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| AuthError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| AuthError::Signature)?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| AuthError::Signature)?;
    let claims: serde_json::Value = decode_json(p)?;
    let leeway = leeway.as_secs_f64();
    let exp = claims
        .get("exp")
        .and_then(|e| e.as_f64())
        .ok_or(AuthError::MissingExp)?;
    if exp + leeway < now {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        match nbf.as_f64() {
            Some(nbf) if nbf - leeway <= now => {}
            _ => return Err(AuthError::Expired),
        }
    }
    let sub = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .ok_or(AuthError::BadUser)?;
    UserId::new(sub).map_err(|_| AuthError::BadUser)
}

fn decode_json(part: &str) -> Result<serde_json::Value, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(AuthError::Malformed)
    }
}

/// Signs `claims` (a JSON object) as an HS256 JWT. For tests, tools and examples that
/// need tokens for a server running with a secret.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    // HMAC accepts keys of any length, so this cannot fail.
    let sig = match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: f64 = 1_700_000_000.0;
    const L: Duration = Duration::from_secs(30);

    #[test]
    fn good_token() {
        let t = sign_hs256(b"k", &json!({"sub":"alice","exp":NOW as u64 + 60}));
        assert_eq!(
            verify_hs256(b"k", &t, L, NOW).expect("ok").as_str(),
            "alice"
        );
    }

    #[test]
    fn refusals() {
        let exp = NOW as u64 + 60;
        let t = sign_hs256(b"k", &json!({"sub":"alice","exp":exp}));
        assert_eq!(
            verify_hs256(b"other", &t, L, NOW),
            Err(AuthError::Signature)
        );
        let t = sign_hs256(b"k", &json!({"sub":"alice"}));
        assert_eq!(verify_hs256(b"k", &t, L, NOW), Err(AuthError::MissingExp));
        let t = sign_hs256(b"k", &json!({"sub":"alice","exp":"soon"}));
        assert_eq!(verify_hs256(b"k", &t, L, NOW), Err(AuthError::MissingExp));
        let t = sign_hs256(b"k", &json!({"sub":"alice","exp":NOW as u64 - 31}));
        assert_eq!(verify_hs256(b"k", &t, L, NOW), Err(AuthError::Expired));
        let t = sign_hs256(b"k", &json!({"sub":"alice","exp":NOW as u64 - 10}));
        assert!(verify_hs256(b"k", &t, L, NOW).is_ok(), "within leeway");
        let t = sign_hs256(b"k", &json!({"sub":"alice","exp":exp,"nbf":exp}));
        assert_eq!(verify_hs256(b"k", &t, L, NOW), Err(AuthError::Expired));
        let t = sign_hs256(b"k", &json!({"sub":"bad id","exp":exp}));
        assert_eq!(verify_hs256(b"k", &t, L, NOW), Err(AuthError::BadUser));
        assert_eq!(verify_hs256(b"k", "a.b", L, NOW), Err(AuthError::Malformed));
        assert_eq!(
            verify_hs256(b"k", "a.b.c.d", L, NOW),
            Err(AuthError::Malformed)
        );
        // alg none / other algorithms are refused even with a valid-looking body.
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let p = URL_SAFE_NO_PAD.encode(json!({"sub":"alice","exp":exp}).to_string());
        assert_eq!(
            verify_hs256(b"k", &format!("{h}.{p}."), L, NOW),
            Err(AuthError::Algorithm)
        );
    }

    #[test]
    fn dev_mode() {
        let a = Authenticator::new(AuthMode::Dev);
        assert_eq!(a.verify("bob").expect("ok").as_str(), "bob");
        assert_eq!(a.verify(""), Err(AuthError::Missing));
        assert_eq!(a.verify("no spaces"), Err(AuthError::BadUser));
    }
}
