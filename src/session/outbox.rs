//! Client bytes on their way to a backend, written as fast as the backend takes them while the
//! relay goes on reading the backend's results.
//!
//! Writing a large unit with one blocking write would deadlock: the backend answers the first
//! statements while the rest is still being written, and once its results fill the socket
//! buffers towards the proxy it stops reading, so the write never ends. The outbox holds the
//! frames (shared `Bytes`, no copy) and the relay's wait polls it beside the reads. The relay
//! stops reading the client while the outbox holds more than [`LIMIT`], so a session buffers
//! at most that much towards its backend.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_lite::AsyncWrite;

/// Bytes an outbox may hold before the relay stops reading its client.
pub(super) const LIMIT: usize = 256 * 1024;

/// Frames not yet written to a backend, in order.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    queue: VecDeque<Bytes>,
    len: usize,
}

impl Outbox {
    /// Queues bytes behind those already waiting.
    pub(super) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len = self.len.saturating_add(bytes.len());
            self.queue.push_back(bytes);
        }
    }

    /// Bytes waiting.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the relay should stop reading the client until the backend catches up.
    pub(super) fn is_full(&self) -> bool {
        self.len > LIMIT
    }

    /// Everything queued, in one buffer (copied: for the scripted backend, not the data path).
    pub(super) fn take_all(&mut self) -> bytes::BytesMut {
        let mut all = bytes::BytesMut::with_capacity(self.len);
        for chunk in self.queue.drain(..) {
            all.extend_from_slice(&chunk);
        }
        self.len = 0;
        all
    }

    /// Writes what the socket takes: `Ready(Ok(()))` once everything is written, `Pending`
    /// (with the waker registered) while the socket is full; bytes written so far stay
    /// written.
    pub(super) fn poll_drain(
        &mut self,
        stream: &mut (impl AsyncWrite + Unpin),
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while let Some(front) = self.queue.front_mut() {
            match Pin::new(&mut *stream).poll_write(cx, front) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    let n = n.min(front.len());
                    front.advance(n);
                    // `len` counts the queued bytes, `front`'s among them.
                    self.len = self.len.saturating_sub(n);
                    if front.is_empty() {
                        self.queue.pop_front();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes `room` bytes per call and then is full until `room` is raised.
    struct Narrow {
        got: Vec<u8>,
        room: usize,
    }

    impl AsyncWrite for Narrow {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.room == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend(buf.iter().take(n));
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn drains_in_order_across_partial_writes_and_full_sockets() {
        let mut out = Outbox::default();
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::new());
        out.push(Bytes::from_static(b"defgh"));
        assert_eq!(out.len(), 8);
        let mut sock = Narrow {
            got: Vec::new(),
            room: 4,
        };
        let waker = futures_lite::future::block_on(std::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        assert!(out.poll_drain(&mut sock, &mut cx).is_pending());
        assert_eq!((sock.got.as_slice(), out.len()), (&b"abcd"[..], 4));
        sock.room = 100;
        assert!(matches!(
            out.poll_drain(&mut sock, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(sock.got, b"abcdefgh");
        assert!(out.is_empty() && !out.is_full());
        out.push(Bytes::from(vec![0u8; LIMIT + 1]));
        assert!(out.is_full());
    }
}
