//! `PushRegistry` over the `{prefix}push` table. See `docs/hbase-schema.md`.
//!
//! Two kinds of rows:
//! - user rows, `0x00 | hash4(user) | user`: family `r` (qualifier = target id, value =
//!   the registration as JSON) and family `m` (qualifier = thread id, value = the mute's
//!   end as 8 bytes big-endian, empty for ever);
//! - owner rows, `0x01 | target id`: family `o`, qualifier `u` = the user holding the
//!   target. The owner row is the truth when two users claim one device: a user row
//!   that lists a target owned by someone else is stale and is neither listed nor
//!   pushed to (and is cleaned up when seen).

use std::collections::BTreeMap;

use async_trait::async_trait;
use messenger_core::push::{PushRegistration, PushTargets, ThreadMute};
use messenger_core::time::{now_ms, Millis};
use messenger_core::{Error, PushRegistry, Result, ThreadId, UserId};

use crate::client::Idempotent;
use crate::gen::hbase::{
    TColumn, TColumnFamilyDescriptor, TDelete, TDeleteType, TResult, TTHBaseServiceSyncClient,
    TTableDescriptor,
};
use crate::schema::{col, col_q, cv, family, hash4, table_name, tget, tput};
use crate::HBaseStore;

const FAM_REG: &[u8] = b"r";
const FAM_MUTE: &[u8] = b"m";
const FAM_OWNER: &[u8] = b"o";
const COL_OWNER: &[u8] = b"u";

fn table(prefix: &str) -> Vec<u8> {
    format!("{prefix}push").into_bytes()
}

/// The descriptor of the push table, created with the others.
pub(crate) fn descriptor(prefix: &str) -> TTableDescriptor {
    let families: Vec<TColumnFamilyDescriptor> = [FAM_REG, FAM_MUTE, FAM_OWNER]
        .iter()
        .map(|f| family(f, None))
        .collect();
    TTableDescriptor {
        table_name: table_name(&format!("{prefix}push")),
        columns: Some(families),
        attributes: Some(BTreeMap::new()),
        durability: None,
    }
}

fn user_key(u: &UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + u.as_str().len());
    k.push(0x00);
    k.extend_from_slice(&hash4(u.as_str()));
    k.extend_from_slice(u.as_str().as_bytes());
    k
}

fn owner_key(target_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + target_id.len());
    k.push(0x01);
    k.extend_from_slice(target_id.as_bytes());
    k
}

fn delete(row: Vec<u8>, columns: Vec<TColumn>) -> TDelete {
    TDelete {
        row,
        columns: Some(columns),
        timestamp: None,
        delete_type: Some(TDeleteType::DELETE_COLUMNS),
        attributes: None,
        durability: None,
    }
}

fn encode_until(until: Option<Millis>) -> Vec<u8> {
    until.map(|u| u.to_be_bytes().to_vec()).unwrap_or_default()
}

fn decode_until(b: &[u8]) -> Option<Millis> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

/// The registrations in a user row, by target id (undecodable cells are skipped and
/// logged: a newer version may have written fields this one does not know).
fn registrations(r: &TResult) -> Vec<PushRegistration> {
    r.column_values
        .iter()
        .filter(|c| c.family == FAM_REG)
        .filter_map(
            |c| match serde_json::from_slice::<PushRegistration>(&c.value) {
                Ok(reg) => Some(reg),
                Err(e) => {
                    tracing::warn!(target = %String::from_utf8_lossy(&c.qualifier), error = %e,
                    "undecodable push registration in HBase; skipped");
                    None
                }
            },
        )
        .collect()
}

fn mutes(r: &TResult) -> Vec<ThreadMute> {
    r.column_values
        .iter()
        .filter(|c| c.family == FAM_MUTE)
        .filter_map(|c| {
            let thread = std::str::from_utf8(&c.qualifier)
                .ok()
                .and_then(|s| ThreadId::new(s).ok())?;
            Some(ThreadMute {
                thread_id: thread,
                until: decode_until(&c.value),
            })
        })
        .collect()
}

fn owner_of(r: &TResult) -> Option<&[u8]> {
    r.column_values
        .iter()
        .find(|c| c.family == FAM_OWNER && c.qualifier == COL_OWNER)
        .map(|c| c.value.as_slice())
}

impl HBaseStore {
    fn push_table(&self) -> Vec<u8> {
        table(&self.inner.opts.table_prefix)
    }

    async fn get_user_row(&self, user: &UserId, columns: Vec<TColumn>) -> Result<TResult> {
        let table = self.push_table();
        let get = tget(user_key(user), Some(columns));
        self.inner
            .pool
            .call("get push user row", Idempotent::Yes, move |c| {
                c.get(table.clone(), get.clone())
            })
            .await
    }

    /// Keeps the registrations whose owner row names `user`; removes the stale ones
    /// from the user row (best effort).
    async fn owned(
        &self,
        user: &UserId,
        regs: Vec<PushRegistration>,
    ) -> Result<Vec<PushRegistration>> {
        if regs.is_empty() {
            return Ok(regs);
        }
        let table = self.push_table();
        let gets: Vec<_> = regs
            .iter()
            .map(|r| {
                tget(
                    owner_key(&r.target_id),
                    Some(vec![col_q(FAM_OWNER, COL_OWNER)]),
                )
            })
            .collect();
        let owners = self
            .inner
            .pool
            .call("get push owners", Idempotent::Yes, move |c| {
                c.get_multiple(table.clone(), gets.clone())
            })
            .await?;
        let me = user.as_str().as_bytes();
        let (mut keep, mut stale) = (Vec::new(), Vec::new());
        for (reg, o) in regs.into_iter().zip(&owners) {
            if owner_of(o) == Some(me) {
                keep.push(reg);
            } else {
                stale.push(col_q(FAM_REG, reg.target_id.as_bytes()));
            }
        }
        if !stale.is_empty() {
            let table = self.push_table();
            let del = delete(user_key(user), stale);
            if let Err(e) = self
                .inner
                .pool
                .call("delete stale push targets", Idempotent::Yes, move |c| {
                    c.delete_single(table.clone(), del.clone())
                })
                .await
            {
                tracing::debug!(%user, error = %e, "stale push targets left for later");
            }
        }
        keep.sort_by(|a, b| (a.created_at, &a.target_id).cmp(&(b.created_at, &b.target_id)));
        Ok(keep)
    }

    /// Deletes the owner row of `target_id` if `user` still owns it.
    async fn release(&self, user: &UserId, target_id: &str) -> Result<()> {
        let table = self.push_table();
        let row = owner_key(target_id);
        let del = delete(row.clone(), vec![col_q(FAM_OWNER, COL_OWNER)]);
        let me = user.as_str().as_bytes().to_vec();
        self.inner
            .pool
            .call("release push owner", Idempotent::Yes, move |c| {
                c.check_and_delete(
                    table.clone(),
                    row.clone(),
                    FAM_OWNER.to_vec(),
                    COL_OWNER.to_vec(),
                    me.clone(),
                    del.clone(),
                )
            })
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl PushRegistry for HBaseStore {
    async fn register_target(
        &self,
        mut reg: PushRegistration,
        max_targets: usize,
    ) -> Result<PushRegistration> {
        let user = reg.user_id.clone();
        let table = self.push_table();
        // Claim the device: the owner row names this user from now on.
        let owner_row = owner_key(&reg.target_id);
        let prev = {
            let (table, get) = (
                table.clone(),
                tget(owner_row.clone(), Some(vec![col_q(FAM_OWNER, COL_OWNER)])),
            );
            self.inner
                .pool
                .call("get push owner", Idempotent::Yes, move |c| {
                    c.get(table.clone(), get.clone())
                })
                .await?
        };
        let prev_owner = owner_of(&prev).map(<[u8]>::to_vec);
        {
            let (table, put) = (
                table.clone(),
                tput(
                    owner_row,
                    vec![cv(FAM_OWNER, COL_OWNER, user.as_str().as_bytes().to_vec())],
                ),
            );
            self.inner
                .pool
                .call("put push owner", Idempotent::Yes, move |c| {
                    c.put(table.clone(), put.clone())
                })
                .await?;
        }
        if let Some(p) = prev_owner.filter(|p| p.as_slice() != user.as_str().as_bytes()) {
            // The device changed hands: take it off the previous holder's row. Readers
            // check the owner row anyway, so a failure here only leaves a stale cell.
            if let Some(prev_user) = std::str::from_utf8(&p)
                .ok()
                .and_then(|s| UserId::new(s).ok())
            {
                let (table, del) = (
                    table.clone(),
                    delete(
                        user_key(&prev_user),
                        vec![col_q(FAM_REG, reg.target_id.as_bytes())],
                    ),
                );
                if let Err(e) = self
                    .inner
                    .pool
                    .call("move push target", Idempotent::Yes, move |c| {
                        c.delete_single(table.clone(), del.clone())
                    })
                    .await
                {
                    tracing::debug!(from = %prev_user, error = %e, "a moved push target stays listed until read");
                }
            }
        }
        let row = self.get_user_row(&user, vec![col(FAM_REG)]).await?;
        let mut current = registrations(&row);
        if let Some(old) = current.iter().find(|r| r.target_id == reg.target_id) {
            reg.created_at = old.created_at;
        }
        current.retain(|r| r.target_id != reg.target_id);
        current.sort_by(|a, b| (a.updated_at, &a.target_id).cmp(&(b.updated_at, &b.target_id)));
        let excess = (current.len() + 1).saturating_sub(max_targets.max(1));
        let evicted: Vec<String> = current
            .iter()
            .take(excess)
            .map(|r| r.target_id.clone())
            .collect();
        let json = serde_json::to_vec(&reg)
            .map_err(|e| Error::internal(format!("encoding a push registration: {e}")))?;
        {
            let (table, put) = (
                table.clone(),
                tput(
                    user_key(&user),
                    vec![cv(FAM_REG, reg.target_id.as_bytes(), json)],
                ),
            );
            self.inner
                .pool
                .call("put push target", Idempotent::Yes, move |c| {
                    c.put(table.clone(), put.clone())
                })
                .await?;
        }
        if !evicted.is_empty() {
            let cols = evicted
                .iter()
                .map(|id| col_q(FAM_REG, id.as_bytes()))
                .collect();
            let (table, del) = (table.clone(), delete(user_key(&user), cols));
            self.inner
                .pool
                .call("evict push targets", Idempotent::Yes, move |c| {
                    c.delete_single(table.clone(), del.clone())
                })
                .await?;
            for id in &evicted {
                if let Err(e) = self.release(&user, id).await {
                    tracing::debug!(%user, target = %id, error = %e, "owner row of an evicted target left");
                }
            }
        }
        Ok(reg)
    }

    async fn unregister_target(&self, user: &UserId, target_id: &str) -> Result<bool> {
        let table = self.push_table();
        let gets = vec![
            tget(
                user_key(user),
                Some(vec![col_q(FAM_REG, target_id.as_bytes())]),
            ),
            tget(
                owner_key(target_id),
                Some(vec![col_q(FAM_OWNER, COL_OWNER)]),
            ),
        ];
        let rows = {
            let table = table.clone();
            self.inner
                .pool
                .call("get push target", Idempotent::Yes, move |c| {
                    c.get_multiple(table.clone(), gets.clone())
                })
                .await?
        };
        let has_cell = rows.first().is_some_and(|r| !r.column_values.is_empty());
        let owns = rows
            .get(1)
            .and_then(owner_of)
            .is_some_and(|o| o == user.as_str().as_bytes());
        if has_cell {
            let del = delete(user_key(user), vec![col_q(FAM_REG, target_id.as_bytes())]);
            self.inner
                .pool
                .call("delete push target", Idempotent::Yes, move |c| {
                    c.delete_single(table.clone(), del.clone())
                })
                .await?;
        }
        if owns {
            self.release(user, target_id).await?;
        }
        Ok(has_cell && owns)
    }

    async fn list_targets(&self, user: &UserId) -> Result<Vec<PushRegistration>> {
        let row = self.get_user_row(user, vec![col(FAM_REG)]).await?;
        self.owned(user, registrations(&row)).await
    }

    async fn set_mute(&self, user: &UserId, mute: ThreadMute) -> Result<()> {
        let table = self.push_table();
        let put = tput(
            user_key(user),
            vec![cv(
                FAM_MUTE,
                mute.thread_id.as_str().as_bytes(),
                encode_until(mute.until),
            )],
        );
        self.inner
            .pool
            .call("put thread mute", Idempotent::Yes, move |c| {
                c.put(table.clone(), put.clone())
            })
            .await
    }

    async fn clear_mute(&self, user: &UserId, thread: &ThreadId) -> Result<bool> {
        let q = thread.as_str().as_bytes();
        let row = self.get_user_row(user, vec![col_q(FAM_MUTE, q)]).await?;
        if row.column_values.is_empty() {
            return Ok(false);
        }
        let table = self.push_table();
        let del = delete(user_key(user), vec![col_q(FAM_MUTE, q)]);
        self.inner
            .pool
            .call("delete thread mute", Idempotent::Yes, move |c| {
                c.delete_single(table.clone(), del.clone())
            })
            .await?;
        Ok(true)
    }

    async fn list_mutes(&self, user: &UserId) -> Result<Vec<ThreadMute>> {
        let row = self.get_user_row(user, vec![col(FAM_MUTE)]).await?;
        let all = mutes(&row);
        let now = now_ms();
        let expired: Vec<TColumn> = all
            .iter()
            .filter(|m| !m.active(now))
            .map(|m| col_q(FAM_MUTE, m.thread_id.as_str().as_bytes()))
            .collect();
        if !expired.is_empty() {
            let table = self.push_table();
            let del = delete(user_key(user), expired);
            if let Err(e) = self
                .inner
                .pool
                .call("delete expired mutes", Idempotent::Yes, move |c| {
                    c.delete_single(table.clone(), del.clone())
                })
                .await
            {
                tracing::debug!(%user, error = %e, "expired mutes left for later");
            }
        }
        Ok(all)
    }

    async fn push_targets(&self, user: &UserId, thread: &ThreadId) -> Result<PushTargets> {
        let row = self
            .get_user_row(
                user,
                vec![col(FAM_REG), col_q(FAM_MUTE, thread.as_str().as_bytes())],
            )
            .await?;
        let mute = mutes(&row).into_iter().next();
        let targets = self.owned(user, registrations(&row)).await?;
        Ok(PushTargets { targets, mute })
    }
}
