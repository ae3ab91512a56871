//! `MessageStore` over the messages table. See `docs/hbase-schema.md` for the design.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use messenger_core::model::{
    check_batch, Appended, HistoryPage, HistoryQuery, NewMessage, StoredMessage,
};
use messenger_core::time::now_ms;
use messenger_core::{Error, ErrorKind, MessageId, MessageStore, Result, ThreadId, UserId};

use crate::client::Idempotent;
use crate::gen::hbase::{TResult, TTHBaseServiceSyncClient};
use crate::schema::*;
use crate::HBaseStore;

/// After this many lost seq claims in a row the appender re-reads the exact last seq
/// instead of probing one by one.
const PROBES_BEFORE_JUMP: u32 = 3;
/// Most threads whose last seq is cached per process (the cache is dropped when full).
const MAX_CACHED_HINTS: usize = 100_000;
/// Rows per scan call when a whole range must be walked.
const PAGE: i32 = 1000;

/// A (thread, sender, temp_id) claim as stored in its dedup row.
#[derive(Debug, Clone, Copy)]
struct Claim {
    owner: u64,
    from: u64,
    claimed_at: u64,
    seq: Option<u64>,
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

fn parse_claim(r: &TResult) -> Option<Claim> {
    Some(Claim {
        owner: cell_u64(r, FAM_MSG, COL_ID)?,
        from: cell_u64(r, FAM_MSG, COL_FROM).unwrap_or(0),
        claimed_at: cell_u64(r, FAM_MSG, COL_CLAIMED).unwrap_or(0),
        seq: cell_u64(r, FAM_MSG, COL_SEQ),
    })
}

fn corrupt(what: &str) -> Error {
    Error::internal(format!("corrupt HBase message row: {what}"))
}

fn parse_message(thread: &ThreadId, seq: u64, r: &TResult) -> Result<StoredMessage> {
    let text = |q: &[u8], what: &str| -> Result<String> {
        let b = cell(r, FAM_MSG, q).ok_or_else(|| corrupt(what))?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt(what))
    };
    let sender = UserId::new(text(COL_SENDER, "sender")?).map_err(|_| corrupt("sender"))?;
    Ok(StoredMessage {
        thread_id: thread.clone(),
        seq,
        message_id: MessageId(cell_u64(r, FAM_MSG, COL_ID).ok_or_else(|| corrupt("id"))?),
        sender_id: sender,
        temp_id: text(COL_TEMP, "temp_id")?,
        text: text(COL_TEXT, "text")?,
        sent_at: cell_u64(r, FAM_MSG, COL_SENT).ok_or_else(|| corrupt("sent_at"))?,
    })
}

impl HBaseStore {
    fn msg_table(&self) -> Vec<u8> {
        self.inner.tables.messages.clone()
    }

    fn cached_hint(&self, t: &ThreadId) -> Option<u64> {
        self.inner.hints.lock().ok()?.get(t).copied()
    }

    fn remember_hint(&self, t: &ThreadId, seq: u64) {
        if let Ok(mut h) = self.inner.hints.lock() {
            if h.len() >= MAX_CACHED_HINTS && !h.contains_key(t) {
                h.clear();
            }
            let e = h.entry(t.clone()).or_insert(0);
            *e = (*e).max(seq);
        }
    }

    async fn get_row(&self, what: &'static str, row: Vec<u8>) -> Result<TResult> {
        let table = self.msg_table();
        self.inner
            .pool
            .call(what, Idempotent::Yes, move |c| {
                c.get(table.clone(), tget(row.clone(), None))
            })
            .await
    }

    async fn message_at(&self, thread: &ThreadId, seq: u64) -> Result<Option<StoredMessage>> {
        let r = self.get_row("get message", msg_key(thread, seq)).await?;
        if r.column_values.is_empty() {
            return Ok(None);
        }
        parse_message(thread, seq, &r).map(Some)
    }

    async fn scan(
        &self,
        what: &'static str,
        start: Vec<u8>,
        stop: Vec<u8>,
        columns: Option<Vec<crate::gen::hbase::TColumn>>,
        reversed: bool,
        limit: i32,
    ) -> Result<Vec<TResult>> {
        let table = self.msg_table();
        let scan = tscan(start, stop, columns, reversed, limit);
        self.inner
            .pool
            .call(what, Idempotent::Yes, move |c| {
                c.get_scanner_results(table.clone(), scan.clone(), limit)
            })
            .await
    }

    /// The exact highest seq of a thread: one reversed scan of its message rows, limit 1.
    async fn exact_last_seq(&self, thread: &ThreadId) -> Result<u64> {
        let prefix = msg_prefix(thread);
        let rows = self
            .scan(
                "last seq",
                msg_key(thread, u64::MAX),
                prefix.clone(),
                Some(vec![col_q(FAM_MSG, COL_ID)]),
                true,
                1,
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.row.as_deref())
            .and_then(|k| seq_of_key(&prefix, k))
            .unwrap_or(0))
    }

    /// Sends a conditional put once. When the outcome is unknown (the connection broke
    /// after the request may have left), re-reads `check_col` of `row` and reports success
    /// iff it now holds `mine`.
    #[allow(clippy::too_many_arguments)]
    async fn cas_put(
        &self,
        what: &'static str,
        table: Vec<u8>,
        row: Vec<u8>,
        check_col: &'static [u8],
        expected: Vec<u8>,
        put: crate::gen::hbase::TPut,
        mine: Vec<u8>,
    ) -> Result<bool> {
        let (t, r) = (table.clone(), row.clone());
        let sent = self
            .inner
            .pool
            .call(what, Idempotent::No, move |c| {
                c.check_and_put(
                    t.clone(),
                    r.clone(),
                    FAM_MSG.to_vec(),
                    check_col.to_vec(),
                    expected.clone(),
                    put.clone(),
                )
            })
            .await;
        match sent {
            Ok(won) => Ok(won),
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                let got = self
                    .inner
                    .pool
                    .call(what, Idempotent::Yes, move |c| {
                        c.get(
                            table.clone(),
                            tget(row.clone(), Some(vec![col_q(FAM_MSG, check_col)])),
                        )
                    })
                    .await
                    .map_err(|_| e)?;
                Ok(cell(&got, FAM_MSG, check_col) == Some(mine.as_slice()))
            }
            Err(e) => Err(e),
        }
    }

    /// Looks for the message with id `owner` among the thread's messages after `from`
    /// (a crashed or slow owner's message). Walks the range in pages, ids only.
    async fn find_owner_message(
        &self,
        thread: &ThreadId,
        from: u64,
        owner: u64,
    ) -> Result<Option<u64>> {
        let prefix = msg_prefix(thread);
        let mut next = from.saturating_add(1);
        loop {
            let rows = self
                .scan(
                    "find claimed message",
                    msg_key(thread, next),
                    prefix_end(&prefix),
                    Some(vec![col_q(FAM_MSG, COL_ID)]),
                    false,
                    PAGE,
                )
                .await?;
            for r in &rows {
                let seq = r.row.as_deref().and_then(|k| seq_of_key(&prefix, k));
                if let Some(seq) = seq {
                    if cell_u64(r, FAM_MSG, COL_ID) == Some(owner) {
                        return Ok(Some(seq));
                    }
                    next = seq.saturating_add(1);
                }
            }
            if rows.len() < PAGE as usize {
                return Ok(None);
            }
        }
    }

    /// Records where a claimed message landed: dedup row, id row and head hint, in one
    /// batch of idempotent puts.
    async fn finish(&self, msg: &NewMessage, owner: u64, seq: u64) -> Result<()> {
        let t = &msg.thread_id;
        let puts = vec![
            tput(
                dedup_key(t, &msg.sender_id, &msg.temp_id),
                vec![cv(FAM_MSG, COL_SEQ, u64_bytes(seq))],
            ),
            tput(
                id_key(t, MessageId(owner)),
                vec![cv(FAM_MSG, COL_SEQ, u64_bytes(seq))],
            ),
            // The hint's cell timestamp is the seq itself: with one version kept, the
            // highest seq wins whatever order concurrent appenders write in.
            tput(
                head_key(t),
                vec![cv_at(FAM_HEAD, COL_LAST, u64_bytes(seq), seq as i64)],
            ),
        ];
        let table = self.msg_table();
        self.inner
            .pool
            .call("putMultiple", Idempotent::Yes, move |c| {
                c.put_multiple(table.clone(), puts.clone())
            })
            .await
    }

    async fn duplicate_of(&self, msg: &NewMessage, seq: u64, owner: u64) -> Result<Appended> {
        match self.message_at(&msg.thread_id, seq).await? {
            Some(m) if m.message_id.get() == owner => Ok(Appended {
                message: m,
                duplicate: true,
            }),
            _ => Err(Error::internal(format!(
                "idempotency row of {}/{}/{} points at seq {seq}, which holds another message",
                msg.thread_id, msg.sender_id, msg.temp_id
            ))),
        }
    }

    /// Claims the next seq for `msg` (already owning its dedup row). Put-if-absent on the
    /// row of seq n, moving to n+1 when another appender won n.
    async fn claim_seq(&self, msg: &NewMessage, hint: u64, started: Instant) -> Result<u64> {
        let t = &msg.thread_id;
        let mid = u64_bytes(msg.message_id.get());
        let cells = vec![
            cv(FAM_MSG, COL_ID, mid.clone()),
            cv(
                FAM_MSG,
                COL_SENDER,
                msg.sender_id.as_str().as_bytes().to_vec(),
            ),
            cv(FAM_MSG, COL_TEMP, msg.temp_id.as_bytes().to_vec()),
            cv(FAM_MSG, COL_TEXT, msg.text.as_bytes().to_vec()),
            cv(FAM_MSG, COL_SENT, u64_bytes(msg.sent_at)),
        ];
        let give_up = self.inner.opts.claim_lease / 2;
        let mut n = hint + 1;
        let mut lost = 0u32;
        loop {
            if started.elapsed() > give_up {
                return Err(Error::unavailable(format!(
                    "append to {t}: could not claim a seq within {give_up:?}; retry with the same temp_id"
                )));
            }
            let row = msg_key(t, n);
            let won = self
                .cas_put(
                    "claim seq",
                    self.msg_table(),
                    row.clone(),
                    COL_ID,
                    Vec::new(),
                    tput(row, cells.clone()),
                    mid.clone(),
                )
                .await?;
            if won {
                return Ok(n);
            }
            lost += 1;
            n = if lost.is_multiple_of(PROBES_BEFORE_JUMP) {
                let last = self.exact_last_seq(t).await?;
                self.remember_hint(t, last);
                (last + 1).max(n + 1)
            } else {
                n + 1
            };
        }
    }
}

impl HBaseStore {
    /// With the idempotency row owned: claim a seq, record it, acknowledge.
    async fn store_claimed(&self, msg: NewMessage, hint: u64) -> Result<Appended> {
        let t = msg.thread_id.clone();
        let seq = self.claim_seq(&msg, hint, Instant::now()).await?;
        self.remember_hint(&t, seq);
        if let Err(e) = self.finish(&msg, msg.message_id.get(), seq).await {
            // The message is durable at `seq`; the bookkeeping is recovered by the next
            // append of the same temp_id (lease expiry + search) and the hint only ever
            // lags. Report success.
            tracing::warn!(thread = %t, seq, error = %e, "append durable but bookkeeping failed");
        }
        Ok(Appended {
            message: StoredMessage {
                thread_id: t,
                seq,
                message_id: msg.message_id,
                sender_id: msg.sender_id,
                temp_id: msg.temp_id,
                text: msg.text,
                sent_at: msg.sent_at,
            },
            duplicate: false,
        })
    }
}

/// Appends of one thread in this process run one at a time (striped by thread), so a
/// batch's seqs are consecutive with respect to this process's other appends.
const APPEND_STRIPES: usize = 256;

pub(crate) fn append_stripes() -> Box<[tokio::sync::Mutex<()>]> {
    (0..APPEND_STRIPES)
        .map(|_| tokio::sync::Mutex::new(()))
        .collect()
}

impl HBaseStore {
    fn stripe(&self, t: &ThreadId) -> &tokio::sync::Mutex<()> {
        let h = u32::from_be_bytes(hash4(t.as_str())) as usize;
        &self.inner.append_stripes[h % APPEND_STRIPES]
    }

    /// One append; the caller holds the thread's stripe lock.
    async fn append_one(&self, msg: NewMessage) -> Result<Appended> {
        let t = msg.thread_id.clone();
        let dkey = dedup_key(&t, &msg.sender_id, &msg.temp_id);
        let hkey = head_key(&t);
        let mine = u64_bytes(msg.message_id.get());
        let lease = self.inner.opts.claim_lease;
        let mut wait = Duration::from_millis(5);
        let claim_cells = |from: u64| {
            tput(
                dkey.clone(),
                vec![
                    cv(FAM_MSG, COL_ID, mine.clone()),
                    cv(FAM_MSG, COL_FROM, u64_bytes(from)),
                    cv(FAM_MSG, COL_CLAIMED, u64_bytes(now_ms())),
                ],
            )
        };
        // Fast path: with a cached last seq, claim the idempotency row straight away
        // (new messages are the common case); a lost claim falls back to reading it.
        let mut fast = self.cached_hint(&t);
        loop {
            if let Some(hint) = fast.take() {
                let won = self
                    .cas_put(
                        "claim temp_id",
                        self.msg_table(),
                        dkey.clone(),
                        COL_ID,
                        Vec::new(),
                        claim_cells(hint),
                        mine.clone(),
                    )
                    .await?;
                if won {
                    return self.store_claimed(msg, hint).await;
                }
            }
            // One round trip: the idempotency row and the last-seq hint.
            let table = self.msg_table();
            let gets = vec![
                tget(dkey.clone(), Some(vec![col(FAM_MSG)])),
                tget(hkey.clone(), Some(vec![col_q(FAM_HEAD, COL_LAST)])),
            ];
            let got = self
                .inner
                .pool
                .call("getMultiple", Idempotent::Yes, move |c| {
                    c.get_multiple(table.clone(), gets.clone())
                })
                .await?;
            let claim = got.first().and_then(parse_claim);
            let hint = got
                .get(1)
                .and_then(|r| cell_u64(r, FAM_HEAD, COL_LAST))
                .unwrap_or(0);
            let owned = match claim {
                Some(Claim {
                    owner,
                    seq: Some(seq),
                    ..
                }) => {
                    return self.duplicate_of(&msg, seq, owner).await;
                }
                Some(c) if c.owner == msg.message_id.get() => true,
                Some(c) => {
                    let age = now_ms().saturating_sub(c.claimed_at);
                    if age < lease.as_millis() as u64 {
                        // Another appender is on it; wait for it to finish.
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_millis(100));
                        continue;
                    }
                    // The owner is gone or stuck past its lease. If its message landed,
                    // this is a duplicate of it; otherwise take the claim over.
                    if let Some(seq) = self.find_owner_message(&t, c.from, c.owner).await? {
                        let owner_msg = NewMessage {
                            message_id: MessageId(c.owner),
                            ..msg.clone()
                        };
                        self.finish(&owner_msg, c.owner, seq).await?;
                        return self.duplicate_of(&msg, seq, c.owner).await;
                    }
                    tracing::warn!(thread = %t, owner = c.owner, "taking over an expired append claim");
                    self.cas_put(
                        "take over claim",
                        self.msg_table(),
                        dkey.clone(),
                        COL_ID,
                        u64_bytes(c.owner),
                        claim_cells(hint),
                        mine.clone(),
                    )
                    .await?
                }
                None => {
                    self.cas_put(
                        "claim temp_id",
                        self.msg_table(),
                        dkey.clone(),
                        COL_ID,
                        Vec::new(),
                        claim_cells(hint),
                        mine.clone(),
                    )
                    .await?
                }
            };
            if !owned {
                continue;
            }
            return self.store_claimed(msg, hint).await;
        }
    }
}

#[async_trait]
impl MessageStore for HBaseStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        let _one_at_a_time = self.stripe(&msg.thread_id).lock().await;
        self.append_one(msg).await
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
        let _one_at_a_time = self.stripe(thread).lock().await;
        let mut out = Vec::with_capacity(batch.len());
        for msg in batch {
            out.push(self.append_one(msg).await?);
        }
        Ok(out)
    }

    async fn fetch(&self, thread: &ThreadId, query: HistoryQuery) -> Result<HistoryPage> {
        let limit = query.limit.clamp(1, (i32::MAX - 1) as usize);
        let lo = query.after_seq.map(|a| a.saturating_add(1)).unwrap_or(1); // inclusive
        let hi = query
            .before_seq
            .map(|b| b.saturating_sub(1))
            .unwrap_or(u64::MAX); // inclusive
        if lo > hi || hi == 0 {
            return Ok(HistoryPage::default());
        }
        let prefix = msg_prefix(thread);
        let want = limit as i32 + 1;
        let rows = if query.after_seq.is_some() {
            let stop = if hi == u64::MAX {
                prefix_end(&prefix)
            } else {
                msg_key(thread, hi + 1)
            };
            self.scan("fetch after", msg_key(thread, lo), stop, None, false, want)
                .await?
        } else {
            // Reversed: from the newest in range down to (exclusive) the one before lo.
            let stop = if lo <= 1 {
                prefix.clone()
            } else {
                msg_key(thread, lo - 1)
            };
            self.scan("fetch latest", msg_key(thread, hi), stop, None, true, want)
                .await?
        };
        let has_more = rows.len() > limit;
        let mut messages = Vec::with_capacity(limit.min(rows.len()));
        for r in rows.iter().take(limit) {
            let seq = r
                .row
                .as_deref()
                .and_then(|k| seq_of_key(&prefix, k))
                .ok_or_else(|| corrupt("row key"))?;
            messages.push(parse_message(thread, seq, r)?);
        }
        if query.after_seq.is_none() {
            messages.reverse();
        }
        Ok(HistoryPage { messages, has_more })
    }

    async fn get(&self, thread: &ThreadId, message_id: MessageId) -> Result<Option<StoredMessage>> {
        let r = self
            .get_row("get message id", id_key(thread, message_id))
            .await?;
        let Some(seq) = cell_u64(&r, FAM_MSG, COL_SEQ) else {
            return Ok(None);
        };
        Ok(self
            .message_at(thread, seq)
            .await?
            .filter(|m| m.message_id == message_id))
    }

    async fn last_seqs(&self, threads: &[ThreadId]) -> Result<Vec<u64>> {
        if threads.is_empty() {
            return Ok(Vec::new());
        }
        // Hints in one call, then one call checking that no message sits right after any
        // hint; only threads whose hint lags (a crash between claim and bookkeeping) pay a
        // reversed scan.
        let table = self.msg_table();
        let gets: Vec<_> = threads
            .iter()
            .map(|t| tget(head_key(t), Some(vec![col_q(FAM_HEAD, COL_LAST)])))
            .collect();
        let hints: Vec<u64> = self
            .inner
            .pool
            .call("getMultiple hints", Idempotent::Yes, move |c| {
                c.get_multiple(table.clone(), gets.clone())
            })
            .await?
            .iter()
            .map(|r| cell_u64(r, FAM_HEAD, COL_LAST).unwrap_or(0))
            .collect();
        let table = self.msg_table();
        let probes: Vec<_> = threads
            .iter()
            .zip(&hints)
            .map(|(t, h)| tget(msg_key(t, h + 1), Some(vec![col_q(FAM_MSG, COL_ID)])))
            .collect();
        let next_exists = self
            .inner
            .pool
            .call("existsAll", Idempotent::Yes, move |c| {
                c.exists_all(table.clone(), probes.clone())
            })
            .await?;
        let mut out = Vec::with_capacity(threads.len());
        for (i, t) in threads.iter().enumerate() {
            let hint = hints.get(i).copied().unwrap_or(0);
            if next_exists.get(i).copied().unwrap_or(true) {
                out.push(self.exact_last_seq(t).await?);
            } else {
                out.push(hint);
            }
        }
        Ok(out)
    }

    async fn count_unread(
        &self,
        thread: &ThreadId,
        reader: &UserId,
        after_seq: u64,
    ) -> Result<u64> {
        let prefix = msg_prefix(thread);
        let me = reader.as_str().as_bytes();
        let mut next = after_seq.saturating_add(1);
        let mut count = 0;
        loop {
            let rows = self
                .scan(
                    "count unread",
                    msg_key(thread, next),
                    prefix_end(&prefix),
                    Some(vec![col_q(FAM_MSG, COL_SENDER)]),
                    false,
                    PAGE,
                )
                .await?;
            for r in &rows {
                if cell(r, FAM_MSG, COL_SENDER) != Some(me) {
                    count += 1;
                }
                if let Some(seq) = r.row.as_deref().and_then(|k| seq_of_key(&prefix, k)) {
                    next = seq.saturating_add(1);
                }
            }
            if rows.len() < PAGE as usize {
                return Ok(count);
            }
        }
    }
}

impl HBaseStore {
    /// Test support, not API: writes what an appender that died mid-append leaves behind,
    /// an idempotency claim by `owner` at `claimed_at` (ms) without a seq, and, when
    /// `message_seq` is given, that owner's message at that seq (no hint, no id row).
    #[doc(hidden)]
    pub async fn __inject_orphan_claim(
        &self,
        thread: &ThreadId,
        sender: &UserId,
        temp_id: &str,
        owner: MessageId,
        claimed_at: u64,
        message_seq: Option<u64>,
    ) -> Result<()> {
        let mut puts = vec![tput(
            dedup_key(thread, sender, temp_id),
            vec![
                cv(FAM_MSG, COL_ID, u64_bytes(owner.get())),
                cv(FAM_MSG, COL_FROM, u64_bytes(0)),
                cv(FAM_MSG, COL_CLAIMED, u64_bytes(claimed_at)),
            ],
        )];
        if let Some(seq) = message_seq {
            puts.push(tput(
                msg_key(thread, seq),
                vec![
                    cv(FAM_MSG, COL_ID, u64_bytes(owner.get())),
                    cv(FAM_MSG, COL_SENDER, sender.as_str().as_bytes().to_vec()),
                    cv(FAM_MSG, COL_TEMP, temp_id.as_bytes().to_vec()),
                    cv(FAM_MSG, COL_TEXT, b"orphan".to_vec()),
                    cv(FAM_MSG, COL_SENT, u64_bytes(claimed_at)),
                ],
            ));
        }
        let table = self.msg_table();
        self.inner
            .pool
            .call("inject", Idempotent::Yes, move |c| {
                c.put_multiple(table.clone(), puts.clone())
            })
            .await
    }
}
