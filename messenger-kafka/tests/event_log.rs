//! The event log on a real Kafka broker: what the engine publishes reaches the topic,
//! keyed by thread and in order; a broker outage only delays events; a full buffer
//! sheds and counts; bad configuration fails at start with a message that says what to
//! do.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_core::events::{Event, EventBody, EventId, ReceiptUpdated};
use messenger_core::model::AckStatus;
use messenger_core::{ErrorKind, EventSink, MessageId, NodeId, ThreadId, UserId};
use messenger_kafka::{ensure_topics, KafkaEventLog, KafkaOptions, TopicSpec};
use messenger_test_support::kafka::{self as harness, Broker};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        messenger_core::time::now_ms()
    )
}

fn event(id: u64, thread: &str, seq: u64) -> Event {
    Event {
        id: EventId(id),
        created_at: messenger_core::time::now_ms(),
        node: NodeId::new(1).expect("node"),
        body: EventBody::ReceiptUpdated(ReceiptUpdated {
            thread_id: ThreadId::new(thread).expect("thread"),
            user_id: UserId::new("u").expect("user"),
            status: AckStatus::Delivered,
            seq,
            message_id: MessageId(seq),
            sender_id: UserId::new("s").expect("user"),
        }),
    }
}

async fn shared_brokers() -> String {
    tokio::task::spawn_blocking(|| harness::shared().brokers.clone())
        .await
        .expect("harness")
}

/// Reads `n` events from the start of `topic`, with each record's key (a record holds
/// one event, or several of one thread separated by newlines).
async fn read(brokers: &str, topic: &str, n: usize) -> Vec<(String, Event)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    // Generous: the machine is shared, and a broker just restarted elects its leaders.
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived in 120 s", out.len()))
            .expect("consume");
        let key = String::from_utf8_lossy(m.key().expect("keyed")).into_owned();
        for line in m.payload().expect("payload").split(|b| *b == b'\n') {
            let e: Event = serde_json::from_slice(line).expect("event json");
            out.push((key.clone(), e));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_topic_keyed_by_thread_in_order() {
    let brokers = shared_brokers().await;
    let topic = unique("events");
    let opts = KafkaOptions::new(&brokers).with_events_topic(&topic);
    let log = KafkaEventLog::connect(&opts).await.expect("connect");
    let threads = ["g:a", "g:b", "g:c"];
    let per_thread = 200;
    for seq in 1..=per_thread {
        for (i, t) in threads.iter().enumerate() {
            log.publish(event(seq * 10 + i as u64, t, seq));
        }
    }
    let got = read(&brokers, &topic, threads.len() * per_thread as usize).await;
    let mut by_thread: HashMap<String, Vec<u64>> = HashMap::new();
    for (key, e) in &got {
        assert_eq!(key, e.thread_id().as_str(), "keyed by thread");
        match &e.body {
            EventBody::ReceiptUpdated(r) => by_thread.entry(key.clone()).or_default().push(r.seq),
            b => panic!("unexpected {b:?}"),
        }
    }
    for t in threads {
        let seqs = &by_thread[t];
        assert_eq!(
            seqs,
            &(1..=per_thread).collect::<Vec<_>>(),
            "{t}: every event once, in order"
        );
    }
    let s = log.stats();
    assert_eq!(s.published.load(Ordering::Relaxed), 600);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.delivered() < 600 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.delivered(), 600);
    assert_eq!(s.shed.load(Ordering::Relaxed), 0);
    assert_eq!(log.close(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_delays_events_and_a_full_buffer_sheds_the_oldest() {
    let broker = tokio::task::spawn_blocking(|| Broker::start("outage"))
        .await
        .expect("harness");
    let topic = unique("events");
    let mut opts = KafkaOptions::new(&broker.brokers).with_events_topic(&topic);
    opts.events_partitions = 2;
    let log = KafkaEventLog::connect(&opts).await.expect("connect");
    log.publish(event(1, "g:before", 1));
    let s = log.stats();
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.delivered() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.delivered(), 1);

    let b = Arc::new(broker);
    let b2 = b.clone();
    tokio::task::spawn_blocking(move || b2.stop_broker())
        .await
        .expect("stop");
    // Published while the broker is down: publish returns at once.
    let t0 = Instant::now();
    for seq in 1..=50 {
        log.publish(event(100 + seq, "g:during", seq));
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "publish blocked");
    let b2 = b.clone();
    tokio::task::spawn_blocking(move || b2.start_broker())
        .await
        .expect("start");
    let got = read(&b.brokers, &topic, 51).await;
    let during: Vec<u64> = got
        .iter()
        .filter(|(k, _)| k == "g:during")
        .map(|(_, e)| match &e.body {
            EventBody::ReceiptUpdated(r) => r.seq,
            b => panic!("unexpected {b:?}"),
        })
        .collect();
    assert_eq!(
        during,
        (1..=50).collect::<Vec<_>>(),
        "none lost, none doubled, in order"
    );
    assert_eq!(s.shed.load(Ordering::Relaxed), 0);
    assert_eq!(log.close(Duration::from_secs(10)).await, 0);

    // A tiny buffer while the broker is down: the oldest are shed and counted.
    let mut small = opts.clone();
    small.event_buffer = 10;
    // One event per record, so the producer's queue (in records) holds 10 events too.
    small.event_batch = 1;
    let log = KafkaEventLog::connect(&small).await.expect("connect");
    let b2 = b.clone();
    tokio::task::spawn_blocking(move || b2.stop_broker())
        .await
        .expect("stop");
    for seq in 1..=100 {
        log.publish(event(1000 + seq, "g:shed", seq));
    }
    let shed = log.stats().shed.load(Ordering::Relaxed);
    assert!(shed > 0, "a full buffer sheds");
    assert!(
        log.queued() <= 10,
        "the buffer stays bounded: {}",
        log.queued()
    );
    let b2 = b.clone();
    tokio::task::spawn_blocking(move || b2.start_broker())
        .await
        .expect("start");
    let kept = 100 - shed as usize;
    let got = read(&b.brokers, &topic, 51 + kept).await;
    let seqs: Vec<u64> = got
        .iter()
        .filter(|(k, _)| k == "g:shed")
        .map(|(_, e)| match &e.body {
            EventBody::ReceiptUpdated(r) => r.seq,
            b => panic!("unexpected {b:?}"),
        })
        .collect();
    assert_eq!(seqs.len(), kept, "what was not shed arrives");
    assert_eq!(*seqs.last().expect("some"), 100, "the newest are kept");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_at_start_with_what_to_do() {
    // Nobody listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut opts = KafkaOptions::new(format!("127.0.0.1:{port}"));
    opts.connect_timeout = Duration::from_secs(2);
    let e = KafkaEventLog::connect(&opts).await.expect_err("no broker");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(
        e.message().contains("cannot reach the Kafka brokers"),
        "{e}"
    );

    // A missing topic with creation turned off.
    let brokers = shared_brokers().await;
    let missing = unique("missing");
    let opts = KafkaOptions::new(&brokers)
        .with_events_topic(&missing)
        .with_create_topics(false);
    let e = KafkaEventLog::connect(&opts)
        .await
        .expect_err("missing topic");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.message().contains(&missing) && e.message().contains("create"),
        "{e}"
    );

    // A missing topic that the principal may not create: user `app` on the SASL
    // listener may describe topics but holds no CREATE permission.
    let broker = harness::shared();
    let sasl = broker.sasl_brokers.clone();
    tokio::task::spawn_blocking(move || {
        harness::shared().acl(&[
            "--add",
            "--allow-principal",
            "User:app",
            "--operation",
            "Describe",
            "--operation",
            "Read",
            "--operation",
            "Write",
            "--topic",
            "*",
        ])
    })
    .await
    .expect("acl");
    let opts = KafkaOptions::new(&sasl)
        .with_events_topic(&missing)
        .with_property("security.protocol", "SASL_PLAINTEXT")
        .with_property("sasl.mechanism", "PLAIN")
        .with_property("sasl.username", "app")
        .with_property("sasl.password", "app-secret");
    let e = KafkaEventLog::connect(&opts)
        .await
        .expect_err("not allowed");
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert!(
        e.message().contains("may not create") && e.message().contains(&missing),
        "{e}"
    );
    // Created by someone allowed to, the same client starts.
    ensure_topics(&KafkaOptions::new(&brokers), &[TopicSpec::new(&missing, 1)])
        .await
        .expect("admin creates it");
    KafkaEventLog::connect(&opts)
        .await
        .expect("starts once the topic exists");
}
