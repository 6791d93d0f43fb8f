//! The backend half of the relay: backend frames out to the client, unchanged, in order,
//! with the slots of `statements` hiding or adding the few responses pgpilot accounts for;
//! the backend goes back to its pool as soon as it is idle.

use std::collections::{HashSet, VecDeque};
use std::io;

use bytes::{BufMut, BytesMut};
use futures_lite::AsyncWriteExt;
use pgpilot_protocol::backend::{BackendMessage, TransactionStatus};
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::{split_frame, FrameScan};

use super::statements::{put_fake, start_copy_in, Slot};
use super::Session;
use crate::backend::MAX_BACKEND_MESSAGE;
use crate::config::PoolMode;
use crate::error::Error;

/// After an error PostgreSQL skips to the next Sync: the responses the skipped messages would
/// have had never come, and statements they would have prepared do not exist.
fn drop_until_sync(slots: &mut VecDeque<Slot>, prepared: &mut HashSet<u64>, skipping: &mut bool) {
    while let Some(slot) = slots.front().copied() {
        if slot.is_sync_point() {
            return;
        }
        if let Slot::Parse { hash: Some(h), .. } = slot {
            prepared.remove(&h);
        }
        slots.pop_front();
    }
    *skipping = true;
}

impl Session {
    /// Swallows the responses to the parameter setup of a fresh attach.
    async fn pump_hidden(&mut self) -> Result<bool, Error> {
        let Some(att) = self.attached.as_mut() else {
            return Ok(false);
        };
        if att.hidden == 0 {
            return Ok(true);
        }
        while att.hidden > 0 {
            let frame = match split_frame(&mut att.backend.rbuf, MAX_BACKEND_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(false),
                Err(e) => {
                    self.backend_lost(io::Error::new(io::ErrorKind::InvalidData, e))
                        .await?;
                    return Ok(false);
                }
            };
            match BackendMessage::parse(&frame.bytes) {
                Ok(BackendMessage::ReadyForQuery { .. }) => att.hidden -= 1,
                Ok(BackendMessage::ParameterStatus { name, value }) => {
                    att.backend.params.set(name, value)
                }
                Ok(BackendMessage::ErrorResponse(f)) => {
                    log::warn!(
                        "session={} parameter setup failed on {}: {}",
                        self.pid,
                        att.backend.addr,
                        f.message()
                    );
                    att.backend.applied = u64::MAX;
                }
                _ => {}
            }
        }
        self.sync_view();
        Ok(true)
    }

    /// Forwards every whole backend frame to the client; gives the backend back when idle.
    pub(super) async fn pump_backend(&mut self) -> Result<(), Error> {
        if !self.pump_hidden().await? {
            return Ok(());
        }
        let tracked = self.mode == PoolMode::Transaction;
        let Some(att) = self.attached.as_mut() else {
            return Ok(());
        };
        let mut out = BytesMut::new();
        let mut changed = false;
        let mut consumed = 0;
        let rbuf = &att.backend.rbuf;
        let mut scan = FrameScan::new(rbuf, MAX_BACKEND_MESSAGE);
        for (at, h) in &mut scan {
            let frame = &rbuf[at..at + h.frame_len()];
            match h.tag {
                b'Z' => {
                    att.pending = att.pending.saturating_sub(1);
                    att.status = frame
                        .get(5)
                        .copied()
                        .and_then(TransactionStatus::from_byte)
                        .unwrap_or(TransactionStatus::Failed);
                }
                b'S' => {
                    if let Ok(BackendMessage::ParameterStatus { name, value }) =
                        BackendMessage::parse(frame)
                    {
                        att.backend.params.set(name, value);
                        note_param(&mut self.view, name, value);
                        self.view_version = att.backend.params.version;
                    }
                }
                _ => {}
            }
            let mut keep = true;
            if tracked && !matches!(h.tag, b'N' | b'A' | b'S') {
                while let Some(slot @ (Slot::Fake(_) | Slot::CopyEnd)) = att.slots.front().copied()
                {
                    if let Slot::Fake(tag) = slot {
                        if !changed {
                            out.put_slice(&rbuf[..at]);
                            changed = true;
                        }
                        put_fake(&mut out, tag);
                    }
                    att.slots.pop_front();
                }
                if h.tag == b'G' {
                    let (dropped, open) = start_copy_in(&mut att.slots);
                    att.pending = att.pending.saturating_sub(dropped);
                    att.copy_in = open;
                }
                if let Some(slot) = att.slots.front().copied() {
                    if h.tag == b'E' && !slot.is_sync_point() {
                        drop_until_sync(
                            &mut att.slots,
                            &mut att.backend.prepared,
                            &mut att.skipping,
                        );
                    } else {
                        keep = !matches!(slot, Slot::Parse { visible: false, .. });
                        if slot.ends_with(h.tag) {
                            att.slots.pop_front();
                        }
                    }
                }
            }
            if keep {
                if changed {
                    out.put_slice(frame);
                }
            } else if !changed {
                out.put_slice(&rbuf[..at]);
                changed = true;
            }
            consumed = at + h.frame_len();
        }
        if let Some(e) = scan.error() {
            return self
                .backend_lost(io::Error::new(io::ErrorKind::InvalidData, e))
                .await;
        }
        let raw = att.backend.rbuf.split_to(consumed).freeze();
        let batch = if changed { out.freeze() } else { raw };
        let idle = att.is_idle() && att.backend.rbuf.is_empty();
        log::trace!(
            "session={} <- backend {}: {:?} pending={} slots={:?} idle={idle}",
            self.pid,
            att.backend.key.0,
            FrameScan::new(&batch, u32::MAX)
                .map(|(_, h)| h.tag as char)
                .collect::<String>(),
            att.pending,
            att.slots
        );
        let settled = att.pending == 0 && att.hidden == 0;
        self.flush_out().await?;
        if !batch.is_empty() {
            self.client
                .write_all(&batch)
                .await
                .map_err(Error::ClientIo)?;
        }
        self.answer_fakes().await?;
        if self.mode == PoolMode::Transaction && idle {
            self.release();
        }
        if settled {
            self.blocked = false;
        }
        Ok(())
    }

    /// Sends the made-up responses at the head of the queue: nothing is owed before them.
    pub(super) async fn answer_fakes(&mut self) -> Result<(), Error> {
        if let Some(att) = self.attached.as_mut() {
            while let Some(slot @ (Slot::Fake(_) | Slot::CopyEnd)) = att.slots.front().copied() {
                if let Slot::Fake(tag) = slot {
                    put_fake(&mut self.out, tag);
                }
                att.slots.pop_front();
            }
        }
        self.flush_out().await
    }

    /// The attached backend failed. In transaction mode the client is told (08006) and goes on;
    /// in session mode its session state is gone, so the session ends.
    pub(super) async fn backend_lost(&mut self, source: io::Error) -> Result<(), Error> {
        let Some(att) = self.attached.take() else {
            return Ok(());
        };
        self.cancel.set(None);
        self.blocked = false;
        let addr = att.backend.addr;
        log::warn!("session={} lost backend {addr}: {source}", self.pid);
        if self.mode == PoolMode::Session {
            self.send_error(&ErrorFields::fatal(
                "08006",
                format!("lost the connection to the server {addr}"),
            ))
            .await;
            return Err(Error::Backend { addr, source });
        }
        if att.pending > 0 || att.unsynced || att.status != TransactionStatus::Idle {
            let e = ErrorFields::error(
                "08006",
                format!("lost the connection to the server {addr}; the transaction is gone"),
            );
            encode::error_response(&mut self.out, &e);
            for _ in 0..att.pending {
                encode::ready_for_query(&mut self.out, TransactionStatus::Idle);
            }
            self.skip_until_sync = att.unsynced;
            self.flush_out().await?;
        }
        Ok(())
    }
}

fn note_param(view: &mut Vec<(String, String)>, name: &str, value: &str) {
    match view.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => value.clone_into(v),
        None => view.push((name.to_owned(), value.to_owned())),
    }
}
