//! The control plane: owns the cluster state (addresses, roles, weights, status), resolves
//! names off the data path and broadcasts versioned snapshots to every core.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, Role};
use crate::health::Check;

mod hooks;
mod mailbox;
mod plane;

pub use mailbox::{mailbox, Mailbox, MailboxReceiver};

/// A core's inbox: the control plane's snapshots, forwarded cancels, the console's questions.
pub type CoreSender = Mailbox<CoreMsg>;
/// A core's end of its inbox.
pub type CoreReceiver = MailboxReceiver<CoreMsg>;

/// A new core inbox.
pub fn core_channel() -> (CoreSender, CoreReceiver) {
    mailbox()
}

pub use plane::{run, Latest, RESOLVE_INTERVAL};

/// Whether a backend is in the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Serving.
    Up,
    /// Detached after consecutive failed checks (a replica with `failover = true`): no new
    /// work is sent to it until it is attached again.
    Down,
    /// Failing its checks, but never detached (`failover = false`, always the primary): it
    /// takes no reads, and work that needs it still goes there.
    Unavailable,
    /// Answering, but too far behind the primary: it takes no reads until it catches up.
    Lagging,
    /// Answering, but slowly (busy, not dead): it stays in the rotation with a lowered share.
    Slow,
}

impl Status {
    /// Whether a replica in this state takes reads.
    pub fn takes_reads(self) -> bool {
        matches!(self, Status::Up | Status::Slow)
    }
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
    /// Share of reads: the configured weight times 1000, less while a returning replica
    /// ramps up.
    pub weight: u32,
    /// In or out of the rotation.
    pub status: Status,
    /// The WAL position its latest answered check reported (the primary's current position, a
    /// replica's replayed one), and when that check began: a primary position from a check
    /// begun after a write was acknowledged is at or past that write.
    pub lsn: Option<(u64, Instant)>,
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
                addr: if b.removed {
                    None
                } else {
                    resolve(&b.host, b.port)
                },
                role: b.role,
                weight: b.weight.saturating_mul(1000),
                status: if b.removed { Status::Down } else { Status::Up },
                lsn: None,
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
    /// The admin console asks what this core holds (its pools and clients).
    Report(Mailbox<crate::admin::CoreReport>),
    /// A new cluster snapshot.
    State(Arc<ClusterState>),
    /// Forwarded CancelRequest for a session this core owns.
    Cancel { pid: u32, secret: u32 },
    /// Stop accepting; end sessions as they become idle.
    Shutdown,
    /// The TLS offered to clients from now on (a reload read the certificate again).
    ClientTls(Option<crate::tls::ClientTls>),
    /// PAUSE (`pause`) or RESUME of one database (`Some`) or all: while paused, work that
    /// needs a new backend connection waits.
    Pause {
        database: Option<String>,
        pause: bool,
    },
    /// A reload's configuration: new sessions and connections follow it, pools take their new
    /// sizes and passwords (connections made with an old password close when released).
    Config(Arc<Config>),
    /// KILL: end every session on this database now (57P01) and close its idle connections.
    Kill(String),
    /// RECONNECT: close the backend connections of this database (or all) once they are
    /// released; new ones are made as needed.
    Reconnect(Option<String>),
}

/// Messages to the control plane.
#[derive(Debug, Clone)]
pub enum ControlMsg {
    /// SIGTERM / SIGINT or a caller's request: stop.
    Shutdown,
    /// A health check of backend `id`, begun at `started`, is done.
    Checked {
        id: usize,
        check: Check,
        started: Instant,
    },
    /// A session's connection to backend `id`, meant for the primary, refused a write as
    /// read-only and could not prove it reaches a primary.
    Fenced { id: usize },
    /// SIGHUP or the console's RELOAD: read the config file again and apply it.
    Reload,
    /// The admin console asks what the control plane sees (backends, events).
    Describe(Mailbox<crate::admin::PlaneReport>),
    /// An operator's command (PAUSE, RESUME, KILL, RECONNECT), for the control plane to record
    /// as an event. The console passes the command to the cores itself.
    Note { event: &'static str, cause: String },
    /// The admin console's DETACH (`detach`) or ATTACH of the backend named `name`: a manual
    /// override the health checks respect until it is undone. The answer is an error's
    /// SQLSTATE and message, if refused.
    Override {
        name: String,
        detach: bool,
        reply: Mailbox<Result<(), (&'static str, String)>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    #[allow(clippy::disallowed_methods)] // the sending thread is no core: it may sleep
    fn a_core_sleeps_until_another_thread_sends_and_sees_the_senders_go() {
        let (tx, rx) = core_channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(CoreMsg::Shutdown).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            // Dropping the last sender here disconnects the inbox.
        });
        crate::worker::block_on(async {
            assert!(matches!(rx.recv().await, Some(CoreMsg::Shutdown)));
            assert!(rx.recv().await.is_none(), "every sender is gone");
        });
        sender.join().unwrap();
    }

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
