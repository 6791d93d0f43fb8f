//! Named prepared statements in transaction pooling. A client's statements are remembered
//! (name → query, as `Bytes`) and prepared lazily, under a name derived from the query text,
//! on whichever backend runs them; backends share one statement between clients with the same
//! text. Rewriting a unit records, in order, what responses the client expects (`Slot`s), so
//! that ParseComplete messages the client did not ask for are hidden and the ones it asked for
//! but the backend will not send (statement already there, Close) are made up in place.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::{BufMut, Bytes, BytesMut};
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::frame::FrameScan;

use crate::backend::{client_parsed, Has, Prepared};
use pgpilot_protocol::backend::BackendTag;
use pgpilot_protocol::frontend::{describe_target, statement_of, FrontendTag, KIND_STATEMENT};

/// A client's named statement.
pub(super) struct Stmt {
    /// Identifies the query text and parameter types; names the statement on backends.
    pub hash: u64,
    /// The Parse body after the statement name: query, NUL, parameter types.
    pub body: Bytes,
    /// Where its executions may run, decided at Parse.
    pub target: Target,
}

impl Stmt {
    /// Builds the record of a Parse body whose statement name is `name_len` bytes long;
    /// `hash` is its [`Stmt::hash_of`].
    pub fn from_parse(body: &[u8], name_len: usize, target: Target, hash: u64) -> Stmt {
        Stmt {
            hash,
            body: Bytes::copy_from_slice(after_name(body, name_len)),
            target,
        }
    }

    /// What identifies a Parse body's statement: its text and parameter types, and `scope`
    /// (the client's startup-parameter hash), which keeps clients whose settings could change
    /// the meaning of the same text (search_path) from sharing a backend statement.
    pub fn hash_of(body: &[u8], name_len: usize, scope: u64) -> u64 {
        let mut h = DefaultHasher::new();
        scope.hash(&mut h);
        after_name(body, name_len).hash(&mut h);
        h.finish()
    }
}

/// A Parse body past its statement name's NUL: query, NUL, parameter types. `name_len` is
/// under `body.len()`, so the sum cannot saturate.
fn after_name(body: &[u8], name_len: usize) -> &[u8] {
    body.get(name_len.saturating_add(1)..).unwrap_or_default()
}

/// What the client expects in response to one message sent on its behalf, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// A Parse: `visible` false when the proxy added it, so its ParseComplete is hidden.
    /// `hash` is the shared statement it creates (None for the unnamed statement).
    Parse { hash: Option<u64>, visible: bool },
    /// Another client message whose responses pass through; `ends_with` says where they end.
    Pass(FrontendTag),
    /// A response the proxy makes up (ParseComplete, CloseComplete) when its turn comes.
    Fake(BackendTag),
    /// A Close of the shared statement `hash`: the client's own (`visible`), or one the proxy
    /// sent to evict a statement or replace a stale one, whose CloseComplete is hidden.
    Close { hash: u64, visible: bool },
    /// The client ended a COPY (CopyDone / CopyFail): no response of its own, but it marks
    /// where copy-in mode, in which PostgreSQL ignores Sync and Flush, ended.
    CopyEnd,
}

impl Slot {
    /// Whether `tag` is the backend message that completes this slot.
    pub fn ends_with(self, tag: BackendTag) -> bool {
        use BackendTag as B;
        match self {
            Slot::Parse { .. } => tag == B::ParseComplete,
            Slot::Pass(FrontendTag::Bind) => tag == B::BindComplete,
            Slot::Pass(FrontendTag::Describe) => matches!(tag, B::RowDescription | B::NoData),
            Slot::Pass(FrontendTag::Execute) => matches!(
                tag,
                B::CommandComplete | B::EmptyQueryResponse | B::PortalSuspended
            ),
            Slot::Pass(FrontendTag::Close) | Slot::Close { .. } => tag == B::CloseComplete,
            Slot::Pass(_) => tag == B::ReadyForQuery,
            Slot::Fake(_) | Slot::CopyEnd => false,
        }
    }

    /// A Sync, Query or FunctionCall: where PostgreSQL resumes after an error.
    pub fn is_sync_point(self) -> bool {
        use FrontendTag as F;
        matches!(self, Slot::Pass(F::Sync | F::Query | F::FunctionCall))
    }
}

/// Lower-case hexadecimal digits, for statement names.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The backend's name for a shared statement: `pgpilot_` and the hash in hex.
fn backend_name(hash: u64) -> [u8; 24] {
    let mut name = *b"pgpilot_0000000000000000";
    let mut rest = hash;
    for b in name.iter_mut().skip(8) {
        // Highest nibble first.
        rest = rest.rotate_left(4);
        if let Some(&digit) = HEX_DIGITS.get((rest & 0xf) as usize) {
            *b = digit;
        }
    }
    name
}

/// Per-backend and per-unit state the rewriting touches.
pub(super) struct Rewrite<'a> {
    /// Statements this backend has prepared.
    pub prepared: &'a mut Prepared,
    /// Most statements a backend keeps (`routing.max_prepared_statements`).
    pub cap: usize,
    /// Expected responses, oldest first.
    pub slots: &'a mut VecDeque<Slot>,
    /// The backend is skipping messages until Sync after an error.
    pub skipping: &'a mut bool,
    /// The backend is in copy-in mode: it ignores Sync and Flush until CopyDone / CopyFail.
    pub copy_in: &'a mut bool,
    /// Syncs of this unit that the backend will ignore (sent during copy-in).
    pub ignored_syncs: u32,
}

impl Rewrite<'_> {
    fn push(&mut self, slot: Slot) {
        if *self.skipping && !slot.is_sync_point() {
            return;
        }
        if slot.is_sync_point() {
            *self.skipping = false;
        }
        self.slots.push_back(slot);
    }

    /// Makes sure the backend has `stmt` as its text means now, adding a hidden Parse to `out`
    /// if not.
    fn ensure(&mut self, stmt: &Stmt, out: &mut BytesMut) {
        if *self.skipping {
            return;
        }
        match self.prepared.has(stmt.hash) {
            Has::Fresh => {}
            had => self.prepare(stmt, had, out, false),
        }
    }

    /// Sends a Parse under the shared name, closing first the backend's older copy, if it
    /// `had` one, and the least recently used statement when the backend has too many.
    fn prepare(&mut self, stmt: &Stmt, had: Has, out: &mut BytesMut, visible: bool) {
        if had != Has::No {
            self.close(stmt.hash, out, false);
        }
        if let Some(evicted) = self.prepared.insert(stmt.hash, self.cap) {
            self.close(evicted, out, false);
        }
        put_parse(out, stmt);
        self.push(Slot::Parse {
            hash: Some(stmt.hash),
            visible,
        });
    }

    /// Sends a Close of the shared statement `hash`; the backend no longer has it.
    fn close(&mut self, hash: u64, out: &mut BytesMut, visible: bool) {
        close_statement(out, hash);
        self.prepared.remove(hash);
        self.push(Slot::Close { hash, visible });
    }

    /// Rewrites one unit for this backend; returns the bytes to send.
    pub fn unit(&mut self, unit: Bytes, stmts: &mut HashMap<Bytes, Stmt>) -> Bytes {
        let mut out = BytesMut::new();
        let mut changed = false;
        for frame in FrameScan::new(&unit, u32::MAX) {
            let start = out.len();
            // `scan_unit` refused units with unknown tags; were there one, it would pass.
            let same = FrontendTag::from_byte(frame.tag())
                .is_none_or(|tag| self.frame(tag, frame.body(), stmts, &mut out));
            if same {
                if changed {
                    out.put_slice(frame.bytes);
                }
            } else if !changed {
                let made = out.split_off(start);
                out.put_slice(unit.get(..frame.at).unwrap_or_default());
                out.unsplit(made);
                changed = true;
            }
        }
        if changed {
            out.freeze()
        } else {
            unit
        }
    }

    /// Handles one frame: `true` when it goes out unchanged, otherwise its replacement (if
    /// any) has been written to `out`.
    fn frame(
        &mut self,
        tag: FrontendTag,
        body: &[u8],
        stmts: &mut HashMap<Bytes, Stmt>,
        out: &mut BytesMut,
    ) -> bool {
        use FrontendTag as F;
        match tag {
            F::Parse => self.parse(body, stmts, out),
            F::Bind => self.bind(body, stmts, out),
            F::Describe | F::Close if body.first() == Some(&KIND_STATEMENT) => {
                self.describe_or_close(tag, body, stmts, out)
            }
            F::Sync if *self.copy_in => {
                self.ignored_syncs = self.ignored_syncs.saturating_add(1);
                true
            }
            F::CopyDone | F::CopyFail => {
                if !std::mem::take(self.copy_in) {
                    self.slots.push_back(Slot::CopyEnd);
                }
                true
            }
            F::Describe | F::Close | F::Execute | F::Sync | F::Query | F::FunctionCall => {
                self.push(Slot::Pass(tag));
                true
            }
            F::Flush | F::CopyData | F::Password | F::Terminate => true,
        }
    }

    /// Parse of a named statement: sent under the shared name, always: the client's own Parse
    /// sees the catalog as it is now (after a DROP TYPE / CREATE TYPE, say), and from now on
    /// every backend's older copy of the text is stale.
    fn parse(&mut self, body: &[u8], stmts: &mut HashMap<Bytes, Stmt>, out: &mut BytesMut) -> bool {
        let name = statement_of(body).map(|(n, _)| n).unwrap_or_default();
        let Some(stmt) = (!name.is_empty()).then(|| stmts.get(name)).flatten() else {
            self.push(Slot::Parse {
                hash: None,
                visible: true,
            });
            return true;
        };
        if *self.skipping {
            // The backend skips it after an error: PostgreSQL never creates the statement.
            stmts.remove(name);
            return false;
        }
        client_parsed(stmt.hash);
        let had = self.prepared.has(stmt.hash);
        self.prepare(stmt, had, out, true);
        false
    }

    /// Bind to a named statement: renamed, after a hidden Parse if the backend lacks it.
    fn bind(&mut self, body: &[u8], stmts: &HashMap<Bytes, Stmt>, out: &mut BytesMut) -> bool {
        let named = split_bind(body).and_then(|(portal, name, rest)| {
            let stmt = (!name.is_empty()).then(|| stmts.get(name)).flatten()?;
            Some((portal, stmt, rest))
        });
        let Some((portal, stmt, rest)) = named else {
            self.push(Slot::Pass(FrontendTag::Bind));
            return true;
        };
        self.ensure(stmt, out);
        let mut msg = BytesMut::with_capacity(body.len().saturating_add(24));
        msg.put_slice(portal);
        msg.put_u8(0);
        msg.put_slice(&backend_name(stmt.hash));
        msg.put_u8(0);
        msg.put_slice(rest);
        put_tagged(out, FrontendTag::Bind as u8, &msg);
        self.push(Slot::Pass(FrontendTag::Bind));
        false
    }

    /// Describe or Close of a statement. Close of a named one forgets the client's name, and
    /// closes the backend's statement unless another of the client's names shares it (other
    /// clients that share it prepare it again where they need it).
    fn describe_or_close(
        &mut self,
        tag: FrontendTag,
        body: &[u8],
        stmts: &mut HashMap<Bytes, Stmt>,
        out: &mut BytesMut,
    ) -> bool {
        let name = match describe_target(tag as u8, body) {
            Ok((KIND_STATEMENT, name)) => name,
            _ => b"",
        };
        if name.is_empty() {
            self.push(Slot::Pass(tag));
            return true;
        }
        if tag == FrontendTag::Close {
            if *self.skipping {
                // Skipped after an error: PostgreSQL closes nothing and answers nothing.
                return false;
            }
            match forget(stmts, name, self.prepared) {
                Some(h) => self.close(h, out, true),
                None => self.push(Slot::Fake(BackendTag::CloseComplete)),
            }
            return false;
        }
        let Some(stmt) = stmts.get(name) else {
            self.push(Slot::Pass(FrontendTag::Describe));
            return true;
        };
        self.ensure(stmt, out);
        let mut msg = BytesMut::with_capacity(26);
        msg.put_u8(KIND_STATEMENT);
        msg.put_slice(&backend_name(stmt.hash));
        msg.put_u8(0);
        put_tagged(out, FrontendTag::Describe as u8, &msg);
        self.push(Slot::Pass(FrontendTag::Describe));
        false
    }
}

/// The client closes its statement `name` (Close, DEALLOCATE): the name is forgotten, and
/// the backend statement it named is returned, and no longer counted as the backend's, when
/// the backend has it and none of the client's other names shares it: the caller closes it.
pub(super) fn forget(
    stmts: &mut HashMap<Bytes, Stmt>,
    name: &[u8],
    prepared: &mut Prepared,
) -> Option<u64> {
    let hash = stmts.remove(name)?.hash;
    if stmts.values().any(|s| s.hash == hash) || prepared.has(hash) == Has::No {
        return None;
    }
    prepared.remove(hash);
    Some(hash)
}

/// A Close of the shared statement `hash`.
pub(super) fn close_statement(out: &mut BytesMut, hash: u64) {
    let mut msg = BytesMut::with_capacity(26);
    msg.put_u8(KIND_STATEMENT);
    msg.put_slice(&backend_name(hash));
    msg.put_u8(0);
    put_tagged(out, FrontendTag::Close as u8, &msg);
}

fn put_parse(out: &mut BytesMut, stmt: &Stmt) {
    let mut msg = BytesMut::with_capacity(stmt.body.len().saturating_add(25));
    msg.put_slice(&backend_name(stmt.hash));
    msg.put_u8(0);
    msg.put_slice(&stmt.body);
    put_tagged(out, FrontendTag::Parse as u8, &msg);
}

/// Appends one message. Bodies here are client bodies (at most `max_message_bytes`, 1 GiB)
/// with a statement name of 24 bytes put in, so the length word always fits; were it not to,
/// it would saturate to a length PostgreSQL refuses rather than wrap to a wrong one.
fn put_tagged(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    let msg_len = u32::try_from(body.len()).map_or(u32::MAX, |n| n.saturating_add(4));
    out.put_u32(msg_len);
    out.put_slice(body);
}

/// Portal name, statement name and the rest of a Bind body.
fn split_bind(body: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (portal, rest) = split_cstr(body)?;
    let (statement, rest) = split_cstr(rest)?;
    Some((portal, statement, rest))
}

/// A C string and what follows its NUL.
fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    let (s, rest) = b.split_at_checked(nul)?;
    Some((s, rest.get(1..)?))
}

/// Copy-in began (CopyInResponse) for the message at the head of `slots`: the Syncs sent after
/// it and before the client's CopyDone / CopyFail are ignored by the backend. Returns how many
/// were dropped and whether the client has yet to end the COPY.
pub(super) fn start_copy_in(slots: &mut VecDeque<Slot>) -> (u32, bool) {
    let mut dropped = 0;
    let mut i = 1;
    while i < slots.len() {
        match slots[i] {
            Slot::CopyEnd => {
                slots.remove(i);
                return (dropped, false);
            }
            Slot::Pass(FrontendTag::Sync) => {
                slots.remove(i);
                dropped = dropped.saturating_add(1);
            }
            _ => i = i.saturating_add(1),
        }
    }
    (dropped, true)
}

/// Writes a made-up response the client expects.
pub(super) fn put_fake(out: &mut BytesMut, tag: BackendTag) {
    // ParseComplete and CloseComplete have empty bodies.
    put_tagged(out, tag as u8, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgpilot_protocol::encode;
    use pgpilot_protocol::frame::split_frame;
    use FrontendTag as F;

    /// The per-backend state a unit is rewritten against.
    #[derive(Default)]
    struct Fake {
        prepared: Prepared,
        slots: VecDeque<Slot>,
        skipping: bool,
        copy_in: bool,
    }

    impl Fake {
        fn rewrite(&mut self, unit: Bytes, stmts: &mut HashMap<Bytes, Stmt>) -> Bytes {
            let mut rw = Rewrite {
                prepared: &mut self.prepared,
                cap: 1000,
                slots: &mut self.slots,
                skipping: &mut self.skipping,
                copy_in: &mut self.copy_in,
                ignored_syncs: 0,
            };
            rw.unit(unit, stmts)
        }
    }

    /// The messages sent to a backend, tag and body.
    fn frames(b: &[u8]) -> Vec<(FrontendTag, Vec<u8>)> {
        let mut buf = BytesMut::from(b);
        let mut out = Vec::new();
        while let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
            out.push((FrontendTag::try_from(f.tag).unwrap(), f.body().to_vec()));
        }
        out
    }

    fn tags(sent: &[(FrontendTag, Vec<u8>)]) -> Vec<FrontendTag> {
        sent.iter().map(|f| f.0).collect()
    }

    #[test]
    fn backend_names_spell_the_hash_in_hex_highest_nibble_first() {
        assert_eq!(
            &backend_name(0x0123_4567_89ab_cdef),
            b"pgpilot_0123456789abcdef"
        );
        assert_eq!(&backend_name(u64::MAX), b"pgpilot_ffffffffffffffff");
        assert_eq!(&backend_name(0), b"pgpilot_0000000000000000");
    }

    #[test]
    fn each_slot_ends_at_the_message_postgres_ends_its_responses_with() {
        use BackendTag as B;
        let parse = Slot::Parse {
            hash: None,
            visible: true,
        };
        let ends = [
            (parse, &[B::ParseComplete][..]),
            (Slot::Pass(F::Bind), &[B::BindComplete]),
            (Slot::Pass(F::Describe), &[B::RowDescription, B::NoData]),
            (
                Slot::Pass(F::Execute),
                &[
                    B::CommandComplete,
                    B::EmptyQueryResponse,
                    B::PortalSuspended,
                ],
            ),
            (Slot::Pass(F::Close), &[B::CloseComplete]),
            (
                Slot::Close {
                    hash: 1,
                    visible: false,
                },
                &[B::CloseComplete],
            ),
            (Slot::Pass(F::Sync), &[B::ReadyForQuery]),
            (Slot::Pass(F::Query), &[B::ReadyForQuery]),
            (Slot::Pass(F::FunctionCall), &[B::ReadyForQuery]),
            (Slot::Fake(B::ParseComplete), &[]),
            (Slot::CopyEnd, &[]),
        ];
        for (slot, enders) in ends {
            for tag in (0..=u8::MAX).filter_map(B::from_byte) {
                assert_eq!(
                    slot.ends_with(tag),
                    enders.contains(&tag),
                    "{slot:?} at {tag:?}"
                );
            }
        }
        let sync_points: Vec<_> = ends.iter().filter(|(s, _)| s.is_sync_point()).collect();
        assert_eq!(sync_points.len(), 3, "Sync, Query and FunctionCall");
    }

    #[test]
    fn statements_are_prepared_once_per_backend_and_renamed() {
        let mut stmts = HashMap::new();
        let mut be = Fake::default();
        let mut unit = BytesMut::new();
        encode::parse(&mut unit, b"s1", b"SELECT $1", &[23]);
        encode::describe(&mut unit, KIND_STATEMENT, b"s1");
        encode::sync(&mut unit);
        let parse_body = frames(&unit)[0].1.clone();
        stmts.insert(
            Bytes::from_static(b"s1"),
            Stmt::from_parse(
                &parse_body,
                2,
                Target::Replica,
                Stmt::hash_of(&parse_body, 2, 0),
            ),
        );
        let hash = stmts[&b"s1"[..]].hash;
        let sent = frames(&be.rewrite(unit.freeze(), &mut stmts));
        let name = backend_name(hash);
        assert_eq!(tags(&sent), [F::Parse, F::Describe, F::Sync]);
        assert!(sent[0].1.starts_with(&name));
        assert_eq!(sent[1].1, [&[KIND_STATEMENT][..], &name, &[0]].concat());
        assert_eq!(
            be.slots,
            [
                Slot::Parse {
                    hash: Some(hash),
                    visible: true
                },
                Slot::Pass(F::Describe),
                Slot::Pass(F::Sync)
            ]
        );

        // Next unit on the same backend: Bind needs no Parse; the client's Close closes the
        // backend's statement, whose CloseComplete is the client's.
        be.slots.clear();
        let mut unit = BytesMut::new();
        encode::bind(&mut unit, b"", b"s1", &[Some(b"7")]);
        encode::execute(&mut unit, b"", 0);
        encode::close(&mut unit, KIND_STATEMENT, b"s1");
        encode::sync(&mut unit);
        let sent = frames(&be.rewrite(unit.freeze(), &mut stmts));
        assert_eq!(tags(&sent), [F::Bind, F::Execute, F::Close, F::Sync]);
        assert_eq!(sent[2].1, [&[KIND_STATEMENT][..], &name, &[0]].concat());
        assert_eq!(
            be.slots,
            [
                Slot::Pass(F::Bind),
                Slot::Pass(F::Execute),
                Slot::Close {
                    hash,
                    visible: true
                },
                Slot::Pass(F::Sync)
            ]
        );
        assert!(stmts.is_empty());
        assert_eq!(be.prepared.has(hash), Has::No);

        // A Close of a name the backend does not have is answered by the proxy.
        be.slots.clear();
        let mut unit = BytesMut::new();
        encode::close(&mut unit, KIND_STATEMENT, b"s1");
        encode::sync(&mut unit);
        let sent = frames(&be.rewrite(unit.freeze(), &mut stmts));
        assert_eq!(tags(&sent), [F::Sync]);
        assert_eq!(be.slots[0], Slot::Fake(BackendTag::CloseComplete));
    }

    #[test]
    fn a_clients_own_parse_always_reaches_the_backend_and_makes_older_copies_stale() {
        let mut p = BytesMut::new();
        encode::parse(&mut p, b"s", b"SELECT 1", &[]);
        encode::sync(&mut p);
        let body = frames(&p)[0].1.clone();
        let record = |stmts: &mut HashMap<Bytes, Stmt>| {
            let stmt = Stmt::from_parse(&body, 1, Target::Primary, Stmt::hash_of(&body, 1, 0));
            let hash = stmt.hash;
            stmts.insert(Bytes::from_static(b"s"), stmt);
            hash
        };
        let (mut one, mut two) = (Fake::default(), Fake::default());
        let mut stmts = HashMap::new();
        let hash = record(&mut stmts);
        assert_eq!(
            tags(&frames(&one.rewrite(p.clone().freeze(), &mut stmts))),
            [F::Parse, F::Sync]
        );
        // Another backend prepares it for a Bind, hidden.
        let mut run = BytesMut::new();
        encode::bind(&mut run, b"", b"s", &[]);
        encode::sync(&mut run);
        assert_eq!(
            tags(&frames(&two.rewrite(run.clone().freeze(), &mut stmts))),
            [F::Parse, F::Bind, F::Sync]
        );
        assert_eq!(two.prepared.has(hash), Has::Fresh);
        // The client prepares the same text again (after DDL, say): the backend it goes to
        // closes its copy and parses it anew, and the other backend's copy is stale.
        record(&mut stmts);
        one.slots.clear();
        let sent = frames(&one.rewrite(p.clone().freeze(), &mut stmts));
        assert_eq!(tags(&sent), [F::Close, F::Parse, F::Sync]);
        assert_eq!(
            one.slots[0],
            Slot::Close {
                hash,
                visible: false
            }
        );
        assert_eq!(two.prepared.has(hash), Has::Stale);
        let sent = frames(&two.rewrite(run.freeze(), &mut stmts));
        assert_eq!(tags(&sent), [F::Close, F::Parse, F::Bind, F::Sync]);
        assert_eq!(two.prepared.has(hash), Has::Fresh);
    }

    #[test]
    fn a_backend_without_the_statement_gets_a_hidden_parse() {
        let mut stmts = HashMap::new();
        let mut p = BytesMut::new();
        encode::parse(&mut p, b"s2", b"SELECT 1", &[]);
        let body = frames(&p)[0].1.clone();
        stmts.insert(
            Bytes::from_static(b"s2"),
            Stmt::from_parse(&body, 2, Target::Primary, Stmt::hash_of(&body, 2, 0)),
        );
        let mut be = Fake::default();
        let mut unit = BytesMut::new();
        encode::bind(&mut unit, b"p", b"s2", &[]);
        encode::sync(&mut unit);
        let sent = frames(&be.rewrite(unit.freeze(), &mut stmts));
        assert_eq!(tags(&sent), [F::Parse, F::Bind, F::Sync]);
        assert!(matches!(be.slots[0], Slot::Parse { visible: false, .. }));
        // Unnamed statements pass untouched.
        let mut unit = BytesMut::new();
        encode::parse(&mut unit, b"", b"SELECT 2", &[]);
        encode::bind(&mut unit, b"", b"", &[]);
        encode::sync(&mut unit);
        let unit = unit.freeze();
        assert_eq!(be.rewrite(unit.clone(), &mut stmts), unit);
    }
}
