//! The shell's side of [`Pump::Attach`](super::Pump::Attach): picks a backend through the router, checks it out,
//! and brings it to the client's parameters before the core may send it anything.

use bytes::BytesMut;
use pgpilot_protocol::backend::BackendMessage;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode;

use super::shell::{Client, Held};
use super::{Attached, Checkout, Gucs};
use crate::backend::Backend;
use crate::config::Role;
use crate::error::Error;
use crate::pool::PoolKey;
use crate::router;

impl Client {
    /// A backend that may run statements for `target`: `reuse` (the session's own) if it can
    /// be set up, otherwise one from the pools. A replica that cannot be reached gives way to
    /// the primary; a pooled connection that turns out dead is replaced once.
    pub(super) async fn connect(
        &self,
        target: Target,
        reuse: Option<Box<Attached<Held>>>,
    ) -> Result<Checkout<Held>, Error> {
        if let Some(att) = reuse {
            let att = *att;
            let on_replica = att.on_replica;
            let addr = att.backend.addr;
            // Bytes that came while it was parked leave it unclean: a new one is attached.
            let (mut backend, pool) = att.link.rejoin(att.backend).await.ok_or(Error::Backend {
                addr,
                source: std::io::ErrorKind::InvalidData.into(),
            })?;
            self.set_up(&mut backend).await?;
            return Ok(checkout(backend, pool, on_replica));
        }
        let s = &self.session;
        let state = s.core.state();
        let mut target = target;
        let mut retries = 1u32;
        let mut fresh = false;
        loop {
            let core = &s.core;
            let id = router::pick(&state, target, core.roll(), |id| core.is_benched(id))
                .ok_or(Error::NoBackend)?;
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
            let wait = core.config.pool.checkout_timeout;
            let checkout_result = if fresh {
                pool.checkout_new(wait).await
            } else {
                pool.checkout(wait).await
            };
            let mut reused = false;
            let result = match checkout_result {
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

fn checkout(
    backend: Backend,
    pool: std::rc::Rc<crate::pool::Pool>,
    on_replica: bool,
) -> Checkout<Held> {
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
