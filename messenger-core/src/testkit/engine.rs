//! Engine-level checks: the protocol's rules end to end through a real [`Engine`] over
//! any backend. Run them all with [`engine_tests!`](crate::engine_tests).
//!
//! A check gets a [`NodeAdapters`]: the adapters of one backend for a node id, called
//! again for a second node on the same backend (the cross-node check). Every check uses
//! users unique to the run, so backends shared with other tests (Redis, HBase) are fine.
//! The push sink is replaced by a [`RecordingPush`] so offline pushes can be checked on
//! any backend.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::{unique_user, within};
use crate::engine::{Adapters, Engine, EngineConfig, OutboxItem, Session};
use crate::ids::{NodeId, ThreadId, UserId};
use crate::model::{AckStatus, PushNotification};
use crate::protocol::{ReqId, ServerFrame};
use crate::traits::PushSink;

/// The adapters of one backend for a node id (async: a backend may connect per node).
pub type NodeAdapters = Arc<dyn Fn(NodeId) -> BoxFuture<'static, Adapters> + Send + Sync>;

/// Wraps a closure `|node| async { adapters }` as a [`NodeAdapters`].
pub fn node_adapters<F, Fut>(f: F) -> NodeAdapters
where
    F: Fn(NodeId) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Adapters> + Send + 'static,
{
    Arc::new(move |node| Box::pin(f(node)))
}

/// A push sink that keeps what it was handed.
#[derive(Debug, Default)]
pub struct RecordingPush {
    seen: Mutex<Vec<PushNotification>>,
}

impl RecordingPush {
    /// The notifications so far.
    pub fn seen(&self) -> Vec<PushNotification> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl PushSink for RecordingPush {
    async fn push(&self, n: PushNotification) -> crate::Result<()> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).push(n);
        Ok(())
    }
}

/// An engine on `node` of the backend, with a [`RecordingPush`].
pub async fn start(backend: &NodeAdapters, node: u16) -> (Engine, Arc<RecordingPush>) {
    start_with(backend, node, |_| {}).await
}

/// [`start`] with the configuration changed by `tune` first.
pub async fn start_with(
    backend: &NodeAdapters,
    node: u16,
    tune: impl FnOnce(&mut EngineConfig),
) -> (Engine, Arc<RecordingPush>) {
    let node = NodeId::new(node).unwrap_or_else(|e| panic!("bad node id: {e}"));
    let mut adapters = backend(node).await;
    let push = Arc::new(RecordingPush::default());
    adapters.push = push.clone();
    let mut config = EngineConfig::with_node(node);
    config.presence_grace = Duration::from_millis(200);
    tune(&mut config);
    let engine = Engine::start(config, adapters)
        .await
        .unwrap_or_else(|e| panic!("the engine did not start: {e}"));
    (engine, push)
}

/// A session driven like a client: frames in as JSON text, frames out decoded.
pub struct Peer {
    /// The engine.
    pub engine: Engine,
    /// The session.
    pub session: Session,
    /// Its user.
    pub user: UserId,
    pending: VecDeque<ServerFrame>,
    next_req: u64,
}

impl Peer {
    /// Connects `user` and reads its `welcome`.
    pub async fn connect(engine: &Engine, user: &UserId) -> Peer {
        let session = engine
            .connect(user.clone())
            .await
            .unwrap_or_else(|e| panic!("connect {user}: {e}"));
        let mut p = Peer {
            engine: engine.clone(),
            session,
            user: user.clone(),
            pending: VecDeque::new(),
            next_req: 0,
        };
        match p.next().await {
            ServerFrame::Welcome { user_id, .. } => assert_eq!(&user_id, user),
            f => panic!("{user}: expected welcome, got {f:?}"),
        }
        p
    }

    async fn read(&mut self) -> ServerFrame {
        let user = self.user.clone();
        match within(&format!("a frame for {user}"), self.session.outbox.recv()).await {
            Some(OutboxItem::Frame(out)) => {
                let text = std::str::from_utf8(&out.frame)
                    .unwrap_or_else(|e| panic!("{user}: frame not UTF-8: {e}"));
                ServerFrame::decode(text)
                    .unwrap_or_else(|e| panic!("{user}: bad frame {text}: {e}"))
            }
            other => panic!("{user}: session ended: {other:?}"),
        }
    }

    /// The next frame (buffered ones first).
    pub async fn next(&mut self) -> ServerFrame {
        match self.pending.pop_front() {
            Some(f) => f,
            None => self.read().await,
        }
    }

    /// The first frame that `pick` accepts, keeping the others for later, in order.
    pub async fn take<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> T {
        if let Some(i) = self.pending.iter().position(|f| pick(f).is_some()) {
            let f = self
                .pending
                .remove(i)
                .unwrap_or_else(|| panic!("index {i}"));
            return pick(&f).unwrap_or_else(|| panic!("{what}"));
        }
        loop {
            let f = within(what, self.read()).await;
            if let Some(t) = pick(&f) {
                return t;
            }
            self.pending.push_back(f);
        }
    }

    /// Sends `frame` (a JSON object) with a fresh `req_id` and returns the reply to it.
    pub async fn request(&mut self, mut frame: serde_json::Value) -> ServerFrame {
        self.next_req += 1;
        let id = format!("tk-{}", self.next_req);
        frame["req_id"] = serde_json::Value::String(id.clone());
        self.engine
            .handle_text(&self.session.handle, &frame.to_string())
            .await;
        let want = Some(ReqId::Str(id));
        self.take("the reply to a request", |f| {
            (reply_id(f) == want.as_ref()).then(|| f.clone())
        })
        .await
    }

    /// Creates a thread; returns its id.
    pub async fn create(&mut self, kind: &str, members: &[&UserId]) -> ThreadId {
        let members: Vec<&str> = members.iter().map(|u| u.as_str()).collect();
        let mut frame = serde_json::json!({"type":"create_thread","kind":kind,"members":members});
        if kind == "group" {
            frame["title"] = serde_json::Value::String("testkit".into());
        }
        match self.request(frame).await {
            ServerFrame::Thread { thread_id, .. } => thread_id,
            f => panic!("create_thread: {f:?}"),
        }
    }

    /// Sends a message; returns (message id, seq) from `message_sent`.
    pub async fn send(&mut self, thread: &ThreadId, temp: &str, text: &str) -> (String, u64) {
        match self
            .request(serde_json::json!({"type":"send_message","thread_id":thread,"temp_id":temp,"text":text}))
            .await
        {
            ServerFrame::MessageSent { message_id, seq, .. } => (message_id.to_string(), seq),
            f => panic!("send_message: {f:?}"),
        }
    }

    /// The next `receive_message` in `thread`: (message id, seq, text).
    pub async fn receive(&mut self, thread: &ThreadId) -> (String, u64, String) {
        self.take("a receive_message", |f| match f {
            ServerFrame::ReceiveMessage {
                thread_id,
                message_id,
                seq,
                text,
                ..
            } if thread_id == thread => Some((message_id.to_string(), *seq, text.clone())),
            _ => None,
        })
        .await
    }

    /// Asserts that no `receive_message` for `thread` arrives within 200 ms.
    pub async fn no_receive(&mut self, thread: &ThreadId) {
        let quiet = tokio::time::timeout(
            Duration::from_millis(200),
            self.take("", |f| match f {
                ServerFrame::ReceiveMessage { thread_id, .. } if thread_id == thread => Some(()),
                _ => None,
            }),
        )
        .await;
        assert!(
            quiet.is_err(),
            "{}: an unexpected receive_message",
            self.user
        );
    }
}

fn reply_id(f: &ServerFrame) -> Option<&ReqId> {
    match f {
        ServerFrame::MessageSent { req_id, .. }
        | ServerFrame::Thread { req_id, .. }
        | ServerFrame::Threads { req_id, .. }
        | ServerFrame::History { req_id, .. }
        | ServerFrame::Presence { req_id, .. }
        | ServerFrame::Pong { req_id }
        | ServerFrame::Error { req_id, .. } => req_id.as_ref(),
        _ => None,
    }
}

/// A message reaches every member's sessions and the sender's other sessions once, in
/// seq order, with seqs 1, 2, 3 ...
pub async fn send_reaches_every_session_once_in_order(backend: NodeAdapters) {
    let (e, _) = start(&backend, 1).await;
    let (a, b) = (unique_user("alice"), unique_user("bob"));
    let mut a1 = Peer::connect(&e, &a).await;
    let mut a2 = Peer::connect(&e, &a).await;
    let mut b1 = Peer::connect(&e, &b).await;
    let t = a1.create("direct", &[&b]).await;
    for i in 1..=5u64 {
        let (_, seq) = a1.send(&t, &format!("m{i}"), &format!("text {i}")).await;
        assert_eq!(seq, i);
    }
    for peer in [&mut b1, &mut a2] {
        for i in 1..=5u64 {
            let (_, seq, text) = peer.receive(&t).await;
            assert_eq!((seq, text), (i, format!("text {i}")));
        }
        peer.no_receive(&t).await;
    }
    a1.no_receive(&t).await;
}

/// A resend with the same temp id returns the original and is delivered once.
pub async fn resend_returns_the_original_and_delivers_once(backend: NodeAdapters) {
    let (e, _) = start(&backend, 1).await;
    let (a, b) = (unique_user("alice"), unique_user("bob"));
    let mut a1 = Peer::connect(&e, &a).await;
    let mut b1 = Peer::connect(&e, &b).await;
    let t = a1.create("direct", &[&b]).await;
    let first = a1.send(&t, "same", "once").await;
    assert_eq!(a1.send(&t, "same", "once, resent").await, first);
    // From another session of the sender too (a reconnect).
    let mut a2 = Peer::connect(&e, &a).await;
    assert_eq!(a2.send(&t, "same", "once").await, first);
    let (id, seq, _) = b1.receive(&t).await;
    assert_eq!((id, seq), first);
    b1.no_receive(&t).await;
}

/// Concurrent senders in one group: seqs are exactly 1..=N and every member receives
/// every message once, in seq order.
pub async fn concurrent_senders_are_gapless_and_ordered(backend: NodeAdapters) {
    let (e, _) = start(&backend, 1).await;
    let users: Vec<UserId> = (0..4).map(|i| unique_user(&format!("g{i}"))).collect();
    let mut creator = Peer::connect(&e, &users[0]).await;
    let others: Vec<&UserId> = users[1..].iter().collect();
    let t = creator.create("group", &others).await;
    let per = 10u64;
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (e, u, t) = (e.clone(), u.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut p = Peer::connect(&e, &u).await;
            let mut seqs = Vec::new();
            for n in 0..per {
                seqs.push(p.send(&t, &format!("s{i}-{n}"), "x").await.1);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("sender: {e}")));
    }
    all.sort_unstable();
    let total = per * users.len() as u64;
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "gapless, no duplicates"
    );
    // A reader that joined before: every message once, in seq order, except its own
    // session's sends (the creator's session sent none, so it sees them all).
    let mut last = 0;
    for _ in 0..total {
        let (_, seq, _) = creator.receive(&t).await;
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }
    assert_eq!(last, total);
}

/// Acks move watermarks forward only and reach the sender; `list_threads` shows them.
pub async fn acks_only_move_forward(backend: NodeAdapters) {
    let (e, _) = start(&backend, 1).await;
    let (a, b) = (unique_user("alice"), unique_user("bob"));
    let mut a1 = Peer::connect(&e, &a).await;
    let mut b1 = Peer::connect(&e, &b).await;
    let t = a1.create("direct", &[&b]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(a1.send(&t, &format!("m{i}"), "x").await.0);
    }
    let ack = |id: &str, status: &str| serde_json::json!({"type":"message_ack","thread_id":t,"message_id":id,"status":status});
    b1.engine
        .handle_text(&b1.session.handle, &ack(&ids[2], "READ").to_string())
        .await;
    b1.engine
        .handle_text(&b1.session.handle, &ack(&ids[0], "DELIVERED").to_string())
        .await;
    let seen = a1
        .take("a message_ack", |f| match f {
            ServerFrame::MessageAck { seq, user_id, .. } if *user_id == b => Some(*seq),
            _ => None,
        })
        .await;
    assert_eq!(seen, 3);
    let threads = match b1.request(serde_json::json!({"type":"list_threads"})).await {
        ServerFrame::Threads { threads, .. } => threads,
        f => panic!("list_threads: {f:?}"),
    };
    let s = threads
        .iter()
        .find(|s| s.thread_id == t)
        .unwrap_or_else(|| panic!("the thread is listed"));
    let r = s
        .receipts
        .get(&b)
        .unwrap_or_else(|| panic!("bob's receipt"));
    assert_eq!((r.delivered_seq, r.read_seq), (3, 3), "never backwards");
    assert_eq!((s.last_seq, s.unread), (3, 0));
}

/// `list_threads` gives each thread its own unread count: messages after the caller's
/// read watermark sent by others (own messages never count), matched to the right
/// thread when the user has several.
pub async fn list_threads_counts_unread_per_thread(backend: NodeAdapters) {
    let (e, _) = start(&backend, 1).await;
    let (a, b, c) = (
        unique_user("alice"),
        unique_user("bob"),
        unique_user("carol"),
    );
    let mut a1 = Peer::connect(&e, &a).await;
    let mut b1 = Peer::connect(&e, &b).await;
    let mut c1 = Peer::connect(&e, &c).await;
    let with_bob = a1.create("direct", &[&b]).await;
    let group = a1.create("group", &[&b, &c]).await;
    let with_carol = a1.create("direct", &[&c]).await;
    // with_bob: three from bob, one from alice -> 3 unread.
    for i in 0..3 {
        b1.send(&with_bob, &format!("b{i}"), "x").await;
    }
    a1.send(&with_bob, "a0", "x").await;
    // group: carol, bob, carol; alice read up to carol's first -> 2 unread.
    let (first, _) = c1.send(&group, "c0", "x").await;
    b1.send(&group, "b0", "x").await;
    c1.send(&group, "c1", "x").await;
    let read = serde_json::json!({"type":"message_ack","thread_id":group,
                                  "message_id":first,"status":"READ"});
    a1.engine
        .handle_text(&a1.session.handle, &read.to_string())
        .await;
    c1.take("alice's READ", |f| match f {
        ServerFrame::MessageAck {
            user_id, status, ..
        } if *user_id == a && *status == AckStatus::Read => Some(()),
        _ => None,
    })
    .await;
    // with_carol: only alice's own messages -> 0 unread.
    a1.send(&with_carol, "a1", "x").await;
    a1.send(&with_carol, "a2", "x").await;
    let threads = match a1.request(serde_json::json!({"type":"list_threads"})).await {
        ServerFrame::Threads { threads, .. } => threads,
        f => panic!("list_threads: {f:?}"),
    };
    let of = |t: &ThreadId| {
        threads
            .iter()
            .find(|s| s.thread_id == *t)
            .map(|s| (s.last_seq, s.unread))
            .unwrap_or_else(|| panic!("{t} is listed"))
    };
    assert_eq!(of(&with_bob), (4, 3), "with bob: last seq, unread");
    assert_eq!(of(&group), (3, 2), "group: last seq, unread");
    assert_eq!(of(&with_carol), (2, 0), "with carol: last seq, unread");
}

/// History pages by range: latest, before, after.
pub async fn history_pages_by_range(backend: NodeAdapters) {
    let (e, _) = start(&backend, 1).await;
    let (a, b) = (unique_user("alice"), unique_user("bob"));
    let mut a1 = Peer::connect(&e, &a).await;
    let t = a1.create("direct", &[&b]).await;
    for i in 1..=10 {
        a1.send(&t, &format!("m{i}"), &format!("{i}")).await;
    }
    assert_eq!(
        history(&mut a1, &t, serde_json::json!({"limit":3})).await,
        (vec![8, 9, 10], true)
    );
    assert_eq!(
        history(&mut a1, &t, serde_json::json!({"limit":3,"before_seq":8})).await,
        (vec![5, 6, 7], true)
    );
    assert_eq!(
        history(&mut a1, &t, serde_json::json!({"limit":5,"after_seq":7})).await,
        (vec![8, 9, 10], false)
    );
}

async fn history(p: &mut Peer, t: &ThreadId, q: serde_json::Value) -> (Vec<u64>, bool) {
    let mut f = serde_json::json!({"type":"fetch_history","thread_id":t});
    if let (Some(o), Some(q)) = (f.as_object_mut(), q.as_object()) {
        o.extend(q.clone());
    }
    match p.request(f).await {
        ServerFrame::History {
            messages, has_more, ..
        } => (messages.iter().map(|m| m.seq).collect(), has_more),
        f => panic!("fetch_history: {f:?}"),
    }
}

/// Members with no session get a push; online ones do not.
pub async fn offline_members_get_a_push(backend: NodeAdapters) {
    let (e, push) = start(&backend, 1).await;
    let (a, b, c) = (
        unique_user("alice"),
        unique_user("bob"),
        unique_user("carol"),
    );
    let mut a1 = Peer::connect(&e, &a).await;
    let mut b1 = Peer::connect(&e, &b).await;
    let t = a1.create("group", &[&b, &c]).await;
    let (id, seq) = a1.send(&t, "p1", "wake up").await;
    b1.receive(&t).await;
    let pushed = within("a push for carol", async {
        loop {
            let seen = push.seen();
            if let Some(n) = seen.iter().find(|n| n.user_id == c) {
                return n.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!((pushed.message_id.to_string(), pushed.seq), (id, seq));
    assert!(
        push.seen().iter().all(|n| n.user_id != b && n.user_id != a),
        "no push for members with a session"
    );
}

/// Two engines on one backend (two nodes): a message from a session on one node
/// reaches a session on the other.
pub async fn two_nodes_deliver_to_each_other(backend: NodeAdapters) {
    let (e1, _) = start(&backend, 1).await;
    let (e2, _) = start(&backend, 2).await;
    let (a, b) = (unique_user("alice"), unique_user("bob"));
    let mut a1 = Peer::connect(&e1, &a).await;
    let mut b2 = Peer::connect(&e2, &b).await;
    let t = a1.create("direct", &[&b]).await;
    let (id, seq) = a1.send(&t, "x1", "across nodes").await;
    let (got, gseq, text) = b2.receive(&t).await;
    assert_eq!((got, gseq, text.as_str()), (id, seq, "across nodes"));
}

/// Reads `n` messages of `thread` on `peer`: their seqs and texts, in arrival order.
async fn receive_n(peer: &mut Peer, thread: &ThreadId, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let (_, seq, text) = peer.receive(thread).await;
        got.push((seq, text));
    }
    got
}

/// Large groups over two nodes (threshold 3, so a group of 6 is large): each node
/// delivers a large thread's messages to its own sessions of the members from one
/// envelope per node. Every online member's session on either node gets each message
/// exactly once, in seq order, from senders on both nodes; a member added on one node
/// is delivered on the other after the change; a member who left gets nothing more; an
/// offline member gets a push.
pub async fn large_groups_across_nodes(backend: NodeAdapters) {
    // A reorder window far longer than any relay delay on a loaded machine: a seq past
    // a gap waits for the missing ones, so seq order is the engine's, not the timing's.
    let small = |c: &mut EngineConfig| {
        c.large_group_threshold = 3;
        c.reorder_window = Duration::from_secs(8);
    };
    let (e1, push1) = start_with(&backend, 1, small).await;
    let (e2, push2) = start_with(&backend, 2, small).await;
    let [a, b, c, d, f, late] = ["alice", "bob", "carol", "dave", "frank", "late"].map(unique_user);
    // alice and carol on node 1; bob (two sessions), frank and alice's second session
    // on node 2; dave offline; `late` online on node 2 and not a member yet.
    let mut a1 = Peer::connect(&e1, &a).await;
    let mut c1 = Peer::connect(&e1, &c).await;
    let mut a2 = Peer::connect(&e2, &a).await;
    let mut b2 = Peer::connect(&e2, &b).await;
    let mut b2x = Peer::connect(&e2, &b).await;
    let mut f2 = Peer::connect(&e2, &f).await;
    let mut late2 = Peer::connect(&e2, &late).await;
    let extra = unique_user("extra");
    let t = a1.create("group", &[&b, &c, &d, &f, &extra]).await;

    for i in 1..=3u64 {
        let (_, seq) = a1.send(&t, &format!("a{i}"), &format!("from 1: {i}")).await;
        assert_eq!(seq, i);
    }
    let want: Vec<(u64, String)> = (1..=3).map(|i| (i, format!("from 1: {i}"))).collect();
    for p in [&mut c1, &mut a2, &mut b2, &mut b2x, &mut f2] {
        assert_eq!(receive_n(p, &t, 3).await, want, "{}", p.user);
    }
    // From node 2 back to node 1 (and to the sender's other session on node 2).
    let (_, seq) = b2.send(&t, "b1", "from 2").await;
    assert_eq!(seq, 4);
    for p in [&mut a1, &mut c1, &mut a2, &mut b2x, &mut f2] {
        let got = p.receive(&t).await;
        assert_eq!((got.1, got.2.as_str()), (4, "from 2"), "{}", p.user);
    }
    // Senders on both nodes at once: every session sees 1..N once, in seq order.
    let per = 10u64;
    let mut senders = Vec::new();
    for (e, u, tag) in [(&e1, &a, "x"), (&e2, &f, "y")] {
        let (e, u, t, tag) = (e.clone(), u.clone(), t.clone(), tag.to_owned());
        senders.push(tokio::spawn(async move {
            let mut p = Peer::connect(&e, &u).await;
            for n in 0..per {
                p.send(&t, &format!("{tag}{n}"), "burst").await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap_or_else(|e| panic!("sender: {e}"));
    }
    let total = 4 + 2 * per;
    for p in [&mut a1, &mut c1, &mut a2, &mut b2, &mut b2x, &mut f2] {
        let seqs: Vec<u64> = receive_n(p, &t, (2 * per) as usize)
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            seqs,
            (5..=total).collect::<Vec<_>>(),
            "{}: every message once, in seq order",
            p.user
        );
    }
    late2.no_receive(&t).await;

    // A member added on node 1 is delivered on node 2 from the next message on.
    match a1
        .request(serde_json::json!({"type":"add_members","thread_id":t,"members":[late]}))
        .await
    {
        ServerFrame::Thread { members, .. } => assert!(members.contains(&late)),
        f => panic!("add_members: {f:?}"),
    }
    // bob leaves on node 2: neither of his sessions gets anything more.
    match b2
        .request(serde_json::json!({"type":"leave_thread","thread_id":t}))
        .await
    {
        ServerFrame::Thread { members, .. } => assert!(!members.contains(&b)),
        f => panic!("leave_thread: {f:?}"),
    }
    let (_, seq) = a1.send(&t, "after", "after the changes").await;
    assert_eq!(seq, total + 1);
    for p in [&mut late2, &mut c1, &mut a2, &mut f2] {
        let got = p.receive(&t).await;
        assert_eq!(got.1, total + 1, "{}", p.user);
    }
    // Node 2 delivered the message (late, frank and alice's session there have it):
    // bob's sessions, served by the same node, did not get it.
    b2.no_receive(&t).await;
    b2x.no_receive(&t).await;
    let (_, seq) = f2.send(&t, "after2", "from 2 after the changes").await;
    for p in [&mut late2, &mut a1, &mut c1, &mut a2] {
        assert_eq!(p.receive(&t).await.1, seq, "{}", p.user);
    }
    b2x.no_receive(&t).await;

    // dave and `extra` (offline) got a push from the thread's first push turn.
    for u in [&d, &extra] {
        within("a push for an offline member", async {
            loop {
                if push1.seen().iter().any(|n| &n.user_id == u && n.seq == 1) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    let online = [&a, &b, &c, &f, &late];
    for n in push1.seen().iter().chain(push2.seen().iter()) {
        assert!(
            !online.contains(&&n.user_id),
            "no push for a member with a session: {n:?}"
        );
    }
}
