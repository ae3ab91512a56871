//! The bytes of a connection before the WebSocket upgrade: hyper with the server's
//! limits and the server's router (Origin allow-list, dev auth, upgrade checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    messenger_server::fuzzing::http_request(data);
});
