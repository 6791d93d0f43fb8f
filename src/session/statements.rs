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

use crate::backend::Prepared;
use pgpilot_protocol::frontend::{describe_target, statement_of};

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
    /// Builds the record of a Parse body whose statement name is `name_len` bytes long.
    /// `scope` (the client's startup-parameter hash) keeps clients whose settings could change
    /// the meaning of the same text (search_path) from sharing a backend statement.
    pub fn from_parse(body: &[u8], name_len: usize, target: Target, scope: u64) -> Stmt {
        let rest = body.get(name_len + 1..).unwrap_or_default();
        let mut h = DefaultHasher::new();
        scope.hash(&mut h);
        rest.hash(&mut h);
        Stmt {
            hash: h.finish(),
            body: Bytes::copy_from_slice(rest),
            target,
        }
    }
}

/// What the client expects in response to one message sent on its behalf, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// A Parse: `visible` false when the proxy added it, so its ParseComplete is hidden.
    /// `hash` is the shared statement it creates (None for the unnamed statement).
    Parse { hash: Option<u64>, visible: bool },
    /// Another client message whose responses pass through; ends at a message of `end_tags`.
    Pass(u8),
    /// A response the proxy makes up (ParseComplete, CloseComplete) when its turn comes.
    Fake(u8),
    /// A Close the proxy sent to evict a statement: its CloseComplete is hidden.
    HiddenClose,
    /// The client ended a COPY (CopyDone / CopyFail): no response of its own, but it marks
    /// where copy-in mode, in which PostgreSQL ignores Sync and Flush, ended.
    CopyEnd,
}

impl Slot {
    /// Whether `tag` is the backend message that completes this slot.
    pub fn ends_with(self, tag: u8) -> bool {
        match self {
            Slot::Parse { .. } => tag == b'1',
            Slot::Pass(b'B') => tag == b'2',
            Slot::Pass(b'D') => tag == b'T' || tag == b'n',
            Slot::Pass(b'E') => matches!(tag, b'C' | b'I' | b's'),
            Slot::Pass(b'C') | Slot::HiddenClose => tag == b'3',
            Slot::Pass(_) => tag == b'Z',
            Slot::Fake(_) | Slot::CopyEnd => false,
        }
    }

    /// A Sync, Query or FunctionCall: where PostgreSQL resumes after an error.
    pub fn is_sync_point(self) -> bool {
        matches!(self, Slot::Pass(b'S' | b'Q' | b'F'))
    }
}

/// The backend's name for a shared statement.
fn backend_name(hash: u64) -> [u8; 24] {
    let mut name = *b"pgpilot_0000000000000000";
    for (i, b) in name.iter_mut().skip(8).enumerate() {
        let nibble = ((hash >> (60 - 4 * i)) & 0xf) as u8;
        *b = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
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

    /// Makes sure the backend has `stmt`, adding a hidden Parse to `out` if not.
    fn ensure(&mut self, stmt: &Stmt, out: &mut BytesMut) {
        if *self.skipping || self.prepared.contains(stmt.hash) {
            return;
        }
        self.prepare(stmt, out, false);
    }

    /// Sends a Parse under the shared name, closing the least recently used statement first
    /// when the backend has too many.
    fn prepare(&mut self, stmt: &Stmt, out: &mut BytesMut, visible: bool) {
        if let Some(evicted) = self.prepared.insert(stmt.hash, self.cap) {
            let mut msg = BytesMut::with_capacity(26);
            msg.put_u8(b'S');
            msg.put_slice(&backend_name(evicted));
            msg.put_u8(0);
            put_tagged(out, b'C', &msg);
            self.push(Slot::HiddenClose);
        }
        put_parse(out, stmt);
        self.push(Slot::Parse {
            hash: Some(stmt.hash),
            visible,
        });
    }

    /// Rewrites one unit for this backend; returns the bytes to send.
    pub fn unit(&mut self, unit: Bytes, stmts: &mut HashMap<Bytes, Stmt>) -> Bytes {
        let mut out = BytesMut::new();
        let mut changed = false;
        for frame in FrameScan::new(&unit, u32::MAX) {
            let start = out.len();
            let same = self.frame(frame.tag(), frame.body(), stmts, &mut out);
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
        tag: u8,
        body: &[u8],
        stmts: &mut HashMap<Bytes, Stmt>,
        out: &mut BytesMut,
    ) -> bool {
        match tag {
            b'P' => self.parse(body, stmts, out),
            b'B' => self.bind(body, stmts, out),
            b'D' | b'C' if body.first() == Some(&b'S') => {
                self.describe_or_close(tag, body, stmts, out)
            }
            b'S' if *self.copy_in => {
                self.ignored_syncs += 1;
                true
            }
            b'c' | b'f' => {
                if !std::mem::take(self.copy_in) {
                    self.slots.push_back(Slot::CopyEnd);
                }
                true
            }
            b'D' | b'C' | b'E' | b'S' | b'Q' | b'F' => {
                self.push(Slot::Pass(tag));
                true
            }
            _ => true,
        }
    }

    /// Parse of a named statement: sent under the shared name, or answered here if the backend
    /// has it already.
    fn parse(&mut self, body: &[u8], stmts: &HashMap<Bytes, Stmt>, out: &mut BytesMut) -> bool {
        let name = statement_of(body).map(|(n, _)| n).unwrap_or_default();
        let Some(stmt) = (!name.is_empty()).then(|| stmts.get(name)).flatten() else {
            self.push(Slot::Parse {
                hash: None,
                visible: true,
            });
            return true;
        };
        if *self.skipping || self.prepared.contains(stmt.hash) {
            self.push(Slot::Fake(b'1'));
        } else {
            self.prepare(stmt, out, true);
        }
        false
    }

    /// Bind to a named statement: renamed, after a hidden Parse if the backend lacks it.
    fn bind(&mut self, body: &[u8], stmts: &HashMap<Bytes, Stmt>, out: &mut BytesMut) -> bool {
        let named = split_bind(body).and_then(|(portal, name, rest)| {
            let stmt = (!name.is_empty()).then(|| stmts.get(name)).flatten()?;
            Some((portal, stmt, rest))
        });
        let Some((portal, stmt, rest)) = named else {
            self.push(Slot::Pass(b'B'));
            return true;
        };
        self.ensure(stmt, out);
        let mut msg = BytesMut::with_capacity(body.len() + 24);
        msg.put_slice(portal);
        msg.put_u8(0);
        msg.put_slice(&backend_name(stmt.hash));
        msg.put_u8(0);
        msg.put_slice(rest);
        put_tagged(out, b'B', &msg);
        self.push(Slot::Pass(b'B'));
        false
    }

    /// Describe or Close of a statement. Close of a named one only forgets the client's name
    /// (the backend statement is shared) and is answered here.
    fn describe_or_close(
        &mut self,
        tag: u8,
        body: &[u8],
        stmts: &mut HashMap<Bytes, Stmt>,
        out: &mut BytesMut,
    ) -> bool {
        let name = match describe_target(tag, body) {
            Ok((b'S', name)) => name,
            _ => b"",
        };
        if name.is_empty() {
            self.push(Slot::Pass(tag));
            return true;
        }
        if tag == b'C' {
            stmts.remove(name);
            self.push(Slot::Fake(b'3'));
            return false;
        }
        let Some(stmt) = stmts.get(name) else {
            self.push(Slot::Pass(b'D'));
            return true;
        };
        self.ensure(stmt, out);
        let mut msg = BytesMut::with_capacity(26);
        msg.put_u8(b'S');
        msg.put_slice(&backend_name(stmt.hash));
        msg.put_u8(0);
        put_tagged(out, b'D', &msg);
        self.push(Slot::Pass(b'D'));
        false
    }
}

fn put_parse(out: &mut BytesMut, stmt: &Stmt) {
    let mut msg = BytesMut::with_capacity(25 + stmt.body.len());
    msg.put_slice(&backend_name(stmt.hash));
    msg.put_u8(0);
    msg.put_slice(&stmt.body);
    put_tagged(out, b'P', &msg);
}

fn put_tagged(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
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
            Slot::Pass(b'S') => {
                slots.remove(i);
                dropped += 1;
            }
            _ => i += 1,
        }
    }
    (dropped, true)
}

/// Writes a made-up response the client expects.
pub(super) fn put_fake(out: &mut BytesMut, tag: u8) {
    // ParseComplete and CloseComplete have empty bodies.
    put_tagged(out, tag, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgpilot_protocol::encode;
    use pgpilot_protocol::frame::split_frame;

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

    fn frames(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut buf = BytesMut::from(b);
        let mut out = Vec::new();
        while let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
            out.push((f.tag, f.body().to_vec()));
        }
        out
    }

    #[test]
    fn statements_are_prepared_once_per_backend_and_renamed() {
        let mut stmts = HashMap::new();
        let mut be = Fake::default();
        let mut unit = BytesMut::new();
        encode::parse(&mut unit, b"s1", b"SELECT $1", &[23]);
        encode::describe(&mut unit, b'S', b"s1");
        encode::sync(&mut unit);
        let parse_body = frames(&unit)[0].1.clone();
        stmts.insert(
            Bytes::from_static(b"s1"),
            Stmt::from_parse(&parse_body, 2, Target::Replica, 0),
        );
        let hash = stmts[&b"s1"[..]].hash;
        let sent = frames(&be.rewrite(unit.freeze(), &mut stmts));
        let name = backend_name(hash);
        assert_eq!(sent[0].0, b'P');
        assert!(sent[0].1.starts_with(&name));
        assert_eq!(sent[1], (b'D', [&b"S"[..], &name, &[0]].concat()));
        assert_eq!(sent[2].0, b'S');
        assert_eq!(
            be.slots,
            [
                Slot::Parse {
                    hash: Some(hash),
                    visible: true
                },
                Slot::Pass(b'D'),
                Slot::Pass(b'S')
            ]
        );

        // Next unit on the same backend: Bind needs no Parse; Close is answered by the proxy.
        be.slots.clear();
        let mut unit = BytesMut::new();
        encode::bind(&mut unit, b"", b"s1", &[Some(b"7")]);
        encode::execute(&mut unit, b"", 0);
        encode::close(&mut unit, b'S', b"s1");
        encode::sync(&mut unit);
        let sent = frames(&be.rewrite(unit.freeze(), &mut stmts));
        assert_eq!(sent.iter().map(|f| f.0).collect::<Vec<_>>(), b"BES");
        assert_eq!(
            be.slots,
            [
                Slot::Pass(b'B'),
                Slot::Pass(b'E'),
                Slot::Fake(b'3'),
                Slot::Pass(b'S')
            ]
        );
        assert!(stmts.is_empty());
    }

    #[test]
    fn a_backend_without_the_statement_gets_a_hidden_parse() {
        let mut stmts = HashMap::new();
        let mut p = BytesMut::new();
        encode::parse(&mut p, b"s2", b"SELECT 1", &[]);
        let body = frames(&p)[0].1.clone();
        stmts.insert(
            Bytes::from_static(b"s2"),
            Stmt::from_parse(&body, 2, Target::Primary, 0),
        );
        let mut be = Fake::default();
        let mut unit = BytesMut::new();
        encode::bind(&mut unit, b"p", b"s2", &[]);
        encode::sync(&mut unit);
        let sent = frames(&be.rewrite(unit.freeze(), &mut stmts));
        assert_eq!(sent.iter().map(|f| f.0).collect::<Vec<_>>(), b"PBS");
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
