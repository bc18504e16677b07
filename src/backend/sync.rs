//! Making a backend match the client it is about to serve, and cleaning it on release.
//!
//! Before a client's transaction runs on a backend, the reported parameters it set
//! (`DateStyle`, `TimeZone`, `application_name`, …) and its session items (other settings and
//! SQL `PREPARE`d statements) are applied, and whatever a previous client left is undone.
//! Each statement travels as its own `Query` in one write, so one failure does not hide the
//! others. Reset on release uses `DISCARD ALL`, which returns the connection to its login
//! state: the pinned `search_path` comes back because it was set through `options`.

use std::collections::HashMap;

use bytes::BytesMut;

use super::conn::{BackendConn, BackendIoError, ItemKind, SessionItems};
use crate::protocol::message;

/// Reported parameters a client may change and the proxy re-applies per backend.
pub const SETTABLE: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "default_transaction_read_only",
];

/// A statement that PostgreSQL refused while syncing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    /// The session item that could not be recreated, if it was one.
    pub item: Option<(ItemKind, String)>,
    /// SQLSTATE and message from the server.
    pub error: String,
    /// The failed statement was undoing a previous client's item.
    pub undo: bool,
}

/// What one sync statement is for.
enum Purpose {
    Parameter,
    Undo((ItemKind, String)),
    Apply((ItemKind, String), String),
}

/// Applies `reported` and `items` to `conn`. Returns items the server refused.
///
/// If something a previous client left cannot be undone, the connection is reset to its
/// login state with `DISCARD ALL` and the client's state applied from scratch.
pub async fn sync_to(
    conn: &mut BackendConn,
    reported: &HashMap<String, String>,
    items: &SessionItems,
) -> Result<Vec<SyncFailure>, BackendIoError> {
    let failures = run_plan(conn, reported, items).await?;
    if !failures.iter().any(|f| f.undo) {
        return Ok(failures);
    }

    tracing::warn!(
        backend = conn.id,
        "could not undo a previous client's state; resetting"
    );
    reset(conn).await?;
    run_plan(conn, reported, items).await
}

async fn run_plan(
    conn: &mut BackendConn,
    reported: &HashMap<String, String>,
    items: &SessionItems,
) -> Result<Vec<SyncFailure>, BackendIoError> {
    let plan = plan(conn, reported, items);
    if plan.is_empty() {
        return Ok(Vec::new());
    }

    // Simple queries destroy the unnamed statement, and the connection's state changes:
    // whoever leased it must not trust what it knew before.
    conn.unnamed = None;
    conn.fingerprint = None;

    let mut out = BytesMut::new();
    for (sql, _) in &plan {
        message::put_query(&mut out, sql);
    }
    conn.send(&out).await?;

    let mut failures = Vec::new();
    for (_, purpose) in plan {
        let error = read_until_ready(conn).await?;
        record(conn, purpose, error, &mut failures);
    }
    Ok(failures)
}

fn plan(
    conn: &BackendConn,
    reported: &HashMap<String, String>,
    items: &SessionItems,
) -> Vec<(String, Purpose)> {
    let mut plan = Vec::new();

    for name in SETTABLE {
        let (Some(want), have) = (reported.get(*name), conn.reported.get(*name)) else {
            continue;
        };
        if have != Some(want) {
            let sql = format!("SET \"{name}\" TO {}", quote_literal(want));
            plan.push((sql, Purpose::Parameter));
        }
    }

    for (key, sql) in &conn.items {
        if items.get(key) != Some(sql) {
            plan.push((undo_sql(key), Purpose::Undo(key.clone())));
        }
    }

    for (key, sql) in items {
        if conn.items.get(key) != Some(sql) {
            plan.push((sql.clone(), Purpose::Apply(key.clone(), sql.clone())));
        }
    }
    plan
}

fn undo_sql((kind, name): &(ItemKind, String)) -> String {
    let name = quote_ident(name);
    match kind {
        ItemKind::Setting => format!("RESET {name}"),
        ItemKind::Prepared => format!("DEALLOCATE {name}"),
    }
}

/// A double-quoted identifier. Item names are stored as PostgreSQL folded them (unquoted
/// names in lower case), so quoting never changes which object is meant.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn record(
    conn: &mut BackendConn,
    purpose: Purpose,
    error: Option<String>,
    failures: &mut Vec<SyncFailure>,
) {
    match (purpose, error) {
        (Purpose::Parameter, None) => {}
        (Purpose::Parameter, Some(error)) => failures.push(SyncFailure {
            item: None,
            error,
            undo: false,
        }),
        (Purpose::Undo(key), None) => {
            conn.items.remove(&key);
        }
        (Purpose::Undo(key), Some(error)) => failures.push(SyncFailure {
            item: Some(key),
            error,
            undo: true,
        }),
        (Purpose::Apply(key, sql), None) => {
            conn.items.insert(key, sql);
        }
        (Purpose::Apply(key, _), Some(error)) => {
            conn.items.remove(&key);
            failures.push(SyncFailure {
                item: Some(key),
                error,
                undo: false,
            });
        }
    }
}

/// Reads one statement's responses; returns its error text, if any.
async fn read_until_ready(conn: &mut BackendConn) -> Result<Option<String>, BackendIoError> {
    let mut error = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.first() {
            Some(b'Z') => {
                conn.status = message::ready_status(&frame).unwrap_or(b'I');
                return Ok(error);
            }
            Some(b'S') => conn.note_parameter(&frame),
            Some(b'E') => {
                let f = message::error_fields(&frame).unwrap_or_default();
                error = Some(format!("{} {}", f.code, f.message));
            }
            _ => {}
        }
    }
}

/// Returns the connection to its login state: ends any transaction, then `DISCARD ALL`.
pub async fn reset(conn: &mut BackendConn) -> Result<(), BackendIoError> {
    let mut out = BytesMut::new();
    let rollback = conn.status != b'I';
    if rollback {
        message::put_query(&mut out, "ROLLBACK");
    }
    message::put_query(&mut out, "DISCARD ALL");
    conn.send(&out).await?;

    if rollback {
        read_until_ready(conn).await?;
    }
    if let Some(error) = read_until_ready(conn).await? {
        return Err(BackendIoError::Protocol(format!(
            "DISCARD ALL failed: {error}"
        )));
    }

    conn.items.clear();
    conn.prepared.clear();
    conn.unnamed = None;
    conn.fingerprint = None;
    Ok(())
}

/// A string literal that means the same whatever `standard_conforming_strings` says.
pub fn quote_literal(value: &str) -> String {
    let mut tag = String::from("pgt");
    while value.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!("${tag}${value}${tag}$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_survives_quotes_and_dollar_tags() {
        assert_eq!(quote_literal("it's"), "$pgt$it's$pgt$");
        assert_eq!(quote_literal("a$pgt$b"), "$pgtx$a$pgt$b$pgtx$");
    }
}
