//! Redis killed and restarted (empty, same port) under two live nodes: calls fail with
//! a transient error while it is down and work again afterwards on the same adapters;
//! subscriptions resume; each node writes its sessions back.

mod common;

use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use messenger_core::model::{Envelope, EnvelopeTo, PresenceInfo, PresenceStatus, SessionEntry};
use messenger_core::time::now_ms;
use messenger_core::{NodeId, SessionId, UserId};
use messenger_redis::RedisCluster;

fn node(n: u16) -> NodeId {
    NodeId::new(n).unwrap()
}

fn env(tag: &str) -> Envelope {
    Envelope {
        from_node: node(1),
        to: EnvelopeTo::Users(vec![UserId::new("someone").unwrap()]),
        except_session: None,
        order: None,
        frame: tag.to_owned(),
    }
}

/// Retries `f` until it returns `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn poll_event(
    s: &mut BoxStream<'static, PresenceInfo>,
    u: &UserId,
    wait: Duration,
) -> Option<PresenceInfo> {
    tokio::time::timeout(wait, async {
        loop {
            match s.next().await {
                Some(e) if &e.user_id == u => return Some(e),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_traffic() {
    let server = common::RedisServer::start();
    let opts = common::fast_options("restart");
    let a = RedisCluster::connect(&server.url(), node(1), opts.clone())
        .await
        .unwrap();
    let b = RedisCluster::connect(&server.url(), node(2), opts.clone())
        .await
        .unwrap();
    let (dir_a, pres_a, relay_a) = (a.directory(), a.presence(), a.relay());
    let (dir_b, pres_b) = (b.directory(), b.presence());
    let mut events = pres_b.changes().await.unwrap();
    let mut at_b = b.relay().subscribe(node(2)).await.unwrap();

    let u = UserId::new(common::unique_prefix("gina")).unwrap();
    let s = SessionId::new("s-1").unwrap();
    let entry = SessionEntry {
        user_id: u.clone(),
        session_id: s.clone(),
        node: node(1),
    };
    dir_a.register(&entry).await.unwrap();
    pres_a.set_online(&u, &s, node(1)).await.unwrap();
    assert_eq!(
        poll_event(&mut events, &u, Duration::from_secs(5))
            .await
            .map(|e| e.status),
        Some(PresenceStatus::Online)
    );
    relay_a.send(node(2), env("before")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), at_b.next()).await;
    assert_eq!(
        got.ok().flatten().map(|e| e.frame).as_deref(),
        Some("before")
    );

    server.kill();
    let down = Instant::now();
    // Every kind of call fails with a transient error, promptly.
    for _ in 0..3 {
        let t = Instant::now();
        let e = pres_a
            .get(std::slice::from_ref(&u))
            .await
            .expect_err("get while redis is down");
        assert!(e.is_transient(), "{e}");
        let e = relay_a
            .send(node(2), env("lost"))
            .await
            .expect_err("send while down");
        assert!(e.is_transient(), "{e}");
        let e = dir_b
            .lookup(std::slice::from_ref(&u))
            .await
            .expect_err("lookup while down");
        assert!(e.is_transient(), "{e}");
        let e = pres_b
            .set_online(&u, &SessionId::new("s-2").unwrap(), node(2))
            .await
            .expect_err("set_online while down");
        assert!(e.is_transient(), "{e}");
        eprintln!("4 calls failed in {:?} while redis was down", t.elapsed());
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "failing took {:?}",
            t.elapsed()
        );
    }
    let e = pres_b.changes().await.err().expect("subscribe while down");
    assert!(e.is_transient(), "{e}");
    tokio::time::sleep(Duration::from_millis(600)).await;

    server.restart();
    eprintln!("redis was down for {:?}", down.elapsed());
    let up = Instant::now();
    // The same adapters work again.
    eventually("get after restart", Duration::from_secs(10), || async {
        pres_a.get(std::slice::from_ref(&u)).await.ok()
    })
    .await;
    eprintln!("calls succeed again {:?} after the restart", up.elapsed());
    // Node 1 wrote its session back (the restarted Redis is empty).
    eventually(
        "directory re-registered",
        Duration::from_secs(10),
        || async {
            let found = dir_b.lookup(std::slice::from_ref(&u)).await.ok()?;
            (found == vec![vec![entry.clone()]]).then_some(())
        },
    )
    .await;
    eventually(
        "presence re-registered",
        Duration::from_secs(10),
        || async {
            let p = pres_b.get(std::slice::from_ref(&u)).await.ok()?;
            (p[0].status == PresenceStatus::Online).then_some(())
        },
    )
    .await;
    eprintln!(
        "sessions re-registered {:?} after the restart",
        up.elapsed()
    );
    // The relay subscription resumed: a new envelope gets through.
    let t = Instant::now();
    'relay: for n in 0.. {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "relay did not resume"
        );
        let tag = format!("after-{n}");
        if relay_a.send(node(2), env(&tag)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), at_b.next()).await
        {
            if e.frame == tag {
                break 'relay;
            }
        }
    }
    // The presence subscription resumed: a new transition is seen.
    let t = Instant::now();
    for n in 0.. {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "presence events did not resume"
        );
        let v = UserId::new(format!("{}-{n}", common::unique_prefix("hal"))).unwrap();
        if pres_a
            .set_online(&v, &SessionId::new("s-9").unwrap(), node(1))
            .await
            .is_ok()
            && poll_event(&mut events, &v, Duration::from_millis(300))
                .await
                .is_some()
        {
            break;
        }
    }
    eprintln!("subscriptions resumed {:?} after the restart", up.elapsed());
    // And a transition of the re-registered user still works end to end.
    pres_a.set_offline(&u, &s, now_ms()).await.unwrap();
    assert_eq!(
        poll_event(&mut events, &u, Duration::from_secs(5))
            .await
            .map(|e| e.status),
        Some(PresenceStatus::Offline)
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Redis stalls (`CLIENT PAUSE ... WRITE`) while a user leaves: set_offline times out
/// with a transient error, the heartbeat retries it afterwards, and the offline event
/// arrives exactly once although the stalled command also ran when the pause ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_offline_is_retried_after_a_stall() {
    let server = common::RedisServer::start();
    let opts = common::fast_options("stall");
    let a = RedisCluster::connect(&server.url(), node(1), opts.clone())
        .await
        .unwrap();
    let b = RedisCluster::connect(&server.url(), node(2), opts.clone())
        .await
        .unwrap();
    let mut events = b.presence().changes().await.unwrap();
    let u = UserId::new(common::unique_prefix("ida")).unwrap();
    let s = SessionId::new("s-1").unwrap();
    a.presence().set_online(&u, &s, node(1)).await.unwrap();
    assert_eq!(
        poll_event(&mut events, &u, Duration::from_secs(5))
            .await
            .map(|e| e.status),
        Some(PresenceStatus::Online)
    );

    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let t = Instant::now();
    let e = a
        .presence()
        .set_offline(&u, &s, now_ms())
        .await
        .expect_err("set_offline during a stall");
    assert!(e.is_transient(), "{e}");
    eprintln!("set_offline failed after {:?}: {e}", t.elapsed());

    let off = poll_event(&mut events, &u, Duration::from_secs(6))
        .await
        .expect("offline event after the stall");
    assert_eq!(off.status, PresenceStatus::Offline);
    eprintln!("offline event {:?} after the failed call", t.elapsed());
    // Exactly once: after two more heartbeats, the next event for u is a new online.
    tokio::time::sleep(opts.heartbeat_interval * 2).await;
    a.presence().set_online(&u, &s, node(1)).await.unwrap();
    assert_eq!(
        poll_event(&mut events, &u, Duration::from_secs(5))
            .await
            .map(|e| e.status),
        Some(PresenceStatus::Online)
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_while_redis_stalls() {
    // A node whose sessions all ended while Redis did not answer holds hundreds of
    // removals to retry. Its shutdown must not wait for them one timeout at a time
    // (it removes the node's sessions in one go, or leaves them to the reapers).
    let server = common::RedisServer::start();
    let opts = common::fast_options("stallstop");
    let a = RedisCluster::connect(&server.url(), node(1), opts.clone())
        .await
        .unwrap();
    let (dir, pres) = (a.directory(), a.presence());
    let prefix = common::unique_prefix("many");
    let entries: Vec<SessionEntry> = (0..200)
        .map(|i| SessionEntry {
            user_id: UserId::new(format!("{prefix}-{i}")).unwrap(),
            session_id: SessionId::new(format!("s-{i}")).unwrap(),
            node: node(1),
        })
        .collect();
    for e in &entries {
        dir.register(e).await.unwrap();
        pres.set_online(&e.user_id, &e.session_id, node(1))
            .await
            .unwrap();
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(120_000)
        .arg("WRITE")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    // Every session ends during the stall: 400 removals fail and are queued.
    let fails = futures::future::join_all(entries.iter().map(|e| {
        let (dir, pres) = (dir.clone(), pres.clone());
        async move {
            let a = dir.unregister(e).await;
            let b = pres.set_offline(&e.user_id, &e.session_id, now_ms()).await;
            a.is_err() as u32 + b.is_err() as u32
        }
    }))
    .await
    .into_iter()
    .sum::<u32>();
    assert_eq!(fails, 400, "every removal fails while writes are paused");
    // Let a heartbeat start retrying them (one op_timeout each before this fix).
    tokio::time::sleep(opts.heartbeat_interval * 2).await;
    let t = Instant::now();
    let e = a.shutdown().await.expect_err("no clean leave while paused");
    assert!(e.is_transient(), "{e}");
    eprintln!("shutdown returned after {:?}: {e}", t.elapsed());
    // Before: 400 removals x op_timeout (500 ms) = 200 s. Now: about two op_timeouts.
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        t.elapsed()
    );
    redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
}
