//! Properties of the row-key codec checked on arbitrary ids (feature `fuzzing`, for
//! `fuzz/fuzz_targets/hbase_row_keys.rs`; not a public API).

use messenger_core::{ThreadId, UserId};

use crate::schema::{
    block_key, block_of, block_of_key, block_prefix, dedup2_key, dedup_key, msg_key, msg_prefix,
    prefix_end, seq_of_key, thread_prefix, user_thread_key,
};

/// Checks the codec on two thread ids, two (sender, temp id) pairs, a seq and an
/// arbitrary row; ids the protocol would refuse are skipped. Panics on a violation:
/// a message key that does not give its seq back, one thread's rows under another's
/// prefix, two distinct idempotency keys or user index keys that collide, a key past
/// its prefix's end, or a panic while reading a seq out of an arbitrary row.
#[allow(clippy::too_many_arguments)]
pub fn check_row_keys(
    t1: &str,
    t2: &str,
    u1: &str,
    temp1: &str,
    u2: &str,
    temp2: &str,
    seq: u64,
    row: &[u8],
) {
    let (Ok(a), Ok(b)) = (ThreadId::new(t1), ThreadId::new(t2)) else {
        return;
    };
    let _ = seq_of_key(&msg_prefix(&a), row);
    let key = msg_key(&a, seq);
    assert_eq!(
        seq_of_key(&msg_prefix(&a), &key),
        Some(seq),
        "{a} seq {seq}"
    );
    assert!(key.as_slice() < prefix_end(&thread_prefix(&a)).as_slice());
    // Schema v2 (what the store writes; the v1 keys above are what the migration reads).
    let _ = block_of_key(&block_prefix(&a), row);
    let block = block_of(seq);
    let bkey = block_key(&a, block);
    assert_eq!(
        block_of_key(&block_prefix(&a), &bkey),
        Some(block),
        "{a} block {block}"
    );
    assert!(bkey.as_slice() < prefix_end(&thread_prefix(&a)).as_slice());
    if a != b {
        let (pa, pb) = (thread_prefix(&a), thread_prefix(&b));
        assert!(!pa.starts_with(&pb) && !pb.starts_with(&pa), "{a} / {b}");
        assert_eq!(
            seq_of_key(&msg_prefix(&b), &key),
            None,
            "{a} row read as {b}"
        );
        assert_eq!(
            block_of_key(&block_prefix(&b), &bkey),
            None,
            "{a} block row read as {b}"
        );
    }
    let (Ok(s1), Ok(s2)) = (UserId::new(u1), UserId::new(u2)) else {
        return;
    };
    if (&s1, temp1) != (&s2, temp2) {
        assert_ne!(
            dedup_key(&a, &s1, temp1),
            dedup_key(&a, &s2, temp2),
            "idempotency keys of ({s1}, {temp1:?}) and ({s2}, {temp2:?}) collide"
        );
        assert_ne!(
            dedup2_key(&a, &s1, temp1),
            dedup2_key(&a, &s2, temp2),
            "v2 idempotency keys of ({s1}, {temp1:?}) and ({s2}, {temp2:?}) collide"
        );
    }
    if s1 != s2 || a != b {
        assert_ne!(user_thread_key(&s1, &a), user_thread_key(&s2, &b));
    }
}
