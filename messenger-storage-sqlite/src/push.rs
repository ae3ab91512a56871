//! [`PushRegistry`](messenger_core::PushRegistry) on SQLite (schema version 2): push
//! targets and thread mutes.
//!
//! - `push_targets`: one row per target, keyed by `target_id` (derived from the platform
//!   and the token or endpoint, so one device is one row), holding the user that has it
//!   now: a device that signs in as someone else moves with one upsert. The
//!   registration itself is kept as JSON (`reg`): it is read whole, never queried by
//!   field, and new optional fields need no migration. Index `(user, updated_at)`
//!   serves a user's list and the cap.
//! - `push_mutes`: `(user, thread) -> until` (`NULL`: for ever).
//!
//! Writes go through the writer thread like every other write; reads run on the read
//! pool, and a notification's targets and mute are read in one transaction.

use messenger_core::push::{PushRegistration, PushTargets, ThreadMute};
use messenger_core::time::{now_ms, Millis};
use messenger_core::{Error, Result, ThreadId, UserId};
use rusqlite::{params, Connection, OptionalExtension};

use crate::db_error;

/// The tables schema version 2 adds.
pub(crate) const V2: &str = "
CREATE TABLE push_targets (
    target_id  TEXT PRIMARY KEY,
    user       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    reg        TEXT NOT NULL
);
CREATE INDEX push_targets_by_user ON push_targets (user, updated_at);
CREATE TABLE push_mutes (
    user   TEXT NOT NULL,
    thread TEXT NOT NULL,
    until  INTEGER,
    PRIMARY KEY (user, thread)
) WITHOUT ROWID;
";

fn ms(v: Millis) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::bad_request(format!("time {v} is out of range")))
}

fn decode(json: &str) -> Result<PushRegistration> {
    serde_json::from_str(json).map_err(|e| {
        Error::internal(format!(
            "sqlite store: a stored push target does not decode: {e}"
        ))
    })
}

/// Stores `reg` (writer thread, inside its savepoint).
pub(crate) fn register(
    c: &Connection,
    mut reg: PushRegistration,
    max_targets: usize,
) -> Result<PushRegistration> {
    let what = "registering a push target";
    let held: Option<(String, i64)> = c
        .prepare_cached("SELECT user, created_at FROM push_targets WHERE target_id = ?1")
        .and_then(|mut s| {
            s.query_row([&reg.target_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| db_error(what, e))?;
    // The same user registering again keeps the first registration's time; a device
    // moving to another user starts afresh for that user.
    if let Some((user, created)) = held {
        if user == reg.user_id.as_str() {
            reg.created_at = u64::try_from(created).unwrap_or(reg.created_at);
        }
    }
    let json = serde_json::to_string(&reg)
        .map_err(|e| Error::internal(format!("sqlite store: encoding a push target: {e}")))?;
    c.prepare_cached(
        "INSERT INTO push_targets (target_id, user, created_at, updated_at, reg) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (target_id) DO UPDATE SET user = excluded.user, \
         created_at = excluded.created_at, updated_at = excluded.updated_at, reg = excluded.reg",
    )
    .and_then(|mut s| {
        s.execute(params![
            reg.target_id,
            reg.user_id.as_str(),
            ms(reg.created_at).unwrap_or(i64::MAX),
            ms(reg.updated_at).unwrap_or(i64::MAX),
            json
        ])
    })
    .map_err(|e| db_error(what, e))?;
    // The cap: keep this one and the most recently updated others.
    let keep_others = i64::try_from(max_targets.max(1) - 1).unwrap_or(i64::MAX);
    c.prepare_cached(
        "DELETE FROM push_targets WHERE user = ?1 AND target_id <> ?2 AND target_id NOT IN \
         (SELECT target_id FROM push_targets WHERE user = ?1 AND target_id <> ?2 \
          ORDER BY updated_at DESC, target_id DESC LIMIT ?3)",
    )
    .and_then(|mut s| s.execute(params![reg.user_id.as_str(), reg.target_id, keep_others]))
    .map_err(|e| db_error(what, e))?;
    Ok(reg)
}

/// Removes `user`'s target (writer thread).
pub(crate) fn unregister(c: &Connection, user: &UserId, target_id: &str) -> Result<bool> {
    c.prepare_cached("DELETE FROM push_targets WHERE target_id = ?1 AND user = ?2")
        .and_then(|mut s| s.execute(params![target_id, user.as_str()]))
        .map(|n| n > 0)
        .map_err(|e| db_error("removing a push target", e))
}

/// The user's targets, oldest registration first.
pub(crate) fn targets(c: &Connection, user: &UserId) -> Result<Vec<PushRegistration>> {
    let rows: Vec<String> = c
        .prepare_cached(
            "SELECT reg FROM push_targets WHERE user = ?1 ORDER BY created_at, target_id",
        )
        .and_then(|mut s| {
            s.query_map([user.as_str()], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| db_error("reading push targets", e))?;
    rows.iter().map(|j| decode(j)).collect()
}

/// Mutes a thread (writer thread).
pub(crate) fn set_mute(c: &Connection, user: &UserId, mute: &ThreadMute) -> Result<()> {
    let until = mute.until.map(ms).transpose()?;
    c.prepare_cached(
        "INSERT INTO push_mutes (user, thread, until) VALUES (?1, ?2, ?3) \
         ON CONFLICT (user, thread) DO UPDATE SET until = excluded.until",
    )
    .and_then(|mut s| s.execute(params![user.as_str(), mute.thread_id.as_str(), until]))
    .map(|_| ())
    .map_err(|e| db_error("muting a thread", e))
}

/// Unmutes a thread (writer thread).
pub(crate) fn clear_mute(c: &Connection, user: &UserId, thread: &ThreadId) -> Result<bool> {
    c.prepare_cached("DELETE FROM push_mutes WHERE user = ?1 AND thread = ?2")
        .and_then(|mut s| s.execute(params![user.as_str(), thread.as_str()]))
        .map(|n| n > 0)
        .map_err(|e| db_error("unmuting a thread", e))
}

/// The user's mutes that still hold (expired rows stay until the thread is muted or
/// unmuted again; they are filtered here, and `clear_mute` still reports them).
pub(crate) fn list_mutes(c: &Connection, user: &UserId) -> Result<Vec<ThreadMute>> {
    let now = ms(now_ms())?;
    let rows: Vec<(String, Option<i64>)> = c
        .prepare_cached(
            "SELECT thread, until FROM push_mutes WHERE user = ?1 AND (until IS NULL OR until > ?2)",
        )
        .and_then(|mut s| {
            s.query_map(params![user.as_str(), now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| db_error("reading mutes", e))?;
    rows.into_iter()
        .map(|(t, until)| {
            Ok(ThreadMute {
                thread_id: ThreadId::new(&t).map_err(|e| {
                    Error::internal(format!("sqlite store: a stored thread id is invalid: {e}"))
                })?,
                until: until.map(|u| u64::try_from(u).unwrap_or(0)),
            })
        })
        .collect()
}

/// The user's targets and mute of `thread`, in one read transaction.
pub(crate) fn push_targets(
    c: &Connection,
    user: &UserId,
    thread: &ThreadId,
) -> Result<PushTargets> {
    let tx = c
        .unchecked_transaction()
        .map_err(|e| db_error("reading push targets", e))?;
    let targets = targets(&tx, user)?;
    let until: Option<Option<i64>> = tx
        .prepare_cached("SELECT until FROM push_mutes WHERE user = ?1 AND thread = ?2")
        .and_then(|mut s| {
            s.query_row(params![user.as_str(), thread.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(|e| db_error("reading a mute", e))?;
    drop(tx);
    Ok(PushTargets {
        targets,
        mute: until.map(|u| ThreadMute {
            thread_id: thread.clone(),
            until: u.map(|v| u64::try_from(v).unwrap_or(0)),
        }),
    })
}
