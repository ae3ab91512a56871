//! [`Relay`] checks. Run them all with [`relay_tests!`](crate::relay_tests).
//!
//! Each check marks its envelopes' frames with a unique tag and ignores envelopes
//! without it, so other users of a shared backend cannot disturb it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;

use super::{
    unique_node, unique_session, unique_suffix, unique_thread, unique_user, within,
    CONCURRENT_TASKS, OPS_PER_TASK,
};
use crate::ids::NodeId;
use crate::model::{Envelope, EnvelopeTo, ThreadMembers};
use crate::traits::Relay;

/// An envelope from `from` whose frame is `{"tag":"<tag>","n":"<n>"}`.
pub fn tagged_envelope(from: NodeId, tag: &str, n: &str) -> Envelope {
    Envelope {
        from_node: from,
        to: EnvelopeTo::Users(vec![unique_user("to")]),
        except_session: None,
        order: None,
        frame: format!(r#"{{"tag":"{tag}","n":"{n}"}}"#),
    }
}

fn label(env: &Envelope, tag: &str) -> Option<String> {
    let prefix = format!(r#"{{"tag":"{tag}","n":""#);
    env.frame
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix("\"}"))
        .map(str::to_owned)
}

async fn subscribe(relay: &dyn Relay, node: NodeId) -> BoxStream<'static, Envelope> {
    relay
        .subscribe(node)
        .await
        .unwrap_or_else(|e| panic!("subscribe {node}: {e}"))
}

async fn send(relay: &dyn Relay, node: NodeId, env: Envelope) {
    relay
        .send(node, env)
        .await
        .unwrap_or_else(|e| panic!("send to {node}: {e}"))
}

/// The next envelope with `tag`, skipping others.
async fn next_tagged(stream: &mut BoxStream<'static, Envelope>, tag: &str) -> (String, Envelope) {
    within("a relayed envelope", async {
        loop {
            match stream.next().await {
                Some(env) => {
                    if let Some(n) = label(&env, tag) {
                        return (n, env);
                    }
                }
                None => panic!("the relay stream ended"),
            }
        }
    })
    .await
}

/// Labels of `tag` envelopes received until (and without) the `end` label.
async fn labels_until(stream: &mut BoxStream<'static, Envelope>, tag: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let (n, _) = next_tagged(stream, tag).await;
        if n == "end" {
            return seen;
        }
        seen.push(n);
    }
}

/// An envelope reaches the node it is sent to and no other.
pub async fn delivers_to_the_addressed_node_only(relay: Arc<dyn Relay>) {
    let tag = unique_suffix();
    let (n1, n2) = (unique_node(), unique_node());
    let mut s1 = subscribe(&*relay, n1).await;
    let mut s2 = subscribe(&*relay, n2).await;
    let r = &*relay;
    send(r, n1, tagged_envelope(n2, &tag, "for-1")).await;
    send(r, n2, tagged_envelope(n1, &tag, "for-2a")).await;
    send(r, n2, tagged_envelope(n1, &tag, "for-2b")).await;
    send(r, n1, tagged_envelope(n2, &tag, "end")).await;
    send(r, n2, tagged_envelope(n1, &tag, "end")).await;
    assert_eq!(labels_until(&mut s1, &tag).await, vec!["for-1"]);
    let mut got2 = labels_until(&mut s2, &tag).await;
    got2.sort();
    assert_eq!(got2, vec!["for-2a", "for-2b"]);
}

/// Sending to a node nobody listens on succeeds (the envelope is dropped), also after
/// its subscriber went away.
pub async fn send_without_subscriber_is_ok(relay: Arc<dyn Relay>) {
    let tag = unique_suffix();
    let nobody = unique_node();
    let r = &*relay;
    send(r, nobody, tagged_envelope(nobody, &tag, "lost")).await;
    let gone = unique_node();
    let stream = subscribe(r, gone).await;
    drop(stream);
    send(r, gone, tagged_envelope(nobody, &tag, "lost too")).await;
    // The relay still works afterwards.
    let mut s = subscribe(r, gone).await;
    send(r, gone, tagged_envelope(nobody, &tag, "x")).await;
    let (n, _) = next_tagged(&mut s, &tag).await;
    assert_eq!(n, "x", "only envelopes sent after subscribing arrive");
}

/// Every field of an envelope arrives unchanged.
pub async fn envelope_round_trips(relay: Arc<dyn Relay>) {
    let tag = unique_suffix();
    let (from, to) = (unique_node(), unique_node());
    let mut s = subscribe(&*relay, to).await;
    let full = Envelope {
        from_node: from,
        to: EnvelopeTo::Users(vec![unique_user("a"), unique_user("b"), unique_user("c")]),
        except_session: Some(unique_session()),
        order: Some((unique_thread("order"), 42)),
        frame: format!(r#"{{"tag":"{tag}","n":"full ✓ \\\" é"}}"#),
    };
    let bare = tagged_envelope(from, &tag, "bare");
    let thread = unique_thread("large");
    let members_of = Envelope {
        from_node: from,
        to: EnvelopeTo::MembersOf(ThreadMembers {
            thread_id: thread.clone(),
            fingerprint: u64::MAX - 7,
            count: 10_000,
        }),
        except_session: Some(unique_session()),
        order: Some((thread, 7)),
        frame: format!(r#"{{"tag":"{tag}","n":"members_of"}}"#),
    };
    send(&*relay, to, full.clone()).await;
    send(&*relay, to, bare.clone()).await;
    send(&*relay, to, members_of.clone()).await;
    let mut got = HashMap::new();
    for _ in 0..3 {
        let (n, env) = next_tagged(&mut s, &tag).await;
        got.insert(n, env);
    }
    assert_eq!(got.get("bare"), Some(&bare));
    assert_eq!(got.get("members_of"), Some(&members_of));
    assert_eq!(got.get("full ✓ \\\\\\\" é"), Some(&full), "got {got:?}");
}

/// Many concurrent senders to one node: every envelope arrives exactly once.
pub async fn delivers_every_envelope_once(relay: Arc<dyn Relay>) {
    let tag = unique_suffix();
    let to = unique_node();
    let mut s = subscribe(&*relay, to).await;
    let mut tasks = Vec::new();
    for t in 0..CONCURRENT_TASKS {
        let relay = relay.clone();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let from = unique_node();
            for i in 0..OPS_PER_TASK {
                send(
                    &*relay,
                    to,
                    tagged_envelope(from, &tag, &format!("{t}/{i}")),
                )
                .await;
            }
        }));
    }
    let total = CONCURRENT_TASKS * OPS_PER_TASK;
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..total {
        let (n, _) = next_tagged(&mut s, &tag).await;
        *seen.entry(n).or_default() += 1;
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("sender task: {e}"));
    }
    assert_eq!(seen.len(), total, "every envelope arrived");
    assert!(seen.values().all(|&c| c == 1), "none twice: {seen:?}");
    // Nothing more: the next tagged envelope is a fresh sentinel.
    send(&*relay, to, tagged_envelope(to, &tag, "end")).await;
    assert!(
        labels_until(&mut s, &tag).await.is_empty(),
        "a duplicate arrived"
    );
}

/// A relay that lists its nodes ([`Relay::nodes`] is `Some`) lists every node with a
/// live subscription.
pub async fn lists_subscribed_nodes(relay: Arc<dyn Relay>) {
    let (n1, n2) = (unique_node(), unique_node());
    let _s1 = subscribe(&*relay, n1).await;
    let _s2 = subscribe(&*relay, n2).await;
    let listed = relay.nodes().await.unwrap_or_else(|e| panic!("nodes: {e}"));
    if let Some(list) = listed {
        assert!(
            list.contains(&n1) && list.contains(&n2),
            "{n1} and {n2} are subscribed; listed: {list:?}"
        );
    }
}

crate::relay_tests!(@checks __testkit_list (Relay));
