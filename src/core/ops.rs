//! An operator's PAUSE, RESUME, KILL and RECONNECT, as each core carries them out.

use std::rc::Rc;
use std::sync::Arc;

use super::Core;
use crate::admin::ClientCard;
use crate::config::Config;
use crate::pool::{core_share, Dial};

/// What PAUSE holds: every database, or some.
#[derive(Debug, Default)]
pub struct Paused {
    all: bool,
    databases: Vec<String>,
}

impl Core {
    /// Whether work on `database` that needs a new backend connection must wait.
    pub fn is_paused(&self, database: &str) -> bool {
        let p = self.paused.borrow();
        p.all || p.databases.iter().any(|d| d == database)
    }

    /// What is paused: everything, and the databases paused one by one.
    pub fn paused(&self) -> (bool, Vec<String>) {
        let p = self.paused.borrow();
        (p.all, p.databases.clone())
    }

    /// PAUSE (`pause`) or RESUME of `database`, or of everything. A RESUME wakes the sessions
    /// that wait, and a RESUME of everything also ends the pauses of single databases.
    pub(super) fn pause(&self, database: Option<String>, pause: bool) {
        {
            let mut p = self.paused.borrow_mut();
            match (database, pause) {
                (None, true) => p.all = true,
                (None, false) => *p = Paused::default(),
                (Some(db), true) => {
                    if !p.databases.contains(&db) {
                        p.databases.push(db);
                    }
                }
                (Some(db), false) => p.databases.retain(|d| *d != db),
            }
        }
        if !pause {
            self.wake_sessions();
        }
    }

    /// KILL: every session on `database` ends now, and its idle connections close.
    pub(super) fn kill(&self, database: &str) {
        let cards: Vec<Rc<ClientCard>> = (self.sessions.borrow().values())
            .filter(|e| !e.card.console && &*e.card.database == database)
            .map(|e| e.card.clone())
            .collect();
        for card in cards {
            card.killed.set(true);
            card.wake();
        }
        for pool in self.pools.borrow().values() {
            if &*pool.key.database == database {
                pool.close_idle();
            }
        }
    }

    /// RECONNECT: the connections of `database` (or all) close once released.
    pub(super) fn reconnect(&self, database: Option<&str>) {
        for pool in self.pools.borrow().values() {
            if database.is_none_or(|d| d == &*pool.key.database) {
                pool.retire();
            }
        }
    }
}

impl Core {
    /// A reload: the new configuration is in force for what starts from now (sessions, logins,
    /// connections, routing); pools take their new sizes, timeouts, passwords and TLS.
    pub(super) fn reconfigure(&self, config: Arc<Config>) {
        *self.config.borrow_mut() = Rc::new(config.clone());
        *self.configured_functions.borrow_mut() = Rc::new(config.routing.functions.clone());
        // The catalogs are read again, with the new routing lists on top.
        self.functions.borrow_mut().clear();
        let size = core_share(config.pool.size, self.workers, self.id);
        for pool in self.pools.borrow().values() {
            let password = config
                .user(&pool.key.user)
                .map(|u| Rc::<str>::from(u.password.as_str()));
            let dial = Dial {
                tcp: config.server.tcp,
                tls: (config.backends.get(pool.key.backend_id))
                    .map_or_else(crate::tls::BackendTls::disabled, |b| b.tls.clone()),
            };
            let timeouts = (config.pool.idle_timeout, config.pool.max_lifetime);
            pool.reconfigure(password, size, timeouts, dial);
        }
    }
}
