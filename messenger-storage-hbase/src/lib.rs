//! # messenger-storage-hbase
//!
//! [`MessageStore`](messenger_core::MessageStore),
//! [`ThreadStore`](messenger_core::ThreadStore) and
//! [`PushRegistry`](messenger_core::PushRegistry) on a real HBase, through its Thrift2
//! gateway (`org.apache.hadoop.hbase.thrift2.ThriftServer`, binary protocol, buffered
//! transport).
//!
//! - [`HBaseStore::connect`] opens a bounded pool of blocking Thrift connections and
//!   creates the tables if they are absent ([`HBaseStore::ensure_tables`], idempotent and
//!   safe to race from several processes).
//! - Every Thrift call runs on `tokio::task::spawn_blocking`, never on a runtime worker.
//! - Errors map into the core [`Error`]: a gateway or region server
//!   that is down or slow is `unavailable` (transient), a lost race that could not be
//!   resolved is `conflict` (transient), anything that will fail again is `internal`.
//! - Only idempotent calls (gets, scans, puts of fixed cells) are retried. Conditional
//!   mutations are sent once; when their outcome is unknown the adapter re-reads the row.
//!
//! The schema and the concurrency design (gapless seqs and idempotency with many
//! appenders in many processes, on a store that is atomic within one row only) are in
//! `docs/hbase-schema.md`.
//!
//! ```no_run
//! # async fn demo() -> messenger_core::Result<()> {
//! use std::sync::Arc;
//! use messenger_core::{MessageStore, ThreadStore};
//! use messenger_storage_hbase::{HBaseOptions, HBaseStore};
//!
//! let store = HBaseStore::connect(HBaseOptions::new("127.0.0.1:9090")).await?;
//! let messages: Arc<dyn MessageStore> = Arc::new(store.clone());
//! let threads: Arc<dyn ThreadStore> = Arc::new(store);
//! # let _ = (messages, threads); Ok(()) }
//! ```
//!
//! Development HBase: `scripts/hbase.sh start` prints `HBASE_THRIFT=127.0.0.1:PORT`.

mod client;
mod coalesce;
/// Entry points for `cargo fuzz` (feature `fuzzing`; not a stable API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod gen;
mod messages;
mod migrate;
mod push;
mod schema;
mod threads;

pub use migrate::{migrate_v1, MigrationReport};

use std::sync::Arc;
use std::time::Duration;

use messenger_core::{Error, Result};

use client::{Idempotent, Pool};
use coalesce::Coalescer;
use gen::hbase::TTHBaseServiceSyncClient;
use schema::*;

/// How to reach HBase and how to behave there. Build with [`HBaseOptions::new`] and
/// change fields; new options get defaults, so this never breaks callers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HBaseOptions {
    /// The Thrift2 gateway, `host:port`.
    pub addr: String,
    /// Prefix of the table names (`{prefix}messages`, `{prefix}threads`,
    /// `{prefix}user_threads`, `{prefix}push`, in the `default` namespace). Default
    /// `messenger_`.
    pub table_prefix: String,
    /// Most Thrift connections (and so concurrent calls) at once. Default 32: the seq
    /// claims of different threads run in parallel, one connection each.
    pub pool_size: usize,
    /// TCP connect timeout. Default 2 s.
    pub connect_timeout: Duration,
    /// Read/write timeout of one call. Default 10 s.
    pub call_timeout: Duration,
    /// Extra attempts for idempotent calls on transient errors. Default 3.
    pub retries: u32,
    /// Most coalesced `getMultiple` (and, separately, `putMultiple`) calls in flight at
    /// once; single-row reads and writes that arrive while all are busy wait and go
    /// together in the next call. Default 4.
    pub coalesce_in_flight: usize,
    /// Most rows in one coalesced call. Default 1000.
    pub coalesce_max_rows: usize,
    /// Time to live of messages, `None` for forever (the default).
    pub message_ttl: Option<Duration>,
    /// Create absent tables in [`HBaseStore::connect`]. Default true.
    pub create_tables: bool,
    /// Threads with at least this many members keep their info in this process's
    /// memory: `get_thread` (every send's membership check) then reads only the
    /// member list's cell timestamp and length (a `KeyOnlyFilter` get of one cell)
    /// and rereads the row only when another process changed the list. `None` turns
    /// the cache off. Default `Some(32)`: a 10 000-member list is ~100 KB per read.
    pub member_cache_min: Option<usize>,
    /// Most member ids the cache holds over all threads (about 50 bytes each); past it
    /// entries are dropped. Default 1 000 000.
    pub member_cache_budget: usize,
}

impl HBaseOptions {
    /// Defaults for the gateway at `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        HBaseOptions {
            addr: addr.into(),
            table_prefix: "messenger_".into(),
            pool_size: 32,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            retries: 3,
            coalesce_in_flight: 4,
            coalesce_max_rows: 1000,
            message_ttl: None,
            create_tables: true,
            member_cache_min: Some(32),
            member_cache_budget: 1_000_000,
        }
    }

    /// The same options with another table prefix.
    pub fn with_table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.table_prefix = prefix.into();
        self
    }

    /// The same options with another pool size.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// The same options with other connect and call timeouts.
    pub fn with_timeouts(mut self, connect: Duration, call: Duration) -> Self {
        self.connect_timeout = connect;
        self.call_timeout = call;
        self
    }
}

pub(crate) struct Inner {
    pub(crate) pool: Pool,
    /// Coalesces single-row gets and puts of many tasks into multi-row calls.
    pub(crate) coalesce: Arc<Coalescer>,
    /// What this process knows of each recently appended thread (see `messages`).
    pub(crate) states: messenger_core::sync::Sharded<messenger_core::ThreadId, messages::StateSlot>,
    /// Large threads' info as last read, with the stamp of their member list (see
    /// `threads`).
    pub(crate) member_cache: threads::MemberCache,
    pub(crate) tables: Tables,
    pub(crate) opts: HBaseOptions,
}

/// Both stores over one connection pool. Cheap to clone.
#[derive(Clone)]
pub struct HBaseStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for HBaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HBaseStore")
            .field("addr", &self.inner.opts.addr)
            .field("table_prefix", &self.inner.opts.table_prefix)
            .finish()
    }
}

impl HBaseStore {
    /// Connects to the gateway (failing with `unavailable` if it does not answer) and,
    /// unless `create_tables` is off, creates absent tables.
    ///
    /// Then checks that the messages table holds schema v2 (this version's layout),
    /// recording it in an empty table; a table with data of the previous layout is
    /// refused with a message that points at [`migrate_v1`].
    pub async fn connect(opts: HBaseOptions) -> Result<HBaseStore> {
        let store = Self::open(opts).await?;
        store.ensure_schema().await?;
        Ok(store)
    }

    /// Connects and creates tables like [`connect`](Self::connect), without the
    /// schema check (for the migration).
    pub(crate) async fn open(opts: HBaseOptions) -> Result<HBaseStore> {
        if opts.addr.is_empty() {
            return Err(Error::bad_request("HBase Thrift2 address is empty"));
        }
        let pool = Pool::new(&opts);
        let store = HBaseStore {
            inner: Arc::new(Inner {
                coalesce: Coalescer::new(
                    pool.clone(),
                    opts.coalesce_in_flight,
                    opts.coalesce_max_rows,
                ),
                pool,
                states: messenger_core::sync::Sharded::new(),
                member_cache: threads::MemberCache::default(),
                tables: Tables::new(&opts.table_prefix),
                opts,
            }),
        };
        store
            .inner
            .pool
            .call("ping", Idempotent::Yes, |c| c.get_thrift_server_type())
            .await?;
        if store.inner.opts.create_tables {
            store.ensure_tables().await?;
        }
        Ok(store)
    }

    /// The schema row of the messages table: (version, block size), if present.
    pub(crate) async fn schema_row(&self) -> Result<Option<(u64, u64)>> {
        let table = self.inner.tables.messages.clone();
        let r = self
            .inner
            .pool
            .call("get schema row", Idempotent::Yes, move |c| {
                c.get(table.clone(), tget(schema_key(), Some(vec![col(FAM_HEAD)])))
            })
            .await?;
        let get = |q: &[u8]| {
            r.column_values
                .iter()
                .find(|c| c.family == FAM_HEAD && c.qualifier == q)
                .and_then(|c| bytes_u64(&c.value))
        };
        Ok(get(COL_VERSION).map(|v| (v, get(COL_BLOCK).unwrap_or(0))))
    }

    /// Test support, not API: [`connect`](Self::connect) without the schema check, to
    /// write an old layout in migration tests.
    #[doc(hidden)]
    pub async fn __open_without_schema_check(opts: HBaseOptions) -> Result<HBaseStore> {
        Self::open(opts).await
    }

    /// Records schema v2 in the messages table.
    pub(crate) async fn write_schema_row(&self) -> Result<()> {
        let table = self.inner.tables.messages.clone();
        let put = tput(
            schema_key(),
            vec![
                cv(FAM_HEAD, COL_VERSION, u64_bytes(SCHEMA_VERSION)),
                cv(FAM_HEAD, COL_BLOCK, u64_bytes(BLOCK)),
            ],
        );
        self.inner
            .pool
            .call("put schema row", Idempotent::Yes, move |c| {
                c.put(table.clone(), put.clone())
            })
            .await
    }

    /// Whether the messages table has any row besides the schema row.
    pub(crate) async fn has_rows(&self) -> Result<bool> {
        let table = self.inner.tables.messages.clone();
        let scan = tscan(Vec::new(), Vec::new(), None, false, 2);
        let rows = self
            .inner
            .pool
            .call("scan messages", Idempotent::Yes, move |c| {
                c.get_scanner_results(table.clone(), scan.clone(), 2)
            })
            .await?;
        Ok(rows
            .iter()
            .any(|r| r.row.as_deref() != Some(&schema_key()[..])))
    }

    async fn ensure_schema(&self) -> Result<()> {
        let name = String::from_utf8_lossy(&self.inner.tables.messages).into_owned();
        let check = |found: (u64, u64)| {
            if found == (SCHEMA_VERSION, BLOCK) {
                Ok(())
            } else {
                Err(Error::internal(format!(
                    "HBase table {name} holds message schema v{} with blocks of {}; this \
                     version reads v{SCHEMA_VERSION} with blocks of {BLOCK}",
                    found.0, found.1
                )))
            }
        };
        if let Some(found) = self.schema_row().await? {
            return check(found);
        }
        if self.has_rows().await? {
            // Another process may have just recorded v2 and started writing.
            if let Some(found) = self.schema_row().await? {
                return check(found);
            }
            return Err(Error::internal(format!(
                "HBase table {name} holds messages in the previous layout (schema v1): stop \
                 every server, run `cargo run --release -p messenger-storage-hbase --example \
                 hbase_migrate -- {} --prefix {}` (docs/hbase-schema.md, Migration), then \
                 start again",
                self.inner.opts.addr, self.inner.opts.table_prefix
            )));
        }
        self.write_schema_row().await
    }

    /// Creates each table that does not exist yet. Idempotent; concurrent callers in
    /// several processes converge (a "table exists" answer counts as success).
    pub async fn ensure_tables(&self) -> Result<()> {
        let ttl = self
            .inner
            .opts
            .message_ttl
            .map(|d| i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX));
        let push = push::descriptor(&self.inner.opts.table_prefix);
        for desc in self.inner.tables.descriptors(ttl).into_iter().chain([push]) {
            let name = desc.table_name.clone();
            let shown = String::from_utf8_lossy(&name.qualifier).into_owned();
            let exists = {
                let name = name.clone();
                self.inner
                    .pool
                    .call("tableExists", Idempotent::Yes, move |c| {
                        c.table_exists(name.clone())
                    })
                    .await?
            };
            if exists {
                continue;
            }
            let created = self
                .inner
                .pool
                .call("createTable", Idempotent::No, move |c| {
                    c.create_table(desc.clone(), Vec::new())
                })
                .await;
            match created {
                Ok(()) => tracing::info!(table = %shown, "created HBase table"),
                Err(e) if e.to_string().contains("TableExistsException") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &HBaseOptions {
        &self.inner.opts
    }
}
