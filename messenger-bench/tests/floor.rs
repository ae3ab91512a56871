//! The floor relay answers a real client, and the scenarios run end to end against it.

use std::time::Duration;

use clap::Parser;
use futures::{SinkExt, StreamExt};
use messenger_bench::cli::Args;
use messenger_bench::client::{self, Target, Ws};
use messenger_bench::scenario::{self, Ctx};
use messenger_core::protocol::ServerFrame;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

async fn start_floor() -> (Target, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(messenger_bench::floor::serve(listener, stop.clone()));
    (
        Target::parse(&format!("ws://{addr}/ws")).expect("url"),
        stop,
    )
}

async fn next_frame(ws: &mut Ws) -> ServerFrame {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = m {
            return ServerFrame::decode(t.as_str()).expect("a protocol v1 frame");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_relays_between_a_pair() {
    let (target, stop) = start_floor().await;
    let cfg = client::ws_config(true);
    let t = Duration::from_secs(10);
    let mut alice = client::connect(&target, "alice", None, cfg, t)
        .await
        .expect("alice");
    let mut bob = client::connect(&target, "bob", None, cfg, t)
        .await
        .expect("bob");

    alice
        .send(Message::text(
            r#"{"type":"create_thread","req_id":1,"kind":"direct","members":["bob"]}"#,
        ))
        .await
        .expect("send");
    match next_frame(&mut alice).await {
        ServerFrame::Thread {
            thread_id,
            members,
            req_id,
            ..
        } => {
            assert_eq!(thread_id.as_str(), "dm:alice:bob");
            assert_eq!(members.len(), 2);
            assert!(req_id.is_some());
        }
        other => panic!("expected thread, got {other:?}"),
    }
    assert!(matches!(
        next_frame(&mut bob).await,
        ServerFrame::Thread { .. }
    ));

    alice
        .send(Message::text(
            r#"{"type":"send_message","req_id":"r2","thread_id":"dm:alice:bob","temp_id":"x1","text":"hi \"bob\""}"#,
        ))
        .await
        .expect("send");
    match next_frame(&mut alice).await {
        ServerFrame::MessageSent {
            temp_id,
            req_id,
            seq,
            ..
        } => {
            assert_eq!(temp_id, "x1");
            assert_eq!(
                req_id,
                Some(messenger_core::protocol::ReqId::Str("r2".into()))
            );
            assert!(seq > 0);
        }
        other => panic!("expected message_sent, got {other:?}"),
    }
    match next_frame(&mut bob).await {
        ServerFrame::ReceiveMessage {
            sender_id,
            text,
            thread_id,
            ..
        } => {
            assert_eq!(sender_id.as_str(), "alice");
            assert_eq!(text, "hi \"bob\"");
            assert_eq!(thread_id.as_str(), "dm:alice:bob");
        }
        other => panic!("expected receive_message, got {other:?}"),
    }
    bob.send(Message::text(r#"{"type":"ping","req_id":5}"#))
        .await
        .expect("send");
    assert!(matches!(
        next_frame(&mut bob).await,
        ServerFrame::Pong { .. }
    ));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_refuses_a_missing_token() {
    let (target, stop) = start_floor().await;
    let r = tokio_tungstenite::connect_async(format!("ws://{}/ws", target.authority)).await;
    assert!(r.is_err(), "an upgrade without a token must be refused");
    stop.cancel();
}

fn ctx(target: Target, argv: &[&str]) -> Ctx {
    let mut full = vec!["messenger-bench"];
    full.extend_from_slice(argv);
    Ctx {
        args: Args::try_parse_from(full).expect("args"),
        targets: vec![target],
        pids: Vec::new(),
        label: "floor",
        is_floor: true,
        run_id: "t".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_run_end_to_end_against_the_floor() {
    let (target, stop) = start_floor().await;
    for argv in [
        &[
            "pairs",
            "--pairs",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
        ][..],
        &[
            "pairs",
            "--pairs",
            "2",
            "--rate",
            "200",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
        ][..],
        &[
            "group",
            "--connections",
            "6",
            "--group-size",
            "3",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
        ][..],
    ] {
        let r = scenario::run(&ctx(target.clone(), argv))
            .await
            .expect("run");
        assert_eq!(r["errors"], 0, "{argv:?}: {r:?}");
        assert!(
            r["delivered"].as_u64().expect("delivered") > 0,
            "{argv:?}: {r:?}"
        );
        assert!(
            r["latency_us"]["p50"].as_f64().expect("p50") > 0.0,
            "{argv:?}: {r:?}"
        );
    }
    // biggroup: 2 500 members (creation in chunks of 1 000), 6 online, 2 senders; every
    // message reaches its last online member.
    let r = scenario::run(&ctx(
        target.clone(),
        &[
            "biggroup",
            "--group-size",
            "2500",
            "--online",
            "6",
            "--senders",
            "2",
            "--rate",
            "200",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
        ],
    ))
    .await
    .expect("biggroup");
    assert_eq!(r["errors"], 0, "{r:?}");
    assert_eq!(r["online"], 6, "{r:?}");
    assert!(
        r["last_member_samples"].as_u64().expect("samples") > 0,
        "{r:?}"
    );
    assert!(
        r["last_member_latency_us"]["max"].as_f64().expect("max")
            >= r["latency_us"]["p50"].as_f64().expect("p50"),
        "{r:?}"
    );
    let r = scenario::run(&ctx(
        target.clone(),
        &["idle", "--connections", "20", "--duration", "0.1"],
    ))
    .await
    .expect("idle");
    assert_eq!(r["connections"], 20, "{r:?}");
    let r = scenario::run(&ctx(
        target.clone(),
        &[
            "reconnect",
            "--connections",
            "4",
            "--jitter-ms",
            "50",
            "--duration",
            "10",
        ],
    ))
    .await
    .expect("reconnect");
    assert_eq!(r["caught_up"], 4, "{r:?}");
    stop.cancel();
}
