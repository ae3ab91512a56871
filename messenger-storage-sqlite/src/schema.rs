//! The database file's schema and its version.
//!
//! `PRAGMA application_id` marks the file as a messenger store and `PRAGMA user_version`
//! carries the schema version. A file with a newer version than [`SCHEMA_VERSION`] is
//! refused (this build would misread it); an older one is migrated forward in one
//! transaction at open (version 1 -> 2 adds the push tables).
//!
//! Layout (see the README for the reasoning):
//! - `thread_keys`: thread id text -> a small integer `t` used by every other table,
//!   so a message row does not repeat a 20 to 128 byte thread id three times.
//! - `messages`: clustered on `(t, seq)` (WITHOUT ROWID), so a history page is one range
//!   scan; a unique index on `(t, sender, temp_id)` is the idempotency key, an index on
//!   `id` serves `get`.
//! - `threads`, `members` (with an index by user for a user's thread list) and
//!   `watermarks`.
//! - Version 2: `push_targets` and `push_mutes` (see `crate::push`).

use rusqlite::Connection;

use crate::OpenError;

/// The schema version this build writes and reads: 1 messages and threads, 2 adds push
/// targets and mutes (`crate::push`).
pub const SCHEMA_VERSION: i64 = 2;

/// `PRAGMA application_id`: "MsgR" in ASCII, marks a messenger store.
pub const APPLICATION_ID: i64 = 0x4d73_6752;

const V1: &str = "
CREATE TABLE thread_keys (
    t    INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE messages (
    t       INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    id      INTEGER NOT NULL,
    sender  TEXT NOT NULL,
    temp_id TEXT NOT NULL,
    text    TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (t, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_by_temp_id ON messages (t, sender, temp_id);
CREATE INDEX messages_by_id ON messages (id);
CREATE TABLE threads (
    t          INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    title      TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE members (
    t    INTEGER NOT NULL,
    user TEXT NOT NULL,
    pos  INTEGER NOT NULL,
    PRIMARY KEY (t, user)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user, t);
CREATE TABLE watermarks (
    t         INTEGER NOT NULL,
    user      TEXT NOT NULL,
    delivered INTEGER NOT NULL,
    read      INTEGER NOT NULL,
    PRIMARY KEY (t, user)
) WITHOUT ROWID;
";

/// Checks the file's identity and version, creating the schema in an empty file.
/// Runs on the writer connection before anything else.
pub(crate) fn prepare(conn: &mut Connection, db: &std::path::Path) -> Result<(), OpenError> {
    let sqlite = |source| OpenError::Sqlite {
        path: db.to_path_buf(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite)?;
    let app: i64 = tx
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(sqlite)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite)?;
    let tables: i64 = tx
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite)?;
    if app == 0 && version == 0 && tables == 0 {
        tx.execute_batch(V1).map_err(sqlite)?;
        tx.execute_batch(crate::push::V2).map_err(sqlite)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(sqlite)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        tracing::info!(db = %db.display(), version = SCHEMA_VERSION, "created a new store");
        return Ok(());
    }
    if app != APPLICATION_ID {
        return Err(OpenError::NotAStore {
            path: db.to_path_buf(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: db.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 1 {
        return Err(OpenError::NotAStore {
            path: db.to_path_buf(),
        });
    }
    // Each step brings the file one version forward, all in this transaction: a failed
    // migration leaves the file as it was.
    if version < 2 {
        tx.execute_batch(crate::push::V2).map_err(sqlite)?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite)?;
        tracing::info!(db = %db.display(), from = version, to = SCHEMA_VERSION, "migrated the store's schema");
    }
    tx.commit().map_err(sqlite)?;
    Ok(())
}
