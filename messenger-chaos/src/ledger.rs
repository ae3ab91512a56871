//! What each client did and saw, and the checks run on it after the faults.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use messenger_client::{AckStatus, Event, Message, MessageId, ThreadId, UserId};

/// One client's record: its sends (by temp id), what `message_sent` confirmed, the
/// messages it received, the receipts it saw, and a log of everything per thread.
#[derive(Debug, Default)]
pub struct Ledger {
    /// temp id -> (thread, text) of every message the app enqueued.
    pub enqueued: HashMap<String, (ThreadId, String)>,
    /// temp id -> (seq, message id) from `message_sent`.
    pub sent: HashMap<String, (u64, MessageId)>,
    /// temp ids refused for good.
    pub failed: Vec<(String, String)>,
    /// thread -> messages received, in arrival order.
    pub received: BTreeMap<ThreadId, Vec<(u64, MessageId)>>,
    /// (thread, user, status) -> receipt seqs in arrival order.
    pub receipts: BTreeMap<(ThreadId, UserId, &'static str), Vec<u64>>,
    /// thread -> log lines (time since start, what happened).
    pub log: BTreeMap<ThreadId, Vec<String>>,
    /// Connection changes (time since start, state).
    pub connections: Vec<String>,
}

impl Ledger {
    /// Records an event of the client's stream.
    pub fn event(&mut self, t0: Instant, e: &Event) {
        let at = t0.elapsed().as_millis();
        match e {
            Event::Message(m) => {
                self.received
                    .entry(m.thread_id.clone())
                    .or_default()
                    .push((m.seq, m.message_id));
                self.note(
                    &m.thread_id,
                    format!(
                        "{at}ms recv seq {} id {} from {}",
                        m.seq, m.message_id, m.sender_id
                    ),
                );
            }
            Event::Sent(s) => {
                self.sent.insert(s.temp_id.clone(), (s.seq, s.message_id));
                self.note(
                    &s.thread_id,
                    format!(
                        "{at}ms sent {} -> seq {} id {}",
                        s.temp_id, s.seq, s.message_id
                    ),
                );
            }
            Event::SendFailed(f) => {
                self.failed.push((f.temp_id.clone(), f.error.to_string()));
                self.note(
                    &f.thread_id,
                    format!("{at}ms send {} FAILED: {}", f.temp_id, f.error),
                );
            }
            Event::Receipt(r) => {
                let status = match r.status {
                    AckStatus::Delivered => "DELIVERED",
                    _ => "READ",
                };
                self.receipts
                    .entry((r.thread_id.clone(), r.user_id.clone(), status))
                    .or_default()
                    .push(r.seq);
                self.note(
                    &r.thread_id,
                    format!("{at}ms receipt {status} {} seq {}", r.user_id, r.seq),
                );
            }
            Event::Connection(c) => self.connections.push(format!("{at}ms {c:?}")),
            _ => {}
        }
    }

    /// Records an enqueued send.
    pub fn enqueue(&mut self, t0: Instant, thread: &ThreadId, temp_id: &str, text: &str) {
        self.enqueued
            .insert(temp_id.to_string(), (thread.clone(), text.to_string()));
        let at = t0.elapsed().as_millis();
        self.note(thread, format!("{at}ms enqueue {temp_id} {text:?}"));
    }

    fn note(&mut self, thread: &ThreadId, line: String) {
        self.log.entry(thread.clone()).or_default().push(line);
    }

    /// The highest seq received in `thread`.
    pub fn max_received(&self, thread: &ThreadId) -> u64 {
        self.received
            .get(thread)
            .and_then(|v| v.iter().map(|(s, _)| *s).max())
            .unwrap_or(0)
    }

    /// The last `n` log lines of `thread`.
    pub fn tail(&self, thread: &ThreadId, n: usize) -> String {
        let mut out = String::new();
        if let Some(l) = self.log.get(thread) {
            for line in l.iter().skip(l.len().saturating_sub(n)) {
                let _ = writeln!(out, "      {line}");
            }
        }
        out
    }
}

/// A broken guarantee: what, where, and the events that lead to it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The guarantee.
    pub what: String,
    /// The thread.
    pub thread: Option<ThreadId>,
    /// The details: seqs, ids, and the ledger lines before it.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.thread {
            Some(t) => writeln!(f, "VIOLATION [{t}] {}", self.what)?,
            None => writeln!(f, "VIOLATION {}", self.what)?,
        }
        write!(f, "{}", self.detail)
    }
}

/// Checks one thread: `history` (the whole thread as the server has it) against every
/// member's ledger. Returns the violations found.
pub fn check_thread(
    thread: &ThreadId,
    history: &[Message],
    members: &[(&UserId, &Ledger)],
) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut bad = |what: String, detail: String| {
        v.push(Violation {
            what,
            thread: Some(thread.clone()),
            detail,
        })
    };
    // 1. History: seqs 1..N without gaps or repeats, ids and texts once each.
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    let n = history.len() as u64;
    if seqs != (1..=n).collect::<Vec<_>>() {
        let gaps: Vec<String> = seqs
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| format!("{}->{}", w[0], w[1]))
            .collect();
        bad(
            "history seqs are not 1..N without gaps".into(),
            format!("    {} messages; breaks at {}\n", n, gaps.join(", ")),
        );
    }
    let mut ids = HashSet::new();
    let mut texts: HashMap<&str, Vec<u64>> = HashMap::new();
    for m in history {
        if !ids.insert(m.message_id) {
            bad(
                "a message id appears twice in history".into(),
                format!("    id {} at seq {}\n", m.message_id, m.seq),
            );
        }
        texts.entry(m.text.as_str()).or_default().push(m.seq);
    }
    for (text, at) in &texts {
        if at.len() > 1 {
            bad(
                "a send is stored twice (same sender and temp id)".into(),
                format!("    {text:?} at seqs {at:?}\n"),
            );
        }
    }
    let by_seq: HashMap<u64, &Message> = history.iter().map(|m| (m.seq, m)).collect();
    for (user, ledger) in members {
        // 2. Every send confirmed by message_sent is in history once, at its seq.
        for (temp, (t, text)) in &ledger.enqueued {
            if t != thread {
                continue;
            }
            let stored = texts.get(text.as_str());
            match (ledger.sent.get(temp), stored) {
                (Some((seq, id)), Some(at)) => {
                    let m = by_seq.get(seq);
                    if at != &vec![*seq] || m.map(|m| m.message_id) != Some(*id) {
                        bad(
                            format!("{user}'s confirmed send is not in history at its seq"),
                            format!(
                                "    temp {temp} {text:?}: message_sent seq {seq} id {id}; history has it at {at:?}\n{}",
                                ledger.tail(thread, 12)
                            ),
                        );
                    }
                }
                (Some((seq, id)), None) => bad(
                    format!("{user}'s confirmed send is missing from history"),
                    format!(
                        "    temp {temp} {text:?}: message_sent seq {seq} id {id}\n{}",
                        ledger.tail(thread, 12)
                    ),
                ),
                (None, _) => bad(
                    format!("{user}'s send was never confirmed (outbox not drained)"),
                    format!("    temp {temp} {text:?}\n{}", ledger.tail(thread, 12)),
                ),
            }
        }
        // 3. Every member received each message exactly once, with its id.
        let got = ledger.received.get(thread).cloned().unwrap_or_default();
        let mut count: BTreeMap<u64, u32> = BTreeMap::new();
        for (seq, id) in &got {
            *count.entry(*seq).or_default() += 1;
            if by_seq.get(seq).map(|m| m.message_id) != Some(*id) {
                bad(
                    format!("{user} received a message that is not history's at that seq"),
                    format!("    seq {seq} id {id}\n{}", ledger.tail(thread, 12)),
                );
            }
        }
        let missing: Vec<u64> = (1..=n).filter(|s| !count.contains_key(s)).collect();
        let doubled: Vec<u64> = count
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(s, _)| *s)
            .collect();
        if !missing.is_empty() || !doubled.is_empty() {
            bad(
                format!("{user} did not receive every message exactly once"),
                format!(
                    "    missing seqs {missing:?}, received twice {doubled:?} (history 1..={n})\n{}",
                    ledger.tail(thread, 16)
                ),
            );
        }
        let order: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        if order.windows(2).any(|w| w[1] <= w[0]) {
            bad(
                format!("{user} received messages out of seq order"),
                format!("    arrival order {order:?}\n"),
            );
        }
        // 4. Watermarks (receipts) never move backwards.
        for ((t, who, status), seqs) in &ledger.receipts {
            if t != thread {
                continue;
            }
            if seqs.windows(2).any(|w| w[1] < w[0]) {
                bad(
                    format!("{status} watermark of {who} moved backwards as seen by {user}"),
                    format!(
                        "    receipt seqs in arrival order {seqs:?}\n{}",
                        ledger.tail(thread, 16)
                    ),
                );
            }
        }
    }
    v
}
