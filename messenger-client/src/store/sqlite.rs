//! [`SqliteStore`]: the persistent store on SQLite (feature `sqlite`).
//!
//! One thread of its own owns the connection; the async methods hand it closures over
//! a channel and await the answer, so no SQLite call ever runs on a tokio worker.
//! (A hand-written actor of a few lines rather than a crate: the crates that wrap
//! rusqlite for tokio pin their own rusqlite version, and the workspace compiles one.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use async_trait::async_trait;
use messenger_core::{MessageId, ThreadId, UserId};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    AckDue, ClientStore, OutboxEntry, ReceiptMark, StoreChanges, StoreError, StoredState,
    ThreadPosition,
};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    thread_id TEXT NOT NULL,
    temp_id   TEXT NOT NULL,
    text      TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    UNIQUE (thread_id, temp_id)
);
CREATE TABLE IF NOT EXISTS threads (
    thread_id      TEXT PRIMARY KEY,
    held_seq       INTEGER NOT NULL,
    ack_seq        INTEGER,
    ack_message_id INTEGER
);
CREATE TABLE IF NOT EXISTS receipts (
    thread_id     TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    delivered_seq INTEGER NOT NULL,
    read_seq      INTEGER NOT NULL,
    PRIMARY KEY (thread_id, user_id)
);
";

/// A [`ClientStore`] in one SQLite file (WAL journal, `synchronous = FULL`: a save
/// that returned survives the process being killed and the machine losing power).
///
/// The file is held with an exclusive lock while the store is open: a second process
/// (or a second `SqliteStore` in this one) on the same file fails to open with a clear
/// error instead of two clients sharing one outbox. The lock goes with the process,
/// also when it is killed. Cheap to clone; the last clone dropped closes the file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    jobs: std_mpsc::Sender<Job>,
    path: PathBuf,
}

fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(format!("{what}: {e}"))
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::new(format!("{what} {v} does not fit SQLite")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::new(format!("stored {what} {v} is negative")))
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`. Fails when the file is not a
    /// store of this version, cannot be created, or is in use by another client.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let open_path = path.clone();
        std::thread::Builder::new()
            .name("messenger-client-sqlite".into())
            .spawn(move || {
                // A client restarted in the same process may find the previous one
                // still closing the file: give it a moment before saying "in use".
                let mut tries = 0;
                let opened = loop {
                    match open_connection(&open_path) {
                        Err(Busy::Yes(e)) if tries < 20 => {
                            tries += 1;
                            tracing::debug!(error = %e, "store busy; retrying");
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        other => break other.map_err(Busy::into_error),
                    }
                };
                let mut conn = match opened {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when every handle is gone.
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| err("cannot start the store thread", e))?;
        ready_rx
            .await
            .map_err(|_| StoreError::new("the store thread ended while opening"))??;
        Ok(SqliteStore { jobs, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the store's thread.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StoreError::new("the store thread is gone"))?;
        rx.await
            .map_err(|_| StoreError::new("the store thread is gone"))?
    }
}

/// An open failure; `Yes` when another connection holds the file.
enum Busy {
    Yes(StoreError),
    No(StoreError),
}

impl Busy {
    fn into_error(self) -> StoreError {
        match self {
            Busy::Yes(e) | Busy::No(e) => e,
        }
    }
}

impl From<StoreError> for Busy {
    fn from(e: StoreError) -> Self {
        Busy::No(e)
    }
}

fn open_connection(path: &Path) -> Result<Connection, Busy> {
    let conn =
        Connection::open(path).map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
    // A busy file fails at once (rusqlite waits 5 s by default); the caller retries.
    conn.busy_timeout(std::time::Duration::ZERO)
        .map_err(|e| err("busy_timeout", e))?;
    // The exclusive lock is taken on the first write below and held while open.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(|e| err("locking_mode", e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| in_use(path, e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| err("synchronous", e))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| in_use(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(Busy::No(StoreError::new(format!(
            "{} was written by a newer messenger-client (schema {version}, this one knows {SCHEMA_VERSION}): upgrade the app or move the file away",
            path.display()
        ))));
    }
    conn.execute_batch(SCHEMA).map_err(|e| in_use(path, e))?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| in_use(path, e))?;
    Ok(conn)
}

fn in_use(path: &Path, e: rusqlite::Error) -> Busy {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    if busy {
        Busy::Yes(StoreError::new(format!(
            "{} is in use by another client (one store per running client)",
            path.display()
        )))
    } else {
        Busy::No(err(&format!("cannot prepare {}", path.display()), e))
    }
}

fn thread_id(s: String) -> Result<ThreadId, StoreError> {
    ThreadId::new(&s).map_err(|e| err("stored thread id", e))
}

fn user_id(s: String) -> Result<UserId, StoreError> {
    UserId::new(&s).map_err(|e| err("stored user id", e))
}

fn load(conn: &mut Connection) -> Result<StoredState, StoreError> {
    let q = |e| err("load", e);
    let mut state = StoredState::default();
    let user: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'user_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(q)?;
    state.user_id = user.map(user_id).transpose()?;
    state.synced = conn
        .query_row("SELECT value FROM meta WHERE key = 'synced'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(q)?
        .is_some_and(|v| v == "1");

    let mut stmt = conn
        .prepare("SELECT thread_id, temp_id, text, queued_at FROM outbox ORDER BY id")
        .map_err(q)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(q)?;
    for row in rows {
        let (t, temp_id, text, at) = row.map_err(q)?;
        state.outbox.push(OutboxEntry {
            thread_id: thread_id(t)?,
            temp_id,
            text,
            queued_at: to_u64(at, "queued_at")?,
        });
    }
    drop(stmt);

    let mut threads = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT thread_id, held_seq, ack_seq, ack_message_id FROM threads")
        .map_err(q)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .map_err(q)?;
    for row in rows {
        let (t, held, ack_seq, ack_id) = row.map_err(q)?;
        let ack_due = match (ack_seq, ack_id) {
            (Some(s), Some(id)) => Some(AckDue {
                seq: to_u64(s, "ack_seq")?,
                message_id: MessageId(to_u64(id, "ack_message_id")?),
            }),
            _ => None,
        };
        threads.insert(
            thread_id(t)?,
            ThreadPosition {
                held_seq: to_u64(held, "held_seq")?,
                ack_due,
            },
        );
    }
    drop(stmt);
    state.threads = threads;

    let mut stmt = conn
        .prepare("SELECT thread_id, user_id, delivered_seq, read_seq FROM receipts ORDER BY thread_id, user_id")
        .map_err(q)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(q)?;
    for row in rows {
        let (t, u, d, r) = row.map_err(q)?;
        state.receipts.push(ReceiptMark {
            thread_id: thread_id(t)?,
            user_id: user_id(u)?,
            delivered_seq: to_u64(d, "delivered_seq")?,
            read_seq: to_u64(r, "read_seq")?,
        });
    }
    Ok(state)
}

fn save(conn: &mut Connection, c: StoreChanges) -> Result<(), StoreError> {
    let q = |e| err("save", e);
    let tx = conn.transaction().map_err(q)?;
    if let Some(u) = &c.user_id {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('user_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![u.as_str()],
        )
        .map_err(q)?;
    }
    if c.synced {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('synced', '1')
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [],
        )
        .map_err(q)?;
    }
    {
        let mut add = tx
            .prepare_cached(
                "INSERT INTO outbox (thread_id, temp_id, text, queued_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (thread_id, temp_id) DO NOTHING",
            )
            .map_err(q)?;
        for e in &c.outbox_added {
            add.execute(params![
                e.thread_id.as_str(),
                e.temp_id,
                e.text,
                to_i64(e.queued_at, "queued_at")?
            ])
            .map_err(q)?;
        }
        let mut remove = tx
            .prepare_cached("DELETE FROM outbox WHERE thread_id = ?1 AND temp_id = ?2")
            .map_err(q)?;
        for (t, temp) in &c.outbox_removed {
            remove.execute(params![t.as_str(), temp]).map_err(q)?;
        }
        let mut pos = tx
            .prepare_cached(
                "INSERT INTO threads (thread_id, held_seq, ack_seq, ack_message_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (thread_id) DO UPDATE SET
                   held_seq = max(held_seq, excluded.held_seq),
                   ack_seq = excluded.ack_seq,
                   ack_message_id = excluded.ack_message_id",
            )
            .map_err(q)?;
        for (t, p) in &c.threads {
            let (ack_seq, ack_id) = match p.ack_due {
                Some(a) => (
                    Some(to_i64(a.seq, "ack seq")?),
                    Some(to_i64(a.message_id.0, "ack message id")?),
                ),
                None => (None, None),
            };
            pos.execute(params![
                t.as_str(),
                to_i64(p.held_seq, "held_seq")?,
                ack_seq,
                ack_id
            ])
            .map_err(q)?;
        }
        let mut rcpt = tx
            .prepare_cached(
                "INSERT INTO receipts (thread_id, user_id, delivered_seq, read_seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (thread_id, user_id) DO UPDATE SET
                   delivered_seq = max(delivered_seq, excluded.delivered_seq),
                   read_seq = max(read_seq, excluded.read_seq)",
            )
            .map_err(q)?;
        for r in &c.receipts {
            rcpt.execute(params![
                r.thread_id.as_str(),
                r.user_id.as_str(),
                to_i64(r.delivered_seq, "delivered_seq")?,
                to_i64(r.read_seq, "read_seq")?
            ])
            .map_err(q)?;
        }
    }
    tx.commit().map_err(q)
}

#[async_trait]
impl ClientStore for SqliteStore {
    async fn load(&self) -> Result<StoredState, StoreError> {
        self.call(load).await
    }

    async fn save(&self, changes: StoreChanges) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.call(move |conn| save(conn, changes)).await
    }
}
