//! Measures when cross-node delivery works again after a relay outage (the Kafka broker
//! killed or stopped): one raw protocol session per node, each sending into a direct
//! thread with the session on the next node, until every node's session has received
//! a message from the previous node live. Raw sessions see `receive_message` only from
//! the relay (they never fetch history), so a receipt is a relayed delivery, not a
//! catch-up.

use std::time::{Duration, Instant};

use futures::SinkExt;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::Cluster;
use crate::storm::{connect, request_seeing, Ws};

/// Each probe session sends this often.
const SEND_EVERY: Duration = Duration::from_millis(200);

/// Waits until every node received a probe message relayed from another node, sent by
/// sessions opened after this call (`tag` tells this probe's messages apart); returns
/// the time from `since` to the last node's first receipt. `Err` with what was missing
/// when `limit` (from `since`) passes first.
pub async fn relay_resumed(
    cluster: &Cluster,
    tag: &str,
    since: Instant,
    limit: Duration,
) -> Result<Duration, String> {
    let k = cluster.nodes.len();
    let deadline = since + limit;
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..k {
        let addr = cluster.nodes[i].addr;
        let me = format!("kprobe{}", cluster.nodes[i].id);
        let next = format!("kprobe{}", cluster.nodes[(i + 1) % k].id);
        let tag = tag.to_string();
        let got = got_tx.clone();
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            probe_session(i, addr, &me, &next, &tag, deadline, got, stop).await
        }));
    }
    drop(got_tx);
    let mut first: Vec<Option<Instant>> = vec![None; k];
    let outcome = loop {
        if first.iter().all(Option::is_some) {
            let last = first.iter().flatten().max().copied().unwrap_or(since);
            break Ok(last.saturating_duration_since(since));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, got_rx.recv()).await {
            Ok(Some((i, at))) => {
                first[i].get_or_insert(at);
            }
            // Every session ended (each says why below) or the limit passed.
            Ok(None) | Err(_) => {
                let missing: Vec<String> = (0..k)
                    .filter(|&i| first[i].is_none())
                    .map(|i| format!("node {}", cluster.nodes[i].id))
                    .collect();
                break Err(format!(
                    "no relayed probe message reached {} within {limit:?} of the broker's return",
                    missing.join(", ")
                ));
            }
        }
    };
    stop_tx.send_replace(true);
    let mut why = Vec::new();
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            why.push(e);
        }
    }
    outcome.map_err(|e| {
        if why.is_empty() {
            e
        } else {
            format!("{e} ({})", why.join("; "))
        }
    })
}

/// Session `i` on `addr` as `me`: opens the direct thread with `next`, then sends into
/// it every [`SEND_EVERY`] and reports its first received probe message, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn probe_session(
    i: usize,
    addr: std::net::SocketAddr,
    me: &str,
    next: &str,
    tag: &str,
    deadline: Instant,
    got: mpsc::UnboundedSender<(usize, Instant)>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut ws: Ws = loop {
        match connect(addr, me).await {
            Ok(ws) => break ws,
            Err(e) if Instant::now() > deadline => return Err(format!("{me} connect: {e}")),
            Err(_) => {
                // The node may still be coming back: try again until the deadline.
                let _ = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await;
                if *stop.borrow() {
                    return Ok(());
                }
            }
        }
    };
    let mut reported = false;
    let prefix = format!("{tag}|");
    let seen = |v: &serde_json::Value, reported: &mut bool| {
        if !*reported
            && v["type"] == "receive_message"
            && v["text"].as_str().is_some_and(|t| t.starts_with(&prefix))
        {
            *reported = true;
            let _ = got.send((i, Instant::now()));
        }
    };
    let create = json!({"type":"create_thread","req_id":"c","kind":"direct","members":[next]});
    let left = deadline.saturating_duration_since(Instant::now());
    let thread = match request_seeing(&mut ws, create, left, |v| seen(v, &mut reported)).await {
        Ok(v) => v["thread_id"].as_str().unwrap_or_default().to_string(),
        Err(e) => return Err(format!("{me} create_thread: {e}")),
    };
    let mut tick = tokio::time::interval(SEND_EVERY);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tick.tick() => {
                n += 1;
                let send = json!({"type":"send_message","req_id":format!("s{n}"),
                    "thread_id":thread,"temp_id":format!("{tag}-{me}-{n}"),
                    "text":format!("{tag}|{me}|{n}")});
                // Replies (message_sent, or unavailable) are not waited for: only the
                // relayed copy on the other node matters here.
                if let Err(e) = ws.send(Message::text(send.to_string())).await {
                    return Err(format!("{me} send: {e}"));
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) {
                        seen(&v, &mut reported);
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Err(format!("{me}: connection closed")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("{me}: {e}")),
            }
        }
    }
}
