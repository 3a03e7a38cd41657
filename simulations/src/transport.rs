//! The byte stream under the Modbus codec of one simulated connection.
//!
//! tokio-modbus frames requests and responses itself, so a fault that corrupts bytes has to
//! live below it: the server's connect callback wraps each accepted socket in [`SimStream`],
//! which passes bytes through untouched unless its controller is in a `Garbage` fault, and
//! then sends noise in place of each response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::controller::Shared;

/// A Modbus TCP header is seven bytes: transaction, protocol, length, unit.
const MBAP_HEADER_LEN: usize = 7;

/// An accepted connection, with the controller it belongs to.
pub(crate) struct SimStream {
    io: TcpStream,
    shared: Arc<Shared>,
    /// Noise still to be sent in place of the response the codec handed us.
    junk: Vec<u8>,
    junk_sent: usize,
}

impl SimStream {
    pub(crate) fn new(io: TcpStream, shared: Arc<Shared>) -> SimStream {
        SimStream {
            io,
            shared,
            junk: Vec::new(),
            junk_sent: 0,
        }
    }
}

/// Random bytes the size of the real frame. The header is shaped on purpose: its length field
/// matches what follows, so the peer reads exactly one frame and then fails on the protocol id
/// at once, instead of waiting for a random length that never arrives.
fn noise(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    if len >= MBAP_HEADER_LEN {
        bytes[2] |= 0x80;
        let follows = u16::try_from(len - 6).unwrap_or(u16::MAX);
        bytes[4..6].copy_from_slice(&follows.to_be_bytes());
    }
    bytes
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.junk.is_empty() {
            if !this.shared.garbage_active(Instant::now()) {
                return Pin::new(&mut this.io).poll_write(cx, buf);
            }
            this.junk = noise(buf.len());
            this.junk_sent = 0;
        }
        // The whole noise frame goes out before we claim the caller's bytes as written, so a
        // partial write never leaves half a real frame behind it.
        while this.junk_sent < this.junk.len() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &this.junk[this.junk_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.junk_sent += n;
        }
        let replaced = this.junk.len();
        this.junk.clear();
        this.junk_sent = 0;
        Poll::Ready(Ok(replaced.min(buf.len())))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_one_frame_with_a_bad_protocol_id() {
        let n = noise(17);
        assert_eq!(n.len(), 17);
        assert_ne!(u16::from_be_bytes([n[2], n[3]]), 0);
        assert_eq!(u16::from_be_bytes([n[4], n[5]]), 11);
        assert_eq!(noise(3).len(), 3);
    }
}
