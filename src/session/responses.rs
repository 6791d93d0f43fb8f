//! The backend half of the relay: backend frames out to the client, unchanged, in order,
//! with the slots of `statements` hiding or adding the few responses pgpilot accounts for;
//! the backend goes back to its pool as soon as it is idle.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use pgpilot_protocol::backend::{BackendMessage, BackendTag, TransactionStatus};
use pgpilot_protocol::encode;
use pgpilot_protocol::frame::{split_frame, FrameScan};
use pgpilot_protocol::{Header, ProtocolError};

use super::lost::server_going_away;
use super::statements::{put_fake, start_copy_in, Slot};
use super::{Attached, Seen, Session};
use crate::admin::DbStats;
use crate::backend::{Prepared, MAX_BACKEND_MESSAGE};
use crate::config::PoolMode;
use crate::error::Error;

/// Backend messages longer than this are passed on while they arrive, not buffered whole
/// (DataRow and CopyData only: the others are small, and some are read or rewritten).
const STREAM_FROM: usize = 64 * 1024;

/// The parts of an attached backend the slot queue moves.
struct SlotQueue<'a> {
    slots: &'a mut VecDeque<Slot>,
    prepared: &'a mut Prepared,
    skipping: &'a mut bool,
    /// Statements of the client's own Parse messages that failed or were skipped.
    failed: &'a mut Vec<u64>,
}

impl SlotQueue<'_> {
    /// Moves the queue along for one backend message (`None`: a tag pgpilot does not know);
    /// false when the client must not see it.
    fn follow(self, tag: Option<BackendTag>, pending: &mut u32, copy_in: &mut bool) -> bool {
        if tag == Some(BackendTag::CopyInResponse) {
            let (dropped, open) = start_copy_in(self.slots);
            *pending = pending.saturating_sub(dropped);
            *copy_in = open;
        }
        let Some(slot) = self.slots.front().copied() else {
            return true;
        };
        if tag == Some(BackendTag::ErrorResponse) && !slot.is_sync_point() {
            drop_until_sync(self.slots, self.prepared, self.skipping, self.failed);
            return true;
        }
        if tag.is_some_and(|tag| slot.ends_with(tag)) {
            self.slots.pop_front();
        }
        !matches!(
            slot,
            Slot::Parse { visible: false, .. } | Slot::Close { visible: false, .. }
        )
    }
}

/// Writes the made-up responses at the head of the queue into the batch `out`. While the batch
/// is still the read buffer's own bytes (`changed` false), `before` (what it holds so far) is
/// copied into `out` first.
fn put_due_fakes(
    slots: &mut VecDeque<Slot>,
    out: &mut BytesMut,
    changed: &mut bool,
    before: Option<&[u8]>,
) {
    while let Some(slot @ (Slot::Fake(_) | Slot::CopyEnd)) = slots.front().copied() {
        if let Slot::Fake(tag) = slot {
            if !*changed {
                out.put_slice(before.unwrap_or_default());
                *changed = true;
            }
            put_fake(out, tag);
        }
        slots.pop_front();
    }
}

/// After an error PostgreSQL skips to the next Sync: the responses the skipped messages would
/// have had never come, and statements they would have prepared do not exist; those the client
/// asked for itself go to `failed`, for the client's names of them to be forgotten too.
fn drop_until_sync(
    slots: &mut VecDeque<Slot>,
    prepared: &mut Prepared,
    skipping: &mut bool,
    failed: &mut Vec<u64>,
) {
    while let Some(slot) = slots.front().copied() {
        if slot.is_sync_point() {
            return;
        }
        match slot {
            Slot::Parse {
                hash: Some(h),
                visible,
            } => {
                prepared.remove(h);
                if visible {
                    failed.push(h);
                }
            }
            // The backend skipped the Close: it still has the statement.
            Slot::Close { hash, .. } => prepared.kept(hash),
            _ => {}
        }
        slots.pop_front();
    }
    *skipping = true;
}

impl<L> Attached<L> {
    /// Cuts the whole frames off the read buffer as the batch for the client, keeping track of
    /// ReadyForQuery and ParameterStatus, and (when `tracked`) following the slot queue: hidden
    /// ParseCompletes are dropped and made-up responses inserted. The batch is the read buffer's
    /// own bytes unless a frame had to be dropped or added.
    fn take_responses(
        &mut self,
        tracked: bool,
        view: &mut Rc<Vec<(String, String)>>,
        stats: &DbStats,
        client_pid: u32,
    ) -> Result<Bytes, ProtocolError> {
        use BackendTag as B;
        let mut out = BytesMut::new();
        let mut changed = false;
        let rbuf = &self.backend.rbuf;
        // The rest of a long row being streamed goes first, as it is. Positions below are
        // offsets into `rbuf`, so their sums stay within its length.
        let start = self.streaming.min(rbuf.len());
        self.streaming = self.streaming.saturating_sub(start);
        let mut consumed = start;
        let mut scan = FrameScan::new(rbuf.get(start..).unwrap_or_default(), MAX_BACKEND_MESSAGE);
        for f in &mut scan {
            let (at, frame) = (start.saturating_add(f.at), f.bytes);
            let tag = B::from_byte(f.tag());
            match tag {
                Some(B::ReadyForQuery) => {
                    self.pending = self.pending.saturating_sub(1);
                    let status = f
                        .body()
                        .first()
                        .copied()
                        .and_then(TransactionStatus::from_byte);
                    self.status = status.unwrap_or(TransactionStatus::Failed);
                    count_answer(
                        stats,
                        (&mut self.query_since, &mut self.xact_since),
                        self.pending,
                        self.status,
                    );
                    if self.pending == 0 && self.changes.is_some() {
                        self.changes_settled = Some(self.status);
                    }
                }
                Some(B::ErrorResponse) => {
                    self.changes_failed |= self.changes.is_some();
                    if let Ok(BackendMessage::ErrorResponse(f)) = BackendMessage::parse(frame) {
                        let severity = f.get(b'V').or_else(|| f.get(b'S'));
                        self.fatal |= matches!(severity, Some(b"FATAL" | b"PANIC"));
                        // What a standby answers a write with, on a connection meant for the
                        // primary that never said it is no standby.
                        self.backend.fenced |= f.code() == "25006"
                            && !self.on_replica
                            && !self.backend.params.proven_primary();
                    }
                }
                Some(B::ParameterStatus) => {
                    if let Ok(BackendMessage::ParameterStatus { name, value }) =
                        BackendMessage::parse(frame)
                    {
                        self.backend.params.set(name, value);
                        note_param(view, name, value);
                    }
                }
                Some(B::NotificationResponse) => {
                    if let Ok(BackendMessage::NotificationResponse {
                        pid,
                        channel,
                        payload,
                    }) = BackendMessage::parse(frame)
                    {
                        // A NOTIFY of the client's own: it carries the pid the client was given,
                        // as PostgreSQL's carries the client's own backend's.
                        if pid == self.backend.key.0 && pid != client_pid {
                            if !changed {
                                out.put_slice(rbuf.get(..at).unwrap_or_default());
                                changed = true;
                            }
                            encode::notification_response(&mut out, client_pid, channel, payload);
                            consumed = start.saturating_add(f.end());
                            continue;
                        }
                    }
                }
                _ => {}
            }
            let mut keep = true;
            let asynchronous = matches!(
                tag,
                Some(B::NoticeResponse | B::NotificationResponse | B::ParameterStatus)
            );
            if tracked && !asynchronous {
                put_due_fakes(&mut self.slots, &mut out, &mut changed, rbuf.get(..at));
                let q = SlotQueue {
                    slots: &mut self.slots,
                    prepared: &mut self.backend.prepared,
                    skipping: &mut self.skipping,
                    failed: &mut self.failed_parses,
                };
                keep = q.follow(tag, &mut self.pending, &mut self.copy_in);
            }
            if keep {
                if changed {
                    out.put_slice(frame);
                }
            } else if !changed {
                out.put_slice(rbuf.get(..at).unwrap_or_default());
                changed = true;
            }
            consumed = start.saturating_add(f.end());
        }
        if let Some(e) = scan.error() {
            return Err(e);
        }
        // A long DataRow or CopyData that is not all here yet is passed on as it arrives, so no
        // session ever holds a whole large row. Its header is all the tracking needs of it.
        let rest = rbuf.get(consumed..).unwrap_or_default();
        if let Ok(Some(h)) = Header::peek(rest, MAX_BACKEND_MESSAGE) {
            let streamable = matches!(B::from_byte(h.tag), Some(B::DataRow | B::CopyData))
                && h.frame_len() > STREAM_FROM;
            if streamable && tracked {
                // Made-up responses due before the row go out first, as the loop above
                // would send them before the whole row.
                put_due_fakes(
                    &mut self.slots,
                    &mut out,
                    &mut changed,
                    rbuf.get(..consumed),
                );
            }
            let plain_front = !matches!(
                self.slots.front(),
                Some(Slot::Fake(_) | Slot::CopyEnd | Slot::Close { visible: false, .. })
                    | Some(Slot::Parse { visible: false, .. })
            );
            if streamable && plain_front {
                // The scan stopped at this frame, so it is longer than what is here.
                self.streaming = h.frame_len().saturating_sub(rest.len());
                if changed {
                    out.put_slice(rest);
                }
                consumed = rbuf.len();
            }
        }
        let raw = self.backend.rbuf.split_to(consumed).freeze();
        Ok(if changed { out.freeze() } else { raw })
    }
}

impl<L> Session<L> {
    /// Swallows the responses to the parameter setup of a fresh attach.
    fn pump_hidden(&mut self) -> Result<bool, Error> {
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
                    self.backend_lost(io::Error::new(io::ErrorKind::InvalidData, e))?;
                    return Ok(false);
                }
            };
            match BackendMessage::parse(&frame.bytes) {
                Ok(BackendMessage::ReadyForQuery { .. }) => {
                    att.hidden = att.hidden.saturating_sub(1)
                }
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
    pub fn pump_backend(&mut self) -> Result<(), Error> {
        if !self.pump_hidden()? {
            return Ok(());
        }
        let tracked = true;
        let Some(att) = self.attached.as_mut() else {
            return Ok(());
        };
        let was_fenced = att.backend.fenced;
        let batch = match att.take_responses(tracked, &mut self.view, &self.stats, self.pid) {
            Ok(batch) => batch,
            Err(e) => return self.backend_lost(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        if att.backend.fenced && !was_fenced {
            self.core.fence(att.backend.id, self.pid);
        }
        // A statement whose Parse failed does not exist, under any of the client's names.
        for hash in att.failed_parses.drain(..) {
            self.statements.retain(|_, s| s.hash != hash);
        }
        self.settle_changes();
        // Before the backend is judged idle: its answers, swallowed, come after the batch's.
        self.send_after();
        let Some(att) = self.attached.as_mut() else {
            return Ok(());
        };
        if att.retry.is_some() && server_going_away(&batch) {
            // The server is shutting down or crashing (`pg_ctl stop -m immediate` sends this):
            // for a read that is as good as a lost connection, and the read goes elsewhere.
            return self.backend_lost(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server is shutting down",
            ));
        }
        if !batch.is_empty() {
            att.retry = None;
        }
        if att.fatal {
            return self.server_ended(batch);
        }
        let idle = att.is_idle() && att.backend.rbuf.is_empty();
        let settled = att.pending == 0 && att.hidden == 0;
        if settled
            && !att.on_replica
            && att.status == TransactionStatus::Idle
            && self.seen == Seen::Unacked
        {
            // Everything sent to the primary has been answered and committed, the writes
            // included.
            self.seen = Seen::Acked(std::time::Instant::now());
        }
        self.view_version = att.backend.params.version;
        log::trace!(
            "session={} <- backend {}: {:?} pending={} slots={:?} idle={idle}",
            self.pid,
            att.backend.key.0,
            super::tags(&batch),
            att.pending,
            att.slots
        );
        self.pass_on(batch);
        self.answer_fakes();
        if self.mode == PoolMode::Transaction && idle && !self.pinned {
            self.release();
        }
        if settled {
            self.unblock();
        }
        Ok(())
    }

    /// Sends the made-up responses at the head of the queue: nothing is owed before them.
    pub(super) fn answer_fakes(&mut self) {
        if let Some(att) = self.attached.as_mut() {
            // `out` is the proxy's own buffer: nothing to copy first.
            put_due_fakes(&mut att.slots, &mut self.out, &mut true, None);
        }
    }
}

/// Records a parameter the client has been told, copying a shared set only when it changes.
pub(super) fn note_param(view: &mut Rc<Vec<(String, String)>>, name: &str, value: &str) {
    if view.iter().any(|(n, v)| n == name && v == value) {
        return;
    }
    let view = Rc::make_mut(view);
    match view.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => value.clone_into(v),
        None => view.push((name.to_owned(), value.to_owned())),
    }
}

/// A ReadyForQuery came: one query answered (timed from `since.0`, the query's start), and a
/// transaction ended (timed from `since.1`) if the backend is idle again; `pending` answers
/// are still due.
fn count_answer(
    stats: &DbStats,
    since: (&mut Option<Instant>, &mut Option<Instant>),
    pending: u32,
    status: TransactionStatus,
) {
    let (query, xact) = since;
    let Some(began) = *query else {
        return;
    };
    let now = Instant::now();
    stats.query(now.saturating_duration_since(began));
    *query = (pending > 0).then_some(now);
    if status == TransactionStatus::Idle {
        if let Some(began) = xact.take() {
            stats.transaction(now.saturating_duration_since(began));
        }
    }
}
