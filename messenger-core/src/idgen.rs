//! Snowflake-style id generation.
//!
//! Layout of a 64-bit id (the top bit is always 0, so ids fit an `i64` too):
//!
//! | bits | field |
//! |---|---|
//! | 41 | milliseconds since [`EPOCH_MS`] (2024-01-01T00:00:00Z), good until 2093 |
//! | 10 | node id (0 to 1023) |
//! | 12 | sequence within the millisecond (0 to 4095) |
//!
//! Ids from one generator are unique and strictly increasing even when the wall clock
//! steps back: the generator keeps a logical clock that never goes below the last
//! timestamp it issued, and when a millisecond's 4096 sequence numbers are used up it
//! borrows the next millisecond instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::{MessageId, NodeId};
use crate::time::now_ms;
use crate::traits::IdGenerator;

/// The custom epoch: 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
const SEQ_BITS: u32 = 12;
const NODE_BITS: u32 = 10;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const TS_MASK: u64 = (1 << 41) - 1;

/// The parts of a Snowflake id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnowflakeParts {
    /// Unix milliseconds when the id was made (by the generator's logical clock).
    pub unix_ms: u64,
    /// The node that made it.
    pub node: u16,
    /// The sequence within the millisecond.
    pub sequence: u16,
}

/// Splits an id into its fields.
pub fn decompose(id: MessageId) -> SnowflakeParts {
    let v = id.get();
    SnowflakeParts {
        unix_ms: (v >> (SEQ_BITS + NODE_BITS)) + EPOCH_MS,
        node: ((v >> SEQ_BITS) & ((1 << NODE_BITS) - 1)) as u16,
        sequence: (v & SEQ_MASK) as u16,
    }
}

/// A lock-free Snowflake generator for one node.
#[derive(Debug)]
pub struct Snowflake {
    node: u64,
    /// `(logical ms since epoch) << 12 | sequence` of the last issued id.
    state: AtomicU64,
    clock: fn() -> u64,
}

impl Snowflake {
    /// A generator for `node` on the system clock.
    pub fn new(node: NodeId) -> Self {
        Self::with_clock(node, now_ms)
    }

    /// A generator with a custom clock returning Unix milliseconds (for tests).
    pub fn with_clock(node: NodeId, clock: fn() -> u64) -> Self {
        Snowflake {
            node: u64::from(node.get()),
            state: AtomicU64::new(0),
            clock,
        }
    }

    /// The next id.
    pub fn next(&self) -> MessageId {
        let now = (self.clock)().saturating_sub(EPOCH_MS) & TS_MASK;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let last_ts = cur >> SEQ_BITS;
            let next = if now > last_ts {
                now << SEQ_BITS
            } else {
                // Same millisecond, or the clock stepped back: continue the logical clock.
                // When the sequence overflows this carries into the timestamp field,
                // which borrows the next millisecond.
                cur + 1
            };
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ts = next >> SEQ_BITS;
                    let seq = next & SEQ_MASK;
                    return MessageId(
                        (ts << (SEQ_BITS + NODE_BITS)) | (self.node << SEQ_BITS) | seq,
                    );
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

impl IdGenerator for Snowflake {
    fn next_id(&self) -> MessageId {
        self.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64 as A;

    static FAKE_NOW: A = A::new(0);
    fn fake_clock() -> u64 {
        FAKE_NOW.load(Ordering::SeqCst)
    }

    #[test]
    fn increasing_and_decomposable() {
        let g = Snowflake::new(NodeId::new(7).unwrap());
        let mut last = g.next();
        for _ in 0..100_000 {
            let id = g.next();
            assert!(id > last);
            last = id;
        }
        let p = decompose(last);
        assert_eq!(p.node, 7);
        assert!(p.unix_ms.abs_diff(now_ms()) < 60_000);
    }

    #[test]
    fn clock_stepping_back_and_sequence_overflow() {
        FAKE_NOW.store(EPOCH_MS + 1_000_000, Ordering::SeqCst);
        let g = Snowflake::with_clock(NodeId::new(1023).unwrap(), fake_clock);
        let mut last = g.next();
        // 10_000 ids in one frozen millisecond overflow the 12-bit sequence twice.
        for _ in 0..10_000 {
            let id = g.next();
            assert!(id > last);
            last = id;
        }
        // The wall clock steps back by ten seconds.
        FAKE_NOW.store(EPOCH_MS + 990_000, Ordering::SeqCst);
        for _ in 0..10_000 {
            let id = g.next();
            assert!(
                id > last,
                "ids must keep increasing after the clock steps back"
            );
            assert_eq!(decompose(id).node, 1023);
            last = id;
        }
    }

    #[test]
    fn unique_across_threads() {
        let g = std::sync::Arc::new(Snowflake::new(NodeId::new(3).unwrap()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..50_000).map(|_| g.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<MessageId> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
