//! The three adapters: directory, presence and relay.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use messenger_core::model::{Envelope, PresenceInfo, PresenceStatus, SessionEntry};
use messenger_core::time::{now_ms, Millis};
use messenger_core::{Error, NodeId, Presence, Relay, Result, SessionDirectory, SessionId, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{corrupt, map};
use crate::keys::member;
use crate::node::Shared;
use crate::scripts;
use crate::subscribe;

/// [`SessionDirectory`] on Redis: `{p}:dir:{user}` hashes (session -> node), with a
/// per-node index so that a dead node's entries can be removed. Lookups drop entries
/// whose node's liveness key has expired, so a killed node's sessions stop being
/// returned at most `node_ttl` after its last heartbeat, and reapers delete them soon
/// after.
pub struct RedisSessionDirectory {
    pub(crate) shared: Arc<Shared>,
}

#[async_trait]
impl SessionDirectory for RedisSessionDirectory {
    async fn register(&self, entry: &SessionEntry) -> Result<()> {
        let sh = &self.shared;
        let mine = entry.node == sh.node;
        if mine {
            sh.local_register(entry);
        }
        let r = register_entry(sh, entry).await;
        if mine && r.is_err() {
            sh.local_register_failed(entry);
        }
        r
    }

    async fn unregister(&self, entry: &SessionEntry) -> Result<()> {
        let sh = &self.shared;
        let mine = entry.node == sh.node;
        if mine {
            sh.local_unregister(entry);
        }
        let r = unregister_entry(sh, entry).await;
        if mine && r.is_err() {
            sh.local_unregister_failed(entry);
        }
        r
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<Vec<SessionEntry>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let sh = &self.shared;
        let mut con = sh.con.clone();
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hgetall(sh.keys.dir(u));
        }
        let raw: Vec<Vec<(String, String)>> = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| map("directory lookup", e))?;
        let mut nodes = BTreeSet::new();
        let mut parsed = Vec::with_capacity(users.len());
        for (u, fields) in users.iter().zip(raw) {
            let mut list = Vec::with_capacity(fields.len());
            for (s, n) in fields {
                let session_id = SessionId::new(&s)
                    .map_err(|e| corrupt(format_args!("{}: {e}", sh.keys.dir(u))))?;
                let node = parse_node(&n)
                    .ok_or_else(|| corrupt(format_args!("{}: node {n:?}", sh.keys.dir(u))))?;
                nodes.insert(node);
                list.push(SessionEntry {
                    user_id: u.clone(),
                    session_id,
                    node,
                });
            }
            list.sort_by(|a, b| a.session_id.cmp(&b.session_id));
            parsed.push(list);
        }
        if nodes.is_empty() {
            return Ok(parsed);
        }
        let nodes: Vec<NodeId> = nodes.into_iter().collect();
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.exists(sh.keys.node(*n));
        }
        let alive: Vec<bool> = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| map("directory node liveness", e))?;
        let dead: Vec<NodeId> = nodes
            .iter()
            .zip(alive)
            .filter(|(_, a)| !a)
            .map(|(n, _)| *n)
            .collect();
        if !dead.is_empty() {
            for list in &mut parsed {
                list.retain(|e| !dead.contains(&e.node));
            }
        }
        Ok(parsed)
    }
}

pub(crate) async fn register_entry(sh: &Shared, entry: &SessionEntry) -> Result<()> {
    let mut con = sh.con.clone();
    redis::pipe()
        .atomic()
        .hset(
            sh.keys.dir(&entry.user_id),
            entry.session_id.as_str(),
            entry.node.get(),
        )
        .ignore()
        .sadd(
            sh.keys.dir_node(entry.node),
            member(&entry.user_id, &entry.session_id),
        )
        .ignore()
        .hset_nx(sh.keys.nodes(), entry.node.get(), now_ms())
        .ignore()
        .query_async::<()>(&mut con)
        .await
        .map_err(|e| map("directory register", e))
}

pub(crate) async fn unregister_entry(sh: &Shared, entry: &SessionEntry) -> Result<()> {
    let mut con = sh.con.clone();
    redis::pipe()
        .atomic()
        .hdel(sh.keys.dir(&entry.user_id), entry.session_id.as_str())
        .ignore()
        .srem(
            sh.keys.dir_node(entry.node),
            member(&entry.user_id, &entry.session_id),
        )
        .ignore()
        .query_async::<()>(&mut con)
        .await
        .map_err(|e| map("directory unregister", e))
}

fn parse_node(s: &str) -> Option<NodeId> {
    s.parse::<u16>().ok().and_then(|n| NodeId::new(n).ok())
}

/// A presence change as published on `{p}:presence` (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct PresenceEvent {
    user_id: UserId,
    status: PresenceStatus,
    last_seen: Option<Millis>,
}

/// [`Presence`] on Redis: a user is online while `{p}:pres:{user}` (session -> node)
/// is not empty. Transitions run in Lua scripts that publish the change event on
/// `{p}:presence` in the same atomic step, so each transition is published exactly
/// once, whoever (a node or a reaper) makes it.
pub struct RedisPresence {
    pub(crate) shared: Arc<Shared>,
}

#[async_trait]
impl Presence for RedisPresence {
    async fn set_online(&self, user: &UserId, session: &SessionId, node: NodeId) -> Result<()> {
        let sh = &self.shared;
        let mine = node == sh.node;
        if mine {
            sh.local_online(user, session);
        }
        let r = set_online(sh, user, session, node).await;
        if mine && r.is_err() {
            sh.local_online_failed(user, session);
        }
        r
    }

    async fn set_offline(
        &self,
        user: &UserId,
        session: &SessionId,
        last_seen: Millis,
    ) -> Result<()> {
        let sh = &self.shared;
        let mine = sh.local_offline(user, session);
        let r = set_offline(sh, user, session, last_seen).await;
        if mine && r.is_err() {
            sh.local_offline_failed(user, session, last_seen);
        }
        r
    }

    async fn get(&self, users: &[UserId]) -> Result<Vec<PresenceInfo>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let sh = &self.shared;
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hlen(sh.keys.pres(u)).get(sh.keys.seen(u));
        }
        let mut con = sh.con.clone();
        let raw: Vec<(u64, Option<String>)> = pipe
            .query_async::<Vec<redis::Value>>(&mut con)
            .await
            .map_err(|e| map("presence get", e))?
            .chunks(2)
            .map(|c| {
                let n = redis::from_redis_value_ref::<u64>(&c[0]).map_err(|e| {
                    Error::internal("presence get: unexpected reply").with_source(e)
                })?;
                let seen = match c.get(1) {
                    Some(v) => redis::from_redis_value_ref::<Option<String>>(v).map_err(|e| {
                        Error::internal("presence get: unexpected reply").with_source(e)
                    })?,
                    None => None,
                };
                Ok((n, seen))
            })
            .collect::<Result<_>>()?;
        users
            .iter()
            .zip(raw)
            .map(|(u, (n, seen))| {
                if n > 0 {
                    return Ok(PresenceInfo {
                        user_id: u.clone(),
                        status: PresenceStatus::Online,
                        last_seen: None,
                    });
                }
                let last_seen = match seen {
                    Some(s) => Some(
                        s.parse::<Millis>()
                            .map_err(|_| corrupt(format_args!("{}: {s:?}", sh.keys.seen(u))))?,
                    ),
                    None => None,
                };
                Ok(PresenceInfo {
                    user_id: u.clone(),
                    status: PresenceStatus::Offline,
                    last_seen,
                })
            })
            .collect()
    }

    async fn changes(&self) -> Result<BoxStream<'static, PresenceInfo>> {
        let sh = &self.shared;
        subscribe::subscribe(
            sh.subscription(sh.keys.presence_channel()),
            "presence",
            |b| {
                let e: PresenceEvent = serde_json::from_slice(b).map_err(|e| e.to_string())?;
                Ok(PresenceInfo {
                    user_id: e.user_id,
                    status: e.status,
                    last_seen: e.last_seen,
                })
            },
        )
        .await
    }
}

pub(crate) async fn set_online(
    sh: &Shared,
    user: &UserId,
    session: &SessionId,
    node: NodeId,
) -> Result<()> {
    let event = event_json(user, PresenceStatus::Online, None)?;
    let mut con = sh.con.clone();
    scripts::SET_ONLINE
        .key(sh.keys.pres(user))
        .key(sh.keys.pres_node(node))
        .key(sh.keys.nodes())
        .arg(session.as_str())
        .arg(node.get())
        .arg(member(user, session))
        .arg(sh.keys.presence_channel())
        .arg(event)
        .arg(now_ms())
        .invoke_async::<i64>(&mut con)
        .await
        .map_err(|e| map("presence set_online", e))?;
    Ok(())
}

pub(crate) async fn set_offline(
    sh: &Shared,
    user: &UserId,
    session: &SessionId,
    last_seen: Millis,
) -> Result<()> {
    let event = event_json(user, PresenceStatus::Offline, Some(last_seen))?;
    let mut con = sh.con.clone();
    scripts::SET_OFFLINE
        .key(sh.keys.pres(user))
        .key(sh.keys.seen(user))
        .arg(session.as_str())
        .arg(last_seen)
        .arg(sh.keys.pres_node_prefix())
        .arg(member(user, session))
        .arg(sh.keys.presence_channel())
        .arg(event)
        .invoke_async::<i64>(&mut con)
        .await
        .map_err(|e| map("presence set_offline", e))?;
    Ok(())
}

fn event_json(user: &UserId, status: PresenceStatus, last_seen: Option<Millis>) -> Result<String> {
    serde_json::to_string(&PresenceEvent {
        user_id: user.clone(),
        status,
        last_seen,
    })
    .map_err(|e| Error::internal("encode presence event").with_source(e))
}

/// [`Relay`] on Redis pub/sub: one channel per node, `{p}:relay:{node}`, JSON
/// envelopes. Best-effort live fan-out (see the crate docs for why not streams).
pub struct RedisRelay {
    pub(crate) shared: Arc<Shared>,
}

#[async_trait]
impl Relay for RedisRelay {
    async fn send(&self, node: NodeId, envelope: Envelope) -> Result<()> {
        let sh = &self.shared;
        let payload = serde_json::to_vec(&envelope)
            .map_err(|e| Error::internal("encode relay envelope").with_source(e))?;
        let mut con = sh.con.clone();
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(sh.keys.relay_channel(node))
            .arg(payload)
            .query_async(&mut con)
            .await
            .map_err(|e| map("relay send", e))?;
        if receivers == 0 {
            tracing::debug!(%node, "relay: no subscriber for node; envelope not delivered");
        }
        Ok(())
    }

    /// The nodes subscribed to their relay channel right now: one `PUBSUB CHANNELS
    /// {p}:relay:*` (a node that crashed has lost its subscription with its connection,
    /// so it is not listed; one in a resubscribe gap is not either).
    async fn nodes(&self) -> Result<Option<Vec<NodeId>>> {
        let sh = &self.shared;
        let prefix = sh.keys.relay_channel_prefix();
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut con = sh.con.clone();
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(pattern)
            .query_async(&mut con)
            .await
            .map_err(|e| map("relay nodes", e))?;
        Ok(Some(
            channels
                .iter()
                .filter_map(|c| c.strip_prefix(prefix.as_str()).and_then(parse_node))
                .collect(),
        ))
    }

    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>> {
        let sh = &self.shared;
        subscribe::subscribe(sh.subscription(sh.keys.relay_channel(node)), "relay", |b| {
            serde_json::from_slice::<Envelope>(b).map_err(|e| e.to_string())
        })
        .await
    }
}

/// The nodes whose claim is live in Redis (see `scripts::LIVE_NODES`).
pub(crate) async fn live_nodes(sh: &Shared) -> Result<Vec<NodeId>> {
    let mut con = sh.con.clone();
    let ids: Vec<String> = scripts::LIVE_NODES
        .key(sh.keys.nodes())
        .arg(sh.keys.node_prefix())
        .invoke_async(&mut con)
        .await
        .map_err(|e| map("live nodes", e))?;
    Ok(ids.iter().filter_map(|n| parse_node(n)).collect())
}

/// Another [`Relay`] (for example the Kafka relay, which cannot tell which nodes
/// listen) whose [`nodes`](Relay::nodes) comes from Redis when the relay itself cannot
/// list them: the nodes whose claim is live, that is, whose heartbeat reached Redis
/// within `node_ttl`. Made by [`RedisCluster::relay_with_live_nodes`](crate::RedisCluster::relay_with_live_nodes).
///
/// With it the engine sends a large thread's messages as one envelope per live node
/// instead of looking up every member in the session directory. A node is live from
/// its claim, which comes before it subscribes to the relay and accepts sessions, and
/// stays live until its claim expires or is released, after its sessions are gone; a
/// node listed but not (yet, or no longer) listening misses the envelope, which its
/// sessions' catch-up covers, as with every best-effort relay.
pub struct LiveNodesRelay {
    pub(crate) inner: Arc<dyn Relay>,
    pub(crate) shared: Arc<Shared>,
}

#[async_trait]
impl Relay for LiveNodesRelay {
    async fn send(&self, node: NodeId, envelope: Envelope) -> Result<()> {
        self.inner.send(node, envelope).await
    }

    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>> {
        self.inner.subscribe(node).await
    }

    /// The inner relay's list when it has one, otherwise the nodes live in Redis.
    async fn nodes(&self) -> Result<Option<Vec<NodeId>>> {
        if let Some(list) = self.inner.nodes().await? {
            return Ok(Some(list));
        }
        live_nodes(&self.shared).await.map(Some)
    }
}

/// `s` with Redis glob specials escaped, to match it literally in a pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_escape_matches_literally() {
        assert_eq!(super::glob_escape("messenger:relay:"), "messenger:relay:");
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
