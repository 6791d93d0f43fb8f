//! The protocol half of a backend connection: what the session core holds of it.

use std::net::SocketAddr;

use bytes::BytesMut;

use super::READ_CHUNK;

/// The protocol half of a [`Backend`](super::Backend), its side of the wire: bytes read and not
/// yet handled, and what the backend has said about itself. No socket: the session core and
/// its tests work on this alone.
#[derive(Debug)]
pub struct Wire {
    /// Bytes read from the backend and not yet forwarded.
    pub rbuf: BytesMut,
    /// The backend's id in the cluster state.
    pub id: usize,
    /// Where it is connected.
    pub addr: SocketAddr,
    /// The server's BackendKeyData, used to cancel its queries.
    pub key: (u32, u32),
    /// ParameterStatus values the server has reported.
    pub params: ServerParams,
    /// Hash of the client parameter set applied with SET (0 = server defaults, `u64::MAX` = unknown).
    pub applied: u64,
    /// Shared prepared statements this connection has (transaction pooling).
    pub prepared: Prepared,
    /// A primary connection that answered a write with 25006 (read-only) and never said it is
    /// no standby: it runs no more work once the statement in hand is done, and is closed.
    pub fenced: bool,
    /// When the connection was made, and whether it is encrypted (SHOW SERVERS).
    pub connected: std::time::SystemTime,
    pub encrypted: bool,
}

impl Wire {
    /// A just-authenticated connection to backend `id` at `addr`, nothing known of it yet.
    pub fn new(id: usize, addr: SocketAddr) -> Wire {
        Wire {
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            id,
            addr,
            key: (0, 0),
            params: ServerParams::default(),
            applied: 0,
            prepared: Prepared::default(),
            fenced: false,
            connected: std::time::SystemTime::now(),
            encrypted: false,
        }
    }
}

/// The ParameterStatus values a server has reported, in arrival order.
#[derive(Debug, Default)]
pub struct ServerParams {
    /// `(name, value)` pairs.
    pub list: Vec<(String, String)>,
    /// Changes whenever `list` changes; lets a session skip comparing unchanged sets.
    pub version: u64,
}

impl ServerParams {
    /// Records a ParameterStatus the server sent.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.list.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) if v == value => return,
            Some((_, v)) => *v = value.to_owned(),
            None => self.list.push((name.to_owned(), value.to_owned())),
        }
        self.version = next_params_version();
    }

    /// The server said it is a standby (`in_hot_standby = on`, reported by PostgreSQL 14 and
    /// later at login and whenever it changes).
    pub fn in_recovery(&self) -> bool {
        self.list
            .iter()
            .any(|(n, v)| n == "in_hot_standby" && v == "on")
    }

    /// The server said it is no standby (`in_hot_standby = off`). A server never goes from
    /// primary back to standby without a restart, which ends its connections: such a
    /// connection reaches a primary for as long as it lives, and a 25006 on it comes from a
    /// read-only transaction, not from a demoted server.
    pub fn proven_primary(&self) -> bool {
        self.list
            .iter()
            .any(|(n, v)| n == "in_hot_standby" && v == "off")
    }
}

/// The shared prepared statements of one backend, by query hash, with their last use so that
/// the least recently used one is closed when there are too many.
#[derive(Debug, Default)]
pub struct Prepared {
    used: std::collections::HashMap<u64, u64>,
    tick: u64,
}

impl Prepared {
    /// Whether the backend has the statement; counts as a use.
    pub fn contains(&mut self, hash: u64) -> bool {
        self.tick += 1;
        match self.used.get_mut(&hash) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a statement; returns the least recently used one to close when more than `cap`.
    pub fn insert(&mut self, hash: u64, cap: usize) -> Option<u64> {
        self.tick += 1;
        self.used.insert(hash, self.tick);
        if self.used.len() <= cap.max(1) {
            return None;
        }
        let (&oldest, _) = self
            .used
            .iter()
            .filter(|(h, _)| **h != hash)
            .min_by_key(|(_, t)| **t)?;
        self.used.remove(&oldest);
        Some(oldest)
    }

    /// Forgets a statement (its Parse failed).
    pub fn remove(&mut self, hash: u64) {
        self.used.remove(&hash);
    }

    /// Forgets all (DISCARD ALL / DEALLOCATE ALL ran on the backend).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// Statements the backend has.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

fn next_params_version() -> u64 {
    use std::cell::Cell;
    thread_local!(static NEXT: Cell<u64> = const { Cell::new(1) });
    NEXT.with(|n| {
        let v = n.get();
        n.set(v + 1);
        v
    })
}
