//! Decides from SQL text whether a statement is provably read-only. Anything not proven
//! read-only goes to the primary; the daemon's router applies session and pool state.
//!
//! The lexer skips comments (nested `/* */`, `--`), strings (`'…'`, `E'…'`), quoted
//! identifiers and dollar quotes without copying, so keywords inside them never count.

mod effects;
mod functions;
mod lexer;
mod settings;
mod transactions;

pub use effects::{session_effect, SessionEffect};
pub use functions::Functions;
pub use transactions::{lone_default_begin, lone_transaction_end, set_transaction_read_only};

pub use settings::{deallocate, drops_all_statements, setting_changes, Deallocate, SettingChange};

use effects::statement_effect;
use lexer::{Lexer, Token};
use transactions::begin;

/// Where a statement may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Only the primary is safe.
    Primary,
    /// Any replica is safe (and so is the primary).
    Replica,
}

/// The rule that decided a route: logged and counted so that operators can see why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// SELECT / VALUES / TABLE / WITH of reads only.
    PlainRead,
    /// SHOW.
    Show,
    /// EXPLAIN without ANALYZE.
    Explain,
    /// COMMIT / ROLLBACK / END / ABORT: harmless wherever they run.
    TransactionEnd,
    /// BEGIN / START TRANSACTION READ ONLY.
    ReadOnlyTransaction,
    /// FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE.
    LockingClause,
    /// SELECT … INTO creates a table.
    SelectInto,
    /// A WITH whose sub-statement modifies data.
    WriteCte,
    /// A call to a function that may write (nextval, advisory locks, …).
    WriteFunction,
    /// A statement that writes, or whose kind is not known to be a read.
    Write,
    /// Nothing but comments and whitespace.
    Empty,
    /// Text the lexer could not follow (unterminated string or comment).
    Unparsed,
    /// A `/* pgpilot:primary */` or `/* pgpilot:replica */` comment decided.
    Hint,
    /// A `/* pgpilot:replica */` hint on a statement that may write: refused, never obeyed.
    HintRefused,
    /// A `[[routing.rules]]` entry decided.
    Rule,
    /// `COPY table TO STDOUT` or `COPY (read) TO STDOUT`.
    CopyOut,
    /// FETCH / MOVE / CLOSE: they run where their cursor's transaction runs.
    Cursor,
}

impl Reason {
    /// Every reason, in declaration order (`ALL[r.index()] == r`).
    pub const ALL: [Reason; 17] = [
        Reason::PlainRead,
        Reason::Show,
        Reason::Explain,
        Reason::TransactionEnd,
        Reason::ReadOnlyTransaction,
        Reason::LockingClause,
        Reason::SelectInto,
        Reason::WriteCte,
        Reason::WriteFunction,
        Reason::Write,
        Reason::Empty,
        Reason::Unparsed,
        Reason::Hint,
        Reason::HintRefused,
        Reason::Rule,
        Reason::CopyOut,
        Reason::Cursor,
    ];

    /// Its place in [`Reason::ALL`], for tables of counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The rule's name as logs and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PlainRead => "plain_read",
            Reason::Show => "show",
            Reason::Explain => "explain",
            Reason::TransactionEnd => "transaction_end",
            Reason::ReadOnlyTransaction => "read_only_transaction",
            Reason::LockingClause => "locking_clause",
            Reason::SelectInto => "select_into",
            Reason::WriteCte => "write_cte",
            Reason::WriteFunction => "write_function",
            Reason::Write => "write",
            Reason::Empty => "empty",
            Reason::Unparsed => "unparsed",
            Reason::Hint => "hint",
            Reason::HintRefused => "hint_refused",
            Reason::Rule => "rule",
            Reason::CopyOut => "copy_out",
            Reason::Cursor => "cursor",
        }
    }
}

/// A routing decision and the rule behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// Where the statement may run.
    pub target: Target,
    /// Why.
    pub reason: Reason,
}

impl Route {
    const fn primary(reason: Reason) -> Route {
        Route {
            target: Target::Primary,
            reason,
        }
    }
    const fn replica(reason: Reason) -> Route {
        Route {
            target: Target::Replica,
            reason,
        }
    }
}

/// `s` without its first `n` items (empty when it has fewer): the classifier's checked `&s[n..]`.
fn skip<T>(s: &[T], n: usize) -> &[T] {
    s.get(n..).unwrap_or_default()
}

fn is_kw(tok: Option<&Token<'_>>, kw: &str) -> bool {
    matches!(tok, Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()))
}

/// The routing hint in a comment that opens the text: `/* pgpilot:primary */` or
/// `/* pgpilot:replica */` (whitespace inside the comment is ignored).
pub fn hint(sql: &[u8]) -> Option<Target> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = skip(sql, start).strip_prefix(b"/*")?;
    let end = memchr::memmem::find(rest, b"*/")?;
    let body = rest.get(..end)?.trim_ascii();
    if body.eq_ignore_ascii_case(b"pgpilot:primary") {
        Some(Target::Primary)
    } else if body.eq_ignore_ascii_case(b"pgpilot:replica") {
        Some(Target::Replica)
    } else {
        None
    }
}

/// Classifies the SQL text of a Query or Parse: every statement in it must be a read for
/// the whole to go to a replica.
pub fn classify(sql: &[u8]) -> Route {
    classify_with(sql, &Functions::default())
}

/// [`classify`] with configured function knowledge; a leading hint comment is honoured
/// (a replica hint only where the statement is provably a read).
pub fn classify_with(sql: &[u8], functions: &Functions) -> Route {
    analyze(sql, functions).0
}

/// The route of a Query or Parse text and what it does to session state, from one pass of
/// the lexer (the relay needs both for every statement).
pub fn analyze(sql: &[u8], functions: &Functions) -> (Route, SessionEffect) {
    let (route, effect) = analyze_text(sql, functions);
    let route = match hint(sql) {
        None => route,
        Some(Target::Primary) => Route::primary(Reason::Hint),
        Some(Target::Replica) if route.target == Target::Replica => Route::replica(Reason::Hint),
        Some(Target::Replica) => Route::primary(Reason::HintRefused),
    };
    (route, effect)
}

fn analyze_text(sql: &[u8], functions: &Functions) -> (Route, SessionEffect) {
    let mut lexer = Lexer::new(sql);
    let mut tokens = Vec::with_capacity(32);
    let mut primary: Option<Route> = None;
    let mut read: Option<Route> = None;
    let mut effect = SessionEffect::None;
    loop {
        let ended = !lexer.next_statement(&mut tokens);
        if lexer.broken {
            return (primary.unwrap_or(Route::primary(Reason::Unparsed)), effect);
        }
        if !tokens.is_empty() {
            effect = effect.max(statement_effect(&tokens));
            let route = statement(&tokens, functions, 0);
            if route.target == Target::Primary {
                primary.get_or_insert(route);
            } else if read.is_none_or(|r| r.reason == Reason::TransactionEnd) {
                read = Some(route);
            }
        }
        if ended {
            let route = primary.or(read).unwrap_or(Route::primary(Reason::Empty));
            return (route, effect);
        }
    }
}

/// How deep EXPLAIN ANALYZE and COPY ( … ) may nest before the text is left unparsed (and
/// sent to the primary): the classifier recurses once per level, and a client must not be
/// able to exhaust a worker's stack with `EXPLAIN ANALYZE` repeated a million times.
const MAX_NESTING: usize = 32;

/// Classifies one statement's tokens, `nesting` levels inside EXPLAIN or COPY.
fn statement(tokens: &[Token<'_>], functions: &Functions, nesting: usize) -> Route {
    if nesting > MAX_NESTING {
        return Route::primary(Reason::Unparsed);
    }
    let nesting = nesting.saturating_add(1);
    let first = tokens.first();
    if is_kw(first, "select")
        || is_kw(first, "values")
        || is_kw(first, "table")
        || is_kw(first, "with")
    {
        return query(tokens, functions);
    }
    if is_kw(first, "show") {
        return Route::replica(Reason::Show);
    }
    if is_kw(first, "copy") {
        return copy(skip(tokens, 1), functions, nesting);
    }
    if ["fetch", "move", "close"].iter().any(|k| is_kw(first, k)) {
        return Route::replica(Reason::Cursor);
    }
    if is_kw(first, "explain") {
        return explain(skip(tokens, 1), functions, nesting);
    }
    if is_kw(first, "begin") || is_kw(first, "start") {
        return begin(skip(tokens, 1));
    }
    if ["commit", "end", "rollback", "abort"]
        .iter()
        .any(|k| is_kw(first, k))
    {
        if tokens.iter().skip(1).any(|t| is_kw(Some(t), "prepared")) {
            return Route::primary(Reason::Write);
        }
        return Route::replica(Reason::TransactionEnd);
    }
    if first == Some(&Token::LParen) {
        // A parenthesised query: `(SELECT 1) UNION (SELECT 2)`.
        let inner = skip(tokens, 1);
        if is_kw(inner.first(), "select")
            || is_kw(inner.first(), "values")
            || is_kw(inner.first(), "with")
        {
            return query(inner, functions);
        }
    }
    Route::primary(Reason::Write)
}

/// COPY … TO STDOUT of a table or of a read is a read; every other COPY writes (FROM) or has
/// effects on the server (TO a file or program).
fn copy(tokens: &[Token<'_>], functions: &Functions, nesting: usize) -> Route {
    let (source_is_read, rest) = if tokens.first() == Some(&Token::LParen) {
        let mut depth = 0usize;
        let close = tokens.iter().position(|t| {
            match t {
                Token::LParen => depth = depth.saturating_add(1),
                // The first token opened one and a depth of 0 stops the search: no underflow.
                Token::RParen => depth = depth.saturating_sub(1),
                _ => {}
            }
            depth == 0
        });
        let Some(close) = close else {
            return Route::primary(Reason::Write);
        };
        let inner = statement(tokens.get(1..close).unwrap_or_default(), functions, nesting);
        (
            inner.target == Target::Replica && inner.reason == Reason::PlainRead,
            skip(tokens, close.saturating_add(1)),
        )
    } else {
        // table name, maybe qualified, maybe a column list
        let mut i = 0;
        while matches!(
            tokens.get(i),
            Some(Token::Word(_) | Token::Quoted(_) | Token::Dot)
        ) && !is_kw(tokens.get(i), "to")
            && !is_kw(tokens.get(i), "from")
        {
            i = i.saturating_add(1);
        }
        if tokens.get(i) == Some(&Token::LParen) {
            match skip(tokens, i).iter().position(|t| *t == Token::RParen) {
                Some(close) => i = i.saturating_add(close).saturating_add(1),
                None => return Route::primary(Reason::Write),
            }
        }
        (i > 0, skip(tokens, i))
    };
    if source_is_read && is_kw(rest.first(), "to") && is_kw(rest.get(1), "stdout") {
        return Route::replica(Reason::CopyOut);
    }
    Route::primary(Reason::Write)
}

/// SELECT, VALUES, TABLE and WITH: a read unless something inside writes or locks.
fn query(tokens: &[Token<'_>], functions: &Functions) -> Route {
    let is_with = is_kw(tokens.first(), "with");
    for (i, tok) in tokens.iter().enumerate() {
        let Token::Word(w) = tok else {
            if let (Token::Quoted(name), Some(Token::LParen)) =
                (tok, tokens.get(i.saturating_add(1)))
            {
                if functions.is_write(name) {
                    return Route::primary(Reason::WriteFunction);
                }
            }
            continue;
        };
        let prev = i.checked_sub(1).and_then(|p| tokens.get(p));
        let kw = |k: &str| w.eq_ignore_ascii_case(k.as_bytes());
        if kw("update") || kw("share") {
            let locking = is_kw(prev, "for") || is_kw(prev, "key");
            if locking || !is_with {
                return Route::primary(Reason::LockingClause);
            }
            return Route::primary(Reason::WriteCte);
        }
        if kw("insert") || kw("delete") || kw("merge") {
            return Route::primary(if is_with {
                Reason::WriteCte
            } else {
                Reason::Write
            });
        }
        if kw("into") {
            return Route::primary(Reason::SelectInto);
        }
        if tokens.get(i.saturating_add(1)) == Some(&Token::LParen) && functions.is_write(w) {
            return Route::primary(Reason::WriteFunction);
        }
    }
    Route::replica(Reason::PlainRead)
}

/// EXPLAIN [ ( options ) | ANALYZE VERBOSE … ] statement: only EXPLAIN ANALYZE runs it.
fn explain(tokens: &[Token<'_>], functions: &Functions, nesting: usize) -> Route {
    let mut analyze = false;
    let mut rest = tokens;
    if rest.first() == Some(&Token::LParen) {
        let close = rest
            .iter()
            .position(|t| *t == Token::RParen)
            .unwrap_or(rest.len());
        analyze = rest
            .iter()
            .take(close)
            .any(|t| is_kw(Some(t), "analyze") || is_kw(Some(t), "analyse"));
        rest = rest.get(close.saturating_add(1)..).unwrap_or_default();
    } else {
        while let Some(t) = rest.first() {
            if is_kw(Some(t), "analyze") || is_kw(Some(t), "analyse") {
                analyze = true;
            } else if !is_kw(Some(t), "verbose") {
                break;
            }
            rest = skip(rest, 1);
        }
    }
    if !analyze {
        return Route::replica(Reason::Explain);
    }
    match statement(rest, functions, nesting) {
        r if r.target == Target::Primary => r,
        _ => Route::replica(Reason::Explain),
    }
}

/// The routing corpus: public (hidden from the docs) so that the benches time classification
/// on it; its tests check every route.
#[doc(hidden)]
pub mod corpus;
#[cfg(test)]
mod tests;
