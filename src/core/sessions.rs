//! A core's registry of sessions: their BackendKeyData (pid and secret), the count of clients
//! still in startup, and CancelRequests, cancelled here or sent on to the core or instance
//! (`[peers]`) that owns the session.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use pgpilot_protocol::encode;

use super::{CancelTarget, Core, SessionEntry};
use crate::admin::ClientCard;
use crate::control::CoreMsg;

/// BackendKeyData. The secret says where the session lives: bits 25..30 the instance
/// (`[peers] id`, 0 without peers), 18..25 the core; its other 20 bits are random. The pid is
/// the session's own: in session mode the real pid of the primary backend that serves it (so
/// that `pg_terminate_backend`, `pg_stat_activity` and NOTIFY agree with what the client was
/// told), otherwise a number from [`FAKE_PIDS`] up, which no process id can be (Linux's
/// `pid_max` is at most 2^22), so that the client's pid never names someone else's backend;
/// bits 23..30 of a made-up pid are the core, so that no two cores make the same one.
const INSTANCE_SHIFT: u32 = 25;
const CORE_SHIFT: u32 = 18;
const CORE_MASK: u32 = 0x7f;
const INSTANCE_MASK: u32 = 0x1f;
const ROUTE_MASK: u32 = (INSTANCE_MASK << INSTANCE_SHIFT) | (CORE_MASK << CORE_SHIFT);
/// Where made-up pids start; they stay below 2^31, so that the pid is positive. This one is
/// never a session's: the listener's key for its shutdown waker.
pub const FAKE_PIDS: u32 = 1 << 30;
const FAKE_CORE_SHIFT: u32 = 23;
const FAKE_SESSION_MASK: u32 = (1 << FAKE_CORE_SHIFT) - 1;
/// The most worker cores a key can tell apart.
pub const MAX_WORKERS: usize = CORE_MASK as usize + 1;

impl Core {
    /// Registers a session (for cancellation and the console); returns its BackendKeyData
    /// `(pid, secret)` with a made-up pid.
    pub fn register_session(&self, card: Rc<ClientCard>) -> (u32, u32) {
        let random = u32::from_ne_bytes(pgpilot_protocol::scram::random_bytes::<4>());
        let secret = (random & !ROUTE_MASK) | self.route_bits();
        let mut sessions = self.sessions.borrow_mut();
        loop {
            let n = self.next_session.get().wrapping_add(1) & FAKE_SESSION_MASK;
            self.next_session.set(n);
            let pid = FAKE_PIDS | ((self.id as u32 & CORE_MASK) << FAKE_CORE_SHIFT) | n;
            if n != 0 && !sessions.contains_key(&pid) {
                sessions.insert(pid, SessionEntry { secret, card });
                return (pid, secret);
            }
        }
    }

    /// Moves a session to the pid of the backend that serves it (session mode); `false`,
    /// and nothing changes, when another session of this core has that pid already (a
    /// backend of an earlier primary, after a failover).
    pub fn adopt_pid(&self, pid: u32, real: u32) -> bool {
        let mut sessions = self.sessions.borrow_mut();
        if real == 0 || real >= FAKE_PIDS || sessions.contains_key(&real) {
            return false;
        }
        let Some(entry) = sessions.remove(&pid) else {
            return false;
        };
        sessions.insert(real, entry);
        drop(sessions);
        let mut wakers = self.shutdown_wakers.borrow_mut();
        if let Some(w) = wakers.remove(&pid) {
            wakers.insert(real, w);
        }
        true
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

    /// The bits of this core's secrets that name the instance and the core.
    fn route_bits(&self) -> u32 {
        let instance = (self.instance as u32 & INSTANCE_MASK) << INSTANCE_SHIFT;
        instance | ((self.id as u32 & CORE_MASK) << CORE_SHIFT)
    }

    /// Handles a CancelRequest that arrived on this core: cancels here, or forwards it to the
    /// core or the instance (`[peers]`) that owns the session, as its secret says.
    pub fn cancel(&self, pid: u32, secret: u32) {
        let instance = ((secret >> INSTANCE_SHIFT) & INSTANCE_MASK) as usize;
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
        let owner = ((secret >> CORE_SHIFT) & CORE_MASK) as usize;
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

/// How long a cancel may take to reach its backend or peer instance: one to an address that
/// does not answer would otherwise hold its socket for the kernel's SYN retries (about two
/// minutes), and CancelRequests come from anyone who can connect.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

async fn send_cancel(t: CancelTarget) {
    let mut buf = BytesMut::new();
    encode::cancel_request(&mut buf, t.pid, t.secret);
    let send = async {
        let mut s = TcpStream::connect_addr(t.addr).await?;
        s.write_all(buf).await.0.map(drop)
    };
    match monoio::time::timeout(CANCEL_TIMEOUT, send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("cancel request to {}: {e}", t.addr),
        Err(_) => log::warn!(
            "cancel request to {}: not sent within {CANCEL_TIMEOUT:?}",
            t.addr
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpStream as StdStream};
    use std::time::Instant;

    use socket2::{Domain, Socket, Type};

    use super::*;

    /// A listener that never accepts, its queue full, drops every further SYN: a cancel sent
    /// there gives up after CANCEL_TIMEOUT instead of the kernel's two minutes of retries.
    #[test]
    fn a_cancel_to_an_address_that_does_not_answer_gives_up() {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        listener.bind(&any.into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // Connect until one does not complete: the accept queue is full from then on.
        let mut held = Vec::new();
        let full =
            (0..16).any(
                |_| match StdStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Ok(s) => {
                        held.push(s);
                        false
                    }
                    Err(_) => true,
                },
            );
        assert!(full, "the listener's queue never filled");
        let started = Instant::now();
        crate::worker::block_on(send_cancel(CancelTarget {
            addr,
            pid: 1,
            secret: 2,
        }));
        let took = started.elapsed();
        assert!(
            took >= CANCEL_TIMEOUT - Duration::from_millis(100),
            "the cancel did not wait for an answer ({took:?}): the address was not silent"
        );
        assert!(
            took < CANCEL_TIMEOUT + Duration::from_secs(3),
            "the cancel took {took:?}"
        );
    }
}
