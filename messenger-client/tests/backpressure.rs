//! No silent loss: an app that stalls and then reads gets every message exactly once, in
//! seq order, and the sender never sees DELIVERED ahead of what the app read. Against
//! the real server, with a small per-session queue so the stall reaches the socket and
//! the server's slow-consumer close (then catch-up) takes over.

mod support;

use std::time::{Duration, Instant};

use messenger_client::{BackoffConfig, Client, ConnectionState, Event, Events, ThreadId, UserId};
use messenger_storage_mem::MemBackend;
use support::{server_config, start};

const LIMIT: Duration = Duration::from_secs(90);
/// Messages alice sends while bob's app is stalled.
const N: u64 = 1500;
/// Bytes of text per message: N of them are far more than the socket buffers hold.
const TEXT: usize = 8 * 1024;

fn text(i: u64) -> String {
    let head = format!("m{i:05}-");
    format!("{head}{}", "x".repeat(TEXT - head.len()))
}

/// Bob's delivered watermark as the server holds it (alice asks).
async fn delivered_by_bob(alice: &Client, thread: &ThreadId) -> u64 {
    let threads = alice.list_threads().await.expect("list");
    let t = threads
        .iter()
        .find(|t| &t.thread_id == thread)
        .expect("thread listed");
    t.receipts
        .get(&UserId::new("bob").expect("id"))
        .map_or(0, |r| r.delivered_seq)
}

/// Polls until bob's delivered watermark is `want` (never above it).
async fn wait_delivered(alice: &Client, thread: &ThreadId, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = delivered_by_bob(alice, thread).await;
        assert!(
            d <= want,
            "DELIVERED {d} ahead of what the app read ({want})"
        );
        if d == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "DELIVERED stuck at {d}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_messages(
    events: &mut Events,
    n: u64,
    seen: &mut Vec<(u64, String)>,
    states: &mut Vec<ConnectionState>,
) {
    let target = seen.len() as u64 + n;
    while (seen.len() as u64) < target {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Some(Event::Message(m))) => seen.push((m.seq, m.text)),
            Ok(Some(Event::Connection(s))) => states.push(s),
            Ok(Some(_)) => {}
            other => panic!("after {} messages: {other:?}", seen.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_stalls_then_reads_gets_everything_once_in_order_and_acks_only_what_it_read() {
    tokio::time::timeout(LIMIT, async {
        let mem = MemBackend::new();
        let mut cfg = server_config();
        cfg.limits.outbound_queue = 64;
        cfg.websocket.write_timeout = Duration::from_millis(500);
        cfg.limits.rate_limit_per_sec = 100_000;
        cfg.limits.rate_limit_burst = 100_000;
        let server = start(&mem, "127.0.0.1:0".parse().expect("addr"), cfg).await;
        let backoff = BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            multiplier: 2.0,
            max_retries: None,
        };
        let (alice, mut alice_ev) = Client::builder()
            .url(server.url())
            .token("alice")
            .backoff(backoff.clone())
            .connect()
            .await
            .expect("alice");
        let (_bob, mut bob_ev) = Client::builder()
            .url(server.url())
            .token("bob")
            .backoff(backoff)
            .event_capacity(8)
            .connect()
            .await
            .expect("bob");
        let thread = alice
            .create_direct(&UserId::new("bob").expect("id"))
            .await
            .expect("thread")
            .thread_id;
        // Alice drains her own events beside the test (receipts are checked on the
        // server, and from her side below).
        let (rx_tx, mut receipts) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move {
            while let Some(ev) = alice_ev.recv().await {
                if let Event::Receipt(r) = ev {
                    let _ = rx_tx.send(r.seq);
                }
            }
        });

        // Phase 1: a stall the socket buffers absorb. Bob's app reads nothing while
        // alice sends; nothing is acked. Then it reads ten: DELIVERED reaches exactly
        // ten and stays there while the app does not read on.
        const SMALL: u64 = 50;
        for i in 1..=SMALL {
            let sent = alice
                .send(&thread, format!("small {i}"))
                .await
                .expect("send");
            assert_eq!(sent.seq, i);
        }
        assert_eq!(
            delivered_by_bob(&alice, &thread).await,
            0,
            "nothing read, nothing acked"
        );
        assert!(receipts.try_recv().is_err(), "alice saw no DELIVERED");
        let mut seen = Vec::new();
        let mut states = Vec::new();
        read_messages(&mut bob_ev, 10, &mut seen, &mut states).await;
        wait_delivered(&alice, &thread, 10).await;
        // A short window to show nothing more is acked while the app does not read.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(delivered_by_bob(&alice, &thread).await, 10);
        read_messages(&mut bob_ev, SMALL - 10, &mut seen, &mut states).await;
        wait_delivered(&alice, &thread, SMALL).await;

        // Phase 2: a stall far larger than the socket buffers. The server drops bob
        // as a slow consumer; when the app reads again the client reconnects and
        // catches up. Every message exactly once, in seq order; DELIVERED never ahead.
        for i in SMALL + 1..=SMALL + N {
            let sent = alice.send(&thread, text(i)).await.expect("send");
            assert_eq!(sent.seq, i);
        }
        assert_eq!(delivered_by_bob(&alice, &thread).await, SMALL);
        let mut read = SMALL;
        while read < SMALL + N {
            let chunk = 100.min(SMALL + N - read);
            read_messages(&mut bob_ev, chunk, &mut seen, &mut states).await;
            read += chunk;
            let d = delivered_by_bob(&alice, &thread).await;
            assert!(
                d <= read,
                "DELIVERED {d} ahead of what the app read ({read})"
            );
        }
        let want: Vec<(u64, String)> = (1..=SMALL)
            .map(|i| (i, format!("small {i}")))
            .chain((SMALL + 1..=SMALL + N).map(|i| (i, text(i))))
            .collect();
        assert!(seen == want, "messages out of order, doubled or lost");
        wait_delivered(&alice, &thread, SMALL + N).await;
        let mut from_alice_side = Vec::new();
        while let Ok(seq) = receipts.try_recv() {
            from_alice_side.push(seq);
        }
        assert!(!from_alice_side.is_empty(), "alice saw bob's DELIVERED");
        assert!(
            from_alice_side.windows(2).all(|w| w[0] <= w[1]),
            "{from_alice_side:?}"
        );
        assert_eq!(from_alice_side.last(), Some(&(SMALL + N)));
        // The stall reached the socket: the server dropped bob as a slow consumer (its
        // close frame could not get through the full socket, so the client saw the
        // connection end) and the client caught up after reconnecting.
        let metrics = support::http_get(server.addr, "/metrics").await;
        let closes = metrics
            .lines()
            .find_map(|l| l.strip_prefix("messenger_slow_consumer_closes_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no slow-consumer counter in /metrics:\n{metrics}"));
        assert!(closes >= 1.0, "the server never dropped the stalled client");
        let reconnected = states.windows(2).any(|w| {
            matches!(
                (&w[0], &w[1]),
                (
                    ConnectionState::WaitingToRetry { .. },
                    ConnectionState::Connecting { .. }
                )
            )
        });
        assert!(reconnected, "{states:?}");
        // And nothing more arrives.
        if let Ok(Some(Event::Message(m))) =
            tokio::time::timeout(Duration::from_millis(300), bob_ev.recv()).await
        {
            panic!("extra message {}", m.seq);
        }
        drain.abort();
        server.stop().await;
    })
    .await
    .expect("bounded");
}
