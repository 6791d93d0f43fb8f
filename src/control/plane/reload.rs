//! A reload (SIGHUP, or RELOAD on the console): the file is read and checked as `check-config`
//! checks it; a file that does not load changes nothing. A good one takes effect without
//! dropping a client: backends keep their ids by name (one added goes after the others, one
//! removed keeps its place and serves nothing), weights, roles, users, pools, routing,
//! health settings, the events command and TLS follow it. What a running process cannot
//! change (its listen address, workers, backlog, pool mode, metrics address, peer id) stays,
//! and the event says that it needs a restart.

use std::sync::Arc;

use super::{rules_of, Plane};
use crate::config::Config;
use crate::control::hooks::Hooks;
use crate::control::{BackendState, CoreMsg, Status};
use crate::health::Tracker;

impl Plane {
    /// Reads the config file again; the new configuration if it took effect.
    pub(super) fn reload(&mut self) -> Option<Arc<Config>> {
        let path = self.config.path.clone();
        let next = match Config::load(&path).map(Arc::try_unwrap) {
            Ok(Ok(next)) => next,
            Ok(Err(_)) => return None,
            Err(e) => {
                log::error!("reload failed, the running configuration stays: {e}");
                self.record(
                    "reload_failed",
                    "",
                    String::new(),
                    String::new(),
                    e.to_string(),
                );
                return None;
            }
        };
        let (mut next, added, removed) = next.in_places_of(&self.config);
        let restart = self.keep_what_needs_a_restart(&mut next);
        let config = Arc::new(next);
        let n = config.backends.len();
        self.health.resize(n, Tracker::default());
        self.last_checks.resize(n, None);
        self.detached_by_hand.resize(n, false);
        self.positions.resize(n, None);
        if let Ok(mut addrs) = self.addrs.lock() {
            addrs.resize(n, None);
        }
        self.rules = rules_of(&config);
        for (id, b) in config.backends.iter().enumerate() {
            match self.state.backends.get_mut(id) {
                Some(s) => {
                    s.role = b.role;
                    s.name.clone_from(&b.name);
                }
                None => self.state.backends.push(BackendState {
                    id,
                    name: b.name.clone(),
                    addr: None,
                    role: b.role,
                    weight: 0,
                    status: Status::Up,
                    lsn: None,
                }),
            }
        }
        if config.events.command != self.config.events.command {
            self.hooks = Hooks::start(&config.events.command);
        }
        self.config = config.clone();
        // New backends' names resolve now; the next publish sends the new state.
        self.resolve();
        self.broadcast(CoreMsg::Config(config.clone()));
        self.broadcast(CoreMsg::ClientTls(config.client_tls.clone()));
        let mut cause = format!("{}", path.display());
        for (what, names) in [("added", &added), ("removed", &removed)] {
            if !names.is_empty() {
                cause.push_str(&format!("; backends {what}: {}", names.join(", ")));
            }
        }
        if !restart.is_empty() {
            cause.push_str(&format!(
                "; {} cannot change while running (restart for them)",
                restart.join(", ")
            ));
        }
        self.record("reload", "", String::new(), String::new(), cause);
        Some(config)
    }

    /// Puts back the settings a running process cannot change; returns the keys that differed.
    fn keep_what_needs_a_restart(&self, next: &mut Config) -> Vec<&'static str> {
        let (old, new) = (&self.config.server, &mut next.server);
        let mut differ = Vec::new();
        if new.listen != old.listen {
            differ.push("server.listen");
            new.listen = old.listen;
        }
        if new.workers != old.workers {
            differ.push("server.workers");
            new.workers = old.workers;
        }
        if new.listen_backlog != old.listen_backlog {
            differ.push("server.listen_backlog");
            new.listen_backlog = old.listen_backlog;
        }
        if new.pool_mode != old.pool_mode {
            differ.push("server.pool_mode");
            new.pool_mode = old.pool_mode;
        }
        if next.peers.id != self.config.peers.id {
            // Every session's cancel key carries the id.
            differ.push("peers.id");
            next.peers.id = self.config.peers.id;
        }
        if next.metrics != self.config.metrics {
            differ.push("metrics.listen");
            next.metrics = self.config.metrics.clone();
        }
        differ
    }
}
