//! Transaction-control statements: where a block may run, and the lone BEGIN / COMMIT /
//! SET TRANSACTION forms the session acts on.

use super::lexer::{Lexer, Token};
use super::{is_kw, skip, Reason, Route};

/// Whether the text is one `BEGIN` / `START TRANSACTION` that leaves the access mode and
/// isolation to the session's defaults.
pub fn lone_default_begin(sql: &[u8]) -> bool {
    let mut lexer = Lexer::new(sql);
    let mut words = Vec::with_capacity(3);
    while let Some(t) = lexer.next_token() {
        if t == Token::Semi {
            continue;
        }
        words.push(t);
        if words.len() > 2 {
            return false;
        }
    }
    // An unterminated comment or string is no BEGIN PostgreSQL will run.
    if lexer.broken {
        return false;
    }
    match words.as_slice() {
        [a] => is_kw(Some(a), "begin"),
        [a, b] => {
            (is_kw(Some(a), "begin") && (is_kw(Some(b), "work") || is_kw(Some(b), "transaction")))
                || (is_kw(Some(a), "start") && is_kw(Some(b), "transaction"))
        }
        _ => false,
    }
}

/// How a lone statement ends a transaction: `Some(true)` for COMMIT / END, `Some(false)` for
/// ROLLBACK / ABORT (without TO SAVEPOINT or PREPARED), `None` otherwise.
pub fn lone_transaction_end(sql: &[u8]) -> Option<bool> {
    let mut lexer = Lexer::new(sql);
    let mut tokens = Vec::with_capacity(3);
    if lexer.next_statement(&mut tokens) && lexer.next_token().is_some() {
        return None;
    }
    let first = tokens.first();
    let rest_ok = tokens
        .iter()
        .skip(1)
        .all(|t| is_kw(Some(t), "work") || is_kw(Some(t), "transaction"));
    if !rest_ok || lexer.broken {
        return None;
    }
    if is_kw(first, "commit") || is_kw(first, "end") {
        Some(true)
    } else if is_kw(first, "rollback") || is_kw(first, "abort") {
        Some(false)
    } else {
        None
    }
}

/// Whether the text is one `SET TRANSACTION … READ ONLY` that a replica can run (not
/// SERIALIZABLE, which a standby refuses).
pub fn set_transaction_read_only(sql: &[u8]) -> bool {
    let mut lexer = Lexer::new(sql);
    let mut tokens = Vec::with_capacity(8);
    if lexer.next_statement(&mut tokens) && lexer.next_token().is_some() || lexer.broken {
        return false;
    }
    is_kw(tokens.first(), "set")
        && is_kw(tokens.get(1), "transaction")
        && begin(skip(&tokens, 2)) == Route::replica(Reason::ReadOnlyTransaction)
}

/// BEGIN / START TRANSACTION: a replica may take a READ ONLY block, unless it is SERIALIZABLE
/// (which a hot standby refuses).
pub(super) fn begin(tokens: &[Token<'_>]) -> Route {
    let mut read_only = false;
    for (i, t) in tokens.iter().enumerate() {
        let next = tokens.get(i.saturating_add(1));
        if is_kw(Some(t), "read") && is_kw(next, "only") {
            read_only = true;
        }
        if is_kw(Some(t), "read") && is_kw(next, "write") || is_kw(Some(t), "serializable") {
            return Route::primary(Reason::Write);
        }
    }
    if read_only {
        Route::replica(Reason::ReadOnlyTransaction)
    } else {
        Route::primary(Reason::Write)
    }
}
