//! End-to-end tests against the real server, in process on 127.0.0.1.

mod support;

use std::time::Duration;

use messenger_client::{
    BackoffConfig, Client, ClientError, ConnectionState, ErrorCode, Event, Events, Message,
    StopReason, ThreadId, UserId,
};
use messenger_core::model::NewMessage;
use messenger_core::{MessageId, MessageStore};
use messenger_server::config::JwtConfig;
use messenger_storage_mem::MemBackend;
use support::{server_config, start};

/// Every test is bounded.
const LIMIT: Duration = Duration::from_secs(20);

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        max_retries: None,
    }
}

async fn client(url: &str, user: &str) -> (Client, Events) {
    Client::builder()
        .url(url)
        .token(user)
        .backoff(fast_backoff())
        .connect()
        .await
        .expect("connect")
}

fn uid(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

/// Collects the messages of `thread` until `n` arrived (other events are skipped).
async fn messages(events: &mut Events, thread: &ThreadId, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Event::Message(m))) if &m.thread_id == thread => out.push(m),
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended after {} messages", out.len()),
            Err(_) => panic!("timed out after {} of {n} messages: {out:?}", out.len()),
        }
    }
    out
}

/// Asserts that no further message of `thread` arrives within `wait`.
async fn no_more_messages(events: &mut Events, thread: &ThreadId, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let Event::Message(m) = ev {
            assert_ne!(&m.thread_id, thread, "unexpected extra message {m:?}");
        }
    }
}

async fn wait_state(events: &mut Events, want: impl Fn(&ConnectionState) -> bool) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Event::Connection(s))) if want(&s) => return,
            Ok(Some(_)) => {}
            other => panic!("state never reached: {other:?}"),
        }
    }
}

fn texts(ms: &[Message]) -> Vec<String> {
    ms.iter().map(|m| m.text.clone()).collect()
}

fn seqs(ms: &[Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_conversation_loses_nothing_and_doubles_nothing() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let addr = server.addr;
        let url = server.url();
        let (alice, mut alice_ev) = client(&url, "alice").await;
        let (bob, mut bob_ev) = client(&url, "bob").await;
        let thread = alice
            .create_direct(&uid("bob"))
            .await
            .expect("thread")
            .thread_id;

        for i in 1..=4 {
            let who = if i % 2 == 0 { &bob } else { &alice };
            who.send(&thread, format!("m{i}")).await.expect("send");
        }
        assert_eq!(
            seqs(&messages(&mut bob_ev, &thread, 4).await),
            vec![1, 2, 3, 4]
        );

        server.stop().await;
        wait_state(&mut bob_ev, |s| {
            matches!(s, ConnectionState::WaitingToRetry { .. })
        })
        .await;
        // While the server is down, alice keeps typing: the sends wait in the outbox.
        let pending: Vec<_> = (5..=7)
            .map(|i| {
                let alice = alice.clone();
                let thread = thread.clone();
                tokio::spawn(async move { alice.send(&thread, format!("m{i}")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            pending.iter().all(|p| !p.is_finished()),
            "no server: nothing confirmed"
        );

        let server = start(&backend, addr, server_config()).await;
        let mut sent = Vec::new();
        for p in pending {
            sent.push(p.await.expect("join").expect("send after restart").seq);
        }
        sent.sort_unstable();
        assert_eq!(sent, vec![5, 6, 7]);
        bob.send(&thread, "m8").await.expect("send");

        let got = messages(&mut bob_ev, &thread, 4).await;
        assert_eq!(seqs(&got), vec![5, 6, 7, 8]);
        assert_eq!(texts(&got)[3], "m8");
        let mine = messages(&mut alice_ev, &thread, 8).await;
        assert_eq!(seqs(&mine), (1..=8).collect::<Vec<_>>());
        let mut ids: Vec<MessageId> = mine.iter().map(|m| m.message_id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 8);
        no_more_messages(&mut bob_ev, &thread, Duration::from_millis(300)).await;
        no_more_messages(&mut alice_ev, &thread, Duration::from_millis(100)).await;
        // The store holds each message once.
        let all = alice.history_after(&thread, 0).await.expect("history");
        assert_eq!(seqs(&all), (1..=8).collect::<Vec<_>>());
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_flushes_after_reconnect_in_order_and_idempotently() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let addr = server.addr;
        let (alice, mut alice_ev) = client(&server.url(), "alice").await;
        let thread = alice
            .create_group(&[uid("bob")], "team")
            .await
            .expect("group")
            .thread_id;
        let first = alice
            .send_with_temp_id(&thread, "t-1", "one")
            .await
            .expect("send");
        // The same temp id again: the server's idempotent send, same id and seq.
        let again = alice
            .send_with_temp_id(&thread, "t-1", "one")
            .await
            .expect("resend");
        assert_eq!((first.message_id, first.seq), (again.message_id, again.seq));
        assert_eq!(seqs(&messages(&mut alice_ev, &thread, 1).await), vec![1]);

        server.stop().await;
        wait_state(&mut alice_ev, |s| {
            matches!(s, ConnectionState::WaitingToRetry { .. })
        })
        .await;
        assert!(matches!(
            alice.list_threads().await,
            Err(ClientError::Disconnected)
        ));
        let queued: Vec<_> = ["two", "three", "four"]
            .into_iter()
            .map(|t| {
                let alice = alice.clone();
                let thread = thread.clone();
                let h = tokio::spawn(async move { alice.send(&thread, t).await });
                (t, h)
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let server = start(&backend, addr, server_config()).await;
        for (_, h) in queued {
            let sent = h.await.expect("join").expect("flushed");
            assert!(sent.seq >= 2 && sent.seq <= 4);
        }
        let mine = messages(&mut alice_ev, &thread, 3).await;
        assert_eq!(seqs(&mine), vec![2, 3, 4]);
        no_more_messages(&mut alice_ev, &thread, Duration::from_millis(200)).await;
        let all = alice.history_after(&thread, 0).await.expect("history");
        assert_eq!(all.len(), 4, "nothing doubled: {:?}", texts(&all));
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_gap_is_filled_from_history_in_order() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let (alice, _alice_ev) = client(&server.url(), "alice").await;
        let (_bob, mut bob_ev) = client(&server.url(), "bob").await;
        let thread = alice
            .create_direct(&uid("bob"))
            .await
            .expect("thread")
            .thread_id;
        alice.send(&thread, "first").await.expect("send");
        assert_eq!(seqs(&messages(&mut bob_ev, &thread, 1).await), vec![1]);

        // Two messages reach the store without any fan-out: bob never sees them live.
        for (i, text) in [(2u64, "hidden-2"), (3, "hidden-3")] {
            backend
                .messages()
                .append(NewMessage {
                    thread_id: thread.clone(),
                    message_id: MessageId(9_000_000 + i),
                    sender_id: uid("alice"),
                    temp_id: format!("hidden-{i}"),
                    text: text.into(),
                    sent_at: 1,
                })
                .await
                .expect("append");
        }
        let sent = alice.send(&thread, "fourth").await.expect("send");
        assert_eq!(sent.seq, 4);
        let got = messages(&mut bob_ev, &thread, 3).await;
        assert_eq!(seqs(&got), vec![2, 3, 4]);
        assert_eq!(texts(&got), vec!["hidden-2", "hidden-3", "fourth"]);
        no_more_messages(&mut bob_ev, &thread, Duration::from_millis(200)).await;
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnection_backoff_is_bounded_and_gives_up() {
    tokio::time::timeout(LIMIT, async {
        // A port with nothing listening.
        let addr = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            l.local_addr().expect("addr")
        };
        let backoff = BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(80),
            multiplier: 2.0,
            max_retries: Some(4),
        };
        let ceilings: Duration = (1..=4).map(|n| backoff.ceiling(n)).sum();
        let t0 = std::time::Instant::now();
        let err = Client::builder()
            .url(format!("ws://{addr}/ws"))
            .token("alice")
            .backoff(backoff)
            .connect()
            .await
            .expect_err("nothing listens");
        let took = t0.elapsed();
        match err {
            ClientError::RetriesExhausted { attempts, last } => {
                assert_eq!(attempts, 5);
                assert!(matches!(*last, ClientError::Connect(_)), "{last:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Four jittered waits, each at most its ceiling, plus five refused connects.
        assert!(took <= ceilings + Duration::from_secs(1), "{took:?}");
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_the_caller_typed() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let url = server.url();

        // A bad URL and a refused token fail at once, without retries.
        let e = Client::connect("http://example.invalid/ws", "alice").await;
        assert!(matches!(e, Err(ClientError::InvalidUrl(_))), "{e:?}");
        let e = Client::connect(url.clone(), "not a user id").await;
        assert_eq!(e.expect_err("401"), ClientError::Auth(401));

        let (alice, _a) = client(&url, "alice").await;
        let (_carol, _c) = client(&url, "carol").await;
        let (bob, _b) = client(&url, "bob").await;
        let theirs = bob
            .create_direct(&uid("carol"))
            .await
            .expect("thread")
            .thread_id;

        let code = |r: Result<_, ClientError>| r.err().and_then(|e| e.code().cloned());
        let not_mine = alice.send(&theirs, "hi").await.map(|_| ());
        assert!(
            matches!(
                code(not_mine.clone()),
                Some(ErrorCode::Forbidden | ErrorCode::NotFound)
            ),
            "{not_mine:?}"
        );
        let history = alice
            .fetch_history(&theirs, messenger_client::Cursor::Latest, None)
            .await
            .map(|_| ());
        assert!(
            matches!(
                code(history.clone()),
                Some(ErrorCode::Forbidden | ErrorCode::NotFound)
            ),
            "{history:?}"
        );
        // A frame with no reply on success still reports its failure.
        let read = alice.mark_read(&theirs, MessageId(1)).await;
        assert!(
            matches!(
                code(read.clone()),
                Some(ErrorCode::Forbidden | ErrorCode::NotFound)
            ),
            "{read:?}"
        );
        assert_eq!(
            code(alice.subscribe_presence(&[uid("carol")]).await),
            Some(ErrorCode::Forbidden)
        );
        let mine = alice
            .create_direct(&uid("bob"))
            .await
            .expect("thread")
            .thread_id;
        let big = "x".repeat(17 * 1024);
        assert_eq!(
            code(alice.send(&mine, big).await.map(|_| ())),
            Some(ErrorCode::TooLarge)
        );
        // Successes on the same paths.
        let first = alice.send(&mine, "hi bob").await.expect("send");
        bob.mark_read(&mine, first.message_id)
            .await
            .expect("read ack");
        alice.typing(&mine, true).await.expect("typing");
        alice
            .subscribe_presence(&[uid("bob")])
            .await
            .expect("presence");
        alice.ping().await.expect("ping");

        alice.close().await;
        assert_eq!(
            alice.send(&mine, "after close").await,
            Err(ClientError::Closed)
        );
        assert_eq!(
            alice.state(),
            ConnectionState::Stopped {
                reason: StopReason::Closed
            }
        );
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_refusal_is_not_retried() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let mut cfg = server_config();
        cfg.auth.jwt = Some(JwtConfig::hs256("secret"));
        let server = start(&backend, "127.0.0.1:0".parse().expect("addr"), cfg).await;
        let t0 = std::time::Instant::now();
        let e = Client::connect(server.url(), "alice").await;
        assert_eq!(e.expect_err("refused"), ClientError::Auth(401));
        assert!(t0.elapsed() < Duration::from_secs(2));
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_presence_typing_and_threads_arrive_as_events() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let (alice, mut alice_ev) = client(&server.url(), "alice").await;
        let (bob, mut bob_ev) = client(&server.url(), "bob").await;
        let group = alice
            .create_group(&[uid("bob")], "g")
            .await
            .expect("group")
            .thread_id;
        alice.subscribe_presence(&[uid("bob")]).await.expect("sub");
        let sent = alice.send(&group, "hello").await.expect("send");
        let got = messages(&mut bob_ev, &group, 1).await;

        // Bob's client acks DELIVERED by itself; then bob reads and types.
        let mut delivered = false;
        let (mut read, mut typing, mut online, mut thread) = (false, false, false, false);
        let mut read_sent = false;
        while !(delivered && read && typing && online && thread) {
            if delivered && !read_sent {
                read_sent = true;
                bob.mark_read(&group, got[0].message_id)
                    .await
                    .expect("read");
                bob.typing(&group, true).await.expect("typing");
            }
            let ev = tokio::time::timeout(Duration::from_secs(5), alice_ev.recv())
                .await
                .expect("event in time")
                .expect("stream open");
            match ev {
                Event::Receipt(r) if r.message_id == sent.message_id => match r.status {
                    messenger_client::AckStatus::Delivered => delivered = true,
                    messenger_client::AckStatus::Read => read = true,
                },
                Event::Typing(t) if t.user_id == uid("bob") => typing = true,
                Event::Presence(p) if p.user_id == uid("bob") => online = true,
                Event::Thread(t) if t.thread_id == group => thread = true,
                _ => {}
            }
        }
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_talking_through_a_restart_see_every_message_once_in_order() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let addr = server.addr;
        let url = server.url();
        let (alice, mut alice_ev) = client(&url, "alice").await;
        let (bob, mut bob_ev) = client(&url, "bob").await;
        let thread = alice
            .create_group(&[uid("bob")], "through the restart")
            .await
            .expect("group")
            .thread_id;
        const EACH: usize = 15;
        let talk = |c: Client, who: &'static str| {
            let thread = thread.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    c.send(&thread, format!("{who}-{i}")).await.expect("send");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let a = talk(alice.clone(), "alice");
        let b = talk(bob.clone(), "bob");
        tokio::time::sleep(Duration::from_millis(60)).await;
        server.stop().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let server = start(&backend, addr, server_config()).await;
        a.await.expect("alice done");
        b.await.expect("bob done");

        let want: Vec<u64> = (1..=2 * EACH as u64).collect();
        for events in [&mut alice_ev, &mut bob_ev] {
            let got = messages(events, &thread, 2 * EACH).await;
            assert_eq!(seqs(&got), want);
            let mut t = texts(&got);
            t.sort();
            let mut expected: Vec<String> = (0..EACH)
                .flat_map(|i| [format!("alice-{i}"), format!("bob-{i}")])
                .collect();
            expected.sort();
            assert_eq!(t, expected);
            no_more_messages(events, &thread, Duration::from_millis(200)).await;
        }
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_delays_respect_the_jitter_ceiling() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let addr = server.addr;
        let backoff = BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            multiplier: 2.0,
            max_retries: None,
        };
        let (alice, mut events) = Client::builder()
            .url(server.url())
            .token("alice")
            .backoff(backoff.clone())
            .connect()
            .await
            .expect("connect");
        server.stop().await;
        let mut seen = Vec::new();
        while seen.len() < 6 {
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Some(Event::Connection(ConnectionState::WaitingToRetry {
                    attempt,
                    delay,
                    ..
                }))) => {
                    assert!(
                        delay <= backoff.ceiling(attempt),
                        "attempt {attempt}: {delay:?} > {:?}",
                        backoff.ceiling(attempt)
                    );
                    seen.push(attempt);
                }
                Ok(Some(_)) => {}
                other => panic!("no reconnect attempts: {other:?}"),
            }
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5], "failures count up");
        let server = start(&backend, addr, server_config()).await;
        wait_state(&mut events, |s| {
            matches!(s, ConnectionState::Connected { .. })
        })
        .await;
        alice.ping().await.expect("back online");
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_on_reconnect_stops_the_client_with_a_typed_error() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let addr = server.addr;
        let (alice, mut events) = client(&server.url(), "alice").await;
        let thread = alice
            .create_direct(&uid("bob"))
            .await
            .expect("thread")
            .thread_id;
        server.stop().await;
        wait_state(&mut events, |s| {
            matches!(s, ConnectionState::WaitingToRetry { .. })
        })
        .await;
        let pending = {
            let alice = alice.clone();
            tokio::spawn(async move { alice.send(&thread, "never stored").await })
        };
        // The server comes back requiring JWTs: the dev token is refused with 401.
        let mut cfg = server_config();
        cfg.auth.jwt = Some(JwtConfig::hs256("secret"));
        let server = start(&backend, addr, cfg).await;
        wait_state(&mut events, |s| {
            matches!(
                s,
                ConnectionState::Stopped {
                    reason: StopReason::Failed(ClientError::Auth(401))
                }
            )
        })
        .await;
        assert_eq!(
            pending.await.expect("join"),
            Err(ClientError::Auth(401)),
            "the queued send fails with the reason"
        );
        assert_eq!(alice.list_threads().await, Err(ClientError::Closed));
        assert!(events.recv().await.is_none(), "the stream ends");
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_the_server_already_stored_reconciles_to_the_original_id() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let (alice, mut alice_ev) = client(&server.url(), "alice").await;
        let (_bob, mut bob_ev) = client(&server.url(), "bob").await;
        let thread = alice
            .create_direct(&uid("bob"))
            .await
            .expect("thread")
            .thread_id;
        // As if alice's first attempt was stored but its `message_sent` was lost.
        let original = MessageId(7_000_001);
        backend
            .messages()
            .append(NewMessage {
                thread_id: thread.clone(),
                message_id: original,
                sender_id: uid("alice"),
                temp_id: "lost-reply".into(),
                text: "hello".into(),
                sent_at: 1,
            })
            .await
            .expect("append");
        let sent = alice
            .send_with_temp_id(&thread, "lost-reply", "hello")
            .await
            .expect("resend");
        assert_eq!((sent.message_id, sent.seq), (original, 1));
        alice.send(&thread, "next").await.expect("send");
        for (who, events) in [("alice", &mut alice_ev), ("bob", &mut bob_ev)] {
            eprintln!("checking {who}");
            let got = messages(events, &thread, 2).await;
            assert_eq!(seqs(&got), vec![1, 2], "{who}");
            assert_eq!(got[0].message_id, original);
            no_more_messages(events, &thread, Duration::from_millis(200)).await;
        }
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_like_an_app_in_the_background() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let (alice, mut alice_ev) = client(&server.url(), "alice").await;
        let (bob, mut bob_ev) = client(&server.url(), "bob").await;
        let thread = alice
            .create_direct(&uid("bob"))
            .await
            .expect("thread")
            .thread_id;
        alice.send(&thread, "before").await.expect("send");
        assert_eq!(texts(&messages(&mut bob_ev, &thread, 1).await), ["before"]);

        bob.suspend().await.expect("suspend");
        wait_state(&mut bob_ev, |s| matches!(s, ConnectionState::Suspended)).await;
        assert_eq!(bob.list_threads().await, Err(ClientError::Disconnected));
        // While bob is in the background: alice writes, bob's share sheet queues one.
        for i in 1..=3 {
            alice
                .send(&thread, format!("while away {i}"))
                .await
                .expect("send");
        }
        let temp = bob
            .enqueue(&thread, "from the share sheet")
            .await
            .expect("queued");
        assert_eq!(bob.outbox().await.expect("outbox")[0].temp_id, temp);
        assert_eq!(bob.state(), ConnectionState::Suspended, "nothing attempted");

        bob.resume().await.expect("resume");
        let got = messages(&mut bob_ev, &thread, 4).await;
        assert_eq!(
            texts(&got),
            [
                "while away 1",
                "while away 2",
                "while away 3",
                "from the share sheet"
            ]
        );
        assert_eq!(seqs(&got), vec![2, 3, 4, 5]);
        assert!(bob.outbox().await.expect("outbox").is_empty());
        let mine = messages(&mut alice_ev, &thread, 5).await;
        assert_eq!(mine[4].text, "from the share sheet");

        // A network switch: the connection is replaced, nothing lost or doubled.
        bob.reconnect_now().await.expect("switch");
        alice.send(&thread, "after the switch").await.expect("send");
        assert_eq!(
            texts(&messages(&mut bob_ev, &thread, 1).await),
            ["after the switch"]
        );
        no_more_messages(&mut bob_ev, &thread, Duration::from_millis(200)).await;
        server.stop().await;
    })
    .await
    .expect("test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_targets_and_mutes_round_trip_and_reach_other_sessions() {
    tokio::time::timeout(LIMIT, async {
        let backend = MemBackend::new();
        let server = start(
            &backend,
            "127.0.0.1:0".parse().expect("addr"),
            server_config(),
        )
        .await;
        let (alice, _ev) = client(&server.url(), "alice").await;
        let (alice2, mut alice2_ev) = client(&server.url(), "alice").await;
        let token = "ab".repeat(32);
        let t = alice
            .register_apns(&token, "com.example.chat", true, Some("de-CH"))
            .await
            .expect("register");
        assert_eq!(t.platform, messenger_client::PushPlatform::Apns);
        assert!(t.sandbox);
        let again = alice
            .register_apns(&token, "com.example.chat", true, None)
            .await
            .expect("refresh");
        assert_eq!(again.target_id, t.target_id, "one device, one target");
        let listed = alice2.list_push_targets().await.expect("list");
        assert_eq!(listed.len(), 1);

        // Bad input is the server's bad_request, not a crash.
        let bad = alice.register_fcm("no spaces allowed", None, None).await;
        assert!(
            matches!(&bad, Err(e) if e.code() == Some(&ErrorCode::BadRequest)),
            "{bad:?}"
        );

        let thread = alice
            .create_direct(&uid("bob"))
            .await
            .expect("thread")
            .thread_id;
        let m = alice.mute_thread(&thread, None).await.expect("mute");
        assert!(m.muted && m.until.is_none());
        // The user's other session hears of it.
        loop {
            match alice2_ev.recv().await.expect("event") {
                Event::ThreadMute(m) if m.thread_id == thread => {
                    assert!(m.muted);
                    break;
                }
                _ => {}
            }
        }
        let summary = alice.list_threads().await.expect("threads");
        assert!(summary.iter().any(|s| s.thread_id == thread && s.muted));
        let m = alice.unmute_thread(&thread).await.expect("unmute");
        assert!(!m.muted);

        assert!(alice
            .unregister_push_target(&t.target_id)
            .await
            .expect("unregister"));
        assert!(!alice
            .unregister_push_target(&t.target_id)
            .await
            .expect("unregister twice"));
        assert!(alice.list_push_targets().await.expect("list").is_empty());
    })
    .await
    .expect("test timed out");
}
