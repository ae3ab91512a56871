//! The webhook provider against a real local HTTP receiver: signatures verify, a 500
//! is retried until the 200, 410 removes the target, 401 is a credential failure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use messenger_core::{MessageId, ThreadId, UserId};
use messenger_push::webhook::{self, WebhookClient};
use messenger_push::{
    Notification, Outcome, Platform, PushService, PushTarget, RetryPolicy, TargetDirectory,
    WebhookProvider,
};

const SECRET: &[u8] = b"whsec-test";

#[derive(Default)]
struct Receiver {
    /// (path, body, signature ok)
    got: Mutex<Vec<(String, String, bool)>>,
    /// Requests to `/flaky` so far.
    calls: AtomicUsize,
}

async fn handle(
    State(r): State<Arc<Receiver>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let flaky_calls = if mode == "flaky" {
        r.calls.fetch_add(1, Ordering::SeqCst)
    } else {
        usize::MAX
    };
    let sig = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = webhook::verify(
        SECRET,
        sig,
        &body,
        webhook::unix_now(),
        Duration::from_secs(300),
    )
    .is_ok();
    r.got.lock().expect("lock").push((
        mode.clone(),
        String::from_utf8_lossy(&body).into_owned(),
        ok,
    ));
    match mode.as_str() {
        "ok" => StatusCode::OK,
        "flaky" if flaky_calls == 0 => StatusCode::INTERNAL_SERVER_ERROR,
        "flaky" => StatusCode::OK,
        "gone" => StatusCode::GONE,
        "auth" => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn receiver() -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/{mode}", post(handle))
        .with_state(r.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), r)
}

#[derive(Default)]
struct Dir {
    targets: Mutex<Vec<PushTarget>>,
    removed: Mutex<Vec<String>>,
}

#[async_trait]
impl TargetDirectory for Dir {
    async fn targets(&self, _: &UserId, _: &ThreadId) -> messenger_core::Result<Vec<PushTarget>> {
        Ok(self.targets.lock().expect("lock").clone())
    }
    async fn remove(&self, _: &UserId, id: &str) -> messenger_core::Result<()> {
        self.removed.lock().expect("lock").push(id.to_string());
        self.targets.lock().expect("lock").retain(|t| t.id != id);
        Ok(())
    }
}

fn notification() -> Notification {
    Notification::new(
        UserId::new("bob").expect("user"),
        ThreadId::new("d:alice:bob").expect("thread"),
        MessageId(42),
        7,
        UserId::new("alice").expect("user"),
        "hello ✓",
        1_700_000_000_000,
    )
}

#[tokio::test]
async fn outcomes_follow_the_receiver_and_signatures_verify() {
    let (base, r) = receiver().await;
    let dir = Arc::new(Dir::default());
    *dir.targets.lock().expect("lock") = ["ok", "flaky", "gone", "auth", "bad"]
        .iter()
        .map(|m| PushTarget::new(*m, Platform::Webhook, format!("{base}/{m}")))
        .collect();
    let client = WebhookClient::new(SECRET.to_vec(), Duration::from_secs(5)).expect("client");
    let svc = PushService::new(dir.clone())
        .with_provider(Arc::new(WebhookProvider::new(client)))
        .with_retry(RetryPolicy::new(
            3,
            Duration::from_millis(10),
            Duration::from_millis(50),
        ));
    let n = notification();
    let report = svc.deliver(&n).await.expect("deliver");
    let outcome = |id: &str| {
        report
            .outcomes
            .iter()
            .find(|(t, _)| t.id == id)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("no outcome for {id}"))
    };
    assert_eq!(outcome("ok"), Outcome::Delivered);
    assert_eq!(
        outcome("flaky"),
        Outcome::Delivered,
        "a 500 is retried until the 200"
    );
    assert_eq!(outcome("gone"), Outcome::TargetGone);
    assert!(matches!(outcome("auth"), Outcome::CredentialRejected(_)));
    assert!(matches!(outcome("bad"), Outcome::Rejected(_)));
    assert_eq!(*dir.removed.lock().expect("lock"), vec!["gone".to_string()]);
    assert_eq!(report.failures().count(), 2);

    let got = r.got.lock().expect("lock").clone();
    assert_eq!(
        got.len(),
        6,
        "flaky got two requests, the others one: {got:?}"
    );
    assert!(got.iter().all(|(_, _, ok)| *ok), "every signature verifies");
    let body: serde_json::Value = serde_json::from_str(&got[0].1).expect("json");
    assert_eq!(body["type"], "push.notification");
    assert_eq!(body["id"], "42:bob");
    assert_eq!(body["message_id"], "42");
    assert_eq!(body["text"], "hello ✓");
    let s = svc.stats();
    assert_eq!(s.delivered.load(Ordering::Relaxed), 2);
    assert_eq!(s.retries.load(Ordering::Relaxed), 1);
}

#[test]
fn signatures_refuse_tampering_replays_and_garbage() {
    let body = br#"{"id":"1"}"#;
    let h = webhook::sign(SECRET, 1_700_000_000, body);
    let tol = Duration::from_secs(300);
    assert_eq!(
        webhook::verify(SECRET, &h, body, 1_700_000_100, tol),
        Ok(())
    );
    assert_eq!(
        webhook::verify(SECRET, &h, br#"{"id":"2"}"#, 1_700_000_100, tol),
        Err(webhook::VerifyError::Mismatch)
    );
    assert_eq!(
        webhook::verify(b"other", &h, body, 1_700_000_100, tol),
        Err(webhook::VerifyError::Mismatch)
    );
    assert_eq!(
        webhook::verify(SECRET, &h, body, 1_700_001_000, tol),
        Err(webhook::VerifyError::Expired)
    );
    assert_eq!(
        webhook::verify(SECRET, "v1=zz", body, 1_700_000_000, tol),
        Err(webhook::VerifyError::Malformed)
    );
    // Rotation: any matching v1 passes.
    let rotated = format!("{h},v1={}", "00".repeat(32));
    assert_eq!(
        webhook::verify(SECRET, &rotated, body, 1_700_000_000, tol),
        Ok(())
    );
    // The worked example in docs/webhooks.md.
    let body = br#"{"id":"7","created_at":1700000000000,"node":1,"type":"receipt.updated","data":{"thread_id":"dm:alice:bob","user_id":"bob","status":"READ","seq":12,"message_id":"7134418471200768","sender_id":"alice"}}"#;
    let header = "t=1700000000,v1=94ffb2a02b01bf058edec05ad0034af351da8b98017ef88483f69e3f10586cb2";
    assert_eq!(webhook::sign(b"whsec_example", 1_700_000_000, body), header);
    assert_eq!(
        webhook::verify(b"whsec_example", header, body, 1_700_000_060, tol),
        Ok(())
    );
    // ... and it is exactly how the worker serializes that event.
    let event: messenger_core::events::Event = serde_json::from_slice(body).expect("event");
    assert_eq!(serde_json::to_vec(&event).expect("json"), body.to_vec());
}

#[test]
fn previews_are_cut_on_a_char_boundary() {
    let long = "é".repeat(1000);
    let n = Notification::new(
        UserId::new("b").expect("u"),
        ThreadId::new("t").expect("t"),
        MessageId(1),
        1,
        UserId::new("a").expect("u"),
        &long,
        0,
    );
    assert!(n.text.len() <= Notification::MAX_PREVIEW);
    assert_eq!(n.text.len() % 2, 0);
}
