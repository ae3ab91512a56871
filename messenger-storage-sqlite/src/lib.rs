//! The embedded durable store: [`MessageStore`], [`ThreadStore`] and [`PushRegistry`]
//! in one data directory, on SQLite in WAL mode. The `messenger-server` binary's default store.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use messenger_storage_sqlite::{SqliteOptions, SqliteStore, SyncMode};
//!
//! let store = SqliteStore::open(SqliteOptions::new("./messenger-data").sync(SyncMode::Full)).await?;
//! let messages: Arc<dyn messenger_core::MessageStore> = Arc::new(store.clone());
//! let threads: Arc<dyn messenger_core::ThreadStore> = Arc::new(store);
//! # drop((messages, threads)); Ok(()) }
//! ```
//!
//! How it works:
//! - **One writer thread** owns the only writing connection and is fed by a channel.
//!   Every write that is waiting when it wakes up (the engine's per-thread batches of
//!   every thread, membership changes, receipts) runs in **one transaction**, each in a
//!   savepoint of its own so one failing request never fails the others, and one
//!   commit makes them all durable: the fsync is shared by everything that arrived
//!   while the previous commit ran. Replies go out only after the commit.
//! - **Reads** run on tokio's blocking pool (`spawn_blocking`) on a small pool of
//!   read-only connections; WAL lets them read while the writer writes. Blocking SQLite
//!   calls never run on the async workers.
//! - Thread records are cached in memory (invalidated by the writer after each commit),
//!   so the engine's membership check on every send costs no SQLite call.
//! - The directory is held with an exclusive lock on `DIR/LOCK` (see [`OpenError::Locked`])
//!   and the schema carries a version; a newer one is refused ([`OpenError::NewerSchema`]).
//!
//! Durability ([`SyncMode`]): with `Full` a commit is fsynced before any reply (survives
//! power loss); with `Normal` it is written to the OS before any reply (survives a killed
//! process, may lose the last commits on power loss or an OS crash; never corrupts).

mod lock;
mod push;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use messenger_core::model::{
    check_batch, AckStatus, Appended, CreatedThread, HistoryPage, HistoryQuery, MembershipChange,
    NewMessage, NewThread, StoredMessage, ThreadInfo, UserThread, WatermarkUpdate,
};
use messenger_core::push::{PushRegistration, PushTargets, ThreadMute};
use messenger_core::{
    Error, MessageId, MessageStore, PushRegistry, Result, ThreadId, ThreadStore, UserId,
};
use rusqlite::{Connection, OpenFlags};

pub use lock::LOCK_FILE;
pub use schema::SCHEMA_VERSION;

/// The database file's name inside the data directory (with `-wal` and `-shm` beside it).
pub const DB_FILE: &str = "messenger.db";

/// How hard a commit is made durable before the store answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncMode {
    /// `PRAGMA synchronous = FULL`: every commit is fsynced to disk before the store
    /// answers. An acknowledged write survives a killed process, an OS crash and power
    /// loss.
    #[default]
    Full,
    /// `PRAGMA synchronous = NORMAL`: a commit is written to the OS (the WAL) before the
    /// store answers and fsynced at checkpoints. An acknowledged write survives a killed
    /// process; after an OS crash or power loss the last commits may be missing (the
    /// database is never corrupted).
    Normal,
}

impl SyncMode {
    /// The name used in configuration and logs (`full`, `normal`).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Full => "full",
            SyncMode::Normal => "normal",
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// Durability of a commit. Default [`SyncMode::Full`].
    pub sync: SyncMode,
    /// Most read connections kept open. Default 4.
    pub readers: usize,
    /// Most write requests one transaction takes (the writer's group commit). Default
    /// 4096.
    pub max_batch: usize,
    /// Thread records kept in the membership cache. Default 100 000.
    pub thread_cache: usize,
    /// SQLite page cache per connection, in KiB. Default 16 MiB for the writer; readers
    /// get a quarter each.
    pub cache_kib: u32,
}

impl SqliteOptions {
    /// The defaults for the data directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            dir: dir.into(),
            sync: SyncMode::default(),
            readers: 4,
            max_batch: 4096,
            thread_cache: 100_000,
            cache_kib: 16 * 1024,
        }
    }

    /// Sets the [`SyncMode`].
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.sync = sync;
        self
    }
}

/// Why a data directory cannot be opened. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The path exists and is not a directory.
    #[error(
        "{} is not a directory: point the data directory (--data-dir) at a directory, or \
         move that file away",
        path.display()
    )]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The directory (or its `LOCK` file) cannot be created or written.
    #[error(
        "cannot write to the data directory {}: {source}. Fix its permissions (the server \
         needs to create and write files there) or choose another --data-dir",
        path.display()
    )]
    NotWritable {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error(
        "the data directory {} is in use by another running process{}: stop that process, \
         or give this one another --data-dir (two processes never share one store)",
        path.display(),
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The pid written by the holder, if it could be read.
        holder: Option<u32>,
    },
    /// The schema is newer than this build understands.
    #[error(
        "{} has schema version {found}, newer than this build's {supported}: it was written \
         by a newer messenger-server. Run that version (or newer), or restore a backup \
         made for this one",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// The file is an SQLite database of something else, or not a database at all.
    #[error(
        "{} is not a messenger store: choose an empty or messenger data directory \
         (--data-dir)",
        path.display()
    )]
    NotAStore {
        /// The database file.
        path: PathBuf,
    },
    /// SQLite refused to open or read the database.
    #[error(
        "cannot open the database {}: {source}. Check the disk (space, permissions) and that \
         the file is not damaged (sqlite3 {} 'PRAGMA integrity_check')",
        path.display(),
        path.display()
    )]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

/// The embedded durable [`MessageStore`] and [`ThreadStore`]. Cheap to clone; clones
/// share one database. The directory stays locked until the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("dir", &self.inner.options.dir)
            .field("sync", &self.inner.options.sync)
            .finish_non_exhaustive()
    }
}

struct Inner {
    options: SqliteOptions,
    db: PathBuf,
    /// `None` once dropping (closes the channel so the writer ends).
    writer: Option<tokio::sync::mpsc::Sender<writer::Work>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    readers: Mutex<Vec<Connection>>,
    _lock: lock::DirLock,
}

/// What the writer and the readers share: the caches.
pub(crate) struct Shared {
    /// thread id -> `t`. Entries never change once committed; filled by readers and by
    /// the writer after each commit.
    pub(crate) keys: Mutex<std::collections::HashMap<ThreadId, i64>>,
    /// Thread records, invalidated by the writer after each commit that changed them.
    pub(crate) threads: Mutex<ThreadCache>,
    pub(crate) key_cap: usize,
    pub(crate) thread_cap: usize,
}

/// Thread records and the epoch that guards fills (see [`Shared::fill_thread`]).
#[derive(Default)]
pub(crate) struct ThreadCache {
    pub(crate) epoch: u64,
    pub(crate) map: std::collections::HashMap<ThreadId, ThreadInfo>,
}

impl Shared {
    pub(crate) fn key(&self, thread: &ThreadId) -> Option<i64> {
        lock(&self.keys).get(thread).copied()
    }

    pub(crate) fn remember_key(&self, thread: &ThreadId, t: i64) {
        let mut keys = lock(&self.keys);
        if keys.len() >= self.key_cap {
            keys.clear();
        }
        keys.insert(thread.clone(), t);
    }

    /// The cached record and the current epoch (to pass to `fill_thread` on a miss).
    pub(crate) fn cached_thread(&self, thread: &ThreadId) -> (Option<ThreadInfo>, u64) {
        let c = lock(&self.threads);
        (c.map.get(thread).cloned(), c.epoch)
    }

    /// Caches a record read from the database, unless the writer committed a thread
    /// change since `epoch` was read (then the record may be stale).
    pub(crate) fn fill_thread(&self, info: &ThreadInfo, epoch: u64) {
        let mut c = lock(&self.threads);
        if c.epoch != epoch {
            return;
        }
        if c.map.len() >= self.thread_cap {
            c.map.clear();
        }
        c.map.insert(info.thread_id.clone(), info.clone());
    }

    /// Called by the writer after a commit (or a rollback) that touched these threads.
    pub(crate) fn invalidate(&self, threads: &[ThreadId]) {
        if threads.is_empty() {
            return;
        }
        let mut c = lock(&self.threads);
        c.epoch += 1;
        for t in threads {
            c.map.remove(t);
        }
    }
}

/// Locks a mutex, taking the data even if a holder panicked (the caches stay valid:
/// every update is a single insert or removal).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Maps an SQLite error to the core error: the disk, locks and I/O are transient
/// (`unavailable`), the rest is `internal`.
pub(crate) fn db_error(what: &str, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    let transient = matches!(
        e.sqlite_error_code(),
        Some(
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::DiskFull
                | C::SystemIoFailure
                | C::CannotOpen
                | C::ReadOnly
                | C::PermissionDenied
                | C::OutOfMemory
        )
    );
    let msg = format!("sqlite store: {what}");
    if transient {
        Error::unavailable(msg).with_source(e)
    } else {
        Error::internal(msg).with_source(e)
    }
}

fn open_connection(db: &Path, cache_kib: u32) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "cache_size", -i64::from(cache_kib))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `options.dir`: checks the directory, takes
    /// its lock, checks or creates the schema and starts the writer thread. Runs the
    /// blocking work on tokio's blocking pool; must be called inside a tokio runtime.
    pub async fn open(options: SqliteOptions) -> std::result::Result<SqliteStore, OpenError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(options))
            .await
            .unwrap_or_else(|e| {
                Err(OpenError::NotWritable {
                    path: PathBuf::new(),
                    source: std::io::Error::other(format!("the open task failed: {e}")),
                })
            })
    }

    fn open_blocking(options: SqliteOptions) -> std::result::Result<SqliteStore, OpenError> {
        let dir = options.dir.clone();
        match std::fs::metadata(&dir) {
            Ok(m) if !m.is_dir() => return Err(OpenError::NotADirectory { path: dir }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(|source| OpenError::NotWritable {
                    path: dir.clone(),
                    source,
                })?;
            }
            Err(source) => return Err(OpenError::NotWritable { path: dir, source }),
        }
        let dir_lock = lock::DirLock::acquire(&dir)?;
        let db = dir.join(DB_FILE);
        if let Ok(m) = std::fs::metadata(&db) {
            if !m.is_file() {
                return Err(OpenError::NotAStore { path: db });
            }
        }
        let sqlite = |source| OpenError::Sqlite {
            path: db.clone(),
            source,
        };
        let mut conn = open_connection(&db, options.cache_kib).map_err(|source| {
            match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => {
                    OpenError::NotAStore { path: db.clone() }
                }
                _ => sqlite(source),
            }
        })?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|source| match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => {
                    OpenError::NotAStore { path: db.clone() }
                }
                _ => sqlite(source),
            })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(sqlite(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode WAL refused (got {mode})"
            ))));
        }
        conn.pragma_update(None, "synchronous", options.sync.as_str())
            .map_err(sqlite)?;
        schema::prepare(&mut conn, &db)?;
        // Checkpoints run on a thread of their own (writer::Checkpointer), not inside
        // the commit that crosses SQLite's threshold; after a reset the WAL file is cut
        // back to 64 MiB.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sqlite)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(sqlite)?;
        let ckpt_conn = open_connection(&db, 1024).map_err(sqlite)?;
        ckpt_conn
            .pragma_update(None, "synchronous", options.sync.as_str())
            .map_err(sqlite)?;
        let checkpointer =
            writer::Checkpointer::start(ckpt_conn).map_err(|source| OpenError::NotWritable {
                path: dir.clone(),
                source,
            })?;
        let shared = Arc::new(Shared {
            keys: Mutex::new(Default::default()),
            threads: Mutex::new(ThreadCache::default()),
            key_cap: options.thread_cache.max(1) * 4,
            thread_cap: options.thread_cache.max(1),
        });
        // Room for every session's sends in flight; senders wait (asynchronously) beyond.
        let (tx, rx) = tokio::sync::mpsc::channel(options.max_batch.max(1) * 4);
        let w = writer::Writer::new(conn, shared.clone());
        let max_batch = options.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("messenger-sqlite-writer".into())
            .spawn(move || writer::run(w, rx, max_batch, checkpointer))
            .map_err(|source| OpenError::NotWritable {
                path: dir.clone(),
                source,
            })?;
        tracing::info!(dir = %dir.display(), sync = %options.sync, "sqlite store open");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                options,
                db,
                writer: Some(tx),
                writer_thread: Mutex::new(Some(thread)),
                shared,
                readers: Mutex::new(Vec::new()),
                _lock: dir_lock,
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.options.dir
    }

    /// The database file (`DIR/messenger.db`).
    pub fn db_path(&self) -> &Path {
        &self.inner.db
    }

    /// The sync mode in use.
    pub fn sync_mode(&self) -> SyncMode {
        self.inner.options.sync
    }

    /// Writes a consistent copy of the whole store to `dest` (a new file; `VACUUM
    /// INTO`) while the store keeps serving: an online backup. Open the copy as a data
    /// directory by putting it in an empty directory as `messenger.db`.
    pub async fn backup(&self, dest: impl Into<PathBuf>) -> Result<()> {
        let dest: PathBuf = dest.into();
        if dest.exists() {
            return Err(Error::bad_request(format!(
                "{} exists: a backup is written to a new file",
                dest.display()
            )));
        }
        let Some(dest_str) = dest.to_str().map(str::to_owned) else {
            return Err(Error::bad_request("the backup path is not UTF-8"));
        };
        // A connection of its own: the pooled readers are query-only.
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&db, 2048).map_err(|e| db_error("backup", e))?;
            conn.execute("VACUUM INTO ?1", [dest_str])
                .map_err(|e| db_error("backup", e))?;
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("sqlite store: the backup task failed: {e}")))?
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &Shared) -> Result<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match lock(&inner.readers).pop() {
                Some(c) => c,
                None => {
                    let c = open_connection(&inner.db, (inner.options.cache_kib / 4).max(1024))
                        .map_err(|e| db_error("opening a read connection", e))?;
                    c.pragma_update(None, "query_only", true)
                        .map_err(|e| db_error("opening a read connection", e))?;
                    c
                }
            };
            let r = f(&conn, &inner.shared);
            let mut idle = lock(&inner.readers);
            if idle.len() < inner.options.readers {
                idle.push(conn);
            }
            r
        })
        .await
        .map_err(|e| Error::internal(format!("sqlite store: a read task failed: {e}")))?
    }

    /// Runs `f` on the writer thread inside the next transaction; answers after commit.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut writer::Writer) -> Result<R> + Send + 'static,
    {
        let Some(tx) = &self.inner.writer else {
            return Err(writer::stopped());
        };
        let (work, rx) = writer::job(f);
        tx.send(work).await.map_err(|_| writer::stopped())?;
        rx.await.map_err(|_| writer::stopped())?
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the channel: the writer commits what it holds and ends. Then the read
        // connections close and the lock is released (field order).
        self.writer = None;
        if let Some(t) = lock(&self.writer_thread).take() {
            if t.join().is_err() {
                tracing::error!("the sqlite writer thread panicked");
            }
        }
        lock(&self.readers).clear();
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        let thread = msg.thread_id.clone();
        let mut out = self.append_batch(&thread, vec![msg]).await?;
        out.pop()
            .ok_or_else(|| Error::internal("sqlite store: an append returned nothing"))
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
        let thread = thread.clone();
        self.write(move |w| w.append_batch(&thread, batch)).await
    }

    async fn fetch(&self, thread: &ThreadId, query: HistoryQuery) -> Result<HistoryPage> {
        let thread = thread.clone();
        self.read(move |c, s| read::fetch(c, s, &thread, query))
            .await
    }

    async fn get(&self, thread: &ThreadId, message_id: MessageId) -> Result<Option<StoredMessage>> {
        let thread = thread.clone();
        self.read(move |c, s| read::get(c, s, &thread, message_id))
            .await
    }

    async fn last_seqs(&self, threads: &[ThreadId]) -> Result<Vec<u64>> {
        if threads.is_empty() {
            return Ok(Vec::new());
        }
        let threads = threads.to_vec();
        self.read(move |c, s| read::last_seqs(c, s, &threads)).await
    }

    async fn count_unread(
        &self,
        thread: &ThreadId,
        reader: &UserId,
        after_seq: u64,
    ) -> Result<u64> {
        let (thread, reader) = (thread.clone(), reader.clone());
        self.read(move |c, s| read::count_unread(c, s, &thread, &reader, after_seq))
            .await
    }
}

#[async_trait]
impl ThreadStore for SqliteStore {
    async fn create_thread(&self, thread: NewThread) -> Result<CreatedThread> {
        self.write(move |w| w.create_thread(thread)).await
    }

    async fn get_thread(&self, thread: &ThreadId) -> Result<Option<ThreadInfo>> {
        let (cached, epoch) = self.inner.shared.cached_thread(thread);
        if let Some(info) = cached {
            return Ok(Some(info));
        }
        let thread = thread.clone();
        self.read(move |c, s| {
            let info = read::thread_info(c, s, &thread)?;
            if let Some(info) = &info {
                s.fill_thread(info, epoch);
            }
            Ok(info)
        })
        .await
    }

    async fn add_members(&self, thread: &ThreadId, members: &[UserId]) -> Result<MembershipChange> {
        let (thread, members) = (thread.clone(), members.to_vec());
        self.write(move |w| w.add_members(&thread, &members)).await
    }

    async fn remove_member(&self, thread: &ThreadId, member: &UserId) -> Result<MembershipChange> {
        let (thread, member) = (thread.clone(), member.clone());
        self.write(move |w| w.remove_member(&thread, &member)).await
    }

    async fn list_user_threads(&self, user: &UserId) -> Result<Vec<UserThread>> {
        let user = user.clone();
        self.read(move |c, s| read::list_user_threads(c, s, &user))
            .await
    }

    async fn advance_watermark(
        &self,
        thread: &ThreadId,
        user: &UserId,
        status: AckStatus,
        seq: u64,
    ) -> Result<WatermarkUpdate> {
        let (thread, user) = (thread.clone(), user.clone());
        self.write(move |w| w.advance_watermark(&thread, &user, status, seq))
            .await
    }
}

#[async_trait]
impl PushRegistry for SqliteStore {
    async fn register_target(
        &self,
        reg: PushRegistration,
        max_targets: usize,
    ) -> Result<PushRegistration> {
        self.write(move |w| push::register(w.conn(), reg, max_targets))
            .await
    }

    async fn unregister_target(&self, user: &UserId, target_id: &str) -> Result<bool> {
        let (user, target_id) = (user.clone(), target_id.to_string());
        self.write(move |w| push::unregister(w.conn(), &user, &target_id))
            .await
    }

    async fn list_targets(&self, user: &UserId) -> Result<Vec<PushRegistration>> {
        let user = user.clone();
        self.read(move |c, _| push::targets(c, &user)).await
    }

    async fn set_mute(&self, user: &UserId, mute: ThreadMute) -> Result<()> {
        let user = user.clone();
        self.write(move |w| push::set_mute(w.conn(), &user, &mute))
            .await
    }

    async fn clear_mute(&self, user: &UserId, thread: &ThreadId) -> Result<bool> {
        let (user, thread) = (user.clone(), thread.clone());
        self.write(move |w| push::clear_mute(w.conn(), &user, &thread))
            .await
    }

    async fn list_mutes(&self, user: &UserId) -> Result<Vec<ThreadMute>> {
        let user = user.clone();
        self.read(move |c, _| push::list_mutes(c, &user)).await
    }

    async fn push_targets(&self, user: &UserId, thread: &ThreadId) -> Result<PushTargets> {
        let (user, thread) = (user.clone(), thread.clone());
        self.read(move |c, _| push::push_targets(c, &user, &thread))
            .await
    }
}
