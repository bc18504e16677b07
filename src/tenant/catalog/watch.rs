//! Keeping a running proxy in step with the catalog.
//!
//! Loop: connect as pgtenant's role, `LISTEN pgtenant_catalog`, load the catalog and apply
//! it; then reload on every notification (a burst of them is one reload) and every
//! `[catalog] reload_interval` as a safety net for missed ones. A lost connection is retried
//! with a backoff of up to 10 s while the proxy keeps serving what it last loaded. The same
//! connection writes the audit rows of admin sessions.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{CHANNEL, CatalogError, connect_error, describe, load, pg_config, query_error};
use crate::server::ServerHandle;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Before serving: creates or upgrades the catalog and applies it once, so the first logins
/// already see its tenants. A proxy whose catalog is unreachable at start does not start.
pub async fn initial(handle: &ServerHandle) -> Result<(), String> {
    let config = handle.config();
    let mut client = super::connect(&config).await.map_err(|e| e.to_string())?;
    super::install(&mut client)
        .await
        .map_err(|e| e.to_string())?;

    let snapshot = load(&client).await.map_err(|e| e.to_string())?;
    handle.apply_catalog(snapshot).map_err(|e| e.to_string())?;
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
    let (client, mut changes) = listen(handle).await?;
    refresh(handle, &client).await?;

    let mut tick = tokio::time::interval(interval);
    tick.reset();
    let mut shutdown = handle.shutdown_signal();
    loop {
        tokio::select! {
            change = changes.recv() => {
                change.ok_or_else(lost)?;
                while changes.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        refresh(handle, &client).await?;
    }
}

/// Connects, starts listening, and hands the client to the server for audit writes.
async fn listen(
    handle: &ServerHandle,
) -> Result<(Arc<Client>, mpsc::UnboundedReceiver<()>), CatalogError> {
    let config = handle.config();
    let name = format!("pgtenant catalog watcher {}", handle.listen_addr());
    let (client, mut connection) = pg_config(&config, &name)?
        .connect(NoTls)
        .await
        .map_err(|source| connect_error(&config, source))?;

    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if tx.send(()).is_err() {
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
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(query_error("listen for catalog changes"))?;
    let client = Arc::new(client);
    handle.set_catalog_client(Some(client.clone()));
    Ok((client, rx))
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

fn lost() -> CatalogError {
    CatalogError::Lost
}
