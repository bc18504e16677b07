//! A logged-in client's session: the transaction-pooling state machine.
//!
//! States: `Idle` (no backend; waiting for the client's next message), `Bound` (a backend is
//! leased; messages flow both ways and the pipeline tracks owed responses), and the end of
//! the session. In transaction mode the lease returns to the pool at `ReadyForQuery` with
//! status `I` once nothing is owed; in session mode, or once the client is pinned by state
//! that cannot move between backends, it is kept until the client leaves, then reset.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::relay::{Flow, Relay};
use super::state::ClientState;
use super::stream::ClientStream;
use crate::backend::conn::BackendIoError;
use crate::backend::pipeline::{Event, Pipeline};
use crate::backend::sync;
use crate::cancel::{CancelSlot, send_cancel};
use crate::config::PoolMode;
use crate::metrics as m;
use crate::pool::{ClientPlace, Lease, PoolError, TenantPool};
use crate::protocol::frame::next_frame;
use crate::protocol::{ClientError, ErrorKind, message, sqlstate};
use crate::server::Shared;

/// How long cleaning a backend after a client left may take before it is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// A logged-in client.
pub struct Session {
    shared: Arc<Shared>,
    pool: Arc<TenantPool>,
    client: ClientStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    state: ClientState,
    pid: i32,
    cancel: Arc<CancelSlot>,
    pinned: Option<&'static str>,
    stats: SessionStats,
    pipeline: Pipeline,
    to_backend: BytesMut,
    _place: ClientPlace,
}

impl Session {
    /// A session ready to run.
    pub fn new(
        shared: Arc<Shared>,
        pool: Arc<TenantPool>,
        client: ClientStream,
        state: ClientState,
        (pid, cancel): (i32, Arc<CancelSlot>),
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
            pid,
            cancel,
            pinned: None,
            stats: SessionStats::default(),
            pipeline: Pipeline::default(),
            to_backend: BytesMut::with_capacity(8 * 1024),
            _place: place,
        }
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

        self.cancel.set(Some(lease.conn.key));
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
        if let Some(tenant) = config.tenants.get(&self.pool.tenant.name)
            && !stopping
        {
            self.pool = self.shared.pools.for_tenant(tenant, &config);
            return Ok(());
        }

        let err = ClientError::fatal(
            ErrorKind::Config,
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection because the tenant is no longer served",
        );
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
        err.encode(&mut self.wbuf);
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

    /// Relays messages both ways until the lease can be released or the client leaves, and
    /// disposes of the lease accordingly.
    async fn bound(&mut self, mut lease: Lease) -> Result<Unbind, SessionError> {
        // The pipeline's queue is reused from one transaction to the next.
        let mut pipeline = std::mem::take(&mut self.pipeline);
        pipeline.reset();
        let outcome = self.relay_until_done(&mut lease, &mut pipeline).await;
        let unbind = self.dispose(lease, &pipeline, outcome).await;
        self.pipeline = pipeline;
        unbind
    }

    async fn dispose(
        &mut self,
        lease: Lease,
        pipeline: &Pipeline,
        outcome: Result<Unbind, Fault>,
    ) -> Result<Unbind, SessionError> {
        match outcome {
            Ok(Unbind::Release) => {
                self.release(lease);
                Ok(Unbind::Release)
            }
            Ok(Unbind::ClientGone) => {
                self.leave(lease, pipeline).await;
                Ok(Unbind::ClientGone)
            }
            Err(Fault::Backend(error)) => Err(self.backend_failed(lease, error).await),
            Err(Fault::Client(error)) => {
                self.leave(lease, pipeline).await;
                Err(error)
            }
        }
    }

    async fn relay_until_done(
        &mut self,
        lease: &mut Lease,
        pipeline: &mut Pipeline,
    ) -> Result<Unbind, Fault> {
        let mut to_backend = std::mem::take(&mut self.to_backend);
        let outcome = self.relay_loop(lease, pipeline, &mut to_backend).await;
        to_backend.clear();
        self.to_backend = to_backend;
        outcome
    }

    async fn relay_loop(
        &mut self,
        lease: &mut Lease,
        pipeline: &mut Pipeline,
        to_backend: &mut BytesMut,
    ) -> Result<Unbind, Fault> {
        loop {
            let flow = self.relay_client(lease, pipeline, to_backend)?;
            lease.conn.send(to_backend).await.map_err(Fault::Backend)?;
            to_backend.clear();
            self.flush_client().await?;

            if flow == Flow::Terminate {
                return Ok(Unbind::ClientGone);
            }
            if self.may_release(pipeline) {
                return Ok(Unbind::Release);
            }

            tokio::select! {
                n = self.client.read_buf(&mut self.rbuf) => {
                    let n = n.map_err(SessionError::from)?;
                    if n == 0 {
                        return Ok(Unbind::ClientGone);
                    }
                    self.stats.bytes_in += n as u64;
                }
                filled = lease.conn.fill() => {
                    filled.map_err(Fault::Backend)?;
                    self.relay_backend(lease, pipeline).map_err(Fault::Backend)?;
                }
            }
        }
    }

    /// Relays every complete client message in the buffer.
    fn relay_client(
        &mut self,
        lease: &mut Lease,
        pipeline: &mut Pipeline,
        to_backend: &mut BytesMut,
    ) -> Result<Flow, SessionError> {
        loop {
            let Some(h) = next_frame(&self.rbuf).map_err(|e| self.protocol_error(e))? else {
                return Ok(Flow::Continue);
            };

            let mut relay = Relay {
                conn: &mut lease.conn,
                pipeline,
                statements: &mut self.state.statements,
                unnamed: &mut self.state.unnamed,
                to_backend,
                to_client: &mut self.wbuf,
            };
            let flow = relay
                .frame(&self.rbuf[..h.total])
                .map_err(|e| self.protocol_error(format!("{e} from client")))?;
            self.rbuf.advance(h.total);

            match flow {
                Flow::Continue => {}
                Flow::Terminate => return Ok(Flow::Terminate),
                Flow::Pin(reason) => self.pin(reason),
            }
        }
    }

    fn pin(&mut self, reason: &'static str) {
        if self.pinned.is_none() && self.pool.tenant.pool_mode == PoolMode::Transaction {
            tracing::info!(
                reason,
                "client pinned to its backend for the rest of the session"
            );
            m::pinned(1.0);
        }
        self.pinned.get_or_insert(reason);
    }

    /// Relays every complete backend message in the buffer to the client.
    fn relay_backend(
        &mut self,
        lease: &mut Lease,
        pipeline: &mut Pipeline,
    ) -> Result<(), BackendIoError> {
        let mut events = Vec::new();
        while let Some(h) = lease.conn.next_frame()? {
            let frame = &lease.conn.rbuf[..h.total];
            let forward = pipeline
                .on_backend(frame, &mut events)
                .map_err(|e| BackendIoError::Protocol(e.to_string()))?;

            self.observe_backend(frame, h.tag, &mut lease.conn.reported)?;
            if forward {
                self.wbuf.extend_from_slice(frame);
            }
            lease.conn.rbuf.advance(h.total);
            pipeline.release_fakes(&mut self.wbuf);

            for event in events.drain(..) {
                self.apply_event(event, lease);
            }
        }
        if let Some(status) = pipeline.status {
            lease.conn.status = status;
        }
        Ok(())
    }

    /// Tracks reported parameters and notices a backend that is going away.
    fn observe_backend(
        &mut self,
        frame: &[u8],
        tag: u8,
        reported: &mut HashMap<String, String>,
    ) -> Result<(), BackendIoError> {
        match tag {
            b'S' => {
                if let Ok((name, value)) = message::parameter_status(frame) {
                    reported.insert(name.clone(), value.clone());
                    self.state.note_parameter(name, value);
                }
            }
            b'E' => {
                let fields = message::error_fields(frame).unwrap_or_default();
                if fields.severity == "FATAL" || fields.severity == "PANIC" {
                    self.wbuf.extend_from_slice(frame);
                    return Err(BackendIoError::Protocol(format!(
                        "backend ended the connection: {} {}",
                        fields.code, fields.message
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn apply_event(&mut self, event: Event, lease: &mut Lease) {
        match event {
            Event::ParseFailed(name) => {
                lease.conn.prepared.remove(&name);
            }
            Event::Completed { effect, status } => {
                if status != b'I' && effect.is_transactional() {
                    // A ROLLBACK could still undo it; only this backend knows the outcome.
                    self.pin("session setting changed inside a transaction block");
                    return;
                }
                self.state.apply(effect, &mut lease.conn);
            }
        }
    }

    fn may_release(&self, pipeline: &Pipeline) -> bool {
        pipeline.is_idle()
            && pipeline.status == Some(b'I')
            && self.pinned.is_none()
            && self.pool.tenant.pool_mode == PoolMode::Transaction
    }

    fn release(&mut self, mut lease: Lease) {
        self.cancel.set(None);

        // Changes during the transaction reached both sides, so the backend is in this
        // client's state, unless a RESET left it at the server default while the client
        // returns to its startup value.
        let in_step = lease.conn.items == self.state.items;
        lease.conn.fingerprint = in_step.then(|| self.state.fingerprint());
        self.stats.transactions += 1;
        self.pool.metrics.transactions.increment(1);
        lease.conn.status = b'I';
        self.pool.release(lease);
    }

    /// The backend failed: tell the client and end the session.
    async fn backend_failed(&mut self, lease: Lease, error: BackendIoError) -> SessionError {
        tracing::warn!(%error, backend = lease.conn.id, "backend connection lost mid-transaction");
        self.cancel.set(None);
        self.pool.discard(lease);

        let err = backend_lost();
        if !matches!(error, BackendIoError::Protocol(ref m) if m.starts_with("backend ended")) {
            err.encode(&mut self.wbuf);
        }
        let _ = self.flush_client().await;
        SessionError::Backend(error.to_string())
    }

    /// The client left while bound: clean the backend before anyone else gets it.
    async fn leave(&mut self, lease: Lease, pipeline: &Pipeline) {
        self.cancel.set(None);
        if !pipeline.is_idle() {
            // A statement is still running: stop it, then close the connection, so its
            // transaction rolls back and its locks go away at once.
            let _ = send_cancel(lease.conn.key).await;
            self.pool.discard(lease);
            return;
        }

        let clean = lease.conn.status == b'I' && self.pinned.is_none();
        if clean && self.pool.tenant.pool_mode == PoolMode::Transaction {
            self.pool.release(lease);
            return;
        }
        self.reset_and_release(lease).await;
    }

    async fn reset_and_release(&mut self, mut lease: Lease) {
        match tokio::time::timeout(RESET_TIMEOUT, sync::reset(&mut lease.conn)).await {
            Ok(Ok(())) => self.pool.release(lease),
            Ok(Err(error)) => {
                tracing::warn!(%error, "backend reset failed; connection closed");
                self.pool.discard(lease);
            }
            Err(_) => {
                tracing::warn!("backend reset timed out; connection closed");
                self.pool.discard(lease);
            }
        }
    }

    /// Session teardown: forget the cancel key, update metrics, close the socket.
    async fn finish(&mut self) {
        if self.pinned.is_some() && self.pool.tenant.pool_mode == PoolMode::Transaction {
            m::pinned(-1.0);
        }
        self.shared.cancels.unregister(self.pid);
        self.pool.metrics.clients.decrement(1.0);
        let _ = self.client.shutdown().await;
    }
}

fn backend_lost() -> ClientError {
    ClientError::fatal(
        ErrorKind::Backend,
        sqlstate::CONNECTION_FAILURE,
        "the connection to PostgreSQL was lost; the current transaction was rolled back",
    )
}
