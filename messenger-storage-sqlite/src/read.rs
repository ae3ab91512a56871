//! Reads: plain functions over a connection (a reader's, or the writer's inside its
//! transaction). Each is a handful of indexed lookups or one range scan.

use std::collections::HashMap;

use messenger_core::model::{
    HistoryPage, HistoryQuery, StoredMessage, ThreadInfo, ThreadKind, UserThread, Watermark,
};
use messenger_core::{Error, MessageId, Result, ThreadId, UserId};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{db_error, Shared};

const COLUMNS: &str = "seq, id, sender, temp_id, text, sent_at";

fn user(s: String) -> Result<UserId> {
    UserId::new(&s)
        .map_err(|e| Error::internal(format!("sqlite store: a stored user id is bad: {e}")))
}

/// A message row as selected with [`COLUMNS`]: seq, id, sender, temp_id, text, sent_at.
type Raw = (i64, i64, String, String, String, i64);

fn raw(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn message(
    thread: &ThreadId,
    (seq, id, sender, temp_id, text, sent_at): Raw,
) -> Result<StoredMessage> {
    Ok(StoredMessage {
        thread_id: thread.clone(),
        seq: seq as u64,
        message_id: MessageId(id as u64),
        sender_id: user(sender)?,
        temp_id,
        text,
        sent_at: sent_at as u64,
    })
}

/// The thread's key, if it has one (only committed keys are visible to readers, so a
/// found key can be cached).
pub(crate) fn key(c: &Connection, s: &Shared, thread: &ThreadId) -> Result<Option<i64>> {
    if let Some(t) = s.key(thread) {
        return Ok(Some(t));
    }
    let t: Option<i64> = c
        .prepare_cached("SELECT t FROM thread_keys WHERE name = ?1")
        .and_then(|mut st| st.query_row([thread.as_str()], |r| r.get(0)).optional())
        .map_err(|e| db_error("reading a thread key", e))?;
    if let Some(t) = t {
        s.remember_key(thread, t);
    }
    Ok(t)
}

pub(crate) fn fetch(
    c: &Connection,
    s: &Shared,
    thread: &ThreadId,
    q: HistoryQuery,
) -> Result<HistoryPage> {
    let Some(t) = key(c, s, thread)? else {
        return Ok(HistoryPage::default());
    };
    let limit = q.limit.max(1);
    // Inclusive bounds [lo, hi] as SQLite integers.
    let lo = q
        .after_seq
        .map_or(1, |a| a.saturating_add(1))
        .min(i64::MAX as u64) as i64;
    let hi = match q.before_seq {
        Some(b) => b.saturating_sub(1).min(i64::MAX as u64) as i64,
        None => i64::MAX,
    };
    if lo > hi {
        return Ok(HistoryPage::default());
    }
    let forward = q.after_seq.is_some();
    let sql = if forward {
        format!(
            "SELECT {COLUMNS} FROM messages WHERE t = ?1 AND seq >= ?2 AND seq <= ?3 \
             ORDER BY seq ASC LIMIT ?4"
        )
    } else {
        format!(
            "SELECT {COLUMNS} FROM messages WHERE t = ?1 AND seq >= ?2 AND seq <= ?3 \
             ORDER BY seq DESC LIMIT ?4"
        )
    };
    let fetch_n = i64::try_from(limit)
        .unwrap_or(i64::MAX - 1)
        .saturating_add(1);
    let mut st = c
        .prepare_cached(&sql)
        .map_err(|e| db_error("preparing a history read", e))?;
    let rows = st
        .query_map(params![t, lo, hi, fetch_n], raw)
        .map_err(|e| db_error("reading history", e))?;
    let mut messages = Vec::with_capacity(limit.min(256) + 1);
    for r in rows {
        messages.push(message(
            thread,
            r.map_err(|e| db_error("reading history", e))?,
        )?);
    }
    let has_more = messages.len() > limit;
    messages.truncate(limit);
    if !forward {
        messages.reverse();
    }
    Ok(HistoryPage { messages, has_more })
}

pub(crate) fn get(
    c: &Connection,
    s: &Shared,
    thread: &ThreadId,
    id: MessageId,
) -> Result<Option<StoredMessage>> {
    let Some(t) = key(c, s, thread)? else {
        return Ok(None);
    };
    let m = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE id = ?1 AND t = ?2"
        ))
        .and_then(|mut st| st.query_row(params![id.get() as i64, t], raw).optional())
        .map_err(|e| db_error("reading a message", e))?;
    m.map(|m| message(thread, m)).transpose()
}

/// The message appended as (sender, temp_id) in thread `t`.
pub(crate) fn by_temp_id(
    c: &Connection,
    t: i64,
    thread: &ThreadId,
    sender: &UserId,
    temp_id: &str,
) -> Result<Option<StoredMessage>> {
    let m = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE t = ?1 AND sender = ?2 AND temp_id = ?3"
        ))
        .and_then(|mut st| {
            st.query_row(params![t, sender.as_str(), temp_id], raw)
                .optional()
        })
        .map_err(|e| db_error("reading a duplicate's original", e))?;
    m.map(|m| message(thread, m)).transpose()
}

pub(crate) fn last_seqs(c: &Connection, s: &Shared, threads: &[ThreadId]) -> Result<Vec<u64>> {
    let mut st = c
        .prepare_cached("SELECT seq FROM messages WHERE t = ?1 ORDER BY seq DESC LIMIT 1")
        .map_err(|e| db_error("preparing a last seq read", e))?;
    let mut out = Vec::with_capacity(threads.len());
    for thread in threads {
        let last = match key(c, s, thread)? {
            None => 0,
            Some(t) => st
                .query_row([t], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(|e| db_error("reading a last seq", e))?
                .unwrap_or(0) as u64,
        };
        out.push(last);
    }
    Ok(out)
}

pub(crate) fn count_unread(
    c: &Connection,
    s: &Shared,
    thread: &ThreadId,
    reader: &UserId,
    after_seq: u64,
) -> Result<u64> {
    let Some(t) = key(c, s, thread)? else {
        return Ok(0);
    };
    let after = after_seq.min(i64::MAX as u64) as i64;
    let n: i64 = c
        .prepare_cached("SELECT count(*) FROM messages WHERE t = ?1 AND seq > ?2 AND sender <> ?3")
        .and_then(|mut st| st.query_row(params![t, after, reader.as_str()], |r| r.get(0)))
        .map_err(|e| db_error("counting unread messages", e))?;
    Ok(n as u64)
}

fn kind(s: &str) -> Result<ThreadKind> {
    match s {
        "direct" => Ok(ThreadKind::Direct),
        "group" => Ok(ThreadKind::Group),
        other => Err(Error::internal(format!(
            "sqlite store: unknown thread kind {other:?}"
        ))),
    }
}

fn members(c: &Connection, t: i64) -> Result<Vec<UserId>> {
    let mut st = c
        .prepare_cached("SELECT user FROM members WHERE t = ?1 ORDER BY pos")
        .map_err(|e| db_error("preparing a member read", e))?;
    let rows = st
        .query_map([t], |r| r.get::<_, String>(0))
        .map_err(|e| db_error("reading members", e))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(user(r.map_err(|e| db_error("reading members", e))?)?);
    }
    Ok(out)
}

/// The thread record of key `t` (named `thread`), if the thread exists.
pub(crate) fn thread_by_key(
    c: &Connection,
    t: i64,
    thread: &ThreadId,
) -> Result<Option<ThreadInfo>> {
    let row: Option<(String, Option<String>, i64)> = c
        .prepare_cached("SELECT kind, title, created_at FROM threads WHERE t = ?1")
        .and_then(|mut st| {
            st.query_row([t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(|e| db_error("reading a thread", e))?;
    let Some((k, title, created_at)) = row else {
        return Ok(None);
    };
    Ok(Some(ThreadInfo {
        thread_id: thread.clone(),
        kind: kind(&k)?,
        title,
        members: members(c, t)?,
        created_at: created_at as u64,
    }))
}

pub(crate) fn thread_info(
    c: &Connection,
    s: &Shared,
    thread: &ThreadId,
) -> Result<Option<ThreadInfo>> {
    match key(c, s, thread)? {
        None => Ok(None),
        Some(t) => thread_by_key(c, t, thread),
    }
}

pub(crate) fn list_user_threads(
    c: &Connection,
    _s: &Shared,
    u: &UserId,
) -> Result<Vec<UserThread>> {
    let mut st = c
        .prepare_cached(
            "SELECT m.t, k.name FROM members m JOIN thread_keys k ON k.t = m.t \
             WHERE m.user = ?1 ORDER BY m.t",
        )
        .map_err(|e| db_error("preparing a thread list", e))?;
    let rows = st
        .query_map([u.as_str()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(|e| db_error("listing threads", e))?;
    let mut keys = Vec::new();
    for r in rows {
        keys.push(r.map_err(|e| db_error("listing threads", e))?);
    }
    let mut wm = c
        .prepare_cached("SELECT user, delivered, read FROM watermarks WHERE t = ?1")
        .map_err(|e| db_error("preparing a watermark read", e))?;
    let mut out = Vec::with_capacity(keys.len());
    for (t, name) in keys {
        let thread = ThreadId::new(&name).map_err(|e| {
            Error::internal(format!("sqlite store: a stored thread id is bad: {e}"))
        })?;
        let Some(info) = thread_by_key(c, t, &thread)? else {
            continue;
        };
        let mut marks: HashMap<String, Watermark> = HashMap::new();
        let rows = wm
            .query_map([t], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Watermark {
                        delivered_seq: r.get::<_, i64>(1)? as u64,
                        read_seq: r.get::<_, i64>(2)? as u64,
                    },
                ))
            })
            .map_err(|e| db_error("reading watermarks", e))?;
        for r in rows {
            let (who, w) = r.map_err(|e| db_error("reading watermarks", e))?;
            marks.insert(who, w);
        }
        let receipts = info
            .members
            .iter()
            .map(|m| {
                (
                    m.clone(),
                    marks.get(m.as_str()).copied().unwrap_or_default(),
                )
            })
            .collect();
        out.push(UserThread {
            thread: info,
            receipts,
        });
    }
    Ok(out)
}
