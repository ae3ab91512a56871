//! APNs, FCM and Web Push against local endpoints that speak each provider's real
//! protocol (`messenger_push::testkit`): HTTP/2 + TLS with a test CA, signatures checked
//! with the public keys, Web Push payloads decrypted with the subscription's key.
//! Through the `PushService` and the store's registrations (`RegistryDirectory`):
//! gone targets are unregistered, 429/5xx retried honouring `Retry-After`, refused
//! credentials reported without spinning, muted threads get nothing.

use std::sync::Arc;
use std::time::Duration;

use messenger_core::push::{
    PushPlatform, PushRegistration, ThreadMute, WebPushKeys, WebPushSubscription,
};
use messenger_core::time::now_ms;
use messenger_core::{MessageId, PushRegistry, ThreadId, UserId};
use messenger_push::testkit::{Failure, FakeApns, FakeFcm, FakeWebPush, TestPki};
use messenger_push::{
    ApnsConfig, ApnsProvider, FcmConfig, FcmProvider, Notification, Outcome, Privacy, PushService,
    RegistryDirectory, RetryPolicy, VapidKey, WebPushConfig, WebPushProvider,
};
use messenger_storage_mem::MemPushRegistry;

const LIMIT: Duration = Duration::from_secs(30);

fn uid(s: &str) -> UserId {
    UserId::new(s).expect("user")
}

fn tid(s: &str) -> ThreadId {
    ThreadId::new(s).expect("thread")
}

fn note(user: &str, thread: &str, id: u64, text: &str) -> Notification {
    Notification::new(
        uid(user),
        tid(thread),
        MessageId(id),
        id,
        uid("alice"),
        text,
        now_ms(),
    )
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::new(4, Duration::from_millis(10), Duration::from_millis(50))
}

fn apns_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

async fn register(
    reg: &Arc<MemPushRegistry>,
    user: &str,
    platform: PushPlatform,
    token: Option<String>,
    sub: Option<WebPushSubscription>,
    app: Option<&str>,
) -> String {
    let r = PushRegistration::validate(
        uid(user),
        platform,
        token,
        sub,
        app.map(str::to_string),
        Some("de".into()),
        false,
        now_ms(),
    )
    .expect("valid registration");
    reg.register_target(r, 10)
        .await
        .expect("register")
        .target_id
}

fn apns_provider(fake: &FakeApns, pki: &TestPki, privacy: Privacy) -> ApnsProvider {
    let mut c = ApnsConfig::new(
        fake.key_pem.clone().into_bytes(),
        &fake.key_id,
        &fake.team_id,
    );
    c.endpoint = fake.url.clone();
    c.sandbox_endpoint = fake.url.clone();
    c.ca_pem = Some(pki.ca_pem.clone().into_bytes());
    c.default_topic = Some("com.example.chat".into());
    c.privacy = privacy;
    ApnsProvider::new(c).expect("apns provider")
}

fn fcm_provider(fake: &FakeFcm, pki: &TestPki) -> FcmProvider {
    let mut c = FcmConfig::from_service_account_json(fake.service_account_json().as_bytes())
        .expect("service account");
    c.endpoint = fake.url.clone();
    c.ca_pem = Some(pki.ca_pem.clone().into_bytes());
    FcmProvider::new(c).expect("fcm provider")
}

fn webpush_provider(pki: &TestPki, privacy: Privacy) -> WebPushProvider {
    let mut c = WebPushConfig::new(VapidKey::generate(), "mailto:ops@example.com");
    c.ca_pem = Some(pki.ca_pem.clone().into_bytes());
    c.privacy = privacy;
    WebPushProvider::new(c).expect("webpush provider")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_over_http2_with_a_verified_provider_token() {
    tokio::time::timeout(LIMIT, async {
        let pki = TestPki::new();
        let fake = FakeApns::start(&pki).await;
        let reg = Arc::new(MemPushRegistry::new());
        let t1 = register(
            &reg,
            "bob",
            PushPlatform::Apns,
            Some(apns_token(1)),
            None,
            Some("com.example.chat"),
        )
        .await;
        let service = PushService::new(Arc::new(RegistryDirectory::new(reg.clone())))
            .with_provider(Arc::new(apns_provider(&fake, &pki, Privacy::Full)))
            .with_retry(fast_retry());

        for i in 1..=3 {
            let r = service
                .deliver(&note("bob", "g:42", i, "lunch?"))
                .await
                .expect("deliver");
            assert_eq!(r.outcomes.len(), 1);
            assert_eq!(r.outcomes[0].1, Outcome::Delivered);
        }
        let got = fake.accepted();
        assert_eq!(got.len(), 3);
        let a = &got[0];
        assert_eq!(a.token, apns_token(1));
        assert_eq!(a.headers["apns-topic"], "com.example.chat");
        assert_eq!(a.headers["apns-push-type"], "alert");
        assert_eq!(a.headers["apns-collapse-id"], "g:42");
        assert_eq!(a.headers["apns-priority"], "10");
        assert_eq!(a.payload["aps"]["alert"]["title"], "alice");
        assert_eq!(a.payload["aps"]["alert"]["body"], "lunch?");
        assert_eq!(a.payload["aps"]["thread-id"], "g:42");
        assert_eq!(a.payload["thread_id"], "g:42");
        assert_eq!(a.payload["seq"], "1");
        assert_ne!(got[0].headers["apns-id"], got[1].headers["apns-id"]);
        // One provider token, reused (cached) across notifications.
        assert_eq!(fake.provider_tokens(), 1);

        // 429 with Retry-After, then 503: retried until delivered, same apns-id.
        fake.fail_next(Failure::new(429, r#"{"reason":"TooManyRequests"}"#).retry_after(0));
        fake.fail_next(Failure::new(503, r#"{"reason":"ServiceUnavailable"}"#));
        let r = service
            .deliver(&note("bob", "g:42", 4, "again"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::Delivered);
        assert_eq!(fake.accepted().len(), 4);

        // 410 Unregistered: the target is removed and never tried again.
        fake.unregister(&apns_token(1));
        let r = service
            .deliver(&note("bob", "g:42", 5, "gone?"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::TargetGone);
        assert!(reg
            .list_targets(&uid("bob"))
            .await
            .expect("list")
            .iter()
            .all(|t| t.target_id != t1));
        let before = fake.requests();
        let r = service
            .deliver(&note("bob", "g:42", 6, "never"))
            .await
            .expect("deliver");
        assert!(r.outcomes.is_empty());
        assert_eq!(
            fake.requests(),
            before,
            "a removed token is never tried again"
        );

        // 400 BadDeviceToken removes it too.
        register(
            &reg,
            "bob",
            PushPlatform::Apns,
            Some(apns_token(2)),
            None,
            None,
        )
        .await;
        fake.bad_token(&apns_token(2));
        let r = service
            .deliver(&note("bob", "g:42", 7, "x"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::TargetGone);
        assert!(reg
            .list_targets(&uid("bob"))
            .await
            .expect("list")
            .is_empty());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_refused_credentials_are_reported_once_and_do_not_spin() {
    tokio::time::timeout(LIMIT, async {
        let pki = TestPki::new();
        let fake = FakeApns::start(&pki).await;
        // Signed with a key the endpoint does not know.
        let other = rcgen_key();
        let mut c = ApnsConfig::new(other.into_bytes(), &fake.key_id, &fake.team_id);
        c.endpoint = fake.url.clone();
        c.ca_pem = Some(pki.ca_pem.clone().into_bytes());
        c.default_topic = Some("com.example.chat".into());
        let provider = ApnsProvider::new(c).expect("provider");
        let reg = Arc::new(MemPushRegistry::new());
        register(
            &reg,
            "bob",
            PushPlatform::Apns,
            Some(apns_token(3)),
            None,
            None,
        )
        .await;
        let service = PushService::new(Arc::new(RegistryDirectory::new(reg.clone())))
            .with_provider(Arc::new(provider))
            .with_retry(fast_retry());
        for i in 0..20 {
            let r = service
                .deliver(&note("bob", "dm:alice:bob", i, "x"))
                .await
                .expect("deliver");
            assert!(
                matches!(r.outcomes[0].1, Outcome::CredentialRejected(_)),
                "{:?}",
                r.outcomes
            );
        }
        // One request found out; the other 19 notifications never left (no retries).
        assert_eq!(fake.requests(), 1);
        assert_eq!(
            reg.list_targets(&uid("bob")).await.expect("list").len(),
            1,
            "the target stays"
        );
    })
    .await
    .expect("test timed out");
}

/// A fresh P-256 key in the `.p8` format, not the one FakeApns verifies with.
fn rcgen_key() -> String {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let k = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    k.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_v1_with_the_oauth_exchange() {
    tokio::time::timeout(LIMIT, async {
        let pki = TestPki::new();
        let fake = FakeFcm::start(&pki).await;
        let reg = Arc::new(MemPushRegistry::new());
        let token = "fcm-token_".to_string() + &"x".repeat(140);
        register(
            &reg,
            "carol",
            PushPlatform::Fcm,
            Some(token.clone()),
            None,
            Some("com.example.chat"),
        )
        .await;
        let service = PushService::new(Arc::new(RegistryDirectory::new(reg.clone())))
            .with_provider(Arc::new(fcm_provider(&fake, &pki)))
            .with_retry(fast_retry());
        for i in 1..=3 {
            let r = service
                .deliver(&note("carol", "g:7", i, "hallo"))
                .await
                .expect("deliver");
            assert_eq!(r.outcomes[0].1, Outcome::Delivered, "{:?}", r.outcomes);
        }
        assert_eq!(fake.exchanges(), 1, "the access token is cached");
        let m = &fake.accepted()[0];
        assert_eq!(m["token"], token.as_str());
        assert_eq!(m["notification"]["title"], "alice");
        assert_eq!(m["notification"]["body"], "hallo");
        assert_eq!(m["data"]["thread_id"], "g:7");
        assert_eq!(m["data"]["message_id"], "1");
        assert_eq!(m["android"]["collapse_key"], "g:7");

        // A revoked access token: 401, a new exchange, delivered.
        fake.revoke_access_tokens();
        let r = service
            .deliver(&note("carol", "g:7", 4, "again"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::Delivered);
        assert_eq!(fake.exchanges(), 2);

        // 503 with Retry-After, then delivered.
        fake.fail_next(
            Failure::new(503, r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#).retry_after(0),
        );
        let r = service
            .deliver(&note("carol", "g:7", 5, "x"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::Delivered);

        // UNREGISTERED removes the target.
        fake.unregister(&token);
        let r = service
            .deliver(&note("carol", "g:7", 6, "x"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::TargetGone);
        assert!(reg
            .list_targets(&uid("carol"))
            .await
            .expect("list")
            .is_empty());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_refused_service_account_is_reported_without_spinning() {
    tokio::time::timeout(LIMIT, async {
        let pki = TestPki::new();
        let fake = FakeFcm::start(&pki).await;
        let p = fcm_provider(&fake, &pki);
        fake.fail_next_exchange(Failure::new(400, r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#));
        let reg = Arc::new(MemPushRegistry::new());
        register(&reg, "dave", PushPlatform::Fcm, Some("t".repeat(40)), None, None).await;
        let service = PushService::new(Arc::new(RegistryDirectory::new(reg.clone())))
            .with_provider(Arc::new(p))
            .with_retry(fast_retry());
        for i in 0..10 {
            let r = service.deliver(&note("dave", "g:7", i, "x")).await.expect("deliver");
            assert!(matches!(&r.outcomes[0].1, Outcome::CredentialRejected(w) if w.contains("invalid_grant")), "{:?}", r.outcomes);
        }
        assert_eq!(fake.exchanges(), 0);
        assert_eq!(fake.requests(), 0, "no message left with refused credentials");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_is_encrypted_for_the_subscription_and_signed_with_vapid() {
    tokio::time::timeout(LIMIT, async {
        let pki = TestPki::new();
        let fake = FakeWebPush::start(&pki).await;
        let reg = Arc::new(MemPushRegistry::new());
        let sub = fake.subscribe();
        let ws = WebPushSubscription {
            endpoint: sub.endpoint.clone(),
            keys: WebPushKeys {
                p256dh: sub.p256dh.clone(),
                auth: sub.auth.clone(),
            },
        };
        register(&reg, "erin", PushPlatform::WebPush, None, Some(ws), None).await;
        let service = PushService::new(Arc::new(RegistryDirectory::new(reg.clone())))
            .with_provider(Arc::new(webpush_provider(&pki, Privacy::SenderOnly)))
            .with_retry(fast_retry());
        let r = service
            .deliver(&note("erin", "dm:alice:erin", 1, "top secret"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::Delivered, "{:?}", r.outcomes);
        let got = fake.accepted();
        assert_eq!(got.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&got[0].plaintext).expect("json");
        assert_eq!(v["title"], "alice");
        assert_eq!(
            v["body"], "Neue Nachricht",
            "sender only, in the target's locale"
        );
        assert_eq!(v["data"]["thread_id"], "dm:alice:erin");
        assert!(!String::from_utf8_lossy(&got[0].plaintext).contains("top secret"));
        assert_eq!(got[0].headers["content-encoding"], "aes128gcm");
        assert_eq!(got[0].headers["urgency"], "high");
        assert!(got[0].headers.contains_key("topic"));

        // 429 then delivered.
        fake.fail_next(Failure::new(429, "slow down").retry_after(0));
        let r = service
            .deliver(&note("erin", "dm:alice:erin", 2, "x"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::Delivered);

        // 410: unsubscribed browser, removed, never again.
        fake.unsubscribe(&sub.endpoint);
        let r = service
            .deliver(&note("erin", "dm:alice:erin", 3, "x"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes[0].1, Outcome::TargetGone);
        let before = fake.requests();
        let r = service
            .deliver(&note("erin", "dm:alice:erin", 4, "x"))
            .await
            .expect("deliver");
        assert!(r.outcomes.is_empty());
        assert_eq!(fake.requests(), before);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_thread_gets_nothing_on_any_platform_and_generic_privacy_hides_everything() {
    tokio::time::timeout(LIMIT, async {
        let pki = TestPki::new();
        let apns = FakeApns::start(&pki).await;
        let wp = FakeWebPush::start(&pki).await;
        let reg = Arc::new(MemPushRegistry::new());
        register(
            &reg,
            "frank",
            PushPlatform::Apns,
            Some(apns_token(9)),
            None,
            Some("com.example.chat"),
        )
        .await;
        let sub = wp.subscribe();
        let ws = WebPushSubscription {
            endpoint: sub.endpoint.clone(),
            keys: WebPushKeys {
                p256dh: sub.p256dh.clone(),
                auth: sub.auth.clone(),
            },
        };
        register(&reg, "frank", PushPlatform::WebPush, None, Some(ws), None).await;
        let service = PushService::new(Arc::new(RegistryDirectory::new(reg.clone())))
            .with_provider(Arc::new(apns_provider(&apns, &pki, Privacy::Generic)))
            .with_provider(Arc::new(webpush_provider(&pki, Privacy::Generic)))
            .with_retry(fast_retry());
        reg.set_mute(
            &uid("frank"),
            ThreadMute {
                thread_id: tid("g:1"),
                until: None,
            },
        )
        .await
        .expect("mute");
        let r = service
            .deliver(&note("frank", "g:1", 1, "muted"))
            .await
            .expect("deliver");
        assert!(r.outcomes.is_empty());
        // A mute that ended lets notifications through again; other threads never stopped.
        reg.set_mute(
            &uid("frank"),
            ThreadMute {
                thread_id: tid("g:2"),
                until: Some(now_ms() + 60_000),
            },
        )
        .await
        .expect("mute");
        let r = service
            .deliver(&note("frank", "g:3", 2, "the plan"))
            .await
            .expect("deliver");
        assert_eq!(r.outcomes.len(), 2);
        assert!(
            r.outcomes.iter().all(|(_, o)| *o == Outcome::Delivered),
            "{:?}",
            r.outcomes
        );
        assert_eq!(apns.requests() + wp.requests(), 2);
        let a = &apns.accepted()[0];
        assert_eq!(a.payload["aps"]["alert"]["title"], "Neue Nachricht");
        let shown = format!(
            "{}{}",
            a.payload,
            String::from_utf8_lossy(&wp.accepted()[0].plaintext)
        );
        assert!(
            !shown.contains("alice") && !shown.contains("the plan"),
            "{shown}"
        );
    })
    .await
    .expect("test timed out");
}
