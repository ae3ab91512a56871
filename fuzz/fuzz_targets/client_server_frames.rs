//! The SDK's handling of server frames: one frame per line, fed to a connected client;
//! it must not panic and must emit each thread's messages in increasing seq order.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    messenger_client::fuzzing::server_texts(text.lines());
});
