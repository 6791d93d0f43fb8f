//! Drives a session core with no sockets and no runtime: client bytes go in, a scripted
//! backend answers whatever reaches it, and what the client would receive comes out. The core's
//! unit tests and the `session` fuzz target use it.
//!
//! The scripted backend is a small model of PostgreSQL's side of the protocol, enough to
//! follow the core through every state: transaction status, named statements (a Bind of a
//! statement the backend does not have fails as PostgreSQL fails it), errors inside a
//! pipeline (skipping to Sync), COPY in and out. SQL containing `fail` fails.

use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::BytesMut;
use pgpilot_protocol::classify::Target;

mod backend;

use super::{Action, Checkout, Gucs, Pump, Session, Start};
use crate::admin::ClientCard;
use crate::backend::Wire;
use crate::config::Config;
use crate::control::ClusterState;
use crate::core::Core;
use crate::error::Error;
use backend::Scripted;

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
    /// What new backends report as `in_hot_standby` at login (`None`: nothing, as before 14).
    pub hot_standby: Option<&'static str>,
}

impl Script {
    /// A session of user `app` on database `app`, as if just logged in, under `config` (TOML).
    pub fn new(config: &str) -> Script {
        Script::with(Config::parse(config, Path::new("script.toml")).expect("a valid config"))
    }

    /// [`Script::new`] with a parsed config.
    pub fn with(config: Arc<Config>) -> Script {
        let state = Arc::new(ClusterState::resolve(&config, 1));
        let core = Rc::new(Core::new(
            0,
            1,
            config.clone(),
            state,
            Arc::new(AtomicUsize::new(0)),
            Vec::new(),
            crossbeam_channel::unbounded().0,
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
            keys: None,
            input: BytesMut::new(),
        };
        Script {
            session: Session::new(
                core,
                start,
                Rc::new(ClientCard::new("app".into(), "app".into())),
            ),
            backends: Vec::new(),
            pooled: Vec::new(),
            received: BytesMut::new(),
            terminated: false,
            resets: 0,
            mute: false,
            hot_standby: None,
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
                    let _ = self.session.attached(Ok(checkout));
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
        self.backends.push(Scripted::new(on_replica));
        let port = if on_replica { 5433 } else { 5432 };
        let mut backend = Wire::new(usize::from(on_replica), ([127, 0, 0, 1], port).into());
        backend.key = (u32::try_from(id).unwrap_or(0).saturating_add(100), 7);
        backend.params.set("server_version", "15.0");
        if let Some(value) = self.hot_standby {
            backend.params.set("in_hot_standby", value);
        }
        backend.applied = self.session.gucs.hash;
        Checkout {
            link: id,
            backend,
            on_replica,
        }
    }
}
