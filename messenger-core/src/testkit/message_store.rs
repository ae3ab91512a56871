//! [`MessageStore`] checks. Run them all with [`message_store_tests!`](crate::message_store_tests).

use std::collections::HashSet;
use std::sync::Arc;

use super::{unique_message_id, unique_thread, unique_user, CONCURRENT_TASKS, OPS_PER_TASK};
use crate::ids::{MessageId, ThreadId, UserId};
use crate::model::{Appended, HistoryPage, HistoryQuery, NewMessage, StoredMessage};
use crate::time::now_ms;
use crate::traits::MessageStore;

/// A message to append, with a fresh message id and the current time.
pub fn new_message(thread: &ThreadId, sender: &UserId, temp_id: &str, text: &str) -> NewMessage {
    NewMessage {
        thread_id: thread.clone(),
        message_id: unique_message_id(),
        sender_id: sender.clone(),
        temp_id: temp_id.to_owned(),
        text: text.to_owned(),
        sent_at: now_ms(),
    }
}

async fn append(store: &dyn MessageStore, msg: NewMessage) -> Appended {
    store
        .append(msg)
        .await
        .unwrap_or_else(|e| panic!("append failed: {e}"))
}

/// Appends `n` messages from `sender` with temp ids `t1..tn` and texts `m1..mn`.
async fn fill(store: &dyn MessageStore, thread: &ThreadId, sender: &UserId, n: u64) {
    for i in 1..=n {
        let a = append(
            store,
            new_message(thread, sender, &format!("t{i}"), &format!("m{i}")),
        )
        .await;
        assert_eq!(a.message.seq, i, "seq of the {i}th append");
    }
}

async fn fetch(store: &dyn MessageStore, thread: &ThreadId, q: HistoryQuery) -> HistoryPage {
    store
        .fetch(thread, q)
        .await
        .unwrap_or_else(|e| panic!("fetch {q:?} failed: {e}"))
}

fn seqs(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

fn q(after_seq: Option<u64>, before_seq: Option<u64>, limit: usize) -> HistoryQuery {
    HistoryQuery {
        before_seq,
        after_seq,
        limit,
    }
}

/// Checks one page: the seqs, `has_more`, and that each message is the one appended by
/// [`fill`] at that seq.
async fn expect_page(
    store: &dyn MessageStore,
    thread: &ThreadId,
    query: HistoryQuery,
    want: std::ops::RangeInclusive<u64>,
    has_more: bool,
) {
    let page = fetch(store, thread, query).await;
    let want: Vec<u64> = want.collect();
    assert_eq!(seqs(&page), want, "seqs for {query:?}");
    assert_eq!(page.has_more, has_more, "has_more for {query:?}");
    for m in &page.messages {
        assert_eq!(&m.thread_id, thread);
        assert_eq!(m.text, format!("m{}", m.seq), "text at seq {}", m.seq);
    }
}

/// The first message gets seq 1 and each next one the next seq; fetch returns them
/// ascending.
pub async fn append_assigns_seq_from_one_in_order(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("order");
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    for i in 1..=6u64 {
        let sender = if i % 2 == 0 { &bob } else { &alice };
        let a = append(
            &*store,
            new_message(&thread, sender, &format!("t{i}"), &format!("m{i}")),
        )
        .await;
        assert!(!a.duplicate, "a new temp_id is not a duplicate");
        assert_eq!(a.message.seq, i);
    }
    let page = fetch(&*store, &thread, HistoryQuery::latest(100)).await;
    assert_eq!(seqs(&page), (1..=6).collect::<Vec<_>>());
    assert!(!page.has_more);
}

/// What is appended is what is stored and returned: thread, id, sender, temp_id, text,
/// sent_at.
pub async fn append_keeps_the_fields(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("fields");
    let alice = unique_user("alice");
    let msg = new_message(&thread, &alice, "temp-1", "héllo, wörld ✓ \"quoted\"\n");
    let a = append(&*store, msg.clone()).await;
    let want = StoredMessage {
        thread_id: msg.thread_id.clone(),
        seq: 1,
        message_id: msg.message_id,
        sender_id: msg.sender_id.clone(),
        temp_id: msg.temp_id.clone(),
        text: msg.text.clone(),
        sent_at: msg.sent_at,
    };
    assert_eq!(a.message, want);
    let page = fetch(&*store, &thread, HistoryQuery::latest(10)).await;
    assert_eq!(page.messages, vec![want.clone()]);
    let got = store.get(&thread, msg.message_id).await.ok().flatten();
    assert_eq!(got, Some(want));
}

/// Many tasks appending to one thread at once get exactly the seqs 1..=N, each once, and
/// each task sees its own seqs increase.
pub async fn concurrent_appends_are_gapless(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("gapless");
    let mut tasks = Vec::new();
    for t in 0..CONCURRENT_TASKS {
        let store = store.clone();
        let thread = thread.clone();
        tasks.push(tokio::spawn(async move {
            let sender = unique_user(&format!("w{t}"));
            let mut mine = Vec::with_capacity(OPS_PER_TASK);
            for i in 0..OPS_PER_TASK {
                let a = append(
                    &*store,
                    new_message(&thread, &sender, &format!("t{i}"), &format!("{t}/{i}")),
                )
                .await;
                assert!(!a.duplicate);
                mine.push((a.message.seq, a.message.message_id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap_or_else(|e| panic!("appender task: {e}"));
        assert!(
            mine.windows(2).all(|w| w[0].0 < w[1].0),
            "one task's sequential appends got increasing seqs: {mine:?}"
        );
        all.extend(mine);
    }
    let n = (CONCURRENT_TASKS * OPS_PER_TASK) as u64;
    let mut got: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    got.sort_unstable();
    assert_eq!(got, (1..=n).collect::<Vec<_>>(), "seqs are exactly 1..=N");

    let page = fetch(&*store, &thread, HistoryQuery::latest(n as usize + 10)).await;
    assert_eq!(seqs(&page), (1..=n).collect::<Vec<_>>());
    let stored: HashSet<(u64, MessageId)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.message_id))
        .collect();
    let returned: HashSet<(u64, MessageId)> = all.into_iter().collect();
    assert_eq!(stored, returned, "each append stored what it returned");
    assert_eq!(store.last_seqs(&[thread]).await.ok(), Some(vec![n]));
}

/// The same (thread, sender, temp_id) again returns the original message with
/// `duplicate: true` and writes nothing.
pub async fn duplicate_temp_id_returns_original(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("dup");
    let alice = unique_user("alice");
    let first = append(&*store, new_message(&thread, &alice, "same", "original")).await;
    append(&*store, new_message(&thread, &alice, "other", "second")).await;
    let again = append(&*store, new_message(&thread, &alice, "same", "retry text")).await;
    assert!(again.duplicate, "the retry is a duplicate");
    assert_eq!(
        again.message, first.message,
        "the original comes back unchanged"
    );
    assert_eq!(
        store.last_seqs(std::slice::from_ref(&thread)).await.ok(),
        Some(vec![2])
    );
    let page = fetch(&*store, &thread, HistoryQuery::latest(10)).await;
    assert_eq!(seqs(&page), vec![1, 2]);
}

/// The idempotency key is the triple: the same temp_id from another sender, or in
/// another thread, is a new message.
pub async fn same_temp_id_other_sender_or_thread_is_new(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("dup-other");
    let other_thread = unique_thread("dup-other2");
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let a = append(&*store, new_message(&thread, &alice, "k", "from alice")).await;
    let b = append(&*store, new_message(&thread, &bob, "k", "from bob")).await;
    assert!(!b.duplicate, "another sender's temp_id is independent");
    assert_eq!((a.message.seq, b.message.seq), (1, 2));
    assert_ne!(a.message.message_id, b.message.message_id);
    let c = append(
        &*store,
        new_message(&other_thread, &alice, "k", "elsewhere"),
    )
    .await;
    assert!(!c.duplicate, "another thread's temp_id is independent");
    assert_eq!(c.message.seq, 1);
}

/// Many tasks sending the same (thread, sender, temp_id) at once store one message; all
/// get its id and seq, and exactly one gets `duplicate: false`.
pub async fn concurrent_duplicates_store_one(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("dup-race");
    let alice = unique_user("alice");
    // Something before, so the raced message is not trivially seq 1.
    append(&*store, new_message(&thread, &alice, "before", "m0")).await;
    let mut tasks = Vec::new();
    for t in 0..CONCURRENT_TASKS {
        let store = store.clone();
        let (thread, alice) = (thread.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            append(
                &*store,
                new_message(&thread, &alice, "raced", &format!("try {t}")),
            )
            .await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap_or_else(|e| panic!("sender task: {e}")));
    }
    let originals = results.iter().filter(|r| !r.duplicate).count();
    assert_eq!(originals, 1, "exactly one send wins: {results:?}");
    let first = &results[0].message;
    assert_eq!(first.seq, 2);
    for r in &results {
        assert_eq!(
            (r.message.message_id, r.message.seq),
            (first.message_id, first.seq)
        );
    }
    assert_eq!(store.last_seqs(&[thread]).await.ok(), Some(vec![2]));
}

/// `get` finds a message by id in its thread, and nothing in another thread or for an
/// unknown id.
pub async fn get_finds_by_id_within_thread(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("get");
    let other = unique_thread("get-other");
    let alice = unique_user("alice");
    fill(&*store, &thread, &alice, 3).await;
    let second = append(&*store, new_message(&thread, &alice, "x", "m4")).await;
    let id = second.message.message_id;
    let got = store
        .get(&thread, id)
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(got, Some(second.message));
    assert_eq!(store.get(&other, id).await.ok(), Some(None), "wrong thread");
    assert_eq!(
        store.get(&thread, unique_message_id()).await.ok(),
        Some(None),
        "unknown id"
    );
}

/// `last_seqs` answers in input order, 0 for an unknown thread.
pub async fn last_seqs_in_input_order(store: Arc<dyn MessageStore>) {
    let (a, b, unknown) = (
        unique_thread("ls-a"),
        unique_thread("ls-b"),
        unique_thread("ls-none"),
    );
    let alice = unique_user("alice");
    fill(&*store, &a, &alice, 3).await;
    fill(&*store, &b, &alice, 1).await;
    let got = store
        .last_seqs(&[b.clone(), unknown.clone(), a.clone(), b.clone()])
        .await
        .unwrap_or_else(|e| panic!("last_seqs: {e}"));
    assert_eq!(got, vec![1, 0, 3, 1]);
    assert_eq!(store.last_seqs(&[]).await.ok(), Some(vec![]));
}

/// `count_unread` counts messages after `after_seq` sent by others.
pub async fn count_unread_skips_own_messages(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("unread");
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    // seq: 1 alice, 2 bob, 3 bob, 4 alice, 5 bob
    for (i, s) in [&alice, &bob, &bob, &alice, &bob].into_iter().enumerate() {
        append(&*store, new_message(&thread, s, &format!("t{i}"), "x")).await;
    }
    let unread = |reader: UserId, after: u64| {
        let store = store.clone();
        let thread = thread.clone();
        async move {
            store
                .count_unread(&thread, &reader, after)
                .await
                .unwrap_or_else(|e| panic!("count_unread: {e}"))
        }
    };
    assert_eq!(unread(alice.clone(), 0).await, 3);
    assert_eq!(unread(alice.clone(), 2).await, 2);
    assert_eq!(unread(alice.clone(), 5).await, 0);
    assert_eq!(unread(alice.clone(), 99).await, 0);
    assert_eq!(unread(bob.clone(), 0).await, 2);
    assert_eq!(unread(bob.clone(), 3).await, 1);
    let outsider = unique_user("carol");
    assert_eq!(unread(outsider, 0).await, 5, "a non-sender sees them all");
    let none = store
        .count_unread(&unique_thread("unread-none"), &alice, 0)
        .await
        .ok();
    assert_eq!(none, Some(0), "an unknown thread has nothing unread");
}

/// An empty or unknown thread gives an empty page without `has_more`, whatever the query.
pub async fn fetch_empty_or_unknown_thread(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("empty");
    for query in [
        HistoryQuery::latest(10),
        HistoryQuery::latest(0),
        q(None, Some(5), 10),
        q(Some(0), None, 10),
        q(Some(3), Some(9), 10),
    ] {
        let page = fetch(&*store, &thread, query).await;
        assert_eq!(page, HistoryPage::default(), "{query:?}");
    }
}

/// No cursor: the latest `limit`, ascending; `has_more` when older ones exist; limit 0
/// counts as 1.
pub async fn fetch_latest(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("latest");
    let alice = unique_user("alice");
    fill(&*store, &thread, &alice, 10).await;
    let s = &*store;
    expect_page(s, &thread, HistoryQuery::latest(3), 8..=10, true).await;
    expect_page(s, &thread, HistoryQuery::latest(9), 2..=10, true).await;
    expect_page(s, &thread, HistoryQuery::latest(10), 1..=10, false).await;
    expect_page(s, &thread, HistoryQuery::latest(200), 1..=10, false).await;
    expect_page(s, &thread, HistoryQuery::latest(1), 10..=10, true).await;
    expect_page(s, &thread, HistoryQuery::latest(0), 10..=10, true).await;
}

/// `before_seq`: the newest `limit` below it; `has_more` when older ones exist.
pub async fn fetch_before(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("before");
    let alice = unique_user("alice");
    fill(&*store, &thread, &alice, 10).await;
    let s = &*store;
    expect_page(s, &thread, q(None, Some(8), 3), 5..=7, true).await;
    expect_page(s, &thread, q(None, Some(5), 3), 2..=4, true).await;
    expect_page(s, &thread, q(None, Some(4), 3), 1..=3, false).await;
    expect_page(s, &thread, q(None, Some(3), 3), 1..=2, false).await;
    expect_page(s, &thread, q(None, Some(2), 3), 1..=1, false).await;
    let page = fetch(s, &thread, q(None, Some(1), 3)).await;
    assert_eq!(page, HistoryPage::default(), "nothing before seq 1");
    let page = fetch(s, &thread, q(None, Some(0), 3)).await;
    assert_eq!(page, HistoryPage::default(), "nothing before seq 0");
    expect_page(s, &thread, q(None, Some(11), 3), 8..=10, true).await;
    expect_page(s, &thread, q(None, Some(1000), 20), 1..=10, false).await;
    expect_page(s, &thread, q(None, Some(6), 0), 5..=5, true).await;
}

/// `after_seq`: the oldest `limit` above it; `has_more` when newer ones exist.
pub async fn fetch_after(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("after");
    let alice = unique_user("alice");
    fill(&*store, &thread, &alice, 10).await;
    let s = &*store;
    expect_page(s, &thread, q(Some(0), None, 3), 1..=3, true).await;
    expect_page(s, &thread, q(Some(6), None, 3), 7..=9, true).await;
    expect_page(s, &thread, q(Some(7), None, 3), 8..=10, false).await;
    expect_page(s, &thread, q(Some(8), None, 3), 9..=10, false).await;
    expect_page(s, &thread, q(Some(0), None, 10), 1..=10, false).await;
    expect_page(s, &thread, q(Some(0), None, 500), 1..=10, false).await;
    expect_page(s, &thread, q(Some(4), None, 0), 5..=5, true).await;
    for after in [10, 11, 1000] {
        let page = fetch(s, &thread, q(Some(after), None, 3)).await;
        assert_eq!(page, HistoryPage::default(), "nothing after {after}");
    }
}

/// Both bounds: the oldest `limit` in the open range; `has_more` when newer ones exist
/// in the range.
pub async fn fetch_between(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("between");
    let alice = unique_user("alice");
    fill(&*store, &thread, &alice, 10).await;
    let s = &*store;
    expect_page(s, &thread, q(Some(2), Some(9), 3), 3..=5, true).await;
    expect_page(s, &thread, q(Some(2), Some(6), 3), 3..=5, false).await;
    expect_page(s, &thread, q(Some(2), Some(7), 3), 3..=5, true).await;
    expect_page(s, &thread, q(Some(2), Some(9), 50), 3..=8, false).await;
    expect_page(s, &thread, q(Some(0), Some(11), 10), 1..=10, false).await;
    expect_page(s, &thread, q(Some(8), Some(100), 5), 9..=10, false).await;
    for (after, before) in [(5, 6), (5, 5), (6, 5), (10, 20)] {
        let page = fetch(s, &thread, q(Some(after), Some(before), 5)).await;
        assert_eq!(
            page,
            HistoryPage::default(),
            "empty range ({after}, {before})"
        );
    }
}

/// Paging forward with `after_seq` until `has_more` is false, and backward with
/// `before_seq`, each visits every message exactly once.
pub async fn paging_walks_every_message_once(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("walk");
    let alice = unique_user("alice");
    fill(&*store, &thread, &alice, 23).await;
    let s = &*store;

    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = fetch(s, &thread, q(Some(after), None, 5)).await;
        seen.extend(seqs(&page));
        match page.messages.last() {
            Some(m) if page.has_more => after = m.seq,
            _ => break,
        }
        assert!(seen.len() <= 23, "forward paging does not end");
    }
    assert_eq!(seen, (1..=23).collect::<Vec<_>>(), "forward");

    let mut seen = Vec::new();
    let mut page = fetch(s, &thread, HistoryQuery::latest(5)).await;
    loop {
        let mut batch = seqs(&page);
        batch.extend(seen);
        seen = batch;
        match page.messages.first() {
            Some(m) if page.has_more => {
                page = fetch(s, &thread, q(None, Some(m.seq), 5)).await;
            }
            _ => break,
        }
        assert!(seen.len() <= 23, "backward paging does not end");
    }
    assert_eq!(seen, (1..=23).collect::<Vec<_>>(), "backward");
}

// ---- The batch path: `MessageStore::append_batch` ----

async fn append_batch(
    store: &dyn MessageStore,
    thread: &ThreadId,
    batch: Vec<NewMessage>,
) -> Vec<Appended> {
    let n = batch.len();
    let out = store
        .append_batch(thread, batch)
        .await
        .unwrap_or_else(|e| panic!("append_batch failed: {e}"));
    assert_eq!(out.len(), n, "append_batch returns one result per message");
    out
}

/// Asserts that the stored (non-duplicate) results of one batch have consecutive seqs.
fn assert_consecutive(results: &[Appended], what: &str) {
    let new: Vec<u64> = results
        .iter()
        .filter(|a| !a.duplicate)
        .map(|a| a.message.seq)
        .collect();
    assert!(
        new.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: the messages one batch stores get consecutive seqs, got {new:?}"
    );
}

/// A batch gets consecutive seqs in input order, keeps every field, and comes back one
/// result per message in input order; an empty batch is a no-op.
pub async fn append_batch_assigns_consecutive_seqs(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("batch");
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let empty = append_batch(&*store, &thread, Vec::new()).await;
    assert!(empty.is_empty());
    assert_eq!(
        store.last_seqs(std::slice::from_ref(&thread)).await.ok(),
        Some(vec![0]),
        "an empty batch writes nothing"
    );
    let first: Vec<NewMessage> = (1..=5)
        .map(|i| {
            let s = if i % 2 == 0 { &bob } else { &alice };
            new_message(&thread, s, &format!("t{i}"), &format!("m{i}"))
        })
        .collect();
    let got = append_batch(&*store, &thread, first.clone()).await;
    for (i, (a, m)) in got.iter().zip(&first).enumerate() {
        assert!(!a.duplicate, "message {i} is new");
        let want = StoredMessage {
            thread_id: thread.clone(),
            seq: i as u64 + 1,
            message_id: m.message_id,
            sender_id: m.sender_id.clone(),
            temp_id: m.temp_id.clone(),
            text: m.text.clone(),
            sent_at: m.sent_at,
        };
        assert_eq!(
            a.message,
            want,
            "result {i} is message {i}, stored at seq {}",
            i + 1
        );
    }
    // A single append and a second batch continue where the first batch ended.
    let single = append(&*store, new_message(&thread, &alice, "t6", "m6")).await;
    assert_eq!(single.message.seq, 6);
    let second: Vec<NewMessage> = (7..=9)
        .map(|i| new_message(&thread, &bob, &format!("t{i}"), &format!("m{i}")))
        .collect();
    let got = append_batch(&*store, &thread, second).await;
    assert_eq!(
        got.iter().map(|a| a.message.seq).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    expect_page(&*store, &thread, HistoryQuery::latest(100), 1..=9, false).await;
    let id = got[1].message.message_id;
    assert_eq!(
        store.get(&thread, id).await.ok().flatten(),
        Some(got[1].message.clone()),
        "a batch's messages are found by id"
    );
}

/// A batch holding a message of another thread is refused whole with `bad_request`,
/// before anything is written.
pub async fn append_batch_refuses_another_thread(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("batch-mixed");
    let other = unique_thread("batch-mixed-other");
    let alice = unique_user("alice");
    let batch = vec![
        new_message(&thread, &alice, "a", "mine"),
        new_message(&other, &alice, "b", "not this thread"),
    ];
    let err = store
        .append_batch(&thread, batch)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(crate::ErrorKind::BadRequest));
    assert_eq!(
        store.last_seqs(&[thread, other]).await.ok(),
        Some(vec![0, 0]),
        "nothing was written"
    );
}

/// A batch holding a duplicate of an earlier message and a duplicate of one of its own
/// messages stores each (sender, temp_id) once: the duplicates come back as the
/// originals, the other messages get consecutive seqs.
pub async fn append_batch_with_duplicates(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("batch-dup");
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let earlier = append(&*store, new_message(&thread, &alice, "a", "earlier")).await;
    let batch = vec![
        new_message(&thread, &alice, "b", "m2"),
        new_message(&thread, &alice, "a", "retry of the earlier one"),
        new_message(&thread, &bob, "a", "m3: bob's own temp_id a"),
        new_message(&thread, &alice, "b", "retry of the batch's first"),
        new_message(&thread, &alice, "c", "m4"),
    ];
    let got = append_batch(&*store, &thread, batch.clone()).await;
    let shape: Vec<(u64, bool)> = got.iter().map(|a| (a.message.seq, a.duplicate)).collect();
    assert_eq!(
        shape,
        vec![(2, false), (1, true), (3, false), (2, true), (4, false)],
        "(seq, duplicate) per message"
    );
    assert_eq!(
        got[1].message, earlier.message,
        "the earlier original comes back"
    );
    assert_eq!(
        got[3].message, got[0].message,
        "the in-batch original comes back"
    );
    assert_eq!(got[0].message.message_id, batch[0].message_id);
    assert_eq!(got[0].message.text, "m2");
    assert_consecutive(&got, "batch with duplicates");
    // A whole batch of retries writes nothing.
    let again = append_batch(&*store, &thread, batch).await;
    assert!(
        again.iter().all(|a| a.duplicate),
        "every retry is a duplicate"
    );
    let seqs_again: Vec<u64> = again.iter().map(|a| a.message.seq).collect();
    assert_eq!(seqs_again, vec![2, 1, 3, 2, 4]);
    let page = fetch(&*store, &thread, HistoryQuery::latest(10)).await;
    assert_eq!(seqs(&page), vec![1, 2, 3, 4]);
    let texts: Vec<&str> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        vec!["earlier", "m2", "m3: bob's own temp_id a", "m4"]
    );
}

/// Two writers, as two engines would, append batches of 1 to 7 messages to one thread
/// at once (see [`concurrent_batches_two_stores`]).
pub async fn concurrent_batches_are_gapless(store: Arc<dyn MessageStore>) {
    concurrent_batches_two_stores(store.clone(), store).await;
}

/// Two writers append batches to one thread at once, each through its own store
/// handle, with several tasks per writer (an engine has one batch in flight per thread,
/// so several tasks stand for several engines' worth of contention). Every task also
/// resends a few temp_ids it sent before. The thread ends with seqs exactly 1..=N, one
/// message per (sender, temp_id), each batch's new messages at consecutive seqs, and
/// what each call returned is what is stored.
///
/// The conformance macro passes the same store twice. An adapter whose instances share
/// a backend (two processes on one database) should also call this with two instances.
pub async fn concurrent_batches_two_stores(a: Arc<dyn MessageStore>, b: Arc<dyn MessageStore>) {
    let thread = unique_thread("batch-race");
    let per_writer = CONCURRENT_TASKS / 2;
    let mut tasks = Vec::new();
    for t in 0..CONCURRENT_TASKS {
        let store = if t < per_writer { a.clone() } else { b.clone() };
        let thread = thread.clone();
        tasks.push(tokio::spawn(async move {
            let sender = unique_user(&format!("w{t}"));
            let mut sent = 0usize;
            let mut round = 0usize;
            let mut results = Vec::new();
            while sent < OPS_PER_TASK {
                round += 1;
                let size = (1 + (t + round) % 7).min(OPS_PER_TASK - sent);
                let mut batch: Vec<NewMessage> = (sent..sent + size)
                    .map(|i| new_message(&thread, &sender, &format!("t{i}"), &format!("{t}/{i}")))
                    .collect();
                if sent > 0 && round.is_multiple_of(3) {
                    // A retry of an earlier temp_id rides along.
                    let i = (round * 7) % sent;
                    batch.insert(
                        size / 2,
                        new_message(&thread, &sender, &format!("t{i}"), "retry"),
                    );
                }
                let got = append_batch(&*store, &thread, batch.clone()).await;
                assert_consecutive(&got, &format!("task {t} round {round}"));
                for (m, r) in batch.iter().zip(&got) {
                    assert_eq!(r.message.temp_id, m.temp_id);
                    assert_eq!(r.message.sender_id, m.sender_id);
                    assert_eq!(
                        r.duplicate,
                        m.text == "retry",
                        "only retries are duplicates"
                    );
                }
                sent += size;
                results.extend(got);
            }
            results
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let mine = task
            .await
            .unwrap_or_else(|e| panic!("batch writer task: {e}"));
        let new: Vec<u64> = mine
            .iter()
            .filter(|r| !r.duplicate)
            .map(|r| r.message.seq)
            .collect();
        assert!(
            new.windows(2).all(|w| w[0] < w[1]),
            "one task's sequential batches got increasing seqs: {new:?}"
        );
        all.extend(mine);
    }
    let n = (CONCURRENT_TASKS * OPS_PER_TASK) as u64;
    let mut got: Vec<u64> = all
        .iter()
        .filter(|r| !r.duplicate)
        .map(|r| r.message.seq)
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=n).collect::<Vec<_>>(), "seqs are exactly 1..=N");

    let page = fetch(&*a, &thread, HistoryQuery::latest(n as usize + 10)).await;
    assert_eq!(seqs(&page), (1..=n).collect::<Vec<_>>());
    let keys: HashSet<(&UserId, &str)> = page
        .messages
        .iter()
        .map(|m| (&m.sender_id, m.temp_id.as_str()))
        .collect();
    assert_eq!(keys.len() as u64, n, "no (sender, temp_id) is stored twice");
    let by_seq: std::collections::HashMap<u64, &StoredMessage> =
        page.messages.iter().map(|m| (m.seq, m)).collect();
    for r in &all {
        assert_eq!(
            by_seq.get(&r.message.seq).copied(),
            Some(&r.message),
            "each result (new or duplicate) is what is stored at its seq"
        );
    }
    assert_eq!(store_last(&*b, &thread).await, n);
}

async fn store_last(store: &dyn MessageStore, thread: &ThreadId) -> u64 {
    store
        .last_seqs(std::slice::from_ref(thread))
        .await
        .unwrap_or_else(|e| panic!("last_seqs: {e}"))
        .first()
        .copied()
        .unwrap_or(0)
}

/// Two writers send batches holding the same (sender, temp_id)s at once (a client's
/// retry reaching a second server while the first attempt is in flight): each is
/// stored once, every result for a key names the same message, and exactly one of them
/// has `duplicate: false`.
pub async fn concurrent_duplicate_batches_store_one(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("batch-dup-race");
    let alice = unique_user("alice");
    append(&*store, new_message(&thread, &alice, "before", "m0")).await;
    let keys = 6usize;
    let mut tasks = Vec::new();
    for t in 0..CONCURRENT_TASKS {
        let store = store.clone();
        let (thread, alice) = (thread.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            // Each task sends the same keys, rotated, in two batches.
            let order: Vec<usize> = (0..keys).map(|k| (k + t) % keys).collect();
            let mut out = Vec::new();
            for half in order.chunks(keys / 2) {
                let batch: Vec<NewMessage> = half
                    .iter()
                    .map(|k| new_message(&thread, &alice, &format!("k{k}"), &format!("try {t}")))
                    .collect();
                out.extend(append_batch(&*store, &thread, batch).await);
            }
            out
        }));
    }
    let mut by_key: std::collections::HashMap<String, Vec<Appended>> = Default::default();
    for task in tasks {
        for r in task.await.unwrap_or_else(|e| panic!("sender task: {e}")) {
            by_key.entry(r.message.temp_id.clone()).or_default().push(r);
        }
    }
    assert_eq!(by_key.len(), keys);
    for (key, results) in &by_key {
        let originals = results.iter().filter(|r| !r.duplicate).count();
        assert_eq!(
            originals, 1,
            "exactly one send of {key} stores it: {results:?}"
        );
        let first = &results[0].message;
        assert!(
            results.iter().all(|r| r.message == *first),
            "every send of {key} gets the same message"
        );
    }
    let total = 1 + keys as u64;
    assert_eq!(store_last(&*store, &thread).await, total);
    let page = fetch(&*store, &thread, HistoryQuery::latest(100)).await;
    assert_eq!(seqs(&page), (1..=total).collect::<Vec<_>>());
}

crate::message_store_tests!(@checks __testkit_list (MessageStore));

/// `append_batch_now` is either never answered (`None`, the default, leaving the batch
/// as it was) or always, and then keeps `append_batch`'s contract: consecutive seqs in
/// input order continuing the thread, duplicates answered with the originals, a message
/// of another thread refusing the whole batch; the batch is left empty.
pub async fn append_batch_now_keeps_the_batch_contract(store: Arc<dyn MessageStore>) {
    let thread = unique_thread("now");
    let alice = unique_user("alice");
    let first = append(&*store, new_message(&thread, &alice, "t0", "m0")).await;
    assert_eq!(first.message.seq, 1);
    let mut batch: Vec<NewMessage> = (1..=3)
        .map(|i| new_message(&thread, &alice, &format!("t{i}"), &format!("m{i}")))
        .collect();
    let sent = batch.clone();
    let Some(result) = store.append_batch_now(&thread, &mut batch) else {
        assert_eq!(
            batch, sent,
            "a store that cannot append at once leaves the batch"
        );
        let mut other = vec![new_message(&thread, &alice, "t9", "m9")];
        assert!(
            store.append_batch_now(&thread, &mut other).is_none(),
            "a store answers append_batch_now always or never"
        );
        return;
    };
    let got = result.unwrap_or_else(|e| panic!("append_batch_now failed: {e}"));
    assert!(
        batch.is_empty(),
        "append_batch_now takes the batch's messages"
    );
    assert_eq!(got.len(), 3, "one result per message");
    for (i, (a, m)) in got.iter().zip(&sent).enumerate() {
        assert!(!a.duplicate, "message {i} is new");
        assert_eq!(
            a.message.seq,
            i as u64 + 2,
            "seqs continue the thread in input order"
        );
        assert_eq!(
            (&a.message.temp_id, &a.message.text, a.message.message_id),
            (&m.temp_id, &m.text, m.message_id)
        );
    }
    // The vector is reused: a repeat of message 2 and a new one.
    batch.push(new_message(&thread, &alice, "t2", "again"));
    batch.push(new_message(&thread, &alice, "t4", "m4"));
    let got2 = store
        .append_batch_now(&thread, &mut batch)
        .expect("a store answers append_batch_now always or never")
        .unwrap_or_else(|e| panic!("append_batch_now failed: {e}"));
    assert!(got2[0].duplicate, "a repeated temp_id is a duplicate");
    assert_eq!(
        got2[0].message, got[1].message,
        "a duplicate comes back as the original"
    );
    assert!(!got2[1].duplicate);
    assert_eq!(got2[1].message.seq, 5);
    // Another thread's message refuses the batch before anything is written.
    let other = unique_thread("now-other");
    batch.clear();
    batch.push(new_message(&thread, &alice, "t5", "m5"));
    batch.push(new_message(&other, &alice, "t6", "m6"));
    let refused = store
        .append_batch_now(&thread, &mut batch)
        .expect("a store answers append_batch_now always or never");
    assert!(
        matches!(&refused, Err(e) if matches!(e.kind(), crate::error::ErrorKind::BadRequest)),
        "a foreign message refuses the batch: {refused:?}"
    );
    assert_eq!(
        store.last_seqs(std::slice::from_ref(&thread)).await.ok(),
        Some(vec![5]),
        "a refused batch writes nothing"
    );
    let page = fetch(&*store, &thread, HistoryQuery::latest(10)).await;
    assert_eq!(seqs(&page), vec![1, 2, 3, 4, 5]);
}
