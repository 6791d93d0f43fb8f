//! Starts pgpilot in this process: the control plane thread and one monoio runtime per
//! worker, each with its own listener. The returned handle stops them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::Config;
use crate::control::{self, ClusterState, ControlMsg};
use crate::core::Core;
use crate::worker::Placement;
use crate::{listener, worker};

/// After `shutdown_timeout_ms`, how long sessions get to tell their clients 57P01 and close.
const FORCED_END: Duration = Duration::from_secs(2);

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartError {
    /// Binding the listen address failed.
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A worker runtime did not start.
    Worker { core: usize, reason: String },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::Worker { core, reason } => {
                write!(f, "worker {core} did not start: {reason}")
            }
        }
    }
}

impl std::error::Error for StartError {}

/// A running proxy. Dropping it shuts it down and waits for its threads.
pub struct Proxy {
    addr: SocketAddr,
    latest: control::Latest,
    control: Sender<ControlMsg>,
    control_thread: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    metrics: Option<crate::metrics::MetricsServer>,
}

impl Proxy {
    /// Starts the control plane and the workers; returns once every listener is bound.
    pub fn start(config: Arc<Config>) -> Result<Proxy, StartError> {
        let cpus = allowed_cpus();
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(cpus.len().max(1)),
            n => n,
        };
        if workers > crate::core::MAX_WORKERS {
            log::warn!(
                "{workers} workers asked; at most {} run (a cancel key tells that many apart)",
                crate::core::MAX_WORKERS
            );
        }
        let workers = workers.min(crate::core::MAX_WORKERS);
        let addr = config.server.listen;
        let listeners = listener::bind(addr, config.server.listen_backlog, workers)
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(addr);
        let state = Arc::new(ClusterState::resolve(&config, 1));
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| control::core_channel()).unzip();
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        // Bound before the workers start, so that a metrics address in use fails the start
        // before any client is accepted.
        let metrics = match config.metrics.listen {
            Some(listen) => Some(
                crate::metrics::MetricsServer::start(listen, senders.clone(), control_tx.clone())
                    .map_err(|source| StartError::Bind {
                    addr: listen,
                    source,
                })?,
            ),
            None => None,
        };
        let clients = Arc::new(AtomicUsize::new(0));
        let pin = cpus.len() == workers;
        let mut handles = Vec::with_capacity(workers);
        let mut driver = "";
        for (id, (listener, rx)) in listeners.into_iter().zip(receivers).enumerate() {
            let placement = match cpus.get(id) {
                Some(&cpu) if pin => Placement::Fixed(cpu),
                _ => Placement::Unbound,
            };
            let (config, state, clients, peers, control) = (
                config.clone(),
                state.clone(),
                clients.clone(),
                senders.clone(),
                control_tx.clone(),
            );
            let make = move || Core::new(id, workers, config, state, clients, peers, control);
            let (handle, got) = spawn_worker(id, make, placement, listener, rx)?;
            handles.push(handle);
            driver = got;
        }
        let control_state = (*state).clone();
        let control_config = config.clone();
        let checks = control_tx.clone();
        let latest: control::Latest = Arc::new(Mutex::new(state.clone()));
        let published = latest.clone();
        let control_thread = std::thread::Builder::new()
            .name("pgpilot-control".into())
            .spawn(move || {
                control::run(
                    control_config,
                    control_state,
                    control_rx,
                    checks,
                    senders,
                    published,
                )
            })
            .map_err(|e| StartError::Worker {
                core: workers,
                reason: e.to_string(),
            })?;
        log::info!(
            "pgpilot listening on {addr} with {workers} worker(s) on {driver}, {:?} pooling",
            config.server.pool_mode
        );
        Ok(Proxy {
            addr,
            latest,
            control: control_tx,
            control_thread: Some(control_thread),
            workers: handles,
            metrics,
        })
    }

    /// The address clients connect to (with the real port when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(crate::metrics::MetricsServer::addr)
    }

    /// The cluster as the control plane last published it (roles, addresses, health).
    pub fn cluster_state(&self) -> Arc<ClusterState> {
        match self.latest.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A sender that asks the proxy to shut down (for signal handlers).
    pub fn control(&self) -> Sender<ControlMsg> {
        self.control.clone()
    }

    /// Stops accepting, ends sessions as they become idle, and waits for every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Waits until the proxy has stopped (after a shutdown request through [`Proxy::control`]).
    pub fn wait(mut self) {
        self.join();
    }

    fn stop(&mut self) {
        let _ = self.control.send(ControlMsg::Shutdown);
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.control_thread.take() {
            let _ = t.join();
        }
        for w in self.workers.drain(..) {
            // A worker that panicked has ended the process already (see `worker`).
            let _ = w.join();
        }
        // Last: while the workers drain, /readyz says they are shutting down.
        if let Some(mut m) = self.metrics.take() {
            m.stop();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts one worker runtime: follows control messages, reaps idle backends, accepts clients
/// until shutdown, then gives sessions in a transaction up to `shutdown_timeout_ms` to finish,
/// and ends the rest with 57P01.
fn spawn_worker(
    id: usize,
    make: impl FnOnce() -> Core + Send + 'static,
    placement: Placement,
    listener: std::net::TcpListener,
    rx: control::CoreReceiver,
) -> Result<(JoinHandle<()>, &'static str), StartError> {
    worker::spawn(format!("pgpilot-{id}"), placement, move || async move {
        let core = std::rc::Rc::new(make());
        monoio::spawn(core.clone().follow_control(rx));
        monoio::spawn(core.clone().reap());
        listener::serve(core.clone(), listener).await;
        let deadline = Instant::now() + core.config().server.shutdown_timeout;
        while core.session_count() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        if core.session_count() > 0 {
            log::info!(
                "core {}: {} session(s) still open after shutdown_timeout_ms: ending them",
                core.id,
                core.session_count()
            );
            core.force_shutdown();
            let deadline = Instant::now() + FORCED_END;
            while core.session_count() > 0 && Instant::now() < deadline {
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .map_err(|reason| StartError::Worker { core: id, reason })
}

/// CPUs this process may run on, from the kernel's view of our affinity mask.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let mut ends = part
            .split('-')
            .filter_map(|n| n.trim().parse::<usize>().ok());
        match (ends.next(), ends.next()) {
            (Some(a), Some(b)) => cpus.extend(a..=b),
            (Some(a), None) => cpus.push(a),
            _ => {}
        }
    }
    cpus
}
