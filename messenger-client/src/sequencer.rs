//! Per-thread ordering: hands messages to the app strictly in seq order, each once.
//!
//! Pure state, no I/O: the driver feeds it live messages, history pages and the
//! server's `last_seq` per thread, and it answers with the messages to deliver now and
//! the history range to fetch (`after_seq`) when it sees a gap.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use messenger_core::{MessageId, ThreadId};

use crate::event::Message;

/// How many recent message ids each thread remembers for de-duplication.
const SEEN_CAP: usize = 512;

#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<MessageId>,
    set: HashSet<MessageId>,
}

impl Seen {
    fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: MessageId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > SEEN_CAP {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct ThreadSeq {
    /// The last seq handed to the app.
    last: u64,
    /// Messages past a gap, held until the gap is filled.
    held: BTreeMap<u64, Message>,
    seen: Seen,
    /// A history fill is in flight.
    filling: bool,
    /// Messages delivered since the current fill chain started.
    fill_progress: usize,
}

/// What the driver should do after feeding the sequencer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Step {
    /// Hand these to the app, in this order.
    pub deliver: Vec<Message>,
    /// Fetch history of the thread after this seq.
    pub fill_after: Option<u64>,
}

/// The ordering state of every thread the client has seen.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    threads: HashMap<ThreadId, ThreadSeq>,
}

impl Sequencer {
    /// The last seq handed to the app in `thread`, if the thread is known.
    pub fn position(&self, thread: &ThreadId) -> Option<u64> {
        self.threads.get(thread).map(|t| t.last)
    }

    /// Sets a starting position for a thread the sequencer does not know yet.
    pub fn start_at(&mut self, thread: &ThreadId, last: u64) {
        self.threads
            .entry(thread.clone())
            .or_insert_with(|| ThreadSeq {
                last,
                ..ThreadSeq::default()
            });
    }

    /// Moves a thread's position forward to `last` (known or not).
    pub fn advance_to(&mut self, thread: &ThreadId, last: u64) {
        let t = self.threads.entry(thread.clone()).or_default();
        if last > t.last {
            t.last = last;
        }
    }

    /// The server says `thread` ends at `server_last`: returns the seq to fetch after if
    /// the client is behind and no fill is in flight. Unknown threads start at 0.
    pub fn catch_up(&mut self, thread: &ThreadId, server_last: u64) -> Option<u64> {
        let t = self.threads.entry(thread.clone()).or_default();
        if server_last > t.last && !t.filling {
            t.filling = true;
            t.fill_progress = 0;
            Some(t.last)
        } else {
            None
        }
    }

    /// A live message (or the app's own, reconciled). Unknown threads start at 0.
    pub fn offer(&mut self, msg: Message) -> Step {
        let t = self.threads.entry(msg.thread_id.clone()).or_default();
        let mut step = Step::default();
        Self::accept(t, msg, &mut step.deliver);
        if !t.filling {
            if let Some((&first, _)) = t.held.first_key_value() {
                if first > t.last + 1 {
                    t.filling = true;
                    t.fill_progress = 0;
                    step.fill_after = Some(t.last);
                }
            }
        }
        step
    }

    /// A page of a fill for `thread` (ascending by seq).
    pub fn fill_page(&mut self, thread: &ThreadId, page: Vec<Message>, has_more: bool) -> Step {
        let t = self.threads.entry(thread.clone()).or_default();
        let mut step = Step::default();
        let got_any = !page.is_empty();
        for m in page {
            Self::accept(t, m, &mut step.deliver);
        }
        t.fill_progress += step.deliver.len();
        if has_more && got_any {
            step.fill_after = Some(t.last);
            return step;
        }
        t.filling = false;
        let gap = matches!(t.held.first_key_value(), Some((&first, _)) if first > t.last + 1);
        if gap {
            if t.fill_progress > 0 {
                // Messages appended while the fill was served: fetch again.
                t.filling = true;
                t.fill_progress = 0;
                step.fill_after = Some(t.last);
            } else {
                // History has nothing for the gap: never stall the thread behind it.
                tracing::warn!(thread = %thread, last = t.last, "history cannot fill a gap; skipping ahead");
                Self::skip_ahead(t, &mut step.deliver);
            }
        }
        step
    }

    /// A fill failed for good (e.g. the user left the thread): deliver what is held.
    pub fn fill_failed(&mut self, thread: &ThreadId) -> Step {
        let mut step = Step::default();
        if let Some(t) = self.threads.get_mut(thread) {
            t.filling = false;
            Self::skip_ahead(t, &mut step.deliver);
        }
        step
    }

    /// A fill was refused for now: forget it so the next catch-up starts it again.
    pub fn fill_aborted(&mut self, thread: &ThreadId) {
        if let Some(t) = self.threads.get_mut(thread) {
            t.filling = false;
        }
    }

    /// The connection dropped: fills in flight are lost (catch-up redoes them).
    pub fn connection_lost(&mut self) {
        for t in self.threads.values_mut() {
            t.filling = false;
        }
    }

    fn skip_ahead(t: &mut ThreadSeq, out: &mut Vec<Message>) {
        while let Some((&first, _)) = t.held.first_key_value() {
            t.last = first - 1;
            Self::drain(t, out);
        }
    }

    fn accept(t: &mut ThreadSeq, msg: Message, out: &mut Vec<Message>) {
        if msg.seq <= t.last || t.seen.contains(&msg.message_id) {
            return;
        }
        if msg.seq == t.last + 1 {
            t.seen.insert(msg.message_id);
            t.last = msg.seq;
            out.push(msg);
            Self::drain(t, out);
        } else {
            t.held.entry(msg.seq).or_insert(msg);
        }
    }

    fn drain(t: &mut ThreadSeq, out: &mut Vec<Message>) {
        while let Some(entry) = t.held.first_entry() {
            let seq = *entry.key();
            if seq <= t.last {
                entry.remove();
                continue;
            }
            if seq != t.last + 1 {
                break;
            }
            let m = entry.remove();
            if t.seen.contains(&m.message_id) {
                continue;
            }
            t.seen.insert(m.message_id);
            t.last = seq;
            out.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::UserId;

    fn t() -> ThreadId {
        ThreadId::new("t1").expect("id")
    }

    fn m(seq: u64) -> Message {
        Message {
            thread_id: t(),
            message_id: MessageId(1000 + seq),
            seq,
            sender_id: UserId::new("bob").expect("id"),
            text: format!("m{seq}"),
            sent_at: seq,
        }
    }

    fn seqs(v: &[Message]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut s = Sequencer::default();
        assert_eq!(seqs(&s.offer(m(1)).deliver), vec![1]);
        assert_eq!(seqs(&s.offer(m(2)).deliver), vec![2]);
        assert_eq!(s.offer(m(2)), Step::default());
        assert_eq!(s.offer(m(1)), Step::default());
        // Same id under another seq is still a duplicate.
        let mut dup = m(3);
        dup.message_id = MessageId(1002);
        assert!(s.offer(dup).deliver.is_empty());
        assert_eq!(s.position(&t()), Some(2));
    }

    #[test]
    fn gap_holds_then_fill_releases_in_order() {
        let mut s = Sequencer::default();
        s.start_at(&t(), 3);
        let step = s.offer(m(6));
        assert!(step.deliver.is_empty());
        assert_eq!(step.fill_after, Some(3));
        // A second message past the gap does not start a second fill.
        assert_eq!(s.offer(m(7)).fill_after, None);
        let step = s.fill_page(&t(), vec![m(4), m(5), m(6)], false);
        assert_eq!(seqs(&step.deliver), vec![4, 5, 6, 7]);
        assert_eq!(step.fill_after, None);
        assert_eq!(s.position(&t()), Some(7));
    }

    #[test]
    fn fill_pages_until_has_more_is_false() {
        let mut s = Sequencer::default();
        assert_eq!(s.catch_up(&t(), 5), Some(0));
        assert_eq!(s.catch_up(&t(), 5), None, "one fill at a time");
        let step = s.fill_page(&t(), vec![m(1), m(2)], true);
        assert_eq!(
            (seqs(&step.deliver), step.fill_after),
            (vec![1, 2], Some(2))
        );
        let step = s.fill_page(&t(), vec![m(3), m(4), m(5)], false);
        assert_eq!(
            (seqs(&step.deliver), step.fill_after),
            (vec![3, 4, 5], None)
        );
        assert_eq!(s.catch_up(&t(), 5), None, "up to date");
    }

    #[test]
    fn refills_when_more_arrived_and_skips_an_unfillable_gap() {
        let mut s = Sequencer::default();
        s.offer(m(1));
        assert_eq!(s.offer(m(3)).fill_after, Some(1));
        // Page got 2 and 3; meanwhile 5 arrived live: fill again from 3.
        s.offer(m(5));
        let step = s.fill_page(&t(), vec![m(2), m(3)], false);
        assert_eq!(
            (seqs(&step.deliver), step.fill_after),
            (vec![2, 3], Some(3))
        );
        // History has nothing more: skip ahead rather than stall.
        let step = s.fill_page(&t(), vec![], false);
        assert_eq!((seqs(&step.deliver), step.fill_after), (vec![5], None));
    }

    #[test]
    fn failed_fill_and_lost_connection() {
        let mut s = Sequencer::default();
        s.offer(m(1));
        assert_eq!(s.offer(m(4)).fill_after, Some(1));
        s.connection_lost();
        assert_eq!(s.catch_up(&t(), 4), Some(1), "catch-up redoes the fill");
        assert_eq!(seqs(&s.fill_failed(&t()).deliver), vec![4]);
    }

    #[test]
    fn seen_set_is_bounded() {
        let mut seen = Seen::default();
        for i in 0..(SEEN_CAP as u64 + 10) {
            seen.insert(MessageId(i));
        }
        assert_eq!(seen.set.len(), SEEN_CAP);
        assert!(!seen.contains(&MessageId(0)));
        assert!(seen.contains(&MessageId(SEEN_CAP as u64 + 9)));
    }
}
