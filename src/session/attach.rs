//! The core's side of backends: installing one the shell attached, telling the client about
//! its parameters, switching between the two a session-mode client holds, and giving them back.

use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode;
use pgpilot_protocol::frame::FrameScan;

use super::responses::note_param;
use super::{Action, Attached, Checkout, Intake, Pump, Reset, Session, Waiting};
use crate::admin::Serving;
use crate::config::PoolMode;
use crate::core::CancelTarget;
use crate::error::Error;

impl<L> Session<L> {
    /// Takes the outcome of a [`Pump::Attach`]. The unit that waited for it goes to the new
    /// backend (behind the held BEGIN, if any) or, with no backend, is answered with the error.
    /// A session's own backend that could not be set up again is only logged: the unit is
    /// scanned again and attaches a new one.
    pub fn attached(&mut self, got: Result<Checkout<L>, Error>) -> Result<(), Error> {
        // Whether the unit that waited was sent once already; only it is concerned.
        let again = std::mem::take(&mut self.retried);
        let waiting = match std::mem::replace(&mut self.intake, Intake::Open) {
            Intake::Attaching(w) => Some(w),
            other => {
                self.intake = other;
                None
            }
        };
        let rejoined = self.rejoining.take();
        match (got, waiting) {
            (Ok(checkout), None) => self.install(checkout),
            (Err(e), None) if self.mode == PoolMode::Session && rejoined == Some(false) => {
                // The session's primary, with its state, is gone while the client read from a
                // replica: the session ends, as it would had it used the primary, with what the
                // server said if it said it (its FATAL).
                let said = self.last_words.take();
                let at = super::lost::fatal_at(&said);
                if at < said.len() {
                    self.pass_on(said.slice(at..));
                } else {
                    self.queue_error(&pgpilot_protocol::encode::ErrorFields::fatal(
                        "08006",
                        format!("lost the connection to the server: {e}"),
                    ));
                }
                return Err(e);
            }
            (Err(e), None) => log::warn!("session={} parked backend unusable: {e}", self.pid),
            (Err(Error::PoolTimeout), Some(w)) if w.parses.is_some() => {
                self.answer_parses(&w.unit, w.parses.unwrap_or_default())
            }
            (Err(e), Some(w)) => self.fail_unit(&w.unit, e),
            (Ok(checkout), Some(w)) => {
                self.install(checkout);
                let Waiting {
                    mut unit, begin, ..
                } = *w;
                let begin_sent = begin.clone();
                if let (Some(begin), Some(att)) = (begin, self.attached.as_mut()) {
                    att.hidden = att.hidden.saturating_add(1);
                    att.outbox.push(begin);
                }
                let retryable = !again && begin_sent.is_none() && self.may_retry(&unit);
                self.note_effect(&mut unit);
                let sent = self.forward(unit.len, unit.rfqs, !unit.complete);
                if let (true, Some(att)) = (retryable, self.attached.as_mut()) {
                    att.retry = Some(sent);
                }
            }
        }
        Ok(())
    }

    /// Whether the unit at the front of the input may be sent again elsewhere if its backend
    /// fails before answering: one read in autocommit on a replica, in transaction mode, not
    /// pinned, and either a simple Query or extended messages
    /// that run statements without defining or closing any (Bind, Describe, Execute, Flush,
    /// Sync), so that sending it again changes nothing the proxy keeps of the client.
    fn may_retry(&self, unit: &super::Unit) -> bool {
        use pgpilot_protocol::frontend::FrontendTag as F;
        let on_replica = self.attached.as_ref().is_some_and(|a| a.on_replica);
        if !on_replica
            || self.mode != PoolMode::Transaction
            || self.pinned
            || unit.target != Target::Replica
            || !unit.complete
            || unit.rfqs != 1
            || !unit.changes.is_empty()
        {
            return false;
        }
        let Some(bytes) = self.cbuf.get(..unit.len) else {
            return false;
        };
        // Asked for every read a fresh backend gets: one walk over the frames, no allocation.
        let runs = |tag: u8| {
            matches!(
                F::from_byte(tag),
                Some(F::Bind | F::Describe | F::Execute | F::Flush | F::Sync)
            )
        };
        let mut scan = FrameScan::new(bytes, u32::MAX);
        let Some(first) = scan.next() else {
            return false;
        };
        let shape = if first.tag() == F::Query as u8 {
            scan.next().is_none()
        } else {
            runs(first.tag()) && scan.all(|f| runs(f.tag()))
        };
        shape && scan.error().is_none()
    }

    /// Makes a checked-out backend the attached one.
    pub fn install(&mut self, checkout: Checkout<L>) {
        let Checkout {
            link,
            backend,
            on_replica,
        } = checkout;
        let (pid, secret) = backend.key;
        self.card.server.set(Some(Serving {
            backend_id: backend.id,
            connected: backend.connected,
            encrypted: backend.encrypted,
            local: backend.local,
        }));
        self.card.cancel.set(Some(CancelTarget {
            addr: backend.addr,
            pid,
            secret,
        }));
        log::trace!("session={} attached backend {pid}", self.pid);
        self.attached = Some(Box::new(Attached {
            link,
            backend,
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
            after: Vec::new(),
            failed_parses: Vec::new(),
            outbox: Default::default(),
            streaming: 0,
            retry: None,
            fatal: false,
            query_since: None,
            xact_since: None,
        }));
        self.sync_view();
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
            let value = match name.as_str() {
                // The proxy takes writes whichever server answers: a replica's `on` is never
                // shown (libpq's `target_session_attrs = read-write` would refuse it).
                "in_hot_standby" if att.on_replica => "off",
                _ => value.as_str(),
            };
            if self.view.iter().any(|(n, v)| n == name && v == value) {
                continue;
            }
            note_param(&mut self.view, name, value);
            encode::parameter_status(&mut self.out, name, value);
        }
        self.view_version = b.params.version;
    }

    /// Session mode: sets the idle attached backend aside and asks to take up the parked one if
    /// it can run statements for `target`; otherwise the next attach checks out a new one.
    pub(super) fn switch_held(&mut self, target: Target) -> Option<Pump<L>> {
        let current = self.attached.take();
        self.card.cancel.set(None);
        let other = std::mem::replace(&mut self.parked, current)?;
        if other.on_replica != (target == Target::Replica) {
            self.give_back(*other);
            return None;
        }
        self.rejoining = Some(other.on_replica);
        Some(Pump::Attach {
            target,
            reuse: Some(other),
        })
    }

    /// Gives the attached backend back to its pool (the caller knows it is idle).
    pub(super) fn release(&mut self) {
        let Some(att) = self.attached.take() else {
            return;
        };
        self.card.cancel.set(None);
        if att.backend.fenced {
            // Closed (dropped here), never pooled: it may be a demoted server.
            return;
        }
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
        let att = *att;
        self.actions.push(Action::Pool(att.link, att.backend));
    }

    /// A backend the session is done with: reset and pooled if it is clean, closed otherwise.
    /// Session mode resets with `reset_query`; a pinned transaction-mode client leaves temp
    /// tables, LISTEN or locks behind, which DISCARD ALL removes.
    pub(super) fn give_back(&mut self, att: Attached<L>) {
        if !att.is_idle() || !att.backend.rbuf.is_empty() || att.backend.fenced {
            return;
        }
        let reset = match self.mode {
            PoolMode::Session if !self.core.config().pool.reset_query.is_empty() => {
                Some(Reset::Configured)
            }
            PoolMode::Transaction if self.pinned => Some(Reset::DiscardAll),
            _ => None,
        };
        self.actions.push(match reset {
            Some(reset) => Action::Reset(att.link, att.backend, reset),
            None => Action::Pool(att.link, att.backend),
        });
    }
}
