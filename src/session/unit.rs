//! The unit of routing: one Query or FunctionCall, or extended-protocol messages up to Sync.
//! Finding it in the client buffer classifies its statements and records the ones it prepares;
//! forwarding it applies what it does to session state.

use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::{
    analyze, drops_all_statements, lone_default_begin, setting_changes, Reason, Route,
    SessionEffect, SettingChange, Target,
};
use pgpilot_protocol::frame::FrameScan;
use pgpilot_protocol::frontend::{
    bind_statement, describe_target, query_sql, statement_of, FrontendTag, KIND_STATEMENT,
};
use pgpilot_protocol::ProtocolError;

use super::statements::Stmt;
use super::{Seen, Session};
use crate::config::{ReadYourWrites, Role};
use crate::core::Core;
use crate::error::Error;

/// A run of client frames that must go to one backend together: one Query or FunctionCall,
/// or extended-protocol messages up to and including Sync.
pub(super) struct Unit {
    /// Bytes from the unit's start.
    pub(super) len: usize,
    /// Where it may run: a replica only if every statement in it is a read.
    pub(super) target: Target,
    /// ReadyForQuery messages it will produce.
    pub(super) rfqs: u32,
    /// It ended with Sync, Query or FunctionCall (false: more frames of it are to come).
    pub(super) complete: bool,
    /// What its statements do to session state a pooled backend would keep.
    pub(super) effect: SessionEffect,
    /// A statement carries a replica hint but may write: the unit is refused.
    pub(super) refused: bool,
    /// It prepares a named statement beyond `routing.max_client_statements`: refused.
    pub(super) over_limit: bool,
    /// It prepares a named statement under a name the client already uses for another text
    /// (and closes none first): refused with 42P05, as PostgreSQL refuses it.
    pub(super) duplicate: Option<Box<str>>,
    /// A Close of a statement came earlier in the unit.
    closes: bool,
    /// The session-level SETs / RESETs in it, to replay on the client's other backends.
    pub(super) changes: Vec<SettingChange>,
    /// The classifier (not a rule or read-your-writes) sent it to the primary.
    pub(super) writes: bool,
    /// A `/* pgpilot:replica */` hint asked for a replica: it beats read-your-writes.
    pub(super) replica_hint: bool,
    /// DISCARD ALL / DEALLOCATE ALL: the client's prepared statements are gone.
    pub(super) drops_statements: bool,
    /// Its statements by route: `[reason][primary, replica]` (SHOW ROUTES, the metrics).
    pub(super) routes: Routes,
    /// The start of the statement that would pin the session (SHOW PINS).
    pub(super) pin_cause: Option<Box<str>>,
}

/// Statements by route reason and target, counted per unit and then per core.
pub type Routes = [[u16; 2]; Reason::ALL.len()];

impl Unit {
    /// Adds one statement's route and session effect to the unit; SETs that cannot be
    /// replayed exactly pin the client instead.
    pub(super) fn note_statement(&mut self, route: Route, effect: SessionEffect, sql: &[u8]) {
        let side = usize::from(route.target == Target::Replica);
        if let Some(n) = self
            .routes
            .get_mut(route.reason.index())
            .and_then(|r| r.get_mut(side))
        {
            *n = n.saturating_add(1);
        }
        self.refused |= route.reason == Reason::HintRefused;
        self.replica_hint |= route
            == Route {
                target: Target::Replica,
                reason: Reason::Hint,
            };
        if effect == SessionEffect::Discard {
            let (discard, dealloc) = drops_all_statements(sql);
            self.drops_statements |= discard || dealloc;
            if discard {
                self.changes.push(SettingChange::ResetAll);
            }
        }
        let mut pins = effect == SessionEffect::Pin;
        if effect == SessionEffect::Settings {
            match setting_changes(sql) {
                Some(changes) => self.changes.extend(changes),
                None => {
                    self.effect = SessionEffect::Pin;
                    pins = true;
                }
            }
        }
        if pins && self.pin_cause.is_none() {
            self.pin_cause = Some(statement_start(sql));
        }
        self.effect = self.effect.max(effect);
    }
}

/// The first words of a statement, on one line, for SHOW PINS.
fn statement_start(sql: &[u8]) -> Box<str> {
    let text = String::from_utf8_lossy(sql);
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut start: String = words.join(" ").chars().take(60).collect();
    if start.len() < words.join(" ").len() {
        start.push('…');
    }
    start.into_boxed_str()
}

fn join(a: Option<Target>, b: Target) -> Option<Target> {
    match (a, b) {
        (Some(Target::Primary), _) | (_, Target::Primary) => Some(Target::Primary),
        _ => Some(Target::Replica),
    }
}

impl<L> Session<L> {
    /// Finds the unit at the front of the client buffer and records the statements it prepares.
    pub(super) fn scan_unit(&mut self) -> Result<Unit, Error> {
        let mut unit = Unit {
            len: 0,
            target: Target::Primary,
            rfqs: 0,
            complete: false,
            effect: SessionEffect::None,
            refused: false,
            over_limit: false,
            duplicate: None,
            closes: false,
            changes: Vec::new(),
            writes: false,
            replica_hint: false,
            drops_statements: false,
            routes: [[0; 2]; Reason::ALL.len()],
            pin_cause: None,
        };
        let mut target = None;
        let functions = &*Core::functions_for(&self.core, &self.user, &self.database);
        let mut scan = FrameScan::new(&self.cbuf, self.max_message);
        for frame in &mut scan {
            let body = frame.body();
            let tag = FrontendTag::try_from(frame.tag()).map_err(Error::Client)?;
            match tag {
                FrontendTag::Terminate | FrontendTag::Password => break,
                FrontendTag::Query => {
                    let sql = query_sql(body).map_err(Error::Client)?;
                    let (mut route, effect) = analyze(sql, functions);
                    if self.read_only_default && lone_default_begin(sql) {
                        // The session's default_transaction_read_only makes this block read-only.
                        route = Route {
                            target: Target::Replica,
                            reason: Reason::ReadOnlyTransaction,
                        };
                    }
                    unit.note_statement(route, effect, sql);
                    target = join(target, route.target);
                    unit.rfqs = unit.rfqs.saturating_add(1);
                    unit.complete = true;
                }
                FrontendTag::FunctionCall => {
                    target = join(target, Target::Primary);
                    unit.rfqs = unit.rfqs.saturating_add(1);
                    unit.complete = true;
                }
                FrontendTag::Sync => {
                    unit.rfqs = unit.rfqs.saturating_add(1);
                    unit.complete = true;
                }
                FrontendTag::Parse => {
                    let (name, query) = statement_of(body).map_err(Error::Client)?;
                    let (route, effect) = analyze(query, functions);
                    let t = route.target;
                    unit.note_statement(route, effect, query);
                    if route.reason == Reason::HintRefused {
                        // Refused: the statement is never created.
                    } else if name.is_empty() {
                        self.unnamed = t;
                    } else {
                        let hash = Stmt::hash_of(body, name.len(), self.gucs.hash);
                        let limit = self.core.config().routing.max_client_statements;
                        match self.statements.get(name) {
                            // A unit is scanned again after it waited (for a backend, or for
                            // answers owed before it): its own Parse is recorded already.
                            Some(s) if s.hash == hash => {}
                            Some(_) if !unit.closes => {
                                unit.duplicate = Some(String::from_utf8_lossy(name).into());
                            }
                            None if self.statements.len() >= limit => unit.over_limit = true,
                            _ => {
                                let stmt = Stmt::from_parse(body, name.len(), t, hash);
                                self.statements
                                    .insert(bytes::Bytes::copy_from_slice(name), stmt);
                            }
                        }
                    }
                    target = join(target, t);
                }
                FrontendTag::Bind | FrontendTag::Describe | FrontendTag::Close => {
                    unit.closes |= tag == FrontendTag::Close;
                    if let Some(t) = self.statement_route(tag, body).map_err(Error::Client)? {
                        target = join(target, t);
                    }
                }
                FrontendTag::Execute
                | FrontendTag::Flush
                | FrontendTag::CopyData
                | FrontendTag::CopyDone
                | FrontendTag::CopyFail => {}
            }
            unit.len = frame.end();
            if unit.complete {
                break;
            }
        }
        if let (Some(e), 0) = (scan.error(), unit.len) {
            return Err(Error::Client(e));
        }
        let classified = target.unwrap_or(Target::Primary);
        unit.writes = classified == Target::Primary;
        let just_wrote = self.must_read_on_primary();
        unit.target = match self.rule {
            Some(t) => {
                unit.refused = false;
                t
            }
            None if just_wrote && !(unit.replica_hint && classified == Target::Replica) => {
                Target::Primary
            }
            None => classified,
        };
        Ok(unit)
    }

    /// Whether the session's reads must go to the primary to see its own writes: within the
    /// window after a write (`"time"`), or (`"lsn"`) until every replica that may serve reads
    /// has replayed a primary position taken after the write was acknowledged.
    fn must_read_on_primary(&mut self) -> bool {
        let config = self.core.config();
        let routing = &config.routing;
        match routing.read_your_writes {
            ReadYourWrites::Off => false,
            ReadYourWrites::Time => {
                let window = routing.read_your_writes_window;
                self.last_write.is_some_and(|t| t.elapsed() < window)
            }
            ReadYourWrites::Lsn => {
                if matches!(self.seen, Seen::Nothing) {
                    return false;
                }
                let state = self.core.state();
                if let Seen::Acked(at) = self.seen {
                    match state.primary().and_then(|p| p.lsn) {
                        Some((lsn, checked)) if checked >= at => self.seen = Seen::Floor(lsn),
                        _ => return true,
                    }
                }
                let Seen::Floor(floor) = self.seen else {
                    return true;
                };
                let mut serving = state
                    .backends
                    .iter()
                    .filter(|b| b.role == Role::Replica && b.status.takes_reads() && b.weight > 0)
                    .peekable();
                if serving.peek().is_none() {
                    return true;
                }
                let caught_up = serving.all(|b| b.lsn.is_some_and(|(lsn, _)| lsn >= floor));
                if caught_up {
                    // Every replica has it: nothing more to wait for.
                    self.seen = Seen::Nothing;
                }
                !caught_up
            }
        }
    }

    /// The route of the statement a Bind, Describe or Close names (portals have none).
    pub(super) fn statement_route(
        &self,
        tag: FrontendTag,
        body: &[u8],
    ) -> Result<Option<Target>, ProtocolError> {
        let name = match tag {
            FrontendTag::Bind => bind_statement(body)?,
            _ => match describe_target(tag as u8, body)? {
                (KIND_STATEMENT, name) => name,
                _ => return Ok(None),
            },
        };
        if name.is_empty() {
            return Ok(Some(self.unnamed));
        }
        Ok(Some(
            self.statements
                .get(name)
                .map_or(Target::Primary, |s| s.target),
        ))
    }

    /// A unit that changes session state leaves its backend in a state no other client may
    /// inherit: the next attach resets it. A client's own SETs in autocommit are kept once their
    /// unit ends cleanly and replayed on its other backends; after DISCARD / DEALLOCATE the
    /// backend's shared statements are gone; state that cannot move (LISTEN, temp tables, a SET
    /// inside a transaction block…) pins the client to the backend. Its statements are counted
    /// by route (it is on its way to the backend).
    pub(super) fn note_effect(&mut self, unit: &mut Unit) {
        self.core.count_routes(&unit.routes);
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        if !att.on_replica && (unit.writes || att.status != TransactionStatus::Idle) {
            self.last_write = Some(std::time::Instant::now());
            self.seen = Seen::Unacked;
        }
        let mut effect = unit.effect;
        if effect == SessionEffect::None {
            return;
        }
        if unit.drops_statements {
            self.statements.clear();
        }
        if !unit.changes.is_empty() {
            if att.status == TransactionStatus::Idle && att.changes.is_none() {
                att.changes = Some(std::mem::take(&mut unit.changes));
                att.changes_failed = false;
            } else {
                effect = SessionEffect::Pin;
            }
        }
        att.backend.applied = u64::MAX;
        if effect >= SessionEffect::Discard {
            att.backend.prepared.clear();
        }
        if effect == SessionEffect::Pin && !self.pinned {
            self.pinned = true;
            self.core.note_pin();
            let cause = unit.pin_cause.take();
            self.card
                .pin(cause.as_deref().unwrap_or("SET inside a transaction block"));
            log::debug!(
                "session={} pinned to backend {}",
                self.pid,
                att.backend.addr
            );
        }
    }
}
