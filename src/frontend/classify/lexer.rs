//! The classifier's lexer: splits SQL text into the tokens the classifier reads (words,
//! quoted identifiers, statement-ending semicolons) and skips what can hide a keyword:
//! string literals (`E''` escapes included), dollar quotes, and both comment styles.

use std::borrow::Cow;

/// One token of SQL text, as far as the classifier cares.
pub(super) enum Token<'a> {
    /// An unquoted word, as written.
    Word(&'a str),
    /// A quoted identifier, case kept.
    Quoted(Cow<'a, str>),
    /// A `;` outside quotes and comments: the end of a statement.
    Semicolon,
    /// Anything else: literals, numbers, punctuation.
    Other,
}

/// Walks SQL text a token at a time.
pub(super) struct Lexer<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    /// Byte offset of the next token.
    pub(super) pos: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `sql`.
    pub(super) fn new(sql: &'a str) -> Self {
        Self {
            sql,
            bytes: sql.as_bytes(),
            pos: 0,
        }
    }

    /// The byte just before the next token, if any.
    pub(super) fn previous_byte(&self) -> Option<u8> {
        self.pos
            .checked_sub(1)
            .and_then(|at| self.bytes.get(at).copied())
    }

    fn peek(&self, offset: usize) -> u8 {
        self.bytes.get(self.pos + offset).copied().unwrap_or(0)
    }

    /// The next token; `None` at the end of the text.
    pub(super) fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            let c = *self.bytes.get(self.pos)?;
            match c {
                b';' => {
                    self.pos += 1;
                    return Some(Token::Semicolon);
                }
                b'-' if self.peek(1) == b'-' => self.skip_line_comment(),
                b'/' if self.peek(1) == b'*' => self.skip_block_comment(),
                b'\'' => {
                    self.skip_quoted(b'\'', false);
                    return Some(Token::Other);
                }
                b'"' => return Some(self.quoted_identifier()),
                b'$' if self.dollar_tag().is_some() => {
                    self.skip_dollar();
                    return Some(Token::Other);
                }
                c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                    return Some(self.word());
                }
                _ => {
                    self.pos += 1;
                    if !c.is_ascii_whitespace() {
                        return Some(Token::Other);
                    }
                }
            }
        }
    }

    fn skip_line_comment(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while self.pos < self.bytes.len() {
            if self.peek(0) == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.pos += 2;
            } else if self.peek(0) == b'*' && self.peek(1) == b'/' {
                depth = depth.saturating_sub(1);
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }

    /// Skips a quoted run starting at the opening quote; doubled quotes stay inside.
    fn skip_quoted(&mut self, quote: u8, backslash_escapes: bool) {
        self.pos += 1;
        while self.pos < self.bytes.len() {
            let c = self.bytes[self.pos];
            if backslash_escapes && c == b'\\' {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            if c == quote {
                if self.peek(0) == quote {
                    self.pos += 1;
                    continue;
                }
                return;
            }
        }
    }

    fn quoted_identifier(&mut self) -> Token<'a> {
        let start = self.pos + 1;
        self.skip_quoted(b'"', false);
        let end = self.pos.saturating_sub(1).max(start);
        let name = self.sql.get(start..end).unwrap_or("");
        if name.contains('"') {
            return Token::Quoted(name.replace("\"\"", "\"").into());
        }
        Token::Quoted(name.into())
    }

    /// The `$tag$` opening at the current position, if it is one.
    fn dollar_tag(&self) -> Option<&str> {
        let rest = self.sql.get(self.pos + 1..)?;
        let end = rest.find('$')?;
        let tag = &rest[..end];
        let valid = tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
            && !tag.starts_with(|c: char| c.is_ascii_digit());
        valid.then(|| &self.sql[self.pos..self.pos + end + 2])
    }

    fn skip_dollar(&mut self) {
        let Some(tag) = self.dollar_tag().map(str::to_owned) else {
            return;
        };
        self.pos += tag.len();
        match self.sql.get(self.pos..).and_then(|rest| rest.find(&tag)) {
            Some(at) => self.pos += at + tag.len(),
            None => self.pos = self.bytes.len(),
        }
    }

    fn word(&mut self) -> Token<'a> {
        let start = self.pos;
        let escape_string = matches!(self.peek(0), b'e' | b'E') && self.peek(1) == b'\'';
        if escape_string {
            self.pos += 1;
            self.skip_quoted(b'\'', true);
            return Token::Other;
        }

        while self.pos < self.bytes.len() {
            let c = self.bytes[self.pos];
            let part =
                c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'.' || c >= 0x80;
            if !part {
                break;
            }
            self.pos += 1;
        }
        Token::Word(self.sql.get(start..self.pos).unwrap_or(""))
    }
}
