//! Keeping a running proxy in step with the catalog.
//!
//! Loop: connect as pgtenant's role, `LISTEN pgtenant_catalog` and `LISTEN pgtenant_pause`,
//! load the catalog and the pauses and apply them; then reload the catalog on every
//! `pgtenant_catalog` notification and the pauses on every `pgtenant_pause` one (a burst is
//! one reload), and both every `[catalog] reload_interval` as a safety net for missed ones.
//! The catalog is applied before the pauses, so a migration's new schema generation (which
//! commits before its pause is lifted) retires the tenant's pools before its gate opens. A
//! lost connection is retried with a backoff of up to 10 s while the proxy keeps serving
//! what it last loaded. The same connection writes the audit rows of admin sessions and the
//! acknowledgements of pauses.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::pauses::{self, Acks};
use super::{
    CHANNEL, CatalogError, PAUSE_CHANNEL, connect_error, describe, field, load, pg_config,
    query_error,
};
use crate::server::ServerHandle;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How every proxy's catalog connection is named, before its listen address. The migration
/// runner counts live proxies by it.
pub const WATCHER_PREFIX: &str = "pgtenant catalog watcher ";

/// The name of a proxy: its catalog connection's `application_name`.
pub fn proxy_name(listen_addr: &str) -> String {
    format!("{WATCHER_PREFIX}{listen_addr}")
}

/// Which channels spoke since the last look.
#[derive(Debug, Clone, Copy, Default)]
struct Heard {
    catalog: bool,
    pause: bool,
}

impl Heard {
    const BOTH: Self = Self {
        catalog: true,
        pause: true,
    };

    fn on(channel: &str) -> Self {
        Self {
            catalog: channel != PAUSE_CHANNEL,
            pause: channel == PAUSE_CHANNEL,
        }
    }

    fn with(self, other: Self) -> Self {
        Self {
            catalog: self.catalog || other.catalog,
            pause: self.pause || other.pause,
        }
    }
}

/// Before serving: creates or upgrades the catalog and applies it and its pauses once, so the
/// first logins already see its tenants and no paused tenant slips through. A proxy whose
/// catalog is unreachable at start does not start.
pub async fn initial(handle: &ServerHandle) -> Result<(), String> {
    let config = handle.config();
    let mut client = super::connect(&config).await.map_err(|e| e.to_string())?;
    super::install(&mut client)
        .await
        .map_err(|e| e.to_string())?;

    let snapshot = load(&client).await.map_err(|e| e.to_string())?;
    handle.apply_catalog(snapshot).map_err(|e| e.to_string())?;
    let rows = pauses::load(&client).await.map_err(|e| e.to_string())?;
    pauses::reconcile(handle.pauses(), &rows, None, false);
    Ok(())
}

/// Follows the catalog until the proxy shuts down.
pub async fn run(handle: ServerHandle) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = follow(&handle).await;
        handle.set_catalog_client(None);

        match result {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, retry_in = ?backoff, "catalog connection lost"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One catalog connection's life: `Ok` at shutdown, `Err` when the connection is lost.
async fn follow(handle: &ServerHandle) -> Result<(), CatalogError> {
    let config = handle.config();
    let Some(interval) = config.catalog.as_ref().map(|c| c.reload_interval) else {
        return Ok(());
    };
    let (acks, mut heard) = listen(handle).await?;
    refresh(handle, &acks.client).await?;
    refresh_pauses(handle, &acks, true).await?;

    let mut tick = tokio::time::interval(interval);
    tick.reset();
    let mut shutdown = handle.shutdown_signal();
    loop {
        let wake = tokio::select! {
            first = heard.recv() => drain(first.ok_or_else(lost)?, &mut heard),
            _ = tick.tick() => Heard::BOTH,
            _ = shutdown.changed() => return Ok(()),
        };

        if wake.catalog {
            refresh(handle, &acks.client).await?;
        }
        if wake.pause {
            refresh_pauses(handle, &acks, false).await?;
        }
    }
}

/// Folds every notification already queued into `first`.
fn drain(first: Heard, heard: &mut mpsc::UnboundedReceiver<Heard>) -> Heard {
    let mut all = first;
    while let Ok(more) = heard.try_recv() {
        all = all.with(more);
    }
    all
}

/// Connects, starts listening, and hands the client to the server for audit writes.
async fn listen(
    handle: &ServerHandle,
) -> Result<(Acks, mpsc::UnboundedReceiver<Heard>), CatalogError> {
    let config = handle.config();
    let name = proxy_name(&handle.listen_addr());
    let (client, mut connection) = pg_config(&config, &name)?
        .connect(NoTls)
        .await
        .map_err(|source| connect_error(&config, source))?;

    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Heard::on(n.channel())).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(error = %describe(&error), "catalog connection failed");
                    return;
                }
                None => return,
            }
        }
    });

    client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {PAUSE_CHANNEL}"))
        .await
        .map_err(query_error("listen for catalog changes"))?;
    let proxy = server_side_name(&client).await?;
    let client = Arc::new(client);
    handle.set_catalog_client(Some(client.clone()));
    Ok((Acks { client, proxy }, rx))
}

/// The `application_name` as the server keeps it (cut to 63 bytes), which is how the
/// migration runner sees this proxy in `pg_stat_activity`.
async fn server_side_name(client: &Client) -> Result<String, CatalogError> {
    let row = client
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .map_err(query_error("read the application name"))?;
    field(&row, 0, "application_name")
}

/// Loads the catalog and applies it; a snapshot the configuration refuses is logged and the
/// previous one stays. Only a failed query ends the connection.
async fn refresh(handle: &ServerHandle, client: &Client) -> Result<(), CatalogError> {
    let snapshot = match load(client).await {
        Ok(snapshot) => snapshot,
        Err(error @ CatalogError::BadRow { .. }) => {
            crate::metrics::catalog_reload("rejected");
            tracing::error!(%error, "catalog change rejected; the previous tenants stay");
            return Ok(());
        }
        Err(error) => {
            crate::metrics::catalog_reload("failed");
            return Err(error);
        }
    };

    match handle.apply_catalog(snapshot) {
        Ok(true) => crate::metrics::catalog_reload("applied"),
        Ok(false) => crate::metrics::catalog_reload("unchanged"),
        Err(error) => {
            crate::metrics::catalog_reload("rejected");
            tracing::error!(%error, "catalog change rejected; the previous tenants stay");
        }
    }
    Ok(())
}

/// Loads the pauses and makes the gates match; `fresh` on a new connection, so every pause
/// in force is acknowledged on it. Only a failed query ends the connection.
async fn refresh_pauses(
    handle: &ServerHandle,
    acks: &Acks,
    fresh: bool,
) -> Result<(), CatalogError> {
    let rows = match pauses::load(&acks.client).await {
        Ok(rows) => rows,
        Err(error @ CatalogError::BadRow { .. }) => {
            tracing::error!(%error, "pauses unreadable; the gates stay as they are");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    pauses::reconcile(handle.pauses(), &rows, Some(acks), fresh);
    Ok(())
}

fn lost() -> CatalogError {
    CatalogError::Lost
}
