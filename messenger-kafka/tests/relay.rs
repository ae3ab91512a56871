//! The relay conformance suite on a real Kafka broker (`scripts/kafka.sh`, started by
//! the harness unless `MESSENGER_TEST_KAFKA` names one).

use std::sync::Arc;

use messenger_core::Relay;
use messenger_kafka::{KafkaOptions, KafkaRelay};
use messenger_test_support::kafka as harness;

async fn relay() -> Arc<dyn Relay> {
    let brokers = tokio::task::spawn_blocking(|| harness::shared().brokers.clone())
        .await
        .expect("harness");
    let opts = KafkaOptions::new(brokers).with_relay_topic("test.relay");
    Arc::new(KafkaRelay::connect(&opts).await.expect("connect the relay")) as Arc<dyn Relay>
}

messenger_core::relay_tests!(|| async { relay().await });

/// Sends that keep failing (here: the broker stopped) make the relay replace its
/// producer, and the relay delivers again once the broker is back: what recovers a
/// producer that librdkafka left with a leaderless partition after a broker restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_sends_keep_failing_replaces_its_producer_and_recovers() {
    use std::time::{Duration, Instant};

    use messenger_core::NodeId;
    use messenger_test_support::kafka::Broker;

    let broker = Arc::new(
        tokio::task::spawn_blocking(|| Broker::start("relay-rebuild"))
            .await
            .expect("broker"),
    );
    let mut opts = KafkaOptions::new(broker.brokers.clone()).with_relay_topic("test.rebuild");
    opts.relay_rebuild_after = Duration::from_secs(1);
    opts.relay_send_timeout = Duration::from_millis(500);
    let relay = KafkaRelay::connect(&opts).await.expect("connect the relay");
    let (from, to) = (NodeId::new(1).expect("node"), NodeId::new(2).expect("node"));
    let mut inbox = relay.subscribe(to).await.expect("subscribe");
    delivered(&relay, &mut inbox, from, to, "before").await;
    assert_eq!(relay.rebuilds(), 0);

    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.stop_broker())
        .await
        .expect("stop");
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.rebuilds() == 0 {
        assert!(
            Instant::now() < deadline,
            "sends failed for 60 s and the producer was never replaced"
        );
        assert!(
            relay
                .send(to, envelope(from, "during".into()))
                .await
                .is_err(),
            "a send succeeded with the broker stopped"
        );
        // Pacing, not synchronisation: a failing send returns at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.start_broker())
        .await
        .expect("start");
    delivered(&relay, &mut inbox, from, to, "after").await;
}

fn envelope(from: messenger_core::NodeId, frame: String) -> messenger_core::model::Envelope {
    messenger_core::model::Envelope {
        from_node: from,
        to: messenger_core::model::EnvelopeTo::Users(vec![
            messenger_core::UserId::new("someone").expect("user")
        ]),
        except_session: None,
        order: None,
        frame,
    }
}

/// Sends tagged envelopes until one of them arrives (the subscription may start after
/// the first sends, and sends fail while the broker comes back).
async fn delivered(
    relay: &KafkaRelay,
    inbox: &mut futures::stream::BoxStream<'static, messenger_core::model::Envelope>,
    from: messenger_core::NodeId,
    to: messenger_core::NodeId,
    label: &str,
) {
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(90);
    for k in 0u64.. {
        assert!(
            Instant::now() < deadline,
            "{label}: nothing delivered within 90 s"
        );
        if relay
            .send(to, envelope(from, format!("{label}-{k}")))
            .await
            .is_err()
        {
            // Pacing, not synchronisation: a failing send returns at once.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_secs(2), inbox.next()).await {
            if got.frame.starts_with(label) {
                return;
            }
        }
    }
}
