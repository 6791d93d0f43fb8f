//! An operator's PAUSE, RESUME, KILL and RECONNECT, as each core carries them out.

use std::rc::Rc;

use super::Core;
use crate::admin::ClientCard;

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
