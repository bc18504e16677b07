//! From an authenticated-to-be client to a ready session: route to a tenant, authenticate,
//! work out the parameters PostgreSQL would report for this client's settings, and send
//! `ParameterStatus`, our own `BackendKeyData` and `ReadyForQuery`.
//!
//! The reported values come from a real backend that applied the client's settings, so they
//! are exactly what PostgreSQL would say (`DateStyle=ISO` comes back as `ISO, MDY`). The
//! answer is cached per tenant pool and settings, so most logins need no backend at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::auth::{self, AuthError};
use super::session::Session;
use super::startup::{NegotiateError, StartupRequest};
use super::state::ClientState;
use super::stream::ClientStream;
use super::support;
use crate::backend::conn::{ItemKind, SessionItems};
use crate::backend::sync::{self, SETTABLE, quote_literal};
use crate::config::Config;
use crate::pool::{Lease, PoolError, TenantPool};
use crate::protocol::{ClientError, ErrorKind, message, sqlstate};
use crate::server::Shared;
use crate::tenant;

/// Why a login did not produce a session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Negotiation failed.
    #[error(transparent)]
    Negotiate(#[from] NegotiateError),
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// We refused the login with this error (already sent).
    #[error("{}", .0.message)]
    Refused(ClientError),
    /// The socket failed.
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What an unknown user's or tenant's decoy salt is derived from: the user and the tenant
/// name the login gives first, or the tenant it was routed to. A real tenant's salt depends
/// on its name and the user only, so must the decoy's.
fn decoy_seed(
    config: &Config,
    request: &StartupRequest,
    server_name: Option<&str>,
    routed: Option<&str>,
) -> String {
    let asked = routed.or_else(|| tenant::first_name(config, request, server_name));
    format!("{}\0{}", request.user, asked.unwrap_or_default())
}

/// Authenticates the client and prepares its session.
pub async fn login(
    shared: &Arc<Shared>,
    config: &Config,
    mut stream: ClientStream,
    request: StartupRequest,
) -> Result<Session, LoginError> {
    let tenant = tenant::route(config, &request, stream.server_name());
    let (verifier, as_admin) = match tenant.as_ref().and_then(|t| t.users.get(&request.user)) {
        Some(verifier) => (Some(verifier.clone()), false),
        None => match config.admins.get(&request.user) {
            Some(verifier) if tenant.is_some() => (Some(verifier.clone()), true),
            _ => (None, false),
        },
    };

    let routed = tenant.as_ref().map(|t| t.name.as_str());
    let decoy_seed = decoy_seed(config, &request, stream.server_name(), routed);
    if let Err(error) =
        auth::authenticate(&mut stream, verifier, &decoy_seed, &shared.decoy_secret).await
    {
        auth::send_failure(&mut stream, &request.user).await;
        return Err(error.into());
    }
    // Authentication can take a while; a reload meanwhile may have changed or removed the
    // tenant, so the rest of the login uses the configuration as it is now.
    let config = &shared.config();
    let Some(tenant) = tenant.and_then(|t| config.tenants.get(&t.name).cloned()) else {
        auth::send_failure(&mut stream, &request.user).await;
        return Err(AuthError::Unknown.into());
    };

    let span = tracing::Span::current();
    span.record("tenant", tenant.name.as_str());
    span.record("user", request.user.as_str());

    if tenant.suspended {
        return Err(refuse(&mut stream, suspended(&tenant.name)).await);
    }
    let support = match as_admin {
        true => {
            let addr = stream.peer_addr().map(|a| a.to_string());
            match support::start(shared, &request.user, &tenant.name, addr).await {
                Ok(support) => Some(support),
                Err(error) => return Err(refuse(&mut stream, error).await),
            }
        }
        false => None,
    };

    let mut pool = shared.pools.for_tenant(&tenant, config);
    let place = match pool.governor.admit_client() {
        Ok(place) => place,
        Err(error) => return Err(refuse(&mut stream, error).await),
    };
    let state = match client_state(shared, &mut pool, config, &request).await {
        Ok(state) => state,
        Err(error) => return Err(refuse(&mut stream, error).await),
    };

    let cancel = shared.cancels.register();
    greet(&mut stream, &state.reported, cancel.pid, cancel.secret).await?;

    crate::metrics::login("ok");
    tracing::info!(pool_mode = ?tenant.pool_mode, "session started");
    let session = Session::new(shared.clone(), pool, stream, state, cancel, place);
    Ok(session.with_support(support))
}

/// The refusal for a login to a suspended tenant, after the client proved who it is.
pub fn suspended(tenant: &str) -> ClientError {
    ClientError::fatal(
        ErrorKind::Config,
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("tenant \"{tenant}\" is suspended"),
    )
}

async fn refuse(stream: &mut ClientStream, error: ClientError) -> LoginError {
    let mut out = BytesMut::new();
    error.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    LoginError::Refused(error)
}

/// Sorts the client's settings and learns the parameters PostgreSQL reports for them.
async fn client_state(
    shared: &Shared,
    pool: &mut Arc<TenantPool>,
    config: &Config,
    request: &StartupRequest,
) -> Result<ClientState, ClientError> {
    let (wants, items) = sort_settings(&request.settings)?;
    // Settings PostgreSQL accepted once need no backend to be checked again.
    let key: Vec<(String, String)> = {
        let mut k: Vec<_> = wants.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
        k.sort();
        k.extend(items.values().map(|sql| (String::new(), sql.clone())));
        k
    };

    let reported = match pool.cached_login_params(&key) {
        Some(reported) => reported,
        None => {
            let reported = apply_on_backend(shared, pool, config, &wants, &items).await?;
            pool.cache_login_params(key, reported.clone());
            reported
        }
    };

    Ok(ClientState::new(reported, items))
}

/// Splits settings into reported parameters and session items. `search_path` is dropped:
/// the tenant's schema is pinned and a client cannot override it at login.
fn sort_settings(
    settings: &[(String, String)],
) -> Result<(HashMap<String, String>, SessionItems), ClientError> {
    let mut wants = HashMap::new();
    let mut items = SessionItems::new();

    for (name, value) in settings {
        let lower = name.to_ascii_lowercase();
        if lower == "search_path" {
            tracing::debug!("client search_path ignored: the tenant schema is pinned");
            continue;
        }
        if let Some(canonical) = SETTABLE.iter().find(|s| s.eq_ignore_ascii_case(name)) {
            wants.insert((*canonical).to_owned(), value.clone());
            continue;
        }

        check_setting_name(name)?;
        let sql = format!("SET {lower} TO {}", quote_literal(value));
        items.insert((ItemKind::Setting, lower), sql);
    }
    Ok((wants, items))
}

fn check_setting_name(name: &str) -> Result<(), ClientError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        return Ok(());
    }
    let msg = format!("unrecognized configuration parameter \"{name}\"");
    Err(ClientError::fatal(
        ErrorKind::Client,
        sqlstate::UNDEFINED_OBJECT,
        msg,
    ))
}

/// Applies the client's settings on a real backend and reads back what it reports.
async fn apply_on_backend(
    shared: &Shared,
    pool: &mut Arc<TenantPool>,
    config: &Config,
    wants: &HashMap<String, String>,
    items: &SessionItems,
) -> Result<HashMap<String, String>, ClientError> {
    let fatal = |e: ClientError| ClientError {
        severity: crate::protocol::Severity::Fatal,
        ..e
    };
    let mut lease = acquire_current(shared, pool, config.proxy.query_wait_timeout)
        .await
        .map_err(|e| fatal(e.to_client()))?;

    // Parameters the client did not set take the values of a fresh backend, not whatever
    // the previous user of this connection left.
    let mut full = pool.defaults().cloned().unwrap_or_default();
    full.extend(wants.iter().map(|(k, v)| (k.clone(), v.clone())));

    let failures = match sync::sync_to(&mut lease.conn, &full, items).await {
        Ok(failures) => failures,
        Err(error) => {
            tracing::warn!(%error, "backend failed while applying login settings");
            pool.discard(lease);
            let msg = "the backend connection failed during login";
            return Err(ClientError::fatal(
                ErrorKind::Backend,
                sqlstate::CONNECTION_FAILURE,
                msg,
            ));
        }
    };

    let reported = lease.conn.reported.clone();
    pool.release(lease);

    match failures.into_iter().next() {
        None => Ok(reported),
        Some(failure) => Err(ClientError::fatal(
            ErrorKind::Client,
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid startup parameter: {}", failure.error),
        )),
    }
}

/// Leases a backend for the login. A pool retired meanwhile (a reload, or a new schema
/// generation while the login waited at the pause gate) is replaced by the tenant's current
/// one, so the login goes on there.
async fn acquire_current(
    shared: &Shared,
    pool: &mut Arc<TenantPool>,
    wait: Duration,
) -> Result<Lease, PoolError> {
    let tenant = match pool.acquire(wait).await {
        Err(PoolError::Closed(tenant)) => tenant,
        other => return other,
    };

    let config = shared.config();
    let Some(current) = config.tenants.get(&tenant).filter(|t| !t.suspended) else {
        return Err(PoolError::Closed(tenant));
    };
    *pool = shared.pools.for_tenant(current, &config);
    pool.acquire(wait).await
}

/// Sends the parameters, our cancel key and the first `ReadyForQuery`.
async fn greet(
    stream: &mut ClientStream,
    reported: &HashMap<String, String>,
    pid: i32,
    secret: i32,
) -> std::io::Result<()> {
    let mut names: Vec<&String> = reported.keys().collect();
    names.sort();

    let mut out = BytesMut::new();
    for name in names {
        message::put_parameter_status(&mut out, name, &reported[name]);
    }
    message::put_backend_key_data(&mut out, pid, secret);
    message::put_ready_for_query(&mut out, b'I');

    stream.write_all(&out).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_sorted_and_search_path_dropped() {
        let settings = vec![
            ("datestyle".to_owned(), "ISO".to_owned()),
            ("search_path".to_owned(), "other".to_owned()),
            ("statement_timeout".to_owned(), "5s".to_owned()),
        ];
        let (wants, items) = sort_settings(&settings).expect("valid");

        assert_eq!(wants.get("DateStyle").map(String::as_str), Some("ISO"));
        assert_eq!(items.len(), 1);
        let sql = &items[&(ItemKind::Setting, "statement_timeout".to_owned())];
        assert_eq!(sql, "SET statement_timeout TO $pgt$5s$pgt$");
    }

    #[test]
    fn setting_names_with_sql_are_refused() {
        let settings = vec![("x; drop table t".to_owned(), "1".to_owned())];
        assert!(sort_settings(&settings).is_err());
    }
}
