//! Push targets (devices and browsers that get notifications) and thread mutes: the
//! model behind the protocol's `register_push_target`, `unregister_push_target`,
//! `list_push_targets`, `mute_thread` and `unmute_thread`, stored through the
//! [`PushRegistry`](crate::traits::PushRegistry) trait.
//!
//! A target belongs to one user. Its id is derived from the platform and the token (or
//! Web Push endpoint), so registering the same device again refreshes the registration
//! instead of adding a second one, and a device that signs in as another user moves to
//! that user (one user's notifications never reach a device another user holds now).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ids::{ThreadId, UserId};
use crate::time::Millis;

/// Which push service delivers to a target. Wire names: `apns`, `fcm`, `webpush`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PushPlatform {
    /// Apple Push Notification service: `token` is the device token (hex).
    #[serde(rename = "apns")]
    Apns,
    /// Firebase Cloud Messaging: `token` is the registration token.
    #[serde(rename = "fcm")]
    Fcm,
    /// Web Push (RFC 8030, RFC 8291): a browser's push subscription.
    #[serde(rename = "webpush")]
    WebPush,
}

impl PushPlatform {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PushPlatform::Apns => "apns",
            PushPlatform::Fcm => "fcm",
            PushPlatform::WebPush => "webpush",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<PushPlatform> {
        match s {
            "apns" => Some(PushPlatform::Apns),
            "fcm" => Some(PushPlatform::Fcm),
            "webpush" => Some(PushPlatform::WebPush),
            _ => None,
        }
    }
}

impl std::fmt::Display for PushPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keys of a Web Push subscription (`PushSubscription.toJSON().keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPushKeys {
    /// The browser's P-256 public key, base64url (65 bytes, uncompressed point).
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
}

/// A browser's push subscription as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPushSubscription {
    /// The push service URL (https).
    pub endpoint: String,
    /// The encryption keys.
    pub keys: WebPushKeys,
}

/// One registered push target of one user, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PushRegistration {
    /// Derived from the platform and the address ([`target_id`]): the same device
    /// always gets the same id.
    pub target_id: String,
    /// Whose it is.
    pub user_id: UserId,
    /// The push service.
    pub platform: PushPlatform,
    /// The APNs device token (lowercase hex), the FCM registration token, or the Web
    /// Push endpoint URL.
    pub address: String,
    /// Web Push only: the subscription's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<WebPushKeys>,
    /// The app: APNs topic (bundle id), FCM package name; none for Web Push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The device's locale (BCP 47, e.g. `de-CH`): picks the language of generic
    /// notification texts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// APNs only: the app runs against the development (sandbox) environment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// When the target was first registered (Unix ms).
    pub created_at: Millis,
    /// When it was last registered or refreshed (Unix ms).
    pub updated_at: Millis,
}

impl PushRegistration {
    /// Validates a registration request and builds the registration it stores.
    ///
    /// - `apns`: `token` is 64 to 200 hex digits (an even number); stored lowercase.
    /// - `fcm`: `token` is 32 to 4096 characters of `A-Z a-z 0-9 _ - : .`.
    /// - `webpush`: no `token`; `subscription.endpoint` is an `https://` URL of at most
    ///   2048 bytes, `keys.p256dh` a base64url P-256 public key (65 bytes, uncompressed),
    ///   `keys.auth` a base64url 16-byte secret.
    /// - `app_id`: 1 to 255 characters of `A-Z a-z 0-9 . _ -`; `locale`: 1 to 35 of
    ///   `A-Z a-z 0-9 _ -`.
    ///
    /// Anything else is `bad_request`.
    #[allow(clippy::too_many_arguments)]
    pub fn validate(
        user_id: UserId,
        platform: PushPlatform,
        token: Option<String>,
        subscription: Option<WebPushSubscription>,
        app_id: Option<String>,
        locale: Option<String>,
        sandbox: bool,
        now: Millis,
    ) -> Result<PushRegistration> {
        let (address, keys) = match platform {
            PushPlatform::Apns | PushPlatform::Fcm => {
                if subscription.is_some() {
                    return Err(Error::bad_request(format!(
                        "a {platform} target takes a `token`, not a `subscription`"
                    )));
                }
                let token = token
                    .ok_or_else(|| Error::bad_request(format!("{platform} needs a `token`")))?;
                let token = if platform == PushPlatform::Apns {
                    check_apns_token(&token)?
                } else {
                    check_fcm_token(&token)?
                };
                (token, None)
            }
            PushPlatform::WebPush => {
                if token.is_some() {
                    return Err(Error::bad_request(
                        "a webpush target takes a `subscription` {endpoint, keys}, not a `token`",
                    ));
                }
                let s = subscription.ok_or_else(|| {
                    Error::bad_request("webpush needs a `subscription` {endpoint, keys}")
                })?;
                check_endpoint(&s.endpoint)?;
                check_key("subscription.keys.p256dh", &s.keys.p256dh, 65)?;
                if decode_b64url(&s.keys.p256dh).map(|k| k[0]) != Some(0x04) {
                    return Err(Error::bad_request(
                        "subscription.keys.p256dh must be an uncompressed P-256 point (0x04 ...)",
                    ));
                }
                check_key("subscription.keys.auth", &s.keys.auth, 16)?;
                (s.endpoint, Some(s.keys))
            }
        };
        if let Some(a) = &app_id {
            check_text("app_id", a, 255, b"._-")?;
        }
        if let Some(l) = &locale {
            check_text("locale", l, 35, b"_-")?;
        }
        Ok(PushRegistration {
            target_id: target_id(platform, &address),
            user_id,
            platform,
            address,
            keys,
            app_id,
            locale,
            sandbox: sandbox && platform == PushPlatform::Apns,
            created_at: now,
            updated_at: now,
        })
    }
}

/// The id of the target with this platform and address: `<platform>-` and 32 hex
/// digits of SHA-256 over `platform NUL address`.
pub fn target_id(platform: PushPlatform, address: &str) -> String {
    let mut h = Sha256::new();
    h.update(platform.as_str().as_bytes());
    h.update([0u8]);
    h.update(address.as_bytes());
    let digest = h.finalize();
    let mut s = String::with_capacity(8 + 32);
    s.push_str(platform.as_str());
    s.push('-');
    for b in &digest[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Whether `s` looks like a target id (`apns-`, `fcm-` or `webpush-` and 32 hex
/// digits); anything else is refused before any store is asked.
pub fn check_target_id(s: &str) -> Result<()> {
    let ok = s.split_once('-').is_some_and(|(p, hex)| {
        PushPlatform::parse(p).is_some()
            && hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(
            "target_id must be what register_push_target returned (e.g. apns-<32 hex digits>)",
        ))
    }
}

fn check_apns_token(t: &str) -> Result<String> {
    if t.len() < 64 || t.len() > 200 || !t.len().is_multiple_of(2) {
        return Err(Error::bad_request(format!(
            "an apns token is 64 to 200 hex digits (an even number), got {} characters",
            t.len()
        )));
    }
    if !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::bad_request(
            "an apns token is hex digits only (0-9 a-f)",
        ));
    }
    Ok(t.to_ascii_lowercase())
}

fn check_fcm_token(t: &str) -> Result<String> {
    if t.len() < 32 || t.len() > 4096 {
        return Err(Error::bad_request(format!(
            "an fcm token is 32 to 4096 characters, got {}",
            t.len()
        )));
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
    {
        return Err(Error::bad_request(
            "an fcm token contains only A-Z a-z 0-9 _ - : .",
        ));
    }
    Ok(t.to_string())
}

fn check_endpoint(e: &str) -> Result<()> {
    let Some(rest) = e.strip_prefix("https://") else {
        return Err(Error::bad_request(
            "subscription.endpoint must be an https:// URL",
        ));
    };
    if e.len() > 2048 {
        return Err(Error::bad_request(
            "subscription.endpoint is longer than 2048 bytes",
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_only = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host_only.is_empty() || host.contains('@') {
        return Err(Error::bad_request(
            "subscription.endpoint needs a host (and no user info)",
        ));
    }
    if e.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Error::bad_request(
            "subscription.endpoint must not contain spaces or control characters",
        ));
    }
    Ok(())
}

/// Decodes base64url with or without padding (what browsers hand out).
pub fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

fn check_key(what: &str, v: &str, len: usize) -> Result<()> {
    match decode_b64url(v) {
        Some(b) if b.len() == len => Ok(()),
        Some(b) => Err(Error::bad_request(format!(
            "{what} must decode to {len} bytes, got {}",
            b.len()
        ))),
        None => Err(Error::bad_request(format!("{what} is not base64url"))),
    }
}

fn check_text(what: &str, v: &str, max: usize, extra: &[u8]) -> Result<()> {
    if v.is_empty() || v.len() > max {
        return Err(Error::bad_request(format!(
            "{what} must be 1 to {max} characters"
        )));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    {
        let allowed: String = extra.iter().map(|b| format!(" {}", *b as char)).collect();
        return Err(Error::bad_request(format!(
            "{what} may contain only A-Z a-z 0-9{allowed}"
        )));
    }
    Ok(())
}

/// A thread muted by one user: no push notifications for it until `until` (Unix ms),
/// or for ever when `until` is `None`. Messages still arrive on live sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadMute {
    /// The thread.
    pub thread_id: ThreadId,
    /// End of the mute (exclusive); `None` for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
}

impl ThreadMute {
    /// Whether the mute still holds at `now`.
    pub fn active(&self, now: Millis) -> bool {
        self.until.is_none_or(|u| u > now)
    }
}

/// What the push path needs about one user and one thread, in one read:
/// [`PushRegistry::push_targets`](crate::traits::PushRegistry::push_targets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushTargets {
    /// The user's current targets.
    pub targets: Vec<PushRegistration>,
    /// The user's mute of the thread, if any (possibly expired: check
    /// [`ThreadMute::active`]).
    pub mute: Option<ThreadMute>,
}

impl PushTargets {
    /// The targets to notify at `now`: none while the thread is muted.
    pub fn deliverable(self, now: Millis) -> Vec<PushRegistration> {
        match &self.mute {
            Some(m) if m.active(now) => Vec::new(),
            _ => self.targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::new("alice").expect("id")
    }

    fn reg(
        p: PushPlatform,
        token: Option<&str>,
        sub: Option<WebPushSubscription>,
    ) -> Result<PushRegistration> {
        PushRegistration::validate(
            user(),
            p,
            token.map(str::to_string),
            sub,
            None,
            None,
            false,
            1,
        )
    }

    fn sub(endpoint: &str) -> WebPushSubscription {
        let mut point = vec![4u8];
        point.extend([7u8; 64]);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        WebPushSubscription {
            endpoint: endpoint.into(),
            keys: WebPushKeys {
                p256dh: b64(&point),
                auth: b64(&[1u8; 16]),
            },
        }
    }

    #[test]
    fn apns_tokens() {
        let t = "AB".repeat(32);
        let r = reg(PushPlatform::Apns, Some(&t), None).expect("valid");
        assert_eq!(r.address, "ab".repeat(32));
        assert!(r.target_id.starts_with("apns-"));
        check_target_id(&r.target_id).expect("own ids pass");
        for bad in [
            "ab".repeat(31),
            "zz".repeat(32),
            "a".repeat(65),
            "ab".repeat(101),
        ] {
            assert!(reg(PushPlatform::Apns, Some(&bad), None).is_err(), "{bad}");
        }
        assert!(reg(PushPlatform::Apns, None, None).is_err());
        assert!(reg(PushPlatform::Apns, Some(&t), Some(sub("https://x/y"))).is_err());
    }

    #[test]
    fn fcm_tokens() {
        let t = "cX1_-:APA91b".to_string() + &"x".repeat(140);
        reg(PushPlatform::Fcm, Some(&t), None).expect("valid");
        assert!(reg(PushPlatform::Fcm, Some("short"), None).is_err());
        assert!(reg(PushPlatform::Fcm, Some(&format!("{t} x")), None).is_err());
        assert!(reg(PushPlatform::Fcm, Some(&"x".repeat(4097)), None).is_err());
    }

    #[test]
    fn webpush_subscriptions() {
        let r = reg(
            PushPlatform::WebPush,
            None,
            Some(sub("https://push.example/s/1")),
        )
        .expect("valid");
        assert!(r.keys.is_some());
        for bad in [
            "http://push.example/s",
            "https://",
            "https://a b/",
            "ftp://x",
            "https://u:p@evil/",
        ] {
            assert!(
                reg(PushPlatform::WebPush, None, Some(sub(bad))).is_err(),
                "{bad}"
            );
        }
        let mut s = sub("https://p/x");
        s.keys.auth = "short".into();
        assert!(reg(PushPlatform::WebPush, None, Some(s)).is_err());
        let mut s = sub("https://p/x");
        s.keys.p256dh = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([3u8; 65]);
        assert!(reg(PushPlatform::WebPush, None, Some(s)).is_err());
        assert!(reg(PushPlatform::WebPush, Some(&"a".repeat(64)), None).is_err());
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(
            target_id(PushPlatform::Fcm, "x"),
            target_id(PushPlatform::Fcm, "x")
        );
        assert_ne!(
            target_id(PushPlatform::Fcm, "x"),
            target_id(PushPlatform::Apns, "x")
        );
        assert!(check_target_id("apns-zz").is_err());
        assert!(check_target_id("other-00000000000000000000000000000000").is_err());
    }

    #[test]
    fn mutes_expire() {
        let t = ThreadId::new("t").expect("id");
        let m = ThreadMute {
            thread_id: t.clone(),
            until: Some(10),
        };
        assert!(m.active(9) && !m.active(10));
        assert!(ThreadMute {
            thread_id: t,
            until: None
        }
        .active(u64::MAX));
    }
}
