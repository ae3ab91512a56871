//! `MessageStore` over the messages table, schema v2. See `docs/hbase-schema.md`.
//!
//! A thread's messages live in block rows of [`BLOCK`] seqs, one cell per message. One
//! `checkAndPut` on a block row claims a run of seqs *and* writes those messages, on the
//! condition that the block's last seq (`h:l`) is still the one the appender saw: the
//! claim and the messages are one atomic row write, so a seq is never claimed without
//! its message and a batch's seqs are consecutive, whatever other processes do.
//!
//! Idempotency rows ((thread, sender, temp_id) -> seq) and id rows are written after
//! the claim ("bookkeeping"), coalesced with other threads' into one `putMultiple`. The
//! head row's bookkeeping watermark (`h:x`) says up to which seq they are complete;
//! messages after it are checked directly (read from their block rows), which is what
//! makes a crash between claim and bookkeeping harmless: the next appender of the
//! thread, in any process, sees those messages, de-duplicates against them and writes
//! their bookkeeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use messenger_core::model::{
    check_batch, Appended, HistoryPage, HistoryQuery, NewMessage, StoredMessage,
};
use messenger_core::{Error, ErrorKind, MessageId, MessageStore, Result, ThreadId, UserId};

use crate::client::Idempotent;
use crate::gen::hbase::{TColumn, TGet, TResult, TTHBaseServiceSyncClient};
use crate::schema::*;
use crate::HBaseStore;

/// Threads whose state is cached per shard of the state map (64 shards); when a shard is
/// full, idle entries are dropped.
const MAX_STATES_PER_SHARD: usize = 2048;
/// Block rows per scan call when walking a thread.
const PAGE_ROWS: usize = 64;
/// Lost claims in a row before an append gives up with `conflict` (each loss means
/// another appender of the thread made progress).
const MAX_CLAIM_ROUNDS: u32 = 1000;
/// After a lost claim, the seqs read right after ours (with the block's `h:l`) by one
/// coalesced get, before falling back to a scan: another process's batch rarely holds
/// more.
const LOSS_PEEK: u64 = 32;

/// What this process knows of one thread. Only the thread's appends in this process
/// touch it, one at a time (its mutex).
#[derive(Debug)]
pub(crate) struct ThreadState {
    /// The thread's last seq when this process last looked: a lower bound, exact right
    /// after a claim of ours succeeded.
    last: u64,
    /// Every seq up to here has its idempotency and id rows written.
    done: u64,
    /// The `h:x` this process last wrote (the head row lags `done` by one call).
    written_done: u64,
    /// The messages in `(done, last]`, ascending: checked directly for duplicates and
    /// written to the idempotency and id rows by the next bookkeeping.
    recent: Vec<StoredMessage>,
}

impl ThreadState {
    fn find(&self, sender: &UserId, temp_id: &str) -> Option<&StoredMessage> {
        self.recent
            .iter()
            .find(|m| m.sender_id == *sender && m.temp_id == temp_id)
    }
}

/// A thread's state behind its lock; `None` until loaded (or after an error).
pub(crate) type StateSlot = Arc<tokio::sync::Mutex<Option<ThreadState>>>;

/// One block row as read.
struct Block {
    number: u64,
    /// `h:l`, the block's last seq (absent when the row was read without family `h`).
    last: Option<u64>,
    /// Its messages, ascending by seq.
    messages: Vec<StoredMessage>,
}

enum Claim {
    Won,
    Lost,
}

fn cell<'a>(r: &'a TResult, family: &[u8], qualifier: &[u8]) -> Option<&'a [u8]> {
    r.column_values
        .iter()
        .find(|c| c.family == family && c.qualifier == qualifier)
        .map(|c| c.value.as_slice())
}

fn cell_u64(r: &TResult, family: &[u8], qualifier: &[u8]) -> Option<u64> {
    cell(r, family, qualifier).and_then(bytes_u64)
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt HBase message row: {what}"))
}

fn to_message(thread: &ThreadId, seq: u64, value: &[u8]) -> Result<StoredMessage> {
    let r = decode_record(value).ok_or_else(|| corrupt(format!("record at seq {seq}")))?;
    let text = |b: &[u8], what: &str| {
        String::from_utf8(b.to_vec()).map_err(|_| corrupt(format!("{what} at seq {seq}")))
    };
    Ok(StoredMessage {
        thread_id: thread.clone(),
        seq,
        message_id: MessageId(r.message_id),
        sender_id: UserId::new(text(r.sender, "sender")?)
            .map_err(|_| corrupt(format!("sender at seq {seq}")))?,
        temp_id: text(r.temp_id, "temp_id")?,
        text: text(r.text, "text")?,
        sent_at: r.sent_at,
    })
}

fn parse_block(thread: &ThreadId, prefix: &[u8], r: &TResult) -> Result<Block> {
    let number = r
        .row
        .as_deref()
        .and_then(|k| block_of_key(prefix, k))
        .ok_or_else(|| corrupt("block row key"))?;
    let mut messages = Vec::new();
    for c in &r.column_values {
        if c.family == FAM_MSG {
            let seq = bytes_u64(&c.qualifier).ok_or_else(|| corrupt("cell qualifier"))?;
            messages.push(to_message(thread, seq, &c.value)?);
        }
    }
    messages.sort_by_key(|m| m.seq);
    Ok(Block {
        number,
        last: cell_u64(r, FAM_HEAD, COL_LAST),
        messages,
    })
}

fn stored(m: &NewMessage, seq: u64) -> StoredMessage {
    StoredMessage {
        thread_id: m.thread_id.clone(),
        seq,
        message_id: m.message_id,
        sender_id: m.sender_id.clone(),
        temp_id: m.temp_id.clone(),
        text: m.text.clone(),
        sent_at: m.sent_at,
    }
}

fn duplicate(m: &StoredMessage) -> Appended {
    Appended {
        message: m.clone(),
        duplicate: true,
    }
}

impl HBaseStore {
    fn msg_table(&self) -> Vec<u8> {
        self.inner.tables.messages.clone()
    }

    fn state_slot(&self, t: &ThreadId) -> StateSlot {
        let mut shard = self.inner.states.shard(t);
        if let Some(s) = shard.get(t) {
            return s.clone();
        }
        if shard.len() >= MAX_STATES_PER_SHARD {
            shard.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let s = StateSlot::default();
        shard.insert(t.clone(), s.clone());
        s
    }

    async fn get_rows(&self, gets: Vec<TGet>) -> Result<Vec<TResult>> {
        self.inner
            .coalesce
            .get(&self.inner.tables.messages, gets)
            .await
    }

    async fn scan(
        &self,
        what: &'static str,
        start: Vec<u8>,
        stop: Vec<u8>,
        columns: Option<Vec<TColumn>>,
        reversed: bool,
        limit: usize,
    ) -> Result<Vec<TResult>> {
        let table = self.msg_table();
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let scan = tscan(start, stop, columns, reversed, limit);
        self.inner
            .pool
            .call(what, Idempotent::Yes, move |c| {
                c.get_scanner_results(table.clone(), scan.clone(), limit)
            })
            .await
    }

    /// Block rows of `t` from block `from` upwards, at most `rows` of them.
    async fn blocks_from(
        &self,
        what: &'static str,
        t: &ThreadId,
        from: u64,
        rows: usize,
        with_head: bool,
    ) -> Result<Vec<Block>> {
        let prefix = block_prefix(t);
        let columns = (!with_head).then(|| vec![col(FAM_MSG)]);
        let rows = self
            .scan(
                what,
                block_key(t, from),
                prefix_end(&prefix),
                columns,
                false,
                rows,
            )
            .await?;
        rows.iter().map(|r| parse_block(t, &prefix, r)).collect()
    }

    /// Block rows of `t` from block `from` downwards (newest first), at most `rows`.
    async fn blocks_down_from(&self, t: &ThreadId, from: u64, rows: usize) -> Result<Vec<Block>> {
        let prefix = block_prefix(t);
        let rows = self
            .scan(
                "fetch backwards",
                block_key(t, from),
                prefix.clone(),
                Some(vec![col(FAM_MSG)]),
                true,
                rows,
            )
            .await?;
        rows.iter().map(|r| parse_block(t, &prefix, r)).collect()
    }

    /// The messages at `seqs` of `t` (one `getMultiple` of their block rows, only those
    /// cells), by seq. Absent ones are missing from the map.
    async fn messages_at(&self, t: &ThreadId, seqs: &[u64]) -> Result<HashMap<u64, StoredMessage>> {
        let mut by_block: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &s in seqs {
            by_block.entry(block_of(s)).or_default().push(s);
        }
        let gets: Vec<TGet> = by_block
            .iter()
            .map(|(b, seqs)| {
                let cols = seqs
                    .iter()
                    .map(|s| col_q(FAM_MSG, &seq_qualifier(*s)))
                    .collect();
                tget(block_key(t, *b), Some(cols))
            })
            .collect();
        let prefix = block_prefix(t);
        let mut out = HashMap::new();
        for r in self.get_rows(gets).await? {
            if r.column_values.is_empty() {
                continue;
            }
            for m in parse_block(t, &prefix, &r)?.messages {
                out.insert(m.seq, m);
            }
        }
        Ok(out)
    }

    /// The head row's bookkeeping watermark of each thread.
    async fn done_marks(&self, threads: &[ThreadId]) -> Result<Vec<u64>> {
        let gets = threads
            .iter()
            .map(|t| tget(head_key(t), Some(vec![col_q(FAM_HEAD, COL_DONE)])))
            .collect();
        Ok(self
            .get_rows(gets)
            .await?
            .iter()
            .map(|r| cell_u64(r, FAM_HEAD, COL_DONE).unwrap_or(0))
            .collect())
    }

    /// Reads the thread's messages after `st.last` into `st.recent` and moves `st.last`
    /// to the thread's last seq.
    async fn catch_up(&self, t: &ThreadId, st: &mut ThreadState) -> Result<()> {
        let mut from = block_of(st.last + 1);
        loop {
            let blocks = self
                .blocks_from("read new messages", t, from, PAGE_ROWS, true)
                .await?;
            for b in &blocks {
                for m in &b.messages {
                    if m.seq > st.last {
                        st.last = m.seq;
                        st.recent.push(m.clone());
                    }
                }
                // `h:l` is authoritative (cells may have expired under a TTL).
                st.last = st.last.max(b.last.unwrap_or(0));
                from = b.number + 1;
            }
            if blocks.len() < PAGE_ROWS {
                return Ok(());
            }
        }
    }

    /// [`catch_up`](Self::catch_up) after a lost claim, usually without a scan: one get
    /// of the block row holding `st.last + 1`, only its `h:l` and the cells of the next
    /// [`LOSS_PEEK`] seqs, coalesced with other threads' reads. When the winner wrote
    /// more than that, or a cell is missing (expired under a TTL), it scans as
    /// `catch_up` does. A winner that went on into the next block is found by the next
    /// claim, which loses again.
    async fn catch_up_after_loss(&self, t: &ThreadId, st: &mut ThreadState) -> Result<()> {
        let first = st.last + 1;
        let block = block_of(first);
        let (_, block_end) = block_bounds(block);
        let peek_end = st.last.saturating_add(LOSS_PEEK).min(block_end);
        let mut cols = vec![col_q(FAM_HEAD, COL_LAST)];
        cols.extend((first..=peek_end).map(|s| col_q(FAM_MSG, &seq_qualifier(s))));
        let rows = self
            .get_rows(vec![tget(block_key(t, block), Some(cols))])
            .await?;
        let Some(r) = rows.first().filter(|r| !r.column_values.is_empty()) else {
            return self.catch_up(t, st).await;
        };
        let b = parse_block(t, &block_prefix(t), r)?;
        let Some(last) = b.last.filter(|&l| l > st.last && l <= peek_end) else {
            return self.catch_up(t, st).await;
        };
        let new: Vec<StoredMessage> = b
            .messages
            .into_iter()
            .filter(|m| m.seq > st.last && m.seq <= last)
            .collect();
        let contiguous =
            new.len() as u64 == last - st.last && new.iter().zip(first..).all(|(m, s)| m.seq == s);
        if !contiguous {
            return self.catch_up(t, st).await;
        }
        st.recent.extend(new);
        st.last = last;
        Ok(())
    }

    /// A thread's state from HBase: the bookkeeping watermark, then every message after
    /// it. The watermark is read before anything that relies on it (the idempotency rows
    /// are read after this returns), so every row it vouches for is visible.
    async fn load_state(&self, t: &ThreadId) -> Result<ThreadState> {
        let done = self
            .done_marks(std::slice::from_ref(t))
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        let mut st = ThreadState {
            last: done,
            done,
            written_done: done,
            recent: Vec::new(),
        };
        self.catch_up(t, &mut st).await?;
        Ok(st)
    }

    /// One conditional write of block row `block_of(last + 1)`: `msgs` (which fit in
    /// that block) at seqs `last+1 ..`, and `h:l` moved to the last of them, if `h:l` is
    /// still `last` (or absent, when `last + 1` starts the block).
    async fn claim(&self, t: &ThreadId, last: u64, msgs: &[&NewMessage]) -> Result<Claim> {
        let first_seq = last + 1;
        let block = block_of(first_seq);
        let row = block_key(t, block);
        let end = last + msgs.len() as u64;
        let mut cells = Vec::with_capacity(msgs.len() + 1);
        cells.push(cv(FAM_HEAD, COL_LAST, u64_bytes(end)));
        for (k, m) in msgs.iter().enumerate() {
            cells.push(cv(
                FAM_MSG,
                &seq_qualifier(first_seq + k as u64),
                encode_record(m.message_id, m.sent_at, &m.sender_id, &m.temp_id, &m.text),
            ));
        }
        let expected = if first_seq == block_bounds(block).0 {
            Vec::new() // "absent": nothing is in this block yet
        } else {
            u64_bytes(last)
        };
        let (table, r) = (self.msg_table(), row.clone());
        let put = tput(row.clone(), cells);
        let sent = self
            .inner
            .pool
            .call("claim seqs", Idempotent::No, move |c| {
                c.check_and_put(
                    table.clone(),
                    r.clone(),
                    FAM_HEAD.to_vec(),
                    COL_LAST.to_vec(),
                    expected.clone(),
                    put.clone(),
                )
            })
            .await;
        match sent {
            Ok(true) => Ok(Claim::Won),
            Ok(false) => Ok(Claim::Lost),
            // The outcome is unknown (the connection broke after the request left): the
            // write was atomic, so the first cell tells. If it landed later, the caller's
            // catch-up finds our own messages by id.
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                let mine = msgs.first().map(|m| m.message_id);
                let got = self.messages_at(t, &[first_seq]).await.map_err(|_| e)?;
                if got.get(&first_seq).map(|m| m.message_id) == mine {
                    Ok(Claim::Won)
                } else {
                    Ok(Claim::Lost)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the idempotency and id rows of every message in `st.recent`, and the head
    /// row's watermark as confirmed by the previous call, in one (coalesced)
    /// `putMultiple`. On success everything up to `st.last` is done. A failure is only
    /// logged: the messages are durable, and the next append repeats the bookkeeping.
    async fn bookkeep(&self, t: &ThreadId, st: &mut ThreadState) {
        if st.recent.is_empty() && st.written_done == st.done {
            return;
        }
        let mut puts = Vec::with_capacity(2 * st.recent.len() + 1);
        for m in &st.recent {
            puts.push(tput(
                dedup2_key(t, &m.sender_id, &m.temp_id),
                vec![
                    cv(FAM_MSG, COL_SEQ, u64_bytes(m.seq)),
                    cv(FAM_MSG, COL_ID, u64_bytes(m.message_id.get())),
                ],
            ));
            puts.push(tput(
                id2_key(t, m.message_id),
                vec![cv(FAM_MSG, COL_SEQ, u64_bytes(m.seq))],
            ));
        }
        // Only a watermark whose rows are known written goes out, and never in the same
        // call as those rows (a partly failed putMultiple could land it without them).
        // Its cell timestamp is the watermark: with one version kept the highest wins,
        // whatever order processes write in.
        let confirmed = st.done;
        if confirmed > st.written_done {
            puts.push(tput(
                head_key(t),
                vec![cv_at(
                    FAM_HEAD,
                    COL_DONE,
                    u64_bytes(confirmed),
                    confirmed as i64,
                )],
            ));
        }
        match self
            .inner
            .coalesce
            .put(&self.inner.tables.messages, puts)
            .await
        {
            Ok(()) => {
                st.written_done = st.written_done.max(confirmed);
                st.done = st.last;
                st.recent.clear();
            }
            Err(e) => {
                tracing::warn!(thread = %t, error = %e,
                    "messages stored, idempotency rows not yet written: the next append of the thread writes them");
            }
        }
    }

    /// The append of one batch, with the thread's state locked.
    async fn append_locked(
        &self,
        t: &ThreadId,
        slot: &mut Option<ThreadState>,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>> {
        if slot.is_none() {
            *slot = Some(self.load_state(t).await?);
        }
        let Some(st) = slot.as_mut() else {
            return Err(Error::internal("thread state vanished"));
        };
        let n = batch.len();
        let mut out: Vec<Option<Appended>> = vec![None; n];
        // 1. Repeats inside the batch, and messages this process knows of.
        let mut first_of: HashMap<(&UserId, &str), usize> = HashMap::new();
        let mut repeat_of: Vec<Option<usize>> = vec![None; n];
        let mut unknown = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let key = (&m.sender_id, m.temp_id.as_str());
            if let Some(&j) = first_of.get(&key) {
                repeat_of[i] = Some(j);
                continue;
            }
            first_of.insert(key, i);
            match st.find(&m.sender_id, &m.temp_id) {
                Some(orig) => out[i] = Some(duplicate(orig)),
                None => unknown.push(i),
            }
        }
        // 2. The idempotency rows of the rest, in one getMultiple (coalesced with other
        //    threads'). They cover every seq up to `st.done`; `st.recent` covers the rest.
        if !unknown.is_empty() {
            let gets = unknown
                .iter()
                .map(|&i| {
                    let m = &batch[i];
                    tget(
                        dedup2_key(t, &m.sender_id, &m.temp_id),
                        Some(vec![col(FAM_MSG)]),
                    )
                })
                .collect();
            let rows = self.get_rows(gets).await?;
            let found: Vec<(usize, u64, u64)> = unknown
                .iter()
                .zip(&rows)
                .filter_map(|(&i, r)| {
                    Some((
                        i,
                        cell_u64(r, FAM_MSG, COL_SEQ)?,
                        cell_u64(r, FAM_MSG, COL_ID)?,
                    ))
                })
                .collect();
            if !found.is_empty() {
                let seqs: Vec<u64> = found.iter().map(|f| f.1).collect();
                let originals = self.messages_at(t, &seqs).await?;
                for (i, seq, id) in found {
                    match originals.get(&seq) {
                        Some(m) if m.message_id.get() == id => out[i] = Some(duplicate(m)),
                        _ => {
                            return Err(Error::internal(format!(
                                "idempotency row of {t}/{}/{} points at seq {seq}, which does not hold message {id}",
                                batch[i].sender_id, batch[i].temp_id
                            )))
                        }
                    }
                }
            }
        }
        // 3. Claim seqs for the new ones, one block row at a time.
        let mut pending: Vec<usize> = (0..n)
            .filter(|&i| out[i].is_none() && repeat_of[i].is_none())
            .collect();
        let mut rounds = 0;
        while !pending.is_empty() {
            rounds += 1;
            if rounds > MAX_CLAIM_ROUNDS {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("append to {t}: lost {MAX_CLAIM_ROUNDS} seq claims in a row"),
                ));
            }
            let (_, block_end) = block_bounds(block_of(st.last + 1));
            let take = pending.len().min((block_end - st.last) as usize);
            let msgs: Vec<&NewMessage> = pending[..take].iter().map(|&i| &batch[i]).collect();
            match self.claim(t, st.last, &msgs).await? {
                Claim::Won => {
                    for (k, &i) in pending[..take].iter().enumerate() {
                        let m = stored(&batch[i], st.last + 1 + k as u64);
                        st.recent.push(m.clone());
                        out[i] = Some(Appended {
                            message: m,
                            duplicate: false,
                        });
                    }
                    st.last += take as u64;
                    pending.drain(..take);
                }
                Claim::Lost => {
                    // Another appender got there first. What it stored may include our
                    // keys (a client's retry through another server) or, when a claim's
                    // answer was lost, our own messages (same message id: not duplicates).
                    let seen = st.recent.len();
                    self.catch_up_after_loss(t, st).await?;
                    let new = &st.recent[seen..];
                    pending.retain(|&i| {
                        let m = &batch[i];
                        match new
                            .iter()
                            .find(|r| r.sender_id == m.sender_id && r.temp_id == m.temp_id)
                        {
                            Some(r) => {
                                out[i] = Some(Appended {
                                    message: r.clone(),
                                    duplicate: r.message_id != m.message_id,
                                });
                                false
                            }
                            None => true,
                        }
                    });
                }
            }
        }
        for i in 0..n {
            if let Some(j) = repeat_of[i] {
                out[i] = out[j].as_ref().map(|a| duplicate(&a.message));
            }
        }
        // 4. Bookkeeping of everything not yet recorded, this batch included.
        self.bookkeep(t, st).await;
        out.into_iter()
            .map(|o| o.ok_or_else(|| Error::internal("an append left a message unanswered")))
            .collect()
    }
}

#[async_trait]
impl MessageStore for HBaseStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        let thread = msg.thread_id.clone();
        self.append_batch(&thread, vec![msg])
            .await?
            .pop()
            .ok_or_else(|| Error::internal("append answered nothing"))
    }

    async fn append_batch(
        &self,
        thread: &ThreadId,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>> {
        check_batch(thread, &batch)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let slot = self.state_slot(thread);
        let mut state = slot.lock().await;
        let result = self.append_locked(thread, &mut state, batch).await;
        if result.is_err() {
            // What happened is unknown: read the thread afresh next time.
            *state = None;
        }
        result
    }

    async fn fetch(&self, thread: &ThreadId, query: HistoryQuery) -> Result<HistoryPage> {
        let limit = query.limit.max(1);
        let lo = query.after_seq.map(|a| a.saturating_add(1)).unwrap_or(1); // inclusive
        let hi = query
            .before_seq
            .map(|b| b.saturating_sub(1))
            .unwrap_or(u64::MAX); // inclusive
        if lo > hi || hi == 0 {
            return Ok(HistoryPage::default());
        }
        let want = limit.saturating_add(1);
        let mut got: Vec<StoredMessage> = Vec::with_capacity(want.min(1024));
        if query.after_seq.is_some() {
            // The oldest `want` in range: forward from lo's block.
            let mut from = block_of(lo);
            let offset = ((lo - 1) % BLOCK) as usize;
            loop {
                let rows = (offset + want - got.len())
                    .div_ceil(BLOCK as usize)
                    .clamp(1, PAGE_ROWS);
                let blocks = self
                    .blocks_from("fetch after", thread, from, rows, false)
                    .await?;
                let mut past_hi = false;
                for b in &blocks {
                    for m in &b.messages {
                        if m.seq > hi {
                            past_hi = true;
                        } else if m.seq >= lo && got.len() < want {
                            got.push(m.clone());
                        }
                    }
                    from = b.number + 1;
                }
                if got.len() >= want || past_hi || blocks.len() < rows {
                    break;
                }
            }
        } else {
            // The newest `want` in range: backwards from hi's block.
            let mut from = if hi == u64::MAX {
                u64::MAX
            } else {
                block_of(hi)
            };
            let lo_block = block_of(lo);
            loop {
                let rows = (want - got.len())
                    .div_ceil(BLOCK as usize)
                    .clamp(1, PAGE_ROWS)
                    + 1;
                let blocks = self.blocks_down_from(thread, from, rows).await?;
                let mut below_lo = false;
                for b in &blocks {
                    for m in b.messages.iter().rev() {
                        if m.seq < lo {
                            below_lo = true;
                        } else if m.seq <= hi && got.len() < want {
                            got.push(m.clone());
                        }
                    }
                    if b.number <= lo_block {
                        below_lo = true;
                    }
                    match b.number.checked_sub(1) {
                        Some(next) => from = next,
                        None => below_lo = true,
                    }
                }
                if got.len() >= want || below_lo || blocks.len() < rows {
                    break;
                }
            }
            got.reverse();
        }
        let has_more = got.len() > limit;
        if has_more {
            if query.after_seq.is_some() {
                got.truncate(limit);
            } else {
                got.drain(..got.len() - limit);
            }
        }
        Ok(HistoryPage {
            messages: got,
            has_more,
        })
    }

    async fn get(&self, thread: &ThreadId, message_id: MessageId) -> Result<Option<StoredMessage>> {
        let rows = self
            .get_rows(vec![tget(
                id2_key(thread, message_id),
                Some(vec![col_q(FAM_MSG, COL_SEQ)]),
            )])
            .await?;
        if let Some(seq) = rows.first().and_then(|r| cell_u64(r, FAM_MSG, COL_SEQ)) {
            let m = self.messages_at(thread, &[seq]).await?.remove(&seq);
            return Ok(m.filter(|m| m.message_id == message_id));
        }
        // No id row: the message may be stored past the bookkeeping watermark (its
        // appender died before writing its rows). Look there.
        let done = self
            .done_marks(std::slice::from_ref(thread))
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        let mut from = block_of(done + 1);
        loop {
            let blocks = self
                .blocks_from("find message by id", thread, from, PAGE_ROWS, false)
                .await?;
            for b in &blocks {
                if let Some(m) = b
                    .messages
                    .iter()
                    .find(|m| m.seq > done && m.message_id == message_id)
                {
                    return Ok(Some(m.clone()));
                }
                from = b.number + 1;
            }
            if blocks.len() < PAGE_ROWS {
                return Ok(None);
            }
        }
    }

    async fn last_seqs(&self, threads: &[ThreadId]) -> Result<Vec<u64>> {
        if threads.is_empty() {
            return Ok(Vec::new());
        }
        // From each thread's bookkeeping watermark, one getMultiple of the block rows
        // holding the next seq: a block that is not full ends the thread. Only a thread
        // whose watermark lags by a whole block needs another round.
        let mut last = self.done_marks(threads).await?;
        let mut open: Vec<usize> = (0..threads.len()).collect();
        while !open.is_empty() {
            let gets = open
                .iter()
                .map(|&i| {
                    tget(
                        block_key(&threads[i], block_of(last[i] + 1)),
                        Some(vec![col_q(FAM_HEAD, COL_LAST)]),
                    )
                })
                .collect();
            let rows = self.get_rows(gets).await?;
            let mut still = Vec::new();
            for (&i, r) in open.iter().zip(&rows) {
                if let Some(l) = cell_u64(r, FAM_HEAD, COL_LAST) {
                    let (_, end) = block_bounds(block_of(last[i] + 1));
                    last[i] = last[i].max(l);
                    if l >= end {
                        still.push(i);
                    }
                }
            }
            open = still;
        }
        Ok(last)
    }

    async fn count_unread(
        &self,
        thread: &ThreadId,
        reader: &UserId,
        after_seq: u64,
    ) -> Result<u64> {
        let me = reader.as_str().as_bytes();
        let mut from = block_of(after_seq.saturating_add(1));
        let prefix = block_prefix(thread);
        let mut count = 0;
        loop {
            let rows = self
                .scan(
                    "count unread",
                    block_key(thread, from),
                    prefix_end(&prefix),
                    Some(vec![col(FAM_MSG)]),
                    false,
                    PAGE_ROWS,
                )
                .await?;
            for r in &rows {
                for c in &r.column_values {
                    let seq = bytes_u64(&c.qualifier).ok_or_else(|| corrupt("cell qualifier"))?;
                    if seq <= after_seq {
                        continue;
                    }
                    let rec = decode_record(&c.value)
                        .ok_or_else(|| corrupt(format!("record at seq {seq}")))?;
                    if rec.sender != me {
                        count += 1;
                    }
                }
                if let Some(b) = r.row.as_deref().and_then(|k| block_of_key(&prefix, k)) {
                    from = b + 1;
                }
            }
            if rows.len() < PAGE_ROWS {
                return Ok(count);
            }
        }
    }
}

impl HBaseStore {
    /// Test support, not API: writes what an appender that died right after its claim
    /// leaves behind: the message in its block row (with the block's `h:l`), and no
    /// idempotency or id row and no watermark.
    #[doc(hidden)]
    pub async fn __inject_unrecorded_message(&self, msg: &NewMessage, seq: u64) -> Result<()> {
        let put = tput(
            block_key(&msg.thread_id, block_of(seq)),
            vec![
                cv(FAM_HEAD, COL_LAST, u64_bytes(seq)),
                cv(
                    FAM_MSG,
                    &seq_qualifier(seq),
                    encode_record(
                        msg.message_id,
                        msg.sent_at,
                        &msg.sender_id,
                        &msg.temp_id,
                        &msg.text,
                    ),
                ),
            ],
        );
        self.inner
            .coalesce
            .put(&self.inner.tables.messages, vec![put])
            .await
    }
}
