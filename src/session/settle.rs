//! What a unit that changed session settings leaves behind, once it has ended: the client's
//! tracked set (or a pin), and the proxy's own work queued behind it on the backend (the
//! startup values a RESET lost, the Close of a statement the client deallocated).

use bytes::BytesMut;
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::SettingChange;
use pgpilot_protocol::encode;

use super::params::{self, Gucs};
use super::Session;
use crate::config::PoolMode;

/// Most session-level SETs a client's set may hold before the client is pinned instead.
const MAX_OVERRIDES: usize = 256;

impl<L> Session<L> {
    /// Once the unit that carried session-level SETs has ended: kept if it ended cleanly in
    /// autocommit (and the backend now has exactly the new set), nothing if it failed, and the
    /// client is pinned if it left a transaction block open (the SETs may still roll back).
    pub(super) fn settle_changes(&mut self) {
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        let Some(status) = att.changes_settled.take() else {
            return;
        };
        let changes = att.changes.take().unwrap_or_default();
        if std::mem::take(&mut att.changes_failed) {
            return;
        }
        // Left open in a transaction block the SETs may still roll back; and a client that
        // keeps setting new parameters would make the set replayed on every attach grow
        // without bound. Either way the client stays on this backend instead.
        let new_names = changes
            .iter()
            .filter(|c| matches!(c, SettingChange::Set { name, .. } if !self.overrides.iter().any(|(n, _)| n == name)))
            .count();
        if status != TransactionStatus::Idle
            || self.overrides.len().saturating_add(new_names) > MAX_OVERRIDES
        {
            if !self.pinned {
                self.pinned = true;
                self.core.note_pin();
                self.card.pin(if status != TransactionStatus::Idle {
                    "SET left in an open transaction block"
                } else {
                    "more session-level SETs than pgpilot replays"
                });
            }
            return;
        }
        // A RESET on this backend goes back to *its* startup values, not the client's: the
        // backend no longer matches and is set up again at its next attach. A backend the
        // client keeps (session mode, pinned) gets the client's startup values back at once.
        let resets = changes
            .iter()
            .any(|c| !matches!(c, SettingChange::Set { .. }));
        if resets && (self.mode == PoolMode::Session || self.pinned) {
            let sql = params::set_sql(self.startup.reset_to_startup(&changes).iter());
            if !sql.is_empty() {
                let mut q = BytesMut::new();
                encode::query(&mut q, sql.as_bytes());
                att.after.push((q.freeze(), true));
            }
        }
        for change in changes {
            match change {
                SettingChange::Set { name, value } => {
                    self.overrides.retain(|(n, _)| *n != name);
                    self.overrides.push((name, value));
                }
                SettingChange::Reset { name } => self.overrides.retain(|(n, _)| *n != name),
                SettingChange::ResetAll => self.overrides.clear(),
            }
        }
        self.gucs = std::rc::Rc::new(Gucs::overlay(&self.startup, &self.overrides));
        self.note_gucs();
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        att.backend.applied = if resets { u64::MAX } else { self.gucs.hash };
    }

    /// Sends the proxy's own pending work once the backend owes nothing before it: its
    /// answers are then the next to come, and swallowed as a setup's are.
    pub(super) fn send_after(&mut self) {
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        if att.pending > 0 || att.hidden > 0 || att.unsynced || !att.outbox.is_empty() {
            return;
        }
        for (work, restores) in att.after.drain(..) {
            att.hidden = att.hidden.saturating_add(1);
            att.outbox.push(work);
            if restores {
                // What the backend has once it ran: the startup set and the session's SETs.
                att.backend.applied = self.gucs.hash;
            }
        }
    }
}
