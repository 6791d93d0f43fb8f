//! The control plane: owns the cluster state (addresses, roles, weights, status), resolves
//! names off the data path and broadcasts versioned snapshots to every core.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::{Config, Role};

/// Whether a backend is in the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Serving.
    Up,
    /// Detached: no new work is sent to it.
    Down,
}

/// One backend as the cores see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendState {
    /// Index in `Config::backends`.
    pub id: usize,
    /// Name from the config.
    pub name: String,
    /// Resolved address; `None` while the name does not resolve.
    pub addr: Option<SocketAddr>,
    /// Primary or replica.
    pub role: Role,
    /// Share of reads.
    pub weight: u32,
    /// In or out of the rotation.
    pub status: Status,
}

/// An immutable, versioned snapshot of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    /// Increases on every change; a core never goes back to an older epoch.
    pub epoch: u64,
    /// One entry per configured backend, same order.
    pub backends: Vec<BackendState>,
}

impl ClusterState {
    /// The state the config describes, with names resolved now (blocking: control plane only).
    pub fn resolve(config: &Config, epoch: u64) -> ClusterState {
        let backends = config
            .backends
            .iter()
            .enumerate()
            .map(|(id, b)| BackendState {
                id,
                name: b.name.clone(),
                addr: resolve(&b.host, b.port),
                role: b.role,
                weight: b.weight,
                status: Status::Up,
            })
            .collect();
        ClusterState { epoch, backends }
    }

    /// The primary's entry (config validation guarantees there is exactly one).
    pub fn primary(&self) -> Option<&BackendState> {
        self.backends.iter().find(|b| b.role == Role::Primary)
    }
}

/// The address to use for a host: IPv4 first (what RDS endpoints and most servers listen on,
/// while `localhost` often resolves to `::1` first), else the first address.
fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
        }
        Err(e) => {
            log::warn!("cannot resolve backend host {host}: {e}");
            None
        }
    }
}

/// Messages to one core.
#[derive(Debug, Clone)]
pub enum CoreMsg {
    /// A new cluster snapshot.
    State(Arc<ClusterState>),
    /// Forwarded CancelRequest for a session this core owns.
    Cancel { pid: u32, secret: u32 },
    /// Stop accepting; end sessions as they become idle.
    Shutdown,
}

/// Messages to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMsg {
    /// SIGTERM / SIGINT or a caller's request: stop.
    Shutdown,
}

/// How often host names are resolved again (RDS endpoints move on failover).
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the control plane until shutdown: re-resolves names and broadcasts changes.
pub fn run(
    config: Arc<Config>,
    mut state: ClusterState,
    rx: Receiver<ControlMsg>,
    cores: Vec<Sender<CoreMsg>>,
) {
    loop {
        match rx.recv_timeout(RESOLVE_INTERVAL) {
            Ok(ControlMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                log::info!("shutting down: workers stop accepting");
                for core in &cores {
                    let _ = core.send(CoreMsg::Shutdown);
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut next = ClusterState::resolve(&config, state.epoch + 1);
                for (new, old) in next.backends.iter_mut().zip(&state.backends) {
                    new.status = old.status;
                    if new.addr.is_none() {
                        new.addr = old.addr;
                    }
                }
                if next.backends != state.backends {
                    for (new, old) in next.backends.iter().zip(&state.backends) {
                        if new.addr != old.addr {
                            log::info!(
                                "backend {} moved from {:?} to {:?}",
                                new.name,
                                old.addr,
                                new.addr
                            );
                        }
                    }
                    state = next;
                    let snapshot = Arc::new(state.clone());
                    for core in &cores {
                        let _ = core.send(CoreMsg::State(snapshot.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_ipv4_first() {
        assert_eq!(
            resolve("localhost", 5432),
            Some(([127, 0, 0, 1], 5432).into())
        );
        assert_eq!(resolve("127.0.0.2", 1), Some(([127, 0, 0, 2], 1).into()));
        assert_eq!(resolve("no-such-host.invalid", 1), None);
    }
}
