#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
//! One client connection from accept to close.
//!
//! Two halves. [`Session`] is the core: synchronous, no sockets, no runtime. It takes events
//! (client bytes in `cbuf`, backend bytes in the attached backend's `rbuf`, everything written,
//! backend lost, a backend attached) and answers with what the I/O around it must do: bytes for
//! the client ([`Session::take_output`]), bytes for the backend (the attached backend's
//! `outbox`), a backend to attach ([`Pump::Attach`]), backends to pool ([`Action`]).
//! `shell` is that I/O for one client socket; `script` drives the core against a scripted
//! backend for the unit tests and the fuzz target.
//!
//! The core's files: `relay` cuts client input into `unit`s, routes them (or has `local`
//! answer them), rewrites named statements through `statements` and queues them in `outbox`;
//! `responses` passes the backend's answers on (long rows streamed); `attach` installs and
//! gives back backends; `params` turns client parameters into set_config calls. The shell's:
//! `handshake` decides startup and authentication without I/O and `startup` runs it; `connect`
//! checks backends out and sets them up; `login` sends the first ParameterStatus set.

mod attach;
mod connect;
mod console;
pub mod handshake;
mod io;
mod local;
mod login;
mod lost;
mod outbox;
mod params;
mod relay;
mod responses;
pub mod script;
mod settle;
mod shell;
mod startup;
mod statements;
mod unit;

use std::collections::HashMap;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::{SettingChange, Target};
use pgpilot_protocol::encode::{self, ErrorFields};

use crate::admin::{ClientCard, DbStats};
use crate::backend::Wire;
use crate::config::PoolMode;
use crate::core::Core;

pub(crate) use params::quote_literal;
pub use params::Gucs;
pub use shell::run;
use statements::{Slot, Stmt};
use unit::Unit;

/// A backend serving this session right now, and where its protocol state stands. `L` is
/// what the I/O shell keeps of it (its socket and pool); the core never looks inside.
pub struct Attached<L> {
    link: L,
    backend: Wire,
    /// Whether the backend is a replica (only reads may be sent to it).
    on_replica: bool,
    /// ReadyForQuery messages the client still expects from this backend.
    pending: u32,
    /// ReadyForQuery messages of proxy-made queries (a held BEGIN) still to swallow.
    hidden: u32,
    /// Extended-protocol messages were sent after the last Sync.
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    status: TransactionStatus,
    /// Responses the client expects, in order (transaction mode; see `statements`).
    slots: VecDeque<Slot>,
    /// The backend skips messages until Sync after an error.
    skipping: bool,
    /// The backend is in copy-in mode and the client has not ended the COPY yet.
    copy_in: bool,
    /// Session-level SETs sent in autocommit, kept once their unit ends without error.
    changes: Option<Vec<SettingChange>>,
    /// An ErrorResponse arrived while `changes` were in flight.
    changes_failed: bool,
    /// The transaction status when the unit carrying `changes` ended.
    changes_settled: Option<TransactionStatus>,
    /// Work of the proxy's own for this backend, hidden from the client, each piece ending in
    /// one ReadyForQuery, sent as soon as nothing is owed before it: the query that gives
    /// settings a RESET sent to the server's defaults their startup values back (`true`), and
    /// the Close of a statement the client deallocated.
    after: Vec<(Bytes, bool)>,
    /// Statements of the client's own Parse messages that failed, for the session to forget.
    failed_parses: Vec<u64>,
    /// Client frames not yet written to the backend.
    outbox: outbox::Outbox,
    /// Bytes of a long backend message still to pass through unparsed (see `responses`).
    streaming: usize,
    /// The client's bytes of the one autocommit read sent to this replica, while nothing of
    /// its answer has reached the client: if the replica fails meanwhile, the read is sent
    /// elsewhere and the client never sees the failure.
    retry: Option<Bytes>,
    /// The backend sent FATAL: it is closing the connection.
    fatal: bool,
    /// Since when the query now answered has been out (for SHOW STATS).
    query_since: Option<std::time::Instant>,
    /// Since when the transaction under way has run.
    xact_since: Option<std::time::Instant>,
}

impl<L> Attached<L> {
    /// Nothing outstanding, not in a transaction: the backend may serve someone else.
    fn is_idle(&self) -> bool {
        self.pending == 0
            && self.hidden == 0
            && self.after.is_empty()
            && self.outbox.is_empty()
            && self.streaming == 0
            && !self.unsynced
            && !self.copy_in
            && self.status == TransactionStatus::Idle
    }
}

/// A backend the shell checked out (or set up again) for the session.
pub struct Checkout<L> {
    /// The shell's half.
    pub link: L,
    /// Its protocol state.
    pub backend: Wire,
    /// Whether it is a replica.
    pub on_replica: bool,
}

/// What the core needs before it can go on with the client's input.
pub enum Pump<L> {
    /// Nothing, until the client or the backend sends more, or the backend takes what is queued.
    Wait,
    /// The client said Terminate.
    Terminate,
    /// Attach a backend that may run statements for `target` (trying `reuse`, the session's
    /// own idle one, first) and hand the outcome to [`Session::attached`].
    Attach {
        target: Target,
        reuse: Option<Box<Attached<L>>>,
    },
}

/// A backend the session is done with, for the shell to pool. Backends the core drops are
/// closed: only these go back.
pub enum Action<L> {
    /// Pool it as it is.
    Pool(L, Wire),
    /// Run the reset first; pool it only if that succeeds.
    Reset(L, Wire, Reset),
}

/// How a backend is cleaned before another client may have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// `pool.reset_query` (session mode).
    Configured,
    /// `DISCARD ALL`: a pinned client left temp tables, LISTEN or locks behind.
    DiscardAll,
}

/// Whether and how client input is taken now.
enum Intake {
    /// Each unit is acted on as it arrives.
    Open,
    /// The next unit waits for the attached backend to answer what it owes: the proxy answers
    /// it itself and answers must stay in order, or it must move to another backend.
    Blocked,
    /// An extended-protocol unit failed before reaching a backend: frames are dropped up to Sync.
    SkipToSync,
    /// The unit at the front waits for the shell to attach a backend.
    Attaching(Box<Waiting>),
}

/// What a replica must have replayed before it may serve this session's reads
/// (`read_your_writes = "lsn"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The session has not written: any replica will do.
    Nothing,
    /// A write was sent and is not acknowledged yet: its reads go to the primary.
    Unacked,
    /// The latest write was acknowledged then; no primary position seen since is known yet.
    Acked(std::time::Instant),
    /// A primary WAL position at or past the session's latest write.
    Floor(u64),
}

/// A unit waiting for its backend, and the held BEGIN to send before it, if any.
struct Waiting {
    unit: Unit,
    begin: Option<Bytes>,
    /// The unit is PQprepare's Parse + Sync of this many named statements: it takes a backend
    /// only if one is free at once, and is otherwise answered here (see `relay`).
    parses: Option<usize>,
}

impl<L> Session<L> {
    /// Whether the unit waiting for a backend takes one only if it is free at once.
    pub fn impatient(&self) -> bool {
        matches!(&self.intake, Intake::Attaching(w) if w.parses.is_some())
    }
}

/// What the core needs to know of the client when it starts.
pub struct Start {
    /// BackendKeyData pid handed to the client; also the session id in logs.
    pub pid: u32,
    pub user: Rc<str>,
    pub database: Rc<str>,
    /// Run-time parameters from the startup packet.
    pub gucs: Gucs,
    /// A `[[routing.rules]]` entry for this user or database.
    pub rule: Option<Target>,
    /// What the client proved, when its role was looked up (`[auth] query`).
    pub keys: Option<Rc<pgpilot_protocol::scram::ScramKeys>>,
    /// Bytes the client sent after its startup packet.
    pub input: BytesMut,
}

/// One client session's protocol state and decisions, without I/O.
pub struct Session<L> {
    core: Rc<Core>,
    /// BackendKeyData pid handed to the client; also the session id in logs.
    pid: u32,
    /// Bytes from the client not yet handled.
    cbuf: BytesMut,
    /// Messages the proxy itself sends the client, after everything in `output`.
    out: BytesMut,
    /// Bytes for the client, in order, before `out`.
    output: VecDeque<Bytes>,
    /// Backends for the shell to pool.
    actions: Vec<Action<L>>,
    mode: PoolMode,
    max_message: u32,
    user: Rc<str>,
    database: Rc<str>,
    /// Run-time parameters from the startup packet.
    startup: Rc<Gucs>,
    /// The session's own SETs since then, by parameter name.
    overrides: Vec<(String, String)>,
    /// `startup` with `overrides` laid over it: what every backend serving the client gets.
    gucs: Rc<Gucs>,
    /// Session mode: whether the parked backend being taken up again is a replica.
    rejoining: Option<bool>,
    /// What a parked backend sent before it was found unusable (its server's FATAL, say).
    /// (A cell: the shell sets it while it connects, holding the session shared.)
    last_words: std::cell::Cell<Bytes>,
    /// Boxed, like `parked`: an idle session should not carry a backend's worth of room.
    attached: Option<Box<Attached<L>>>,
    /// A plain BEGIN answered by the proxy, sent with the block's first statement.
    held_begin: Option<Bytes>,
    /// Session mode: the other backend the client holds (primary or replica), idle.
    parked: Option<Box<Attached<L>>>,
    /// The client's named prepared statements, with the route decided at their Parse.
    statements: HashMap<Bytes, Stmt>,
    /// Route of the unnamed statement.
    unnamed: Target,
    /// A `[[routing.rules]]` entry sends all of this session's statements here.
    /// What the client proved, when its role was looked up: backends are logged in with it.
    keys: Option<Rc<pgpilot_protocol::scram::ScramKeys>>,
    rule: Option<Target>,
    /// State that cannot move (LISTEN, temp tables, …) holds the client on its backend.
    pinned: bool,
    /// `default_transaction_read_only` is on for this session: a plain BEGIN opens a read-only
    /// block, which a replica may run.
    read_only_default: bool,
    /// When the session last sent a write (or worked in a transaction) on the primary.
    last_write: Option<std::time::Instant>,
    /// How far the session's own writes are known to have gone (`read_your_writes = "lsn"`).
    seen: Seen,
    intake: Intake,
    /// ParameterStatus values the client has been told.
    view: Rc<Vec<(String, String)>>,
    /// `params_version` of the backend `view` was last synced from.
    view_version: u64,
    /// Its entry in the core's registry: the backend query to cancel on CancelRequest, and
    /// what the admin console shows.
    card: Rc<ClientCard>,
    /// Its database's counters on this core.
    stats: Rc<DbStats>,
    /// The unit at the front of the input was sent again after its replica failed: it is not
    /// retried a second time.
    retried: bool,
    /// A unit of its has been sent to a backend. A shutdown ends an idle session only once it
    /// has: a client that has just logged in (maybe one the kernel handed this process as it
    /// closed its listeners) gets its first answer first.
    served: bool,
}

/// The message tags in a buffer of whole frames, for trace logs.
fn tags(buf: &[u8]) -> String {
    pgpilot_protocol::frame::FrameScan::new(buf, u32::MAX)
        .map(|f| f.tag() as char)
        .collect()
}

impl<L> Session<L> {
    /// The core of a session that has just authenticated; `card` is its registry entry.
    pub fn new(core: Rc<Core>, start: Start, card: Rc<ClientCard>) -> Self {
        let gucs = Rc::new(start.gucs);
        let stats = core.stats.for_database(&start.database);
        let mut s = Session {
            mode: core.config().server.pool_mode,
            max_message: core.config().server.max_message_bytes,
            core,
            pid: start.pid,
            cbuf: start.input,
            out: BytesMut::new(),
            output: VecDeque::new(),
            actions: Vec::new(),
            user: start.user,
            database: start.database,
            startup: gucs.clone(),
            overrides: Vec::new(),
            gucs,
            attached: None,
            held_begin: None,
            parked: None,
            rejoining: None,
            last_words: Default::default(),
            statements: HashMap::new(),
            unnamed: Target::Primary,
            rule: start.rule,
            keys: start.keys,
            pinned: false,
            read_only_default: false,
            last_write: None,
            seen: Seen::Nothing,
            intake: Intake::Open,
            view: Rc::new(Vec::new()),
            view_version: u64::MAX,
            card,
            stats,
            retried: false,
            served: false,
        };
        s.note_gucs();
        s
    }

    /// Whether shutdown may end the session now that it is idle: not before its first unit
    /// (until `shutdown_timeout_ms` forces it).
    pub fn may_end_when_idle(&self) -> bool {
        self.served
    }

    /// Client bytes not handled yet; the shell appends what it reads.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.cbuf
    }

    /// The next bytes to write to the client, in order; `None` when all is written.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if let Some(next) = self.output.pop_front() {
            return Some(next);
        }
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out).freeze())
    }

    /// The next backend for the shell to pool.
    pub fn take_action(&mut self) -> Option<Action<L>> {
        self.actions.pop()
    }

    /// Whether anything waits for the shell: bytes for the client or backends to pool.
    pub fn has_work(&self) -> bool {
        !self.output.is_empty() || !self.out.is_empty() || !self.actions.is_empty()
    }

    /// Between transactions (no backend attached, everything handed over), the session keeps
    /// no room it is not using: an idle client costs as little as it can.
    fn shrink_when_idle(&mut self) {
        if self.attached.is_some() || !self.output.is_empty() || !self.actions.is_empty() {
            return;
        }
        if self.output.capacity() > 0 {
            self.output = VecDeque::new();
        }
        if self.actions.capacity() > 0 {
            self.actions = Vec::new();
        }
    }

    /// Queues a backend batch for the client behind the proxy's own messages so far.
    fn pass_on(&mut self, batch: Bytes) {
        if !self.out.is_empty() {
            self.output
                .push_back(std::mem::take(&mut self.out).freeze());
        }
        if !batch.is_empty() {
            self.output.push_back(batch);
        }
    }

    /// Whether the client's next bytes are wanted now: not while a unit waits, nor while more
    /// than `outbox::LIMIT` bytes wait for the backend (backpressure towards the client).
    fn reads_client(&self) -> bool {
        !matches!(self.intake, Intake::Blocked | Intake::Attaching(_))
            && self.attached.as_ref().is_none_or(|a| !a.outbox.is_full())
    }

    /// Nothing is owed to or by a backend: shutdown may end the session now.
    fn is_idle(&self) -> bool {
        self.attached.as_ref().is_none_or(|a| a.is_idle())
    }

    /// A unit that waited for the backend may go on.
    fn unblock(&mut self) {
        if matches!(self.intake, Intake::Blocked) {
            self.intake = Intake::Open;
        }
    }

    /// The client has part of a streamed backend message: nothing else may be written to it.
    fn mid_message(&self) -> bool {
        self.attached.as_ref().is_some_and(|a| a.streaming > 0)
    }

    /// Recomputes what follows from the session's parameters.
    fn note_gucs(&mut self) {
        self.read_only_default = self.gucs.list.iter().any(|(n, v)| {
            n == "default_transaction_read_only"
                && matches!(
                    v.to_ascii_lowercase().as_str(),
                    "on" | "true" | "yes" | "1" | "t" | "y"
                )
        });
    }

    /// Queues an ErrorResponse for the client.
    fn queue_error(&mut self, e: &ErrorFields) {
        encode::error_response(&mut self.out, e);
    }

    /// Ends the session: its backends go back (clean ones) or are closed.
    pub fn finish(&mut self) {
        self.card.cancel.set(None);
        for att in [self.attached.take(), self.parked.take()]
            .into_iter()
            .flatten()
        {
            self.give_back(*att);
        }
    }
}

#[cfg(test)]
mod tests;
