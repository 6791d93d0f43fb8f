//! The I/O around one session's core: the client socket, the attached backend's socket, and
//! the pools. It reads into the core's buffers, writes what the core queues, and does what the
//! core asks for ([`Pump`], [`Action`]); every decision is the core's.

use std::future::poll_fn;
use std::io;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::FutureExt;
use monoio::io::{AsyncWriteRentExt, OwnedWriteHalf};
use monoio::net::TcpStream;
use pgpilot_protocol::encode::{self, ErrorFields};

use super::connect::Held;
use super::io::{ReadResult, Reader, Sealed};
use super::{Action, Pump, Reset, Session};
use crate::backend::READ_CHUNK;
use crate::core::Core;
use crate::error::Error;

/// Bytes asked of the kernel per client read.
const CLIENT_CHUNK: usize = 8 * 1024;
/// Bytes a client read asks for when the client's buffer has been released (an idle client
/// keeps no more than this in flight).
const IDLE_READ: usize = 1024;
/// How long a session that panicked may take to tell its client so.
const PANIC_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// One client connection: its socket and the session core deciding what to do with its bytes.
pub(super) struct Client {
    pub(super) reader: Reader,
    /// Room the client read in flight has.
    pub(super) read_room: usize,
    /// The last client read filled its room: the next one gets a full chunk.
    pub(super) streaming_in: bool,
    pub(super) writer: OwnedWriteHalf<TcpStream>,
    /// Over TLS: reads bring ciphertext, opened into the session's buffer; writes are sealed.
    pub(super) tls: Option<Box<Sealed<rustls::ServerConnection>>>,
    pub(super) session: Session<Held>,
    /// Released last, when the client is dropped (also by a panic unwinding it).
    pub(super) admission: Admission,
}

/// The buffer for the next client read. A client whose last read filled its room (it sends a
/// lot) reads a full chunk at a time; a quiet one whose bytes were all handled gets a small
/// buffer, so that an idle client keeps little in flight, and a large one it no longer needs
/// is let go.
fn read_room(mut buf: BytesMut, streaming_in: bool) -> BytesMut {
    if buf.is_empty() && !streaming_in {
        if buf.capacity() > 2 * IDLE_READ || buf.capacity() < IDLE_READ / 4 {
            return BytesMut::with_capacity(IDLE_READ);
        }
        return buf;
    }
    if buf.capacity().saturating_sub(buf.len()) < CLIENT_CHUNK {
        buf.reserve(CLIENT_CHUNK);
    }
    buf
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
    Client(ReadResult),
    Backend(ReadResult),
    /// A chunk of the outbox was written (or not).
    Written(io::Result<usize>),
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
    // Counted until its startup is over, so that a shutdown lets it finish.
    let starting = core.starting();
    let startup = Box::pin(contain(
        || "client startup".to_owned(),
        super::startup::start(core, client),
    ));
    async move {
        let started = startup.await;
        drop(starting);
        let Some(Some(client)) = started else {
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
                        self.perform_boxed().await?;
                        let got = Box::pin(self.connect(target, reuse, false)).await;
                        self.session.attached(got)?;
                    }
                }
            }
            self.perform_boxed().await?;
            match self.wait().await {
                Event::Client((result, buf)) => {
                    self.session.cbuf = buf;
                    match result {
                        Ok(0) => return Ok(()),
                        // A read that filled its room: the client is sending a lot.
                        Ok(n) => {
                            self.session.stats.received(n);
                            self.streaming_in = n >= self.read_room;
                        }
                        Err(e) => return Err(Error::ClientIo(e)),
                    }
                }
                Event::Backend((result, buf)) => {
                    if let Some(att) = self.session.attached.as_mut() {
                        att.backend.rbuf = buf;
                    }
                    match result {
                        Ok(0) => self
                            .session
                            .backend_lost(io::ErrorKind::UnexpectedEof.into())?,
                        Ok(_) => self.session.pump_backend()?,
                        Err(e) => self.session.backend_lost(e)?,
                    }
                }
                Event::Written(Ok(n)) => {
                    if let Some(att) = self.session.attached.as_mut() {
                        att.outbox.written(n);
                        if att.outbox.is_empty() {
                            self.session.drained();
                        }
                    }
                }
                Event::Written(Err(e)) => self.session.backend_lost(e)?,
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

    /// [`Client::perform`], boxed so that an idle session's future does not carry it; and
    /// not even boxed when there is nothing to do, as after most backend reads.
    async fn perform_boxed(&mut self) -> Result<(), Error> {
        if !self.session.has_work() {
            return Ok(());
        }
        Box::pin(self.perform()).await
    }

    /// Does what the core queued: bytes to the client and backends back to their pools. The
    /// outbox is written by `wait`, beside the reads.
    pub(super) async fn perform(&mut self) -> Result<(), Error> {
        while let Some(bytes) = self.session.take_output() {
            self.write_client(bytes).await.map_err(Error::ClientIo)?;
        }
        while let Some(action) = self.session.take_action() {
            self.give_back(action).await;
        }
        Ok(())
    }

    /// Writes all of `bytes` to the client (sealed first over TLS).
    async fn write_client(&mut self, bytes: Bytes) -> io::Result<()> {
        self.session.stats.sent(bytes.len());
        let bytes = match self.tls.as_mut() {
            None => bytes,
            Some(t) => match t.seal(&bytes) {
                Some(sealed) => sealed,
                None => {
                    return Err(t
                        .failed
                        .take()
                        .unwrap_or_else(|| io::ErrorKind::Other.into()))
                }
            },
        };
        self.writer.write_all(bytes).await.0.map(|_| ())
    }

    /// Pools a backend the core is done with, after its reset if it needs one.
    async fn give_back(&self, action: Action<Held>) {
        let (held, state, reset) = match action {
            Action::Pool(held, state) => (held, state, None),
            Action::Reset(held, state, reset) => (held, state, Some(reset)),
        };
        let Ok((mut backend, pool)) = held.rejoin(state).await else {
            return;
        };
        let config = self.session.core.config();
        let sql = match reset {
            None => return pool.checkin(backend),
            Some(Reset::Configured) => config.pool.reset_query.as_str(),
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

    /// Waits until the client or the attached backend has bytes, a chunk of the outbox has
    /// been written, or shutdown begins while idle. Reads started here stay in flight until
    /// they complete, across waits.
    async fn wait(&mut self) -> Event {
        let s = &mut self.session;
        s.shrink_when_idle();
        if s.reads_client() && !self.reader.is_busy() {
            let buf = read_room(std::mem::take(&mut s.cbuf), self.streaming_in);
            self.read_room = buf.capacity().saturating_sub(buf.len());
            let buf = match self.tls.as_mut() {
                None => buf,
                Some(t) => t.read_into(buf),
            };
            self.reader.start_read(buf);
        }
        if let Some(att) = s.attached.as_mut() {
            if !att.link.writing() {
                if let Some(chunk) = att.outbox.next_chunk() {
                    att.link.start_write(chunk);
                }
            }
            if !att.link.reading() {
                let mut buf = std::mem::take(&mut att.backend.rbuf);
                if buf.capacity().saturating_sub(buf.len()) < READ_CHUNK {
                    buf.reserve(READ_CHUNK);
                }
                att.link.start_read(buf);
            }
        }
        let idle = s.is_idle() && s.may_end_when_idle();
        let (core, card) = (&s.core, &s.card);
        let (reader, tls, attached) = (&mut self.reader, &mut self.tls, &mut s.attached);
        poll_fn(|cx| {
            let client = match tls.as_mut() {
                None => reader.poll(cx),
                Some(t) => reader.poll_sealed(t, None, cx),
            };
            if let Poll::Ready(r) = client {
                return Poll::Ready(Event::Client(r));
            }
            if let Some(att) = attached.as_mut() {
                if let Poll::Ready(r) = att.link.poll_write(cx) {
                    return Poll::Ready(Event::Written(r));
                }
                if let Poll::Ready(r) = att.link.poll_read(cx) {
                    return Poll::Ready(Event::Backend(r));
                }
            }
            // Shutdown ends an idle session at once, and any session once its grace is over.
            if card.killed.get() || core.shutting_down() && (idle || core.shutdown_forced()) {
                return Poll::Ready(Event::Shutdown);
            }
            card.listen(cx.waker());
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
            if self.write_client(bytes).await.is_err() {
                break;
            }
        }
        self.session.finish();
        while let Some(action) = self.session.take_action() {
            self.give_back(action).await;
        }
    }

    /// After a panic: tells the client as PostgreSQL tells it of an internal error, without
    /// waiting long for a client that does not read. The backends are dropped with the session.
    async fn tell_internal_error(&mut self) {
        if self.session.mid_message() {
            return;
        }
        let mut out = BytesMut::new();
        encode::error_response(
            &mut out,
            &ErrorFields::fatal("XX000", "internal error in pgpilot; the session is closed"),
        );
        let _ = monoio::time::timeout(PANIC_WRITE_TIMEOUT, self.write_client(out.freeze())).await;
    }
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
        crate::worker::block_on(async {
            let released = Rc::new(Cell::new(false));
            let guard = Guard(released.clone());
            let bad = monoio::spawn(contain(|| "session=1".to_owned(), async move {
                let _held = guard;
                futures_lite::future::yield_now().await;
                let frame: &[u8] = &[FrontendTag::Query as u8, 0, 0, 0, 4];
                // What the old relay did to an empty Query: slice past the end.
                frame.get(5..frame.len() - 1).expect("a body");
                1
            }));
            let good = monoio::spawn(contain(|| "session=2".to_owned(), async { 2 }));
            assert_eq!(bad.await, None, "the panic is caught");
            assert!(released.get(), "the panicking session's guards ran");
            assert_eq!(good.await, Some(2), "the other session is served");
            // The runtime is still alive and serves new work.
            let after = monoio::spawn(async { 3 }).await;
            assert_eq!(after, 3);
        });
    }
}
