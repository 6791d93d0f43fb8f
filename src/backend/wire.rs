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
    /// When the connection was made, whether it is encrypted, and its local address, read
    /// once when it was made (SHOW SERVERS).
    pub connected: std::time::SystemTime,
    pub encrypted: bool,
    pub local: Option<SocketAddr>,
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
            local: None,
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
/// the least recently used one is closed when there are too many, and when each was prepared
/// so that one prepared before a client's own Parse of the same text (which may follow DDL
/// that changed what the text means) is prepared again before it runs.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Hash → (last use, this core's parse epoch when it was prepared).
    used: std::collections::HashMap<u64, (u64, u64)>,
    tick: u64,
}

/// Whether a backend has a statement, and whether as the text means now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Has {
    /// Prepared since the latest Parse of its text by a client of this core.
    Fresh,
    /// Prepared before it: closed and prepared again before use.
    Stale,
    /// Not there.
    No,
}

/// This core's parse epochs: when a client last sent its own Parse of each statement text.
/// A core is one thread, and its backends serve only its clients.
struct Epochs {
    at: std::collections::HashMap<u64, u64>,
    now: u64,
    /// Every statement prepared before this is stale (the map was cleared to stay bounded).
    floor: u64,
}

/// Texts whose epochs a core remembers; past it all are forgotten and every backend statement
/// counts as stale once, which costs Parses, never correctness.
const MAX_EPOCHS: usize = 65_536;

thread_local!(static EPOCHS: std::cell::RefCell<Epochs> = std::cell::RefCell::new(Epochs {
    at: std::collections::HashMap::new(),
    now: 0,
    floor: 0,
}));

/// A client of this core sent its own Parse of the statement `hash`: every backend's copy
/// prepared before now is stale.
pub fn client_parsed(hash: u64) {
    EPOCHS.with(|e| {
        let mut e = e.borrow_mut();
        e.now += 1;
        let now = e.now;
        if e.at.len() >= MAX_EPOCHS && !e.at.contains_key(&hash) {
            e.at.clear();
            e.floor = now;
        }
        e.at.insert(hash, now);
    });
}

/// The epoch a statement prepared now gets, and the one a copy needs to be fresh.
fn epochs(hash: u64) -> (u64, u64) {
    EPOCHS.with(|e| {
        let e = e.borrow();
        (e.now, e.at.get(&hash).copied().unwrap_or(e.floor))
    })
}

impl Prepared {
    /// Whether the backend has the statement, fresh or stale; a fresh one counts as a use.
    pub fn has(&mut self, hash: u64) -> Has {
        self.tick += 1;
        let Some((used, epoch)) = self.used.get_mut(&hash) else {
            return Has::No;
        };
        // Epoch 0: kept after a skipped Close, stale whatever the epochs say.
        if *epoch == 0 || *epoch < epochs(hash).1 {
            return Has::Stale;
        }
        *used = self.tick;
        Has::Fresh
    }

    /// Records a statement prepared now; returns the least recently used one to close when
    /// more than `cap`.
    pub fn insert(&mut self, hash: u64, cap: usize) -> Option<u64> {
        self.tick += 1;
        self.used.insert(hash, (self.tick, epochs(hash).0.max(1)));
        if self.used.len() <= cap.max(1) {
            return None;
        }
        let (&oldest, _) = self
            .used
            .iter()
            .filter(|(h, _)| **h != hash)
            .min_by_key(|(_, (t, _))| *t)?;
        self.used.remove(&oldest);
        Some(oldest)
    }

    /// Records that the backend still has a statement whose Close it skipped (after an
    /// error), as stale: it is closed again before it is prepared again.
    pub fn kept(&mut self, hash: u64) {
        self.used.insert(hash, (self.tick, 0));
    }

    /// Forgets a statement (its Parse failed, or it was closed).
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
