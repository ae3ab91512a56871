//! The server's client-frame decoder: any text gives a request or a clear error, and a
//! decoded request encodes back to a frame that decodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_core::protocol::decode_client;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_client(text) {
        Ok(req) => {
            let again = req.frame.encode(req.req_id.as_ref());
            let back = decode_client(&again).expect("a decoded frame re-encodes to a valid one");
            assert_eq!(back.frame.encode(back.req_id.as_ref()), again);
        }
        Err(e) => assert!(!e.code.is_empty() && !e.message.is_empty()),
    }
});
