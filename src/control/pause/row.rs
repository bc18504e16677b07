//! The pause's own connection and its row: listening for acknowledgements, reading the
//! tenant's role, inserting the row and describing someone else's pause.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{GRACE, PauseError, PauseRequest};
use crate::config::Config;
use crate::tenant::catalog::{self, PAUSE_ACK_CHANNEL, connect_error, describe, field};

/// An acknowledgement heard on `pgtenant_pause_ack`.
#[derive(Debug)]
pub(super) struct Ack {
    /// The backend pid of the proxy's catalog connection.
    pub(super) pid: i32,
    /// The pause it acknowledges.
    pub(super) token: String,
    /// The proxy's name.
    pub(super) proxy: String,
}

/// Opens the pause's own connection and listens for acknowledgements on it.
pub(super) async fn listen(
    config: &Config,
    tenant: &str,
) -> Result<(Client, mpsc::UnboundedReceiver<Ack>), PauseError> {
    let name = format!("pgtenant pause {tenant}");
    let (client, mut connection) = catalog::pg_config(config, &name)?
        .connect(NoTls)
        .await
        .map_err(|source| connect_error(config, source))?;

    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == PAUSE_ACK_CHANNEL => {
                    let _ = tx.send(parse_ack(n.process_id(), n.payload()));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(error = %describe(&error), "pause connection failed");
                    return;
                }
            }
        }
    });

    client
        .batch_execute(&format!("LISTEN {PAUSE_ACK_CHANNEL}"))
        .await
        .map_err(|source| PauseError::Query {
            step: "listen for acknowledgements",
            tenant: tenant.to_owned(),
            source,
        })?;
    Ok((client, rx))
}

/// `<token> <proxy name>`, sent by the proxy whose catalog connection is `pid`.
fn parse_ack(pid: i32, payload: &str) -> Ack {
    let (token, proxy) = payload.split_once(' ').unwrap_or((payload, ""));
    Ack {
        pid,
        token: token.to_owned(),
        proxy: proxy.to_owned(),
    }
}

pub(super) async fn tenant_role(client: &Client, tenant: &str) -> Result<String, PauseError> {
    let row = client
        .query_opt(
            "SELECT role_name FROM pgtenant.tenants WHERE name = $1",
            &[&tenant],
        )
        .await
        .map_err(|source| PauseError::Query {
            step: "read the tenant",
            tenant: tenant.to_owned(),
            source,
        })?
        .ok_or_else(|| PauseError::UnknownTenant(tenant.to_owned()))?;
    Ok(field(&row, 0, &format!("tenant {tenant:?}"))?)
}

/// Inserts the row, replacing an expired one; someone else's pause in force is an error.
pub(super) async fn insert(
    client: &Client,
    request: &PauseRequest<'_>,
    token: &str,
) -> Result<(), PauseError> {
    let seconds = (request.max_pause + GRACE).as_secs_f64();
    let inserted = client
        .query_opt(
            "INSERT INTO pgtenant.pauses AS p (tenant, token, requested_by, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
             ON CONFLICT (tenant) DO UPDATE SET token = EXCLUDED.token, \
                 requested_by = EXCLUDED.requested_by, requested_at = EXCLUDED.requested_at, \
                 expires_at = EXCLUDED.expires_at \
             WHERE p.expires_at <= now() \
             RETURNING 1",
            &[&request.tenant, &token, &request.requested_by, &seconds],
        )
        .await
        .map_err(|source| PauseError::Query {
            step: "insert the pause",
            tenant: request.tenant.to_owned(),
            source,
        })?;

    match inserted {
        Some(_) => Ok(()),
        None => Err(held_by_another(client, request.tenant).await),
    }
}

/// The error for a tenant someone else has paused.
async fn held_by_another(client: &Client, tenant: &str) -> PauseError {
    let row = client
        .query_opt(
            "SELECT requested_by, GREATEST(0, EXTRACT(EPOCH FROM expires_at - now()))::float8 \
             FROM pgtenant.pauses WHERE tenant = $1",
            &[&tenant],
        )
        .await;
    let (requested_by, seconds) = match row {
        Ok(Some(row)) => (
            row.try_get::<_, String>(0).unwrap_or_default(),
            row.try_get::<_, f64>(1).unwrap_or_default(),
        ),
        _ => (String::from("?"), 0.0),
    };
    PauseError::AlreadyPaused {
        tenant: tenant.to_owned(),
        requested_by,
        expires_in: Duration::try_from_secs_f64(seconds).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_carry_token_and_proxy_name() {
        let ack = parse_ack(7, "k3y pgtenant catalog watcher 127.0.0.1:6432");
        assert_eq!(ack.pid, 7);
        assert_eq!(ack.token, "k3y");
        assert_eq!(ack.proxy, "pgtenant catalog watcher 127.0.0.1:6432");

        let bare = parse_ack(8, "lonely");
        assert_eq!((bare.token.as_str(), bare.proxy.as_str()), ("lonely", ""));
    }
}
