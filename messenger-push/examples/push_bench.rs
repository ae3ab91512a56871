//! Notifications per second from one sender to the local provider endpoints
//! (`messenger_push::testkit`), through `PushService` as `messenger-worker` uses it.
//!
//! ```text
//! push_bench serve PARAMS.json          # the endpoints; writes what a sender needs, runs until stdin closes
//! push_bench send PARAMS.json apns|fcm|webpush N CONCURRENCY
//! ```
//! `messenger-push/scripts/bench.sh` runs both pinned to separate cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use messenger_core::time::now_ms;
use messenger_core::{MessageId, ThreadId, UserId};
use messenger_push::testkit::{FakeApns, FakeFcm, FakeWebPush, TestPki};
use messenger_push::{
    keys, ApnsConfig, ApnsProvider, FcmConfig, FcmProvider, Notification, Outcome, Platform,
    PushProvider, PushService, PushTarget, RetryPolicy, StaticTargets, VapidKey, WebPushConfig,
    WebPushProvider,
};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

fn usage() -> Error {
    "usage: push_bench serve PARAMS.json | push_bench send PARAMS.json apns|fcm|webpush N CONCURRENCY"
        .into()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(args.get(1).ok_or_else(usage)?).await,
        Some("send") => {
            let [_, params, provider, n, c] = args.as_slice() else {
                return Err(usage());
            };
            send(params, provider, n.parse()?, c.parse()?).await
        }
        _ => Err(usage()),
    }
}

async fn serve(out: &str) -> Result<(), Error> {
    let pki = TestPki::new();
    let apns = FakeApns::start(&pki).await;
    let fcm = FakeFcm::start(&pki).await;
    let wp = FakeWebPush::start(&pki).await;
    let subs: Vec<Value> = (0..16)
        .map(|_| {
            let s = wp.subscribe();
            json!({ "endpoint": s.endpoint, "p256dh": s.p256dh, "auth": s.auth })
        })
        .collect();
    let params = json!({
        "ca_pem": pki.ca_pem,
        "apns": { "url": apns.url, "key_pem": apns.key_pem, "key_id": apns.key_id, "team_id": apns.team_id },
        "fcm": { "url": fcm.url, "service_account": fcm.service_account_json() },
        "webpush": { "subscriptions": subs },
    });
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, params.to_string())?;
    std::fs::rename(&tmp, out)?;
    eprintln!("push_bench: endpoints up; parameters in {out}; close stdin to stop");
    // Runs until stdin closes (the script holds it open).
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    eprintln!(
        "push_bench: accepted apns {} fcm {} webpush {}",
        apns.accepted().len(),
        fcm.accepted().len(),
        wp.accepted().len()
    );
    Ok(())
}

fn s(v: &Value, p: &str) -> Result<String, Error> {
    v.pointer(p)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("params: {p} missing").into())
}

async fn send(params: &str, provider: &str, n: u64, concurrency: usize) -> Result<(), Error> {
    let p: Value = serde_json::from_slice(&std::fs::read(params)?)?;
    let ca = s(&p, "/ca_pem")?.into_bytes();
    let (provider, targets): (Arc<dyn PushProvider>, Vec<PushTarget>) = match provider {
        "apns" => {
            let mut c = ApnsConfig::new(
                s(&p, "/apns/key_pem")?.into_bytes(),
                s(&p, "/apns/key_id")?,
                s(&p, "/apns/team_id")?,
            );
            c.endpoint = s(&p, "/apns/url")?;
            c.ca_pem = Some(ca);
            c.default_topic = Some("com.example.chat".into());
            let t = PushTarget::new("apns-1", Platform::Apns, "ab".repeat(32));
            (Arc::new(ApnsProvider::new(c)?), vec![t])
        }
        "fcm" => {
            let mut c =
                FcmConfig::from_service_account_json(s(&p, "/fcm/service_account")?.as_bytes())?;
            c.endpoint = s(&p, "/fcm/url")?;
            c.ca_pem = Some(ca);
            let t = PushTarget::new("fcm-1", Platform::Fcm, "t".repeat(152));
            (Arc::new(FcmProvider::new(c)?), vec![t])
        }
        "webpush" => {
            let mut c = WebPushConfig::new(VapidKey::generate(), "mailto:bench@example.com");
            c.ca_pem = Some(ca);
            let subs = p
                .pointer("/webpush/subscriptions")
                .and_then(Value::as_array)
                .ok_or("params: no subscriptions")?;
            let mut targets = Vec::new();
            for (i, sub) in subs.iter().enumerate() {
                let mut t =
                    PushTarget::new(format!("wp-{i}"), Platform::WebPush, s(sub, "/endpoint")?);
                t.keys.insert(keys::P256DH.into(), s(sub, "/p256dh")?);
                t.keys.insert(keys::AUTH.into(), s(sub, "/auth")?);
                targets.push(t);
            }
            (Arc::new(WebPushProvider::new(c)?), targets)
        }
        other => return Err(format!("unknown provider {other}").into()),
    };
    let name = provider.platform().to_string();
    // One service per target so each notification goes to exactly one target.
    let services: Vec<PushService> = targets
        .into_iter()
        .map(|t| {
            PushService::new(Arc::new(StaticTargets(vec![t])))
                .with_provider(provider.clone())
                .with_retry(RetryPolicy::new(1, Duration::ZERO, Duration::ZERO))
        })
        .collect();
    let note = |i: u64| {
        Notification::new(
            UserId::new("bob").expect("user"),
            ThreadId::new(format!("g:{}", i % 64)).expect("thread"),
            MessageId(i + 1),
            i + 1,
            UserId::new("alice").expect("user"),
            "Are we still on for lunch at noon? I booked the table by the window.",
            now_ms(),
        )
    };
    // Warm-up: connections, tokens, TLS sessions.
    for (i, svc) in services.iter().enumerate() {
        svc.deliver(&note(i as u64)).await?;
    }
    let t0 = Instant::now();
    let results: Vec<bool> = futures::stream::iter(0..n)
        .map(|i| {
            let svc = &services[(i as usize) % services.len()];
            async move {
                svc.deliver(&note(i))
                    .await
                    .map(|r| r.outcomes.iter().all(|(_, o)| *o == Outcome::Delivered))
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = t0.elapsed().as_secs_f64();
    let failed = results.iter().filter(|ok| !**ok).count();
    println!(
        "{}",
        json!({ "provider": name, "n": n, "concurrency": concurrency, "failed": failed,
                "secs": secs, "per_sec": n as f64 / secs })
    );
    if failed > 0 {
        return Err(format!("{failed} notifications not delivered").into());
    }
    Ok(())
}
