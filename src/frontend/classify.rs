//! Reads SQL text just far enough to know whether a statement changes session state that
//! would outlive the transaction on a pooled backend, and what to do about it.
//!
//! The lexer understands quotes, `E''` strings, dollar quotes and both comment styles, so a
//! keyword inside a string never triggers anything. It errs on the safe side: anything it
//! cannot place precisely pins the client to its backend.

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::backend::conn::ItemKind;
use lexer::{Lexer, Token};

/// What a statement does to session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing that outlives the transaction, or only reported parameters, which the proxy
    /// tracks through `ParameterStatus`.
    None,
    /// State the proxy cannot carry between backends: keep this backend for the session.
    Pin(&'static str),
    /// Once it succeeds, remember `sql` to recreate the item on other backends.
    SetItem {
        /// Setting or prepared statement.
        kind: ItemKind,
        /// Lower-case name.
        name: String,
        /// The statement, replayed as is.
        sql: String,
    },
    /// Once it succeeds, forget the item.
    ResetItem {
        /// Setting or prepared statement.
        kind: ItemKind,
        /// Lower-case name.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
}

impl Effect {
    /// Whether a ROLLBACK of the enclosing transaction block undoes this effect. `PREPARE`
    /// and `DEALLOCATE` are not transactional in PostgreSQL; settings are.
    pub fn is_transactional(&self) -> bool {
        match self {
            Self::SetItem { kind, .. } | Self::ResetItem { kind, .. } => *kind == ItemKind::Setting,
            Self::ResetAll => true,
            _ => false,
        }
    }
}

/// Parameters PostgreSQL reports with `ParameterStatus`; a `SET` of these needs no replay.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "default_transaction_read_only",
    "intervalstyle",
    "standard_conforming_strings",
    "timezone",
];

/// Functions whose effect outlives the transaction.
const SESSION_FUNCTIONS: &[(&str, &str)] = &[
    ("pg_advisory_lock", "session advisory lock"),
    ("pg_advisory_lock_shared", "session advisory lock"),
    ("pg_try_advisory_lock", "session advisory lock"),
    ("pg_try_advisory_lock_shared", "session advisory lock"),
    ("set_config", "set_config()"),
    ("pg_temp", "temporary object"),
    ("dblink_connect", "dblink connection"),
];

/// Whether `name` is a parameter PostgreSQL reports to clients.
pub fn is_reported(name: &str) -> bool {
    REPORTED.contains(&name.to_ascii_lowercase().as_str())
}

/// SQL text from the wire. Valid UTF-8, the rule, is borrowed after one fast check;
/// anything else is read with replacement characters, which never form a keyword.
pub fn sql_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Classifies the text of a simple `Query`.
pub fn classify_query(sql: &str) -> Effect {
    let unchecked = classify_checked(sql, |_, _| Ok::<(), std::convert::Infallible>(()));
    match unchecked {
        Ok(effect) => effect,
        Err(never) => match never {},
    }
}

/// Classifies `sql` in the same single pass that lets `check` refuse a statement: `check`
/// sees the text and folded words of every statement that is not plainly free of session
/// effects (a `LISTEN`, a `SET`, a call of a session function such as `set_config`, …).
/// Plain statements (`SELECT`, `INSERT`, … calling no session function) are not shown.
pub fn classify_checked<E>(
    sql: &str,
    mut check: impl FnMut(&str, &[String]) -> Result<(), E>,
) -> Result<Effect, E> {
    let mut effects = Combined::default();
    let mut refused = None;
    for_each_statement(sql, |raw| {
        if refused.is_some() {
            return;
        }
        if is_plain(raw) {
            effects.add(Effect::None);
            return;
        }

        let statement = fold(raw);
        match check(statement.text, &statement.words) {
            Ok(()) => effects.add(classify_one(&statement)),
            Err(error) => refused = Some(error),
        }
    });

    match refused {
        Some(error) => Err(error),
        None => Ok(effects.finish()),
    }
}

/// The first statement of `sql` that opens or ends a transaction block (`BEGIN`,
/// `COMMIT`, `ROLLBACK`, `END`, `ABORT`, `START TRANSACTION`, `PREPARE TRANSACTION`), as
/// its first two words. SQL that pgtenant runs inside a transaction of its own, such as a
/// migration file, must contain none: it would commit half of the work.
pub fn transaction_control(sql: &str) -> Option<String> {
    let mut found = None;
    for_each_statement(sql, |raw| {
        if found.is_none() && ends_transaction(raw) {
            let words: Vec<&str> = raw.words.iter().take(2).map(Word::text).collect();
            found = Some(words.join(" "));
        }
    });
    found
}

/// Every statement of `sql` as its words, folded as PostgreSQL reads them, with a `.` for
/// each dot so qualified names stay recognisable; strings, numbers and other punctuation are
/// left out. For tools that read SQL files (the migration health checks), not the hot path.
pub fn statement_words(sql: &str) -> Vec<Vec<String>> {
    let mut lexer = Lexer::new(sql);
    let mut statements = Vec::new();
    let mut words = Vec::new();

    while let Some(token) = lexer.next_token() {
        match token {
            Token::Semicolon if !words.is_empty() => statements.push(std::mem::take(&mut words)),
            Token::Semicolon => {}
            Token::Word(w) => words.push(w.to_ascii_lowercase()),
            Token::Quoted(w) => words.push(w.into_owned()),
            Token::Other if lexer.previous_byte() == Some(b'.') => words.push(".".to_owned()),
            Token::Other => {}
        }
    }
    if !words.is_empty() {
        statements.push(words);
    }
    statements
}

fn ends_transaction(raw: &RawStatement<'_>) -> bool {
    let word = |i: usize| raw.words.get(i);
    let is = |i: usize, keyword: &str| word(i).is_some_and(|w| w.is(keyword));

    let savepoint_rollback = is(0, "rollback") && (is(1, "to") || is(2, "to"));
    let control = ["begin", "start", "commit", "end", "rollback", "abort"]
        .iter()
        .any(|k| is(0, k));
    (control && !savepoint_rollback) || (is(0, "prepare") && is(1, "transaction"))
}

/// The effect of several statements in one query, folded as they are classified.
/// Connection-reset batches (such as a driver's `SELECT pg_advisory_unlock_all(); CLOSE
/// ALL; UNLISTEN *; RESET ALL;`) are tracked like their single-statement forms; any other
/// session change pins.
#[derive(Default)]
struct Combined {
    /// Statements seen.
    statements: usize,
    /// The first effect other than `None`.
    first: Option<Effect>,
    /// How many effects other than `None` there were.
    changes: usize,
    /// Whether every one of them is a reset.
    resets_only: bool,
}

impl Combined {
    fn add(&mut self, effect: Effect) {
        self.statements += 1;
        if effect == Effect::None {
            return;
        }

        let reset = matches!(
            effect,
            Effect::ResetAll | Effect::DeallocateAll | Effect::DiscardAll
        );
        self.resets_only = reset && (self.changes == 0 || self.resets_only);
        self.changes += 1;
        if self.first.is_none() {
            self.first = Some(effect);
        }
    }

    fn finish(self) -> Effect {
        let Some(first) = self.first else {
            return Effect::None;
        };
        if self.statements == 1 || (self.resets_only && self.changes == 1) {
            return first;
        }
        if self.resets_only {
            return Effect::DiscardAll;
        }
        Effect::Pin("session change inside a multi-statement query")
    }
}

/// Classifies the text of a `Parse`. The relay tracks the effect when the statement is the
/// unnamed one executed in the same batch (how drivers send `SET`); otherwise it pins.
pub fn classify_parse(sql: &str) -> Effect {
    classify_query(sql)
}

/// One statement, already split and with comments removed from its tokens; its words
/// folded to lower case as PostgreSQL folds unquoted identifiers.
struct Statement<'a> {
    text: &'a str,
    words: Vec<String>,
}

/// One statement as written: its words unfolded, kept inline so that the common case
/// allocates nothing.
struct RawStatement<'a> {
    text: &'a str,
    words: SmallVec<[Word<'a>; LEADING_WORDS + 2]>,
}

/// A word of a statement as written.
#[derive(Clone)]
enum Word<'a> {
    /// Unquoted: PostgreSQL folds it to lower case.
    Plain(&'a str),
    /// A quoted identifier: its case is kept.
    Quoted(Cow<'a, str>),
}

impl Word<'_> {
    /// Whether this is the unquoted keyword `keyword` (given in lower case).
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Self::Plain(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// The word as PostgreSQL reads it.
    fn folded(&self) -> String {
        match self {
            Self::Plain(w) => w.to_ascii_lowercase(),
            Self::Quoted(w) => w.clone().into_owned(),
        }
    }

    fn text(&self) -> &str {
        match self {
            Self::Plain(w) => w,
            Self::Quoted(w) => w,
        }
    }
}

/// First words of statements that can never change session state by themselves; only the
/// session functions and `SELECT ... INTO TEMP` need a closer look among them.
const PLAIN_FIRST_WORDS: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "with",
    "values",
    "table",
    "begin",
    "start",
    "commit",
    "rollback",
    "end",
    "savepoint",
    "release",
    "explain",
    "fetch",
    "move",
];

/// A statement with its words folded, for the full classification.
fn fold<'a>(raw: &RawStatement<'a>) -> Statement<'a> {
    Statement {
        text: raw.text,
        words: raw.words.iter().map(Word::folded).collect(),
    }
}

/// Whether the statement certainly has no session effect. Errs on the side of `false`:
/// the full classification then decides.
fn is_plain(raw: &RawStatement<'_>) -> bool {
    let Some(first) = raw.words.first() else {
        return true;
    };
    if !PLAIN_FIRST_WORDS.iter().any(|k| first.is(k)) {
        return false;
    }

    let into_temp = raw.words.windows(2).any(|pair| {
        pair[0].text().eq_ignore_ascii_case("into")
            && ["temp", "temporary"]
                .iter()
                .any(|t| pair[1].text().eq_ignore_ascii_case(t))
    });
    !into_temp && !raw.words.iter().any(|w| may_be_session_function(w.text()))
}

/// Whether `word`, compared without regard to case, could name a session function.
fn may_be_session_function(word: &str) -> bool {
    let bare = unqualified(word);

    // Every session function, and `pg_temp`, starts with one of these letters.
    let first = |w: &str| w.as_bytes().first().map(u8::to_ascii_lowercase);
    if !matches!(first(bare), Some(b'p' | b's' | b'd')) && first(word) != Some(b'p') {
        return false;
    }
    let starts_temp = |w: &str| {
        w.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("pg_temp"))
    };
    starts_temp(word)
        || starts_temp(bare)
        || SESSION_FUNCTIONS
            .iter()
            .any(|(f, _)| f.eq_ignore_ascii_case(bare))
}

fn classify_one(s: &Statement<'_>) -> Effect {
    if let Some(reason) = session_function(&s.words) {
        return Effect::Pin(reason);
    }

    let w = |i: usize| s.words.get(i).map(String::as_str).unwrap_or("");
    match w(0) {
        "set" => classify_set(s, &w),
        "reset" => classify_reset(&w),
        "prepare" if w(1) != "transaction" => Effect::SetItem {
            kind: ItemKind::Prepared,
            name: w(1).to_owned(),
            sql: s.text.trim().to_owned(),
        },
        "deallocate" => classify_deallocate(&w),
        "discard" if w(1) == "all" => Effect::DiscardAll,
        "discard" if w(1) == "temp" || w(1) == "temporary" => Effect::None,
        "listen" => Effect::Pin("LISTEN"),
        "do" => Effect::Pin("DO block"),
        "load" => Effect::Pin("LOAD"),
        "declare" if s.words.iter().any(|t| t == "hold") => Effect::Pin("WITH HOLD cursor"),
        "create" if has_temp(&s.words) => Effect::Pin("temporary object"),
        "select" if has_into_temp(&s.words) => Effect::Pin("temporary object"),
        _ => Effect::None,
    }
}

fn classify_set<'w>(s: &Statement<'_>, w: &impl Fn(usize) -> &'w str) -> Effect {
    let (name_at, scope) = match w(1) {
        "local" => return Effect::None,
        "session" => (2, true),
        _ => (1, false),
    };

    let name = match w(name_at) {
        "role" => return Effect::Pin("SET ROLE"),
        "authorization" if scope => return Effect::Pin("SET SESSION AUTHORIZATION"),
        "transaction" | "constraints" => return Effect::None,
        "characteristics" => return Effect::Pin("SET SESSION CHARACTERISTICS"),
        "time" if w(name_at + 1) == "zone" => "timezone",
        "names" => "client_encoding",
        other => other,
    };

    if name.is_empty() {
        return Effect::None;
    }
    if is_reported(name) {
        return Effect::None;
    }
    Effect::SetItem {
        kind: ItemKind::Setting,
        name: name.to_ascii_lowercase(),
        sql: s.text.trim().to_owned(),
    }
}

fn classify_reset<'w>(w: &impl Fn(usize) -> &'w str) -> Effect {
    match w(1) {
        "all" => Effect::ResetAll,
        "role" => Effect::Pin("RESET ROLE"),
        "session" => Effect::Pin("RESET SESSION AUTHORIZATION"),
        "time" => Effect::None,
        name if is_reported(name) || name.is_empty() => Effect::None,
        name => Effect::ResetItem {
            kind: ItemKind::Setting,
            name: name.to_ascii_lowercase(),
        },
    }
}

fn classify_deallocate<'w>(w: &impl Fn(usize) -> &'w str) -> Effect {
    let at = if w(1) == "prepare" { 2 } else { 1 };
    match w(at) {
        "all" => Effect::DeallocateAll,
        "" => Effect::None,
        name => Effect::ResetItem {
            kind: ItemKind::Prepared,
            name: name.to_owned(),
        },
    }
}

fn session_function(words: &[String]) -> Option<&'static str> {
    words.iter().find_map(|word| {
        let bare = unqualified(word);
        let schema_temp = word.starts_with("pg_temp");
        SESSION_FUNCTIONS
            .iter()
            .find(|(f, _)| *f == bare || (schema_temp && *f == "pg_temp"))
            .map(|(_, why)| *why)
    })
}

fn has_temp(words: &[String]) -> bool {
    words
        .iter()
        .take(4)
        .any(|w| w == "temp" || w == "temporary")
}

fn has_into_temp(words: &[String]) -> bool {
    words
        .windows(2)
        .any(|p| p[0] == "into" && (p[1] == "temp" || p[1] == "temporary"))
}

/// Words kept from the start of each statement; enough for every keyword rule above.
const LEADING_WORDS: usize = 6;

/// The name after the last dot of a qualified name (`pg_catalog.set_config` →
/// `set_config`).
fn unqualified(word: &str) -> &str {
    match word.bytes().rposition(|b| b == b'.') {
        Some(dot) => &word[dot + 1..],
        None => word,
    }
}

/// Later words that still matter: session functions and the `WITH HOLD` / `INTO TEMP` markers.
fn is_interesting(word: &str) -> bool {
    let bare = unqualified(word);

    // Every interesting word starts with one of these letters; most words do not.
    let first = bare.as_bytes().first().map(u8::to_ascii_lowercase);
    let schema_pg = word.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("pg_"));
    if !matches!(first, Some(b'p' | b's' | b'd' | b'h' | b'i' | b't')) && !schema_pg {
        return false;
    }
    let starts_temp = |w: &str| {
        w.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("pg_temp"))
    };
    starts_temp(bare)
        || starts_temp(word)
        || SESSION_FUNCTIONS
            .iter()
            .any(|(f, _)| f.eq_ignore_ascii_case(bare))
        || ["hold", "into", "temp", "temporary"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(bare))
}

/// Splits SQL into statements at top-level semicolons and hands each to `visit` with its
/// word tokens: the first few of each statement and any later one that can matter.
/// Statements without words (empty ones between semicolons) are skipped.
fn for_each_statement<'a>(sql: &'a str, mut visit: impl FnMut(&RawStatement<'a>)) {
    let mut lexer = Lexer::new(sql);
    let mut start = 0;
    let mut words = SmallVec::new();

    while let Some(token) = lexer.next_token() {
        match token {
            Token::Semicolon => {
                let text = &sql[start..lexer.pos - 1];
                visit_statement(&mut visit, text, &mut words);
                start = lexer.pos;
            }
            Token::Word(w) if words.len() < LEADING_WORDS || is_interesting(w) => {
                words.push(Word::Plain(w))
            }
            Token::Quoted(w) if words.len() < LEADING_WORDS => words.push(Word::Quoted(w)),
            Token::Word(_) | Token::Quoted(_) | Token::Other => {}
        }
    }
    visit_statement(&mut visit, &sql[start..], &mut words);
}

fn visit_statement<'a>(
    visit: &mut impl FnMut(&RawStatement<'a>),
    text: &'a str,
    words: &mut SmallVec<[Word<'a>; LEADING_WORDS + 2]>,
) {
    if words.is_empty() {
        return;
    }
    let statement = RawStatement {
        text,
        words: std::mem::take(words),
    };
    visit(&statement);
}

mod lexer;

#[cfg(test)]
mod tests;
