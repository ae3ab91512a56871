//! JWT verification (HS256): no token the fuzzer makes is accepted, none crashes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    messenger_server::fuzzing::jwt(data);
});
