//! The HBase row-key codec: seqs round-trip, threads never share a prefix, distinct
//! idempotency and user index keys never collide.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    t1: &'a str,
    t2: &'a str,
    u1: &'a str,
    temp1: &'a str,
    u2: &'a str,
    temp2: &'a str,
    seq: u64,
    row: &'a [u8],
}

fuzz_target!(|i: Input<'_>| {
    messenger_storage_hbase::fuzzing::check_row_keys(
        i.t1, i.t2, i.u1, i.temp1, i.u2, i.temp2, i.seq, i.row,
    );
});
