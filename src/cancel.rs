//! Cancel requests. Each client gets its own `BackendKeyData` (a proxy pid and secret); while
//! the client's transaction runs, its slot names the backend serving it, so a cancel reaches
//! that backend and no other. A cancel for a client with no backend does nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use dashmap::DashMap;
use rand::RngExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::BackendKey;

/// Where a client's cancel should go right now.
///
/// Set and cleared on every transaction, so the backend's pid and secret live in one atomic
/// word (zero: no backend); the server address changes only if the backend server does.
#[derive(Debug, Default)]
pub struct CancelSlot {
    ids: AtomicU64,
    addr: Mutex<Option<SocketAddr>>,
}

impl CancelSlot {
    /// Records the backend now serving the client (`None` when released).
    pub fn set(&self, key: Option<BackendKey>) {
        let Some(key) = key else {
            self.ids.store(0, Ordering::Release);
            return;
        };

        if let Ok(mut addr) = self.addr.lock()
            && *addr != Some(key.addr)
        {
            *addr = Some(key.addr);
        }
        let ids = (u64::from(key.pid as u32) << 32) | u64::from(key.secret as u32);
        self.ids.store(ids, Ordering::Release);
    }

    fn get(&self) -> Option<BackendKey> {
        let ids = self.ids.load(Ordering::Acquire);
        let addr = (*self.addr.lock().ok()?)?;
        let key = BackendKey {
            addr,
            pid: (ids >> 32) as u32 as i32,
            secret: ids as u32 as i32,
        };
        (ids != 0).then_some(key)
    }
}

type Sessions = DashMap<i32, (i32, Arc<CancelSlot>)>;

/// Client cancel keys of every live session.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: Arc<Sessions>,
}

/// A session's registered cancel key; unregistered when dropped, on every exit path.
#[derive(Debug)]
pub struct CancelKey {
    /// The pid the client was given.
    pub pid: i32,
    /// The secret the client was given.
    pub secret: i32,
    /// Where cancels for this client go.
    pub slot: Arc<CancelSlot>,
    sessions: Arc<Sessions>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.sessions.remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) pair and its slot.
    pub fn register(&self) -> CancelKey {
        let slot = Arc::new(CancelSlot::default());
        let mut rng = rand::rng();
        loop {
            let pid: i32 = rng.random_range(1..i32::MAX);
            let secret: i32 = rng.random();
            let entry = self.sessions.entry(pid);
            if let dashmap::Entry::Vacant(v) = entry {
                v.insert((secret, slot.clone()));
                return CancelKey {
                    pid,
                    secret,
                    slot,
                    sessions: self.sessions.clone(),
                };
            }
        }
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
