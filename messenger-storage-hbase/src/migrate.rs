//! The migration of the messages table from schema v1 (one row per message, claimed
//! one by one) to v2 (block rows). See `docs/hbase-schema.md`, "Migration".

use messenger_core::{Error, MessageId, Result, ThreadId, UserId};

use crate::client::Idempotent;
use crate::gen::hbase::{TDelete, TPut, TResult, TTHBaseServiceSyncClient};
use crate::schema::*;
use crate::{HBaseOptions, HBaseStore};

/// Rows per scan call and per write call.
const CHUNK: usize = 500;

/// What [`migrate_v1`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Threads whose messages were copied.
    pub threads: u64,
    /// Messages copied.
    pub messages: u64,
    /// Threads whose v1 seqs had a gap (copied as they were; see the log).
    pub threads_with_gaps: u64,
    /// v1 rows deleted (only with `delete_v1`).
    pub v1_rows_deleted: u64,
}

/// One v1 message row, decoded.
struct V1Message {
    seq: u64,
    message_id: u64,
    sender: UserId,
    temp_id: String,
    text: String,
    sent_at: u64,
}

fn v1_cell<'a>(r: &'a TResult, q: &[u8]) -> Option<&'a [u8]> {
    r.column_values
        .iter()
        .find(|c| c.family == FAM_MSG && c.qualifier == q)
        .map(|c| c.value.as_slice())
}

fn parse_v1(seq: u64, r: &TResult) -> Option<V1Message> {
    let text = |q: &[u8]| String::from_utf8(v1_cell(r, q)?.to_vec()).ok();
    Some(V1Message {
        seq,
        message_id: bytes_u64(v1_cell(r, COL_ID)?)?,
        sender: UserId::new(text(COL_SENDER)?).ok()?,
        temp_id: text(COL_TEMP)?,
        text: text(COL_TEXT)?,
        sent_at: v1_cell(r, COL_SENT).and_then(bytes_u64).unwrap_or(0),
    })
}

/// Copies every message of the messages table from the v1 layout into the v2 layout
/// (block rows, idempotency and id rows, the head row's watermark), then records schema
/// v2 in the table so servers of this version accept it. With `delete_v1`, removes the
/// v1 message, idempotency-claim and id rows afterwards.
///
/// Run it with every server stopped (`cargo run --release -p messenger-storage-hbase
/// --example hbase_migrate -- HOST:PORT`). It only writes fixed cells, so running it again
/// after an interruption is safe. Seqs, message ids, temp_ids and texts are kept as they
/// were; thread, membership and watermark tables are unchanged by v2.
pub async fn migrate_v1(opts: HBaseOptions, delete_v1: bool) -> Result<MigrationReport> {
    let store = HBaseStore::open(opts).await?;
    let mut report = MigrationReport::default();
    let table = store.inner.tables.messages.clone();
    let mut start: Vec<u8> = Vec::new();
    // The thread whose rows are being read, and its v1 messages so far.
    let mut current: Option<(ThreadId, Vec<V1Message>)> = None;
    let mut v1_rows: Vec<Vec<u8>> = Vec::new();
    loop {
        let scan = tscan(start.clone(), Vec::new(), None, false, CHUNK as i32);
        let t = table.clone();
        let rows = store
            .inner
            .pool
            .call("migration scan", Idempotent::Yes, move |c| {
                c.get_scanner_results(t.clone(), scan.clone(), CHUNK as i32)
            })
            .await?;
        for r in &rows {
            let Some(key) = r.row.as_deref() else {
                continue;
            };
            let Some((thread, kind, rest)) = split_key(key) else {
                continue;
            };
            if !is_v1_kind(kind) {
                continue;
            }
            if delete_v1 {
                v1_rows.push(key.to_vec());
            }
            if !is_v1_message_kind(kind) {
                continue;
            }
            let thread = ThreadId::new(thread)
                .map_err(|_| Error::internal(format!("v1 row of a bad thread id: {thread:?}")))?;
            let seq = bytes_u64(rest).ok_or_else(|| Error::internal("v1 message key"))?;
            let msg = parse_v1(seq, r)
                .ok_or_else(|| Error::internal(format!("undecodable v1 message {thread}/{seq}")))?;
            match &mut current {
                Some((t, msgs)) if *t == thread => msgs.push(msg),
                _ => {
                    if let Some((t, msgs)) = current.take() {
                        copy_thread(&store, &t, msgs, &mut report).await?;
                    }
                    current = Some((thread, vec![msg]));
                }
            }
        }
        if delete_v1 && v1_rows.len() >= CHUNK {
            report.v1_rows_deleted += delete_rows(&store, std::mem::take(&mut v1_rows)).await?;
        }
        match rows.last().and_then(|r| r.row.clone()) {
            Some(mut last) if rows.len() == CHUNK => {
                last.push(0);
                start = last;
            }
            _ => break,
        }
    }
    if let Some((t, msgs)) = current.take() {
        copy_thread(&store, &t, msgs, &mut report).await?;
    }
    if delete_v1 && !v1_rows.is_empty() {
        report.v1_rows_deleted += delete_rows(&store, v1_rows).await?;
    }
    store.write_schema_row().await?;
    tracing::info!(?report, "messages table migrated to schema v2");
    Ok(report)
}

/// Writes one thread's messages in the v2 layout.
async fn copy_thread(
    store: &HBaseStore,
    t: &ThreadId,
    mut msgs: Vec<V1Message>,
    report: &mut MigrationReport,
) -> Result<()> {
    msgs.sort_by_key(|m| m.seq);
    let Some(last) = msgs.last().map(|m| m.seq) else {
        return Ok(());
    };
    if msgs.iter().enumerate().any(|(i, m)| m.seq != i as u64 + 1) {
        report.threads_with_gaps += 1;
        tracing::warn!(thread = %t, messages = msgs.len(), last,
            "v1 thread has gaps in its seqs: copied as it is");
    }
    let mut puts: Vec<TPut> = Vec::new();
    let mut block_cells: Vec<crate::gen::hbase::TColumnValue> = Vec::new();
    let mut block = None;
    for m in &msgs {
        let b = block_of(m.seq);
        if block != Some(b) {
            if let Some(prev) = block {
                puts.push(block_put(t, prev, last, std::mem::take(&mut block_cells)));
            }
            block = Some(b);
        }
        let id = MessageId(m.message_id);
        block_cells.push(cv(
            FAM_MSG,
            &seq_qualifier(m.seq),
            encode_record(id, m.sent_at, &m.sender, &m.temp_id, &m.text),
        ));
        puts.push(tput(
            dedup2_key(t, &m.sender, &m.temp_id),
            vec![
                cv(FAM_MSG, COL_SEQ, u64_bytes(m.seq)),
                cv(FAM_MSG, COL_ID, u64_bytes(m.message_id)),
            ],
        ));
        puts.push(tput(
            id2_key(t, id),
            vec![cv(FAM_MSG, COL_SEQ, u64_bytes(m.seq))],
        ));
    }
    if let Some(b) = block {
        puts.push(block_put(t, b, last, block_cells));
    }
    for chunk in puts.chunks(CHUNK) {
        store
            .inner
            .coalesce
            .put(&store.inner.tables.messages, chunk.to_vec())
            .await?;
    }
    // The watermark only after its rows are written.
    store
        .inner
        .coalesce
        .put(
            &store.inner.tables.messages,
            vec![tput(
                head_key(t),
                vec![cv_at(FAM_HEAD, COL_DONE, u64_bytes(last), last as i64)],
            )],
        )
        .await?;
    report.threads += 1;
    report.messages += msgs.len() as u64;
    Ok(())
}

/// A block row: its cells and `h:l` (the block's end, or the thread's last seq in the
/// thread's last block).
fn block_put(
    t: &ThreadId,
    b: u64,
    thread_last: u64,
    mut cells: Vec<crate::gen::hbase::TColumnValue>,
) -> TPut {
    let (_, end) = block_bounds(b);
    cells.push(cv(FAM_HEAD, COL_LAST, u64_bytes(end.min(thread_last))));
    tput(block_key(t, b), cells)
}

async fn delete_rows(store: &HBaseStore, rows: Vec<Vec<u8>>) -> Result<u64> {
    let n = rows.len() as u64;
    let deletes: Vec<TDelete> = rows
        .into_iter()
        // No columns: the whole row (v1 message, claim and id rows hold family `m` only).
        .map(|row| TDelete {
            row,
            columns: None,
            timestamp: None,
            delete_type: None,
            attributes: None,
            durability: None,
        })
        .collect();
    let table = store.inner.tables.messages.clone();
    for chunk in deletes.chunks(CHUNK) {
        let (t, chunk) = (table.clone(), chunk.to_vec());
        store
            .inner
            .pool
            .call("delete v1 rows", Idempotent::Yes, move |c| {
                c.delete_multiple(t.clone(), chunk.clone())
            })
            .await?;
    }
    Ok(n)
}

impl HBaseStore {
    /// Test support, not API: writes one message the way schema v1 stored it (message
    /// row, finished idempotency claim, id row, head hint), for migration tests.
    #[doc(hidden)]
    pub async fn __write_v1_message(
        &self,
        msg: &messenger_core::model::NewMessage,
        seq: u64,
    ) -> Result<()> {
        let t = &msg.thread_id;
        let id = u64_bytes(msg.message_id.get());
        let puts = vec![
            tput(
                msg_key(t, seq),
                vec![
                    cv(FAM_MSG, COL_ID, id.clone()),
                    cv(
                        FAM_MSG,
                        COL_SENDER,
                        msg.sender_id.as_str().as_bytes().to_vec(),
                    ),
                    cv(FAM_MSG, COL_TEMP, msg.temp_id.as_bytes().to_vec()),
                    cv(FAM_MSG, COL_TEXT, msg.text.as_bytes().to_vec()),
                    cv(FAM_MSG, COL_SENT, u64_bytes(msg.sent_at)),
                ],
            ),
            tput(
                dedup_key(t, &msg.sender_id, &msg.temp_id),
                vec![
                    cv(FAM_MSG, COL_ID, id),
                    cv(FAM_MSG, COL_FROM, u64_bytes(seq - 1)),
                    cv(FAM_MSG, COL_CLAIMED, u64_bytes(msg.sent_at)),
                    cv(FAM_MSG, COL_SEQ, u64_bytes(seq)),
                ],
            ),
            tput(
                id_key(t, msg.message_id),
                vec![cv(FAM_MSG, COL_SEQ, u64_bytes(seq))],
            ),
            tput(
                head_key(t),
                vec![cv_at(FAM_HEAD, b"l", u64_bytes(seq), seq as i64)],
            ),
        ];
        self.inner
            .coalesce
            .put(&self.inner.tables.messages, puts)
            .await
    }
}
