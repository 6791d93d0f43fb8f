//! Units the proxy answers itself: a held BEGIN and the empty block after it, PQprepare's
//! Parse + Sync, DEALLOCATE of shared statements, and errors for units no backend may run.

use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::{
    deallocate, lone_default_begin, lone_transaction_end, set_transaction_read_only, Deallocate,
    Target,
};
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::FrameScan;
use pgpilot_protocol::frontend::{query_sql, statement_of, FrontendTag};

use bytes::BytesMut;

use super::login::intern_code;
use super::relay::Held;
use super::statements::{close_statement, forget};
use super::unit::Unit;
use super::{Intake, Session};
use crate::config::PoolMode;
use crate::error::Error;

impl<L> Session<L> {
    /// No backend for a unit: tell the client and drop the unit (up to its Sync).
    pub(super) fn fail_unit(&mut self, unit: &Unit, e: Error) {
        log::warn!("session={} no backend: {e}", self.pid);
        let fields = match &e {
            Error::BackendRejected { code, message, .. } => {
                ErrorFields::error(intern_code(code), message.clone())
            }
            e => ErrorFields::error(e.sqlstate(), e.to_string()),
        };
        self.drop_unit(unit, &fields)
    }

    /// The SQL of a unit that is one simple Query.
    pub(super) fn lone_query(&self, unit: &Unit) -> Option<&[u8]> {
        let frame = FrameScan::new(self.cbuf.get(..unit.len)?, self.max_message).next()?;
        if frame.tag() != FrontendTag::Query as u8 || frame.end() != unit.len {
            return None;
        }
        query_sql(frame.body()).ok()
    }

    /// A plain BEGIN is held, and answered here, until the next statement shows whether the
    /// block is read-only (`SET TRANSACTION READ ONLY`) or read-write; an empty block never
    /// reaches a backend.
    pub(super) fn hold_begin(&mut self, unit: &mut Unit) -> Held {
        let sql = self.lone_query(unit);
        if self.held_begin.is_none() {
            let holdable = sql.is_some_and(lone_default_begin)
                && self.rule.is_none()
                && !self.read_only_default;
            if !holdable {
                return Held::No;
            }
            let start = sql.is_some_and(|s| {
                s.trim_ascii_start()
                    .first()
                    .is_some_and(|b| b.eq_ignore_ascii_case(&b's'))
            });
            self.held_begin = Some(self.cbuf.split_to(unit.len).freeze());
            encode::command_complete(
                &mut self.out,
                if start {
                    b"START TRANSACTION"
                } else {
                    b"BEGIN"
                },
            );
            encode::ready_for_query(&mut self.out, TransactionStatus::InTransaction);
            return Held::Answered;
        }
        if let Some(commit) = sql.and_then(lone_transaction_end) {
            self.held_begin = None;
            let _ = self.cbuf.split_to(unit.len);
            encode::command_complete(&mut self.out, if commit { b"COMMIT" } else { b"ROLLBACK" });
            encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
            return Held::Answered;
        }
        let read_only = sql.is_some_and(set_transaction_read_only);
        unit.target = if read_only {
            Target::Replica
        } else {
            Target::Primary
        };
        match self.held_begin.take() {
            Some(begin) => Held::Attach(begin),
            None => Held::No,
        }
    }

    /// `Some(n)` when the unit is `n` Parse messages of named statements followed by Sync.
    pub(super) fn only_named_parses(&self, unit: &Unit) -> Option<usize> {
        if !unit.complete || unit.rfqs != 1 {
            return None;
        }
        let mut parses = 0;
        for frame in FrameScan::new(self.cbuf.get(..unit.len)?, self.max_message) {
            match FrontendTag::try_from(frame.tag()) {
                Ok(FrontendTag::Sync) => return Some(parses),
                Ok(FrontendTag::Parse)
                    if statement_of(frame.body()).is_ok_and(|(n, _)| !n.is_empty()) =>
                {
                    parses = parses.saturating_add(1)
                }
                _ => return None,
            }
        }
        None
    }

    /// Answers PQprepare's Parse + Sync of `parses` named statements when no backend was free
    /// at once: they are checked where they first run.
    pub(super) fn answer_parses(&mut self, unit: &Unit, parses: usize) {
        let _ = self.cbuf.split_to(unit.len);
        for _ in 0..parses {
            encode::parse_complete(&mut self.out);
        }
        encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
    }

    /// `DEALLOCATE name` of a statement the proxy prepared under a shared name (or `DEALLOCATE
    /// ALL` when nothing SQL-level was prepared) is answered by the proxy, since the backend
    /// knows the statement by another name and shares it. `Some` when this unit is one.
    pub(super) fn local_deallocate(&self, unit: &Unit) -> Option<Deallocate> {
        match self.lone_query(unit).and_then(deallocate)? {
            Deallocate::Name(name) if self.statements.contains_key(name.as_slice()) => {
                Some(Deallocate::Name(name))
            }
            Deallocate::All if !self.pinned => Some(Deallocate::All),
            _ => None,
        }
    }

    /// Answers a [`Session::local_deallocate`] unit: the client's name is forgotten, and the
    /// attached backend's statement closed (behind the answer) unless another of the client's
    /// names shares it. Backends in the pools keep theirs: other clients may share them.
    pub(super) fn answer_deallocate(&mut self, unit: &Unit, which: Deallocate) {
        let mut work = BytesMut::new();
        let tag: &[u8] = match which {
            Deallocate::Name(name) => {
                match self.attached.as_mut() {
                    Some(att) => {
                        let prepared = &mut att.backend.prepared;
                        if let Some(h) = forget(&mut self.statements, &name, prepared) {
                            close_statement(&mut work, h);
                            encode::sync(&mut work);
                        }
                    }
                    None => {
                        self.statements.remove(name.as_slice());
                    }
                }
                b"DEALLOCATE"
            }
            Deallocate::All => {
                self.statements.clear();
                // Session mode: the backend is the client's own, and is cleared too.
                if let (PoolMode::Session, Some(att)) = (self.mode, self.attached.as_mut()) {
                    att.backend.prepared.clear();
                    encode::query(&mut work, b"DEALLOCATE ALL");
                }
                b"DEALLOCATE ALL"
            }
        };
        if let (false, Some(att)) = (work.is_empty(), self.attached.as_mut()) {
            att.after.push((work.freeze(), false));
        }
        let _ = self.cbuf.split_to(unit.len);
        encode::command_complete(&mut self.out, tag);
        let status = self
            .attached
            .as_ref()
            .map_or(TransactionStatus::Idle, |a| a.status);
        encode::ready_for_query(&mut self.out, status);
        self.send_after();
    }

    /// Answers a unit with an error instead of running it; the rest of an extended unit is
    /// skipped up to its Sync, as PostgreSQL does after an error. The backend (if any) never
    /// saw the unit, so its transaction status is what the client keeps.
    pub(super) fn drop_unit(&mut self, unit: &Unit, fields: &ErrorFields) {
        let _ = self.cbuf.split_to(unit.len);
        encode::error_response(&mut self.out, fields);
        if unit.complete {
            let status = self
                .attached
                .as_ref()
                .map_or(TransactionStatus::Idle, |a| a.status);
            encode::ready_for_query(&mut self.out, status);
        } else {
            self.intake = Intake::SkipToSync;
        }
    }
}
