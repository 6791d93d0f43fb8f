//! The hot loop: client frames in, routed by unit (one Query, or extended messages up to
//! Sync) to a backend; backend frames out to the client unchanged. No payload is copied:
//! whole frames are cut off the read buffers with `split_to(..).freeze()` and written as they are.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_lite::future::poll_once;
use futures_lite::AsyncRead;
use glommio::net::TcpStream;
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frontend::FrontendTag;
use pgpilot_protocol::{Header, ProtocolError};

use super::statements::Rewrite;
use super::Session;
use crate::backend::READ_CHUNK;
use crate::config::PoolMode;
use crate::error::Error;

/// Bytes asked of the kernel per client read.
const CLIENT_CHUNK: usize = 8 * 1024;
/// Bytes read on the stack when a client's buffer has been released.
const IDLE_READ: usize = 1024;
/// Largest single read, however big the frame being assembled.
const MAX_READ: usize = 256 * 1024;

/// What woke the session.
enum Event {
    Client(io::Result<usize>),
    Backend(io::Result<usize>),
    /// Everything queued for the backend has been written.
    Drained,
    Shutdown,
}

impl Session {
    /// Relays until the client leaves, the session fails, or shutdown ends an idle session.
    pub(super) async fn relay(&mut self) -> Result<(), Error> {
        loop {
            // The work after a wake-up is boxed: an idle session keeps only what `wait` needs.
            if !self.blocked && !Box::pin(self.pump_client()).await? {
                return Ok(());
            }
            match self.wait().await {
                Event::Client(Ok(0)) => return Ok(()),
                Event::Client(Ok(_)) => {}
                Event::Client(Err(e)) => return Err(Error::ClientIo(e)),
                Event::Backend(Ok(0)) => {
                    Box::pin(self.backend_lost(io::ErrorKind::UnexpectedEof.into())).await?
                }
                Event::Backend(Err(e)) => Box::pin(self.backend_lost(e)).await?,
                Event::Backend(Ok(_)) => Box::pin(self.pump_backend()).await?,
                Event::Drained => self.drained(),
                Event::Shutdown => {
                    let e = ErrorFields::fatal(
                        "57P01",
                        "terminating connection due to administrator command",
                    );
                    Box::pin(self.send_error(&e)).await;
                    return Ok(());
                }
            }
        }
    }

    /// Everything queued for the backend is written: if that was all it owed, the session may
    /// go on (and, in transaction mode, give the backend back), as after its last response.
    fn drained(&mut self) {
        let Some(att) = self.attached.as_ref() else {
            return;
        };
        if !att.is_idle() || !att.backend.rbuf.is_empty() {
            return;
        }
        self.blocked = false;
        if self.mode == PoolMode::Transaction && !self.pinned {
            self.release();
        }
    }

    /// Waits until the client or the attached backend has bytes, or shutdown begins while idle.
    async fn wait(&mut self) -> Event {
        if self.cbuf.is_empty() && self.cbuf.capacity() > 0 {
            // Everything read has been handled: give the memory back while the client is quiet.
            self.cbuf = BytesMut::new();
        }
        // While the backend has not taken what the client sent, the client waits: at most
        // `outbox::LIMIT` bytes queue up towards a backend.
        let read_client =
            !self.blocked && self.attached.as_ref().is_none_or(|a| !a.outbox.is_full());
        let idle = self.attached.as_ref().is_none_or(|a| a.is_idle());
        let (core, pid) = (&self.core, self.pid);
        let (client, cbuf, attached) = (&mut self.client, &mut self.cbuf, &mut self.attached);
        poll_fn(|cx| {
            if read_client {
                if let Poll::Ready(r) = poll_fill(client, cbuf, CLIENT_CHUNK, cx) {
                    return Poll::Ready(Event::Client(r));
                }
            }
            if let Some(att) = attached.as_mut() {
                // Writing to the backend and reading its results go on together.
                if !att.outbox.is_empty() {
                    match att.outbox.poll_drain(&mut att.backend.stream, cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Event::Drained),
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::Backend(Err(e))),
                        Poll::Pending => {}
                    }
                }
                if let Poll::Ready(r) = poll_fill(
                    &mut att.backend.stream,
                    &mut att.backend.rbuf,
                    READ_CHUNK,
                    cx,
                ) {
                    return Poll::Ready(Event::Backend(r));
                }
            }
            if idle {
                if core.shutting_down() {
                    return Poll::Ready(Event::Shutdown);
                }
                core.on_shutdown(pid, cx.waker());
            }
            Poll::Pending
        })
        .await
    }

    /// Acts on every whole client frame buffered. `Ok(false)`: the client said Terminate.
    async fn pump_client(&mut self) -> Result<bool, Error> {
        loop {
            let Some(h) = Header::peek(&self.cbuf, self.max_message).map_err(Error::Client)? else {
                return Ok(true);
            };
            if self.cbuf.len() < h.frame_len() {
                // Room for what is announced, but no more than one read at a time: a header
                // that claims 64 MiB must not cost 64 MiB before the bytes exist.
                self.cbuf
                    .reserve(h.frame_len().saturating_sub(self.cbuf.len()).min(MAX_READ));
                return Ok(true);
            }
            let tag = FrontendTag::from_byte(h.tag);
            match tag {
                Some(FrontendTag::Terminate) => return Ok(false),
                Some(FrontendTag::Password) => {
                    return Err(Error::Client(ProtocolError::Malformed {
                        tag: h.tag,
                        what: "password message after authentication",
                    }))
                }
                _ => {}
            }
            if self.skip_until_sync {
                let _ = self.cbuf.split_to(h.frame_len());
                if tag == Some(FrontendTag::Sync) {
                    self.skip_until_sync = false;
                    encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
                    self.flush_out().await?;
                }
                continue;
            }
            if !self.pump_unit(tag).await? {
                return Ok(true);
            }
        }
    }

    /// Routes and forwards the unit at the front of the buffer, whose first message has `tag`
    /// (`None`: unknown, refused by `scan_unit`). `Ok(false)`: wait for the backend.
    async fn pump_unit(&mut self, tag: Option<FrontendTag>) -> Result<bool, Error> {
        use FrontendTag as F;
        let mid_unit = self.attached.as_ref().is_some_and(|a| a.unsynced);
        if matches!(tag, Some(F::CopyData | F::CopyDone | F::CopyFail)) && !mid_unit {
            // Copy data flows to the backend running COPY; outside COPY PostgreSQL ignores it.
            let len = Header::peek(&self.cbuf, self.max_message)
                .ok()
                .flatten()
                .map_or(0, |h| h.frame_len());
            if self.attached.is_some() {
                self.forward(len, 0, false).await?;
            } else {
                let _ = self.cbuf.split_to(len);
            }
            return Ok(true);
        }
        let mut unit = self.scan_unit()?;
        if unit.len == 0 {
            return Ok(true);
        }
        // A unit the proxy answers itself waits until the backend has answered everything
        // before it: the client must get its responses in order, and never inside a long row
        // that is still streaming.
        let dealloc = match tag {
            Some(F::Query) => self.local_deallocate(&unit),
            _ => None,
        };
        let local = unit.refused || unit.over_limit || dealloc.is_some();
        let owed = self
            .attached
            .as_ref()
            .is_some_and(|a| a.pending > 0 || a.streaming > 0);
        if local && owed {
            self.blocked = true;
            return Ok(false);
        }
        if unit.refused {
            let e = ErrorFields::error(
                "25006",
                "a pgpilot:replica hint on a statement that may write is refused",
            );
            self.drop_unit(&unit, &e).await?;
            return Ok(true);
        }
        if unit.over_limit {
            let e = ErrorFields::error(
                "53400",
                format!(
                    "too many prepared statements in this session (routing.max_client_statements = {}); close some first",
                    self.core.config.routing.max_client_statements
                ),
            );
            self.drop_unit(&unit, &e).await?;
            return Ok(true);
        }
        if let Some(which) = dealloc {
            self.answer_deallocate(&unit, which).await?;
            return Ok(true);
        }
        if self.mode == PoolMode::Transaction
            && self.attached.is_none()
            && self.hold_begin(&mut unit).await?
        {
            return Ok(true);
        }
        let Some(att) = self.attached.as_ref() else {
            if let Some(parses) = self.only_named_parses(&unit) {
                // A lone Sync (parses = 0), or PQprepare's Parse + Sync of named statements:
                // nothing to run; the statements are prepared lazily where they are used.
                let _ = self.cbuf.split_to(unit.len);
                for _ in 0..parses {
                    encode::parse_complete(&mut self.out);
                }
                encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
                self.flush_out().await?;
                return Ok(true);
            }
            // Boxed: the connect path is deep, and every idle session would carry its size.
            if let Err(e) = Box::pin(self.attach(unit.target)).await {
                self.fail_unit(&unit, e).await?;
                return Ok(true);
            }
            self.flush_out().await?;
            self.note_effect(&mut unit);
            return self
                .forward(unit.len, unit.rfqs, !unit.complete)
                .await
                .map(|()| true);
        };
        let free = !mid_unit && !self.pinned && att.status == TransactionStatus::Idle;
        let must_move = free && att.on_replica && unit.target == Target::Primary;
        // Session mode holds its primary; an autocommit read moves to a replica when the
        // primary is idle (in transaction mode an idle backend has been released already).
        let may_move = free
            && self.mode == PoolMode::Session
            && !att.on_replica
            && unit.target == Target::Replica
            && att.is_idle();
        if must_move || may_move {
            if att.is_idle() {
                if self.mode == PoolMode::Session {
                    self.switch_held(unit.target).await;
                } else {
                    self.release();
                }
                return Ok(true);
            }
            self.blocked = true;
            return Ok(false);
        }
        self.note_effect(&mut unit);
        self.forward(unit.len, unit.rfqs, !unit.complete).await?;
        Ok(true)
    }

    /// Sends the first `len` buffered client bytes to the attached backend.
    /// In transaction mode, named statements are rewritten for this backend on the way.
    async fn forward(&mut self, len: usize, rfqs: u32, unsynced: bool) -> Result<(), Error> {
        let mut batch = self.cbuf.split_to(len).freeze();
        let Some(att) = self.attached.as_mut() else {
            return Ok(());
        };
        att.pending = att.pending.saturating_add(rfqs);
        if rfqs > 0 || unsynced {
            att.unsynced = unsynced;
        }
        {
            let mut rw = Rewrite {
                cap: self.core.config.routing.max_prepared_statements,
                prepared: &mut att.backend.prepared,
                slots: &mut att.slots,
                skipping: &mut att.skipping,
                copy_in: &mut att.copy_in,
                ignored_syncs: 0,
            };
            batch = rw.unit(batch, &mut self.statements);
            att.pending = att.pending.saturating_sub(rw.ignored_syncs);
        }
        log::trace!(
            "session={} -> backend {}: {:?} pending={} slots={:?} queued={}",
            self.pid,
            att.backend.key.0,
            super::tags(&batch),
            att.pending,
            att.slots,
            att.outbox.len()
        );
        att.outbox.push(batch);
        // Most writes go through at once; what the socket does not take now, `wait` writes
        // while it reads the backend's results.
        let (outbox, stream) = (&mut att.outbox, &mut att.backend.stream);
        if let Some(Err(e)) = poll_once(poll_fn(|cx| outbox.poll_drain(stream, cx))).await {
            return self.backend_lost(e).await;
        }
        self.answer_fakes().await
    }
}

/// Reads what the socket has into the spare room of `buf` (at least `chunk` bytes of room).
fn poll_fill(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    chunk: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        // An idle client holds no buffer: read the first bytes on the stack and allocate only
        // what arrived.
        let mut first = [0u8; IDLE_READ];
        let result = Pin::new(stream).poll_read(cx, &mut first);
        if let Poll::Ready(Ok(n)) = result {
            buf.extend_from_slice(first.get(..n).unwrap_or_default());
        }
        return result;
    }
    // Lengths of one buffer: len <= capacity, and the reads fill at most the room past len.
    let start = buf.len();
    if buf.capacity().saturating_sub(start) < chunk {
        buf.reserve(chunk);
    }
    let room = buf.capacity().saturating_sub(start).min(MAX_READ);
    buf.resize(start.saturating_add(room), 0);
    let result = Pin::new(stream).poll_read(cx, buf.get_mut(start..).unwrap_or_default());
    let n = match &result {
        Poll::Ready(Ok(n)) => *n,
        _ => 0,
    };
    buf.truncate(start.saturating_add(n));
    result
}
