//! WebSocket frames that no well-behaved client library produces, written byte by byte on a
//! raw TCP connection: each must be answered with RFC 6455's close code for it (1002 protocol
//! error, 1007 invalid data), not the 1000 of a normal goodbye, so that a client author can tell
//! their bug from the server's farewell.

use std::time::Duration;

use gatehouse_tests::rig::Rig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(10);
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A WebSocket connection past its opening handshake.
async fn upgraded(rig: &Rig) -> TcpStream {
    let mut stream = TcpStream::connect(rig.stack.addr).await.expect("connects");
    let request = format!(
        "GET /api/v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: gatehouse.v1\r\n\r\n",
        rig.stack.addr
    );
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(BOUND, stream.read(&mut byte))
            .await
            .expect("the handshake is answered in time")
            .expect("reads");
        assert_eq!(n, 1, "the server hung up during the handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// One frame: `first` is FIN, RSV and opcode; masked with [`MASK`] unless `mask` is false.
fn frame(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    if mask {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until a close; its code (`None`: the connection ended without one).
async fn close_code(stream: &mut TcpStream) -> Option<u16> {
    loop {
        let mut head = [0u8; 2];
        if tokio::time::timeout(BOUND, stream.read_exact(&mut head))
            .await
            .expect("the server answers in time")
            .is_err()
        {
            return None;
        }
        let opcode = head[0] & 0x0f;
        assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                stream.read_exact(&mut ext).await.ok()?;
                u64::from(u16::from_be_bytes(ext))
            }
            127 => {
                let mut ext = [0u8; 8];
                stream.read_exact(&mut ext).await.ok()?;
                u64::from_be_bytes(ext)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.ok()?;
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

async fn answer_to(rig: &Rig, bytes: &[u8]) -> Option<u16> {
    let mut stream = upgraded(rig).await;
    stream.write_all(bytes).await.expect("sends the frame");
    close_code(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_break_rfc_6455_get_its_close_codes_and_a_goodbye_gets_1000() {
    let rig = Rig::start().await;
    let ping = br#"{"type":"ping"}"#;
    let cases: [(&str, Vec<u8>, u16); 7] = [
        ("an unmasked client frame", frame(0x81, ping, false), 1002),
        ("a reserved bit set", frame(0x81 | 0x40, ping, true), 1002),
        ("an orphan continuation", frame(0x80, ping, true), 1002),
        (
            "a control frame over 125 bytes",
            frame(0x89, &[b'x'; 126], true),
            1002,
        ),
        ("a fragmented control frame", frame(0x09, b"p", true), 1002),
        ("an unknown opcode", frame(0x83, ping, true), 1002),
        (
            "a text frame that is not UTF-8",
            frame(0x81, &[0xff, 0xfe, 0x7b], true),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        assert_eq!(answer_to(&rig, &bytes).await, Some(code), "{what}");
    }
    // A client's normal close is still answered with 1000.
    let goodbye = frame(0x88, &1000u16.to_be_bytes(), true);
    assert_eq!(
        answer_to(&rig, &goodbye).await,
        Some(1000),
        "a normal close"
    );
    // And a well-formed frame still works on the same kind of connection.
    let mut stream = upgraded(&rig).await;
    stream
        .write_all(&frame(0x81, ping, true))
        .await
        .expect("sends");
    let mut head = [0u8; 2];
    tokio::time::timeout(BOUND, stream.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("reads");
    assert_eq!(
        head[0] & 0x0f,
        0x1,
        "a text answer (an error: auth comes first)"
    );
    rig.stop().await;
}
