//! The byte stream under an RTU client: discards whatever is waiting on the line before each
//! request goes out.
//!
//! An RTU reply carries no transaction id; only its unit and function tie it to a request.
//! A reply that arrives after its request timed out (a slow gateway, a unit that answers
//! late) would otherwise sit in the socket or the UART's buffer and be read as the answer to
//! the next request. tokio-modbus clears its own read buffer before each request; this layer
//! does the same for the bytes below it, so a request only ever reads what arrived after it
//! was sent. Line noise between transactions goes the same way.
//!
//! A request is recognised as the first write after a completed flush: tokio-modbus writes
//! a whole frame and flushes it before it reads the reply.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Any byte stream (a TCP connection to a serial gateway, a serial port) with stale input
/// drained before each request.
#[derive(Debug)]
pub struct QuietLine<S> {
    io: S,
    /// The next write starts a new request.
    at_request_start: bool,
    /// Bytes discarded so far (for the log).
    discarded: u64,
}

impl<S> QuietLine<S> {
    pub fn new(io: S) -> QuietLine<S> {
        QuietLine {
            io,
            at_request_start: true,
            discarded: 0,
        }
    }

    /// How many stale bytes were discarded over the connection's life.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }
}

impl<S: AsyncRead + Unpin> QuietLine<S> {
    /// Reads and drops everything the line has ready now, without waiting for more. An
    /// error or the end of the stream is left for the reply's read to find.
    fn drain(&mut self, cx: &mut Context<'_>) {
        let mut scratch = [0u8; 256];
        let mut dropped = 0u64;
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    dropped += buf.filled().len() as u64;
                }
                // End of stream, an error, or nothing more waiting.
                Poll::Ready(_) | Poll::Pending => break,
            }
        }
        if dropped > 0 {
            self.discarded += dropped;
            tracing::debug!(
                bytes = dropped,
                "discarded stale bytes on the line before a request (a late reply or noise)"
            );
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for QuietLine<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for QuietLine<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.at_request_start {
            this.drain(cx);
            this.at_request_start = false;
        }
        Pin::new(&mut this.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            this.at_request_start = true;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn bytes_waiting_before_a_request_are_dropped_and_the_reply_is_kept() {
        let (near, mut far) = duplex(1024);
        let mut line = QuietLine::new(near);
        // A late reply to an earlier request is already waiting.
        far.write_all(&[0x01, 0x03, 0x02, 0xAA, 0xBB])
            .await
            .unwrap();
        line.write_all(&[0x01, 0x03, 0x00, 0x00]).await.unwrap();
        line.flush().await.unwrap();
        let mut request = [0u8; 4];
        far.read_exact(&mut request).await.unwrap();
        assert_eq!(
            request,
            [0x01, 0x03, 0x00, 0x00],
            "the request went out whole"
        );
        far.write_all(&[0x01, 0x03, 0x02, 0x00, 0x07])
            .await
            .unwrap();
        let mut reply = [0u8; 5];
        line.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            reply,
            [0x01, 0x03, 0x02, 0x00, 0x07],
            "only the fresh reply is read"
        );
        assert_eq!(line.discarded(), 5);

        // The next request drains again, and nothing else is lost: one stale byte.
        far.write_all(&[0xFF]).await.unwrap();
        line.write_all(&[0x02]).await.unwrap();
        line.flush().await.unwrap();
        assert_eq!(line.discarded(), 6);
    }

    #[tokio::test]
    async fn a_frame_written_in_pieces_is_one_request() {
        let (near, mut far) = duplex(1024);
        let mut line = QuietLine::new(near);
        line.write_all(&[0x01, 0x06]).await.unwrap();
        // The far side answers before the request is flushed (it cannot in practice, but
        // bytes arriving mid-frame must not be dropped by a second drain).
        far.write_all(&[0x42]).await.unwrap();
        line.write_all(&[0x00, 0x10]).await.unwrap();
        line.flush().await.unwrap();
        let mut got = [0u8; 1];
        line.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x42]);
        assert_eq!(line.discarded(), 0);
    }
}
