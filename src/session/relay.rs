//! The hot loop: client frames in, routed by unit (one Query, or extended messages up to
//! Sync) to a backend; backend frames out to the client unchanged. No payload is copied:
//! whole frames are cut off the read buffers with `split_to(..).freeze()` and written as they are.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_lite::AsyncRead;
use glommio::net::TcpStream;
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::{
    classify_with, deallocate, drops_all_statements, lone_default_begin, lone_transaction_end,
    session_effect, set_transaction_read_only, setting_changes, Deallocate, Reason, Route,
    SessionEffect, SettingChange, Target,
};
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::FrameScan;
use pgpilot_protocol::frontend::statement_of;
use pgpilot_protocol::{Header, ProtocolError};

use super::startup::intern_code;
use super::statements::{Rewrite, Stmt};
use super::Session;
use crate::backend::READ_CHUNK;
use crate::config::PoolMode;
use crate::core::Core;
use crate::error::Error;

/// Bytes asked of the kernel per client read.
const CLIENT_CHUNK: usize = 8 * 1024;
/// Bytes read on the stack when a client's buffer has been released.
const IDLE_READ: usize = 1024;
/// Largest single read, however big the frame being assembled.
const MAX_READ: usize = 256 * 1024;

/// What woke the session.
enum Event {
    Client(io::Result<usize>),
    Backend(io::Result<usize>),
    Shutdown,
}

/// A run of client frames that must go to one backend together: one Query or FunctionCall,
/// or extended-protocol messages up to and including Sync.
struct Unit {
    /// Bytes from the unit's start.
    len: usize,
    /// Where it may run: a replica only if every statement in it is a read.
    target: Target,
    /// ReadyForQuery messages it will produce.
    rfqs: u32,
    /// It ended with Sync, Query or FunctionCall (false: more frames of it are to come).
    complete: bool,
    /// What its statements do to session state a pooled backend would keep.
    effect: SessionEffect,
    /// A statement carries a replica hint but may write: the unit is refused.
    refused: bool,
    /// The session-level SETs / RESETs in it, to replay on the client's other backends.
    changes: Vec<SettingChange>,
    /// The classifier (not a rule or read-your-writes) sent it to the primary.
    writes: bool,
    /// A `/* pgpilot:replica */` hint asked for a replica: it beats read-your-writes.
    replica_hint: bool,
    /// DISCARD ALL / DEALLOCATE ALL: the client's prepared statements are gone.
    drops_statements: bool,
}

/// Adds what a statement does to session state to its unit; SETs that cannot be replayed
/// exactly pin the client instead.
fn note_settings(unit: &mut Unit, sql: &[u8]) {
    let effect = session_effect(sql);
    if effect == SessionEffect::Discard {
        let (discard, dealloc) = drops_all_statements(sql);
        unit.drops_statements |= discard || dealloc;
        if discard {
            unit.changes.push(SettingChange::ResetAll);
        }
    }
    if effect == SessionEffect::Settings {
        match setting_changes(sql) {
            Some(changes) => unit.changes.extend(changes),
            None => unit.effect = SessionEffect::Pin,
        }
    }
    unit.effect = unit.effect.max(effect);
}

fn join(a: Option<Target>, b: Target) -> Option<Target> {
    match (a, b) {
        (Some(Target::Primary), _) | (_, Target::Primary) => Some(Target::Primary),
        _ => Some(Target::Replica),
    }
}

impl Session {
    /// Relays until the client leaves, the session fails, or shutdown ends an idle session.
    pub(super) async fn relay(&mut self) -> Result<(), Error> {
        loop {
            if !self.blocked && !self.pump_client().await? {
                return Ok(());
            }
            match self.wait().await {
                Event::Client(Ok(0)) => return Ok(()),
                Event::Client(Ok(_)) => {}
                Event::Client(Err(e)) => return Err(Error::ClientIo(e)),
                Event::Backend(Ok(0)) => {
                    self.backend_lost(io::ErrorKind::UnexpectedEof.into())
                        .await?
                }
                Event::Backend(Err(e)) => self.backend_lost(e).await?,
                Event::Backend(Ok(_)) => self.pump_backend().await?,
                Event::Shutdown => {
                    let e = ErrorFields::fatal(
                        "57P01",
                        "terminating connection due to administrator command",
                    );
                    self.send_error(&e).await;
                    return Ok(());
                }
            }
        }
    }

    /// Waits until the client or the attached backend has bytes, or shutdown begins while idle.
    async fn wait(&mut self) -> Event {
        if self.cbuf.is_empty() && self.cbuf.capacity() > 0 {
            // Everything read has been handled: give the memory back while the client is quiet.
            self.cbuf = BytesMut::new();
        }
        let read_client = !self.blocked;
        let idle = self.attached.as_ref().is_none_or(|a| a.is_idle());
        let (core, pid) = (&self.core, self.pid);
        let (client, cbuf, attached) = (&mut self.client, &mut self.cbuf, &mut self.attached);
        poll_fn(|cx| {
            if read_client {
                if let Poll::Ready(r) = poll_fill(client, cbuf, CLIENT_CHUNK, cx) {
                    return Poll::Ready(Event::Client(r));
                }
            }
            if let Some(att) = attached.as_mut() {
                if let Poll::Ready(r) = poll_fill(
                    &mut att.backend.stream,
                    &mut att.backend.rbuf,
                    READ_CHUNK,
                    cx,
                ) {
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

    /// Acts on every whole client frame buffered. `Ok(false)`: the client said Terminate.
    async fn pump_client(&mut self) -> Result<bool, Error> {
        loop {
            let Some(h) = Header::peek(&self.cbuf, self.max_message).map_err(Error::Client)? else {
                return Ok(true);
            };
            if self.cbuf.len() < h.frame_len() {
                self.cbuf.reserve(h.frame_len() - self.cbuf.len());
                return Ok(true);
            }
            match h.tag {
                b'X' => return Ok(false),
                b'p' => {
                    return Err(Error::Client(ProtocolError::Malformed {
                        tag: b'p',
                        what: "password message after authentication",
                    }))
                }
                _ => {}
            }
            if self.skip_until_sync {
                let _ = self.cbuf.split_to(h.frame_len());
                if h.tag == b'S' {
                    self.skip_until_sync = false;
                    encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
                    self.flush_out().await?;
                }
                continue;
            }
            if !self.pump_unit(h.tag).await? {
                return Ok(true);
            }
        }
    }

    /// Routes and forwards the unit at the front of the buffer. `Ok(false)`: wait for the backend.
    async fn pump_unit(&mut self, tag: u8) -> Result<bool, Error> {
        let mid_unit = self.attached.as_ref().is_some_and(|a| a.unsynced);
        if matches!(tag, b'd' | b'c' | b'f') && !mid_unit {
            // Copy data flows to the backend running COPY; outside COPY PostgreSQL ignores it.
            let len = Header::peek(&self.cbuf, self.max_message)
                .ok()
                .flatten()
                .map_or(0, |h| h.frame_len());
            if self.attached.is_some() {
                self.forward(len, 0, false).await?;
            } else {
                let _ = self.cbuf.split_to(len);
            }
            return Ok(true);
        }
        let mut unit = self.scan_unit()?;
        if unit.len == 0 {
            return Ok(true);
        }
        if unit.refused {
            let e = ErrorFields::error(
                "25006",
                "a pgpilot:replica hint on a statement that may write is refused",
            );
            self.drop_unit(&unit, &e).await?;
            return Ok(true);
        }
        if tag == b'Q' && self.answer_deallocate(&unit).await? {
            return Ok(true);
        }
        if self.mode == PoolMode::Transaction
            && self.attached.is_none()
            && self.hold_begin(&mut unit).await?
        {
            return Ok(true);
        }
        let Some(att) = self.attached.as_ref() else {
            if let Some(parses) = self.only_named_parses(&unit) {
                // A lone Sync (parses = 0), or PQprepare's Parse + Sync of named statements:
                // nothing to run; the statements are prepared lazily where they are used.
                let _ = self.cbuf.split_to(unit.len);
                for _ in 0..parses {
                    encode::parse_complete(&mut self.out);
                }
                encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
                self.flush_out().await?;
                return Ok(true);
            }
            // Boxed: the connect path is deep, and every idle session would carry its size.
            if let Err(e) = Box::pin(self.attach(unit.target)).await {
                self.fail_unit(&unit, e).await?;
                return Ok(true);
            }
            self.flush_out().await?;
            self.note_effect(&mut unit);
            return self
                .forward(unit.len, unit.rfqs, !unit.complete)
                .await
                .map(|()| true);
        };
        let free = !mid_unit && !self.pinned && att.status == TransactionStatus::Idle;
        let must_move = free && att.on_replica && unit.target == Target::Primary;
        // Session mode holds its primary; an autocommit read moves to a replica when the
        // primary is idle (in transaction mode an idle backend has been released already).
        let may_move = free
            && self.mode == PoolMode::Session
            && !att.on_replica
            && unit.target == Target::Replica
            && att.is_idle();
        if must_move || may_move {
            if att.is_idle() {
                if self.mode == PoolMode::Session {
                    self.switch_held(unit.target).await;
                } else {
                    self.release();
                }
                return Ok(true);
            }
            self.blocked = true;
            return Ok(false);
        }
        self.note_effect(&mut unit);
        self.forward(unit.len, unit.rfqs, !unit.complete).await?;
        Ok(true)
    }

    /// A unit that changes session state leaves its backend in a state no other client may
    /// inherit: the next attach resets it. A client's own SETs in autocommit are kept once their
    /// unit ends cleanly and replayed on its other backends; after DISCARD / DEALLOCATE the
    /// backend's shared statements are gone; state that cannot move (LISTEN, temp tables, a SET
    /// inside a transaction block…) pins the client to the backend.
    fn note_effect(&mut self, unit: &mut Unit) {
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        if !att.on_replica && (unit.writes || att.status != TransactionStatus::Idle) {
            self.last_write = Some(std::time::Instant::now());
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
            log::debug!(
                "session={} pinned to backend {}",
                self.pid,
                att.backend.addr
            );
        }
    }

    /// Finds the unit at the front of the client buffer and records the statements it prepares.
    fn scan_unit(&mut self) -> Result<Unit, Error> {
        let mut unit = Unit {
            len: 0,
            target: Target::Primary,
            rfqs: 0,
            complete: false,
            effect: SessionEffect::None,
            refused: false,
            changes: Vec::new(),
            writes: false,
            replica_hint: false,
            drops_statements: false,
        };
        let mut target = None;
        let functions = &*Core::functions_for(&self.core, &self.user, &self.database);
        let mut scan = FrameScan::new(&self.cbuf, self.max_message);
        for (at, h) in &mut scan {
            let frame = &self.cbuf[at..at + h.frame_len()];
            let body = &frame[5..];
            match h.tag {
                b'X' | b'p' => break,
                b'Q' => {
                    let sql = body.strip_suffix(&[0]).unwrap_or(body);
                    let mut route = classify_with(sql, functions);
                    if self.read_only_default && lone_default_begin(sql) {
                        // The session's default_transaction_read_only makes this block read-only.
                        route = Route {
                            target: Target::Replica,
                            reason: Reason::ReadOnlyTransaction,
                        };
                    }
                    unit.refused |= route.reason == Reason::HintRefused;
                    unit.replica_hint |= route
                        == Route {
                            target: Target::Replica,
                            reason: Reason::Hint,
                        };
                    target = join(target, route.target);
                    note_settings(&mut unit, sql);
                    unit.rfqs += 1;
                    unit.complete = true;
                }
                b'F' => {
                    target = join(target, Target::Primary);
                    unit.rfqs += 1;
                    unit.complete = true;
                }
                b'S' => {
                    unit.rfqs += 1;
                    unit.complete = true;
                }
                b'P' => {
                    let (name, query) = statement_of(body).map_err(Error::Client)?;
                    let route = classify_with(query, functions);
                    let t = route.target;
                    unit.refused |= route.reason == Reason::HintRefused;
                    unit.replica_hint |= route
                        == Route {
                            target: Target::Replica,
                            reason: Reason::Hint,
                        };
                    note_settings(&mut unit, query);
                    if route.reason == Reason::HintRefused {
                        // Refused: the statement is never created.
                    } else if name.is_empty() {
                        self.unnamed = t;
                    } else {
                        let stmt = Stmt::from_parse(body, name.len(), t, self.gucs.hash);
                        self.statements
                            .insert(bytes::Bytes::copy_from_slice(name), stmt);
                    }
                    target = join(target, t);
                }
                b'B' | b'D' | b'C' => {
                    if let Some(t) = self.statement_route(h.tag, body) {
                        target = join(target, t);
                    }
                }
                b'E' | b'H' | b'd' | b'c' | b'f' => {}
                tag => return Err(Error::Client(ProtocolError::UnknownTag { tag })),
            }
            unit.len = at + h.frame_len();
            if unit.complete {
                break;
            }
        }
        if let (Some(e), 0) = (scan.error(), unit.len) {
            return Err(Error::Client(e));
        }
        let classified = target.unwrap_or(Target::Primary);
        unit.writes = classified == Target::Primary;
        let window = self.core.config.routing.read_your_writes;
        let just_wrote = self.last_write.is_some_and(|t| t.elapsed() < window);
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

    /// The route of the statement a Bind, Describe or Close names (portals have none).
    fn statement_route(&self, tag: u8, body: &[u8]) -> Option<Target> {
        let name = match tag {
            b'B' => {
                let portal_end = memchr_nul(body)?;
                let rest = &body[portal_end + 1..];
                &rest[..memchr_nul(rest)?]
            }
            _ if body.first() == Some(&b'S') => &body[1..1 + memchr_nul(&body[1..])?],
            _ => return None,
        };
        if name.is_empty() {
            return Some(self.unnamed);
        }
        Some(
            self.statements
                .get(name)
                .map_or(Target::Primary, |s| s.target),
        )
    }

    /// Sends the first `len` buffered client bytes to the attached backend.
    /// In transaction mode, named statements are rewritten for this backend on the way.
    async fn forward(&mut self, len: usize, rfqs: u32, unsynced: bool) -> Result<(), Error> {
        let mut batch = self.cbuf.split_to(len).freeze();
        let Some(att) = self.attached.as_mut() else {
            return Ok(());
        };
        att.pending += rfqs;
        if rfqs > 0 || unsynced {
            att.unsynced = unsynced;
        }
        {
            let mut rw = Rewrite {
                cap: self.core.config.routing.max_prepared_statements,
                prepared: &mut att.backend.prepared,
                slots: &mut att.slots,
                skipping: &mut att.skipping,
                copy_in: &mut att.copy_in,
                ignored_syncs: 0,
            };
            batch = rw.unit(batch, &mut self.statements);
            att.pending -= rw.ignored_syncs.min(att.pending);
        }
        log::trace!(
            "session={} -> backend {}: {:?} pending={} slots={:?}",
            self.pid,
            att.backend.key.0,
            super::tags(&batch),
            att.pending,
            att.slots
        );
        if !batch.is_empty() {
            if let Err(Error::Backend { source, .. }) = att.backend.send(&batch).await {
                return self.backend_lost(source).await;
            }
        }
        self.answer_fakes().await
    }

    /// No backend for a unit: tell the client and drop the unit (up to its Sync).
    async fn fail_unit(&mut self, unit: &Unit, e: Error) -> Result<(), Error> {
        log::warn!("session={} no backend: {e}", self.pid);
        let fields = match &e {
            Error::BackendRejected { code, message, .. } => {
                ErrorFields::error(intern_code(code), message.clone())
            }
            e => ErrorFields::error(e.sqlstate(), e.to_string()),
        };
        self.drop_unit(unit, &fields).await
    }

    /// The SQL of a unit that is one simple Query.
    fn lone_query(&self, unit: &Unit) -> Option<&[u8]> {
        let frame = self.cbuf.get(..unit.len)?;
        let h = Header::peek(frame, self.max_message).ok().flatten()?;
        (h.tag == b'Q' && h.frame_len() == unit.len).then(|| &frame[5..frame.len() - 1])
    }

    /// A plain BEGIN is held, and answered here, until the next statement shows whether the
    /// block is read-only (`SET TRANSACTION READ ONLY`) or read-write; an empty block never
    /// reaches a backend. `Ok(true)`: the unit was answered here.
    async fn hold_begin(&mut self, unit: &mut Unit) -> Result<bool, Error> {
        let sql = self.lone_query(unit);
        if self.held_begin.is_none() {
            let holdable = sql.is_some_and(lone_default_begin)
                && self.rule.is_none()
                && !self.read_only_default;
            if !holdable {
                return Ok(false);
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
            self.flush_out().await?;
            return Ok(true);
        }
        if let Some(commit) = sql.and_then(lone_transaction_end) {
            self.held_begin = None;
            let _ = self.cbuf.split_to(unit.len);
            encode::command_complete(&mut self.out, if commit { b"COMMIT" } else { b"ROLLBACK" });
            encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
            self.flush_out().await?;
            return Ok(true);
        }
        let read_only = sql.is_some_and(set_transaction_read_only);
        unit.target = if read_only {
            Target::Replica
        } else {
            Target::Primary
        };
        let Some(begin) = self.held_begin.take() else {
            return Ok(false);
        };
        if let Err(e) = Box::pin(self.attach(unit.target)).await {
            self.fail_unit(unit, e).await?;
            return Ok(true);
        }
        let Some(att) = self.attached.as_mut() else {
            return Ok(false);
        };
        att.hidden += 1;
        if let Err(Error::Backend { source, .. }) = att.backend.send(&begin).await {
            self.backend_lost(source).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// `Some(n)` when the unit is `n` Parse messages of named statements followed by Sync.
    fn only_named_parses(&self, unit: &Unit) -> Option<usize> {
        if !unit.complete || unit.rfqs != 1 {
            return None;
        }
        let mut parses = 0;
        for (at, h) in FrameScan::new(&self.cbuf[..unit.len], self.max_message) {
            match h.tag {
                b'S' => return Some(parses),
                b'P' if statement_of(&self.cbuf[at + 5..at + h.frame_len()])
                    .is_ok_and(|(n, _)| !n.is_empty()) =>
                {
                    parses += 1
                }
                _ => return None,
            }
        }
        None
    }

    /// `DEALLOCATE name` of a statement the proxy prepared under a shared name (or `DEALLOCATE
    /// ALL` when nothing SQL-level was prepared): the client's name is forgotten and the proxy
    /// answers, since the backend knows the statement by another name and shares it.
    async fn answer_deallocate(&mut self, unit: &Unit) -> Result<bool, Error> {
        let frame = &self.cbuf[..unit.len];
        let Some(h) = Header::peek(frame, self.max_message).ok().flatten() else {
            return Ok(false);
        };
        if h.frame_len() != unit.len {
            return Ok(false);
        }
        let sql = &frame[5..frame.len() - 1];
        let tag: &[u8] = match deallocate(sql) {
            Some(Deallocate::Name(name)) if self.statements.remove(name.as_slice()).is_some() => {
                b"DEALLOCATE"
            }
            Some(Deallocate::All) if !self.pinned => {
                self.statements.clear();
                b"DEALLOCATE ALL"
            }
            _ => return Ok(false),
        };
        let _ = self.cbuf.split_to(unit.len);
        encode::command_complete(&mut self.out, tag);
        let status = self
            .attached
            .as_ref()
            .map_or(TransactionStatus::Idle, |a| a.status);
        encode::ready_for_query(&mut self.out, status);
        self.flush_out().await?;
        Ok(true)
    }

    /// Answers a unit with an error instead of running it; the rest of an extended unit is
    /// skipped up to its Sync, as PostgreSQL does after an error. The backend (if any) never
    /// saw the unit, so its transaction status is what the client keeps.
    async fn drop_unit(&mut self, unit: &Unit, fields: &ErrorFields) -> Result<(), Error> {
        let _ = self.cbuf.split_to(unit.len);
        encode::error_response(&mut self.out, fields);
        if unit.complete {
            let status = self
                .attached
                .as_ref()
                .map_or(TransactionStatus::Idle, |a| a.status);
            encode::ready_for_query(&mut self.out, status);
        } else {
            self.skip_until_sync = true;
        }
        self.flush_out().await
    }
}

fn memchr_nul(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == 0)
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
            buf.extend_from_slice(&first[..n]);
        }
        return result;
    }
    let start = buf.len();
    if buf.capacity() - start < chunk {
        buf.reserve(chunk);
    }
    let room = (buf.capacity() - start).min(MAX_READ);
    buf.resize(start + room, 0);
    let result = Pin::new(stream).poll_read(cx, &mut buf[start..]);
    let n = match &result {
        Poll::Ready(Ok(n)) => *n,
        _ => 0,
    };
    buf.truncate(start + n);
    result
}
