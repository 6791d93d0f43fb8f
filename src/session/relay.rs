//! The client half of the core: client frames in, routed by unit (one Query, or extended
//! messages up to Sync) to a backend. No payload is copied: whole frames are cut off the read
//! buffer with `split_to(..).freeze()` and queued for the backend as they are.

use bytes::Bytes;
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frontend::FrontendTag;
use pgpilot_protocol::{Header, ProtocolError};

use super::statements::Rewrite;
use super::{Intake, Pump, Session, Waiting};
use crate::config::PoolMode;
use crate::error::Error;

/// Largest single read, however big the frame being assembled.
pub(super) const MAX_READ: usize = 256 * 1024;

impl<L> Session<L> {
    /// Everything queued for the backend is written: if that was all it owed, the session may
    /// go on (and, in transaction mode, give the backend back), as after its last response.
    pub fn drained(&mut self) {
        let Some(att) = self.attached.as_ref() else {
            return;
        };
        if !att.is_idle() || !att.backend.rbuf.is_empty() {
            return;
        }
        self.unblock();
        if self.mode == PoolMode::Transaction && !self.pinned {
            self.release();
        }
    }

    /// Acts on every whole client frame buffered, until it needs something of the shell.
    pub fn pump_client(&mut self) -> Result<Pump<L>, Error> {
        loop {
            if !matches!(self.intake, Intake::Open | Intake::SkipToSync) {
                return Ok(Pump::Wait);
            }
            let Some(h) = Header::peek(&self.cbuf, self.max_message).map_err(Error::Client)? else {
                return Ok(Pump::Wait);
            };
            if self.cbuf.len() < h.frame_len() {
                // Room for what is announced, but no more than one read at a time: a header
                // that claims 64 MiB must not cost 64 MiB before the bytes exist.
                self.cbuf
                    .reserve(h.frame_len().saturating_sub(self.cbuf.len()).min(MAX_READ));
                return Ok(Pump::Wait);
            }
            let tag = FrontendTag::from_byte(h.tag);
            match tag {
                Some(FrontendTag::Terminate) => return Ok(Pump::Terminate),
                Some(FrontendTag::Password) => {
                    return Err(Error::Client(ProtocolError::Malformed {
                        tag: h.tag,
                        what: "password message after authentication",
                    }))
                }
                _ => {}
            }
            if matches!(self.intake, Intake::SkipToSync) {
                let _ = self.cbuf.split_to(h.frame_len());
                if tag == Some(FrontendTag::Sync) {
                    self.intake = Intake::Open;
                    encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
                }
                continue;
            }
            if let Some(next) = self.pump_unit(tag)? {
                return Ok(next);
            }
        }
    }

    /// Routes and forwards the unit at the front of the buffer, whose first message has `tag`
    /// (`None`: unknown, refused by `scan_unit`). `Some`: what `pump_client` returns now.
    fn pump_unit(&mut self, tag: Option<FrontendTag>) -> Result<Option<Pump<L>>, Error> {
        use FrontendTag as F;
        let mid_unit = self.attached.as_ref().is_some_and(|a| a.unsynced);
        if matches!(tag, Some(F::CopyData | F::CopyDone | F::CopyFail)) && !mid_unit {
            // Copy data flows to the backend running COPY; outside COPY PostgreSQL ignores it.
            let len = Header::peek(&self.cbuf, self.max_message)
                .ok()
                .flatten()
                .map_or(0, |h| h.frame_len());
            if self.attached.is_some() {
                self.forward(len, 0, false);
            } else {
                let _ = self.cbuf.split_to(len);
            }
            return Ok(None);
        }
        let mut unit = self.scan_unit()?;
        if unit.len == 0 {
            return Ok(None);
        }
        // A unit the proxy answers itself waits until the backend has answered everything
        // before it: the client must get its responses in order, and never inside a long row
        // that is still streaming.
        let dealloc = match tag {
            Some(F::Query) => self.local_deallocate(&unit),
            _ => None,
        };
        let local =
            unit.refused || unit.over_limit || unit.duplicate.is_some() || dealloc.is_some();
        let owed = self
            .attached
            .as_ref()
            .is_some_and(|a| a.pending > 0 || a.streaming > 0);
        if local && owed {
            self.intake = Intake::Blocked;
            return Ok(Some(Pump::Wait));
        }
        if unit.refused {
            let e = ErrorFields::error(
                "25006",
                "a pgpilot:replica hint on a statement that may write is refused",
            );
            self.drop_unit(&unit, &e);
            return Ok(None);
        }
        if let Some(name) = unit.duplicate.take() {
            let e = ErrorFields::error(
                "42P05",
                format!("prepared statement \"{name}\" already exists"),
            );
            self.drop_unit(&unit, &e);
            return Ok(None);
        }
        if unit.over_limit {
            let e = ErrorFields::error(
                "53400",
                format!(
                    "too many prepared statements in this session (routing.max_client_statements = {}); close some first",
                    self.core.config().routing.max_client_statements
                ),
            );
            self.drop_unit(&unit, &e);
            return Ok(None);
        }
        if let Some(which) = dealloc {
            self.answer_deallocate(&unit, which);
            return Ok(None);
        }
        if self.mode == PoolMode::Transaction && self.attached.is_none() {
            match self.hold_begin(&mut unit) {
                Held::Answered => return Ok(None),
                // Not behind a held BEGIN: the client has been told its block began.
                Held::Attach(begin) => return Ok(Some(self.attach_for(unit, Some(begin), None))),
                Held::No => {}
            }
        }
        let Some(att) = self.attached.as_ref() else {
            let parses = self.only_named_parses(&unit);
            if parses == Some(0) {
                // A lone Sync: nothing to run. A Parse goes to a backend, even PQprepare's lone
                // one, so that its errors are the client's answer to it; but only to one that is
                // free at once: a client that drives several connections from one thread (pgbench
                // -M prepared) blocks in PQprepare while its other connections hold every
                // backend, and waiting would hang them all. With none free, it is answered here
                // and the statement is checked where it first runs.
                self.answer_parses(&unit, 0);
                return Ok(None);
            }
            return Ok(Some(self.attach_for(unit, None, parses)));
        };
        let free = !mid_unit && !self.pinned && att.status == TransactionStatus::Idle;
        let must_move = free && att.on_replica && unit.target == Target::Primary;
        // Session mode holds its primary; an autocommit read moves to a replica when the
        // primary is idle (in transaction mode an idle backend has been released already),
        // and only when a replica takes reads: otherwise it would move to a second primary
        // connection, and the unnamed statement would stay behind on the first.
        let may_move = free
            && self.mode == PoolMode::Session
            && !att.on_replica
            && unit.target == Target::Replica
            && att.is_idle()
            && (self.parked.as_ref().is_some_and(|p| p.on_replica)
                || crate::router::read_weight(&self.core.state(), |id| self.core.is_benched(id))
                    > 0);
        if must_move || may_move {
            if !att.is_idle() {
                self.intake = Intake::Blocked;
                return Ok(Some(Pump::Wait));
            }
            if self.mode == PoolMode::Session {
                return Ok(self.switch_held(unit.target));
            }
            self.release();
            return Ok(None);
        }
        self.note_effect(&mut unit);
        self.forward(unit.len, unit.rfqs, !unit.complete);
        Ok(None)
    }

    /// The unit waits while the shell attaches a backend for it.
    /// `parses`: the unit is PQprepare's Parse + Sync of that many named statements.
    fn attach_for(
        &mut self,
        unit: super::Unit,
        begin: Option<bytes::Bytes>,
        parses: Option<usize>,
    ) -> Pump<L> {
        let target = unit.target;
        self.intake = Intake::Attaching(Box::new(Waiting {
            unit,
            begin,
            parses,
        }));
        Pump::Attach {
            target,
            reuse: None,
        }
    }

    /// Queues the first `len` buffered client bytes for the attached backend and returns them
    /// as the client sent them. In transaction mode, named statements are rewritten for this
    /// backend on the way.
    pub(super) fn forward(&mut self, len: usize, rfqs: u32, unsynced: bool) -> Bytes {
        let mut batch = self.cbuf.split_to(len).freeze();
        let sent = batch.clone();
        let Some(att) = self.attached.as_mut() else {
            return sent;
        };
        // A second unit behind the first: the backend's failure would touch both.
        att.retry = None;
        self.served = true;
        if att.pending == 0 && rfqs > 0 {
            let now = std::time::Instant::now();
            att.query_since = Some(now);
            att.xact_since.get_or_insert(now);
            self.card.request.set(Some(now));
        }
        att.pending = att.pending.saturating_add(rfqs);
        if rfqs > 0 || unsynced {
            att.unsynced = unsynced;
        }
        {
            let mut rw = Rewrite {
                cap: self.core.config().routing.max_prepared_statements,
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
        // The shell writes it; what the socket does not take at once it writes while it reads
        // the backend's results.
        att.outbox.push(batch);
        self.answer_fakes();
        sent
    }
}

/// What `hold_begin` did with a unit.
pub(super) enum Held {
    /// Not a held-BEGIN matter: the unit goes on as usual.
    No,
    /// Answered by the proxy (a BEGIN held, or the empty block ended).
    Answered,
    /// The block's first statement: attach a backend and send it this BEGIN first.
    Attach(bytes::Bytes),
}
