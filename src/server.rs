//! The running proxy: shared state, the accept loop, reload and shutdown.
//!
//! Loops: the accept loop (one task per client connection), the idle reaper (every 5 s),
//! dynamic tiering, and with a catalog its watcher (`tenant::catalog::watch`).
//! Reload swaps the configuration and TLS settings atomically; sessions pick up the new
//! snapshot at their next login, pools whose tenant changed are retired as their
//! connections come back. With a catalog, the tenants are the catalog's last snapshot, kept
//! across file reloads. Shutdown stops accepting, lets sessions finish their transaction
//! up to the drain timeout, then ends the rest.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::frontend::listener;
use crate::pool::{PauseGates, Pools};
use crate::tenant::catalog::{self, Snapshot};
use crate::tls::{self, TlsError};

/// State every session can reach.
#[derive(Debug)]
pub struct Shared {
    config: RwLock<Arc<Config>>,
    tls: RwLock<Option<Arc<ServerConfig>>>,
    /// Tenant pools.
    pub pools: Pools,
    /// Client cancel keys.
    pub cancels: CancelRegistry,
    /// Secret behind decoy SCRAM verifiers.
    pub decoy_secret: [u8; 32],
    /// Flips to `true` when the proxy starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Sessions currently open.
    pub sessions: AtomicUsize,
    /// Signalled to end the drain at once (a second SIGINT/SIGTERM).
    force: tokio::sync::Notify,
    /// The catalog as last applied, and the connection that follows it.
    catalog: RwLock<CatalogState>,
}

/// What the server knows of the catalog.
#[derive(Debug, Default)]
struct CatalogState {
    /// The snapshot the current tenants came from.
    snapshot: Option<Snapshot>,
    /// The watcher's connection, for audit writes; `None` while it reconnects.
    client: Option<Arc<tokio_postgres::Client>>,
}

impl Shared {
    /// The current configuration snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The catalog connection, when one is up.
    pub fn catalog_client(&self) -> Option<Arc<tokio_postgres::Client>> {
        self.catalog.read().ok().and_then(|c| c.client.clone())
    }

    /// The current TLS settings, if TLS is on.
    pub fn tls(&self) -> Option<Arc<ServerConfig>> {
        self.tls
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// Why the server could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address is not available.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configuration refused the tenants.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Builds the TLS settings a configuration asks for.
fn load_tls(config: &Config) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    match &config.proxy.tls_files {
        Some((cert, key)) => Ok(Some(tls::server_config(cert, key)?)),
        None => Ok(None),
    }
}

/// Controls a running server from outside: reload and shutdown.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    stop: Arc<watch::Sender<bool>>,
    addr: Option<SocketAddr>,
}

impl ServerHandle {
    /// Applies a new configuration file; on error the old one stays. With a catalog, the
    /// tenants stay the catalog's.
    pub fn reload(&self, config: Config) -> Result<(), ServerError> {
        let snapshot = self
            .shared
            .catalog
            .read()
            .ok()
            .and_then(|c| c.snapshot.clone());
        let config = match (&config.catalog, snapshot) {
            (Some(_), Some(snapshot)) => {
                config.with_tenants(&snapshot.tenants, &snapshot.admins)?
            }
            _ => config,
        };
        self.swap(config)?;
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Serves the tenants of a new catalog snapshot; on error the previous ones stay.
    /// Returns whether anything changed.
    pub fn apply_catalog(&self, snapshot: Snapshot) -> Result<bool, ServerError> {
        let unchanged = self
            .shared
            .catalog
            .read()
            .is_ok_and(|c| c.snapshot.as_ref() == Some(&snapshot));
        if unchanged {
            return Ok(false);
        }

        let config = self
            .shared
            .config()
            .with_tenants(&snapshot.tenants, &snapshot.admins)?;
        self.swap(config)?;
        tracing::info!(tenants = snapshot.tenants.len(), "catalog applied");
        if let Ok(mut state) = self.shared.catalog.write() {
            state.snapshot = Some(snapshot);
        }
        Ok(true)
    }

    /// Gives the server the watcher's connection (or takes it away).
    pub fn set_catalog_client(&self, client: Option<Arc<tokio_postgres::Client>>) {
        if let Ok(mut state) = self.shared.catalog.write() {
            state.client = client;
        }
    }

    /// The current configuration snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config()
    }

    /// Every tenant's pause gate.
    pub fn pauses(&self) -> &PauseGates {
        &self.shared.pools.pauses
    }

    /// The address the proxy listens on, as text (`?` if the socket cannot tell).
    pub fn listen_addr(&self) -> String {
        self.addr.map_or_else(|| "?".into(), |a| a.to_string())
    }

    /// Flips to `true` when the proxy starts shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.clone()
    }

    fn swap(&self, config: Config) -> Result<(), ServerError> {
        let tls = load_tls(&config)?;
        let config = Arc::new(config);

        // The new snapshot first, so a login resolving its tenant now sees the new pools'
        // configuration rather than recreating a pool from the old one.
        if let Ok(mut slot) = self.shared.tls.write() {
            *slot = tls;
        }
        if let Ok(mut slot) = self.shared.config.write() {
            *slot = config.clone();
        }
        self.shared.pools.apply(&config);
        Ok(())
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Ends the drain now: sessions still open are closed.
    pub fn shutdown_now(&self) {
        self.shutdown();
        self.shared.force.notify_one();
    }

    /// Sessions currently open.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.load(Ordering::Relaxed)
    }

    /// The tier `tenant` is in now (pinned or ranked), once it has been served.
    pub fn tier_of(&self, tenant: &str) -> Option<crate::config::Tier> {
        self.shared.pools.governors.get(tenant).map(|g| g.tier())
    }
}

/// A bound, not yet running, proxy.
pub struct Server {
    listener: TcpListener,
    handle: ServerHandle,
}

impl Server {
    /// Binds the listener and loads TLS.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let tls = load_tls(&config)?;
        let listener = TcpListener::bind(&config.proxy.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.proxy.listen.clone(),
                source,
            })?;

        let (stop, shutdown) = watch::channel(false);
        let pools = Pools::new(&config);
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(config)),
            tls: RwLock::new(tls),
            pools,
            cancels: CancelRegistry::default(),
            decoy_secret: crate::frontend::scram::decoy_secret(),
            shutdown,
            sessions: AtomicUsize::new(0),
            force: tokio::sync::Notify::new(),
            catalog: RwLock::new(CatalogState::default()),
        });
        let handle = ServerHandle {
            shared,
            stop: Arc::new(stop),
            addr: listener.local_addr().ok(),
        };
        Ok(Self { listener, handle })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle for reload and shutdown.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Accepts clients until shutdown, then drains.
    pub async fn run(self) {
        let shared = self.handle.shared.clone();
        let mut shutdown = shared.shutdown.clone();
        let mut sessions = JoinSet::new();
        let reaper = tokio::spawn(reap_idle(shared.clone()));
        let tiering = tokio::spawn(crate::pool::tiering::run(shared.clone()));
        let watcher = shared
            .config()
            .catalog
            .is_some()
            .then(|| tokio::spawn(catalog::watch::run(self.handle.clone())));

        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        sessions.spawn(listener::serve_connection(shared.clone(), tcp, addr));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                _ = shutdown.changed() => break,
            }
        }

        drop(self.listener);
        drain(&shared, sessions).await;
        reaper.abort();
        tiering.abort();
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        shared.pools.close_all();
    }
}

async fn drain(shared: &Shared, mut sessions: JoinSet<()>) {
    let limit = shared.config().proxy.shutdown_timeout;
    tracing::info!(
        sessions = sessions.len(),
        ?limit,
        "shutting down: draining sessions"
    );

    let all_done = async { while sessions.join_next().await.is_some() {} };
    let finished = tokio::select! {
        done = tokio::time::timeout(limit, all_done) => done.is_ok(),
        _ = shared.force.notified() => false,
    };

    if !finished {
        tracing::warn!(
            left = sessions.len(),
            "drain timeout reached; closing remaining sessions"
        );
        sessions.shutdown().await;
    }
}

async fn reap_idle(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        shared.pools.reap_idle();
    }
}
