//! A backend connection that failed: what the client is told, or the read sent elsewhere
//! without the client seeing anything.

use std::io;

use bytes::BytesMut;
use pgpilot_protocol::backend::{BackendMessage, BackendTag, TransactionStatus};
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::FrameScan;

use super::{Intake, Session};
use crate::config::PoolMode;
use crate::error::Error;

impl<L> Session<L> {
    /// The attached backend failed. In transaction mode the client is told (08006) and goes on;
    /// in session mode its session state is gone, so the session ends.
    pub fn backend_lost(&mut self, source: io::Error) -> Result<(), Error> {
        let Some(att) = self.attached.take() else {
            return Ok(());
        };
        self.card.cancel.set(None);
        self.unblock();
        let addr = att.backend.addr;
        if let Some(sent) = att.retry {
            // Nothing of the read's answer reached the client: it goes elsewhere, in front of
            // whatever the client sent after it.
            log::warn!(
                "session={} lost replica {addr} before it answered ({source}); sending the read elsewhere",
                self.pid
            );
            self.core.bench(att.backend.id);
            let mut again = BytesMut::with_capacity(sent.len().saturating_add(self.cbuf.len()));
            again.extend_from_slice(&sent);
            again.extend_from_slice(&self.cbuf);
            self.cbuf = again;
            self.retried = true;
            return Ok(());
        }
        log::warn!("session={} lost backend {addr}: {source}", self.pid);
        if att.streaming > 0 {
            // The client has part of a message: nothing more can be said on this connection.
            return Err(Error::Backend { addr, source });
        }
        if self.mode == PoolMode::Session || self.pinned {
            // Its session state (a SET ROLE, temporary tables, LISTEN) is gone with it: going
            // on as if it were not would be going on as someone else.
            self.queue_error(&ErrorFields::fatal(
                "08006",
                format!("lost the connection to the server {addr}"),
            ));
            return Err(Error::Backend { addr, source });
        }
        if att.pending > 0 || att.unsynced || att.status != TransactionStatus::Idle {
            let e = ErrorFields::error(
                "08006",
                format!("lost the connection to the server {addr}; the transaction is gone"),
            );
            // Every unit the backend still owed an answer gets the error: a bare ReadyForQuery
            // would tell the client that a pipelined write behind the first one succeeded.
            encode::error_response(&mut self.out, &e);
            for i in 0..att.pending {
                if i > 0 {
                    encode::error_response(&mut self.out, &e);
                }
                encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
            }
            if att.unsynced {
                self.intake = Intake::SkipToSync;
            }
        }
        Ok(())
    }

    /// The attached backend sent FATAL (in `batch`, with what came before it) and closes the
    /// connection. While it served the client, or held its session state, the client gets the
    /// server's error and its connection ends, as it would with PostgreSQL itself. Between
    /// transactions in transaction mode the client need not notice: the backend is dropped.
    pub(super) fn server_ended(&mut self, batch: bytes::Bytes) -> Result<(), Error> {
        let Some(att) = self.attached.as_ref() else {
            return Ok(());
        };
        let quiet = self.mode == PoolMode::Transaction
            && !self.pinned
            && att.pending == 0
            && !att.unsynced
            && att.status == TransactionStatus::Idle;
        if quiet {
            // What came before the FATAL (the answer to the client's last unit, when the FATAL
            // came in the same read) still goes to the client; the FATAL does not.
            let before = batch.slice(..fatal_at(&batch));
            self.pass_on(before);
            self.answer_fakes();
            return self.backend_lost(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server ended the connection between transactions",
            ));
        }
        let addr = att.backend.addr;
        self.pass_on(batch);
        self.attached = None;
        self.card.cancel.set(None);
        Err(Error::Backend {
            addr,
            source: io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server ended the connection (FATAL), and the client's with it",
            ),
        })
    }
}

/// Where the first FATAL (or PANIC) ErrorResponse of `batch` begins (its length if none).
pub(super) fn fatal_at(batch: &[u8]) -> usize {
    let mut scan = FrameScan::new(batch, u32::MAX);
    for f in &mut scan {
        if f.tag() != BackendTag::ErrorResponse as u8 {
            continue;
        }
        if let Ok(BackendMessage::ErrorResponse(e)) = BackendMessage::parse(f.bytes) {
            let severity = e.get(b'V').or_else(|| e.get(b'S'));
            if matches!(severity, Some(b"FATAL" | b"PANIC")) {
                return f.at;
            }
        }
    }
    batch.len()
}

/// Whether `batch` opens with the server's last word before it closes the connection: a
/// FATAL of class 57 (operator intervention: shutdown, crash, cannot connect now), or the
/// WARNING of class 57 a backend sends when an immediate shutdown or a crash of a sibling
/// makes it quit.
pub(super) fn server_going_away(batch: &[u8]) -> bool {
    // Asked for the first answer of every read sent to a replica: most open with a row
    // description, so only an error or a notice is parsed.
    let Some(first) = FrameScan::new(batch, u32::MAX).next() else {
        return false;
    };
    let tag = first.tag();
    if tag != BackendTag::ErrorResponse as u8 && tag != BackendTag::NoticeResponse as u8 {
        return false;
    }
    let (fields, quits) = match BackendMessage::parse(first.bytes) {
        Ok(BackendMessage::ErrorResponse(f)) => (f, b"FATAL".as_slice()),
        Ok(BackendMessage::NoticeResponse(f)) => (f, b"WARNING".as_slice()),
        _ => return false,
    };
    let severity = fields.get(b'V').or_else(|| fields.get(b'S'));
    severity == Some(quits) && fields.code().starts_with("57")
}
