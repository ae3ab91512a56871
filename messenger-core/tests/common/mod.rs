//! Test harness: engines over the in-memory adapters and clients that read outboxes.
#![allow(dead_code)]

use std::time::Duration;

use messenger_core::engine::{
    Adapters, CloseReason, Engine, EngineConfig, OutboxItem, Session, SessionHandle,
};
use messenger_core::protocol::ServerFrame;
use messenger_core::{NodeId, UserId};
use messenger_storage_mem::MemBackend;
use serde_json::Value;

/// Engine settings for tests: a short presence grace so offline shows quickly.
pub fn config(node: u16) -> EngineConfig {
    let mut c = EngineConfig::with_node(NodeId::new(node).expect("node"));
    c.presence_grace = Duration::from_millis(200);
    c
}

/// One engine on a fresh in-memory backend.
pub async fn engine() -> (Engine, MemBackend) {
    let backend = MemBackend::new();
    let e = Engine::start(config(1), backend.adapters(NodeId::new(1).expect("node")))
        .await
        .expect("engine starts");
    (e, backend)
}

/// An engine over given adapters.
pub async fn engine_with(adapters: Adapters, config: EngineConfig) -> Engine {
    Engine::start(config, adapters)
        .await
        .expect("engine starts")
}

/// A connected test client.
pub struct Client {
    pub engine: Engine,
    pub handle: SessionHandle,
    pub session: Session,
    pub user: UserId,
}

pub fn uid(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

impl Client {
    /// Connects and consumes `welcome`.
    pub async fn connect(engine: &Engine, user: &str) -> Client {
        let session = engine.connect(uid(user)).await.expect("connect");
        let mut c = Client {
            engine: engine.clone(),
            handle: session.handle.clone(),
            session,
            user: uid(user),
        };
        match c.recv().await {
            ServerFrame::Welcome { user_id, .. } => assert_eq!(user_id.as_str(), user),
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    /// Sends a JSON frame.
    pub async fn send(&self, v: Value) {
        self.engine.handle_text(&self.handle, &v.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_raw(&self, text: &str) {
        self.engine.handle_text(&self.handle, text).await;
    }

    /// The next frame (fails after 2 s).
    pub async fn recv(&mut self) -> ServerFrame {
        match tokio::time::timeout(Duration::from_secs(2), self.session.outbox.recv()).await {
            Ok(Some(OutboxItem::Frame(out))) => {
                let text = std::str::from_utf8(&out.frame).expect("utf-8");
                ServerFrame::decode(text).unwrap_or_else(|e| panic!("bad frame {text}: {e}"))
            }
            Ok(Some(OutboxItem::Close(r))) => panic!("{}: session closed: {r:?}", self.user),
            Ok(None) => panic!("{}: outbox ended", self.user),
            Err(_) => panic!("{}: no frame within 2 s", self.user),
        }
    }

    /// The next item, frame or close, within `d`.
    pub async fn next_item(&mut self, d: Duration) -> Option<OutboxItem> {
        tokio::time::timeout(d, self.session.outbox.recv())
            .await
            .ok()
            .flatten()
    }

    /// Asserts that nothing arrives within 150 ms.
    pub async fn assert_silent(&mut self) {
        if let Some(item) = self.next_item(Duration::from_millis(150)).await {
            panic!("{}: expected silence, got {item:?}", self.user);
        }
    }

    /// Whether the engine asked to close this session as a slow consumer.
    pub fn kicked(&self) -> Option<CloseReason> {
        self.handle.close_reason()
    }

    /// Sends and expects an error with `code`; returns the message.
    pub async fn expect_error(&mut self, v: Value, code: &str) -> String {
        self.send(v).await;
        match self.recv().await {
            ServerFrame::Error {
                code: c, message, ..
            } => {
                assert_eq!(c, code, "message: {message}");
                message
            }
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    pub async fn disconnect(self) {
        self.engine.disconnect(&self.handle).await;
    }
}

/// Polls `cond` every millisecond until it holds; fails after 5 s.
pub async fn eventually(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
