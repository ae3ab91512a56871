//! A pub/sub subscription that survives Redis restarts.
//!
//! The first subscribe happens before the caller gets the stream (so "from now on"
//! holds), then a task forwards messages into a bounded channel. When the connection
//! drops, or a periodic PING on it fails, the task logs the gap and resubscribes with
//! backoff until it succeeds or the stream is dropped or the cluster shuts down.
//! Messages published while no subscription exists are lost (pub/sub has no replay);
//! every such gap is logged at WARN with its duration. The channel is bounded and
//! the task awaits room in it, so a slow consumer slows the task down instead of
//! having messages dropped here (Redis may then disconnect the subscriber past its
//! `client-output-buffer-limit pubsub`, which shows up as a logged gap).

use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use messenger_core::{Error, Result};
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, watch};

use crate::error;

pub(crate) struct SubscriptionParams {
    pub client: redis::Client,
    pub channel: String,
    pub capacity: usize,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
    pub ping_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
}

async fn open(p: &SubscriptionParams) -> Result<(PubSubSink, PubSubStream)> {
    let connect = async {
        let pubsub = p.client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(&p.channel).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    match tokio::time::timeout(p.connect_timeout + p.op_timeout, connect).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error::map(&format!("subscribe to {}", p.channel), e)),
        Err(_) => Err(Error::unavailable(format!(
            "redis: subscribe to {} timed out",
            p.channel
        ))),
    }
}

/// Subscribes to `p.channel` now and returns a stream of decoded messages that
/// resubscribes by itself. Messages `decode` rejects are logged and skipped.
pub(crate) async fn subscribe<T, F>(
    p: SubscriptionParams,
    what: &'static str,
    decode: F,
) -> Result<BoxStream<'static, T>>
where
    T: Send + 'static,
    F: Fn(&[u8]) -> std::result::Result<T, String> + Send + Sync + 'static,
{
    let first = open(&p).await?;
    let (tx, rx) = mpsc::channel::<T>(p.capacity.max(1));
    tokio::spawn(run(p, what, decode, first, tx));
    Ok(
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
            .boxed(),
    )
}

enum End {
    /// The consumer dropped the stream or the cluster is shutting down.
    Stop,
    /// The connection is gone: resubscribe.
    Lost(String),
}

async fn run<T, F>(
    mut p: SubscriptionParams,
    what: &'static str,
    decode: F,
    first: (PubSubSink, PubSubStream),
    tx: mpsc::Sender<T>,
) where
    T: Send + 'static,
    F: Fn(&[u8]) -> std::result::Result<T, String> + Send + Sync + 'static,
{
    let mut conn = first;
    loop {
        match pump(&mut p, what, &decode, conn, &tx).await {
            End::Stop => return,
            End::Lost(why) => {
                let since = Instant::now();
                tracing::warn!(channel = %p.channel, what, reason = %why,
                    "redis subscription lost; messages published until it is back are lost");
                let mut delay = Duration::from_millis(50);
                conn = loop {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = p.shutdown.changed() => return,
                        _ = tx.closed() => return,
                    }
                    match open(&p).await {
                        Ok(c) => break c,
                        Err(e) => {
                            tracing::debug!(channel = %p.channel, error = %e, "resubscribe failed");
                            delay = (delay * 2).min(Duration::from_secs(1));
                        }
                    }
                };
                tracing::warn!(channel = %p.channel, what, gap_ms = since.elapsed().as_millis() as u64,
                    "redis subscription restored; anything published during the gap was missed");
            }
        }
    }
}

async fn pump<T, F>(
    p: &mut SubscriptionParams,
    what: &'static str,
    decode: &F,
    (mut sink, mut stream): (PubSubSink, PubSubStream),
    tx: &mpsc::Sender<T>,
) -> End
where
    F: Fn(&[u8]) -> std::result::Result<T, String>,
{
    if *p.shutdown.borrow() {
        return End::Stop;
    }
    let mut ping = tokio::time::interval(p.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return End::Lost("connection closed".into()) };
                match decode(msg.get_payload_bytes()) {
                    Ok(v) => tokio::select! {
                        r = tx.send(v) => if r.is_err() { return End::Stop },
                        _ = p.shutdown.changed() => return End::Stop,
                    },
                    Err(e) => tracing::warn!(channel = %p.channel, what, error = %e,
                        "undecodable message on redis channel skipped"),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(p.op_timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return End::Lost(format!("ping failed: {e}")),
                    Err(_) => return End::Lost("ping timed out".into()),
                }
            }
            _ = p.shutdown.changed() => return End::Stop,
            _ = tx.closed() => return End::Stop,
        }
    }
}
