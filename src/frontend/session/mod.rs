//! A logged-in client's session: the transaction-pooling state machine.
//!
//! States: `Idle` (no backend; waiting for the client's next message), `Bound` (a backend is
//! leased; messages flow both ways and the pipeline tracks owed responses), and the end of
//! the session. In transaction mode the lease returns to the pool at `ReadyForQuery` with
//! status `I` once nothing is owed; in session mode, or once the client is pinned by state
//! that cannot move between backends, it is kept until the client leaves, then reset.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::state::ClientState;
use super::stream::ClientStream;
use super::support::SupportSession;
use crate::backend::conn::BackendIoError;
use crate::backend::pipeline::Pipeline;
use crate::backend::sync;
use crate::cancel::CancelKey;
use crate::metrics as m;
use crate::pool::{ClientPlace, Lease, PoolError, TenantPool};
use crate::protocol::frame::next_frame;
use crate::protocol::{ClientError, ErrorKind, message, sqlstate};
use crate::server::Shared;

mod bound;
mod teardown;

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Client socket failure.
    #[error("client i/o: {0}")]
    Client(#[from] std::io::Error),
    /// The client broke the protocol (FATAL sent as the session ends).
    #[error("client protocol violation: {0}")]
    ClientProtocol(String),
    /// The backend failed mid-transaction (FATAL sent).
    #[error("backend failure: {0}")]
    Backend(String),
    /// A proxy-raised FATAL (already sent).
    #[error("{}", .0.message)]
    Fatal(ClientError),
}

impl SessionError {
    /// The metric label.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Client(_) | Self::ClientProtocol(_) => ErrorKind::Client,
            Self::Backend(_) => ErrorKind::Backend,
            Self::Fatal(e) => e.kind,
        }
    }
}

/// Counters reported when the session ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionStats {
    /// Transactions run (backend leases).
    pub transactions: u64,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
}

/// What went wrong while bound, deciding what happens to the backend.
enum Fault {
    /// The backend failed: it is discarded.
    Backend(BackendIoError),
    /// The client failed: the backend is cleaned as if the client had left.
    Client(SessionError),
}

impl From<SessionError> for Fault {
    fn from(error: SessionError) -> Self {
        Self::Client(error)
    }
}

/// How a bound phase ended.
enum Unbind {
    /// Clean: lease goes back to the pool.
    Release,
    /// The client left while bound.
    ClientGone,
    /// The proxy is stopping and the client's backend is between transactions.
    Shutdown,
}

/// A logged-in client.
pub struct Session {
    shared: Arc<Shared>,
    pool: Arc<TenantPool>,
    client: ClientStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    state: ClientState,
    cancel: CancelKey,
    pinned: Option<&'static str>,
    stats: SessionStats,
    pipeline: Pipeline,
    to_backend: BytesMut,
    _place: ClientPlace,
    _support: Option<SupportSession>,
}

impl Session {
    /// A session ready to run.
    pub fn new(
        shared: Arc<Shared>,
        pool: Arc<TenantPool>,
        client: ClientStream,
        state: ClientState,
        cancel: CancelKey,
        place: ClientPlace,
    ) -> Self {
        pool.metrics.clients.increment(1.0);
        Self {
            shared,
            pool,
            client,
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: BytesMut::with_capacity(8 * 1024),
            state,
            cancel,
            pinned: None,
            stats: SessionStats::default(),
            pipeline: Pipeline::default(),
            to_backend: BytesMut::with_capacity(8 * 1024),
            _place: place,
            _support: None,
        }
    }

    /// Marks this as an admin's support session, audited until it ends.
    pub fn with_support(mut self, support: Option<SupportSession>) -> Self {
        self._support = support;
        self
    }

    /// Runs the session until the client leaves or a FATAL ends it.
    pub async fn run(mut self) -> Result<SessionStats, SessionError> {
        let result = self.main_loop().await;
        if let Err(SessionError::ClientProtocol(message)) = &result {
            let err = ClientError::protocol(message.clone());
            self.send_error(&err).await;
        }
        self.finish().await;
        result.map(|()| self.stats)
    }

    async fn main_loop(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(tag) = self.wait_for_message().await? else {
                return Ok(());
            };
            if tag == b'X' {
                return Ok(());
            }

            let Some(lease) = self.acquire().await? else {
                continue;
            };

            match self.bound(lease).await? {
                Unbind::Release => {}
                Unbind::Shutdown => return Err(self.shutdown_error().await),
                Unbind::ClientGone => return Ok(()),
            }
        }
    }

    /// Waits, unbound, for a complete client message; `None` when the client left.
    async fn wait_for_message(&mut self) -> Result<Option<u8>, SessionError> {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            if let Some(h) = next_frame(&self.rbuf).map_err(|e| self.protocol_error(e))? {
                return Ok(Some(h.tag));
            }
            if *shutdown.borrow() {
                return Err(self.shutdown_error().await);
            }

            tokio::select! {
                n = self.client.read_buf(&mut self.rbuf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(None);
                    }
                    self.stats.bytes_in += n as u64;
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn shutdown_error(&mut self) -> SessionError {
        let err = ClientError::fatal(
            ErrorKind::Config,
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection because pgtenant is shutting down",
        );
        self.send_error(&err).await;
        SessionError::Fatal(err)
    }

    fn protocol_error(&self, e: impl std::fmt::Display) -> SessionError {
        SessionError::ClientProtocol(e.to_string())
    }

    /// Leases a backend and brings it in line with the client. `None` when the client was
    /// told to wait longer (an ERROR was sent and its request dropped).
    async fn acquire(&mut self) -> Result<Option<Lease>, SessionError> {
        if let Err(err) = self.pool.governor.admit_transaction().await {
            tracing::info!(error = %err.message, "transaction refused by the tenant's rate limit");
            m::error(err.kind);
            self.reject_request(&err).await?;
            return Ok(None);
        }

        let wait = self.shared.config().proxy.query_wait_timeout;
        let mut acquired = self.pool.acquire(wait).await;
        if let Err(PoolError::Closed(_)) = acquired {
            self.follow_reload().await?;
            acquired = self.pool.acquire(wait).await;
        }
        let mut lease = match acquired {
            Ok(lease) => lease,
            Err(error) => {
                let err = error.to_client();
                tracing::info!(%error, "no backend for transaction");
                m::error(err.kind);
                self.reject_request(&err).await?;
                return Ok(None);
            }
        };

        if let Err(err) = self.sync_backend(&mut lease).await {
            self.pool.discard(lease);
            self.send_error(&err).await;
            return Err(SessionError::Fatal(err));
        }

        self.cancel.slot.set(Some(lease.conn.key));
        Ok(Some(lease))
    }

    /// Brings the backend in line with the client, unless it already is.
    async fn sync_backend(&mut self, lease: &mut Lease) -> Result<(), ClientError> {
        let fingerprint = self.state.fingerprint();
        if lease.conn.fingerprint == Some(fingerprint) {
            return Ok(());
        }

        let conn = &mut lease.conn;
        match sync::sync_to(conn, &self.state.reported, &self.state.items).await {
            Ok(failures) if failures.is_empty() => {
                conn.fingerprint = Some(fingerprint);
                Ok(())
            }
            Ok(failures) => {
                conn.fingerprint = None;
                self.report_sync_failures(failures);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "backend failed while syncing parameters");
                Err(backend_lost())
            }
        }
    }

    /// A reload retired this session's pool: move to the tenant's current pool, or end the
    /// session when the tenant is no longer served (or the proxy is stopping).
    async fn follow_reload(&mut self) -> Result<(), SessionError> {
        let config = self.shared.config();
        let stopping = *self.shared.shutdown.borrow();
        let tenant = config.tenants.get(&self.pool.tenant.name);
        let err = match tenant {
            Some(tenant) if tenant.suspended => super::login::suspended(&tenant.name),
            Some(tenant) if !stopping => {
                self.pool = self.shared.pools.for_tenant(tenant, &config);
                return Ok(());
            }
            _ => ClientError::fatal(
                ErrorKind::Config,
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection because the tenant is no longer served",
            ),
        };
        self.send_error(&err).await;
        Err(SessionError::Fatal(err))
    }

    /// Items PostgreSQL refused to recreate are dropped and the client is warned.
    fn report_sync_failures(&mut self, failures: Vec<sync::SyncFailure>) {
        for failure in failures {
            tracing::warn!(error = %failure.error, "could not restore session state on backend");
            if let Some(key) = failure.item {
                self.state.forget_item(&key);
            }
            let text = format!(
                "pgtenant could not restore a session setting: {}",
                failure.error
            );
            crate::protocol::error::encode_warning(
                &mut self.wbuf,
                sqlstate::CONNECTION_FAILURE,
                &text,
            );
        }
    }

    /// Answers the pending request with an ERROR: a simple query gets the error and
    /// `ReadyForQuery`; an extended batch is skipped up to its `Sync`.
    async fn reject_request(&mut self, err: &ClientError) -> Result<(), SessionError> {
        // Sent at once: a client that ended its batch with Flush waits for it before Sync.
        err.encode(&mut self.wbuf);
        self.flush_client().await?;
        loop {
            let Some(h) = next_frame(&self.rbuf).map_err(|e| self.protocol_error(e))? else {
                self.fill_client().await?;
                continue;
            };
            let tag = h.tag;
            self.rbuf.advance(h.total);
            if matches!(tag, b'Q' | b'F' | b'S') {
                break;
            }
        }
        message::put_ready_for_query(&mut self.wbuf, b'I');
        self.flush_client().await
    }

    async fn fill_client(&mut self) -> Result<(), SessionError> {
        let n = self.client.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(SessionError::Client(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        self.stats.bytes_in += n as u64;
        Ok(())
    }

    async fn flush_client(&mut self) -> Result<(), SessionError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stats.bytes_out += self.wbuf.len() as u64;
        self.client.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        self.client.flush().await?;
        Ok(())
    }

    async fn send_error(&mut self, err: &ClientError) {
        err.encode(&mut self.wbuf);
        let _ = self.flush_client().await;
    }
}

fn backend_lost() -> ClientError {
    ClientError::fatal(
        ErrorKind::Backend,
        sqlstate::CONNECTION_FAILURE,
        "the connection to PostgreSQL was lost; the current transaction was rolled back",
    )
}
