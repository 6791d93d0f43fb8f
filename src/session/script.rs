//! Drives a session core with no sockets and no runtime: client bytes go in, a scripted
//! backend answers whatever reaches it, and what the client would receive comes out. The core's
//! unit tests and the `session` fuzz target use it.
//!
//! The scripted backend is a small model of PostgreSQL's side of the protocol, enough to
//! follow the core through every state: transaction status, named statements (a Bind of a
//! statement the backend does not have fails as PostgreSQL fails it), errors inside a
//! pipeline (skipping to Sync), COPY in and out. SQL containing `fail` fails.

use std::cell::Cell;
use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::FrameScan;
use pgpilot_protocol::frontend::{
    bind_statement, describe_target, query_sql, statement_of, FrontendTag, KIND_STATEMENT,
};

use super::{Action, Checkout, Gucs, Pump, Session, Start};
use crate::backend::Wire;
use crate::config::Config;
use crate::control::ClusterState;
use crate::core::Core;
use crate::error::Error;

/// Rounds of the drive loop without progress before it stops; progress always comes sooner.
const MAX_ROUNDS: usize = 10_000;

/// A session core, its scripted backends, and what its client has received.
pub struct Script {
    session: Session<usize>,
    /// Every backend ever checked out, by the id the core holds as its link.
    backends: Vec<Scripted>,
    /// Idle backends the core gave back: (id, protocol state).
    pooled: Vec<(usize, Wire)>,
    /// Bytes the client has received.
    pub received: BytesMut,
    /// The client said Terminate.
    pub terminated: bool,
    /// Backends the core gave back after a reset.
    pub resets: usize,
    /// The backends say nothing until this is cleared (to hold the core in its waiting states).
    pub mute: bool,
}

impl Script {
    /// A session of user `app` on database `app`, as if just logged in, under `config` (TOML).
    pub fn new(config: &str) -> Script {
        let config = Config::parse(config, Path::new("script.toml")).expect("a valid config");
        let state = Arc::new(ClusterState::resolve(&config, 1));
        let core = Rc::new(Core::new(
            0,
            1,
            config.clone(),
            state,
            Arc::new(AtomicUsize::new(0)),
            Vec::new(),
        ));
        let database: Rc<str> = "app".into();
        // The catalog is never loaded here: the configured functions are all it knows.
        core.install_functions(database.clone(), Rc::new(config.routing.functions.clone()));
        let start = Start {
            pid: 1,
            user: "app".into(),
            database,
            gucs: Gucs::default(),
            rule: None,
            input: BytesMut::new(),
        };
        Script {
            session: Session::new(core, start, Rc::new(Cell::new(None))),
            backends: Vec::new(),
            pooled: Vec::new(),
            received: BytesMut::new(),
            terminated: false,
            resets: 0,
            mute: false,
        }
    }

    /// A config of one primary and one replica in `mode` ("session" or "transaction").
    pub fn config(mode: &str) -> String {
        format!(
            "[server]\npool_mode = \"{mode}\"\n\n[[users]]\nname = \"app\"\npassword = \"app\"\n\n\
             [[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nport = 5432\nrole = \"primary\"\n\n\
             [[backends]]\nname = \"r\"\nhost = \"127.0.0.1\"\nport = 5433\nrole = \"replica\"\n"
        )
    }

    /// Sends client bytes and runs the core until nothing moves.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.session.input().extend_from_slice(bytes);
        self.run()
    }

    /// The attached backend's connection breaks; the core is told.
    pub fn lose_backend(&mut self) -> Result<(), Error> {
        if self.session.attached.is_some() {
            self.session
                .backend_lost(io::ErrorKind::ConnectionReset.into())?;
        }
        self.run()
    }

    /// The ids of the backends checked out so far, and whether each is a replica.
    pub fn backends(&self) -> Vec<bool> {
        self.backends.iter().map(|b| b.on_replica).collect()
    }

    /// Whether a backend is attached now, and whether it is a replica.
    pub fn attached(&self) -> Option<bool> {
        self.session.attached.as_ref().map(|a| a.on_replica)
    }

    /// Idle backends in the pool.
    pub fn pooled(&self) -> usize {
        self.pooled.len()
    }

    /// Whether the session is pinned to its backend.
    pub fn pinned(&self) -> bool {
        self.session.pinned
    }

    /// Ends the session as the shell ends it, pooling what the core gives back.
    pub fn finish(&mut self) {
        self.session.finish();
        self.collect();
    }

    /// Runs the core until it waits with nothing left to do.
    pub fn run(&mut self) -> Result<(), Error> {
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            match self.session.pump_client()? {
                Pump::Wait => {}
                Pump::Terminate => {
                    self.terminated = true;
                    self.collect();
                    return Ok(());
                }
                Pump::Attach { target, reuse } => {
                    moved = true;
                    let checkout = match reuse {
                        Some(att) => Checkout {
                            link: att.link,
                            backend: att.backend,
                            on_replica: att.on_replica,
                        },
                        None => self.checkout(target),
                    };
                    self.session.attached(Ok(checkout));
                }
            }
            moved |= self.collect();
            moved |= self.answer()?;
            if !moved {
                return Ok(());
            }
        }
        panic!("the session core kept moving without input for {MAX_ROUNDS} rounds");
    }

    /// Takes what the core queued for the client and the backends it gave back.
    fn collect(&mut self) -> bool {
        let mut moved = false;
        while let Some(bytes) = self.session.take_output() {
            self.received.extend_from_slice(&bytes);
            moved = true;
        }
        while let Some(action) = self.session.take_action() {
            let (id, mut wire) = match action {
                Action::Pool(id, wire) => (id, wire),
                Action::Reset(id, wire, _) => {
                    self.resets = self.resets.saturating_add(1);
                    if let Some(b) = self.backends.get_mut(id) {
                        b.statements.clear();
                    }
                    let mut wire = wire;
                    wire.prepared.clear();
                    (id, wire)
                }
            };
            wire.applied = self.session.gucs.hash;
            self.pooled.push((id, wire));
            moved = true;
        }
        moved
    }

    /// Lets the attached backend answer what was written to it.
    fn answer(&mut self) -> Result<bool, Error> {
        let Some(att) = self.session.attached.as_mut() else {
            return Ok(false);
        };
        let mut moved = false;
        if !att.outbox.is_empty() && !self.mute {
            let written = att.outbox.take_all();
            if let Some(backend) = self.backends.get_mut(att.link) {
                backend.answer(&written, &mut att.backend.rbuf);
            }
            self.session.drained();
            moved = true;
        }
        let Some(att) = self.session.attached.as_mut() else {
            return Ok(moved);
        };
        let before = att.backend.rbuf.len();
        if before > 0 {
            self.session.pump_backend()?;
            let after = self
                .session
                .attached
                .as_ref()
                .map_or(0, |a| a.backend.rbuf.len());
            moved |= after != before;
        }
        Ok(moved)
    }

    /// An idle backend for `target` from the pool, or a new one.
    fn checkout(&mut self, target: Target) -> Checkout<usize> {
        let on_replica = target == Target::Replica;
        let pooled = self.pooled.iter().position(|(id, _)| {
            self.backends
                .get(*id)
                .is_some_and(|b| b.on_replica == on_replica)
        });
        if let Some(at) = pooled {
            let (link, backend) = self.pooled.swap_remove(at);
            return Checkout {
                link,
                backend,
                on_replica,
            };
        }
        let id = self.backends.len();
        self.backends.push(Scripted {
            on_replica,
            ..Scripted::default()
        });
        let port = if on_replica { 5433 } else { 5432 };
        let mut backend = Wire::new(([127, 0, 0, 1], port).into());
        backend.key = (u32::try_from(id).unwrap_or(0).saturating_add(100), 7);
        backend.params.set("server_version", "15.0");
        backend.applied = self.session.gucs.hash;
        Checkout {
            link: id,
            backend,
            on_replica,
        }
    }
}

/// A scripted backend's state.
#[derive(Debug, Default)]
struct Scripted {
    on_replica: bool,
    status: Status,
    /// Named prepared statements it has.
    statements: HashSet<Vec<u8>>,
    /// After an error in extended protocol: messages are ignored up to Sync.
    skipping: bool,
    /// Rows of a COPY FROM STDIN so far, while one runs.
    copy_in: Option<usize>,
}

/// A transaction status that has a default.
#[derive(Debug, Default, Clone, Copy)]
enum Status {
    #[default]
    Idle,
    Open,
    Failed,
}

impl Scripted {
    /// Answers whole frontend frames as PostgreSQL would.
    fn answer(&mut self, input: &[u8], out: &mut BytesMut) {
        for frame in FrameScan::new(input, u32::MAX) {
            let Ok(tag) = FrontendTag::try_from(frame.tag()) else {
                continue;
            };
            let body = frame.body();
            if self.skipping && tag != FrontendTag::Sync {
                continue;
            }
            match tag {
                FrontendTag::Query => self.query(query_sql(body).unwrap_or_default(), out),
                FrontendTag::Parse => match statement_of(body) {
                    Ok((_, sql)) if contains(sql, b"fail") => self.fail("42601", out),
                    Ok((name, _)) if !name.is_empty() && self.statements.contains(name) => {
                        self.fail("42P05", out)
                    }
                    Ok((name, _)) => {
                        if !name.is_empty() {
                            self.statements.insert(name.to_vec());
                        }
                        encode::parse_complete(out);
                    }
                    Err(_) => self.fail("08P01", out),
                },
                FrontendTag::Bind => match bind_statement(body) {
                    Ok(name) if name.is_empty() || self.statements.contains(name) => {
                        put(out, b'2', &[])
                    }
                    _ => self.fail("26000", out),
                },
                FrontendTag::Describe => match describe_target(tag as u8, body) {
                    Ok((KIND_STATEMENT, name))
                        if !name.is_empty() && !self.statements.contains(name) =>
                    {
                        self.fail("26000", out)
                    }
                    Ok((KIND_STATEMENT, _)) => {
                        put(out, b't', &[0, 0]);
                        put(out, b'n', &[]);
                    }
                    _ => put(out, b'n', &[]),
                },
                FrontendTag::Close => {
                    if let Ok((KIND_STATEMENT, name)) = describe_target(tag as u8, body) {
                        self.statements.remove(name);
                    }
                    put(out, b'3', &[]);
                }
                FrontendTag::Execute => {
                    put(out, b'D', &[0, 1, 0, 0, 0, 1, b'1']);
                    encode::command_complete(out, b"SELECT 1");
                }
                FrontendTag::Sync => {
                    self.skipping = false;
                    self.ready(out);
                }
                FrontendTag::FunctionCall => {
                    put(out, b'V', &[0xff, 0xff, 0xff, 0xff]);
                    self.ready(out);
                }
                FrontendTag::CopyData => {
                    if let Some(rows) = self.copy_in.as_mut() {
                        *rows = rows.saturating_add(1);
                    }
                }
                FrontendTag::CopyDone => {
                    if let Some(rows) = self.copy_in.take() {
                        encode::command_complete(out, format!("COPY {rows}").as_bytes());
                        self.ready(out);
                    }
                }
                FrontendTag::CopyFail => {
                    if self.copy_in.take().is_some() {
                        self.fail("57014", out);
                        self.skipping = false;
                        self.ready(out);
                    }
                }
                FrontendTag::Flush | FrontendTag::Terminate | FrontendTag::Password => {}
            }
        }
    }

    fn query(&mut self, sql: &[u8], out: &mut BytesMut) {
        let lower = sql.trim_ascii().to_ascii_lowercase();
        let starts = |w: &[u8]| lower.starts_with(w);
        if lower.is_empty() {
            put(out, b'I', &[]);
        } else if contains(&lower, b"fail") {
            self.fail("42601", out);
            self.skipping = false;
        } else if starts(b"begin") || starts(b"start") {
            self.status = Status::Open;
            encode::command_complete(out, b"BEGIN");
        } else if starts(b"commit") || starts(b"rollback") || starts(b"end") {
            self.status = Status::Idle;
            encode::command_complete(out, b"COMMIT");
        } else if starts(b"copy") && contains(&lower, b"from stdin") {
            self.copy_in = Some(0);
            encode::copy_in_response(out, 0, 1);
            return;
        } else if starts(b"copy") {
            put(out, b'H', &[0, 0, 1, 0, 0]);
            put(out, b'd', b"1\n");
            put(out, b'c', &[]);
            encode::command_complete(out, b"COPY 1");
        } else if starts(b"discard all") || starts(b"deallocate all") {
            self.statements.clear();
            encode::command_complete(out, b"DISCARD ALL");
        } else if starts(b"set") || starts(b"reset") {
            encode::command_complete(out, b"SET");
        } else {
            put(out, b'D', &[0, 1, 0, 0, 0, 1, b'1']);
            encode::command_complete(out, b"SELECT 1");
        }
        self.ready(out);
    }

    /// An ErrorResponse; the transaction, if any, fails, and extended messages skip to Sync.
    fn fail(&mut self, code: &'static str, out: &mut BytesMut) {
        encode::error_response(out, &ErrorFields::error(code, "scripted failure"));
        if matches!(self.status, Status::Open) {
            self.status = Status::Failed;
        }
        self.skipping = true;
    }

    fn ready(&self, out: &mut BytesMut) {
        encode::ready_for_query(
            out,
            match self.status {
                Status::Idle => TransactionStatus::Idle,
                Status::Open => TransactionStatus::InTransaction,
                Status::Failed => TransactionStatus::Failed,
            },
        );
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Appends one backend message.
fn put(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(u32::try_from(body.len().saturating_add(4)).unwrap_or(u32::MAX));
    out.put_slice(body);
}
