//! Socket halves with at most one operation in flight each, for the shell.
//!
//! With completion-based I/O the buffer belongs to the kernel until the operation completes,
//! and an operation that is dropped is cancelled and its bytes lost. So a read that is waiting
//! when something else wakes the session must stay in flight: a [`Half`] keeps the operation
//! (which owns the socket half and the buffer) across the shell's waits and gives both back
//! when it completes.

use std::future::Future;
use std::io;
use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf,
};
use monoio::net::TcpStream;
use rustls::ConnectionCommon;

type Op<H, T> = Pin<Box<dyn Future<Output = (H, T)>>>;

/// One half of a socket: idle, or with one operation in flight that owns it.
pub(super) struct Half<H, T> {
    idle: Option<H>,
    busy: Option<Op<H, T>>,
}

/// What a read gives back: the result and the buffer, bytes appended.
pub(super) type ReadResult = (io::Result<usize>, BytesMut);

/// The read side of a socket.
pub(super) type Reader = Half<OwnedReadHalf<TcpStream>, ReadResult>;
/// The write side of a socket, writing one chunk at a time.
pub(super) type Writer = Half<OwnedWriteHalf<TcpStream>, io::Result<usize>>;

impl<H: 'static, T: 'static> Half<H, T> {
    pub(super) fn new(half: H) -> Self {
        Half {
            idle: Some(half),
            busy: None,
        }
    }

    /// Whether an operation is in flight.
    pub(super) fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Starts an operation on the idle half; does nothing while one is in flight.
    fn start<F>(&mut self, op: impl FnOnce(H) -> F)
    where
        F: Future<Output = (H, T)> + 'static,
    {
        if let Some(half) = self.idle.take() {
            self.busy = Some(Box::pin(op(half)));
        }
    }

    /// Polls the operation in flight; once it completes the half is idle again.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        let Some(op) = self.busy.as_mut() else {
            return Poll::Pending;
        };
        match op.as_mut().poll(cx) {
            Poll::Ready((half, out)) => {
                self.busy = None;
                self.idle = Some(half);
                Poll::Ready(out)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for the operation in flight, if any; `None` if there was none.
    pub(super) async fn settle(&mut self) -> Option<T> {
        if !self.is_busy() {
            return None;
        }
        Some(std::future::poll_fn(|cx| self.poll(cx)).await)
    }

    /// The half, once nothing is in flight.
    pub(super) fn into_idle(self) -> Option<H> {
        self.idle
    }
}

impl Reader {
    /// Starts reading into the spare room of `buf` (which the read owns meanwhile): the bytes
    /// are appended to what `buf` holds.
    pub(super) fn start_read(&mut self, buf: BytesMut) {
        self.start(|mut half| async move {
            let len = buf.len();
            let (res, spare) = half.read(buf.slice_mut(len..)).await;
            (half, (res, spare.into_inner()))
        });
    }

    /// Like [`Reader::start_read`], cancellable through `cancel` (a backend read the shell
    /// may have to call off to give the backend back).
    pub(super) fn start_cancelable_read(&mut self, buf: BytesMut, cancel: CancelHandle) {
        self.start(|mut half| async move {
            let len = buf.len();
            let (res, spare) = half.cancelable_read(buf.slice_mut(len..), cancel).await;
            (half, (res, spare.into_inner()))
        });
    }
}

impl Writer {
    /// Starts writing all of `bytes`.
    pub(super) fn start_write(&mut self, bytes: Bytes) {
        self.start(|mut half| async move {
            let (res, _) = half.write_all(bytes).await;
            (half, res)
        });
    }
}

/// The smallest read of ciphertext.
const MIN_CIPHER_READ: usize = 512;

/// A TLS session over a socket's halves, for the shell: a read brings ciphertext, opened into
/// the caller's buffer (kept here meanwhile); a chunk is sealed before it is written.
pub(super) struct Sealed<C> {
    pub(super) conn: C,
    /// The caller's read buffer, while a read of ciphertext is in flight.
    plain: Option<BytesMut>,
    /// The ciphertext buffer, between reads.
    cipher: Option<BytesMut>,
    /// The plaintext length of the chunk being written.
    sealed: usize,
    /// Why the last chunk could not be sealed (reported as the write's outcome).
    pub(super) failed: Option<io::Error>,
}

impl<C, D> Sealed<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
{
    pub(super) fn new(conn: C) -> Self {
        Sealed {
            conn,
            plain: None,
            cipher: None,
            sealed: 0,
            failed: None,
        }
    }

    /// Keeps `plain` and gives the buffer the next read of ciphertext goes into, as roomy as
    /// `plain`'s spare room: an idle client's small read stays small (a record that does not
    /// fit comes in several reads), a busy one's reads stay large.
    pub(super) fn read_into(&mut self, plain: BytesMut) -> BytesMut {
        let want = plain
            .capacity()
            .saturating_sub(plain.len())
            .max(MIN_CIPHER_READ);
        self.plain = Some(plain);
        match self.cipher.take() {
            Some(cipher)
                if cipher.capacity() >= want && cipher.capacity() <= want.saturating_mul(2) =>
            {
                cipher
            }
            _ => BytesMut::with_capacity(want),
        }
    }

    /// A read of ciphertext completed: the outcome for the caller (its buffer, with the
    /// plaintext appended), or the ciphertext buffer back when only part of a record came and
    /// the read must go on.
    pub(super) fn opened(
        &mut self,
        res: io::Result<usize>,
        mut cipher: BytesMut,
    ) -> Result<ReadResult, BytesMut> {
        let mut plain = self.plain.take().unwrap_or_default();
        match res {
            Ok(0) => return Ok((Ok(0), plain)),
            Err(e) => return Ok((Err(e), plain)),
            Ok(_) => {}
        }
        let before = plain.len();
        let opened = crate::tls::open(&mut self.conn, &cipher, &mut plain);
        cipher.clear();
        let got = plain.len().saturating_sub(before);
        match opened {
            Err(e) => Ok((Err(e), plain)),
            Ok(_) if got > 0 => {
                self.cipher = Some(cipher);
                Ok((Ok(got), plain))
            }
            // close_notify: as good as the end of the connection.
            Ok(true) => Ok((Ok(0), plain)),
            Ok(false) => {
                self.plain = Some(plain);
                Err(cipher)
            }
        }
    }

    /// The records to write for `chunk`; `None` if it could not be sealed (the failure is kept
    /// as the write's outcome).
    pub(super) fn seal(&mut self, chunk: &[u8]) -> Option<Bytes> {
        match crate::tls::seal(&mut self.conn, chunk) {
            Ok(sealed) => {
                self.sealed = chunk.len();
                Some(Bytes::from(sealed))
            }
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }

    /// The outcome of a write of sealed records, in plaintext bytes.
    pub(super) fn written(&self, res: io::Result<usize>) -> io::Result<usize> {
        res.map(|_| self.sealed)
    }

    /// A read that was called off: the caller's buffer back, unless ciphertext had come.
    pub(super) fn cancelled(&mut self, cipher: &BytesMut) -> Option<BytesMut> {
        if cipher.is_empty() {
            Some(self.plain.take().unwrap_or_default())
        } else {
            None
        }
    }
}

impl Reader {
    /// Polls a read over TLS: ciphertext is opened into the caller's buffer, and a read that
    /// brought only part of a record goes on (cancellable through `cancel` if given).
    pub(super) fn poll_sealed<C, D>(
        &mut self,
        tls: &mut Sealed<C>,
        cancel: Option<&monoio::io::Canceller>,
        cx: &mut Context<'_>,
    ) -> Poll<ReadResult>
    where
        C: DerefMut<Target = ConnectionCommon<D>>,
    {
        loop {
            let Poll::Ready((res, cipher)) = self.poll(cx) else {
                return Poll::Pending;
            };
            match tls.opened(res, cipher) {
                Ok(out) => return Poll::Ready(out),
                Err(cipher) => match cancel {
                    Some(c) => self.start_cancelable_read(cipher, c.handle()),
                    None => self.start_read(cipher),
                },
            }
        }
    }
}
