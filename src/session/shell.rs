//! The I/O around one session's core: the client socket, the attached backend's socket, and
//! the pools. It reads into the core's buffers, writes what the core queues, and does what the
//! core asks for ([`Pump`], [`Action`]); every decision is the core's.

use std::future::poll_fn;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future::poll_once;
use futures_lite::{AsyncRead, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use pgpilot_protocol::encode::{self, ErrorFields};

use super::{Action, Pump, Reset, Session};
use crate::backend::{Backend, Conn, Wire, READ_CHUNK};
use crate::core::Core;
use crate::error::Error;
use crate::pool::Pool;

/// Bytes asked of the kernel per client read.
const CLIENT_CHUNK: usize = 8 * 1024;
/// Bytes read on the stack when a client's buffer has been released.
const IDLE_READ: usize = 1024;
/// How long a session that panicked may take to tell its client so.
const PANIC_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the shell keeps of an attached backend: its socket and the pool it goes back to.
pub(super) struct Held {
    pub(super) conn: Conn,
    pub(super) pool: Rc<Pool>,
}

/// One client connection: its socket and the session core deciding what to do with its bytes.
pub(super) struct Client {
    pub(super) stream: TcpStream,
    pub(super) session: Session<Held>,
    /// Released last, when the client is dropped (also by a panic unwinding it).
    pub(super) _admission: Admission,
}

/// What a client holds in its core from admission on: its place in `max_client_connections`
/// and, once it has a BackendKeyData, its cancel registry entry. Dropping it gives both back,
/// however the session ends; a panic included.
pub(super) struct Admission {
    pub(super) core: Rc<Core>,
    pub(super) pid: Option<u32>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            self.core.unregister_session(pid);
        }
        self.core.release_client();
    }
}

/// What woke the session.
enum Event {
    Client(io::Result<usize>),
    Backend(io::Result<usize>),
    /// Everything queued for the backend has been written.
    Drained,
    Shutdown,
}

/// Serves one accepted client until it leaves.
///
/// Not an `async fn`: its arguments would stay in the task's future for the session's whole
/// life. They move into the boxed startup at once, which is freed once the session runs.
///
/// A panic inside the session ends this session alone: it is caught here and logged, and
/// dropping the session closes its backends (never pooled: their state is unknown) and gives
/// back its client slot, cancel entry and pool permits.
pub fn run(core: Rc<Core>, client: TcpStream) -> impl std::future::Future<Output = ()> {
    let _ = client.set_nodelay(true);
    let startup = Box::pin(contain(
        || "client startup".to_owned(),
        super::startup::start(core, client),
    ));
    async move {
        let Some(Some(client)) = startup.await else {
            return;
        };
        // On the heap, and the ending boxed too: while the session idles, the task's own
        // future holds little more than the relay's wait.
        let mut client = Box::new(client);
        let pid = client.session.pid;
        let served = contain(|| format!("session={pid}"), async {
            let result = client.relay().await;
            Box::pin(client.end(result)).await;
        })
        .await;
        if served.is_none() {
            Box::pin(client.tell_internal_error()).await;
        }
    }
}

/// Runs `work`; a panic that escapes it is caught and logged, and `None` returned. Whatever
/// `work` owned has been dropped by then (its drop guards have run).
pub(super) async fn contain<T>(
    who: impl Fn() -> String,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(done) => Some(done),
        Err(panic) => {
            log::error!(
                "{} panicked: {}; it alone ends, its backends are closed, not pooled",
                who(),
                panic_message(&*panic)
            );
            None
        }
    }
}

/// The text a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

impl Client {
    /// Relays until the client leaves, the session fails, or shutdown ends an idle session.
    async fn relay(&mut self) -> Result<(), Error> {
        loop {
            // The work after a wake-up is boxed: an idle session keeps only what `wait` needs.
            loop {
                match self.session.pump_client()? {
                    Pump::Wait => break,
                    Pump::Terminate => return Ok(()),
                    Pump::Attach { target, reuse } => {
                        Box::pin(self.perform()).await?;
                        let got = Box::pin(self.connect(target, reuse)).await;
                        self.session.attached(got);
                    }
                }
            }
            Box::pin(self.perform()).await?;
            match self.wait().await {
                Event::Client(Ok(0)) => return Ok(()),
                Event::Client(Ok(_)) => {}
                Event::Client(Err(e)) => return Err(Error::ClientIo(e)),
                Event::Backend(Ok(0)) => self
                    .session
                    .backend_lost(io::ErrorKind::UnexpectedEof.into())?,
                Event::Backend(Err(e)) => self.session.backend_lost(e)?,
                Event::Backend(Ok(_)) => self.session.pump_backend()?,
                Event::Drained => self.session.drained(),
                Event::Shutdown => {
                    self.session.queue_error(&ErrorFields::fatal(
                        "57P01",
                        "terminating connection due to administrator command",
                    ));
                    return Ok(());
                }
            }
        }
    }

    /// Does what the core queued: bytes to the client, backends back to their pools, and as
    /// much of the backend's outbox as its socket takes now (the rest `wait` writes).
    pub(super) async fn perform(&mut self) -> Result<(), Error> {
        loop {
            while let Some(bytes) = self.session.take_output() {
                self.stream
                    .write_all(&bytes)
                    .await
                    .map_err(Error::ClientIo)?;
            }
            while let Some(action) = self.session.take_action() {
                self.give_back(action).await;
            }
            let Some(att) = self.session.attached.as_mut() else {
                return Ok(());
            };
            if att.outbox.is_empty() {
                return Ok(());
            }
            let (outbox, stream) = (&mut att.outbox, &mut att.link.conn.stream);
            match poll_once(poll_fn(|cx| outbox.poll_drain(stream, cx))).await {
                Some(Err(e)) => self.session.backend_lost(e)?,
                Some(Ok(())) => self.session.drained(),
                None => return Ok(()),
            }
        }
    }

    /// Pools a backend the core is done with, after its reset if it needs one.
    async fn give_back(&self, action: Action<Held>) {
        let (held, state, reset) = match action {
            Action::Pool(held, state) => (held, state, None),
            Action::Reset(held, state, reset) => (held, state, Some(reset)),
        };
        let (mut backend, pool) = rejoin(held, state);
        let sql = match reset {
            None => return pool.checkin(backend),
            Some(Reset::Configured) => self.session.core.config.pool.reset_query.as_str(),
            Some(Reset::DiscardAll) => "DISCARD ALL",
        };
        if backend.simple_query(sql).await.is_ok() {
            backend.state.applied = u64::MAX;
            let upper = sql.to_ascii_uppercase();
            if upper.contains("DISCARD ALL") || upper.contains("DEALLOCATE ALL") {
                backend.state.prepared.clear();
            }
            pool.checkin(backend);
        }
    }

    /// Waits until the client or the attached backend has bytes, the backend took everything
    /// queued for it, or shutdown begins while idle.
    async fn wait(&mut self) -> Event {
        let s = &mut self.session;
        if s.cbuf.is_empty() && s.cbuf.capacity() > 0 {
            // Everything read has been handled: give the memory back while the client is quiet.
            s.cbuf = BytesMut::new();
        }
        s.shrink_when_idle();
        let read_client = s.reads_client();
        let idle = s.is_idle();
        let (core, pid) = (&s.core, s.pid);
        let (client, cbuf, attached) = (&mut self.stream, &mut s.cbuf, &mut s.attached);
        poll_fn(|cx| {
            if read_client {
                if let Poll::Ready(r) = poll_fill(client, cbuf, CLIENT_CHUNK, cx) {
                    return Poll::Ready(Event::Client(r));
                }
            }
            if let Some(att) = attached.as_mut() {
                // Writing to the backend and reading its results go on together.
                let stream = &mut att.link.conn.stream;
                if !att.outbox.is_empty() {
                    match att.outbox.poll_drain(stream, cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Event::Drained),
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::Backend(Err(e))),
                        Poll::Pending => {}
                    }
                }
                if let Poll::Ready(r) = poll_fill(stream, &mut att.backend.rbuf, READ_CHUNK, cx) {
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

    /// Logs how the session ended, tells the client what is left to tell, and lets go.
    async fn end(&mut self, result: Result<(), Error>) {
        match &result {
            Ok(()) | Err(Error::ClientIo(_)) => log::debug!("session={} closed", self.session.pid),
            Err(e) => log::info!("session={} ended: {e}", self.session.pid),
        }
        if let Err(Error::Client(e)) = &result {
            if !self.session.mid_message() {
                self.session
                    .queue_error(&ErrorFields::fatal("08P01", e.to_string()));
            }
        }
        self.finish().await;
    }

    /// Writes what is left for the client (ignoring write errors: the session is ending), gives
    /// the backends back or closes them, and closes the client.
    pub(super) async fn finish(&mut self) {
        while let Some(bytes) = self.session.take_output() {
            if self.stream.write_all(&bytes).await.is_err() {
                break;
            }
        }
        self.session.finish();
        while let Some(action) = self.session.take_action() {
            self.give_back(action).await;
        }
        let _ = self.stream.close().await;
    }

    /// After a panic: tells the client as PostgreSQL tells it of an internal error, without
    /// waiting long for a client that does not read. The backends are dropped with the session.
    async fn tell_internal_error(&mut self) {
        if self.session.mid_message() {
            let _ = self.stream.close().await;
            return;
        }
        let mut out = BytesMut::new();
        encode::error_response(
            &mut out,
            &ErrorFields::fatal("XX000", "internal error in pgpilot; the session is closed"),
        );
        let _ = glommio::timer::timeout(PANIC_WRITE_TIMEOUT, async {
            let _ = self.stream.write_all(&out).await;
            Ok(())
        })
        .await;
        let _ = self.stream.close().await;
    }
}

/// Joins the halves of a backend the core held.
pub(super) fn rejoin(held: Held, state: Wire) -> (Backend, Rc<Pool>) {
    (
        Backend {
            conn: held.conn,
            state,
        },
        held.pool,
    )
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
    let room = buf
        .capacity()
        .saturating_sub(start)
        .min(super::relay::MAX_READ);
    buf.resize(start.saturating_add(room), 0);
    let result = Pin::new(stream).poll_read(cx, buf.get_mut(start..).unwrap_or_default());
    let n = match &result {
        Poll::Ready(Ok(n)) => *n,
        _ => 0,
    };
    buf.truncate(start.saturating_add(n));
    result
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use pgpilot_protocol::frontend::FrontendTag;

    use super::contain;

    /// Sets its flag when dropped, as the session's drop guards release what they hold.
    struct Guard(Rc<Cell<bool>>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    #[test]
    fn a_panicking_session_ends_alone_and_releases_what_it_held() {
        let ex = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("an executor");
        ex.run(async {
            let released = Rc::new(Cell::new(false));
            let guard = Guard(released.clone());
            let bad = glommio::spawn_local(contain(|| "session=1".to_owned(), async move {
                let _held = guard;
                glommio::yield_if_needed().await;
                let frame: &[u8] = &[FrontendTag::Query as u8, 0, 0, 0, 4];
                // What the old relay did to an empty Query: slice past the end.
                frame.get(5..frame.len() - 1).expect("a body");
                1
            }));
            let good = glommio::spawn_local(contain(|| "session=2".to_owned(), async { 2 }));
            assert_eq!(bad.await, None, "the panic is caught");
            assert!(released.get(), "the panicking session's guards ran");
            assert_eq!(good.await, Some(2), "the other session is served");
            // The executor is still alive and serves new work.
            let after = glommio::spawn_local(async { 3 }).await;
            assert_eq!(after, 3);
        });
    }
}
