//! A core's registry of sessions: their BackendKeyData (pid and secret), the count of clients
//! still in startup, and CancelRequests, cancelled here or sent on to the core or instance
//! (`[peers]`) that owns the session.

use std::rc::Rc;

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use pgpilot_protocol::encode;

use super::{CancelTarget, Core, SessionEntry};
use crate::admin::ClientCard;
use crate::control::CoreMsg;

/// A BackendKeyData pid: bits 26..31 the instance (`[peers] id`, 0 without peers), 19..26 the
/// core, 0..19 the session's number on its core. Bit 31 stays 0: the pid is positive.
const INSTANCE_SHIFT: u32 = 26;
const CORE_SHIFT: u32 = 19;
const CORE_MASK: u32 = 0x7f;
const SESSION_MASK: u32 = (1 << CORE_SHIFT) - 1;
/// The most worker cores a pid can tell apart.
pub const MAX_WORKERS: usize = CORE_MASK as usize + 1;

impl Core {
    /// Registers a session (for cancellation and the console); returns its BackendKeyData
    /// `(pid, secret)`.
    pub fn register_session(&self, card: Rc<ClientCard>) -> (u32, u32) {
        let secret = u32::from_ne_bytes(pgpilot_protocol::scram::random_bytes::<4>());
        let mut sessions = self.sessions.borrow_mut();
        loop {
            let n = self.next_session.get().wrapping_add(1) & SESSION_MASK;
            self.next_session.set(n);
            let pid = self.session_pid(n);
            if n != 0 && !sessions.contains_key(&pid) {
                sessions.insert(pid, SessionEntry { secret, card });
                return (pid, secret);
            }
        }
    }

    /// Forgets a session.
    pub fn unregister_session(&self, pid: u32) {
        self.sessions.borrow_mut().remove(&pid);
        self.shutdown_wakers.borrow_mut().remove(&pid);
    }

    /// Number of live sessions on this core, and of clients still in startup.
    pub fn session_count(&self) -> usize {
        self.sessions.borrow().len() + self.starting.get()
    }

    /// Counts a client in startup until the guard is dropped.
    pub fn starting(self: &Rc<Self>) -> Starting {
        self.starting.set(self.starting.get() + 1);
        Starting(self.clone())
    }

    /// The BackendKeyData pid of this core's session number `n`: the instance (`[peers] id`),
    /// the core, and `n`. Number 0 is never a session's.
    pub fn session_pid(&self, n: u32) -> u32 {
        let instance = (self.instance as u32) << INSTANCE_SHIFT;
        instance | ((self.id as u32) << CORE_SHIFT) | (n & SESSION_MASK)
    }

    /// Handles a CancelRequest that arrived on this core: cancels here, or forwards it to the
    /// core or the instance (`[peers]`) that owns the session.
    pub fn cancel(&self, pid: u32, secret: u32) {
        let instance = (pid >> INSTANCE_SHIFT) as usize;
        if instance != self.instance {
            let owner = instance
                .checked_sub(1)
                .and_then(|i| self.config().peers.instances.get(i).copied());
            match owner {
                Some(addr) => {
                    monoio::spawn(send_cancel(CancelTarget { addr, pid, secret }));
                }
                None => log::warn!("cancel request for unknown instance {instance}"),
            }
            return;
        }
        let owner = ((pid >> CORE_SHIFT) & CORE_MASK) as usize;
        if owner != self.id {
            match self.peers.get(owner) {
                Some(peer) => {
                    let _ = peer.send(CoreMsg::Cancel { pid, secret });
                }
                None => log::warn!("cancel request for unknown core {owner}"),
            }
            return;
        }
        let target = match self.sessions.borrow().get(&pid) {
            Some(e) if e.secret == secret => e.card.cancel.get(),
            _ => None,
        };
        if let Some(t) = target {
            monoio::spawn(send_cancel(t));
        }
    }
}

/// A client in startup, counted by its core (see [`Core::starting`]).
pub struct Starting(Rc<Core>);

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.set(self.0.starting.get().saturating_sub(1));
    }
}

async fn send_cancel(t: CancelTarget) {
    let mut buf = BytesMut::new();
    encode::cancel_request(&mut buf, t.pid, t.secret);
    match TcpStream::connect_addr(t.addr).await {
        Ok(mut s) => {
            if let (Err(e), _) = s.write_all(buf).await {
                log::warn!("cancel request to {}: {e}", t.addr);
            }
        }
        Err(e) => log::warn!("cancel request to {}: {e}", t.addr),
    }
}
