//! Behaviour against a scripted WebSocket peer: what a real server never does on purpose.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use messenger_client::{BackoffConfig, Client, ClientError, Event};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WELCOME: &str =
    r#"{"type":"welcome","user_id":"alice","session_id":"s-1","server_time":1700000000000}"#;

fn backoff(max_retries: u32) -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        multiplier: 2.0,
        max_retries: Some(max_retries),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_welcomes_and_drops_counts_as_failing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let mut accepted = 0u32;
        while let Ok((tcp, _)) = listener.accept().await {
            accepted += 1;
            if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                let _ = ws.send(WsMessage::text(WELCOME)).await;
                let _ = ws.close(None).await;
            }
            if accepted == 3 {
                return accepted;
            }
        }
        accepted
    });
    let connect = Client::builder()
        .url(format!("ws://{addr}/ws"))
        .token("alice")
        .backoff(backoff(2))
        .connect();
    let err = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("bounded")
        .expect_err("never healthy");
    assert!(
        matches!(err, ClientError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(server.await.expect("server"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frames_are_ignored_and_a_non_welcome_first_frame_is_a_protocol_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        // First connection: a frame from a newer protocol, then a normal session.
        if let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                let _ = ws.send(WsMessage::text(WELCOME)).await;
                let _ = ws
                    .send(WsMessage::text(r#"{"type":"from_the_future","x":1}"#))
                    .await;
                while let Some(Ok(WsMessage::Text(t))) = ws.next().await {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                    let req = v["req_id"].clone();
                    let reply = match v["type"].as_str() {
                        Some("list_threads") => {
                            serde_json::json!({"type":"threads","req_id":req,"threads":[]})
                        }
                        _ => serde_json::json!({"type":"pong","req_id":req}),
                    };
                    let _ = ws.send(WsMessage::text(reply.to_string())).await;
                }
            }
        }
    });
    let connect = Client::builder()
        .url(format!("ws://{addr}/ws"))
        .token("alice")
        .backoff(backoff(0))
        .connect();
    let (client, mut events) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .expect("bounded")
        .expect("connects despite the unknown frame");
    client.ping().await.expect("still talking");
    client.close().await;
    while let Some(ev) = events.recv().await {
        assert!(matches!(ev, Event::Connection(_)), "{ev:?}");
    }

    // A peer whose first frame is not `welcome`.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                let _ = ws.send(WsMessage::text(r#"{"type":"pong"}"#)).await;
            }
        }
    });
    let err = Client::builder()
        .url(format!("ws://{addr}/ws"))
        .token("alice")
        .backoff(backoff(0))
        .connect()
        .await
        .expect_err("not a server");
    match err {
        ClientError::RetriesExhausted { last, .. } => {
            assert!(matches!(*last, ClientError::Protocol(_)), "{last:?}")
        }
        other => panic!("{other:?}"),
    }
}
