//! What statements do to session state that a pooled backend would carry to its next client.

use super::is_kw;
use super::lexer::{Lexer, Token};

/// What a statement does to session state that outlives its transaction. Ordered: a stronger
/// effect includes the weaker ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionEffect {
    /// Nothing that a pooled backend would carry to its next client.
    None,
    /// Session-level `SET` / `RESET` (not `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`).
    Settings,
    /// `DISCARD` or `DEALLOCATE`: prepared statements (and with DISCARD ALL, settings) are gone.
    Discard,
    /// State that cannot move to another backend: `LISTEN`, temporary tables, session-level
    /// advisory locks, `DECLARE … WITH HOLD`, SQL `PREPARE`, `SET ROLE` / `SESSION AUTHORIZATION`.
    /// The client stays on its backend.
    Pin,
}

/// Session-level advisory lock functions (the `_xact_` ones end with the transaction).
const SESSION_LOCK_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// The strongest session effect of the statements in a Query or Parse.
pub fn session_effect(sql: &[u8]) -> SessionEffect {
    let mut lexer = Lexer::new(sql);
    let mut tokens = Vec::with_capacity(16);
    let mut effect = SessionEffect::None;
    loop {
        let ended = !lexer.next_statement(&mut tokens);
        effect = effect.max(statement_effect(&tokens));
        if ended || lexer.broken {
            return effect;
        }
    }
}

pub(super) fn statement_effect(tokens: &[Token<'_>]) -> SessionEffect {
    let first = tokens.first();
    let second = tokens.get(1);
    let has = |a: &str, b: &str| {
        tokens
            .windows(2)
            .any(|w| is_kw(w.first(), a) && is_kw(w.get(1), b))
    };
    let calls_lock = tokens.windows(2).any(|w| {
        let [Token::Word(name) | Token::Quoted(name), Token::LParen] = w else {
            return false;
        };
        SESSION_LOCK_FUNCTIONS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
    });
    if is_kw(first, "listen") || is_kw(first, "prepare") || calls_lock {
        return SessionEffect::Pin;
    }
    if is_kw(first, "create")
        && tokens
            .iter()
            .take(3)
            .any(|t| is_kw(Some(t), "temp") || is_kw(Some(t), "temporary"))
    {
        return SessionEffect::Pin;
    }
    if (is_kw(first, "select") || is_kw(first, "with"))
        && (has("into", "temp") || has("into", "temporary"))
    {
        return SessionEffect::Pin;
    }
    if is_kw(first, "declare") && has("with", "hold") {
        return SessionEffect::Pin;
    }
    if is_kw(first, "set") {
        let target = if is_kw(second, "session") {
            tokens.get(2)
        } else {
            second
        };
        if is_kw(target, "role") || is_kw(target, "authorization") {
            return SessionEffect::Pin;
        }
        let scoped = ["local", "transaction", "constraints"]
            .iter()
            .any(|k| is_kw(second, k));
        return if scoped {
            SessionEffect::None
        } else {
            SessionEffect::Settings
        };
    }
    if is_kw(first, "reset") {
        return if is_kw(second, "role") || is_kw(second, "session") {
            SessionEffect::Pin
        } else {
            SessionEffect::Settings
        };
    }
    if is_kw(first, "discard") || is_kw(first, "deallocate") {
        return SessionEffect::Discard;
    }
    SessionEffect::None
}
