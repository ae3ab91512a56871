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
