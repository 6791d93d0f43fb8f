//! Per-core pools of backend connections, one per (backend, user, database): checkout with a
//! bounded wait, checkin of clean connections only, and reaping of idle or old ones.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::admin::{PoolFigures, ServerFigures};
use crate::backend::{Backend, Login};
use crate::config::TcpOptions;
use crate::error::Error;
use crate::permits::Permits;
use crate::tls::BackendTls;
use pgpilot_protocol::scram::ScramKeys;

/// How a pool's new connections are made: socket options and TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct Dial {
    pub tcp: TcpOptions,
    pub tls: BackendTls,
}

/// Identifies a pool on one core.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Backend id in the cluster state.
    pub backend_id: usize,
    /// Role name.
    pub user: Rc<str>,
    /// Database name.
    pub database: Rc<str>,
}

/// This core's share of `[pool] size`: the sum over cores never exceeds it, except that every
/// core gets at least one connection so that no core is unable to serve.
pub fn core_share(size: usize, workers: usize, core: usize) -> usize {
    let workers = workers.max(1);
    (size / workers + usize::from(core < size % workers)).max(1)
}

/// Connections to one (backend, user, database) owned by one core.
pub struct Pool {
    /// What it pools.
    pub key: PoolKey,
    /// The password new connections log in with (a reload may change it).
    password: RefCell<Option<Rc<str>>>,
    /// For a role looked up with `[auth] query`: the keys its latest client proved.
    keys: RefCell<Option<Rc<ScramKeys>>>,
    /// Current address; idle connections to an older address are dropped.
    addr: Cell<Option<SocketAddr>>,
    idle: RefCell<Vec<Backend>>,
    /// One permit per connection that may be checked out.
    permits: Rc<Permits>,
    /// How many: this core's share of `[pool] size`.
    size: Cell<usize>,
    /// RECONNECT: connections made before this close when next released.
    retired: Cell<Option<Instant>>,
    idle_timeout: Cell<Duration>,
    max_lifetime: Cell<Duration>,
    /// Socket options and TLS for new connections.
    dial: RefCell<Dial>,
    /// The ParameterStatus set a backend reported after a client parameter set was applied,
    /// by the set's hash: lets later logins with the same set skip the backend.
    logins: RefCell<HashMap<u64, ParamSet>>,
}

/// A ParameterStatus set as a backend reported it.
pub type ParamSet = Rc<Vec<(String, String)>>;

/// Distinct client parameter sets remembered per pool.
const MAX_LOGIN_SETS: usize = 256;

impl Pool {
    /// A pool of at most `size` connections on this core.
    pub fn new(
        key: PoolKey,
        password: Option<Rc<str>>,
        addr: Option<SocketAddr>,
        size: usize,
        idle_timeout: Duration,
        max_lifetime: Duration,
        dial: Dial,
    ) -> Pool {
        Pool {
            key,
            password: RefCell::new(password),
            keys: RefCell::new(None),
            addr: Cell::new(addr),
            idle: RefCell::new(Vec::new()),
            permits: Permits::new(size),
            size: Cell::new(size),
            retired: Cell::new(None),
            idle_timeout: Cell::new(idle_timeout),
            max_lifetime: Cell::new(max_lifetime),
            dial: RefCell::new(dial),
            logins: RefCell::new(HashMap::new()),
        }
    }

    /// New connections log in with the keys a client just proved (its role has no password in
    /// the config). Keys proven against a new verifier (an `ALTER ROLE … PASSWORD`) replace
    /// the old ones; connections already made stay.
    pub fn prove_with(&self, keys: &Rc<ScramKeys>) {
        let mut mine = self.keys.borrow_mut();
        if mine.as_ref().is_none_or(|k| **k != **keys) {
            *mine = Some(keys.clone());
        }
    }

    /// The ParameterStatus set a login with this parameter-set hash gets, if known.
    pub fn login_params(&self, gucs_hash: u64) -> Option<ParamSet> {
        self.logins.borrow().get(&gucs_hash).cloned()
    }

    /// Remembers the ParameterStatus set a backend reported for a parameter-set hash.
    pub fn remember_login(&self, gucs_hash: u64, params: &[(String, String)]) {
        let mut logins = self.logins.borrow_mut();
        if logins.len() >= MAX_LOGIN_SETS {
            logins.clear();
        }
        logins.insert(gucs_hash, Rc::new(params.to_vec()));
    }

    /// A clean connection within `wait`: an idle one, or a new one if capacity allows.
    pub async fn checkout(&self, wait: Duration) -> Result<Backend, Error> {
        self.checkout_as(wait, wait, true).await
    }

    /// A clean connection if the pool has room now (`PoolTimeout` otherwise); a new one may
    /// take `wait` to make.
    pub async fn checkout_free(&self, wait: Duration) -> Result<Backend, Error> {
        self.checkout_as(Duration::ZERO, wait, true).await
    }

    /// A new connection within `wait`, never an idle one (which carries what other clients
    /// left on it).
    pub async fn checkout_new(&self, wait: Duration) -> Result<Backend, Error> {
        self.checkout_as(wait, wait, false).await
    }

    /// Waits `wait` at most for room in the pool, and a new connection may take until
    /// `connect_wait` after the start.
    async fn checkout_as(
        &self,
        wait: Duration,
        connect_wait: Duration,
        reuse: bool,
    ) -> Result<Backend, Error> {
        let deadline = Instant::now() + connect_wait;
        let Some(permit) = self.permits.acquire(wait).await else {
            log::debug!(
                "pool {:?}: no permit within {wait:?} ({} idle, {} waiting)",
                self.key,
                self.idle.borrow().len(),
                self.permits.waiting()
            );
            return Err(Error::PoolTimeout);
        };
        let now = Instant::now();
        while let Some(b) = reuse.then(|| self.idle.borrow_mut().pop()).flatten() {
            if self.is_fresh(&b, now) && crate::tcp::quiet(&b.stream) {
                let mut b = b;
                b.conn.permit = Some(permit);
                return Ok(b);
            }
        }
        let addr = self.addr.get().ok_or(Error::NoBackend)?;
        // Copies: a reload may change them while this connection is being made.
        let password = self.password.borrow().clone();
        let keys = self.keys.borrow().clone();
        let dial = self.dial.borrow().clone();
        let login = Login {
            user: &self.key.user,
            password: password.as_deref(),
            keys: keys.as_deref(),
            database: &self.key.database,
            application_name: None,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let connect = Backend::connect(addr, self.key.backend_id, &login, &dial.tcp, &dial.tls);
        let mut b = match monoio::time::timeout(left, connect).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Backend {
                    addr,
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
        };
        log::debug!(
            "new backend connection to {addr} for {}@{}",
            self.key.user,
            self.key.database
        );
        b.conn.permit = Some(permit);
        Ok(b)
    }

    /// Returns a connection that is idle and in sync; its capacity is released either way.
    pub fn checkin(&self, mut b: Backend) {
        let now = Instant::now();
        b.conn.permit = None;
        if self.is_fresh(&b, now) && b.state.rbuf.is_empty() {
            b.conn.idle_since = now;
            self.idle.borrow_mut().push(b);
        }
    }

    fn is_fresh(&self, b: &Backend, now: Instant) -> bool {
        Some(b.state.addr) == self.addr.get()
            && self.retired.get().is_none_or(|at| b.conn.created > at)
            && now.duration_since(b.conn.created) < self.max_lifetime.get()
            && now.duration_since(b.conn.idle_since) < self.idle_timeout.get()
    }

    /// Closes idle connections past their idle timeout or lifetime.
    pub fn reap(&self, now: Instant) {
        self.idle.borrow_mut().retain(|b| self.is_fresh(b, now));
    }

    /// Points the pool at a new address; idle connections to the old one are closed.
    pub fn set_addr(&self, addr: Option<SocketAddr>) {
        if self.addr.replace(addr) != addr {
            self.idle.borrow_mut().clear();
        }
    }

    /// Closes every idle connection (its backend left the rotation).
    pub fn close_idle(&self) {
        self.idle.borrow_mut().clear();
    }

    /// A reload's new settings. A new password or new TLS settings retire the connections
    /// made with the old ones; a new size takes effect as connections come and go.
    pub fn reconfigure(
        &self,
        password: Option<Rc<str>>,
        size: usize,
        timeouts: (Duration, Duration),
        dial: Dial,
    ) {
        let (idle_timeout, max_lifetime) = timeouts;
        let old_size = self.size.replace(size);
        if old_size != size {
            self.permits.resize(old_size, size);
        }
        self.idle_timeout.set(idle_timeout);
        self.max_lifetime.set(max_lifetime);
        let new_password = *self.password.borrow() != password;
        let new_dial = *self.dial.borrow() != dial;
        *self.password.borrow_mut() = password;
        *self.dial.borrow_mut() = dial;
        if new_password || new_dial {
            self.retire();
        }
    }

    /// RECONNECT: idle connections close now, those in use when they come back.
    pub fn retire(&self) {
        self.retired.set(Some(Instant::now()));
        self.close_idle();
    }

    /// Idle connections right now.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Its idle connections, as SHOW SERVERS shows them.
    pub fn idle_servers(&self, now: Instant) -> Vec<ServerFigures> {
        let wall = std::time::SystemTime::now();
        (self.idle.borrow().iter())
            .map(|b| ServerFigures {
                backend_id: self.key.backend_id,
                user: self.key.user.to_string(),
                database: self.key.database.to_string(),
                client: None,
                addr: b.state.addr,
                local: b.state.local,
                connected: b.state.connected,
                request: Some(wall - now.saturating_duration_since(b.conn.idle_since)),
                remote_pid: b.state.key.0,
                encrypted: b.state.encrypted,
            })
            .collect()
    }

    /// What the admin console shows of this pool.
    pub fn figures(&self, now: Instant) -> PoolFigures {
        PoolFigures {
            backend_id: self.key.backend_id,
            user: self.key.user.to_string(),
            database: self.key.database.to_string(),
            size: self.size.get(),
            active: self.size.get().saturating_sub(self.permits.available()),
            idle: self.idle_count(),
            waiting: self.permits.waiting(),
            max_wait: self.permits.longest_wait(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_the_pool_size() {
        for size in 1..40 {
            for workers in 1..9 {
                let sum: usize = (0..workers).map(|c| core_share(size, workers, c)).sum();
                assert_eq!(sum, size.max(workers), "size {size} workers {workers}");
            }
        }
    }
}
