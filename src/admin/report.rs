//! What a core tells the admin console of itself: its pools and its clients, as plain data
//! that crosses to the console's core. Each core builds its own on request, so the data path
//! never shares anything with the console.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Role;
use crate::control::Status;
use crate::core::CancelTarget;

/// What a client's card says of the backend connection serving it, for SHOW SERVERS.
#[derive(Clone, Copy)]
pub struct Serving {
    /// Its backend's id in the cluster state.
    pub backend_id: usize,
    /// When it was made.
    pub connected: SystemTime,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// Its local address.
    pub local: Option<SocketAddr>,
}

/// One session as the console shows it, shared between the session and its core's registry.
pub struct ClientCard {
    /// The backend query to cancel on CancelRequest (while one is attached).
    pub cancel: Cell<Option<CancelTarget>>,
    /// Since when it waits for a backend connection, if it does.
    pub waiting: Cell<Option<Instant>>,
    /// When it last got a backend (its latest transaction or statement).
    pub request: Cell<Option<Instant>>,
    pub user: Rc<str>,
    pub database: Rc<str>,
    /// The client's address and the proxy's end of the connection.
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub connected: SystemTime,
    /// The TLS version and cipher suite, for a TLS client.
    pub tls: Option<Box<str>>,
    pub application_name: Box<str>,
    /// An admin console session rather than a proxied one.
    pub console: bool,
    /// The session's task, woken when shutdown begins and when it is forced.
    pub waker: std::cell::RefCell<Option<std::task::Waker>>,
    /// KILL ended its database: the session ends at once.
    pub killed: Cell<bool>,
    /// The backend connection serving it now (its address and server pid are in `cancel`).
    pub server: Cell<Option<Serving>>,
    /// Pinned to its backend: since when, and by what.
    pub pinned: std::cell::RefCell<Option<(SystemTime, Box<str>)>>,
}

impl ClientCard {
    /// A card for a session of `user` on `database` connected now.
    pub fn new(user: Rc<str>, database: Rc<str>) -> ClientCard {
        ClientCard {
            cancel: Cell::new(None),
            waiting: Cell::new(None),
            request: Cell::new(None),
            user,
            database,
            peer: None,
            local: None,
            connected: SystemTime::now(),
            tls: None,
            application_name: Box::from(""),
            console: false,
            waker: std::cell::RefCell::new(None),
            killed: Cell::new(false),
            server: Cell::new(None),
            pinned: std::cell::RefCell::new(None),
        }
    }

    /// The session is pinned to its backend from now on, by `cause`.
    pub fn pin(&self, cause: &str) {
        *self.pinned.borrow_mut() = Some((SystemTime::now(), cause.into()));
    }

    /// Remembers the task to wake at shutdown (a pointer comparison when it is the same).
    pub fn listen(&self, waker: &std::task::Waker) {
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }

    /// Wakes the session's task, if it is waiting.
    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// The backend connection serving it now, as SHOW SERVERS shows it.
    pub fn server(&self, pid: u32) -> Option<ServerFigures> {
        let target = self.cancel.get()?;
        let Serving {
            backend_id,
            connected,
            encrypted,
            local,
        } = self.server.get()?;
        Some(ServerFigures {
            backend_id,
            user: self.user.to_string(),
            database: self.database.to_string(),
            client: Some(pid),
            addr: target.addr,
            local,
            connected,
            request: self
                .request
                .get()
                .map(|at| SystemTime::now() - at.elapsed()),
            remote_pid: target.pid,
            encrypted,
        })
    }

    /// What the console shows of it.
    pub fn figures(&self, pid: u32, now: Instant) -> ClientFigures {
        ClientFigures {
            pid,
            user: self.user.to_string(),
            database: self.database.to_string(),
            waiting: self
                .waiting
                .get()
                .map(|at| now.saturating_duration_since(at)),
            peer: self.peer,
            local: self.local,
            connected: self.connected,
            request: self
                .request
                .get()
                .map(|at| SystemTime::now() - now.saturating_duration_since(at)),
            backend: self.cancel.get().map(|t| (t.addr, t.pid)),
            tls: self.tls.as_deref().map(str::to_owned),
            application_name: self.application_name.to_string(),
            console: self.console,
            pinned: (self.pinned.borrow().as_ref()).map(|(at, why)| (*at, why.to_string())),
        }
    }
}

/// Marks a card as waiting for a backend connection until dropped, and then counts the wait.
pub struct Waiting<'a> {
    card: &'a ClientCard,
    stats: &'a super::DbStats,
    since: Instant,
}

impl<'a> Waiting<'a> {
    pub fn start(card: &'a ClientCard, stats: &'a super::DbStats) -> Waiting<'a> {
        let since = Instant::now();
        card.waiting.set(Some(since));
        Waiting { card, stats, since }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.card.waiting.set(None);
        self.stats.waited(self.since.elapsed());
    }
}

/// A backend connection, as reported.
#[derive(Debug, Clone)]
pub struct ServerFigures {
    pub backend_id: usize,
    pub user: String,
    pub database: String,
    /// Serving the client with this pid, or idle in its pool.
    pub client: Option<u32>,
    pub addr: SocketAddr,
    pub local: Option<SocketAddr>,
    pub connected: SystemTime,
    /// When it last went idle, or last got a request.
    pub request: Option<SystemTime>,
    pub remote_pid: u32,
    pub encrypted: bool,
}

/// A client, as reported.
#[derive(Debug, Clone)]
pub struct ClientFigures {
    /// The BackendKeyData pid pgpilot gave it.
    pub pid: u32,
    pub user: String,
    pub database: String,
    /// How long it has waited for a backend connection, if it waits.
    pub waiting: Option<Duration>,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub connected: SystemTime,
    pub request: Option<SystemTime>,
    /// The attached backend connection: address and server process id.
    pub backend: Option<(SocketAddr, u32)>,
    pub tls: Option<String>,
    pub application_name: String,
    pub console: bool,
    /// Pinned to its backend: since when, and by what.
    pub pinned: Option<(SystemTime, String)>,
}

/// One pool of one core: connections to one backend for one user and database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFigures {
    pub backend_id: usize,
    pub user: String,
    pub database: String,
    /// Connections this core may open.
    pub size: usize,
    /// Checked out now (serving a client, or being set up for one).
    pub active: usize,
    /// Idle in the pool.
    pub idle: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// How long the longest waiting client has waited.
    pub max_wait: Duration,
}

/// Everything one core reports.
#[derive(Debug, Clone)]
pub struct CoreReport {
    pub core: usize,
    /// Clients its listener accepted.
    pub accepted: u64,
    /// Whether it still accepts clients (no shutdown has begun).
    pub accepting: bool,
    /// What a PAUSE holds: everything, and the databases paused one by one.
    pub paused: (bool, Vec<String>),
    /// Counters by database, since start.
    pub stats: Vec<(String, super::Totals)>,
    /// Averages of the latest stats period by database (see [`super::Totals::averages`]).
    pub averages: Vec<(String, [u64; 7])>,
    /// Statements sent, `[reason index][primary, replica]` (the classifier's target).
    pub routes: [[u64; 2]; pgpilot_protocol::classify::Reason::ALL.len()],
    pub pools: Vec<PoolFigures>,
    pub clients: Vec<ClientFigures>,
    /// Its backend connections: idle in the pools, and serving clients.
    pub servers: Vec<ServerFigures>,
}

/// One backend as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendFigures {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The address its name resolved to last.
    pub addr: Option<SocketAddr>,
    pub role: Role,
    pub status: Status,
    /// Detached by an operator (DETACH), until ATTACH.
    pub detached_by_hand: bool,
    /// Removed from the config at a reload (its place is kept: ids never move). Not shown.
    pub removed: bool,
    /// The configured weight.
    pub weight: u32,
    /// The share of reads it takes now, in thousandths of its weight's worth (less while slow
    /// or ramping up after an attach).
    pub share: u32,
    /// How far behind the primary's WAL it was at its last check, in bytes (replicas).
    pub lag_bytes: Option<u64>,
    /// How long its replay was behind what it received, in milliseconds (replicas).
    pub replay_delay_ms: Option<u64>,
    /// Its answer time to the check query, smoothed.
    pub answer: Option<Duration>,
    pub last_check: Option<SystemTime>,
    /// Consecutive failed checks.
    pub failures: u32,
    /// Why the latest check failed, if it did.
    pub cause: String,
}

/// A change the control plane saw: a backend's state, its address, a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub at: SystemTime,
    pub event: String,
    pub backend: String,
    pub from: String,
    pub to: String,
    pub cause: String,
}

/// Everything the control plane reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneReport {
    pub epoch: u64,
    pub backends: Vec<BackendFigures>,
    /// The latest events, oldest first.
    pub events: Vec<EventRecord>,
}

impl PlaneReport {
    /// The share of reads `b` takes now: its weight as lowered by slowness or a slow start,
    /// over the sum of those that take reads; with none, the primary takes them all.
    pub fn read_share(&self, b: &BackendFigures) -> f64 {
        let total: u64 = (self.backends.iter())
            .filter(|b| b.status.takes_reads())
            .map(|b| u64::from(b.share))
            .sum();
        match total {
            0 => f64::from(u8::from(b.role == Role::Primary)),
            _ if !b.status.takes_reads() => 0.0,
            _ => b.share as f64 / total as f64,
        }
    }
}
