//! Client bytes on their way to a backend, written as fast as the backend takes them while the
//! relay goes on reading the backend's results.
//!
//! Writing a large unit with one blocking write would deadlock: the backend answers the first
//! statements while the rest is still being written, and once its results fill the socket
//! buffers towards the proxy it stops reading, so the write never ends. The outbox holds the
//! frames (shared `Bytes`, no copy) and the shell writes them one by one while its read of the
//! backend stays in flight. The relay stops reading the client while the outbox holds more
//! than [`LIMIT`], so a session buffers at most that much towards its backend.

use std::collections::VecDeque;

use bytes::Bytes;

/// Bytes an outbox may hold before the relay stops reading its client.
pub(super) const LIMIT: usize = 256 * 1024;

/// Frames not yet written to a backend, in order; the one being written still counts.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    queue: VecDeque<Bytes>,
    /// Bytes queued or being written.
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

    /// Bytes waiting or being written.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Nothing waits and nothing is being written.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the relay should stop reading the client until the backend catches up.
    pub(super) fn is_full(&self) -> bool {
        self.len > LIMIT
    }

    /// The next bytes to write, taken off the queue; they count until [`Outbox::written`].
    pub(super) fn next_chunk(&mut self) -> Option<Bytes> {
        self.queue.pop_front()
    }

    /// `n` bytes of the chunk being written reached the socket.
    pub(super) fn written(&mut self, n: usize) {
        self.len = self.len.saturating_sub(n);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_go_out_in_order_and_count_until_written() {
        let mut out = Outbox::default();
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::new());
        out.push(Bytes::from_static(b"defgh"));
        assert_eq!(out.len(), 8);
        let first = out.next_chunk().expect("a chunk");
        assert_eq!(&first[..], b"abc");
        assert_eq!(out.len(), 8, "a chunk being written still counts");
        out.written(first.len());
        assert_eq!(out.len(), 5);
        let second = out.next_chunk().expect("the empty one was never queued");
        assert_eq!(&second[..], b"defgh");
        out.written(second.len());
        assert!(out.is_empty() && out.next_chunk().is_none());
        out.push(Bytes::from(vec![0u8; LIMIT + 1]));
        assert!(out.is_full());
    }
}
