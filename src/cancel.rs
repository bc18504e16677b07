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
            .and_then(|entry| Some((entry.1.get()?, entry.1.clone())));

        let Some((key, slot)) = target else {
            tracing::debug!(
                pid,
                "cancel request matches no running transaction; ignored"
            );
            return;
        };

        // Connecting takes a while, and meanwhile the transaction may end and its backend go
        // to another client; the slot is read again just before the request is sent.
        let still_current = || slot.get() == Some(key);
        match send_cancel_if(key, still_current).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(pid, "transaction ended before the cancel; dropped"),
            Err(error) => {
                tracing::warn!(%error, backend_pid = key.pid, "could not forward cancel request");
            }
        }
    }
}

/// Opens a fresh connection to the backend's server and sends a `CancelRequest`.
pub async fn send_cancel(key: BackendKey) -> std::io::Result<()> {
    send_cancel_if(key, || true).await.map(|_| ())
}

/// Like [`send_cancel`], but sends only if `still_current()` holds once the connection is
/// open; `Ok(false)` when it did not.
async fn send_cancel_if(
    key: BackendKey,
    still_current: impl Fn() -> bool,
) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(key.addr).await?;
    if !still_current() {
        return Ok(false);
    }

    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    stream.write_all(&buf).await?;
    stream.shutdown().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// What a server receives when a cancel is sent to it with `still_current`'s answer.
    async fn received(still_current: bool) -> (bool, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let key = BackendKey {
            addr: listener.local_addr().expect("address"),
            pid: 42,
            secret: 7,
        };
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut bytes = Vec::new();
            socket.read_to_end(&mut bytes).await.expect("read");
            bytes
        });

        let sent = send_cancel_if(key, || still_current).await.expect("send");
        (sent, server.await.expect("server task"))
    }

    /// A transaction that ended while the cancel connection opened gets no request.
    #[tokio::test]
    async fn cancel_is_dropped_when_the_backend_moved_on() {
        let (sent, bytes) = received(false).await;
        assert!(!sent);
        assert!(bytes.is_empty(), "{bytes:?}");

        let (sent, bytes) = received(true).await;
        assert!(sent);
        assert_eq!(bytes.len(), 16, "a CancelRequest is 16 bytes");
    }
}
