//! One worker core: a pinned monoio runtime that owns its listener, its pools and its
//! sessions, and follows the control channel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::admin::{ClientCard, CoreReport, CoreStats};

mod ops;
mod sessions;

use crate::config::Config;
use crate::control::{ClusterState, ControlMsg, CoreMsg, CoreReceiver, CoreSender, Status};
use crate::pool::{core_share, Pool, PoolKey};
use pgpilot_protocol::classify::{Functions, Reason};
pub use sessions::{Starting, FAKE_PIDS, MAX_WORKERS};

/// How long a core leaves alone a replica it could not reach.
const BENCH_TIME: Duration = Duration::from_secs(5);
/// How often idle backend connections are reaped.
const REAP_TICK: Duration = Duration::from_secs(1);

/// The backend query a session is running now, for CancelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    /// Backend address.
    pub addr: SocketAddr,
    /// The backend's own process id.
    pub pid: u32,
    /// The backend's own secret.
    pub secret: u32,
}

/// What the core keeps of a session: its cancel key and what the admin console shows.
struct SessionEntry {
    secret: u32,
    card: Rc<ClientCard>,
}

/// Per-core state. Shared by `Rc` among the tasks of this core only.
pub struct Core {
    /// Core number; encoded in the BackendKeyData pid of every session it owns.
    pub id: usize,
    /// Number of worker cores.
    pub workers: usize,
    /// `[peers] id` (0 without peers), in every session's pid.
    instance: usize,
    /// The configuration in force (a reload replaces it).
    /// In an `Rc` of this core's own: sessions take it with a count no other core touches (an
    /// `Arc` clone per statement would bounce its count between the cores).
    #[allow(clippy::redundant_allocation)] // the second allocation is the core-local count
    config: RefCell<Rc<Arc<Config>>>,
    /// The latest snapshot, in an `Rc` of this core's own (as `config`).
    #[allow(clippy::redundant_allocation)] // the second allocation is the core-local count
    state: RefCell<Rc<Arc<ClusterState>>>,
    pools: RefCell<HashMap<PoolKey, Rc<Pool>>>,
    sessions: RefCell<HashMap<u32, SessionEntry>>,
    next_session: Cell<u32>,
    /// Clients connected over all cores.
    clients: Arc<AtomicUsize>,
    /// Channels to every core (including this one), to forward CancelRequests.
    peers: Vec<CoreSender>,
    /// The control plane's inbox, for what a session learns of a backend.
    control: Sender<ControlMsg>,
    /// The TLS offered to clients: the config's, or what a reload read since.
    client_tls: RefCell<Option<crate::tls::ClientTls>>,
    /// Replicas this core failed to reach, and until when it leaves them alone.
    benched: RefCell<HashMap<usize, Instant>>,
    /// Writing functions per database: the configured ones, plus the catalog's once loaded.
    functions: RefCell<HashMap<Rc<str>, Rc<Functions>>>,
    /// The configured functions, for databases whose catalog is not loaded (yet).
    configured_functions: RefCell<Rc<Functions>>,
    /// Sessions pinned to their backend since start (transaction mode).
    pins: Cell<u64>,
    shutting_down: Cell<bool>,
    /// Shutdown's grace is over: sessions end whether idle or not.
    forced: Cell<bool>,
    /// What PAUSE holds.
    paused: RefCell<ops::Paused>,
    /// Clients this core's listener accepted.
    pub accepted: Cell<u64>,
    /// Clients in startup (not yet sessions): a shutdown waits for them too.
    starting: Cell<usize>,
    /// Per-database counters (SHOW STATS, the metrics).
    pub stats: CoreStats,
    /// Statements sent, by route reason and target (SHOW ROUTES, the metrics).
    routes: RefCell<[[u64; 2]; Reason::ALL.len()]>,
    shutdown_wakers: RefCell<HashMap<u32, Waker>>,
    rng: Cell<u64>,
}

impl Core {
    /// A core with the initial cluster snapshot.
    pub fn new(
        id: usize,
        workers: usize,
        config: Arc<Config>,
        state: Arc<ClusterState>,
        clients: Arc<AtomicUsize>,
        peers: Vec<CoreSender>,
        control: Sender<ControlMsg>,
    ) -> Core {
        let seed = u64::from_ne_bytes(pgpilot_protocol::scram::random_bytes::<8>()) | 1;
        let configured_functions = Rc::new(config.routing.functions.clone());
        let client_tls = config.client_tls.clone();
        Core {
            id,
            workers,
            instance: config.peers.id,
            config: RefCell::new(Rc::new(config)),
            state: RefCell::new(Rc::new(state)),
            pools: RefCell::new(HashMap::new()),
            sessions: RefCell::new(HashMap::new()),
            next_session: Cell::new(0),
            clients,
            peers,
            control,
            client_tls: RefCell::new(client_tls),
            benched: RefCell::new(HashMap::new()),
            functions: RefCell::new(HashMap::new()),
            configured_functions: RefCell::new(configured_functions),
            pins: Cell::new(0),
            shutting_down: Cell::new(false),
            forced: Cell::new(false),
            paused: RefCell::new(ops::Paused::default()),
            accepted: Cell::new(0),
            starting: Cell::new(0),
            stats: CoreStats::default(),
            routes: RefCell::new([[0; 2]; Reason::ALL.len()]),
            shutdown_wakers: RefCell::new(HashMap::new()),
            rng: Cell::new(seed),
        }
    }

    /// The configuration in force now.
    #[allow(clippy::redundant_allocation)] // see the field
    pub fn config(&self) -> Rc<Arc<Config>> {
        self.config.borrow().clone()
    }

    /// The current cluster snapshot.
    #[allow(clippy::redundant_allocation)] // see the field
    pub fn state(&self) -> Rc<Arc<ClusterState>> {
        self.state.borrow().clone()
    }

    /// Leaves a backend this core failed to reach alone for a moment (until health checks
    /// decide for the whole proxy).
    /// Its idle pooled connections on this core are closed too: they most likely failed with it.
    pub fn bench(&self, backend_id: usize) {
        self.benched
            .borrow_mut()
            .insert(backend_id, Instant::now() + BENCH_TIME);
        for pool in self.pools.borrow().values() {
            if pool.key.backend_id == backend_id {
                pool.close_idle();
            }
        }
    }

    /// A session's primary connection answered a write with 25006 and cannot prove it reaches
    /// a primary: the control plane looks up the primary's name again at once, and this core's
    /// idle connections to it are closed (the session closes its own when done with it).
    pub fn fence(&self, backend_id: usize, session: u32) {
        log::warn!(
            "session={session} backend {backend_id} refused a write as read-only (25006) and \
             never said it is no standby: fenced"
        );
        for pool in self.pools.borrow().values() {
            if pool.key.backend_id == backend_id {
                pool.close_idle();
            }
        }
        let _ = self.control.try_send(ControlMsg::Fenced { id: backend_id });
    }

    /// The TLS offered to clients now.
    pub fn client_tls(&self) -> Option<crate::tls::ClientTls> {
        self.client_tls.borrow().clone()
    }

    /// Whether this core is leaving a backend alone right now.
    pub fn is_benched(&self, backend_id: usize) -> bool {
        let benched = self.benched.borrow();
        match benched.get(&backend_id) {
            None => false,
            Some(until) => *until > Instant::now(),
        }
    }

    /// A fast non-cryptographic random number (xorshift), for weighted picks.
    pub fn roll(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    /// The pool for a key, created on first use.
    pub fn pool(&self, key: PoolKey) -> Rc<Pool> {
        if let Some(p) = self.pools.borrow().get(&key) {
            return p.clone();
        }
        let addr = self
            .state
            .borrow()
            .backends
            .get(key.backend_id)
            .and_then(|b| b.addr);
        let config = self.config();
        let password = config
            .user(&key.user)
            .map(|u| Rc::<str>::from(u.password.as_str()));
        let cfg = &config.pool;
        let size = core_share(cfg.size, self.workers, self.id);
        let pool = Rc::new(Pool::new(
            key.clone(),
            password,
            addr,
            size,
            cfg.idle_timeout,
            cfg.max_lifetime,
            crate::pool::Dial {
                tcp: config.server.tcp,
                tls: config
                    .backends
                    .get(key.backend_id)
                    .map_or_else(crate::tls::BackendTls::disabled, |b| b.tls.clone()),
            },
        ));
        self.pools.borrow_mut().insert(key, pool.clone());
        pool
    }

    /// Counts a new client; `false` when `max_client_connections` is reached (not counted then).
    pub fn admit_client(&self) -> bool {
        let max = self.config().server.max_client_connections;
        let prev = self.clients.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Uncounts a client admitted by [`Core::admit_client`].
    pub fn release_client(&self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
    }

    /// What the classifier knows of `database`'s functions. The first call for a database
    /// starts loading its catalog in the background; until then the configured knowledge holds.
    pub fn functions_for(self: &Rc<Self>, user: &Rc<str>, database: &Rc<str>) -> Rc<Functions> {
        if let Some(f) = self.functions.borrow().get(database) {
            return f.clone();
        }
        self.functions
            .borrow_mut()
            .insert(database.clone(), self.configured_functions.borrow().clone());
        monoio::spawn(crate::catalog::load(
            self.clone(),
            user.clone(),
            database.clone(),
        ));
        self.configured_functions.borrow().clone()
    }

    /// Installs what the catalog says of a database's functions.
    pub fn install_functions(&self, database: Rc<str>, functions: Rc<Functions>) {
        self.functions.borrow_mut().insert(database, functions);
    }

    /// Counts a session pinned to its backend.
    pub fn note_pin(&self) {
        self.pins.set(self.pins.get() + 1);
    }

    /// Sessions pinned to their backend on this core since start.
    pub fn pin_count(&self) -> u64 {
        self.pins.get()
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Asks to be woken when shutdown begins (the listener; sessions are woken through their
    /// cards).
    pub fn on_shutdown(&self, pid: u32, waker: &Waker) {
        let mut wakers = self.shutdown_wakers.borrow_mut();
        match wakers.get(&pid) {
            Some(w) if w.will_wake(waker) => {}
            _ => {
                wakers.insert(pid, waker.clone());
            }
        }
    }

    fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        for (_, w) in self.shutdown_wakers.borrow_mut().drain() {
            w.wake();
        }
        self.wake_sessions();
    }

    /// `shutdown_timeout_ms` is over: every session ends now, idle or not (57P01).
    pub fn force_shutdown(&self) {
        self.forced.set(true);
        self.wake_sessions();
    }

    /// Whether sessions must end now, in a transaction or not.
    pub fn shutdown_forced(&self) -> bool {
        self.forced.get()
    }

    fn wake_sessions(&self) {
        let cards: Vec<Rc<ClientCard>> = self
            .sessions
            .borrow()
            .values()
            .map(|e| e.card.clone())
            .collect();
        for card in cards {
            card.wake();
        }
    }

    fn apply(&self, msg: CoreMsg) {
        match msg {
            CoreMsg::State(state) => {
                if state.epoch <= self.state.borrow().epoch {
                    return;
                }
                for pool in self.pools.borrow().values() {
                    let backend = state.backends.get(pool.key.backend_id);
                    pool.set_addr(backend.and_then(|b| b.addr));
                    // Detached: its idle connections go; those in use finish or fail.
                    if backend.is_some_and(|b| b.status == Status::Down) {
                        pool.close_idle();
                    }
                }
                *self.state.borrow_mut() = Rc::new(state);
            }
            CoreMsg::Cancel { pid, secret } => self.cancel(pid, secret),
            CoreMsg::Shutdown => self.begin_shutdown(),
            CoreMsg::ClientTls(tls) => *self.client_tls.borrow_mut() = tls,
            CoreMsg::Report(reply) => {
                let _ = reply.send(self.report());
            }
            CoreMsg::Pause { database, pause } => self.pause(database, pause),
            CoreMsg::Kill(database) => self.kill(&database),
            CoreMsg::Config(config) => self.reconfigure(config),
            CoreMsg::Reconnect(database) => self.reconnect(database.as_deref()),
        }
    }

    /// Sends to the control plane (the admin console's questions and commands).
    pub fn tell_control(&self, msg: ControlMsg) -> bool {
        self.control.try_send(msg).is_ok()
    }

    /// Adds a unit's statements to the route counters.
    pub fn count_routes(&self, unit: &[[u16; 2]; Reason::ALL.len()]) {
        let mut routes = self.routes.borrow_mut();
        for (total, counted) in routes.iter_mut().zip(unit) {
            for (t, c) in total.iter_mut().zip(counted) {
                *t = t.wrapping_add(u64::from(*c));
            }
        }
    }

    /// Every core's inbox, this one's included.
    pub fn peers(&self) -> &[CoreSender] {
        &self.peers
    }

    /// What this core holds, for the admin console.
    pub fn report(&self) -> CoreReport {
        let now = Instant::now();
        CoreReport {
            core: self.id,
            accepted: self.accepted.get(),
            accepting: !self.shutting_down(),
            paused: self.paused(),
            stats: self.stats.totals(),
            averages: self.stats.averages(),
            routes: *self.routes.borrow(),
            pools: self
                .pools
                .borrow()
                .values()
                .map(|p| p.figures(now))
                .collect(),
            clients: (self.sessions.borrow().iter())
                .map(|(pid, e)| e.card.figures(*pid, now))
                .collect(),
            servers: (self.pools.borrow().values())
                .flat_map(|p| p.idle_servers(now))
                .chain((self.sessions.borrow().iter()).filter_map(|(pid, e)| e.card.server(*pid)))
                .collect(),
        }
    }

    /// Applies control messages on this core as they come: the sender wakes the core, which
    /// sleeps meanwhile; no timer looks for them.
    pub async fn follow_control(self: Rc<Self>, rx: CoreReceiver) {
        while let Some(msg) = rx.recv().await {
            self.apply(msg);
        }
        self.begin_shutdown();
    }

    /// Closes idle backend connections past their time, once a second.
    pub async fn reap(self: Rc<Self>) {
        while !self.shutting_down() {
            monoio::time::sleep(REAP_TICK).await;
            let now = Instant::now();
            for pool in self.pools.borrow().values() {
                pool.reap(now);
            }
            self.stats.tick(now);
            // A pool nobody holds and with no connection left goes (logins may name any
            // database, and a failed one must not leave its pool behind for good). One a
            // session still holds stays, so a key never has two pools.
            self.pools
                .borrow_mut()
                .retain(|_, pool| Rc::strong_count(pool) > 1 || pool.idle_count() > 0);
        }
    }
}
