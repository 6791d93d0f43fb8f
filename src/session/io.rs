//! Socket halves with at most one operation in flight each, for the shell.
//!
//! With completion-based I/O the buffer belongs to the kernel until the operation completes,
//! and an operation that is dropped is cancelled and its bytes lost. So a read that is waiting
//! when something else wakes the session must stay in flight: a [`Half`] keeps the operation
//! (which owns the socket half and the buffer) across the shell's waits and gives both back
//! when it completes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf,
};
use monoio::net::TcpStream;

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
