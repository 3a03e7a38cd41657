//! A layer under tokio-modbus's TCP codec that drops late replies.
//!
//! When a request times out and the link asks again, the controller may still answer the
//! first request, late. tokio-modbus reads the next frame on the socket as the answer to its
//! latest request, sees another transaction id, and reports an error for a reply that is
//! merely late. This layer sits between the socket and the codec: it notes the transaction
//! id of every request written, cuts the byte stream read into MBAP frames (each says its own
//! length), and passes on only the frame for the latest request. Anything it cannot frame (a
//! non-zero protocol id, an impossible length) is passed through untouched, so that the codec
//! still reports garbage as garbage.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The MBAP header before the length's bytes: transaction id (2), protocol id (2), length (2).
const HEADER: usize = 6;
/// The largest MBAP length field (unit id + a 253-byte PDU).
const MAX_LENGTH: usize = 254;

/// The filtering stream.
pub struct LateReplies<S> {
    inner: S,
    /// The transaction id of the latest request written.
    expected: Option<u16>,
    /// The request being written: its header bytes so far and how many bytes remain.
    writing: [u8; HEADER],
    written_in_frame: usize,
    frame_left: usize,
    /// Bytes read from the socket not yet framed.
    unframed: Vec<u8>,
    /// Frames for the latest request, waiting to be read by the codec.
    passed: Vec<u8>,
    /// Replies dropped because they answered an earlier request.
    dropped: u64,
}

impl<S> LateReplies<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            expected: None,
            writing: [0; HEADER],
            written_in_frame: 0,
            frame_left: 0,
            unframed: Vec::new(),
            passed: Vec::new(),
            dropped: 0,
        }
    }

    /// Late replies dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Follows the request bytes the socket accepted, to learn each request's transaction id.
    fn track_written(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.frame_left > 0 {
                self.frame_left -= 1;
                continue;
            }
            self.writing[self.written_in_frame] = b;
            self.written_in_frame += 1;
            if self.written_in_frame == 2 {
                // A new request: whatever of an older answer is still waiting is stale.
                self.expected = Some(u16::from_be_bytes([self.writing[0], self.writing[1]]));
                self.passed.clear();
            }
            if self.written_in_frame == HEADER {
                self.frame_left =
                    usize::from(u16::from_be_bytes([self.writing[4], self.writing[5]]));
                self.written_in_frame = 0;
            }
        }
    }

    /// Moves every complete frame out of `unframed`: the latest request's to `passed`, the
    /// others dropped. `eof`: nothing more will come, so a partial frame is passed on for
    /// the codec to judge.
    fn frame(&mut self, eof: bool) {
        loop {
            if self.unframed.len() < HEADER {
                break;
            }
            let protocol = u16::from_be_bytes([self.unframed[2], self.unframed[3]]);
            let length = usize::from(u16::from_be_bytes([self.unframed[4], self.unframed[5]]));
            if protocol != 0 || length == 0 || length > MAX_LENGTH {
                // Not a frame we can cut: the codec reports it.
                self.passed.append(&mut self.unframed);
                return;
            }
            let total = HEADER + length;
            if self.unframed.len() < total {
                break;
            }
            let transaction = u16::from_be_bytes([self.unframed[0], self.unframed[1]]);
            let frame: Vec<u8> = self.unframed.drain(..total).collect();
            if Some(transaction) == self.expected {
                self.passed.extend_from_slice(&frame);
            } else {
                self.dropped += 1;
                tracing::debug!(transaction, expected = ?self.expected, "a late Modbus reply was dropped");
            }
        }
        if eof {
            self.passed.append(&mut self.unframed);
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for LateReplies<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LateReplies")
            .field("inner", &self.inner)
            .field("expected", &self.expected)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LateReplies<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.passed.is_empty() {
                let n = this.passed.len().min(buf.remaining());
                buf.put_slice(&this.passed[..n]);
                this.passed.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 512];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = read.filled();
                    if got.is_empty() {
                        // End of stream: hand over what is left, then report the end.
                        this.frame(true);
                        if this.passed.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.unframed.extend_from_slice(got);
                    this.frame(false);
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LateReplies<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.track_written(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    fn frame(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = transaction.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        f.push(unit);
        f.extend_from_slice(pdu);
        f
    }

    #[tokio::test]
    async fn only_the_reply_to_the_latest_request_gets_through() {
        let (client, mut server) = duplex(1024);
        let mut filtered = LateReplies::new(client);
        // Two requests: 7 timed out, 8 is the retry.
        filtered
            .write_all(&frame(7, 1, &[3, 0, 0, 0, 1]))
            .await
            .unwrap();
        filtered
            .write_all(&frame(8, 1, &[3, 0, 0, 0, 1]))
            .await
            .unwrap();
        let mut sink = [0u8; 24];
        server.read_exact(&mut sink).await.unwrap();
        // The late answer to 7 arrives first, split across writes, then 8's.
        let late = frame(7, 1, &[3, 2, 0, 16]);
        let fresh = frame(8, 1, &[3, 2, 0, 17]);
        server.write_all(&late[..4]).await.unwrap();
        server.write_all(&late[4..]).await.unwrap();
        server.write_all(&fresh).await.unwrap();
        let mut got = vec![0u8; fresh.len()];
        filtered.read_exact(&mut got).await.unwrap();
        assert_eq!(got, fresh);
        assert_eq!(filtered.dropped(), 1);
    }

    #[tokio::test]
    async fn what_cannot_be_framed_is_passed_through_for_the_codec_to_refuse() {
        let (client, mut server) = duplex(1024);
        let mut filtered = LateReplies::new(client);
        filtered
            .write_all(&frame(1, 1, &[3, 0, 0, 0, 1]))
            .await
            .unwrap();
        let garbage = [0xde, 0xad, 0xbe, 0xef, 0x00, 0x10, 0x42];
        server.write_all(&garbage).await.unwrap();
        let mut got = [0u8; 7];
        filtered.read_exact(&mut got).await.unwrap();
        assert_eq!(got, garbage);
    }

    #[tokio::test]
    async fn a_new_request_discards_an_undelivered_older_answer() {
        let (client, mut server) = duplex(1024);
        let mut filtered = LateReplies::new(client);
        filtered
            .write_all(&frame(1, 1, &[3, 0, 0, 0, 1]))
            .await
            .unwrap();
        server
            .write_all(&frame(1, 1, &[3, 2, 0, 16]))
            .await
            .unwrap();
        // Part of 1's answer is read (the codec's timeout fires meanwhile)...
        let mut part = [0u8; 3];
        filtered.read_exact(&mut part).await.unwrap();
        // ...and request 2 is written: the rest of 1's answer must not reach the codec.
        filtered
            .write_all(&frame(2, 1, &[3, 0, 0, 0, 1]))
            .await
            .unwrap();
        let fresh = frame(2, 1, &[3, 2, 0, 17]);
        server.write_all(&fresh).await.unwrap();
        let mut got = vec![0u8; fresh.len()];
        filtered.read_exact(&mut got).await.unwrap();
        assert_eq!(got, fresh);
    }
}
