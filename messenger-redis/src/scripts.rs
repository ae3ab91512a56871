//! The Lua scripts. Each one runs atomically inside Redis, so concurrent callers (two
//! reapers, a reaper and a heartbeat, two nodes marking one user) never interleave
//! halfway through a transition: every online or offline event is published exactly
//! once, by the script that made the transition.
//!
//! Some scripts build key names from values they read (a user id out of a node index),
//! which Redis Cluster forbids; this crate targets a single Redis (or a primary with
//! replicas / Sentinel), as the crate docs say.

use std::sync::LazyLock;

use redis::Script;

/// Claim or refresh a node id.
///
/// KEYS: 1 node liveness key, 2 nodes registry hash.
/// ARGV: 1 token, 2 ttl ms, 3 node id, 4 now ms, 5 "claim" (SET NX only) or "refresh".
/// Returns 1: held and refreshed; 2: was free and is now ours (claimed, or re-claimed
/// after it expired); 0: another instance holds it (nothing changed).
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] and ARGV[5] == 'refresh' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  return 2
end
return 0
"#,
    )
});

/// The nodes whose claim is live: every node id in the registry hash whose liveness key
/// still exists (Redis expires it `node_ttl` after the node's last heartbeat, on Redis's
/// clock, so a node whose own clock is off is judged the same way).
///
/// KEYS: 1 nodes registry hash. ARGV: 1 liveness key prefix (`{p}:node:`).
/// Returns the live node ids (as strings).
pub(crate) static LIVE_NODES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local live = {}
for _, n in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. n) == 1 then
    table.insert(live, n)
  end
end
return live
"#,
    )
});

/// Releases a node id if this instance still holds it, and drops it from the registry.
///
/// KEYS: 1 node liveness key, 2 nodes registry hash. ARGV: 1 token, 2 node id.
/// Returns 1 if released.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Counts `session` (held on `node`) towards `user`'s presence.
///
/// KEYS: 1 user's presence hash, 2 node's presence index, 3 nodes registry hash.
/// ARGV: 1 session, 2 node, 3 index member "user session", 4 channel, 5 online event
/// JSON, 6 now ms. Returns 1 if the user went online (and the event was published).
pub(crate) static SET_ONLINE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local before = redis.call('HLEN', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[6])
if before == 0 then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return 1
end
return 0
"#,
    )
});

/// Stops counting `session` towards `user`'s presence.
///
/// KEYS: 1 user's presence hash, 2 user's last-seen key.
/// ARGV: 1 session, 2 last_seen ms, 3 node presence index key prefix (node id is
/// appended), 4 index member "user session", 5 channel, 6 offline event JSON.
/// Returns 1 if the user went offline (and the event was published).
pub(crate) static SET_OFFLINE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local node = redis.call('HGET', KEYS[1], ARGV[1])
if not node then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', ARGV[3] .. node, ARGV[4])
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  return 1
end
return 0
"#,
    )
});

/// Removes up to ARGV[5] sessions of a dead (or departing) node: directory entries and
/// presence sessions; every user left without a presence session goes offline and an
/// offline event is published for them.
///
/// KEYS: 1 node liveness key, 2 nodes registry hash, 3 node presence index, 4 node
/// directory index.
/// ARGV: 1 node id, 2 key prefix, 3 presence channel, 4 now ms, 5 batch size, 6 token
/// ("" for a reaper: the node must be dead; the node's own token for a clean
/// shutdown: its sessions leave as of now).
/// Returns {offline events published, index members left}; {-1, 0} when the node is
/// alive (its liveness key exists and is not ours to release).
pub(crate) static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[6] then return {-1, 0} end
local seen = ARGV[4]
if ARGV[6] == '' then
  seen = redis.call('HGET', KEYS[2], ARGV[1]) or ARGV[4]
end
local batch = tonumber(ARGV[5])
local n = 0
for _, m in ipairs(redis.call('SPOP', KEYS[3], batch)) do
  local sp = string.find(m, ' ', 1, true)
  if sp then
    local user = string.sub(m, 1, sp - 1)
    local pk = ARGV[2] .. ':pres:' .. user
    if redis.call('HDEL', pk, string.sub(m, sp + 1)) == 1 and redis.call('HLEN', pk) == 0 then
      redis.call('SET', ARGV[2] .. ':seen:' .. user, seen)
      redis.call('PUBLISH', ARGV[3],
        '{"user_id":"' .. user .. '","status":"offline","last_seen":' .. seen .. '}')
      n = n + 1
    end
  end
end
for _, m in ipairs(redis.call('SPOP', KEYS[4], batch)) do
  local sp = string.find(m, ' ', 1, true)
  if sp then
    redis.call('HDEL', ARGV[2] .. ':dir:' .. string.sub(m, 1, sp - 1), string.sub(m, sp + 1))
  end
end
local left = redis.call('SCARD', KEYS[3]) + redis.call('SCARD', KEYS[4])
if left == 0 and not cur then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return {n, left}
"#,
    )
});
