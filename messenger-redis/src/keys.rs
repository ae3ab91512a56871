//! Key and channel names. The layout is documented in the crate docs; `scripts::REAP`
//! builds the `pres`, `dir` and `seen` names itself and must agree with this file.

use messenger_core::{NodeId, SessionId, UserId};

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{p}:node:{node}`: the claim and liveness key (value: instance token, PX ttl).
    pub fn node(&self, n: NodeId) -> String {
        format!("{}:node:{n}", self.prefix)
    }

    /// `{p}:node:`: the prefix of every node's liveness key.
    pub fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    /// `{p}:nodes`: hash node id -> last heartbeat (Unix ms); what reapers scan.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// `{p}:dir:{user}`: hash session id -> node id (the session directory).
    pub fn dir(&self, u: &UserId) -> String {
        format!("{}:dir:{u}", self.prefix)
    }

    /// `{p}:dir-node:{node}`: set of "user session" registered by that node.
    pub fn dir_node(&self, n: NodeId) -> String {
        format!("{}:dir-node:{n}", self.prefix)
    }

    /// `{p}:pres:{user}`: hash session id -> node id of sessions counted as online.
    pub fn pres(&self, u: &UserId) -> String {
        format!("{}:pres:{u}", self.prefix)
    }

    /// `{p}:pres-node:` (node id appended): set of "user session" per node.
    pub fn pres_node_prefix(&self) -> String {
        format!("{}:pres-node:", self.prefix)
    }

    pub fn pres_node(&self, n: NodeId) -> String {
        format!("{}:pres-node:{n}", self.prefix)
    }

    /// `{p}:seen:{user}`: last_seen (Unix ms) of an offline user.
    pub fn seen(&self, u: &UserId) -> String {
        format!("{}:seen:{u}", self.prefix)
    }

    /// `{p}:presence`: pub/sub channel of presence change events.
    pub fn presence_channel(&self) -> String {
        format!("{}:presence", self.prefix)
    }

    /// `{p}:relay:{node}`: pub/sub channel of envelopes addressed to a node.
    pub fn relay_channel(&self, n: NodeId) -> String {
        format!("{}{n}", self.relay_channel_prefix())
    }

    /// `{p}:relay:`: what every relay channel's name starts with (the node id follows).
    pub fn relay_channel_prefix(&self) -> String {
        format!("{}:relay:", self.prefix)
    }
}

/// Index member for a session: ids never contain spaces (protocol v1 charsets).
pub(crate) fn member(u: &UserId, s: &SessionId) -> String {
    format!("{u} {s}")
}
