//! A WebSocket text frame from a client: `protocol::parse` answers a message or an error and
//! never panics; an error always has a code for the client.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = gatehouse_api::ws::protocol::parse(text) {
        assert!(!e.code.is_empty() && !e.message.is_empty());
    }
});
