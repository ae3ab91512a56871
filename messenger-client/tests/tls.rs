//! `wss://` against the real server behind a real TLS terminator (HAProxy) with a CA
//! the test makes: rustls with a custom root store, native-tls, and refusals of an
//! unknown CA.

mod support;

use std::time::Duration;

use messenger_client::{
    Certificate, Client, ClientError, Event, Events, ThreadId, TlsBackend, UserId,
};
use messenger_storage_mem::MemBackend;
use support::{scratch, server_config, start, start_tls_terminator, test_pki};

const LIMIT: Duration = Duration::from_secs(30);

async fn messages(events: &mut Events, thread: &ThreadId, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Event::Message(m))) if &m.thread_id == thread => out.push((m.seq, m.text)),
            Ok(Some(_)) => {}
            other => panic!("after {} messages: {other:?}", out.len()),
        }
    }
    out
}

fn tls_client(
    url: &str,
    user: &str,
    ca: &[Certificate],
    backend: TlsBackend,
) -> messenger_client::ClientBuilder {
    let mut b = Client::builder()
        .url(url)
        .token(user)
        .tls_backend(backend)
        .tls_built_in_roots(false)
        .max_connect_attempts(3)
        .connect_timeout(Duration::from_secs(5));
    for c in ca {
        b = b.add_root_certificate(c.clone());
    }
    b
}

async fn conversation_over_tls(backend: TlsBackend) {
    let dir = scratch("tls");
    let pki = test_pki();
    let ca = Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca pem");
    let mem = MemBackend::new();
    let server = start(&mem, "127.0.0.1:0".parse().expect("addr"), server_config()).await;
    let (_haproxy, port) = start_tls_terminator(&dir, &pki, server.addr);

    for host in ["localhost", "127.0.0.1"] {
        let url = format!("wss://{host}:{port}/ws");
        let (alice, _a) = tls_client(&url, "alice", &ca, backend)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{backend:?} alice over {url}: {e}"));
        let (bob, mut bob_ev) = tls_client(&url, "bob", &ca, backend)
            .connect()
            .await
            .expect("bob over TLS");
        let thread = alice
            .create_direct(&UserId::new("bob").expect("id"))
            .await
            .expect("thread")
            .thread_id;
        for i in 0..5 {
            alice
                .send(&thread, format!("secret {i}"))
                .await
                .expect("send");
        }
        let got = messages(&mut bob_ev, &thread, 5).await;
        let start = got[0].0;
        assert_eq!(
            got,
            (0..5)
                .map(|i| (start + i, format!("secret {i}")))
                .collect::<Vec<_>>()
        );
        assert!(bob.ping().await.expect("ping") < Duration::from_secs(5));
        alice.close().await;
        bob.close().await;
    }

    // Without the test CA the server's certificate is refused, attempt after attempt.
    let url = format!("wss://localhost:{port}/ws");
    let err = Client::builder()
        .url(&url)
        .token("alice")
        .tls_backend(backend)
        .max_connect_attempts(2)
        .backoff(messenger_client::BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            multiplier: 2.0,
            max_retries: Some(1),
        })
        .connect()
        .await
        .expect_err("unknown CA");
    match err {
        ClientError::RetriesExhausted { attempts: 2, last } => {
            let text = last.to_string().to_lowercase();
            assert!(text.contains("certificate"), "{backend:?}: {last:?}");
        }
        other => panic!("{backend:?}: {other:?}"),
    }
    // Plain ws:// to the TLS port is not a WebSocket server either.
    let err = Client::builder()
        .url(format!("ws://127.0.0.1:{port}/ws"))
        .token("alice")
        .max_connect_attempts(1)
        .connect()
        .await
        .expect_err("TLS port");
    assert!(
        matches!(err, ClientError::RetriesExhausted { .. }),
        "{err:?}"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_with_a_custom_root_store_through_a_tls_terminator() {
    tokio::time::timeout(LIMIT, conversation_over_tls(TlsBackend::Rustls))
        .await
        .expect("bounded");
}

#[cfg(feature = "native-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_tls_through_a_tls_terminator() {
    tokio::time::timeout(LIMIT, conversation_over_tls(TlsBackend::NativeTls))
        .await
        .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_fail_at_build() {
    let no_roots = Client::builder()
        .url("wss://localhost:1/ws")
        .token("alice")
        .tls_built_in_roots(false)
        .build()
        .await
        .expect_err("no roots");
    assert!(matches!(no_roots, ClientError::Tls(_)), "{no_roots:?}");
    let garbage = Certificate::from_der(b"not DER".to_vec());
    let bad = Client::builder()
        .url("wss://localhost:1/ws")
        .token("alice")
        .add_root_certificate(garbage)
        .build()
        .await
        .expect_err("bad root");
    assert!(matches!(bad, ClientError::Tls(_)), "{bad:?}");
}
