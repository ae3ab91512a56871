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
/// Entry points for `cargo fuzz` (feature `fuzzing`; not a stable API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod gen;
mod messages;
mod push;
mod schema;
mod threads;

use std::sync::Arc;
use std::time::Duration;

use messenger_core::{Error, Result};

use client::{Idempotent, Pool};
use gen::hbase::TTHBaseServiceSyncClient;
use schema::Tables;

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
    /// Most Thrift connections (and so concurrent calls) at once. Default 16.
    pub pool_size: usize,
    /// TCP connect timeout. Default 2 s.
    pub connect_timeout: Duration,
    /// Read/write timeout of one call. Default 10 s.
    pub call_timeout: Duration,
    /// Extra attempts for idempotent calls on transient errors. Default 3.
    pub retries: u32,
    /// How long an idempotency claim protects an append in progress before another
    /// appender of the same (thread, sender, temp_id) may recover it. An appender gives up
    /// claiming a seq after half of this. Default 30 s.
    pub claim_lease: Duration,
    /// Time to live of messages, `None` for forever (the default).
    pub message_ttl: Option<Duration>,
    /// Create absent tables in [`HBaseStore::connect`]. Default true.
    pub create_tables: bool,
}

impl HBaseOptions {
    /// Defaults for the gateway at `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        HBaseOptions {
            addr: addr.into(),
            table_prefix: "messenger_".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            retries: 3,
            claim_lease: Duration::from_secs(30),
            message_ttl: None,
            create_tables: true,
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
    /// Last seq this process saw per thread: a lower bound, used to skip reading the
    /// head row on the next append (see docs/hbase-schema.md).
    pub(crate) hints: std::sync::Mutex<std::collections::HashMap<messenger_core::ThreadId, u64>>,
    pub(crate) tables: Tables,
    pub(crate) opts: HBaseOptions,
    /// Serialises one thread's appends within this process (striped by thread hash).
    pub(crate) append_stripes: Box<[tokio::sync::Mutex<()>]>,
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
    pub async fn connect(opts: HBaseOptions) -> Result<HBaseStore> {
        if opts.addr.is_empty() {
            return Err(Error::bad_request("HBase Thrift2 address is empty"));
        }
        let store = HBaseStore {
            inner: Arc::new(Inner {
                pool: Pool::new(&opts),
                hints: Default::default(),
                tables: Tables::new(&opts.table_prefix),
                opts,
                append_stripes: messages::append_stripes(),
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
