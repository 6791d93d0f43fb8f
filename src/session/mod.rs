#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
//! One client connection from accept to close.
//!
//! `handshake` decides startup and authentication without I/O and `startup` runs it over the
//! socket; `login` sends the first ParameterStatus set; `relay` moves frames both ways,
//! cutting client input into `unit`s that are routed (or answered by the proxy in `local`),
//! rewritten for named statements by `statements`, queued for the backend in `outbox`, and
//! whose responses `responses` forwards (long rows streamed); `attach` picks and prepares
//! backends; `params` turns client parameters into set_config calls.

mod attach;
pub mod handshake;
mod local;
mod login;
mod outbox;
mod params;
mod relay;
mod responses;
mod startup;
mod statements;
mod unit;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::{SettingChange, Target};
use pgpilot_protocol::encode::{self, ErrorFields};

use crate::backend::Backend;
use crate::config::PoolMode;
use crate::core::{CancelTarget, Core};
use crate::error::Error;
use crate::pool::Pool;

pub use params::Gucs;

/// How long a session that panicked may take to tell its client so.
const PANIC_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
use statements::{Slot, Stmt};

/// A backend serving this session right now, and where its protocol state stands.
struct Attached {
    backend: Backend,
    pool: Rc<Pool>,
    /// Whether the backend is a replica (only reads may be sent to it).
    on_replica: bool,
    /// ReadyForQuery messages the client still expects from this backend.
    pending: u32,
    /// ReadyForQuery messages of proxy-made queries (parameter setup) still to swallow.
    hidden: u32,
    /// Extended-protocol messages were sent after the last Sync.
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    status: TransactionStatus,
    /// Responses the client expects, in order (transaction mode; see `statements`).
    slots: VecDeque<Slot>,
    /// The backend skips messages until Sync after an error.
    skipping: bool,
    /// The backend is in copy-in mode and the client has not ended the COPY yet.
    copy_in: bool,
    /// Session-level SETs sent in autocommit, kept once their unit ends without error.
    changes: Option<Vec<SettingChange>>,
    /// An ErrorResponse arrived while `changes` were in flight.
    changes_failed: bool,
    /// The transaction status when the unit carrying `changes` ended.
    changes_settled: Option<TransactionStatus>,
    /// Client frames not yet written to the backend.
    outbox: outbox::Outbox,
    /// Bytes of a long backend message still to pass through unparsed (see `responses`).
    streaming: usize,
}

impl Attached {
    /// Nothing outstanding, not in a transaction: the backend may serve someone else.
    fn is_idle(&self) -> bool {
        self.pending == 0
            && self.hidden == 0
            && self.outbox.is_empty()
            && self.streaming == 0
            && !self.unsynced
            && !self.copy_in
            && self.status == TransactionStatus::Idle
    }
}

/// One client session.
pub struct Session {
    core: Rc<Core>,
    /// BackendKeyData pid handed to the client; also the session id in logs.
    pid: u32,
    client: TcpStream,
    /// Bytes from the client not yet forwarded.
    cbuf: BytesMut,
    /// Messages the proxy itself sends the client, flushed before forwarded ones.
    out: BytesMut,
    mode: PoolMode,
    max_message: u32,
    user: Rc<str>,
    database: Rc<str>,
    /// Run-time parameters from the startup packet.
    startup: Rc<Gucs>,
    /// The session's own SETs since then, by parameter name.
    overrides: Vec<(String, String)>,
    /// `startup` with `overrides` laid over it: what every backend serving the client gets.
    gucs: Rc<Gucs>,
    /// Boxed, like `parked`: an idle session should not carry a backend's worth of room.
    attached: Option<Box<Attached>>,
    /// A plain BEGIN answered by the proxy, sent with the block's first statement.
    held_begin: Option<Bytes>,
    /// Session mode: the other backend the client holds (primary or replica), idle.
    parked: Option<Box<Attached>>,
    /// The client's named prepared statements, with the route decided at their Parse.
    statements: HashMap<Bytes, Stmt>,
    /// Route of the unnamed statement.
    unnamed: Target,
    /// A `[[routing.rules]]` entry sends all of this session's statements here.
    rule: Option<Target>,
    /// State that cannot move (LISTEN, temp tables, …) holds the client on its backend.
    pinned: bool,
    /// `default_transaction_read_only` is on for this session: a plain BEGIN opens a read-only
    /// block, which a replica may run.
    read_only_default: bool,
    /// When the session last sent a write (or worked in a transaction) on the primary.
    last_write: Option<std::time::Instant>,
    /// Client frames wait until the backend is idle (a write after reads on a replica).
    blocked: bool,
    /// An extended-protocol unit failed before reaching a backend: drop frames up to Sync.
    skip_until_sync: bool,
    /// ParameterStatus values the client has been told.
    view: Rc<Vec<(String, String)>>,
    /// `params_version` of the backend `view` was last synced from.
    view_version: u64,
    /// The backend query to cancel on CancelRequest.
    cancel: Rc<Cell<Option<CancelTarget>>>,
    /// Released last, when the session is dropped (also by a panic unwinding it).
    _admission: Admission,
}

/// What a client holds in its core from admission on: its place in `max_client_connections`
/// and, once it has a BackendKeyData, its cancel registry entry. Dropping it gives both back,
/// however the session ends; a panic included.
struct Admission {
    core: Rc<Core>,
    pid: Option<u32>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            self.core.unregister_session(pid);
        }
        self.core.release_client();
    }
}

/// The message tags in a buffer of whole frames, for trace logs.
fn tags(buf: &[u8]) -> String {
    pgpilot_protocol::frame::FrameScan::new(buf, u32::MAX)
        .map(|f| f.tag() as char)
        .collect()
}

/// Serves one accepted client until it leaves.
///
/// Not an `async fn`: its arguments would stay in the task's future for the session's whole
/// life. They move into the boxed startup at once, which is freed once the session runs.
///
/// A panic inside the session ends this session alone: it is caught here and logged, and
/// dropping the session closes its backends (never pooled: their state is unknown) and gives
/// back its client slot, cancel entry and pool permits.
pub fn run(core: Rc<Core>, client: TcpStream) -> impl std::future::Future<Output = ()> {
    let _ = client.set_nodelay(true);
    let startup = Box::pin(contain(
        || "client startup".to_owned(),
        startup::start(core, client),
    ));
    async move {
        let Some(Some(session)) = startup.await else {
            return;
        };
        // On the heap, and the ending boxed too: while the session idles, the task's own
        // future holds little more than the relay's wait.
        let mut session = Box::new(session);
        let pid = session.pid;
        let served = contain(|| format!("session={pid}"), async {
            let result = session.relay().await;
            Box::pin(session.end(result)).await;
        })
        .await;
        if served.is_none() {
            Box::pin(session.tell_internal_error()).await;
        }
    }
}

/// Runs `work`; a panic that escapes it is caught and logged, and `None` returned. Whatever
/// `work` owned has been dropped by then (its drop guards have run).
async fn contain<T>(
    who: impl Fn() -> String,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(done) => Some(done),
        Err(panic) => {
            log::error!(
                "{} panicked: {}; it alone ends, its backends are closed, not pooled",
                who(),
                panic_message(&*panic)
            );
            None
        }
    }
}

/// The text a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

impl Session {
    /// Logs how the session ended, tells the client about a protocol violation, and lets go.
    async fn end(&mut self, result: Result<(), Error>) {
        match &result {
            Ok(()) | Err(Error::ClientIo(_)) => log::debug!("session={} closed", self.pid),
            Err(e) => log::info!("session={} ended: {e}", self.pid),
        }
        if let Err(Error::Client(e)) = &result {
            if !self.mid_message() {
                self.send_error(&ErrorFields::fatal("08P01", e.to_string()))
                    .await;
            }
        }
        self.finish().await;
    }

    /// The client has part of a streamed backend message: nothing else may be written to it.
    fn mid_message(&self) -> bool {
        self.attached.as_ref().is_some_and(|a| a.streaming > 0)
    }

    /// Returns a backend the session is done with: reset and pooled if it is clean, closed
    /// otherwise. Session mode resets with `reset_query`; a pinned transaction-mode client leaves
    /// temp tables, LISTEN or locks behind, which DISCARD ALL removes.
    async fn give_back(&self, att: Box<Attached>) {
        let mut att = *att;
        if !att.is_idle() || !att.backend.rbuf.is_empty() {
            return;
        }
        let reset = match self.mode {
            PoolMode::Session => self.core.config.pool.reset_query.as_str(),
            PoolMode::Transaction if self.pinned => "DISCARD ALL",
            PoolMode::Transaction => "",
        };
        if reset.is_empty() {
            att.pool.checkin(att.backend);
        } else if attach::run_hidden_query(&mut att.backend, reset)
            .await
            .is_ok()
        {
            att.backend.applied = u64::MAX;
            let upper = reset.to_ascii_uppercase();
            if upper.contains("DISCARD ALL") || upper.contains("DEALLOCATE ALL") {
                att.backend.prepared.clear();
            }
            att.pool.checkin(att.backend);
        }
    }

    /// Recomputes what follows from the session's parameters.
    fn note_gucs(&mut self) {
        self.read_only_default = self.gucs.list.iter().any(|(n, v)| {
            n == "default_transaction_read_only"
                && matches!(
                    v.to_ascii_lowercase().as_str(),
                    "on" | "true" | "yes" | "1" | "t" | "y"
                )
        });
    }

    /// Sends one ErrorResponse now, ignoring write errors (the session is ending or recovering).
    async fn send_error(&mut self, e: &ErrorFields) {
        encode::error_response(&mut self.out, e);
        let _ = self.flush_out().await;
    }

    /// Writes the proxy's own pending messages to the client.
    async fn flush_out(&mut self) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let res = self.client.write_all(&self.out).await;
        self.out = BytesMut::new();
        res.map_err(Error::ClientIo)
    }

    /// Gives the backend back (clean) or drops it (anything else), then forgets the session.
    async fn finish(&mut self) {
        self.cancel.set(None);
        for att in [self.attached.take(), self.parked.take()]
            .into_iter()
            .flatten()
        {
            self.give_back(att).await;
        }
        let _ = self.client.close().await;
    }

    /// After a panic: tells the client as PostgreSQL tells it of an internal error, without
    /// waiting long for a client that does not read. The backends are dropped with the session.
    async fn tell_internal_error(&mut self) {
        self.out.clear();
        if self.mid_message() {
            let _ = self.client.close().await;
            return;
        }
        encode::error_response(
            &mut self.out,
            &ErrorFields::fatal("XX000", "internal error in pgpilot; the session is closed"),
        );
        let out = std::mem::take(&mut self.out);
        let _ = glommio::timer::timeout(PANIC_WRITE_TIMEOUT, async {
            let _ = self.client.write_all(&out).await;
            Ok(())
        })
        .await;
        let _ = self.client.close().await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use pgpilot_protocol::frontend::FrontendTag;

    use super::contain;

    /// Sets its flag when dropped, as the session's drop guards release what they hold.
    struct Guard(Rc<Cell<bool>>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    #[test]
    fn a_panicking_session_ends_alone_and_releases_what_it_held() {
        let ex = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("an executor");
        ex.run(async {
            let released = Rc::new(Cell::new(false));
            let guard = Guard(released.clone());
            let bad = glommio::spawn_local(contain(|| "session=1".to_owned(), async move {
                let _held = guard;
                glommio::yield_if_needed().await;
                let frame: &[u8] = &[FrontendTag::Query as u8, 0, 0, 0, 4];
                // What the old relay did to an empty Query: slice past the end.
                frame.get(5..frame.len() - 1).expect("a body");
                1
            }));
            let good = glommio::spawn_local(contain(|| "session=2".to_owned(), async { 2 }));
            assert_eq!(bad.await, None, "the panic is caught");
            assert!(released.get(), "the panicking session's guards ran");
            assert_eq!(good.await, Some(2), "the other session is served");
            // The executor is still alive and serves new work.
            let after = glommio::spawn_local(async { 3 }).await;
            assert_eq!(after, 3);
        });
    }
}
