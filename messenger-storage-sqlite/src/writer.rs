//! The writer thread: the only connection that writes, and the group commit.
//!
//! Requests arrive on a channel as [`Job`]s. Each time the writer wakes up it takes
//! every job waiting (up to `max_batch`), runs them in one `BEGIN IMMEDIATE` ...
//! `COMMIT` transaction, each inside a savepoint of its own (a request that fails, say
//! `not_found`, is rolled back alone), and answers every job once the commit returned.
//! With `synchronous = FULL` that commit is one fsync for all of them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use messenger_core::model::{
    AckStatus, Appended, CreatedThread, MembershipChange, NewMessage, NewThread, StoredMessage,
    ThreadInfo, Watermark, WatermarkUpdate,
};
use messenger_core::{Error, ErrorKind, Result, ThreadId, UserId};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::{db_error, read, Shared};

/// A write request on its way to the writer thread.
pub(crate) type Work = Box<dyn Job>;

/// One request: run inside the transaction, then told how the commit went.
pub(crate) trait Job: Send {
    /// Runs the request's statements (inside its own savepoint).
    fn run(&mut self, w: &mut Writer);
    /// Answers the caller: the request's own result if it failed, else the commit's.
    fn finish(self: Box<Self>, commit: &Result<()>);
}

struct Typed<R, F> {
    f: Option<F>,
    result: Option<Result<R>>,
    reply: oneshot::Sender<Result<R>>,
}

impl<R, F> Job for Typed<R, F>
where
    R: Send + 'static,
    F: FnOnce(&mut Writer) -> Result<R> + Send + 'static,
{
    fn run(&mut self, w: &mut Writer) {
        if let Some(f) = self.f.take() {
            self.result = Some(w.savepoint(f));
        }
    }

    fn finish(self: Box<Self>, commit: &Result<()>) {
        let out = match (self.result, commit) {
            (Some(Err(e)), _) => Err(e),
            (_, Err(e)) => Err(copy(e)),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (None, Ok(())) => Err(Error::internal("sqlite store: a write was never run")),
        };
        // The caller may have gone away (a dropped future); the write stands.
        let _ = self.reply.send(out);
    }
}

/// Wraps `f` as a job and returns where its answer will come.
pub(crate) fn job<R, F>(f: F) -> (Work, oneshot::Receiver<Result<R>>)
where
    R: Send + 'static,
    F: FnOnce(&mut Writer) -> Result<R> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    let job = Typed {
        f: Some(f),
        result: None,
        reply,
    };
    (Box::new(job), rx)
}

/// The error every caller gets once the writer thread is gone.
pub(crate) fn stopped() -> Error {
    Error::unavailable("sqlite store: the writer has stopped (the store is closing or failed)")
}

/// The same error for another caller (errors are not `Clone`).
fn copy(e: &Error) -> Error {
    let mut message = e.message().to_string();
    if let Some(source) = std::error::Error::source(e) {
        message = format!("{message}: {source}");
    }
    Error::new(e.kind(), message)
}

/// The writer's connection and what its open transaction changed.
pub(crate) struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    /// Thread keys inserted in the open transaction: cached once it commits.
    new_keys: Vec<(ThreadId, i64)>,
    /// Threads whose record changed in the open transaction: uncached after it ends.
    touched: Vec<ThreadId>,
}

/// The shortest time between two background checkpoints: each one folds what the
/// commits since the last one wrote (a few MiB at full speed) into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL pages (4 KiB each) past which the writer catches the checkpoint up itself.
const WAL_RESTART_PAGES: i64 = 8192;

/// The checkpointer: folds the WAL into the database file on a connection of its own,
/// so that the copy and its fsync never hold up a commit (SQLite's automatic checkpoint,
/// turned off on the writer's connection, runs inside the commit that crosses its
/// threshold, and every send waiting for that commit waits for the checkpoint too).
/// `PASSIVE` never blocks the writer. The writer starts the WAL over from its
/// beginning only when a checkpoint has caught up with it, which a background
/// checkpoint never does while writes keep coming; so once the WAL passes
/// `WAL_RESTART_PAGES` the writer runs one checkpoint itself between two transactions
/// (cheap: only what was written since the last background pass is left to copy).
/// Woken by the writer after commits; ends when the writer is gone.
pub(crate) struct Checkpointer {
    wake: SyncSender<()>,
    catch_up: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    /// Starts the checkpointer thread on `conn` (a read-write connection to the store).
    pub(crate) fn start(conn: Connection) -> std::io::Result<Checkpointer> {
        let (wake, rx) = sync_channel(1);
        let catch_up = Arc::new(AtomicBool::new(false));
        let flag = catch_up.clone();
        let thread = std::thread::Builder::new()
            .name("messenger-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&conn, &rx, &flag))?;
        Ok(Checkpointer {
            wake,
            catch_up,
            thread,
        })
    }

    /// After a commit (on the writer thread): catches up if the WAL grew too long,
    /// then wakes the background checkpoint (at most one is queued; never blocks).
    fn after_commit(&self, writer: &Connection) {
        if self.catch_up.swap(false, Ordering::Relaxed) {
            if let Err(e) = writer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "checkpoint on the writer failed; the WAL keeps growing until one succeeds");
            }
        }
        // Full: a pass is already due; disconnected: the thread is gone (it logged why).
        let _ = self.wake.try_send(());
    }

    /// Stops the thread once its checkpoint in progress (if any) ends.
    fn stop(self) {
        drop(self.wake);
        if self.thread.join().is_err() {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

fn checkpoint_loop(conn: &Connection, wake: &Receiver<()>, catch_up: &AtomicBool) {
    while wake.recv().is_ok() {
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match r {
            Ok((log, done)) => {
                tracing::trace!(wal_pages = log, checkpointed = done, "checkpoint");
                if log > WAL_RESTART_PAGES {
                    catch_up.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "background checkpoint failed; retried after the next commit")
            }
        }
        // Coalesce the commits of the next interval into one checkpoint.
        std::thread::sleep(CHECKPOINT_EVERY);
    }
}

/// The writer thread's loop; ends when every sender is gone.
pub(crate) fn run(
    mut w: Writer,
    mut rx: mpsc::Receiver<Work>,
    max_batch: usize,
    checkpointer: Checkpointer,
) {
    let mut jobs: Vec<Work> = Vec::with_capacity(max_batch.min(1024));
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let outcome = match catch_unwind(AssertUnwindSafe(|| w.transaction(&mut jobs))) {
            Ok(r) => r,
            Err(_) => {
                let _ = w.conn.execute_batch("ROLLBACK");
                tracing::error!(
                    jobs = jobs.len(),
                    "a write panicked; its transaction was rolled back"
                );
                Err(Error::internal(
                    "sqlite store: a write failed unexpectedly and was rolled back",
                ))
            }
        };
        w.publish(outcome.is_ok());
        for j in jobs.drain(..) {
            j.finish(&outcome);
        }
        checkpointer.after_commit(&w.conn);
    }
    checkpointer.stop();
    // Leave a compact WAL behind for the next start (it is replayed otherwise).
    if let Err(e) = w.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "checkpoint at close failed; the WAL is replayed at next open");
    }
}

impl Writer {
    pub(crate) fn new(conn: Connection, shared: Arc<Shared>) -> Writer {
        Writer {
            conn,
            shared,
            new_keys: Vec::new(),
            touched: Vec::new(),
        }
    }

    /// The writing connection (inside the open transaction and the job's savepoint).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| db_error(sql, e))
    }

    fn transaction(&mut self, jobs: &mut [Work]) -> Result<()> {
        self.exec("BEGIN IMMEDIATE")?;
        for j in jobs.iter_mut() {
            j.run(self);
        }
        if let Err(e) = self.exec("COMMIT") {
            tracing::error!(error = %e, jobs = jobs.len(), "commit failed; every write in it failed");
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok(())
    }

    /// After a transaction: caches the keys it committed, uncaches threads it touched.
    fn publish(&mut self, committed: bool) {
        if committed {
            for (name, t) in self.new_keys.drain(..) {
                self.shared.remember_key(&name, t);
            }
        }
        self.new_keys.clear();
        self.shared.invalidate(&self.touched);
        self.touched.clear();
    }

    fn savepoint<R>(&mut self, f: impl FnOnce(&mut Writer) -> Result<R>) -> Result<R> {
        let keys = self.new_keys.len();
        self.exec("SAVEPOINT op")?;
        match f(self) {
            Ok(v) => {
                self.exec("RELEASE op")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.exec("ROLLBACK TO op");
                let _ = self.exec("RELEASE op");
                self.new_keys.truncate(keys);
                Err(e)
            }
        }
    }

    /// The thread's key; with `create`, a new one if it has none.
    fn key(&mut self, thread: &ThreadId, create: bool) -> Result<Option<i64>> {
        if let Some(t) = self.shared.key(thread) {
            return Ok(Some(t));
        }
        let found: Option<i64> = self
            .conn
            .prepare_cached("SELECT t FROM thread_keys WHERE name = ?1")
            .and_then(|mut s| s.query_row([thread.as_str()], |r| r.get(0)).optional())
            .map_err(|e| db_error("reading a thread key", e))?;
        if let Some(t) = found {
            self.new_keys.push((thread.clone(), t));
            return Ok(Some(t));
        }
        if !create {
            return Ok(None);
        }
        self.conn
            .prepare_cached("INSERT INTO thread_keys (name) VALUES (?1)")
            .and_then(|mut s| s.execute([thread.as_str()]))
            .map_err(|e| db_error("creating a thread key", e))?;
        let t = self.conn.last_insert_rowid();
        self.new_keys.push((thread.clone(), t));
        Ok(Some(t))
    }

    /// The thread's key and record, or `not_found`.
    fn existing(&mut self, thread: &ThreadId) -> Result<(i64, ThreadInfo)> {
        let unknown = || Error::not_found(format!("no thread {thread}"));
        let t = self.key(thread, false)?.ok_or_else(unknown)?;
        let info = read::thread_by_key(&self.conn, t, thread)?.ok_or_else(unknown)?;
        Ok((t, info))
    }

    pub(crate) fn append_batch(
        &mut self,
        thread: &ThreadId,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>> {
        let Some(t) = self.key(thread, true)? else {
            return Err(Error::internal("sqlite store: no key for a new thread"));
        };
        let c = &self.conn;
        let mut last: i64 = c
            .prepare_cached("SELECT seq FROM messages WHERE t = ?1 ORDER BY seq DESC LIMIT 1")
            .and_then(|mut s| s.query_row([t], |r| r.get(0)).optional())
            .map_err(|e| db_error("reading the last seq", e))?
            .unwrap_or(0);
        let mut insert = c
            .prepare_cached(
                "INSERT INTO messages (t, seq, id, sender, temp_id, text, sent_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (t, sender, temp_id) DO NOTHING",
            )
            .map_err(|e| db_error("preparing an append", e))?;
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            // Ids and times are below 2^63: stored as SQLite's signed 64-bit integers.
            let n = insert
                .execute(params![
                    t,
                    last + 1,
                    m.message_id.get() as i64,
                    m.sender_id.as_str(),
                    m.temp_id.as_str(),
                    m.text.as_str(),
                    m.sent_at as i64,
                ])
                .map_err(|e| db_error("appending a message", e))?;
            if n == 1 {
                last += 1;
                out.push(Appended {
                    message: StoredMessage {
                        thread_id: m.thread_id,
                        seq: last as u64,
                        message_id: m.message_id,
                        sender_id: m.sender_id,
                        temp_id: m.temp_id,
                        text: m.text,
                        sent_at: m.sent_at,
                    },
                    duplicate: false,
                });
            } else {
                let original = read::by_temp_id(c, t, thread, &m.sender_id, &m.temp_id)?
                    .ok_or_else(|| {
                        Error::internal("sqlite store: a duplicate's original is missing")
                    })?;
                out.push(Appended {
                    message: original,
                    duplicate: true,
                });
            }
        }
        Ok(out)
    }

    pub(crate) fn create_thread(&mut self, thread: NewThread) -> Result<CreatedThread> {
        let Some(t) = self.key(&thread.thread_id, true)? else {
            return Err(Error::internal("sqlite store: no key for a new thread"));
        };
        if let Some(existing) = read::thread_by_key(&self.conn, t, &thread.thread_id)? {
            return Ok(CreatedThread {
                thread: existing,
                created: false,
            });
        }
        let mut members: Vec<UserId> = Vec::with_capacity(thread.members.len());
        for m in thread.members {
            if !members.contains(&m) {
                members.push(m);
            }
        }
        let c = &self.conn;
        c.prepare_cached(
            "INSERT INTO threads (t, kind, title, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                t,
                thread.kind.as_str(),
                thread.title,
                thread.created_at as i64
            ])
        })
        .map_err(|e| db_error("creating a thread", e))?;
        {
            let mut add = c
                .prepare_cached("INSERT INTO members (t, user, pos) VALUES (?1, ?2, ?3)")
                .map_err(|e| db_error("preparing a member insert", e))?;
            for (pos, m) in members.iter().enumerate() {
                add.execute(params![t, m.as_str(), pos as i64])
                    .map_err(|e| db_error("adding a member", e))?;
            }
        }
        self.touched.push(thread.thread_id.clone());
        Ok(CreatedThread {
            thread: ThreadInfo {
                thread_id: thread.thread_id,
                kind: thread.kind,
                title: thread.title,
                members,
                created_at: thread.created_at,
            },
            created: true,
        })
    }

    pub(crate) fn add_members(
        &mut self,
        thread: &ThreadId,
        members: &[UserId],
    ) -> Result<MembershipChange> {
        let (t, mut info) = self.existing(thread)?;
        let c = &self.conn;
        let mut pos: i64 = c
            .prepare_cached("SELECT coalesce(max(pos), -1) FROM members WHERE t = ?1")
            .and_then(|mut s| s.query_row([t], |r| r.get(0)))
            .map_err(|e| db_error("reading members", e))?;
        let mut changed = Vec::new();
        let mut add = c
            .prepare_cached("INSERT INTO members (t, user, pos) VALUES (?1, ?2, ?3)")
            .map_err(|e| db_error("preparing a member insert", e))?;
        for m in members {
            if info.is_member(m) {
                continue;
            }
            pos += 1;
            add.execute(params![t, m.as_str(), pos])
                .map_err(|e| db_error("adding a member", e))?;
            info.members.push(m.clone());
            changed.push(m.clone());
        }
        if !changed.is_empty() {
            self.touched.push(thread.clone());
        }
        Ok(MembershipChange {
            thread: info,
            changed,
        })
    }

    pub(crate) fn remove_member(
        &mut self,
        thread: &ThreadId,
        member: &UserId,
    ) -> Result<MembershipChange> {
        let (t, mut info) = self.existing(thread)?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM members WHERE t = ?1 AND user = ?2")
            .and_then(|mut s| s.execute(params![t, member.as_str()]))
            .map_err(|e| db_error("removing a member", e))?;
        let changed = if n > 0 {
            info.members.retain(|m| m != member);
            self.touched.push(thread.clone());
            vec![member.clone()]
        } else {
            Vec::new()
        };
        Ok(MembershipChange {
            thread: info,
            changed,
        })
    }

    pub(crate) fn advance_watermark(
        &mut self,
        thread: &ThreadId,
        user: &UserId,
        status: AckStatus,
        seq: u64,
    ) -> Result<WatermarkUpdate> {
        let unknown = || Error::not_found(format!("no thread {thread}"));
        let t = self.key(thread, false)?.ok_or_else(unknown)?;
        let c = &self.conn;
        let exists = c
            .prepare_cached("SELECT 1 FROM threads WHERE t = ?1")
            .and_then(|mut s| s.exists([t]))
            .map_err(|e| db_error("reading a thread", e))?;
        if !exists {
            return Err(unknown());
        }
        let seq = i64::try_from(seq)
            .map_err(|_| Error::new(ErrorKind::BadRequest, format!("seq {seq} is too large")))?;
        let (delivered, read): (i64, i64) = c
            .prepare_cached("SELECT delivered, read FROM watermarks WHERE t = ?1 AND user = ?2")
            .and_then(|mut s| {
                s.query_row(params![t, user.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| db_error("reading a watermark", e))?
            .unwrap_or((0, 0));
        let advanced = match status {
            AckStatus::Delivered => seq > delivered,
            AckStatus::Read => seq > read,
        };
        let new_read = if status == AckStatus::Read {
            read.max(seq)
        } else {
            read
        };
        let new_delivered = delivered.max(seq);
        if (new_delivered, new_read) != (delivered, read) {
            c.prepare_cached(
                "INSERT INTO watermarks (t, user, delivered, read) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (t, user) DO UPDATE SET delivered = excluded.delivered, \
                 read = excluded.read",
            )
            .and_then(|mut s| s.execute(params![t, user.as_str(), new_delivered, new_read]))
            .map_err(|e| db_error("writing a watermark", e))?;
        }
        Ok(WatermarkUpdate {
            watermark: Watermark {
                delivered_seq: new_delivered as u64,
                read_seq: new_read as u64,
            },
            advanced,
        })
    }
}
