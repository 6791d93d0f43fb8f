//! The SQL lexer behind the classifier: skips whitespace, comments (nested `/* */`, `--`),
//! strings (`'…'`, `E'…'`, `B'…'`, `U&'…'`), dollar quotes and quoted identifiers without
//! copying, and yields the tokens the classifier looks at.

use memchr::{memchr, memchr2, memmem};

/// One lexical token; strings and comments are skipped, not returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Token<'a> {
    /// An unquoted identifier or keyword.
    Word(&'a [u8]),
    /// A double-quoted identifier's contents.
    Quoted(&'a [u8]),
    /// A literal: string, number, `$n` parameter.
    Literal,
    Semi,
    LParen,
    RParen,
    Dot,
    /// Any other operator character.
    Op,
}

pub(super) struct Lexer<'a> {
    sql: &'a [u8],
    /// Where lexing goes on: at most two past the end of `sql`, so its additions are
    /// saturating ones that never saturate.
    pos: usize,
    /// Where the token last returned starts.
    token_start: usize,
    /// Set when the text ends inside a string, comment or identifier.
    pub(super) broken: bool,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'a> Lexer<'a> {
    pub(super) fn new(sql: &'a [u8]) -> Self {
        Lexer {
            sql,
            pos: 0,
            token_start: 0,
            broken: false,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.sql.get(self.pos.saturating_add(i)).copied()
    }

    /// The text from `from` on (empty past the end).
    fn from(&self, from: usize) -> &'a [u8] {
        self.sql.get(from..).unwrap_or_default()
    }

    /// The text between two positions (empty if they are out of order or past the end).
    fn span(&self, start: usize, end: usize) -> &'a [u8] {
        self.sql.get(start..end).unwrap_or_default()
    }

    /// Moves past the end of the text, marking it unparsable.
    fn give_up(&mut self) {
        self.pos = self.sql.len();
        self.broken = true;
    }

    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(i) = memchr2(b'*', b'/', self.from(self.pos)) {
            let at = self.pos.saturating_add(i);
            match (self.sql.get(at), self.sql.get(at.saturating_add(1))) {
                (Some(b'/'), Some(b'*')) => {
                    depth = depth.saturating_add(1);
                    self.pos = at.saturating_add(2);
                }
                (Some(b'*'), Some(b'/')) => {
                    // The opening `/*` counted one, and a depth of 0 returns: no underflow.
                    depth = depth.saturating_sub(1);
                    self.pos = at.saturating_add(2);
                    if depth == 0 {
                        return;
                    }
                }
                _ => self.pos = at.saturating_add(1),
            }
        }
        self.give_up();
    }

    /// Skips a quoted run that ends at `quote`, where a doubled quote is an escaped one and,
    /// for E'' strings, a backslash escapes the next byte.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) {
        self.pos = self.pos.saturating_add(1);
        loop {
            let rest = self.from(self.pos);
            let found = if backslash {
                memchr2(quote, b'\\', rest)
            } else {
                memchr(quote, rest)
            };
            let Some(i) = found else {
                return self.give_up();
            };
            let at = self.pos.saturating_add(i);
            if self.sql.get(at) == Some(&b'\\')
                || self.sql.get(at.saturating_add(1)) == Some(&quote)
            {
                self.pos = at.saturating_add(2);
            } else {
                self.pos = at.saturating_add(1);
                return;
            }
            if self.pos > self.sql.len() {
                return self.give_up();
            }
        }
    }

    /// `$tag$ … $tag$`; returns false when the `$` does not start a dollar quote.
    fn skip_dollar_quote(&mut self) -> bool {
        let start = self.pos;
        let mut end = start.saturating_add(1);
        if self.sql.get(end).is_some_and(|&b| is_ident_start(b)) {
            while self
                .sql
                .get(end)
                .is_some_and(|&b| is_ident_char(b) && b != b'$')
            {
                end = end.saturating_add(1);
            }
        }
        if self.sql.get(end) != Some(&b'$') {
            return false;
        }
        let after = end.saturating_add(1);
        let tag = self.span(start, after);
        match memmem::find(self.from(after), tag) {
            Some(i) => self.pos = after.saturating_add(i).saturating_add(tag.len()),
            None => self.give_up(),
        }
        true
    }

    /// Fills `tokens` with the next statement's tokens, up to its `;`. Returns whether a `;`
    /// ended it (more statements may follow).
    pub(super) fn next_statement(&mut self, tokens: &mut Vec<Token<'a>>) -> bool {
        tokens.clear();
        while let Some(t) = self.next_token() {
            if t == Token::Semi {
                return true;
            }
            tokens.push(t);
        }
        false
    }

    /// The next token with its text as written (quotes included).
    pub(super) fn next_spanned(&mut self) -> Option<(Token<'a>, &'a [u8])> {
        let token = self.next_token()?;
        Some((
            token,
            self.span(self.token_start, self.pos.min(self.sql.len())),
        ))
    }

    pub(super) fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            self.token_start = self.pos;
            let b = self.at(0)?;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.pos = self.pos.saturating_add(1),
                b'-' if self.at(1) == Some(b'-') => match memchr(b'\n', self.from(self.pos)) {
                    Some(i) => self.pos = self.pos.saturating_add(i).saturating_add(1),
                    None => self.pos = self.sql.len(),
                },
                b'/' if self.at(1) == Some(b'*') => self.skip_block_comment(),
                b'\'' => {
                    self.skip_quoted(b'\'', false);
                    return Some(Token::Literal);
                }
                b'"' => {
                    let start = self.pos.saturating_add(1);
                    self.skip_quoted(b'"', false);
                    let end = self.pos.saturating_sub(1).max(start);
                    return Some(Token::Quoted(self.span(start, end)));
                }
                b'$' if self.at(1).is_some_and(|c| c.is_ascii_digit()) => {
                    self.pos = self.pos.saturating_add(1);
                    while self.at(0).is_some_and(|c| c.is_ascii_digit()) {
                        self.pos = self.pos.saturating_add(1);
                    }
                    return Some(Token::Literal);
                }
                b'$' => {
                    if !self.skip_dollar_quote() {
                        self.pos = self.pos.saturating_add(1);
                        return Some(Token::Op);
                    }
                    return Some(Token::Literal);
                }
                b if is_ident_start(b) => return Some(self.word()),
                b if b.is_ascii_digit() => {
                    while self
                        .at(0)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
                    {
                        self.pos = self.pos.saturating_add(1);
                    }
                    return Some(Token::Literal);
                }
                _ => {
                    self.pos = self.pos.saturating_add(1);
                    return Some(match b {
                        b';' => Token::Semi,
                        b'(' => Token::LParen,
                        b')' => Token::RParen,
                        b'.' => Token::Dot,
                        _ => Token::Op,
                    });
                }
            }
        }
    }

    fn word(&mut self) -> Token<'a> {
        let start = self.pos;
        while self.at(0).is_some_and(is_ident_char) {
            self.pos = self.pos.saturating_add(1);
        }
        let word = self.span(start, self.pos);
        // String constants with a prefix: E'…' (backslash escapes), B'…', X'…', N'…', U&'…'.
        if let (Some(b'\''), &[prefix]) = (self.at(0), word) {
            let escapes = prefix.eq_ignore_ascii_case(&b'e');
            if escapes || b"bBxXnN".contains(&prefix) {
                self.skip_quoted(b'\'', escapes);
                return Token::Literal;
            }
        }
        if word.eq_ignore_ascii_case(b"u")
            && self.at(0) == Some(b'&')
            && matches!(self.at(1), Some(b'\'' | b'"'))
        {
            self.pos = self.pos.saturating_add(1);
            if let Some(quote) = self.at(0) {
                self.skip_quoted(quote, false);
            }
            return Token::Literal;
        }
        Token::Word(word)
    }
}
