//! The SDK's frame handling driven by arbitrary server text (feature `fuzzing`, for
//! `fuzz/fuzz_targets/client_frames.rs`; not a public API).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use messenger_core::protocol::ServerFrame;
use messenger_core::{SessionId, ThreadId, UserId};
use tokio::time::Instant;

use super::core::Core;
use crate::config::Settings;
use crate::event::Event;
use crate::store::StoredState;

/// Feeds each text to a connected client core as a frame from the server (undecodable
/// texts are skipped, as the driver does), with time moving on between frames.
///
/// Panics when the core panics or when it breaks its contract with the app: the
/// messages it emits per thread must come in strictly increasing seq order, each once.
pub fn server_texts<'a>(texts: impl IntoIterator<Item = &'a str>) {
    let mut core = Core::new(
        Arc::new(Settings::new("ws://fuzz/ws".into())),
        StoredState::default(),
    );
    let Ok(me) = UserId::new("fuzz") else {
        return;
    };
    let mut now = Instant::now();
    if core.connected(me, SessionId::from_id(1), now).is_err() {
        return;
    }
    let mut emitted: HashMap<ThreadId, u64> = HashMap::new();
    for text in texts {
        if let Ok(frame) = ServerFrame::decode(text) {
            core.on_frame(frame, now);
        }
        now += Duration::from_millis(100);
        core.tick(now);
        for e in core.events.drain(..) {
            if let Event::Message(m) = e {
                let last = emitted.entry(m.thread_id.clone()).or_insert(0);
                assert!(
                    m.seq > *last,
                    "thread {}: seq {} emitted after {}",
                    m.thread_id,
                    m.seq,
                    last
                );
                *last = m.seq;
            }
        }
        core.out.clear();
    }
}
