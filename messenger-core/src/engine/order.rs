//! Per-thread delivery order on one node.
//!
//! Messages of a thread reach a node from local sends and through the relay from other
//! nodes; two nodes may publish seq N and N+1 in either order. Each node keeps, per
//! recently active thread, the last seq it delivered. A message with the next seq is
//! delivered at once, together with any buffered successors; a message past a gap waits
//! up to the reorder window for the missing ones, then everything buffered is delivered
//! in seq order. A seq at or below the last one delivered (a late arrival) is delivered at
//! once: it is never dropped, and clients order by seq and de-duplicate by message id.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub(crate) struct OrderState {
    last: u64,
    pending: BTreeMap<u64, super::Delivery>,
    timer_armed: bool,
    pub(crate) touched: Instant,
}

pub(crate) enum Admit {
    /// Deliver this one now, then these (buffered successors), in this order.
    Deliver(super::Delivery, Vec<super::Delivery>),
    /// Buffered; the caller must arm the flush timer (first gap since the last flush).
    BufferedArmTimer,
    /// Buffered; a timer is already armed.
    Buffered,
}

impl OrderState {
    pub(crate) fn new() -> Self {
        OrderState {
            last: 0,
            pending: BTreeMap::new(),
            timer_armed: false,
            touched: Instant::now(),
        }
    }

    pub(crate) fn admit(&mut self, seq: u64, d: super::Delivery) -> Admit {
        self.touched = Instant::now();
        if self.last == 0 || seq <= self.last + 1 {
            if seq > self.last {
                self.last = seq;
            }
            // Successors are rare (a gap that just closed): no vector unless there are some.
            let mut then = Vec::new();
            while let Some(next) = self.pending.remove(&(self.last + 1)) {
                self.last += 1;
                then.push(next);
            }
            if self.pending.is_empty() {
                self.timer_armed = false;
            }
            return Admit::Deliver(d, then);
        }
        self.pending.insert(seq, d);
        if self.timer_armed {
            Admit::Buffered
        } else {
            self.timer_armed = true;
            Admit::BufferedArmTimer
        }
    }

    /// Gives up on the missing seqs: everything buffered, in order.
    pub(crate) fn flush(&mut self) -> Vec<super::Delivery> {
        self.timer_armed = false;
        let pending = std::mem::take(&mut self.pending);
        if let Some((&max, _)) = pending.iter().next_back() {
            self.last = self.last.max(max);
        }
        pending.into_values().collect()
    }

    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.touched)
    }

    pub(crate) fn is_quiet(&self) -> bool {
        self.pending.is_empty()
    }
}
