//! The little of protocol v1 the hot paths need, decoded without allocating: frames are
//! read into borrowed fields and every unknown field is skipped.
//!
//! The send instant travels in the message text as [`TIMESTAMP_LEN`] decimal digits of
//! nanoseconds since a process-local epoch, so the receiver needs no lookup to compute
//! the send-to-receive latency.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Instant;

use serde::Deserialize;

/// Digits of the timestamp at the start of every generated text.
pub const TIMESTAMP_LEN: usize = 20;

/// The fields of a server (or client) frame the benchmark looks at.
#[derive(Debug, Deserialize)]
pub struct Lite<'a> {
    /// The frame's `type`.
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    /// `thread_id`, on frames that have one.
    #[serde(borrow, default)]
    pub thread_id: Option<Cow<'a, str>>,
    /// `text` of `receive_message` / `send_message`.
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    /// `temp_id` of `send_message` / `message_sent`.
    #[serde(borrow, default)]
    pub temp_id: Option<Cow<'a, str>>,
    /// `seq` of `message_sent` / `receive_message`.
    #[serde(default)]
    pub seq: Option<u64>,
    /// `code` of `error`.
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    /// `req_id`, kept raw so it can be echoed verbatim.
    #[serde(borrow, default)]
    pub req_id: Option<&'a serde_json::value::RawValue>,
}

impl<'a> Lite<'a> {
    /// Decodes one frame.
    pub fn decode(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process-local epoch.
pub fn now_nanos() -> u64 {
    instant_nanos(Instant::now())
}

/// Nanoseconds from the process-local epoch to `t` (0 if `t` is before it).
pub fn instant_nanos(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// A message text of `len` bytes (at least [`TIMESTAMP_LEN`]) that starts with the
/// timestamp `nanos`. Only digits and `x`, so it needs no JSON escaping.
pub fn stamped_text(nanos: u64, len: usize) -> String {
    let mut s = format!("{nanos:0width$}", width = TIMESTAMP_LEN);
    while s.len() < len {
        s.push('x');
    }
    s
}

/// The timestamp at the start of a text made by [`stamped_text`].
pub fn parse_stamp(text: &str) -> Option<u64> {
    text.get(..TIMESTAMP_LEN)?.parse().ok()
}

/// A `send_message` frame. `thread_id`, `temp_id` and `text` must be JSON-safe (ids are
/// restricted to `A-Z a-z 0-9 _ . : -` by the protocol; texts come from
/// [`stamped_text`]), so they are written without escaping.
pub fn send_message(thread_id: &str, temp_id: &str, text: &str) -> String {
    debug_assert!([thread_id, temp_id, text]
        .iter()
        .all(|s| !s.contains(['"', '\\'])));
    format!(
        r#"{{"type":"send_message","thread_id":"{thread_id}","temp_id":"{temp_id}","text":"{text}"}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let t = stamped_text(123_456_789, 64);
        assert_eq!(t.len(), 64);
        assert_eq!(parse_stamp(&t), Some(123_456_789));
        assert_eq!(parse_stamp("12"), None);
        assert_eq!(parse_stamp("hello there, this is not a stamp"), None);
    }

    #[test]
    fn decodes_borrowed_and_ignores_unknown_fields() {
        let f = Lite::decode(
            r#"{"type":"receive_message","thread_id":"dm:a:b","message_id":"9","seq":3,"sender_id":"a","text":"00000000000000000042xx","sent_at":1,"extra":[1,{"x":2}]}"#,
        )
        .expect("decode");
        assert_eq!(f.ty, "receive_message");
        assert_eq!(f.seq, Some(3));
        assert_eq!(f.text.as_deref().and_then(parse_stamp), Some(42));
        let m = send_message("dm:a:b", "t-1", "hi");
        let f = Lite::decode(&m).expect("decode");
        assert_eq!(f.thread_id.as_deref(), Some("dm:a:b"));
        assert_eq!(f.temp_id.as_deref(), Some("t-1"));
        let f = Lite::decode(r#"{"type":"ping","req_id":"abc"}"#).expect("decode");
        assert_eq!(f.req_id.map(|r| r.get()), Some(r#""abc""#));
    }
}
