//! Row keys, column names, table descriptors and Thrift struct builders.
//! `docs/hbase-schema.md` explains the layout; keep the two in step.

use std::collections::BTreeMap;

use messenger_core::{MessageId, ThreadId, UserId};

use crate::gen::hbase::{
    TBloomFilterType, TColumn, TColumnFamilyDescriptor, TColumnValue, TCompressionAlgorithm,
    TDataBlockEncoding, TGet, TPut, TScan, TTableDescriptor, TTableName,
};

/// Column family of everything in the messages table except the head row.
pub(crate) const FAM_MSG: &[u8] = b"m";
/// Column family of the per-thread head row (last-seq hint). Never has a TTL: its cell
/// timestamps are seqs, not times.
pub(crate) const FAM_HEAD: &[u8] = b"h";
/// Thread info family (kind, title, created, members).
pub(crate) const FAM_THREAD: &[u8] = b"t";
/// Watermark family: qualifier = user id, value = delivered (8 B) | read (8 B).
pub(crate) const FAM_WM: &[u8] = b"w";
/// User index family.
pub(crate) const FAM_USER: &[u8] = b"u";

// Message row columns.
pub(crate) const COL_ID: &[u8] = b"i";
pub(crate) const COL_SENDER: &[u8] = b"s";
pub(crate) const COL_TEMP: &[u8] = b"t";
pub(crate) const COL_TEXT: &[u8] = b"x";
pub(crate) const COL_SENT: &[u8] = b"a";
// Idempotency and id row columns: the seq, and (COL_ID) the message id. Schema v1's
// claim rows also had the seq hint at claim time and the claim time.
pub(crate) const COL_SEQ: &[u8] = b"q";
pub(crate) const COL_FROM: &[u8] = b"f";
pub(crate) const COL_CLAIMED: &[u8] = b"c";
// Block row column: the last seq stored in the block.
pub(crate) const COL_LAST: &[u8] = b"l";
// Thread row columns.
pub(crate) const COL_KIND: &[u8] = b"k";
pub(crate) const COL_TITLE: &[u8] = b"n";
pub(crate) const COL_CREATED: &[u8] = b"c";
pub(crate) const COL_MEMBERS: &[u8] = b"m";
// User index column.
pub(crate) const COL_MARK: &[u8] = b"x";

// Row kinds after `thread_prefix`. 0x01..0x03 are schema v1's message, idempotency and
// id rows (read only by the migration); v2 uses 0x04..0x06.
const KIND_HEAD: u8 = 0x00;
const KIND_MSG: u8 = 0x01;
const KIND_DEDUP: u8 = 0x02;
const KIND_ID: u8 = 0x03;
const KIND_BLOCK: u8 = 0x04;
const KIND_DEDUP2: u8 = 0x05;
const KIND_ID2: u8 = 0x06;

/// Schema version of the messages table this build reads and writes.
pub(crate) const SCHEMA_VERSION: u64 = 2;

/// Seqs per block row: block `b` holds seqs `b*BLOCK+1 ..= (b+1)*BLOCK`. Part of the
/// stored schema (recorded in the schema row); changing it needs a migration.
pub(crate) const BLOCK: u64 = 128;

// Head row column (v2): the bookkeeping watermark. Block row column: last seq stored.
pub(crate) const COL_DONE: &[u8] = b"x";
// Schema row columns.
pub(crate) const COL_VERSION: &[u8] = b"v";
pub(crate) const COL_BLOCK: &[u8] = b"b";

/// 32-bit FNV-1a, big-endian: a stable, well-spread 4-byte prefix.
pub(crate) fn hash4(s: &str) -> [u8; 4] {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes()
}

/// `hash4(thread) | thread | 0x00`: every row of one thread starts with it. Thread ids
/// never contain 0x00, so no thread's prefix is a prefix of another's.
pub(crate) fn thread_prefix(t: &ThreadId) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + t.as_str().len() + 1 + 1 + 8);
    k.extend_from_slice(&hash4(t.as_str()));
    k.extend_from_slice(t.as_str().as_bytes());
    k.push(0);
    k
}

pub(crate) fn head_key(t: &ThreadId) -> Vec<u8> {
    let mut k = thread_prefix(t);
    k.push(KIND_HEAD);
    k
}

/// Prefix of the thread's message rows; message keys are this plus the 8-byte seq.
pub(crate) fn msg_prefix(t: &ThreadId) -> Vec<u8> {
    let mut k = thread_prefix(t);
    k.push(KIND_MSG);
    k
}

pub(crate) fn msg_key(t: &ThreadId, seq: u64) -> Vec<u8> {
    let mut k = msg_prefix(t);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The seq in a message row key, if `row` is one of `t`'s message rows.
pub(crate) fn seq_of_key(prefix: &[u8], row: &[u8]) -> Option<u64> {
    let rest = row.strip_prefix(prefix)?;
    let b: [u8; 8] = rest.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

pub(crate) fn dedup_key(t: &ThreadId, sender: &UserId, temp_id: &str) -> Vec<u8> {
    let mut k = thread_prefix(t);
    k.push(KIND_DEDUP);
    k.extend_from_slice(sender.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(temp_id.as_bytes());
    k
}

pub(crate) fn id_key(t: &ThreadId, id: MessageId) -> Vec<u8> {
    let mut k = thread_prefix(t);
    k.push(KIND_ID);
    k.extend_from_slice(&id.get().to_be_bytes());
    k
}

/// The block row holding `seq` (seq >= 1).
pub(crate) fn block_of(seq: u64) -> u64 {
    seq.saturating_sub(1) / BLOCK
}

/// The first and last seq of block `b`.
pub(crate) fn block_bounds(b: u64) -> (u64, u64) {
    (b * BLOCK + 1, (b + 1) * BLOCK)
}

/// Prefix of the thread's block rows; block keys are this plus the 8-byte block number.
pub(crate) fn block_prefix(t: &ThreadId) -> Vec<u8> {
    let mut k = thread_prefix(t);
    k.push(KIND_BLOCK);
    k
}

pub(crate) fn block_key(t: &ThreadId, block: u64) -> Vec<u8> {
    let mut k = block_prefix(t);
    k.extend_from_slice(&block.to_be_bytes());
    k
}

/// The block number in a block row key of `t` (`prefix` = [`block_prefix`]).
pub(crate) fn block_of_key(prefix: &[u8], row: &[u8]) -> Option<u64> {
    seq_of_key(prefix, row)
}

/// Idempotency row (v2): `m:q` = seq, `m:i` = message id.
pub(crate) fn dedup2_key(t: &ThreadId, sender: &UserId, temp_id: &str) -> Vec<u8> {
    let mut k = thread_prefix(t);
    k.push(KIND_DEDUP2);
    k.extend_from_slice(sender.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(temp_id.as_bytes());
    k
}

/// Message id row (v2): `m:q` = seq.
pub(crate) fn id2_key(t: &ThreadId, id: MessageId) -> Vec<u8> {
    let mut k = thread_prefix(t);
    k.push(KIND_ID2);
    k.extend_from_slice(&id.get().to_be_bytes());
    k
}

/// The schema row of the messages table. No thread's rows can start with it: its fifth
/// byte is 0x00, and a thread id is never empty and never contains 0x00.
pub(crate) fn schema_key() -> Vec<u8> {
    let mut k = vec![0xff, 0xff, 0xff, 0xff, 0x00];
    k.extend_from_slice(b"schema");
    k
}

/// The thread id and row kind of a messages-table key (`None` for the schema row or a
/// key of no known shape).
pub(crate) fn split_key(row: &[u8]) -> Option<(&str, u8, &[u8])> {
    let rest = row.get(4..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    if end == 0 {
        return None;
    }
    let thread = std::str::from_utf8(&rest[..end]).ok()?;
    let kind = *rest.get(end + 1)?;
    Some((thread, kind, &rest[end + 2..]))
}

/// Whether a row kind is one of schema v1's (message, idempotency claim, id row).
pub(crate) fn is_v1_kind(kind: u8) -> bool {
    matches!(kind, KIND_MSG | KIND_DEDUP | KIND_ID)
}

/// Whether a row kind is schema v1's message row.
pub(crate) fn is_v1_message_kind(kind: u8) -> bool {
    kind == KIND_MSG
}

/// The qualifier of seq's cell in its block row.
pub(crate) fn seq_qualifier(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// A message as stored in its block row cell (family `m`, qualifier = seq):
/// `1 | message_id u64 | sent_at u64 | sender_len u16 | sender | temp_len u16 | temp_id |
/// text` (integers big-endian).
pub(crate) fn encode_record(
    message_id: MessageId,
    sent_at: u64,
    sender: &UserId,
    temp_id: &str,
    text: &str,
) -> Vec<u8> {
    let (s, t) = (sender.as_str().as_bytes(), temp_id.as_bytes());
    let mut v = Vec::with_capacity(1 + 8 + 8 + 2 + s.len() + 2 + t.len() + text.len());
    v.push(1);
    v.extend_from_slice(&message_id.get().to_be_bytes());
    v.extend_from_slice(&sent_at.to_be_bytes());
    // Ids are at most 64 (user) and 128 (temp) bytes by protocol; u16 holds them.
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s);
    v.extend_from_slice(&(t.len() as u16).to_be_bytes());
    v.extend_from_slice(t);
    v.extend_from_slice(text.as_bytes());
    v
}

/// The fields of a record made by [`encode_record`], borrowed.
pub(crate) struct Record<'a> {
    pub(crate) message_id: u64,
    pub(crate) sent_at: u64,
    pub(crate) sender: &'a [u8],
    pub(crate) temp_id: &'a [u8],
    pub(crate) text: &'a [u8],
}

/// Decodes a record; `None` when it is not one this version wrote.
pub(crate) fn decode_record(v: &[u8]) -> Option<Record<'_>> {
    let (&version, rest) = v.split_first()?;
    if version != 1 {
        return None;
    }
    let message_id = bytes_u64(rest.get(..8)?)?;
    let sent_at = bytes_u64(rest.get(8..16)?)?;
    let rest = rest.get(16..)?;
    let (sender, rest) = take_u16_prefixed(rest)?;
    let (temp_id, text) = take_u16_prefixed(rest)?;
    Some(Record {
        message_id,
        sent_at,
        sender,
        temp_id,
        text,
    })
}

fn take_u16_prefixed(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(u16::from_be_bytes(b.get(..2)?.try_into().ok()?));
    let body = b.get(2..2 + len)?;
    Some((body, &b[2 + len..]))
}

/// `hash4(thread) | thread`.
pub(crate) fn thread_key(t: &ThreadId) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + t.as_str().len());
    k.extend_from_slice(&hash4(t.as_str()));
    k.extend_from_slice(t.as_str().as_bytes());
    k
}

/// `hash4(user) | user | 0x00`: prefix of a user's index rows.
pub(crate) fn user_prefix(u: &UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + u.as_str().len() + 1 + 32);
    k.extend_from_slice(&hash4(u.as_str()));
    k.extend_from_slice(u.as_str().as_bytes());
    k.push(0);
    k
}

pub(crate) fn user_thread_key(u: &UserId, t: &ThreadId) -> Vec<u8> {
    let mut k = user_prefix(u);
    k.extend_from_slice(t.as_str().as_bytes());
    k
}

/// The smallest key greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

pub(crate) fn u64_bytes(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub(crate) fn bytes_u64(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

// ---- Thrift struct builders (the generated structs have no Default) ----

pub(crate) fn cv(family: &[u8], qualifier: &[u8], value: Vec<u8>) -> TColumnValue {
    TColumnValue {
        family: family.to_vec(),
        qualifier: qualifier.to_vec(),
        value,
        timestamp: None,
        tags: None,
        type_: None,
    }
}

pub(crate) fn cv_at(family: &[u8], qualifier: &[u8], value: Vec<u8>, ts: i64) -> TColumnValue {
    TColumnValue {
        timestamp: Some(ts),
        ..cv(family, qualifier, value)
    }
}

pub(crate) fn tput(row: Vec<u8>, column_values: Vec<TColumnValue>) -> TPut {
    TPut {
        row,
        column_values,
        timestamp: None,
        attributes: None,
        durability: None,
        cell_visibility: None,
    }
}

pub(crate) fn col(family: &[u8]) -> TColumn {
    TColumn {
        family: family.to_vec(),
        qualifier: None,
        timestamp: None,
    }
}

pub(crate) fn col_q(family: &[u8], qualifier: &[u8]) -> TColumn {
    TColumn {
        family: family.to_vec(),
        qualifier: Some(qualifier.to_vec()),
        timestamp: None,
    }
}

pub(crate) fn tget(row: Vec<u8>, columns: Option<Vec<TColumn>>) -> TGet {
    TGet {
        row,
        columns,
        timestamp: None,
        time_range: None,
        max_versions: Some(1),
        filter_string: None,
        attributes: None,
        authorizations: None,
        consistency: None,
        target_replica_id: None,
        cache_blocks: None,
        store_limit: None,
        store_offset: None,
        existence_only: None,
        filter_bytes: None,
    }
}

pub(crate) fn tscan(
    start: Vec<u8>,
    stop: Vec<u8>,
    columns: Option<Vec<TColumn>>,
    reversed: bool,
    limit: i32,
) -> TScan {
    TScan {
        start_row: Some(start),
        stop_row: Some(stop),
        columns,
        caching: Some(limit.clamp(1, 1000)),
        max_versions: Some(1),
        time_range: None,
        filter_string: None,
        batch_size: None,
        attributes: None,
        authorizations: None,
        reversed: Some(reversed),
        cache_blocks: None,
        col_fam_time_range_map: None,
        read_type: None,
        limit: Some(limit),
        consistency: None,
        target_replica_id: None,
        filter_bytes: None,
    }
}

pub(crate) fn table_name(name: &str) -> TTableName {
    TTableName {
        ns: Some(b"default".to_vec()),
        qualifier: name.as_bytes().to_vec(),
    }
}

pub(crate) fn family(name: &[u8], ttl: Option<i32>) -> TColumnFamilyDescriptor {
    TColumnFamilyDescriptor {
        name: name.to_vec(),
        attributes: None,
        configuration: None,
        block_size: None,
        bloomn_filter_type: Some(TBloomFilterType::ROW),
        compression_type: Some(TCompressionAlgorithm::NONE),
        dfs_replication: None,
        data_block_encoding: Some(TDataBlockEncoding::FAST_DIFF),
        keep_deleted_cells: None,
        max_versions: Some(1),
        min_versions: None,
        scope: None,
        time_to_live: ttl,
        block_cache_enabled: Some(true),
        cache_blooms_on_write: None,
        cache_data_on_write: None,
        cache_indexes_on_write: None,
        compress_tags: None,
        evict_blocks_on_close: None,
        in_memory: None,
    }
}

/// The three tables' names.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) messages: Vec<u8>,
    pub(crate) threads: Vec<u8>,
    pub(crate) user_threads: Vec<u8>,
}

impl Tables {
    pub(crate) fn new(prefix: &str) -> Tables {
        Tables {
            messages: format!("{prefix}messages").into_bytes(),
            threads: format!("{prefix}threads").into_bytes(),
            user_threads: format!("{prefix}user_threads").into_bytes(),
        }
    }

    /// The descriptors `ensure_tables` creates. `message_ttl` applies to family `m` only.
    pub(crate) fn descriptors(&self, message_ttl: Option<i32>) -> Vec<TTableDescriptor> {
        let desc = |name: &[u8], families: Vec<TColumnFamilyDescriptor>| TTableDescriptor {
            table_name: table_name(&String::from_utf8_lossy(name)),
            columns: Some(families),
            attributes: Some(BTreeMap::new()),
            durability: None,
        };
        vec![
            desc(
                &self.messages,
                vec![family(FAM_MSG, message_ttl), family(FAM_HEAD, None)],
            ),
            desc(
                &self.threads,
                vec![family(FAM_THREAD, None), family(FAM_WM, None)],
            ),
            desc(&self.user_threads, vec![family(FAM_USER, None)]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let u = UserId::new("alice").expect("id");
        let r = encode_record(MessageId(7), 99, &u, "tmp-1", "héllo");
        let d = decode_record(&r).expect("decodes");
        assert_eq!((d.message_id, d.sent_at), (7, 99));
        assert_eq!(
            (d.sender, d.temp_id, d.text),
            (&b"alice"[..], &b"tmp-1"[..], "héllo".as_bytes())
        );
        assert!(decode_record(&r[..10]).is_none());
        assert!(decode_record(&[2, 0, 0]).is_none());
    }

    #[test]
    fn blocks_and_keys() {
        assert_eq!(
            (block_of(1), block_of(BLOCK), block_of(BLOCK + 1)),
            (0, 0, 1)
        );
        assert_eq!(block_bounds(1), (BLOCK + 1, 2 * BLOCK));
        let t = ThreadId::new("g:1").expect("id");
        assert!(block_key(&t, 1) < block_key(&t, 2));
        assert!(block_key(&t, 255) < block_key(&t, 256));
        assert_eq!(
            block_of_key(&block_prefix(&t), &block_key(&t, 42)),
            Some(42)
        );
        let key = block_key(&t, 3);
        let (thread, kind, rest) = split_key(&key).expect("splits");
        assert_eq!(
            (thread, kind, rest),
            ("g:1", KIND_BLOCK, &3u64.to_be_bytes()[..])
        );
        assert!(split_key(&schema_key()).is_none());
        let v1 = msg_key(&t, 5);
        let (_, kind, _) = split_key(&v1).expect("v1 key");
        assert!(is_v1_message_kind(kind));
    }

    #[test]
    fn keys_sort_by_seq_and_stay_inside_the_thread() {
        let t = ThreadId::new("g:1").expect("id");
        let t2 = ThreadId::new("g:10").expect("id");
        assert!(msg_key(&t, 9) < msg_key(&t, 10));
        assert!(msg_key(&t, 255) < msg_key(&t, 256));
        let p = msg_prefix(&t);
        assert!(msg_key(&t, 1).starts_with(&p));
        assert!(!msg_key(&t2, 1).starts_with(&p));
        assert!(head_key(&t) < p && p < dedup_key(&t, &UserId::new("a").expect("id"), "x"));
        assert_eq!(seq_of_key(&p, &msg_key(&t, 42)), Some(42));
        assert_eq!(prefix_end(&[1, 2, 0xff]), vec![1, 3]);
    }
}
