//! `ThreadStore` over the threads and user_threads tables. See `docs/hbase-schema.md`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use messenger_core::model::{
    AckStatus, CreatedThread, MembershipChange, NewThread, ThreadInfo, ThreadKind, UserThread,
    Watermark, WatermarkUpdate,
};
use messenger_core::{Error, ErrorKind, Result, ThreadId, ThreadStore, UserId};

use crate::client::Idempotent;
use crate::gen::hbase::{TDelete, TDeleteType, TPut, TResult, TTHBaseServiceSyncClient};
use crate::schema::*;
use crate::HBaseStore;

/// Compare-and-set rounds before a contended update gives up with `conflict`.
const MAX_CAS_ROUNDS: u32 = 200;

/// The stamp of a thread's member list: the `t:m` cell's timestamp and length. Every
/// change of the list is written with a timestamp above the one it replaces
/// (`change_members`), so an equal stamp is the same list.
type Stamp = (i64, usize);

/// Large threads' info as last read by this process, each with the stamp of its
/// member list ([`HBaseOptions::member_cache_min`](crate::HBaseOptions::member_cache_min)).
/// An entry is only ever served after the row's current stamp was read and found
/// equal, so a change made by any process is seen by the next `get_thread`.
#[derive(Default)]
pub(crate) struct MemberCache {
    threads: messenger_core::sync::Sharded<ThreadId, (Stamp, ThreadInfo)>,
    /// Member ids held over all entries.
    held: AtomicUsize,
}

impl MemberCache {
    fn stamp(&self, thread: &ThreadId) -> Option<Stamp> {
        self.threads.shard(thread).get(thread).map(|(s, _)| *s)
    }

    /// The cached info if its stamp is `stamp`.
    fn get(&self, thread: &ThreadId, stamp: Stamp) -> Option<ThreadInfo> {
        let shard = self.threads.shard(thread);
        match shard.get(thread) {
            Some((s, info)) if *s == stamp => Some(info.clone()),
            _ => None,
        }
    }

    /// Keeps `info` under `stamp` unless a newer stamp is held; drops entries while
    /// more than `budget` member ids are held.
    fn put(&self, stamp: Stamp, info: &ThreadInfo, budget: usize) {
        let n = info.members.len();
        if n > budget {
            return;
        }
        {
            let mut shard = self.threads.shard(&info.thread_id);
            if let Some((s, _)) = shard.get(&info.thread_id) {
                if *s >= stamp {
                    return;
                }
            }
            if let Some((_, old)) = shard.insert(info.thread_id.clone(), (stamp, info.clone())) {
                self.held.fetch_sub(old.members.len(), Ordering::Relaxed);
            }
        }
        if self.held.fetch_add(n, Ordering::Relaxed) + n <= budget {
            return;
        }
        // Over budget (rare: only past a million cached member ids): drop other
        // threads' entries, shard by shard, until under it again.
        self.threads.for_each_shard(|shard| {
            if self.held.load(Ordering::Relaxed) <= budget {
                return;
            }
            shard.retain(|t, (_, i)| {
                if *t == info.thread_id {
                    return true;
                }
                self.held.fetch_sub(i.members.len(), Ordering::Relaxed);
                false
            });
        });
    }
}

/// The stamp of the `t:m` cell in `r`: from a full read (its value's length) or from a
/// `KeyOnlyFilter(true)` read (its value is the length, a 4-byte big-endian int).
fn stamp_in(r: &TResult, key_only: bool) -> Option<Stamp> {
    let c = r
        .column_values
        .iter()
        .find(|c| c.family == FAM_THREAD && c.qualifier == COL_MEMBERS)?;
    let len = if key_only {
        u32::from_be_bytes(c.value.as_slice().try_into().ok()?) as usize
    } else {
        c.value.len()
    };
    Some((c.timestamp?, len))
}

fn cell<'a>(r: &'a TResult, family: &[u8], qualifier: &[u8]) -> Option<&'a [u8]> {
    r.column_values
        .iter()
        .find(|c| c.family == family && c.qualifier == qualifier)
        .map(|c| c.value.as_slice())
}

fn corrupt(what: &str) -> Error {
    Error::internal(format!("corrupt HBase thread row: {what}"))
}

fn encode_members(members: &[UserId]) -> Vec<u8> {
    members
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

fn decode_members(b: &[u8]) -> Result<Vec<UserId>> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let s = std::str::from_utf8(b).map_err(|_| corrupt("members"))?;
    s.split(',')
        .map(|m| UserId::new(m).map_err(|_| corrupt("member id")))
        .collect()
}

fn encode_wm(w: Watermark) -> Vec<u8> {
    let mut v = u64_bytes(w.delivered_seq);
    v.extend_from_slice(&w.read_seq.to_be_bytes());
    v
}

fn decode_wm(b: &[u8]) -> Watermark {
    Watermark {
        delivered_seq: b.get(..8).and_then(bytes_u64).unwrap_or(0),
        read_seq: b.get(8..16).and_then(bytes_u64).unwrap_or(0),
    }
}

/// The thread in a row of the threads table; `None` for an absent row or one holding
/// only watermarks.
fn parse_thread(thread: &ThreadId, r: &TResult) -> Result<Option<ThreadInfo>> {
    let Some(kind) = cell(r, FAM_THREAD, COL_KIND) else {
        return Ok(None);
    };
    let kind = match kind {
        b"direct" => ThreadKind::Direct,
        b"group" => ThreadKind::Group,
        _ => return Err(corrupt("kind")),
    };
    let title = cell(r, FAM_THREAD, COL_TITLE)
        .map(|b| String::from_utf8(b.to_vec()).map_err(|_| corrupt("title")))
        .transpose()?;
    Ok(Some(ThreadInfo {
        thread_id: thread.clone(),
        kind,
        title,
        members: decode_members(cell(r, FAM_THREAD, COL_MEMBERS).unwrap_or(b""))?,
        created_at: cell(r, FAM_THREAD, COL_CREATED)
            .and_then(bytes_u64)
            .unwrap_or(0),
    }))
}

impl HBaseStore {
    /// The thread's row, read through the coalescer: every send checks membership, and
    /// concurrent checks of many threads share one `getMultiple`.
    ///
    /// Family `t` only: the watermarks (`w`, one column per member) are not needed to
    /// check membership, and a large thread has thousands of them.
    async fn thread_row(&self, thread: &ThreadId) -> Result<TResult> {
        let rows = self
            .inner
            .coalesce
            .get(
                &self.inner.tables.threads,
                vec![tget(thread_key(thread), Some(vec![col(FAM_THREAD)]))],
            )
            .await?;
        rows.into_iter()
            .next()
            .ok_or_else(|| Error::internal("getMultiple answered no row"))
    }

    /// The current stamp of the thread's member list, without the list: one cell, its
    /// value replaced by its length (`KeyOnlyFilter(true)`), through the coalescer.
    /// `None` when the thread has no member list (absent).
    async fn members_stamp(&self, thread: &ThreadId) -> Result<Option<Stamp>> {
        let mut get = tget(
            thread_key(thread),
            Some(vec![col_q(FAM_THREAD, COL_MEMBERS)]),
        );
        get.filter_string = Some(b"KeyOnlyFilter(true)".to_vec());
        let rows = self
            .inner
            .coalesce
            .get(&self.inner.tables.threads, vec![get])
            .await?;
        let r = rows
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("getMultiple answered no row"))?;
        Ok(stamp_in(&r, true))
    }

    /// Keeps a thread read in full in the member cache when it is large enough.
    fn remember(&self, stamp: Option<Stamp>, info: &ThreadInfo) {
        let opts = &self.inner.opts;
        if let (Some(min), Some(stamp)) = (opts.member_cache_min, stamp) {
            if info.members.len() >= min {
                self.inner
                    .member_cache
                    .put(stamp, info, opts.member_cache_budget);
            }
        }
    }

    /// Conditional put on the threads table, sent once. An unknown outcome is reported as
    /// `None` so callers re-read and decide.
    async fn thread_cas(
        &self,
        thread: &ThreadId,
        family: &'static [u8],
        qualifier: Vec<u8>,
        expected: Vec<u8>,
        put: TPut,
    ) -> Result<Option<bool>> {
        let table = self.inner.tables.threads.clone();
        let row = thread_key(thread);
        let r = self
            .inner
            .pool
            .call("checkAndPut thread", Idempotent::No, move |c| {
                c.check_and_put(
                    table.clone(),
                    row.clone(),
                    family.to_vec(),
                    qualifier.clone(),
                    expected.clone(),
                    put.clone(),
                )
            })
            .await;
        match r {
            Ok(won) => Ok(Some(won)),
            Err(e) if e.kind() == ErrorKind::Unavailable => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_index(&self, users: &[UserId], thread: &ThreadId) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let table = self.inner.tables.user_threads.clone();
        let puts: Vec<TPut> = users
            .iter()
            .map(|u| {
                tput(
                    user_thread_key(u, thread),
                    vec![cv(FAM_USER, COL_MARK, b"1".to_vec())],
                )
            })
            .collect();
        self.inner
            .pool
            .call("put user index", Idempotent::Yes, move |c| {
                c.put_multiple(table.clone(), puts.clone())
            })
            .await
    }

    /// Reads, changes and compare-and-sets the member list until it sticks.
    async fn change_members(
        &self,
        thread: &ThreadId,
        change: impl Fn(&[UserId]) -> Vec<UserId> + Send + Sync,
        before_cas: impl Fn(&[UserId]) -> Vec<UserId> + Send + Sync,
    ) -> Result<(ThreadInfo, Vec<UserId>)> {
        for round in 0..MAX_CAS_ROUNDS {
            let r = self.thread_row(thread).await?;
            let info = parse_thread(thread, &r)?
                .ok_or_else(|| Error::not_found(format!("thread {thread} not found")))?;
            let old = cell(&r, FAM_THREAD, COL_MEMBERS).unwrap_or(b"").to_vec();
            let old_stamp = stamp_in(&r, false);
            let members = change(&info.members);
            let changed: Vec<UserId> = {
                let added: Vec<UserId> = members
                    .iter()
                    .filter(|m| !info.members.contains(m))
                    .cloned()
                    .collect();
                let removed: Vec<UserId> = info
                    .members
                    .iter()
                    .filter(|m| !members.contains(m))
                    .cloned()
                    .collect();
                added.into_iter().chain(removed).collect()
            };
            if changed.is_empty() {
                return Ok((info, changed));
            }
            // Index rows of joiners go in before the thread row says so (a reader filters
            // index rows by the thread's member list, never the other way round).
            self.put_index(&before_cas(&changed), thread).await?;
            // Above the replaced list's timestamp even when the clock says otherwise
            // (two changes in one millisecond, a clock stepped back): the member cache
            // takes an equal stamp for an unchanged list.
            let ts = old_stamp.map_or(0, |(t, _)| t.saturating_add(1));
            let ts = ts.max(i64::try_from(messenger_core::time::now_ms()).unwrap_or(i64::MAX));
            let encoded = encode_members(&members);
            let stamp = (ts, encoded.len());
            let put = tput(
                thread_key(thread),
                vec![cv_at(FAM_THREAD, COL_MEMBERS, encoded, ts)],
            );
            match self
                .thread_cas(thread, FAM_THREAD, COL_MEMBERS.to_vec(), old, put)
                .await?
            {
                Some(true) => {
                    let info = ThreadInfo { members, ..info };
                    self.remember(Some(stamp), &info);
                    return Ok((info, changed));
                }
                Some(false) => {}
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            if round > 3 {
                tokio::time::sleep(Duration::from_millis(u64::from(round.min(20)))).await;
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("membership of {thread}: too many concurrent changes"),
        ))
    }
}

#[async_trait]
impl ThreadStore for HBaseStore {
    async fn create_thread(&self, thread: NewThread) -> Result<CreatedThread> {
        let t = thread.thread_id.clone();
        self.put_index(&thread.members, &t).await?;
        let mut cells = vec![
            cv(
                FAM_THREAD,
                COL_KIND,
                thread.kind.as_str().as_bytes().to_vec(),
            ),
            cv(FAM_THREAD, COL_CREATED, u64_bytes(thread.created_at)),
            cv(FAM_THREAD, COL_MEMBERS, encode_members(&thread.members)),
        ];
        if let Some(title) = &thread.title {
            cells.push(cv(FAM_THREAD, COL_TITLE, title.as_bytes().to_vec()));
        }
        let put = tput(thread_key(&t), cells);
        let won = self
            .thread_cas(&t, FAM_THREAD, COL_KIND.to_vec(), Vec::new(), put)
            .await?;
        if won == Some(true) {
            return Ok(CreatedThread {
                thread: ThreadInfo {
                    thread_id: t,
                    kind: thread.kind,
                    title: thread.title,
                    members: thread.members,
                    created_at: thread.created_at,
                },
                created: true,
            });
        }
        let r = self.thread_row(&t).await?;
        match (won, parse_thread(&t, &r)?) {
            (Some(false), Some(existing)) => Ok(CreatedThread {
                thread: existing,
                created: false,
            }),
            // The outcome is unknown (the gateway went away mid-call): the caller retries
            // and gets `created: false` if the first attempt did land.
            _ => Err(Error::unavailable(format!(
                "create thread {t}: outcome unknown, retry"
            ))),
        }
    }

    /// A large thread held in the member cache costs a read of its list's stamp only,
    /// and the full row only when the list changed since.
    async fn get_thread(&self, thread: &ThreadId) -> Result<Option<ThreadInfo>> {
        if self.inner.opts.member_cache_min.is_some() {
            if let Some(held) = self.inner.member_cache.stamp(thread) {
                if let Some(now) = self.members_stamp(thread).await? {
                    if now == held {
                        if let Some(info) = self.inner.member_cache.get(thread, now) {
                            return Ok(Some(info));
                        }
                    }
                }
            }
        }
        let r = self.thread_row(thread).await?;
        let info = parse_thread(thread, &r)?;
        if let Some(info) = &info {
            self.remember(stamp_in(&r, false), info);
        }
        Ok(info)
    }

    async fn add_members(&self, thread: &ThreadId, members: &[UserId]) -> Result<MembershipChange> {
        let (thread, changed) = self
            .change_members(
                thread,
                |cur| {
                    let mut next = cur.to_vec();
                    for m in members {
                        if !next.contains(m) {
                            next.push(m.clone());
                        }
                    }
                    next
                },
                |changed| changed.to_vec(),
            )
            .await?;
        Ok(MembershipChange { thread, changed })
    }

    async fn remove_member(&self, thread: &ThreadId, member: &UserId) -> Result<MembershipChange> {
        let (info, changed) = self
            .change_members(
                thread,
                |cur| cur.iter().filter(|m| *m != member).cloned().collect(),
                |_| Vec::new(),
            )
            .await?;
        if !changed.is_empty() {
            // Best effort: a stale index row is filtered out on read.
            let table = self.inner.tables.user_threads.clone();
            let row = user_thread_key(member, thread);
            let del = TDelete {
                row,
                columns: None,
                timestamp: None,
                delete_type: Some(TDeleteType::DELETE_COLUMNS),
                attributes: None,
                durability: None,
            };
            if let Err(e) = self
                .inner
                .pool
                .call("delete user index", Idempotent::Yes, move |c| {
                    c.delete_single(table.clone(), del.clone())
                })
                .await
            {
                tracing::warn!(thread = %thread, user = %member, error = %e, "stale user index row left behind");
            }
        }
        Ok(MembershipChange {
            thread: info,
            changed,
        })
    }

    async fn list_user_threads(&self, user: &UserId) -> Result<Vec<UserThread>> {
        let prefix = user_prefix(user);
        let mut ids: Vec<ThreadId> = Vec::new();
        let mut start = prefix.clone();
        let page = 1000;
        loop {
            let table = self.inner.tables.user_threads.clone();
            let scan = tscan(start.clone(), prefix_end(&prefix), None, false, page);
            let rows = self
                .inner
                .pool
                .call("scan user index", Idempotent::Yes, move |c| {
                    c.get_scanner_results(table.clone(), scan.clone(), page)
                })
                .await?;
            for r in &rows {
                let Some(key) = r.row.as_deref() else {
                    continue;
                };
                if let Some(id) = key
                    .strip_prefix(prefix.as_slice())
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| ThreadId::new(s).ok())
                {
                    ids.push(id);
                }
                start = key.to_vec();
                start.push(0);
            }
            if rows.len() < page as usize {
                break;
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let table = self.inner.tables.threads.clone();
        let gets: Vec<_> = ids.iter().map(|t| tget(thread_key(t), None)).collect();
        let rows = self
            .inner
            .pool
            .call("getMultiple threads", Idempotent::Yes, move |c| {
                c.get_multiple(table.clone(), gets.clone())
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, r) in ids.iter().zip(&rows) {
            let Some(info) = parse_thread(id, r)? else {
                continue;
            };
            if !info.is_member(user) {
                continue;
            }
            let receipts = info
                .members
                .iter()
                .map(|m| {
                    let w = cell(r, FAM_WM, m.as_str().as_bytes())
                        .map(decode_wm)
                        .unwrap_or_default();
                    (m.clone(), w)
                })
                .collect();
            out.push(UserThread {
                thread: info,
                receipts,
            });
        }
        Ok(out)
    }

    async fn advance_watermark(
        &self,
        thread: &ThreadId,
        user: &UserId,
        status: AckStatus,
        seq: u64,
    ) -> Result<WatermarkUpdate> {
        let q = user.as_str().as_bytes().to_vec();
        for round in 0..MAX_CAS_ROUNDS {
            let table = self.inner.tables.threads.clone();
            let get = tget(thread_key(thread), Some(vec![col_q(FAM_WM, &q)]));
            let r = self
                .inner
                .pool
                .call("get watermark", Idempotent::Yes, move |c| {
                    c.get(table.clone(), get.clone())
                })
                .await?;
            let old_bytes = cell(&r, FAM_WM, &q).map(<[u8]>::to_vec);
            let old = old_bytes.as_deref().map(decode_wm).unwrap_or_default();
            let mut new = old;
            match status {
                AckStatus::Delivered => new.delivered_seq = new.delivered_seq.max(seq),
                AckStatus::Read => {
                    new.read_seq = new.read_seq.max(seq);
                    new.delivered_seq = new.delivered_seq.max(new.read_seq);
                }
            }
            let advanced = match status {
                AckStatus::Delivered => new.delivered_seq > old.delivered_seq,
                AckStatus::Read => new.read_seq > old.read_seq,
            };
            if new == old {
                return Ok(WatermarkUpdate {
                    watermark: old,
                    advanced: false,
                });
            }
            let put = tput(thread_key(thread), vec![cv(FAM_WM, &q, encode_wm(new))]);
            match self
                .thread_cas(
                    thread,
                    FAM_WM,
                    q.clone(),
                    old_bytes.unwrap_or_default(),
                    put,
                )
                .await?
            {
                Some(true) => {
                    return Ok(WatermarkUpdate {
                        watermark: new,
                        advanced,
                    })
                }
                Some(false) => {}
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            if round > 3 {
                tokio::time::sleep(Duration::from_millis(u64::from(round.min(20)))).await;
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("watermark of {user} in {thread}: too many concurrent updates"),
        ))
    }
}
