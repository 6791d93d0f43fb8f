//! The health checks: one task per backend on a thread of their own (never a core's), each on
//! a connection of its own, so that a saturated pool never looks like a dead node. Every check
//! is one round trip of [`CHECK_SQL`]; its outcome goes to the control plane, which decides.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{Check, Report, CHECK_SQL};
use crate::backend::{Backend, Login};
use crate::config::Config;
use crate::control::ControlMsg;
use crate::error::Error;

/// The address of every backend as the control plane resolved it, by id; the checks follow it.
pub type Addresses = Arc<Mutex<Vec<Option<SocketAddr>>>>;

/// The running checks; [`Checks::stop`] ends them.
pub struct Checks {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Checks {
    /// Stops the checks and waits for their thread: at most a step, or a check in flight
    /// (bounded by `timeout_ms`).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// How often a waiting check looks whether it should stop.
const STOP_STEP: Duration = Duration::from_millis(50);

/// Starts the checks. They stop when told, or once the control plane is gone.
pub fn spawn(
    config: Arc<Config>,
    addrs: Addresses,
    control: Sender<ControlMsg>,
) -> io::Result<Checks> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("pgpilot-health".into())
        .spawn(move || {
            crate::worker::block_on(async move {
                // A backend removed at a reload keeps its place, unchecked.
                let tasks: Vec<_> = (0..config.backends.len())
                    .filter(|id| config.backends.get(*id).is_some_and(|b| !b.removed))
                    .map(|id| {
                        let (config, addrs, control, stop) =
                            (config.clone(), addrs.clone(), control.clone(), flag.clone());
                        monoio::spawn(watch(id, config, addrs, control, stop))
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
            })
        })?;
    Ok(Checks { stop, thread })
}

/// Checks one backend every `interval` until told to stop or the control plane goes away.
async fn watch(
    id: usize,
    config: Arc<Config>,
    addrs: Addresses,
    control: Sender<ControlMsg>,
    stop: Arc<AtomicBool>,
) {
    let health = &config.health;
    let mut conn: Option<Backend> = None;
    let mut next = Instant::now();
    loop {
        let started = Instant::now();
        let addr = addrs.lock().ok().and_then(|a| a.get(id).copied().flatten());
        let check = match addr {
            None => Check::Failed("its host name does not resolve".into()),
            Some(addr) => {
                if conn.as_ref().is_some_and(|c| c.state.addr != addr) {
                    conn = None;
                }
                let once = check_once(&mut conn, addr, id, &config);
                match monoio::time::timeout(health.timeout, once).await {
                    Ok(Ok(report)) => Check::Answered(report),
                    Ok(Err(e)) => {
                        conn = None;
                        Check::Failed(e.to_string())
                    }
                    Err(_) => {
                        conn = None;
                        Check::Failed(format!(
                            "no answer within {} ms",
                            health.timeout.as_millis()
                        ))
                    }
                }
            }
        };
        if control
            .send(ControlMsg::Checked { id, check, started })
            .is_err()
        {
            return;
        }
        next += health.interval;
        let mut now = Instant::now();
        if next < now {
            next = now;
        }
        while now < next {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            monoio::time::sleep(STOP_STEP.min(next - now)).await;
            now = Instant::now();
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// One check on the backend's own health connection, opened first if need be.
async fn check_once(
    conn: &mut Option<Backend>,
    addr: SocketAddr,
    id: usize,
    config: &Config,
) -> Result<Report, Error> {
    let health = &config.health;
    let backend = match conn {
        Some(b) => b,
        None => {
            let disabled = crate::tls::BackendTls::disabled();
            let tls = config.backends.get(id).map_or(&disabled, |b| &b.tls);
            let login = Login {
                keys: None,
                user: &health.user,
                password: config.user(&health.user).map(|u| u.password.as_str()),
                database: &health.database,
                application_name: Some("pgpilot health check"),
            };
            conn.insert(Backend::connect(addr, id, &login, &config.server.tcp, tls).await?)
        }
    };
    // Only the query's round trip counts as its answer time, not a login before it.
    let asked = Instant::now();
    let rows = backend.simple_query(CHECK_SQL).await?;
    let took = asked.elapsed();
    rows.first()
        .and_then(|row| Report::parse(row))
        .map(|report| Report { took, ..report })
        .ok_or_else(|| Error::Backend {
            addr,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected answer to the health check query",
            ),
        })
}
