//! Two or more nodes sharing one real Redis (started by the harness).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use messenger_core::model::{Envelope, EnvelopeTo, PresenceInfo, PresenceStatus, SessionEntry};
use messenger_core::time::now_ms;
use messenger_core::{ErrorKind, NodeId, Relay, SessionId, UserId};
use messenger_redis::{RedisCluster, RedisOptions};

fn user(name: &str) -> UserId {
    UserId::new(format!("{name}-{}", common::unique_prefix("u"))).unwrap()
}

fn session(n: u32) -> SessionId {
    SessionId::new(format!("s-{n}-{}", common::unique_prefix("s"))).unwrap()
}

fn node(n: u16) -> NodeId {
    NodeId::new(n).unwrap()
}

async fn connect(n: u16, opts: &RedisOptions) -> RedisCluster {
    RedisCluster::connect(&common::shared().url(), node(n), opts.clone())
        .await
        .unwrap_or_else(|e| panic!("connect node {n}: {e}"))
}

/// How long a test waits for an event it expects before it fails. Only a failing test
/// waits this long; it is generous because CI machines are shared and loaded.
const EVENT_BOUND: Duration = Duration::from_secs(30);

/// What a timing bound of the product (the offline bound) is allowed to slip by in a
/// test: the reaper's timer and the test itself may wait for a core on a loaded
/// machine. The measured figure is printed; the bound itself is documented in
/// `RedisOptions::offline_bound`.
const SCHEDULING_SLACK: Duration = Duration::from_secs(5);

/// The next event about `u`, skipping others; panics after `within`.
async fn next_for(
    s: &mut BoxStream<'static, PresenceInfo>,
    u: &UserId,
    within: Duration,
) -> PresenceInfo {
    tokio::time::timeout(within, async {
        loop {
            let e = s.next().await.expect("presence stream ended");
            if &e.user_id == u {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no presence event for {u} within {within:?}"))
}

fn env(from: NodeId, tag: &str) -> Envelope {
    Envelope {
        from_node: from,
        to: EnvelopeTo::Users(vec![UserId::new("someone").unwrap()]),
        except_session: None,
        order: None,
        frame: tag.to_owned(),
    }
}

async fn next_env(s: &mut BoxStream<'static, Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("no envelope within 5 s")
        .expect("relay stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_one_user_on_two_nodes() {
    let opts = common::fast_options("dir");
    let (a, b) = (connect(1, &opts).await, connect(2, &opts).await);
    let u = user("alice");
    let e1 = SessionEntry {
        user_id: u.clone(),
        session_id: session(1),
        node: node(1),
    };
    let e2 = SessionEntry {
        user_id: u.clone(),
        session_id: session(2),
        node: node(2),
    };
    a.directory().register(&e1).await.unwrap();
    b.directory().register(&e2).await.unwrap();
    b.directory().register(&e2).await.unwrap(); // twice: listed once
    let other = user("nobody");
    let found = a
        .directory()
        .lookup(&[other.clone(), u.clone()])
        .await
        .unwrap();
    assert!(found[0].is_empty());
    let mut want = vec![e1.clone(), e2.clone()];
    want.sort_by(|x, y| x.session_id.cmp(&y.session_id));
    assert_eq!(found[1], want);
    a.directory().unregister(&e1).await.unwrap();
    a.directory().unregister(&e1).await.unwrap(); // unknown: ignored
    let found = b
        .directory()
        .lookup(std::slice::from_ref(&u))
        .await
        .unwrap();
    assert_eq!(found, vec![vec![e2.clone()]]);
    assert!(a.directory().lookup(&[]).await.unwrap().is_empty());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_transitions_across_two_nodes() {
    let opts = common::fast_options("pres");
    let (a, b) = (connect(1, &opts).await, connect(2, &opts).await);
    let (pa, pb) = (a.presence(), b.presence());
    let mut events = pb.changes().await.unwrap();
    let u = user("bob");
    let (s1, s2) = (session(1), session(2));
    assert_eq!(
        pa.get(std::slice::from_ref(&u)).await.unwrap()[0].status,
        PresenceStatus::Offline
    );

    pa.set_online(&u, &s1, node(1)).await.unwrap();
    let e = next_for(&mut events, &u, EVENT_BOUND).await;
    assert_eq!((e.status, e.last_seen), (PresenceStatus::Online, None));
    assert_eq!(
        pb.get(std::slice::from_ref(&u)).await.unwrap()[0].status,
        PresenceStatus::Online
    );

    pb.set_online(&u, &s2, node(2)).await.unwrap(); // already online: no event
    pa.set_offline(&u, &s1, 1_000).await.unwrap(); // still on node 2: no event
    pa.set_offline(&u, &s1, 1_000).await.unwrap(); // unknown session: no event
    assert_eq!(
        pa.get(std::slice::from_ref(&u)).await.unwrap()[0].status,
        PresenceStatus::Online
    );
    pb.set_offline(&u, &s2, 2_000).await.unwrap();
    let e = next_for(&mut events, &u, EVENT_BOUND).await;
    assert_eq!(
        (e.status, e.last_seen),
        (PresenceStatus::Offline, Some(2_000))
    );
    let got = pa.get(std::slice::from_ref(&u)).await.unwrap();
    assert_eq!(
        (got[0].status, got[0].last_seen),
        (PresenceStatus::Offline, Some(2_000))
    );

    // Nothing else was published for u: the next event for u is this new transition.
    let mut events_a = pa.changes().await.unwrap();
    pa.set_online(&u, &s1, node(1)).await.unwrap();
    assert_eq!(
        next_for(&mut events, &u, EVENT_BOUND).await.status,
        PresenceStatus::Online
    );
    assert_eq!(
        next_for(&mut events_a, &u, EVENT_BOUND).await.status,
        PresenceStatus::Online
    );

    // A clean shutdown of node 1 takes its users offline at once, with an event.
    a.shutdown().await.unwrap();
    let e = next_for(&mut events, &u, EVENT_BOUND).await;
    assert_eq!(e.status, PresenceStatus::Offline);
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_from_a_to_b_only() {
    let opts = common::fast_options("relay");
    let (a, b) = (connect(1, &opts).await, connect(2, &opts).await);
    let mut at_a = a.relay().subscribe(node(1)).await.unwrap();
    let mut at_b = b.relay().subscribe(node(2)).await.unwrap();
    let sent = Envelope {
        from_node: node(1),
        to: EnvelopeTo::Users(vec![user("x"), user("y")]),
        except_session: Some(session(9)),
        order: Some((messenger_core::ThreadId::new("g:1").unwrap(), 42)),
        frame: r#"{"type":"message","text":"hi \"there\" ✓"}"#.into(),
    };
    a.relay().send(node(2), sent.clone()).await.unwrap();
    assert_eq!(next_env(&mut at_b).await, sent);
    // Node 1 got nothing: the first envelope it sees is the one sent to it afterwards.
    b.relay().send(node(1), env(node(2), "to-a")).await.unwrap();
    assert_eq!(next_env(&mut at_a).await.frame, "to-a");
    // Sending to a node nobody listens on is fine (best-effort).
    a.relay()
        .send(node(77), env(node(1), "void"))
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

fn sorted(mut list: Vec<NodeId>) -> Vec<NodeId> {
    list.sort_unstable();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_nodes_answer_for_a_relay_that_cannot_list_its_own() {
    let opts = common::fast_options("live");
    let (a, b, c) = (
        connect(1, &opts).await,
        connect(2, &opts).await,
        connect(3, &opts).await,
    );
    assert_eq!(
        sorted(a.live_nodes().await.unwrap()),
        [node(1), node(2), node(3)]
    );
    let unlisted: Arc<dyn Relay> = Arc::new(common::Unlisted(a.relay()));
    assert_eq!(unlisted.nodes().await.unwrap(), None);
    let relay = a.relay_with_live_nodes(unlisted);
    let listed = relay
        .nodes()
        .await
        .unwrap()
        .expect("Redis lists the live nodes");
    assert_eq!(sorted(listed), [node(1), node(2), node(3)]);
    // Sending and subscribing go to the inner relay.
    let mut at_b = relay.subscribe(node(2)).await.unwrap();
    relay.send(node(2), env(node(1), "through")).await.unwrap();
    assert_eq!(next_env(&mut at_b).await.frame, "through");

    // A relay that lists its own nodes is asked first: the Redis relay lists the
    // channels listened on (node 2 only), not the claims.
    let own = a.relay_with_live_nodes(a.relay());
    assert_eq!(own.nodes().await.unwrap(), Some(vec![node(2)]));

    // A node released cleanly leaves at once; one that dies (no heartbeat, as after
    // SIGKILL) leaves when its claim expires (node_ttl, on Redis's clock).
    c.shutdown().await.unwrap();
    assert_eq!(sorted(a.live_nodes().await.unwrap()), [node(1), node(2)]);
    b.abandon();
    let deadline = Instant::now() + opts.node_ttl + EVENT_BOUND;
    loop {
        let live = sorted(relay.nodes().await.unwrap().unwrap());
        if live == [node(1)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 still listed {:?} after its claim should have expired: {live:?}",
            opts.node_ttl + EVENT_BOUND
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_users_go_offline_within_the_bound() {
    let opts = common::fast_options("kill");
    let (a, b) = (connect(1, &opts).await, connect(2, &opts).await);
    let mut events = b.presence().changes().await.unwrap();
    let (u, v) = (user("carol"), user("dave"));
    let (su, sv, sv2) = (session(1), session(2), session(3));
    let eu = SessionEntry {
        user_id: u.clone(),
        session_id: su.clone(),
        node: node(1),
    };
    a.directory().register(&eu).await.unwrap();
    a.presence().set_online(&u, &su, node(1)).await.unwrap();
    a.presence().set_online(&v, &sv, node(1)).await.unwrap();
    b.presence().set_online(&v, &sv2, node(2)).await.unwrap(); // v also on node 2
    next_for(&mut events, &u, EVENT_BOUND).await;

    let killed_at = Instant::now();
    let killed_ms = now_ms();
    a.abandon(); // like SIGKILL: no cleanup, the heartbeat just stops
    let e = next_for(&mut events, &u, opts.offline_bound() + SCHEDULING_SLACK).await;
    let took = killed_at.elapsed();
    eprintln!(
        "offline event {took:?} after the kill (node_ttl {:?}, bound {:?})",
        opts.node_ttl,
        opts.offline_bound()
    );
    assert_eq!(e.status, PresenceStatus::Offline);
    assert!(
        took <= opts.offline_bound() + SCHEDULING_SLACK,
        "took {took:?}, bound {:?}",
        opts.offline_bound()
    );
    let last_seen = e.last_seen.expect("last_seen");
    assert!(
        last_seen <= killed_ms && last_seen + 2_000 >= killed_ms,
        "last_seen {last_seen}"
    );
    // The directory stopped returning the dead node's session; v is still online via
    // node 2 and got no event.
    assert_eq!(
        b.directory()
            .lookup(std::slice::from_ref(&u))
            .await
            .unwrap(),
        vec![vec![]]
    );
    let got = b.presence().get(&[u.clone(), v.clone()]).await.unwrap();
    assert_eq!(got[0].status, PresenceStatus::Offline);
    assert_eq!(got[1].status, PresenceStatus::Online);
    b.presence().set_offline(&v, &sv2, now_ms()).await.unwrap();
    assert_eq!(
        next_for(&mut events, &v, EVENT_BOUND).await.status,
        PresenceStatus::Offline
    );
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_hides_a_dead_nodes_sessions_before_reaping() {
    // No reaper runs here (huge reap interval): lookups alone must filter.
    let mut opts = common::fast_options("dirdead");
    opts.reap_interval = Duration::from_secs(3600);
    let (a, b) = (connect(1, &opts).await, connect(2, &opts).await);
    let u = user("erin");
    let e = SessionEntry {
        user_id: u.clone(),
        session_id: session(1),
        node: node(1),
    };
    a.directory().register(&e).await.unwrap();
    assert_eq!(
        b.directory()
            .lookup(std::slice::from_ref(&u))
            .await
            .unwrap(),
        vec![vec![e]]
    );
    let t = Instant::now();
    a.abandon();
    loop {
        if b.directory()
            .lookup(std::slice::from_ref(&u))
            .await
            .unwrap()
            == vec![vec![]]
        {
            break;
        }
        assert!(t.elapsed() < opts.node_ttl + SCHEDULING_SLACK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "dead node's session hidden {:?} after the kill",
        t.elapsed()
    );
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_node_id_is_refused_while_the_first_lives() {
    let opts = common::fast_options("claim");
    let first = connect(5, &opts).await;
    assert!(first.claim_held());
    let err = match RedisCluster::connect(&common::shared().url(), node(5), opts.clone()).await {
        Ok(_) => panic!("a second live node 5 was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.message().contains("node id 5"), "{err}");
    // The first one keeps its claim over several heartbeats.
    tokio::time::sleep(opts.node_ttl + Duration::from_millis(500)).await;
    assert!(
        RedisCluster::connect(&common::shared().url(), node(5), opts.clone())
            .await
            .is_err()
    );
    assert!(first.claim_held());

    let t = Instant::now();
    first.abandon();
    let second = loop {
        match RedisCluster::connect(&common::shared().url(), node(5), opts.clone()).await {
            Ok(c) => break c,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
        assert!(t.elapsed() < opts.node_ttl + SCHEDULING_SLACK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "node id reclaimed {:?} after the holder was killed",
        t.elapsed()
    );
    assert!(t.elapsed() >= opts.node_ttl - Duration::from_millis(600));
    // A clean shutdown releases the id at once.
    second.shutdown().await.unwrap();
    connect(5, &opts).await.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_id_cleans_up_its_dead_predecessor() {
    // A lone node (no other reaper) is killed and restarted with the same id after
    // its claim expired: the new instance removes what the old one left.
    // Every reaper runs its first pass when its node connects, then not for an hour.
    // The watcher connects (and runs that pass) while node 3 is alive, so the only one
    // who can remove frank's session afterwards is the restarted node 3 itself. (A
    // watcher that connected after node 3 died would reap it at once, possibly before
    // its subscription below was in place, and the event would be missed.)
    let mut opts = common::fast_options("lone");
    opts.reap_interval = Duration::from_secs(3600);
    let a = connect(3, &opts).await;
    let watcher = connect(4, &opts).await;
    let mut events = watcher.presence().changes().await.unwrap();
    let u = user("frank");
    let s = session(1);
    a.presence().set_online(&u, &s, node(3)).await.unwrap();
    let e = next_for(&mut events, &u, EVENT_BOUND).await;
    assert_eq!(e.status, PresenceStatus::Online);
    a.abandon();
    // The dead instance's claim expires after node_ttl; until then the id is refused.
    let t = Instant::now();
    let a2 = loop {
        match RedisCluster::connect(&common::shared().url(), node(3), opts.clone()).await {
            Ok(c) => break c,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
        assert!(
            t.elapsed() < opts.node_ttl + EVENT_BOUND,
            "node id 3 still claimed {:?} after its holder was abandoned",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let e = next_for(&mut events, &u, EVENT_BOUND).await;
    assert_eq!(e.status, PresenceStatus::Offline);
    a2.shutdown().await.unwrap();
    watcher.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_and_url_are_bad_requests() {
    let mut opts = common::fast_options("bad");
    opts.heartbeat_interval = opts.node_ttl;
    let e = RedisCluster::connect(&common::shared().url(), node(1), opts)
        .await
        .err()
        .expect("invalid options accepted");
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    let e = RedisCluster::connect("nonsense://", node(1), common::fast_options("bad"))
        .await
        .err()
        .expect("invalid url accepted");
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    // Nothing listens on this port: unavailable (transient), quickly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let e = RedisCluster::connect(
        &format!("redis://127.0.0.1:{port}/"),
        node(1),
        common::fast_options("bad"),
    )
    .await
    .err()
    .expect("connected to nothing");
    assert!(e.is_transient(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_id_to_another_instance_is_reported() {
    let opts = common::fast_options("takeover");
    let a = connect(7, &opts).await;
    // Another instance takes the id (as if `a` had stalled past node_ttl).
    let client = redis::Client::open(common::shared().url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg(format!("{}:node:7", opts.key_prefix))
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    tokio::time::timeout(opts.heartbeat_interval * 3, a.lost_claim())
        .await
        .expect("lost claim not reported");
    assert!(!a.claim_held());
    // The heartbeat does not steal it back.
    tokio::time::sleep(opts.heartbeat_interval * 2).await;
    let holder: String = redis::cmd("GET")
        .arg(format!("{}:node:7", opts.key_prefix))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(holder, "someone-else");
    a.abandon();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reapers_publish_each_offline_exactly_once() {
    // Three live nodes reap a killed one with 300 users, in batches of 50.
    let mut opts = common::fast_options("reapers");
    opts.reap_batch = 50;
    opts.reap_interval = Duration::from_millis(100);
    let a = connect(1, &opts).await;
    let others = vec![
        connect(2, &opts).await,
        connect(3, &opts).await,
        connect(4, &opts).await,
    ];
    let mut events = others[0].presence().changes().await.unwrap();
    let users: Vec<UserId> = (0..300).map(|i| user(&format!("r{i}"))).collect();
    let pa = a.presence();
    for (i, u) in users.iter().enumerate() {
        pa.set_online(u, &session(i as u32), node(1)).await.unwrap();
    }
    let mut online = 0;
    while online < users.len() {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("online events")
            .unwrap();
        if e.status == PresenceStatus::Online {
            online += 1;
        }
    }
    let t = Instant::now();
    a.abandon();
    let mut offline = std::collections::HashMap::<UserId, u32>::new();
    let deadline = opts.offline_bound() + SCHEDULING_SLACK;
    while offline.len() < users.len() {
        let e = tokio::time::timeout(deadline.saturating_sub(t.elapsed()), events.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of 300 offline events", offline.len()))
            .unwrap();
        assert_eq!(e.status, PresenceStatus::Offline);
        *offline.entry(e.user_id).or_default() += 1;
    }
    eprintln!("300 users offline {:?} after the kill", t.elapsed());
    // No duplicates arrive afterwards.
    tokio::time::sleep(Duration::from_millis(700)).await;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(10), events.next()).await {
        *offline.entry(e.user_id).or_default() += 1;
    }
    assert!(
        offline.values().all(|n| *n == 1),
        "duplicate offline events"
    );
    assert!(users.iter().all(|u| offline.contains_key(u)));
    for c in others {
        c.shutdown().await.unwrap();
    }
}
