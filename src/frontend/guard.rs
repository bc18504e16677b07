//! What a tenant may not do through the proxy, whatever its database privileges allow.
//!
//! PostgreSQL notification channels are database-wide and carry no privileges, so the proxy
//! keeps each tenant to its own namespace: a channel equal to the tenant's name or starting
//! with `<tenant>_` or `<tenant>.`. `LISTEN`, `UNLISTEN` and `NOTIFY` on any other channel
//! are refused, and notifications on other channels are never delivered, however the backend
//! came to listen (a `DO` block or a function can `EXECUTE 'LISTEN ...'`). Statements that
//! change `pgtenant.tenant`, the setting row-level security policies read, are refused too.
//!
//! A refused statement is answered with an `ErrorResponse` of 42501 naming the channel or
//! the setting, and the session goes on.
//!
//! Names are compared after folding as PostgreSQL folds them: unquoted to lower case, quoted
//! as written. The check reads statement text only; SQL built at run time inside a function
//! or `DO` block is beyond it, which is why policies must also check the role (README,
//! "Isolation in depth").

use crate::frontend::classify;
use crate::protocol::{ClientError, ErrorKind, sqlstate};

/// The setting the backend's `options` pin and row-level security policies read.
const TENANT_SETTING: &str = "pgtenant.tenant";

/// Refuses `sql` when one of its statements reaches outside `tenant`'s namespace. The
/// relay runs [`check_statement`] inside its classification pass instead.
pub fn check(sql: &str, tenant: &str) -> Result<(), ClientError> {
    classify::classify_checked(sql, |text, words| check_statement(text, words, tenant)).map(drop)
}

/// Whether a `NotificationResponse` on `channel` may reach a client of `tenant`.
pub fn may_receive(channel: &[u8], tenant: &str) -> bool {
    in_namespace(&String::from_utf8_lossy(channel), tenant)
}

/// Refuses one statement (its text and folded words) that reaches outside `tenant`'s
/// namespace.
pub fn check_statement(text: &str, words: &[String], tenant: &str) -> Result<(), ClientError> {
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match w(0) {
        "listen" | "unlisten" | "notify" => check_channel(w(0), w(1), tenant),
        "set" | "reset" => check_set(words.get(1..).unwrap_or_default()),
        _ => check_set_config(text, words),
    }
}

/// `UNLISTEN *` and a missing name (a syntax error PostgreSQL reports) have no channel word.
fn check_channel(verb: &str, channel: &str, tenant: &str) -> Result<(), ClientError> {
    if channel.is_empty() || in_namespace(channel, tenant) {
        return Ok(());
    }
    let message = format!(
        "{} on channel \"{channel}\" is not allowed for tenant \"{tenant}\"",
        verb.to_ascii_uppercase()
    );
    let detail = format!(
        "Tenant \"{tenant}\" may use channel \"{tenant}\" and channels starting with \
         \"{tenant}_\" or \"{tenant}.\"."
    );
    Err(refusal(message).with_detail(detail))
}

fn in_namespace(channel: &str, tenant: &str) -> bool {
    match channel.strip_prefix(tenant) {
        Some(rest) => rest.is_empty() || rest.starts_with(['_', '.']),
        None => false,
    }
}

/// `SET [SESSION | LOCAL] pgtenant.tenant` and `RESET pgtenant.tenant`, also written with
/// quotes or spaces around the dot.
fn check_set(words: &[String]) -> Result<(), ClientError> {
    let name_at = usize::from(matches!(
        words.first().map(String::as_str),
        Some("session" | "local")
    ));
    let name = words.get(name_at).map(String::as_str).unwrap_or("");
    let next = words.get(name_at + 1).map(String::as_str).unwrap_or("");

    let names_it = name == TENANT_SETTING || (name == "pgtenant" && next == "tenant");
    if names_it {
        return Err(tenant_setting_refusal());
    }
    Ok(())
}

/// `set_config('pgtenant.tenant', ...)` anywhere in a statement.
fn check_set_config(text: &str, words: &[String]) -> Result<(), ClientError> {
    let calls = words
        .iter()
        .any(|w| w.rsplit('.').next() == Some("set_config"));
    if calls && text.to_ascii_lowercase().contains(TENANT_SETTING) {
        return Err(tenant_setting_refusal());
    }
    Ok(())
}

fn tenant_setting_refusal() -> ClientError {
    refusal("pgtenant.tenant is set by pgtenant and cannot be changed by the tenant")
        .with_detail("Row-level security policies rely on it naming the connected tenant.")
}

fn refusal(message: impl Into<String>) -> ClientError {
    ClientError::error(ErrorKind::Client, sqlstate::INSUFFICIENT_PRIVILEGE, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> bool {
        check(sql, "acme").is_err()
    }

    #[test]
    fn channels_outside_the_namespace_are_refused() {
        for sql in [
            "LISTEN globex_events",
            "listen GLOBEX",
            "NOTIFY globex_events, 'x'",
            "UNLISTEN globex",
            "LISTEN acmecorp",
            "LISTEN \"ACME_events\"",
            "select 1; LISTEN globex",
        ] {
            assert!(refused(sql), "{sql}");
        }
    }

    #[test]
    fn own_channels_pass() {
        for sql in [
            "LISTEN acme",
            "LISTEN ACME_Events",
            "LISTEN \"acme.orders\"",
            "NOTIFY acme_events, 'x'",
            "UNLISTEN *",
            "select 'LISTEN globex'",
        ] {
            assert!(!refused(sql), "{sql}");
        }
    }

    #[test]
    fn changes_of_the_tenant_setting_are_refused() {
        for sql in [
            "SET pgtenant.tenant = 'globex'",
            "set session PGTENANT.TENANT to globex",
            "SET LOCAL pgtenant.tenant = 'globex'",
            "SET \"pgtenant\".\"tenant\" = 'globex'",
            "SET pgtenant . tenant = 'globex'",
            "RESET pgtenant.tenant",
            "SELECT set_config('pgtenant.tenant', 'globex', false)",
            "select pg_catalog.set_config('PGTENANT.tenant', 'globex', true)",
        ] {
            assert!(refused(sql), "{sql}");
        }
        assert!(!refused("SHOW pgtenant.tenant"));
        assert!(!refused("SELECT current_setting('pgtenant.tenant')"));
        assert!(!refused("SET statement_timeout = 0"));
    }
}
