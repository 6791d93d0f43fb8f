//! Gives a session a backend for what it is about to send: picks one through the router,
//! checks it out, applies the client's parameters, and gives it back when the session is done.

use std::rc::Rc;

use bytes::BytesMut;
use pgpilot_protocol::backend::{BackendMessage, TransactionStatus};
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode::{self, ErrorFields};

use super::login::intern_code;
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
            let result = match pool.checkout(self.core.config.pool.checkout_timeout).await {
                Ok(backend) => self.install(backend, pool, on_replica).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
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
        backend: Backend,
        pool: Rc<Pool>,
        on_replica: bool,
    ) -> Result<(), Error> {
        let mut att = Box::new(Attached {
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
        if att.backend.applied != self.gucs.hash {
            let mut q = BytesMut::new();
            encode::query(&mut q, self.gucs.setup_sql(att.backend.applied).as_bytes());
            att.backend.send(&q).await?;
            att.backend.applied = self.gucs.hash;
            att.hidden = 1;
        }
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
        let hidden = att.hidden;
        self.attached = Some(att);
        if hidden == 0 {
            self.sync_view();
        }
        Ok(())
    }

    /// Waits for the parameter setup of a fresh attach (login only): an error there means the
    /// client's startup parameters are invalid, and the client is refused as PostgreSQL would.
    pub(super) async fn finish_setup(&mut self) -> Result<(), ErrorFields> {
        let Some(att) = self.attached.as_mut() else {
            return Ok(());
        };
        let mut error = None;
        while att.hidden > 0 {
            let frame = att
                .backend
                .recv()
                .await
                .map_err(|e| ErrorFields::fatal("08006", e.to_string()))?;
            match BackendMessage::parse(&frame.bytes) {
                Ok(BackendMessage::ReadyForQuery { .. }) => {
                    att.hidden = att.hidden.saturating_sub(1)
                }
                Ok(BackendMessage::ParameterStatus { name, value }) => {
                    att.backend.params.set(name, value)
                }
                Ok(BackendMessage::ErrorResponse(f)) => {
                    error.get_or_insert_with(|| {
                        ErrorFields::fatal(intern_code(f.code()), f.message())
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(ErrorFields::fatal("08006", e.to_string())),
            }
        }
        if let Some(e) = error {
            att.backend.applied = u64::MAX;
            self.release();
            return Err(e);
        }
        self.sync_view();
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
