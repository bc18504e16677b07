//! The bound state: a backend is leased and messages flow both ways until the transaction
//! ends (release), the client leaves, or something fails. Client messages go through
//! [`Relay`]; backend messages through the [`Pipeline`], which knows what is still owed.

use std::collections::HashMap;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;

use super::{Fault, Session, SessionError, Unbind};
use crate::backend::conn::BackendIoError;
use crate::backend::pipeline::{Event, Pipeline};
use crate::config::PoolMode;
use crate::frontend::guard;
use crate::frontend::relay::{Flow, Relay};
use crate::metrics as m;
use crate::pool::Lease;
use crate::protocol::frame::next_frame;
use crate::protocol::message;

impl Session {
    /// Relays messages both ways until the lease can be released or the client leaves, and
    /// disposes of the lease accordingly.
    pub(super) async fn bound(&mut self, mut lease: Lease) -> Result<Unbind, SessionError> {
        // The pipeline's queue is reused from one transaction to the next.
        let mut pipeline = std::mem::take(&mut self.pipeline);
        pipeline.reset();
        let outcome = self.relay_until_done(&mut lease, &mut pipeline).await;
        let unbind = self.dispose(lease, &pipeline, outcome).await;
        self.pipeline = pipeline;
        unbind
    }

    pub(super) async fn dispose(
        &mut self,
        lease: Lease,
        pipeline: &Pipeline,
        outcome: Result<Unbind, Fault>,
    ) -> Result<Unbind, SessionError> {
        match outcome {
            Ok(Unbind::Release) if self.shared.config().backend.reset_after_transaction => {
                self.count_transaction();
                self.reset_and_release(lease).await;
                Ok(Unbind::Release)
            }
            Ok(Unbind::Release) => {
                self.release(lease);
                Ok(Unbind::Release)
            }
            Ok(unbind @ (Unbind::ClientGone | Unbind::Shutdown)) => {
                self.leave(lease, pipeline).await;
                Ok(unbind)
            }
            Err(Fault::Backend(error)) => Err(self.backend_failed(lease, error).await),
            Err(Fault::Client(error)) => {
                self.leave(lease, pipeline).await;
                Err(error)
            }
        }
    }

    pub(super) async fn relay_until_done(
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

    pub(super) async fn relay_loop(
        &mut self,
        lease: &mut Lease,
        pipeline: &mut Pipeline,
        to_backend: &mut BytesMut,
    ) -> Result<Unbind, Fault> {
        let mut shutdown = self.shared.shutdown.clone();
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
            // Session-mode and pinned clients keep their backend between transactions; when
            // the proxy stops, they end there instead of holding the drain to its timeout.
            let stopping = *shutdown.borrow();
            if stopping && pipeline.is_idle() && pipeline.status == Some(b'I') {
                return Ok(Unbind::Shutdown);
            }

            tokio::select! {
                changed = shutdown.changed(), if !stopping => {
                    if changed.is_err() {
                        return Ok(Unbind::Shutdown);
                    }
                }
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
    pub(super) fn relay_client(
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
                tenant: &self.pool.tenant.name,
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

    pub(super) fn pin(&mut self, reason: &'static str) {
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
    pub(super) fn relay_backend(
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
            if forward && self.may_deliver(frame, h.tag) {
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

    /// Notifications on channels outside the tenant's namespace are dropped, however the
    /// backend came to listen to them.
    fn may_deliver(&self, frame: &[u8], tag: u8) -> bool {
        if tag != b'A' {
            return true;
        }
        message::notification_channel(frame)
            .is_ok_and(|channel| guard::may_receive(channel, &self.pool.tenant.name))
    }

    /// Tracks reported parameters and notices a backend that is going away.
    pub(super) fn observe_backend(
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

    pub(super) fn apply_event(&mut self, event: Event, lease: &mut Lease) {
        match event {
            Event::ParseFailed(name) => {
                lease.conn.prepared.remove(&name);
            }
            Event::UnnamedParseFailed => lease.conn.unnamed = None,
            Event::Refused(error) => error.encode(&mut self.wbuf),
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

    pub(super) fn may_release(&self, pipeline: &Pipeline) -> bool {
        pipeline.is_idle()
            && pipeline.status == Some(b'I')
            && self.pinned.is_none()
            && self.pool.tenant.pool_mode == PoolMode::Transaction
    }
}
