//! One accepted TCP connection, from first byte to close: negotiation and login under the
//! login timeout, then the session. Every connection runs in its own `tracing` span carrying
//! `session_id` and `client.addr`; `tenant` and `user` are filled in once known.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::Instrument;

use super::login::{self, LoginError};
use super::session::Session;
use super::startup::{self, Hello, NegotiateError};
use crate::protocol::ErrorKind;
use crate::server::Shared;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Serves one client connection to completion. Never panics on client input.
pub async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, addr: SocketAddr) {
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        session_id = id,
        client.addr = %addr,
        tenant = tracing::field::Empty,
        user = tracing::field::Empty,
    );
    run(shared, tcp).instrument(span).await;
}

async fn run(shared: Arc<Shared>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let config = shared.config();
    let started = Instant::now();

    let login = async {
        let hello = startup::negotiate(tcp, shared.tls(), config.proxy.tls).await?;
        match hello {
            Hello::Cancel { pid, secret } => {
                shared.cancels.cancel(pid, secret).await;
                Ok(None)
            }
            Hello::Login(stream, request) => login::login(&shared, &config, stream, request)
                .await
                .map(Some),
        }
    };

    let session = match tokio::time::timeout(config.proxy.login_timeout, login).await {
        Ok(Ok(Some(session))) => session,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => return log_login_failure(&error),
        Err(_) => {
            tracing::info!(timeout = ?config.proxy.login_timeout, "login timed out");
            crate::metrics::error(ErrorKind::Client);
            return;
        }
    };

    run_session(&shared, session, started).await;
}

async fn run_session(shared: &Shared, session: Session, started: Instant) {
    shared.sessions.fetch_add(1, Ordering::Relaxed);
    let outcome = session.run().await;
    shared.sessions.fetch_sub(1, Ordering::Relaxed);

    let duration_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(stats) => tracing::info!(
            duration_ms,
            transactions = stats.transactions,
            bytes_in = stats.bytes_in,
            bytes_out = stats.bytes_out,
            "session ended"
        ),
        Err(error) => {
            crate::metrics::error(error.kind());
            tracing::info!(duration_ms, error_kind = error.kind().as_str(), %error, "session ended with error");
        }
    }
}

fn log_login_failure(error: &LoginError) {
    let kind = match error {
        LoginError::Negotiate(NegotiateError::Refused(e)) => e.kind,
        LoginError::Refused(e) => e.kind,
        LoginError::Auth(_) => ErrorKind::Auth,
        _ => ErrorKind::Client,
    };
    crate::metrics::error(kind);
    crate::metrics::login("failed");
    tracing::info!(error_kind = kind.as_str(), %error, "login failed");
}
