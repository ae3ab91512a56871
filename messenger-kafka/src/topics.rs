//! Start-up checks: the brokers answer and the topics exist (created if allowed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_core::{Error, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

use crate::config::KafkaOptions;

/// A topic a component needs, and how to create it when it is missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// The name.
    pub name: String,
    /// Partitions when created.
    pub partitions: i32,
    /// Topic configs when created (e.g. `retention.ms`).
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions and the broker's default configs.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            configs: Vec::new(),
        }
    }

    /// Adds a topic config used when the topic is created.
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push((key.into(), value.into()));
        self
    }
}

fn unreachable(opts: &KafkaOptions, e: &KafkaError) -> Error {
    let hint = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Authentication)
        | Some(RDKafkaErrorCode::SaslAuthenticationFailed) => {
            "the brokers refused the credentials: check the sasl.* client properties"
        }
        _ => "check the broker list (--kafka) and that the brokers are up and reachable",
    };
    Error::unavailable(format!(
        "cannot reach the Kafka brokers at {} within {:?} ({e}): {hint}",
        opts.brokers, opts.connect_timeout
    ))
}

/// Metadata of every topic the client may describe, waiting up to the connect timeout.
pub(crate) async fn metadata(opts: &KafkaOptions, admin: &Admin) -> Result<Metadata> {
    let timeout = opts.connect_timeout;
    let admin = admin.clone();
    // The call blocks a thread for up to the timeout: keep it off the runtime's workers.
    tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
        .await
        .map_err(|e| Error::internal(format!("metadata task: {e}")))?
        .map_err(|e| unreachable(opts, &e))
}

pub(crate) type Admin = Arc<AdminClient<DefaultClientContext>>;

pub(crate) fn admin_client(opts: &KafkaOptions) -> Result<Admin> {
    opts.client_config(&[])
        .create()
        .map(Arc::new)
        .map_err(|e| Error::bad_request(format!("bad Kafka client configuration: {e}")))
}

fn partition_counts(md: &Metadata) -> HashMap<String, (i32, Option<RDKafkaErrorCode>)> {
    md.topics()
        .iter()
        .map(|t| {
            let err = t.error().map(RDKafkaErrorCode::from);
            (t.name().to_string(), (t.partitions().len() as i32, err))
        })
        .collect()
}

/// Checks that the brokers answer and that every topic in `specs` exists, creating the
/// missing ones when `opts.create_topics` allows it. Returns each topic's partition
/// count, in `specs` order.
///
/// Errors say what to do: unreachable brokers (`unavailable`), a missing topic that may
/// not be created (`forbidden` when the broker refused, `not_found` when creation is
/// off), or a topic the client may not describe.
pub async fn ensure_topics(opts: &KafkaOptions, specs: &[TopicSpec]) -> Result<Vec<i32>> {
    let admin = admin_client(opts)?;
    let md = metadata(opts, &admin).await?;
    let known = partition_counts(&md);
    let mut missing = Vec::new();
    for s in specs {
        match known.get(&s.name) {
            Some((n, None)) if *n > 0 => {}
            Some((_, Some(RDKafkaErrorCode::TopicAuthorizationFailed))) => {
                return Err(Error::forbidden(format!(
                    "the Kafka principal may not describe topic {:?}: grant it DESCRIBE, \
                     READ and WRITE on the topic",
                    s.name
                )))
            }
            _ => missing.push(s),
        }
    }
    let names: Vec<&str> = missing.iter().map(|s| s.name.as_str()).collect();
    if missing.is_empty() {
        return wait_for_leaders(opts, &admin, specs, md).await;
    }
    if !opts.create_topics {
        return Err(Error::not_found(format!(
            "Kafka topic(s) {names:?} do not exist at {} and creating topics is turned off: \
             create them (kafka-topics.sh --create --topic NAME --partitions N) or allow \
             creating them",
            opts.brokers
        )));
    }
    let configs: Vec<Vec<(&str, &str)>> = missing
        .iter()
        .map(|s| {
            s.configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .collect();
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .zip(&configs)
        .map(|(s, cfg)| {
            let mut t = NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(opts.replication_factor),
            );
            for (k, v) in cfg {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(opts.connect_timeout)),
        )
        .await
        .map_err(|e| unreachable(opts, &e))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((
                name,
                code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed),
            )) => {
                return Err(Error::forbidden(format!(
                    "Kafka topic {name:?} does not exist and this client may not create it \
                     ({code}): ask the cluster's administrator to create it \
                     (kafka-topics.sh --create --topic {name} --partitions N) or to grant \
                     CREATE on it"
                )))
            }
            Err((name, code)) => {
                return Err(Error::unavailable(format!(
                    "creating Kafka topic {name:?} failed: {code}"
                )))
            }
        }
    }
    let md = metadata(opts, &admin).await?;
    wait_for_leaders(opts, &admin, specs, md).await
}

/// A topic just created (here or by another process) takes a moment to get leaders;
/// waits so the first produce and assignment find them. Returns partition counts.
async fn wait_for_leaders(
    opts: &KafkaOptions,
    admin: &Admin,
    specs: &[TopicSpec],
    mut md: Metadata,
) -> Result<Vec<i32>> {
    let deadline = Instant::now() + opts.connect_timeout;
    loop {
        let ready = |name: &str| {
            md.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
            })
        };
        if specs.iter().all(|s| ready(&s.name)) {
            let known = partition_counts(&md);
            return Ok(specs.iter().map(|s| known[&s.name].0).collect());
        }
        if Instant::now() > deadline {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::unavailable(format!(
                "Kafka topic(s) {names:?} have no leader after {:?}",
                opts.connect_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        md = metadata(opts, admin).await?;
    }
}
