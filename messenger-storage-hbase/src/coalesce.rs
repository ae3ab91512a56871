//! Group commit for multi-row calls: single-row gets and puts from any number of tasks
//! (appends of different threads, membership checks) are coalesced into one
//! `getMultiple` / `putMultiple` per table.
//!
//! Each lane (gets, puts) runs at most `max_in_flight` calls at once. A request that
//! finds a free slot starts a call at once with everything queued; requests that arrive
//! while every slot is busy wait in the queue and go together in the next call. There
//! is no timer: at low load each request is its own call, under load calls grow to
//! whatever queued during the previous one (at most `max_rows` rows each).
//!
//! Calls run in spawned tasks, so a caller that stops waiting (its future dropped)
//! never strands the requests that joined its call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use messenger_core::sync::lock;
use messenger_core::{Error, Result};
use tokio::sync::oneshot;

use crate::client::{Idempotent, Pool};
use crate::gen::hbase::{TGet, TPut, TResult, TTHBaseServiceSyncClient};

/// One caller's rows for one table.
struct Request<R, O> {
    table: Arc<[u8]>,
    rows: Vec<R>,
    done: oneshot::Sender<Result<O>>,
}

struct LaneState<R, O> {
    queue: Vec<Request<R, O>>,
    in_flight: usize,
}

struct Lane<R, O> {
    state: Mutex<LaneState<R, O>>,
}

impl<R, O> Lane<R, O> {
    fn new() -> Self {
        Lane {
            state: Mutex::new(LaneState {
                queue: Vec::new(),
                in_flight: 0,
            }),
        }
    }

    /// Queues a request; true if the caller must start a call (a slot was free).
    fn push(&self, req: Request<R, O>, max_in_flight: usize) -> bool {
        let mut st = lock(&self.state);
        st.queue.push(req);
        if st.in_flight < max_in_flight {
            st.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// Takes queued requests up to `max_rows` rows (always at least one request), or
    /// frees the caller's slot when the queue is empty.
    fn take(&self, max_rows: usize) -> Vec<Request<R, O>> {
        let mut st = lock(&self.state);
        if st.queue.is_empty() {
            st.in_flight -= 1;
            return Vec::new();
        }
        let mut rows = 0;
        let mut n = 0;
        for r in &st.queue {
            if n > 0 && rows + r.rows.len() > max_rows {
                break;
            }
            rows += r.rows.len();
            n += 1;
        }
        st.queue.drain(..n).collect()
    }
}

/// Both lanes and the limits; shared by every clone of the store.
pub(crate) struct Coalescer {
    pool: Pool,
    gets: Lane<TGet, Vec<TResult>>,
    puts: Lane<TPut, ()>,
    max_in_flight: usize,
    max_rows: usize,
}

/// A copy of `e` for every request that shared the failed call (the source is dropped:
/// it is logged once where the call failed).
fn copy_error(e: &Error) -> Error {
    Error::new(e.kind(), e.message().to_string())
}

impl Coalescer {
    pub(crate) fn new(pool: Pool, max_in_flight: usize, max_rows: usize) -> Arc<Coalescer> {
        Arc::new(Coalescer {
            pool,
            gets: Lane::new(),
            puts: Lane::new(),
            max_in_flight: max_in_flight.max(1),
            max_rows: max_rows.max(1),
        })
    }

    /// Gets `gets` from `table`, in one `getMultiple` shared with whatever else is
    /// queued. Results are in input order; an absent row is an empty `TResult`.
    pub(crate) async fn get(
        self: &Arc<Self>,
        table: &[u8],
        gets: Vec<TGet>,
    ) -> Result<Vec<TResult>> {
        if gets.is_empty() {
            return Ok(Vec::new());
        }
        let (done, rx) = oneshot::channel();
        let req = Request {
            table: Arc::from(table),
            rows: gets,
            done,
        };
        if self.gets.push(req, self.max_in_flight) {
            let me = self.clone();
            tokio::spawn(async move { me.run_gets().await });
        }
        rx.await
            .map_err(|_| Error::unavailable("HBase getMultiple task ended without an answer"))?
    }

    /// Puts `puts` into `table`, in one `putMultiple` shared with whatever else is
    /// queued. Puts of fixed cells are idempotent, so the call is retried on transient
    /// errors; `Err` means some of them may not be written.
    pub(crate) async fn put(self: &Arc<Self>, table: &[u8], puts: Vec<TPut>) -> Result<()> {
        if puts.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        let req = Request {
            table: Arc::from(table),
            rows: puts,
            done,
        };
        if self.puts.push(req, self.max_in_flight) {
            let me = self.clone();
            tokio::spawn(async move { me.run_puts().await });
        }
        rx.await
            .map_err(|_| Error::unavailable("HBase putMultiple task ended without an answer"))?
    }

    async fn run_gets(self: Arc<Self>) {
        loop {
            let batch = self.gets.take(self.max_rows);
            if batch.is_empty() {
                return;
            }
            for (table, reqs) in by_table(batch) {
                let gets: Vec<TGet> = reqs.iter().flat_map(|r| r.rows.iter().cloned()).collect();
                let t = table.to_vec();
                let result = self
                    .pool
                    .call("getMultiple", Idempotent::Yes, move |c| {
                        c.get_multiple(t.clone(), gets.clone())
                    })
                    .await;
                match result {
                    Ok(all) => {
                        // Results come in request order: hand each caller its slice.
                        let mut all = all.into_iter();
                        for r in reqs {
                            let n = r.rows.len();
                            let mine: Vec<TResult> = all.by_ref().take(n).collect();
                            let answer = if mine.len() == n {
                                Ok(mine)
                            } else {
                                Err(Error::internal("HBase getMultiple answered too few rows"))
                            };
                            let _ = r.done.send(answer);
                        }
                    }
                    Err(e) => {
                        for r in reqs {
                            let _ = r.done.send(Err(copy_error(&e)));
                        }
                    }
                }
            }
        }
    }

    async fn run_puts(self: Arc<Self>) {
        loop {
            let batch = self.puts.take(self.max_rows);
            if batch.is_empty() {
                return;
            }
            for (table, reqs) in by_table(batch) {
                let puts: Vec<TPut> = reqs.iter().flat_map(|r| r.rows.iter().cloned()).collect();
                let t = table.to_vec();
                let result = self
                    .pool
                    .call("putMultiple", Idempotent::Yes, move |c| {
                        c.put_multiple(t.clone(), puts.clone())
                    })
                    .await;
                for r in reqs {
                    let answer = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(copy_error(e)),
                    };
                    let _ = r.done.send(answer);
                }
            }
        }
    }
}

/// The requests of one table.
type TableGroup<R, O> = (Arc<[u8]>, Vec<Request<R, O>>);

/// Requests grouped by table, tables in first-seen order.
fn by_table<R, O>(batch: Vec<Request<R, O>>) -> Vec<TableGroup<R, O>> {
    let mut order: Vec<Arc<[u8]>> = Vec::new();
    let mut groups: HashMap<Arc<[u8]>, Vec<Request<R, O>>> = HashMap::new();
    for r in batch {
        if !groups.contains_key(&r.table) {
            order.push(r.table.clone());
        }
        groups.entry(r.table.clone()).or_default().push(r);
    }
    order
        .into_iter()
        .filter_map(|t| groups.remove(&t).map(|g| (t, g)))
        .collect()
}
