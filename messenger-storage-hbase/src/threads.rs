//! `ThreadStore` over the threads and user_threads tables. See `docs/hbase-schema.md`.

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
    async fn thread_row(&self, thread: &ThreadId) -> Result<TResult> {
        let rows = self
            .inner
            .coalesce
            .get(
                &self.inner.tables.threads,
                vec![tget(thread_key(thread), None)],
            )
            .await?;
        rows.into_iter()
            .next()
            .ok_or_else(|| Error::internal("getMultiple answered no row"))
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
            let put = tput(
                thread_key(thread),
                vec![cv(FAM_THREAD, COL_MEMBERS, encode_members(&members))],
            );
            match self
                .thread_cas(thread, FAM_THREAD, COL_MEMBERS.to_vec(), old, put)
                .await?
            {
                Some(true) => return Ok((ThreadInfo { members, ..info }, changed)),
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

    async fn get_thread(&self, thread: &ThreadId) -> Result<Option<ThreadInfo>> {
        let r = self.thread_row(thread).await?;
        parse_thread(thread, &r)
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
