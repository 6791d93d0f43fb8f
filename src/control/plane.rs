//! The control-plane loop: health check outcomes in, cluster snapshots out, names resolved
//! again on a schedule and at once when the primary fails.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::hooks::Hooks;
use super::{ClusterState, ControlMsg, CoreMsg, CoreSender, Status};
use crate::admin::{BackendFigures, EventRecord, PlaneReport};
use crate::config::{Config, Role};
use crate::health::checker::{self, Addresses};
use crate::health::{Check, Rules, Tracker};

/// How often host names are resolved again (RDS endpoints move on failover).
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the control plane until shutdown: starts the health checks and turns their outcomes
/// into backend status, re-resolves names, and broadcasts every change to the cores.
pub fn run(
    config: Arc<Config>,
    state: ClusterState,
    rx: Receiver<ControlMsg>,
    tx: Sender<ControlMsg>,
    cores: Vec<CoreSender>,
    latest: Latest,
) {
    let mut plane = Plane::new(config.clone(), state, cores, latest);
    let mut checks = start_checks(config, &plane.addrs, &tx);
    let mut next_resolve = Instant::now() + RESOLVE_INTERVAL;
    let mut last_resolve = Instant::now();
    let mut last_fenced: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wake = if plane.ramping(now) {
            next_resolve.min(now + RAMP_STEP)
        } else {
            next_resolve
        };
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(ControlMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                log::info!("shutting down: workers stop accepting");
                plane.broadcast(CoreMsg::Shutdown);
                if let Some(checks) = checks {
                    checks.stop();
                }
                return;
            }
            Ok(ControlMsg::Checked { id, check, started }) => {
                let primary = plane.state.primary().is_some_and(|p| p.id == id);
                let demoted = matches!(&check, Check::Answered(r) if r.in_recovery);
                if primary && (demoted || matches!(check, Check::Failed(_))) {
                    // The platform may be moving the primary's name: look at once.
                    next_resolve = Instant::now();
                }
                plane.checked(id, &check, started, Instant::now());
            }
            Ok(ControlMsg::Reload) => {
                if let Some(config) = plane.reload() {
                    // The checks follow the new backends and [health] settings.
                    if let Some(old) = checks.take() {
                        old.stop();
                    }
                    checks = start_checks(config, &plane.addrs, &tx);
                }
            }
            Ok(ControlMsg::Describe(reply)) => {
                let _ = reply.send(plane.describe());
            }
            Ok(ControlMsg::Note { event, cause }) => {
                plane.record(event, "", String::new(), String::new(), cause);
            }
            Ok(ControlMsg::Override {
                name,
                detach,
                reply,
            }) => {
                let _ = reply.send(plane.override_by_hand(&name, detach, Instant::now()));
            }
            Ok(ControlMsg::Fenced { id }) => {
                // Many sessions may say so at once: one event and one lookup a second at most.
                let now = Instant::now();
                if last_fenced.is_none_or(|at| now.duration_since(at) >= FENCE_QUIET) {
                    last_fenced = Some(now);
                    let name = plane
                        .state
                        .backends
                        .get(id)
                        .map_or("?", |b| b.name.as_str());
                    let status = plane.health.get(id).map_or(Status::Up, Tracker::status);
                    let name = name.to_owned();
                    plane.record(
                        "fenced",
                        &name,
                        status.to_string(),
                        status.to_string(),
                        "a connection meant for the primary refused a write as read-only \
                         (25006); its name is looked up again"
                            .into(),
                    );
                }
                next_resolve = next_resolve.min(now.max(last_resolve + FENCE_QUIET));
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if now >= next_resolve {
            next_resolve = now + RESOLVE_INTERVAL;
            last_resolve = now;
            plane.resolve();
        }
        plane.publish(now);
    }
}

/// Starts the health checks of `config`'s backends.
fn start_checks(
    config: Arc<Config>,
    addrs: &Addresses,
    tx: &Sender<ControlMsg>,
) -> Option<checker::Checks> {
    match checker::spawn(config, addrs.clone(), tx.clone()) {
        Ok(checks) => Some(checks),
        Err(e) => {
            log::error!("cannot start the health checks: {e}; backends are taken as healthy");
            None
        }
    }
}

/// The latest snapshot the control plane published, for readers off the data path (tests,
/// the admin console). Cores get theirs through their channels.
pub type Latest = Arc<Mutex<Arc<ClusterState>>>;

/// At most one fencing event, and one lookup for it, this often.
const FENCE_QUIET: Duration = Duration::from_secs(1);

mod reload;

/// Each backend's health rules under `config`.
fn rules_of(config: &Config) -> Vec<Rules> {
    (config.backends.iter())
        .map(|b| {
            let replica = b.role == Role::Replica;
            // The platform fails the primary over, never the proxy.
            Rules::new(&config.health, b.failover && replica, replica)
        })
        .collect()
}

/// How often a ramping replica's share is raised.
const RAMP_STEP: Duration = Duration::from_millis(250);

/// Events kept for `SHOW EVENTS`.
const EVENTS_KEPT: usize = 100;

/// The control plane's own state: the published snapshot, the addresses as last resolved
/// (shared with the checks, which follow them), and each backend's health.
struct Plane {
    config: Arc<Config>,
    state: ClusterState,
    addrs: Addresses,
    /// Each backend's WAL position at its latest answered check, and when that check began.
    positions: Vec<Option<(u64, Instant)>>,
    health: Vec<Tracker>,
    /// When each backend was last checked, and why that check failed if it did.
    last_checks: Vec<Option<(SystemTime, Option<String>)>>,
    rules: Vec<Rules>,
    cores: Vec<CoreSender>,
    latest: Latest,
    /// The latest events, oldest first.
    events: VecDeque<EventRecord>,
    /// Detached by an operator (DETACH): out of the rotation whatever the checks say.
    detached_by_hand: Vec<bool>,
    /// The `[events] command`, if any.
    hooks: Option<Hooks>,
}

impl Plane {
    fn new(
        config: Arc<Config>,
        state: ClusterState,
        cores: Vec<CoreSender>,
        latest: Latest,
    ) -> Plane {
        let rules = rules_of(&config);
        Plane {
            health: vec![Tracker::default(); config.backends.len()],
            last_checks: vec![None; config.backends.len()],
            events: VecDeque::new(),
            detached_by_hand: vec![false; config.backends.len()],
            hooks: Hooks::start(&config.events.command),
            positions: vec![None; config.backends.len()],
            addrs: Arc::new(Mutex::new(state.backends.iter().map(|b| b.addr).collect())),
            config,
            state,
            rules,
            cores,
            latest,
        }
    }

    /// The addresses as last resolved.
    fn addrs(&self) -> Vec<Option<SocketAddr>> {
        match self.addrs.lock() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn ramping(&self, now: Instant) -> bool {
        self.health
            .iter()
            .zip(&self.rules)
            .any(|(h, r)| h.ramping(r, now))
    }

    /// Takes a check into account; a change of status is logged as an event.
    fn checked(&mut self, id: usize, check: &Check, started: Instant, now: Instant) {
        let primary_lsn = self
            .state
            .primary()
            .and_then(|p| self.positions.get(p.id).copied().flatten())
            .map(|(lsn, _)| lsn);
        let (Some(tracker), Some(rules), Some(b)) = (
            self.health.get_mut(id),
            self.rules.get(id),
            self.state.backends.get(id),
        ) else {
            return;
        };
        let change = tracker.observe(check, primary_lsn, rules, now);
        if let (Check::Answered(report), Some(at)) = (check, self.positions.get_mut(id)) {
            *at = report.lsn.map(|lsn| (lsn, started));
        }
        let failed = match check {
            Check::Failed(why) => Some(why.clone()),
            Check::Answered(_) => None,
        };
        if let Some(last) = self.last_checks.get_mut(id) {
            *last = Some((SystemTime::now(), failed));
        }
        if let Some(change) = change {
            let name = b.name.clone();
            let (from, to) = (change.from.to_string(), change.to.to_string());
            self.record(change.event(), &name, from, to, change.cause);
        }
    }

    /// Logs an event (a warning unless a backend came back up) and keeps it for the console.
    fn record(&mut self, event: &str, backend: &str, from: String, to: String, cause: String) {
        let line = format!("event={event} backend={backend} from={from} to={to} cause={cause:?}");
        if to == Status::Up.to_string() || event == "address_changed" || event == "reload" {
            log::info!("{line}");
        } else {
            log::warn!("{line}");
        }
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        let record = EventRecord {
            at: SystemTime::now(),
            event: event.to_owned(),
            backend: backend.to_owned(),
            from,
            to,
            cause,
        };
        if let Some(hooks) = &self.hooks {
            hooks.offer(&record);
        }
        self.events.push_back(record);
    }

    /// DETACH (`detach`) or ATTACH by an operator. The primary is never detached: the
    /// platform fails it over and pgpilot follows.
    fn override_by_hand(
        &mut self,
        name: &str,
        detach: bool,
        now: Instant,
    ) -> Result<(), (&'static str, String)> {
        let backends = &self.config.backends;
        let Some(id) = (backends.iter()).position(|b| b.name == name && !b.removed) else {
            let names: Vec<&str> = (backends.iter())
                .filter(|b| !b.removed)
                .map(|b| b.name.as_str())
                .collect();
            return Err((
                "42704",
                format!(
                    "no backend named {name:?} (there are: {})",
                    names.join(", ")
                ),
            ));
        };
        if detach
            && self
                .config
                .backends
                .get(id)
                .is_some_and(|b| b.role == Role::Primary)
        {
            return Err((
                "55000",
                format!(
                    "{name} is the primary, which pgpilot never detaches: the platform fails it \
                     over behind its name and pgpilot follows"
                ),
            ));
        }
        let (Some(by_hand), Some(tracker)) =
            (self.detached_by_hand.get_mut(id), self.health.get_mut(id))
        else {
            return Ok(());
        };
        if *by_hand == detach {
            return Ok(());
        }
        *by_hand = detach;
        let health = tracker.status().to_string();
        let (event, from, to, cause) = if detach {
            (
                "detached",
                health,
                "down".to_owned(),
                "DETACH from the admin console",
            )
        } else {
            tracker.ramp_from(now);
            (
                "attached",
                "down".to_owned(),
                health,
                "ATTACH from the admin console",
            )
        };
        self.record(event, name, from, to, cause.into());
        Ok(())
    }

    /// What the admin console shows of the backends and the latest events.
    fn describe(&self) -> PlaneReport {
        let now = Instant::now();
        let each = self.health.iter().zip(&self.rules).zip(&self.last_checks);
        let backends = (self
            .config
            .backends
            .iter()
            .zip(&self.state.backends)
            .zip(each)
            .zip(&self.detached_by_hand))
        .map(|(((c, b), ((h, r), last)), by_hand)| BackendFigures {
            name: c.name.clone(),
            host: c.host.clone(),
            port: c.port,
            addr: b.addr,
            role: c.role,
            status: if *by_hand || c.removed {
                Status::Down
            } else {
                h.status()
            },
            detached_by_hand: *by_hand,
            removed: c.removed,
            weight: c.weight,
            share: h.share(c.weight, r, now),
            lag_bytes: h.lag,
            replay_delay_ms: h.last.as_ref().and_then(|r| r.replay_delay_ms),
            answer: h.answer,
            last_check: last.as_ref().map(|(at, _)| *at),
            failures: h.failures(),
            cause: last
                .as_ref()
                .and_then(|(_, why)| why.clone())
                .unwrap_or_default(),
        })
        .collect();
        PlaneReport {
            epoch: self.state.epoch,
            backends,
            events: self.events.iter().cloned().collect(),
        }
    }

    /// Resolves the names again; a name that stops resolving keeps its last address.
    fn resolve(&mut self) {
        let next = ClusterState::resolve(&self.config, self.state.epoch);
        let mut addrs = self.addrs();
        let mut changes = Vec::new();
        for ((new, old), b) in next
            .backends
            .iter()
            .zip(addrs.iter_mut())
            .zip(&self.state.backends)
        {
            if new.addr.is_some() && new.addr != *old {
                let show = |a: Option<SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
                changes.push((b.name.clone(), show(*old), show(new.addr)));
                *old = new.addr;
            }
        }
        for (name, from, to) in changes {
            self.record("address_changed", &name, from, to, "DNS".into());
        }
        if let Ok(mut shared) = self.addrs.lock() {
            *shared = addrs;
        }
    }

    /// Brings status and shares up to date and, if anything changed since the last snapshot,
    /// sends a new epoch to every core.
    fn publish(&mut self, now: Instant) {
        let mut next = self.state.backends.clone();
        let addrs = self.addrs();
        let each = self
            .health
            .iter()
            .zip(&self.rules)
            .zip(&self.config.backends);
        for ((((b, ((h, r), c)), addr), lsn), by_hand) in (next.iter_mut().zip(each))
            .zip(addrs)
            .zip(&self.positions)
            .zip(&self.detached_by_hand)
        {
            b.addr = addr;
            b.lsn = *lsn;
            b.status = if *by_hand { Status::Down } else { h.status() };
            b.weight = h.share(c.weight, r, now);
            if c.removed {
                // Gone at a reload: it keeps its place and serves nothing.
                (b.addr, b.status, b.weight) = (None, Status::Down, 0);
            }
        }
        if next == self.state.backends {
            return;
        }
        self.state.epoch += 1;
        self.state.backends = next;
        let snapshot = Arc::new(self.state.clone());
        if let Ok(mut latest) = self.latest.lock() {
            *latest = snapshot.clone();
        }
        self.broadcast(CoreMsg::State(snapshot));
    }

    fn broadcast(&self, msg: CoreMsg) {
        for core in &self.cores {
            let _ = core.send(msg.clone());
        }
    }
}
