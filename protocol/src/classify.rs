//! Decides from SQL text whether a statement is provably read-only. Anything not proven
//! read-only goes to the primary; the daemon's router applies session and pool state.
//!
//! The lexer skips comments (nested `/* */`, `--`), strings (`'…'`, `E'…'`), quoted
//! identifiers and dollar quotes without copying, so keywords inside them never count.

mod lexer;
mod settings;

pub use settings::{deallocate, drops_all_statements, setting_changes, Deallocate, SettingChange};

use std::collections::HashSet;

use lexer::{Lexer, Token};

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

fn is_kw(tok: Option<&Token<'_>>, kw: &str) -> bool {
    matches!(tok, Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()))
}

/// Built-in functions that write or take locks: a SELECT calling one must run on the primary.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "set_config",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "pg_switch_wal",
    "pg_create_restore_point",
    "dblink_exec",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
];

fn is_builtin_write_function(name: &[u8]) -> bool {
    let lower =
        |p: &str| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    lower("pg_advisory")
        || lower("pg_try_advisory")
        || WRITE_FUNCTIONS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// Which functions may write: the built-in list, plus names configured (or read from the
/// catalog) as writing, minus names configured as read-only. Names are unqualified and
/// case-folded; any overload that may write makes the name a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Functions {
    write: HashSet<Box<[u8]>>,
    read_only: HashSet<Box<[u8]>>,
}

impl Functions {
    /// Built-in knowledge plus these overrides.
    pub fn new<'a>(
        write: impl IntoIterator<Item = &'a str>,
        read_only: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let fold = |n: &str| n.to_ascii_lowercase().into_bytes().into_boxed_slice();
        Functions {
            write: write.into_iter().map(fold).collect(),
            read_only: read_only.into_iter().map(fold).collect(),
        }
    }

    /// These functions with more names that may write (from the catalog); configured
    /// read-only names still win.
    pub fn with_writes<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut f = self.clone();
        f.write.extend(
            names
                .into_iter()
                .map(|n| n.to_ascii_lowercase().into_bytes().into_boxed_slice()),
        );
        f
    }

    /// Whether a call to `name` may write.
    pub fn is_write(&self, name: &[u8]) -> bool {
        if self.write.is_empty() && self.read_only.is_empty() {
            return is_builtin_write_function(name);
        }
        let folded = name.to_ascii_lowercase();
        if self.read_only.contains(folded.as_slice()) {
            return false;
        }
        self.write.contains(folded.as_slice()) || is_builtin_write_function(name)
    }
}

/// The routing hint in a comment that opens the text: `/* pgpilot:primary */` or
/// `/* pgpilot:replica */` (whitespace inside the comment is ignored).
pub fn hint(sql: &[u8]) -> Option<Target> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = sql[start..].strip_prefix(b"/*")?;
    let end = memchr::memmem::find(rest, b"*/")?;
    let body = rest[..end].trim_ascii();
    if body.eq_ignore_ascii_case(b"pgpilot:primary") {
        Some(Target::Primary)
    } else if body.eq_ignore_ascii_case(b"pgpilot:replica") {
        Some(Target::Replica)
    } else {
        None
    }
}

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

fn statement_effect(tokens: &[Token<'_>]) -> SessionEffect {
    let first = tokens.first();
    let second = tokens.get(1);
    let has = |a: &str, b: &str| {
        tokens
            .windows(2)
            .any(|w| is_kw(Some(&w[0]), a) && is_kw(Some(&w[1]), b))
    };
    let calls_lock = tokens.windows(2).any(|w| {
        let name = match w[0] {
            Token::Word(n) | Token::Quoted(n) => n,
            _ => return false,
        };
        w[1] == Token::LParen
            && SESSION_LOCK_FUNCTIONS
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

/// Classifies the SQL text of a Query or Parse: every statement in it must be a read for
/// the whole to go to a replica.
pub fn classify(sql: &[u8]) -> Route {
    classify_with(sql, &Functions::default())
}

/// [`classify`] with configured function knowledge; a leading hint comment is honoured
/// (a replica hint only where the statement is provably a read).
pub fn classify_with(sql: &[u8], functions: &Functions) -> Route {
    let route = classify_text(sql, functions);
    match hint(sql) {
        None => route,
        Some(Target::Primary) => Route::primary(Reason::Hint),
        Some(Target::Replica) if route.target == Target::Replica => Route::replica(Reason::Hint),
        Some(Target::Replica) => Route::primary(Reason::HintRefused),
    }
}

fn classify_text(sql: &[u8], functions: &Functions) -> Route {
    let mut lexer = Lexer::new(sql);
    let mut tokens = Vec::with_capacity(32);
    let mut overall: Option<Route> = None;
    loop {
        let ended = !lexer.next_statement(&mut tokens);
        if lexer.broken {
            return Route::primary(Reason::Unparsed);
        }
        if !tokens.is_empty() {
            let route = statement(&tokens, functions);
            if route.target == Target::Primary {
                return route;
            }
            if overall.is_none_or(|r| r.reason == Reason::TransactionEnd) {
                overall = Some(route);
            }
        }
        if ended {
            return overall.unwrap_or(Route::primary(Reason::Empty));
        }
    }
}

/// Classifies one statement's tokens.
fn statement(tokens: &[Token<'_>], functions: &Functions) -> Route {
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
        return copy(&tokens[1..], functions);
    }
    if ["fetch", "move", "close"].iter().any(|k| is_kw(first, k)) {
        return Route::replica(Reason::Cursor);
    }
    if is_kw(first, "explain") {
        return explain(&tokens[1..], functions);
    }
    if is_kw(first, "begin") || is_kw(first, "start") {
        return begin(&tokens[1..]);
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
        let inner = &tokens[1..];
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
fn copy(tokens: &[Token<'_>], functions: &Functions) -> Route {
    let (source_is_read, rest) = if tokens.first() == Some(&Token::LParen) {
        let mut depth = 0usize;
        let close = tokens.iter().position(|t| {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ => {}
            }
            depth == 0
        });
        let Some(close) = close else {
            return Route::primary(Reason::Write);
        };
        let inner = statement(&tokens[1..close], functions);
        (
            inner.target == Target::Replica && inner.reason == Reason::PlainRead,
            &tokens[close + 1..],
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
            i += 1;
        }
        if tokens.get(i) == Some(&Token::LParen) {
            match tokens[i..].iter().position(|t| *t == Token::RParen) {
                Some(close) => i += close + 1,
                None => return Route::primary(Reason::Write),
            }
        }
        (i > 0, &tokens[i..])
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
            if let (Token::Quoted(name), Some(Token::LParen)) = (tok, tokens.get(i + 1)) {
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
        if tokens.get(i + 1) == Some(&Token::LParen) && functions.is_write(w) {
            return Route::primary(Reason::WriteFunction);
        }
    }
    Route::replica(Reason::PlainRead)
}

/// EXPLAIN [ ( options ) | ANALYZE VERBOSE … ] statement: only EXPLAIN ANALYZE runs it.
fn explain(tokens: &[Token<'_>], functions: &Functions) -> Route {
    let mut analyze = false;
    let mut rest = tokens;
    if rest.first() == Some(&Token::LParen) {
        let close = rest
            .iter()
            .position(|t| *t == Token::RParen)
            .unwrap_or(rest.len());
        analyze = rest[..close]
            .iter()
            .any(|t| is_kw(Some(t), "analyze") || is_kw(Some(t), "analyse"));
        rest = rest.get(close + 1..).unwrap_or_default();
    } else {
        while let Some(t) = rest.first() {
            if is_kw(Some(t), "analyze") || is_kw(Some(t), "analyse") {
                analyze = true;
            } else if !is_kw(Some(t), "verbose") {
                break;
            }
            rest = &rest[1..];
        }
    }
    if !analyze {
        return Route::replica(Reason::Explain);
    }
    match statement(rest, functions) {
        r if r.target == Target::Primary => r,
        _ => Route::replica(Reason::Explain),
    }
}

/// BEGIN / START TRANSACTION: a replica may take a READ ONLY block, unless it is SERIALIZABLE
/// (which a hot standby refuses).
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
        && begin(&tokens[2..]) == Route::replica(Reason::ReadOnlyTransaction)
}

fn begin(tokens: &[Token<'_>]) -> Route {
    let mut read_only = false;
    for (i, t) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1);
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

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod tests;
