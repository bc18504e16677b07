//! Cancel requests. Each client gets its own `BackendKeyData` (a proxy pid and secret); while
//! the client's transaction runs, its slot names the backend serving it, so a cancel reaches
//! that backend and no other. A cancel for a client with no backend does nothing.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use dashmap::DashMap;
use rand::RngExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::BackendKey;

/// Where a client's cancel should go right now.
#[derive(Debug, Default)]
pub struct CancelSlot {
    backend: Mutex<Option<BackendKey>>,
}

impl CancelSlot {
    /// Records the backend now serving the client (`None` when released).
    pub fn set(&self, key: Option<BackendKey>) {
        if let Ok(mut slot) = self.backend.lock() {
            *slot = key;
        }
    }

    fn get(&self) -> Option<BackendKey> {
        self.backend.lock().ok().and_then(|slot| *slot)
    }
}

/// Client cancel keys of every live session.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: DashMap<i32, (i32, Arc<CancelSlot>)>,
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) pair and its slot.
    pub fn register(&self) -> (i32, i32, Arc<CancelSlot>) {
        let slot = Arc::new(CancelSlot::default());
        let mut rng = rand::rng();
        loop {
            let pid: i32 = rng.random_range(1..i32::MAX);
            let secret: i32 = rng.random();
            let entry = self.sessions.entry(pid);
            if let dashmap::Entry::Vacant(v) = entry {
                v.insert((secret, slot.clone()));
                return (pid, secret, slot);
            }
        }
    }

    /// Forgets a session's key.
    pub fn unregister(&self, pid: i32) {
        self.sessions.remove(&pid);
    }

    /// Forwards a cancel to the backend running the client's query, if any.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = self
            .sessions
            .get(&pid)
            .filter(|entry| entry.0 == secret)
            .and_then(|entry| entry.1.get());

        let Some(key) = target else {
            tracing::debug!(
                pid,
                "cancel request matches no running transaction; ignored"
            );
            return;
        };

        if let Err(error) = send_cancel(key).await {
            tracing::warn!(%error, backend_pid = key.pid, "could not forward cancel request");
        }
    }
}

/// Opens a fresh connection to the backend's server and sends a `CancelRequest`.
pub async fn send_cancel(key: BackendKey) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(key.addr).await?;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}
