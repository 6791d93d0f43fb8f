//! Reads session-level `SET` / `RESET` statements into (parameter, value) changes that can be
//! replayed with `set_config` on another backend. What it cannot express exactly is `None`, and
//! the caller keeps the client on its backend instead.

use super::lexer::{Lexer, Token};
use super::skip;

/// A token with its text as written.
type Spanned<'t> = (Token<'t>, &'t [u8]);

/// One change to a session's run-time parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingChange {
    /// `SET name = value`: `value` is the text `set_config` takes.
    Set { name: String, value: String },
    /// `RESET name` or `SET name TO DEFAULT`: back to the value the session started with.
    Reset { name: String },
    /// `RESET ALL`.
    ResetAll,
}

/// Whether any statement in the text is `DISCARD ALL` (which also resets every setting) or
/// `DEALLOCATE [PREPARE] ALL`: `(discard_all, deallocate_all)`.
pub fn drops_all_statements(sql: &[u8]) -> (bool, bool) {
    let mut lexer = Lexer::new(sql);
    let (mut discard, mut dealloc) = (false, false);
    let mut prev: [Option<Token<'_>>; 2] = [None, None];
    while let Some(t) = lexer.next_token() {
        let kw = |t: Option<Token<'_>>, k: &str| matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(k.as_bytes()));
        if kw(Some(t), "all") {
            discard |= kw(prev[1], "discard");
            dealloc |=
                kw(prev[1], "deallocate") || (kw(prev[1], "prepare") && kw(prev[0], "deallocate"));
        }
        prev = [prev[1], Some(t)];
    }
    (discard, dealloc)
}

/// What a lone `DEALLOCATE [PREPARE] { name | ALL }` statement drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deallocate {
    /// `DEALLOCATE ALL`.
    All,
    /// One statement, by its name as the protocol spells it (unquoted names fold to lower case).
    Name(Vec<u8>),
}

/// `Some` when `sql` is exactly one DEALLOCATE statement.
pub fn deallocate(sql: &[u8]) -> Option<Deallocate> {
    let mut lexer = Lexer::new(sql);
    let mut tokens = Vec::with_capacity(4);
    while let Some(t) = lexer.next_token() {
        // Every simple Query passes here: leave at the first word unless it is DEALLOCATE.
        let first_is_other = tokens.is_empty()
            && !matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(b"deallocate"));
        if first_is_other || tokens.len() == 4 {
            return None;
        }
        tokens.push(t);
    }
    if lexer.broken {
        return None;
    }
    if tokens.last() == Some(&Token::Semi) {
        tokens.pop();
    }
    let kw = |t: Option<&Token<'_>>, k: &str| matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(k.as_bytes()));
    if !kw(tokens.first(), "deallocate") {
        return None;
    }
    let rest = if kw(tokens.get(1), "prepare") {
        skip(&tokens, 2)
    } else {
        skip(&tokens, 1)
    };
    match rest {
        [Token::Word(w)] if w.eq_ignore_ascii_case(b"all") => Some(Deallocate::All),
        [Token::Word(w)] => Some(Deallocate::Name(w.to_ascii_lowercase())),
        [Token::Quoted(q)] => Some(Deallocate::Name(q.to_vec())),
        _ => None,
    }
}

/// The session-level setting changes in a Query or Parse, in order. `Some(vec![])` when there
/// are none; `None` when a change cannot be replayed faithfully.
pub fn setting_changes(sql: &[u8]) -> Option<Vec<SettingChange>> {
    let mut lexer = Lexer::new(sql);
    let mut changes = Vec::new();
    let mut stmt: Vec<Spanned<'_>> = Vec::new();
    loop {
        stmt.clear();
        let mut ended = true;
        while let Some((t, text)) = lexer.next_spanned() {
            if t == Token::Semi {
                ended = false;
                break;
            }
            stmt.push((t, text));
        }
        if lexer.broken {
            return None;
        }
        if let Some(change) = statement(&stmt)? {
            changes.push(change);
        }
        if ended {
            return Some(changes);
        }
    }
}

fn word(t: Option<&Spanned<'_>>, kw: &str) -> bool {
    matches!(t, Some((Token::Word(w), _)) if w.eq_ignore_ascii_case(kw.as_bytes()))
}

/// `Some(None)`: not a session-level SET/RESET; `None`: one that cannot be replayed.
fn statement(stmt: &[Spanned<'_>]) -> Option<Option<SettingChange>> {
    let mut rest = stmt;
    let reset = match rest.first() {
        _ if word(rest.first(), "set") => false,
        _ if word(rest.first(), "reset") => true,
        _ => return Some(None),
    };
    rest = skip(rest, 1);
    if !reset
        && ["local", "transaction", "constraints"]
            .iter()
            .any(|k| word(rest.first(), k))
    {
        return Some(None);
    }
    if !reset && word(rest.first(), "session") {
        rest = skip(rest, 1);
    }
    let (name, after) = parameter(rest)?;
    if reset {
        return after.is_empty().then(|| {
            Some(if name == "all" {
                SettingChange::ResetAll
            } else {
                SettingChange::Reset { name }
            })
        });
    }
    let after = match after.first() {
        Some((Token::Op, b"=")) => skip(after, 1),
        _ if word(after.first(), "to") => skip(after, 1),
        _ if ["timezone", "search_path", "client_encoding", "xmloption"]
            .contains(&name.as_str()) =>
        {
            after
        }
        _ => return None,
    };
    if after.len() == 1
        && (word(after.first(), "default") || (name == "timezone" && word(after.first(), "local")))
    {
        return Some(Some(SettingChange::Reset { name }));
    }
    // TIME ZONE takes one value (not the INTERVAL form).
    if name == "timezone" && after.len() != 1 {
        return None;
    }
    let value = value(after)?;
    Some(Some(SettingChange::Set { name, value }))
}

/// The parameter name and what follows it; the SQL spellings with their own syntax are mapped
/// to the parameter they set.
fn parameter<'a, 'b>(rest: &'a [Spanned<'b>]) -> Option<(String, &'a [Spanned<'b>])> {
    if word(rest.first(), "time") && word(rest.get(1), "zone") {
        return Some(("timezone".into(), skip(rest, 2)));
    }
    if word(rest.first(), "xml") && word(rest.get(1), "option") {
        return Some(("xmloption".into(), skip(rest, 2)));
    }
    for (kw, param) in [("schema", "search_path"), ("names", "client_encoding")] {
        if word(rest.first(), kw) {
            return Some((param.into(), skip(rest, 1)));
        }
    }
    if ["role", "session", "authorization"]
        .iter()
        .any(|k| word(rest.first(), k))
    {
        return None;
    }
    // name or qualified.name (custom parameters)
    let mut name = String::new();
    let mut i = 0;
    loop {
        match rest.get(i) {
            Some((Token::Word(w), _)) => {
                name.push_str(&String::from_utf8_lossy(w).to_ascii_lowercase())
            }
            _ => return None,
        }
        i = i.saturating_add(1);
        if rest.get(i).map(|t| t.0) == Some(Token::Dot) {
            name.push('.');
            i = i.saturating_add(1);
        } else {
            return Some((name, skip(rest, i)));
        }
    }
}

/// The value list as `set_config` text: items joined by ", ".
fn value(tokens: &[Spanned<'_>]) -> Option<String> {
    let mut items = Vec::new();
    let mut negative = false;
    for (tok, text) in tokens {
        match tok {
            Token::Op if *text == b"," => {}
            Token::Op if *text == b"-" => negative = true,
            Token::Op | Token::LParen | Token::RParen | Token::Dot | Token::Semi => return None,
            Token::Word(w) => items.push(String::from_utf8_lossy(w).to_ascii_lowercase()),
            Token::Quoted(_) => items.push(String::from_utf8_lossy(text).into_owned()),
            Token::Literal => {
                let item = literal(text)?;
                items.push(if std::mem::take(&mut negative) {
                    format!("-{item}")
                } else {
                    item
                });
            }
        }
    }
    (!items.is_empty()).then(|| items.join(", "))
}

/// A plain string or a number, as its value; escape strings and dollar quotes are not replayed.
fn literal(text: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(text).ok()?;
    if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        if inner.contains('\\') {
            return None;
        }
        return Some(inner.replace("''", "'"));
    }
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.')
        .then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> SettingChange {
        SettingChange::Set {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn sets_become_set_config_values() {
        let cases: &[(&str, Vec<SettingChange>)] = &[
            (
                "SET search_path TO app, public",
                vec![set("search_path", "app, public")],
            ),
            (
                "set SESSION statement_timeout = '5s'",
                vec![set("statement_timeout", "5s")],
            ),
            ("SET work_mem = 65536", vec![set("work_mem", "65536")]),
            (
                "SET TIME ZONE 'Europe/Paris'",
                vec![set("timezone", "Europe/Paris")],
            ),
            (
                "SET TIME ZONE LOCAL",
                vec![SettingChange::Reset {
                    name: "timezone".into(),
                }],
            ),
            (
                "SET SCHEMA 'tenant_1'",
                vec![set("search_path", "tenant_1")],
            ),
            ("SET NAMES 'UTF8'", vec![set("client_encoding", "UTF8")]),
            (
                "SET search_path = \"MySchema\", public",
                vec![set("search_path", "\"MySchema\", public")],
            ),
            (
                "SET myapp.tenant = 'it''s'",
                vec![set("myapp.tenant", "it's")],
            ),
            (
                "SET extra_float_digits = -1",
                vec![set("extra_float_digits", "-1")],
            ),
            (
                "SET DateStyle TO ISO, DMY",
                vec![set("datestyle", "iso, dmy")],
            ),
            (
                "SET application_name TO DEFAULT",
                vec![SettingChange::Reset {
                    name: "application_name".into(),
                }],
            ),
            (
                "RESET search_path",
                vec![SettingChange::Reset {
                    name: "search_path".into(),
                }],
            ),
            ("RESET ALL", vec![SettingChange::ResetAll]),
            (
                "SET LOCAL work_mem = 1; SET TRANSACTION READ ONLY; SELECT 1",
                vec![],
            ),
            ("SELECT 1; SET a.b = 1; SELECT 2", vec![set("a.b", "1")]),
        ];
        for (sql, want) in cases {
            assert_eq!(
                setting_changes(sql.as_bytes()).as_ref(),
                Some(want),
                "{sql}"
            );
        }
    }

    #[test]
    fn statements_that_drop_all_prepared_statements() {
        assert_eq!(drops_all_statements(b"DISCARD ALL"), (true, false));
        assert_eq!(
            drops_all_statements(b"SELECT 1; deallocate prepare all"),
            (false, true)
        );
        assert_eq!(drops_all_statements(b"DEALLOCATE ALL"), (false, true));
        assert_eq!(
            drops_all_statements(b"DISCARD PLANS; SELECT 'DISCARD ALL'"),
            (false, false)
        );
    }

    #[test]
    fn lone_deallocate_statements() {
        assert_eq!(
            deallocate(b"DEALLOCATE a1"),
            Some(Deallocate::Name(b"a1".to_vec()))
        );
        assert_eq!(
            deallocate(b"deallocate prepare \"S_1\";"),
            Some(Deallocate::Name(b"S_1".to_vec()))
        );
        assert_eq!(deallocate(b"DEALLOCATE ALL"), Some(Deallocate::All));
        assert_eq!(deallocate(b"DEALLOCATE a1; SELECT 1"), None);
        assert_eq!(deallocate(b"SELECT 1"), None);
    }

    #[test]
    fn what_cannot_be_replayed_is_none() {
        for sql in [
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "SET x.y = E'a\\\\b'",
            "SET x.y = $$v$$",
            "SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE",
            "RESET ROLE",
            "SET search_path",
            "SET 'unterminated",
        ] {
            assert_eq!(setting_changes(sql.as_bytes()), None, "{sql}");
        }
    }
}
