//! The shell's side of [`Pump::Attach`](super::Pump::Attach): picks a backend through the
//! router, checks it out, and brings it to the client's parameters before the core may send
//! it anything; and [`Held`], what the shell keeps of a backend while the core holds its
//! protocol state.

use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::io::{Canceller, Splitable};
use pgpilot_protocol::backend::BackendMessage;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode;

use super::io::{ReadResult, Reader, Sealed, Writer};
use super::shell::Client;
use super::{Attached, Checkout, Gucs};
use crate::admin::Waiting;
use crate::backend::{Backend, Conn, Wire};
use crate::config::Role;
use crate::control::{ClusterState, Status};
use crate::error::Error;
use crate::pool::{Pool, PoolKey};
use crate::router;

/// What a cancelled operation completes with.
const ECANCELED: i32 = 125;

/// What the shell keeps of an attached backend: its socket, split so that a read stays in
/// flight while the outbox is written, and the pool it goes back to.
pub(super) struct Held {
    conn: Conn,
    pub(super) pool: Rc<Pool>,
    reader: Reader,
    writer: Writer,
    /// Calls off the read in flight when the backend is given back.
    cancel: Canceller,
    /// Over TLS: the reads bring ciphertext, opened into the session's buffer.
    tls: Option<Box<Sealed<rustls::ClientConnection>>>,
}

impl Held {
    pub(super) fn new(backend: Backend, pool: Rc<Pool>) -> (Held, Wire) {
        let (read, write) = backend.stream.into_split();
        let held = Held {
            conn: backend.conn,
            pool,
            reader: Reader::new(read),
            writer: Writer::new(write),
            cancel: Canceller::new(),
            tls: backend.tls.map(|conn| Box::new(Sealed::new(*conn))),
        };
        (held, backend.state)
    }

    /// Whether a write to the backend is in flight.
    pub(super) fn writing(&self) -> bool {
        self.writer.is_busy() || self.tls.as_ref().is_some_and(|t| t.failed.is_some())
    }

    /// Whether a read of the backend is in flight.
    pub(super) fn reading(&self) -> bool {
        self.reader.is_busy()
    }

    /// Starts writing `chunk` (nothing else may be in flight on the write side).
    pub(super) fn start_write(&mut self, chunk: Bytes) {
        match self.tls.as_mut() {
            None => self.writer.start_write(chunk),
            Some(t) => {
                if let Some(sealed) = t.seal(&chunk) {
                    self.writer.start_write(sealed);
                }
            }
        }
    }

    /// Starts a read into the spare room of `buf`, one that giving the backend back can call off.
    pub(super) fn start_read(&mut self, buf: BytesMut) {
        let buf = match self.tls.as_mut() {
            None => buf,
            Some(t) => t.read_into(buf),
        };
        self.reader.start_cancelable_read(buf, self.cancel.handle());
    }

    /// The outcome of the write in flight, once it is done (over TLS: the plaintext length).
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(t) = self.tls.as_mut() else {
            return self.writer.poll(cx);
        };
        if let Some(e) = t.failed.take() {
            return Poll::Ready(Err(e));
        }
        self.writer.poll(cx).map(|res| t.written(res))
    }

    /// The outcome of the read in flight, once it is done (over TLS: opened, and a read that
    /// brought part of a record goes on).
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<ReadResult> {
        match self.tls.as_mut() {
            None => self.reader.poll(cx),
            Some(t) => self.reader.poll_sealed(t, Some(&self.cancel), cx),
        }
    }

    /// Calls off the read in flight and joins the socket again. `Err` when the backend is not
    /// clean: bytes arrived meanwhile (part of a message, a notice, an error: they are in the
    /// `Err` when the read finished with them), the socket failed, or a write had not finished.
    pub(super) async fn rejoin(self, mut state: Wire) -> Result<(Backend, Rc<Pool>), BytesMut> {
        let Held {
            conn,
            pool,
            mut reader,
            mut writer,
            cancel,
            mut tls,
        } = self;
        let unclean = BytesMut::new;
        if reader.is_busy() {
            let _ = cancel.cancel();
            match (reader.settle().await, tls.as_mut()) {
                (Some((Err(e), buf)), None) if e.raw_os_error() == Some(ECANCELED) => {
                    state.rbuf = buf
                }
                // Over TLS the read owned the ciphertext buffer; the session's is kept here.
                (Some((Err(e), cipher)), Some(t)) if e.raw_os_error() == Some(ECANCELED) => {
                    match t.cancelled(&cipher) {
                        Some(plain) => state.rbuf = plain,
                        None => return Err(unclean()),
                    }
                }
                // Plaintext the server sent while the backend was parked (its FATAL, say).
                (Some((Ok(n), buf)), None) if n > 0 => return Err(buf),
                _ => return Err(unclean()),
            }
        }
        if tls.as_ref().is_some_and(|t| t.failed.is_some()) {
            return Err(unclean());
        }
        if let Some(Err(_)) = writer.settle().await {
            return Err(unclean());
        }
        if !state.rbuf.is_empty() {
            return Err(state.rbuf);
        }
        let (Some(read), Some(write)) = (reader.into_idle(), writer.into_idle()) else {
            return Err(unclean());
        };
        let stream = read.reunite(write).map_err(|_| unclean())?;
        Ok((
            Backend {
                stream,
                tls: tls.map(|t| Box::new(t.conn)),
                conn,
                state,
            },
            pool,
        ))
    }
}

impl Client {
    /// A backend that may run statements for `target`: `reuse` (the session's own) if it can
    /// be set up, otherwise one from the pools. A replica that cannot be reached gives way to
    /// the primary; a pooled connection that turns out dead is replaced once. With
    /// `replica_will_do` (a login), a primary found away gives way to a replica, once.
    pub(super) async fn connect(
        &self,
        target: Target,
        reuse: Option<Box<Attached<Held>>>,
        replica_will_do: bool,
    ) -> Result<Checkout<Held>, Error> {
        if let Some(att) = reuse {
            let att = *att;
            let on_replica = att.on_replica;
            let addr = att.backend.addr;
            // Bytes that came while it was parked leave it unclean: a new one is attached.
            let (mut backend, pool) = match att.link.rejoin(att.backend).await {
                Ok(joined) => joined,
                Err(said) => {
                    self.session.last_words.set(said.freeze());
                    return Err(Error::Backend {
                        addr,
                        source: std::io::ErrorKind::InvalidData.into(),
                    });
                }
            };
            self.set_up(&mut backend).await?;
            return Ok(checkout(backend, pool, on_replica));
        }
        let s = &self.session;
        if s.core.is_paused(&s.database) {
            // PAUSE: new work waits (shown as waiting) until RESUME, or shutdown.
            let _waiting = Waiting::start(&s.card, &s.stats);
            std::future::poll_fn(|cx| {
                if !s.core.is_paused(&s.database) || s.core.shutting_down() || s.card.killed.get() {
                    return std::task::Poll::Ready(());
                }
                s.card.listen(cx.waker());
                std::task::Poll::Pending
            })
            .await;
        }
        let mut state = s.core.state();
        let mut target = target;
        let mut retries = 1u32;
        let mut fresh = false;
        let mut held: Option<Instant> = None;
        let mut last = String::new();
        let mut replica_will_do = replica_will_do;
        loop {
            let core = &s.core;
            let unavailable = state
                .primary()
                .is_some_and(|p| p.status == Status::Unavailable);
            let no_address = state.primary().is_none_or(|p| p.addr.is_none());
            if target == Target::Primary
                && replica_will_do
                && (unavailable || no_address || held.is_some())
                && takes_reads(&state)
            {
                replica_will_do = false;
                target = Target::Replica;
                continue;
            }
            if target == Target::Primary && held.is_some() && unavailable {
                // The checks say it still fails: wait for news rather than log in again.
                if last.is_empty() {
                    "its health checks fail".clone_into(&mut last);
                }
                hold(&mut held, core.config().health.write_hold, last.clone()).await?;
                state = core.state();
                continue;
            }
            let Some(id) = router::pick(&state, target, core.roll(), |id| core.is_benched(id))
            else {
                if target == Target::Primary {
                    // No address for the primary (its name does not resolve): hold.
                    hold(
                        &mut held,
                        core.config().health.write_hold,
                        "no address".into(),
                    )
                    .await?;
                    state = core.state();
                    continue;
                }
                return Err(Error::NoBackend);
            };
            let on_replica = state
                .backends
                .get(id)
                .is_some_and(|b| b.role == Role::Replica);
            let key = PoolKey {
                backend_id: id,
                user: s.user.clone(),
                database: s.database.clone(),
            };
            let pool = core.pool(key);
            if let Some(keys) = &s.keys {
                pool.prove_with(keys);
            }
            let wait = core.config().pool.checkout_timeout;
            let checkout_result = {
                // Shown as waiting (SHOW CLIENTS, SHOW POOLS) until a connection is had.
                let _waiting = Waiting::start(&s.card, &s.stats);
                if fresh {
                    pool.checkout_new(wait).await
                } else if s.impatient() {
                    pool.checkout_free(wait).await
                } else {
                    pool.checkout(wait).await
                }
            };
            let mut reused = false;
            let result = match checkout_result {
                // Fenced: a server in recovery never runs work meant for the primary (the name
                // may still point at a demoted node); the connection is closed.
                Ok(backend) if !on_replica && backend.state.params.in_recovery() => {
                    Err(Error::Backend {
                        addr: backend.state.addr,
                        source: io::Error::other("the server is in recovery, not a primary"),
                    })
                }
                Ok(mut backend) => {
                    reused = backend.state.applied != 0;
                    match self.set_up(&mut backend).await {
                        Ok(()) => Ok(backend),
                        // The backend is dropped here: closed, never pooled.
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(backend) => return Ok(checkout(backend, pool, on_replica)),
                // A backend that served other clients could not take this client's parameters
                // (its old settings got in the way: a 1 ms statement_timeout, say). It has been
                // closed; a new connection (not another idle one) starts from the server's
                // defaults. Not when the client's own values are refused (classes 22 and 42):
                // a new connection would refuse them too.
                Err(e @ Error::BackendRejected { .. })
                    if reused && !fresh && !e.is_clients_fault() =>
                {
                    log::warn!(
                        "session={} parameter setup failed, trying a new connection: {e}",
                        s.pid
                    );
                    fresh = true;
                }
                Err(e) if e.is_retryable() && on_replica => {
                    log::warn!(
                        "session={} replica {id} unusable, reading from the primary: {e}",
                        s.pid
                    );
                    target = Target::Primary;
                }
                Err(e) if e.is_retryable() && retries > 0 => retries = retries.saturating_sub(1),
                // The primary does not answer: the platform may be failing it over. The work
                // waits for it (another core's or the health checks' news comes through the
                // state), up to `write_hold_ms`.
                Err(e) if e.is_retryable() => {
                    last = e.to_string();
                    hold(&mut held, core.config().health.write_hold, last.clone()).await?;
                    state = core.state();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Brings a backend to the client's parameters unless it has them already.
    async fn set_up(&self, backend: &mut Backend) -> Result<(), Error> {
        let gucs = &self.session.gucs;
        if backend.state.applied == gucs.hash {
            return Ok(());
        }
        apply_gucs(gucs, backend).await
    }
}

/// Whether some replica takes reads now.
fn takes_reads(state: &ClusterState) -> bool {
    router::read_weight(state, |_| false) > 0
}

/// How long a held unit waits between tries of the primary.
const HOLD_STEP: Duration = Duration::from_millis(100);

/// Waits a step before the primary is tried again, or gives up once `limit` has passed since
/// the hold began (57P03).
async fn hold(held: &mut Option<Instant>, limit: Duration, last: String) -> Result<(), Error> {
    if held.is_none() {
        log::warn!("no usable primary ({last}); holding work that needs it");
    }
    let waited = held.get_or_insert_with(Instant::now).elapsed();
    if waited >= limit {
        return Err(Error::NoPrimary {
            waited_ms: waited.as_millis(),
            last,
        });
    }
    monoio::time::sleep(HOLD_STEP.min(limit.saturating_sub(waited))).await;
    Ok(())
}

fn checkout(backend: Backend, pool: Rc<Pool>, on_replica: bool) -> Checkout<Held> {
    let (link, backend) = Held::new(backend, pool);
    Checkout {
        link,
        backend,
        on_replica,
    }
}

/// Brings a backend's run-time parameters to the client's set and waits for the answer.
/// The client's statements are not pipelined behind it: they must never run on a backend
/// whose setup failed, which would still carry the previous client's settings. At login an
/// error here means the client's startup parameters are invalid, and the client is refused
/// with the server's own error, as PostgreSQL would refuse it.
async fn apply_gucs(gucs: &Gucs, backend: &mut Backend) -> Result<(), Error> {
    let mut q = BytesMut::new();
    encode::query(&mut q, gucs.setup_sql(backend.state.applied).as_bytes());
    backend.state.applied = u64::MAX;
    backend.send(q).await?;
    let addr = backend.state.addr;
    let mut failed = None;
    loop {
        let frame = backend.recv().await?;
        match BackendMessage::parse(&frame.bytes) {
            Ok(BackendMessage::ReadyForQuery { .. }) => break,
            Ok(BackendMessage::ParameterStatus { name, value }) => {
                backend.state.params.set(name, value)
            }
            Ok(BackendMessage::ErrorResponse(f)) => {
                if failed.is_none() {
                    failed = Some((f.code().to_owned(), f.message(), frame.bytes.clone()));
                }
            }
            Ok(_) => {}
            Err(source) => return Err(Error::BackendProtocol { addr, source }),
        }
    }
    if let Some((code, message, frame)) = failed {
        return Err(Error::BackendRejected {
            addr,
            code,
            message,
            frame,
        });
    }
    backend.state.applied = gucs.hash;
    Ok(())
}
