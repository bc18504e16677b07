//! What happens to a leased backend when a transaction ends: back to the pool, cleaned
//! after a client that left mid-transaction, or discarded after a failure; and the session's
//! own teardown.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Session, SessionError, backend_lost};
use crate::backend::conn::BackendIoError;
use crate::backend::pipeline::Pipeline;
use crate::backend::sync;
use crate::cancel::send_cancel;
use crate::config::PoolMode;
use crate::metrics as m;
use crate::pool::Lease;

/// How long cleaning a backend after a client left may take before it is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

impl Session {
    pub(super) fn release(&mut self, mut lease: Lease) {
        self.count_transaction();

        // Changes during the transaction reached both sides, so the backend is in this
        // client's state, unless a RESET left it at the server default while the client
        // returns to its startup value.
        let in_step = lease.conn.items == self.state.items;
        lease.conn.fingerprint = in_step.then(|| self.state.fingerprint());
        lease.conn.status = b'I';
        self.pool.release(lease);
    }

    /// A transaction ended cleanly: no more cancels for its backend, and it counts.
    pub(super) fn count_transaction(&mut self) {
        self.cancel.slot.set(None);
        self.stats.transactions += 1;
        self.pool.metrics.transactions.increment(1);
    }

    /// The backend failed: tell the client and end the session.
    pub(super) async fn backend_failed(
        &mut self,
        lease: Lease,
        error: BackendIoError,
    ) -> SessionError {
        tracing::warn!(%error, backend = lease.conn.id, "backend connection lost mid-transaction");
        self.cancel.slot.set(None);
        self.pool.discard(lease);

        let err = backend_lost();
        if !matches!(error, BackendIoError::Protocol(ref m) if m.starts_with("backend ended")) {
            err.encode(&mut self.wbuf);
        }
        let _ = self.flush_client().await;
        SessionError::Backend(error.to_string())
    }

    /// The client left while bound: clean the backend before anyone else gets it.
    pub(super) async fn leave(&mut self, lease: Lease, pipeline: &Pipeline) {
        self.cancel.slot.set(None);
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

    pub(super) async fn reset_and_release(&mut self, mut lease: Lease) {
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
    pub(super) async fn finish(&mut self) {
        if self.pinned.is_some() && self.pool.tenant.pool_mode == PoolMode::Transaction {
            m::pinned(-1.0);
        }
        self.pool.metrics.clients.decrement(1.0);
        let _ = self.client.shutdown().await;
    }
}
