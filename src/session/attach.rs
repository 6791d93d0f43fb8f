//! Gives a session a backend for what it is about to send: picks one through the router,
//! checks it out, applies the client's parameters, and gives it back when the session is done.

use std::rc::Rc;

use bytes::BytesMut;
use pgpilot_protocol::backend::{BackendMessage, TransactionStatus};
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode;

use super::responses::note_param;
use super::{Attached, Session};
use crate::backend::Backend;
use crate::config::Role;
use crate::core::CancelTarget;
use crate::error::Error;
use crate::pool::{Pool, PoolKey};
use crate::router;

impl Session {
    /// Attaches a backend that may run statements routed to `target`. A replica that cannot be
    /// reached gives way to the primary; a pooled connection that turns out dead is replaced once.
    pub(super) async fn attach(&mut self, target: Target) -> Result<(), Error> {
        let state = self.core.state();
        let mut target = target;
        let mut retries = 1u32;
        let mut fresh = false;
        loop {
            let core = &self.core;
            let id = router::pick(&state, target, core.roll(), |id| core.is_benched(id))
                .ok_or(Error::NoBackend)?;
            let on_replica = state
                .backends
                .get(id)
                .is_some_and(|b| b.role == Role::Replica);
            let key = PoolKey {
                backend_id: id,
                user: self.user.clone(),
                database: self.database.clone(),
            };
            let pool = self.core.pool(key);
            let mut reused = false;
            let wait = self.core.config.pool.checkout_timeout;
            let checkout = if fresh {
                pool.checkout_new(wait).await
            } else {
                pool.checkout(wait).await
            };
            let result = match checkout {
                Ok(backend) => {
                    reused = backend.applied != 0;
                    self.install(backend, pool, on_replica).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
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
                        self.pid
                    );
                    fresh = true;
                }
                Err(e) if e.is_retryable() && on_replica => {
                    log::warn!(
                        "session={} replica {id} unusable, reading from the primary: {e}",
                        self.pid
                    );
                    target = Target::Primary;
                }
                Err(e) if e.is_retryable() && retries > 0 => retries = retries.saturating_sub(1),
                Err(e) => return Err(e),
            }
        }
    }

    async fn install(
        &mut self,
        mut backend: Backend,
        pool: Rc<Pool>,
        on_replica: bool,
    ) -> Result<(), Error> {
        if backend.applied != self.gucs.hash {
            // On error the backend is dropped here: closed, never pooled.
            self.apply_gucs(&mut backend).await?;
        }
        let att = Box::new(Attached {
            backend,
            pool,
            on_replica,
            pending: 0,
            hidden: 0,
            unsynced: false,
            status: TransactionStatus::Idle,
            slots: std::collections::VecDeque::new(),
            skipping: false,
            copy_in: false,
            changes: None,
            changes_failed: false,
            changes_settled: None,
            outbox: Default::default(),
            streaming: 0,
        });
        log::trace!(
            "session={} attached backend {}",
            self.pid,
            att.backend.key.0
        );
        let (pid, secret) = att.backend.key;
        self.cancel.set(Some(CancelTarget {
            addr: att.backend.addr,
            pid,
            secret,
        }));
        self.attached = Some(att);
        self.sync_view();
        Ok(())
    }

    /// Brings a backend's run-time parameters to the client's set and waits for the answer.
    /// The client's statements are not pipelined behind it: they must never run on a backend
    /// whose setup failed, which would still carry the previous client's settings. At login an
    /// error here means the client's startup parameters are invalid, and the client is refused
    /// with the server's own error, as PostgreSQL would refuse it.
    async fn apply_gucs(&self, backend: &mut Backend) -> Result<(), Error> {
        let mut q = BytesMut::new();
        encode::query(&mut q, self.gucs.setup_sql(backend.applied).as_bytes());
        backend.applied = u64::MAX;
        backend.send(&q).await?;
        let mut failed = None;
        loop {
            let frame = backend.recv().await?;
            match BackendMessage::parse(&frame.bytes) {
                Ok(BackendMessage::ReadyForQuery { .. }) => break,
                Ok(BackendMessage::ParameterStatus { name, value }) => {
                    backend.params.set(name, value)
                }
                Ok(BackendMessage::ErrorResponse(f)) => {
                    if failed.is_none() {
                        failed = Some((f.code().to_owned(), f.message(), frame.bytes.clone()));
                    }
                }
                Ok(_) => {}
                Err(source) => {
                    return Err(Error::BackendProtocol {
                        addr: backend.addr,
                        source,
                    })
                }
            }
        }
        if let Some((code, message, frame)) = failed {
            return Err(Error::BackendRejected {
                addr: backend.addr,
                code,
                message,
                frame,
            });
        }
        backend.applied = self.gucs.hash;
        Ok(())
    }

    /// Tells the client about every parameter of the attached backend that differs from what
    /// the client was last told.
    pub(super) fn sync_view(&mut self) {
        let Some(att) = &self.attached else { return };
        let b = &att.backend;
        if b.params.version == self.view_version {
            return;
        }
        for (name, value) in &b.params.list {
            if self.view.iter().any(|(n, v)| n == name && v == value) {
                continue;
            }
            note_param(&mut self.view, name, value);
            encode::parameter_status(&mut self.out, name, value);
        }
        self.view_version = b.params.version;
    }

    /// Session mode: sets the idle attached backend aside and takes up the parked one if it
    /// can run statements for `target`; otherwise the next attach checks out a new one.
    pub(super) async fn switch_held(&mut self, target: Target) {
        let current = self.attached.take();
        self.cancel.set(None);
        let Some(other) = std::mem::replace(&mut self.parked, current) else {
            return;
        };
        if other.on_replica != (target == Target::Replica) {
            self.give_back(other).await;
            return;
        }
        if let Err(e) = self
            .install(other.backend, other.pool, other.on_replica)
            .await
        {
            log::warn!("session={} parked backend unusable: {e}", self.pid);
        }
    }

    /// Gives the attached backend back to its pool (the caller knows it is idle).
    pub(super) fn release(&mut self) {
        if let Some(att) = self.attached.take() {
            self.cancel.set(None);
            if !att.slots.is_empty() {
                log::warn!(
                    "session={} released a backend still owing {:?}",
                    self.pid,
                    att.slots
                );
                return;
            }
            log::trace!(
                "session={} released backend {}",
                self.pid,
                att.backend.key.0
            );
            att.pool.checkin(att.backend);
        }
    }
}

/// Runs a query whose results nobody sees (`reset_query`); fails on any ErrorResponse.
pub(super) async fn run_hidden_query(backend: &mut Backend, sql: &str) -> Result<(), Error> {
    backend.simple_query(sql).await.map(|_| ())
}
