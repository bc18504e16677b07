//! Opening a backend connection: TCP, StartupMessage as the tenant's role with the schema
//! pinned through `options`, then whatever authentication PostgreSQL asks for (SCRAM-SHA-256,
//! MD5, cleartext or trust), up to the first `ReadyForQuery`.
//!
//! Pinning through `options` rather than a later `SET` makes the schema the session default,
//! so `RESET ALL` and `DISCARD ALL` on the backend return to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::conn::{BackendConn, BackendIoError, BackendKey};
use crate::config::{BackendSettings, Tenant};
use crate::protocol::message::error_fields;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why a backend connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect or I/O failed.
    #[error("cannot reach PostgreSQL at {addr}: {source}")]
    Io {
        /// Target.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The whole login took longer than the connect timeout.
    #[error("login to PostgreSQL timed out after {0:?}")]
    Timeout(Duration),
    /// PostgreSQL refused the login.
    #[error("PostgreSQL refused the login of role {role:?}: {code} {message}")]
    Refused {
        /// Role.
        role: String,
        /// SQLSTATE.
        code: String,
        /// Server message.
        message: String,
    },
    /// PostgreSQL asked for a password that is not configured, or a method we lack.
    #[error("PostgreSQL asked role {role:?} for {what}")]
    Unsupported {
        /// Role.
        role: String,
        /// What was asked.
        what: String,
    },
    /// The server broke the protocol during login.
    #[error("backend login: {0}")]
    Stream(#[from] BackendIoError),
}

/// Opens and logs in a backend connection for `tenant`.
pub async fn connect(
    settings: &BackendSettings,
    tenant: &Tenant,
) -> Result<BackendConn, ConnectError> {
    let limit = settings.connect_timeout;
    tokio::time::timeout(limit, connect_inner(settings, tenant))
        .await
        .map_err(|_| ConnectError::Timeout(limit))?
}

async fn connect_inner(
    settings: &BackendSettings,
    tenant: &Tenant,
) -> Result<BackendConn, ConnectError> {
    let target = format!("{}:{}", settings.host, settings.port);
    let io_err = |source| ConnectError::Io {
        addr: target.clone(),
        source,
    };

    let stream = TcpStream::connect(&target).await.map_err(io_err)?;
    stream.set_nodelay(true).map_err(io_err)?;
    let addr: SocketAddr = stream.peer_addr().map_err(io_err)?;

    let mut conn = new_conn(stream, addr);
    send_startup(&mut conn, settings, tenant).await?;
    authenticate(&mut conn, tenant).await?;
    finish_login(&mut conn, tenant).await?;
    Ok(conn)
}

fn new_conn(stream: TcpStream, addr: SocketAddr) -> BackendConn {
    let now = Instant::now();
    BackendConn {
        stream,
        rbuf: BytesMut::with_capacity(16 * 1024),
        key: BackendKey {
            addr,
            pid: 0,
            secret: 0,
        },
        reported: HashMap::new(),
        items: BTreeMap::new(),
        prepared: HashSet::new(),
        unnamed: None,
        fingerprint: None,
        status: b'I',
        created: now,
        idle_since: now,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
    }
}

/// The `options` value that pins the schema and names the tenant for row-level security.
pub fn pinned_options(tenant: &Tenant) -> String {
    format!(
        "-c search_path={} -c pgtenant.tenant={}",
        tenant.schema, tenant.name
    )
}

async fn send_startup(
    conn: &mut BackendConn,
    settings: &BackendSettings,
    tenant: &Tenant,
) -> Result<(), ConnectError> {
    let options = pinned_options(tenant);
    let params = [
        ("user", tenant.role.as_str()),
        ("database", settings.database.as_str()),
        ("options", options.as_str()),
    ];

    let mut buf = BytesMut::new();
    frontend::startup_message(params, &mut buf).map_err(BackendIoError::Io)?;
    conn.stream
        .write_all(&buf)
        .await
        .map_err(BackendIoError::Io)?;
    Ok(())
}

/// Answers authentication requests until `AuthenticationOk`.
async fn authenticate(conn: &mut BackendConn, tenant: &Tenant) -> Result<(), ConnectError> {
    loop {
        let mut frame = conn.read_frame().await?;
        if frame.first() == Some(&b'E') {
            return Err(refused_by(tenant, &frame));
        }
        let message = Message::parse(&mut frame)
            .map_err(|e| BackendIoError::Protocol(e.to_string()))?
            .ok_or_else(|| BackendIoError::Protocol("truncated login message".into()))?;

        match message {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                let password = password(tenant, "a cleartext password")?;
                send_with(conn, |b| frontend::password_message(password.as_bytes(), b)).await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = password(tenant, "an MD5 password")?;
                let hash = md5_hash(tenant.role.as_bytes(), password.as_bytes(), body.salt());
                send_with(conn, |b| frontend::password_message(hash.as_bytes(), b)).await?;
            }
            Message::AuthenticationSasl(body) => scram(conn, tenant, body).await?,
            _ => {
                return Err(ConnectError::Unsupported {
                    role: tenant.role.clone(),
                    what: "an authentication method pgtenant does not support".into(),
                });
            }
        }
    }
}

/// The login failure PostgreSQL explained in an `ErrorResponse` frame.
fn refused_by(tenant: &Tenant, frame: &[u8]) -> ConnectError {
    let fields = error_fields(frame).unwrap_or_default();
    ConnectError::Refused {
        role: tenant.role.clone(),
        code: fields.code,
        message: fields.message,
    }
}

fn password<'t>(tenant: &'t Tenant, what: &str) -> Result<&'t str, ConnectError> {
    tenant
        .role_password
        .as_deref()
        .ok_or_else(|| ConnectError::Unsupported {
            role: tenant.role.clone(),
            what: format!("{what}, but the tenant has no role_password"),
        })
}

async fn send_with(
    conn: &mut BackendConn,
    build: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
) -> Result<(), ConnectError> {
    let mut buf = BytesMut::new();
    build(&mut buf).map_err(BackendIoError::Io)?;
    conn.send(&buf).await?;
    Ok(())
}

async fn scram(
    conn: &mut BackendConn,
    tenant: &Tenant,
    body: postgres_protocol::message::backend::AuthenticationSaslBody,
) -> Result<(), ConnectError> {
    use fallible_iterator::FallibleIterator;

    let mut mechanisms = body.mechanisms();
    let mut offered = false;
    while let Ok(Some(m)) = mechanisms.next() {
        offered |= m == SCRAM_SHA_256;
    }
    if !offered {
        return Err(ConnectError::Unsupported {
            role: tenant.role.clone(),
            what: "a SASL mechanism other than SCRAM-SHA-256".into(),
        });
    }

    let password = password(tenant, "a SCRAM password")?;
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    send_with(conn, |b| {
        frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), b)
    })
    .await?;

    let server_first = expect_sasl(conn, tenant, true).await?;
    client.update(&server_first).map_err(sasl_err)?;
    send_with(conn, |b| frontend::sasl_response(client.message(), b)).await?;

    let server_final = expect_sasl(conn, tenant, false).await?;
    client.finish(&server_final).map_err(sasl_err)?;
    Ok(())
}

fn sasl_err(e: std::io::Error) -> ConnectError {
    BackendIoError::Protocol(format!("SCRAM: {e}")).into()
}

/// Reads `AuthenticationSASLContinue` (`continue_ = true`) or `AuthenticationSASLFinal`.
async fn expect_sasl(
    conn: &mut BackendConn,
    tenant: &Tenant,
    continue_: bool,
) -> Result<Vec<u8>, ConnectError> {
    let mut frame = conn.read_frame().await?;
    if frame.first() == Some(&b'E') {
        return Err(refused_by(tenant, &frame));
    }
    let message = Message::parse(&mut frame)
        .map_err(|e| BackendIoError::Protocol(e.to_string()))?
        .ok_or_else(|| BackendIoError::Protocol("truncated SASL message".into()))?;

    match (message, continue_) {
        (Message::AuthenticationSaslContinue(b), true) => Ok(b.data().to_vec()),
        (Message::AuthenticationSaslFinal(b), false) => Ok(b.data().to_vec()),
        _ => Err(BackendIoError::Protocol("unexpected message during SCRAM".into()).into()),
    }
}

/// Reads `ParameterStatus`, `BackendKeyData` and notices up to `ReadyForQuery`.
async fn finish_login(conn: &mut BackendConn, tenant: &Tenant) -> Result<(), ConnectError> {
    loop {
        let frame = conn.read_frame().await?;
        match frame.first() {
            Some(b'S') => conn.note_parameter(&frame),
            Some(b'K') => note_key(conn, &frame)?,
            Some(b'Z') => return Ok(()),
            Some(b'N') => {}
            Some(b'E') => return Err(refused_by(tenant, &frame)),
            _ => {
                return Err(
                    BackendIoError::Protocol("unexpected message after login".into()).into(),
                );
            }
        }
    }
}

fn note_key(conn: &mut BackendConn, frame: &[u8]) -> Result<(), ConnectError> {
    let body = frame
        .get(5..13)
        .ok_or_else(|| BackendIoError::Protocol("short BackendKeyData".into()))?;
    conn.key.pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    conn.key.secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    Ok(())
}
