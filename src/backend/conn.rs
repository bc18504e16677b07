//! One logged-in backend connection and the server-side state it carries: the reported
//! parameters, the session items (settings, SQL prepared statements) a client applied, and
//! the protocol-level statements prepared on it under proxy-unique names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::statement::Statement;
use crate::protocol::frame::{FrameHeader, next_backend_frame};
use crate::protocol::message;

/// Identity PostgreSQL gave the connection, used to forward cancel requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// Server address.
    pub addr: SocketAddr,
    /// Backend process id.
    pub pid: i32,
    /// Cancel secret.
    pub secret: i32,
}

/// A session-level item a client created with SQL, replayed on whichever backend serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ItemKind {
    /// A `SET` of a parameter PostgreSQL does not report (`statement_timeout`, …).
    Setting,
    /// A SQL `PREPARE`d statement.
    Prepared,
}

/// Session items keyed by kind and lower-case name; the value is SQL that recreates them.
pub type SessionItems = BTreeMap<(ItemKind, String), String>;

/// Failure of a backend socket or stream.
#[derive(Debug, thiserror::Error)]
pub enum BackendIoError {
    /// Socket error.
    #[error("backend i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("backend closed the connection")]
    Closed,
    /// The server sent a malformed frame.
    #[error("backend protocol violation: {0}")]
    Protocol(String),
}

/// A logged-in server connection owned by a tenant pool.
#[derive(Debug)]
pub struct BackendConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read and not yet consumed.
    pub rbuf: BytesMut,
    /// Cancel identity.
    pub key: BackendKey,
    /// Reported parameters as PostgreSQL last announced them.
    pub reported: HashMap<String, String>,
    /// Settings and SQL statements applied on behalf of a client.
    pub items: SessionItems,
    /// Proxy-unique names of protocol-level statements prepared here.
    pub prepared: HashSet<String>,
    /// Fingerprint of the client state this connection is known to be in, if any.
    pub fingerprint: Option<u64>,
    /// Whose unnamed statement this backend holds (compared by identity).
    pub unnamed: Option<Arc<Statement>>,
    /// Last `ReadyForQuery` status (`I`, `T`, `E`).
    pub status: u8,
    /// When the connection was opened.
    pub created: Instant,
    /// When it last went back to the pool.
    pub idle_since: Instant,
    /// Unique id for logs.
    pub id: u64,
}

impl BackendConn {
    /// Reads more bytes; `Closed` on end of stream.
    pub async fn fill(&mut self) -> Result<usize, BackendIoError> {
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(BackendIoError::Closed);
        }
        Ok(n)
    }

    /// The next complete frame in the read buffer, if any.
    pub fn next_frame(&self) -> Result<Option<FrameHeader>, BackendIoError> {
        next_backend_frame(&self.rbuf).map_err(|e| BackendIoError::Protocol(e.to_string()))
    }

    /// Reads one whole frame, waiting for bytes as needed.
    pub async fn read_frame(&mut self) -> Result<BytesMut, BackendIoError> {
        loop {
            if let Some(h) = self.next_frame()? {
                return Ok(self.rbuf.split_to(h.total));
            }
            self.fill().await?;
        }
    }

    /// Writes and flushes a buffer.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendIoError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Notes a `ParameterStatus` frame.
    pub fn note_parameter(&mut self, frame: &[u8]) {
        if let Ok((name, value)) = message::parameter_status(frame) {
            self.reported.insert(name, value);
        }
    }

    /// True when the idle socket has nothing to say: no data, no end of stream.
    ///
    /// An idle backend only speaks when it is going away (a FATAL before closing), so any
    /// readable byte or EOF means the connection must not be handed out.
    pub fn looks_healthy(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
        ) && self.rbuf.is_empty()
    }
}
