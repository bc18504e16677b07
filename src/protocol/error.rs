//! The one path by which proxy failures reach clients.
//!
//! Every stage converts its own error type into a [`ClientError`]: a severity, a SQLSTATE from
//! [`super::sqlstate`] and a message written for the client. Internal error text never reaches
//! the wire. The [`ErrorKind`] doubles as the metric label for errors.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::{ErrorResponse, NoticeResponse};

use super::sqlstate;

/// Whether the session survives the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session continues after `ReadyForQuery`.
    Error,
    /// The session ends after this message.
    Fatal,
}

/// Coarse class of an error; the label of the `pgtenant_errors_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The client sent something invalid.
    Client,
    /// Authentication failed.
    Auth,
    /// A rate or connection limit was hit.
    RateLimit,
    /// No backend connection was available in time.
    Pool,
    /// The backend failed or broke the protocol.
    Backend,
    /// The configuration does not allow this.
    Config,
    /// A bug in the proxy.
    Internal,
}

impl ErrorKind {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Auth => "auth",
            Self::RateLimit => "rate_limit",
            Self::Pool => "pool",
            Self::Backend => "backend",
            Self::Config => "config",
            Self::Internal => "internal",
        }
    }
}

/// An error written for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// SQLSTATE from [`super::sqlstate`].
    pub code: &'static str,
    /// Primary message.
    pub message: String,
    /// Optional detail line.
    pub detail: Option<String>,
    /// Class for metrics and logs.
    pub kind: ErrorKind,
}

impl ClientError {
    /// A FATAL error: the session ends.
    pub fn fatal(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            kind,
        }
    }

    /// An ERROR: the statement fails, the session goes on.
    pub fn error(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            ..Self::fatal(kind, code, message)
        }
    }

    /// Adds a DETAIL line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The same failure for every authentication problem, so that nothing can be enumerated.
    pub fn auth_failed(user: &str) -> Self {
        let message = format!("password authentication failed for user \"{user}\"");
        Self::fatal(ErrorKind::Auth, sqlstate::INVALID_PASSWORD, message)
    }

    /// A malformed message from the client.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::fatal(ErrorKind::Client, sqlstate::PROTOCOL_VIOLATION, message)
    }

    /// Appends the `ErrorResponse` frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let severity = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };

        let mut fields = vec![
            (b'S', severity.to_owned()),
            (b'V', severity.to_owned()),
            (b'C', self.code.to_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(detail) = &self.detail {
            fields.push((b'D', detail.clone()));
        }

        // Encoding into a growable buffer only fails past pgwire's size cap, which a
        // one-line message cannot reach.
        let _ = ErrorResponse::new(fields).encode(out);
    }
}

/// Appends a `NoticeResponse` with severity WARNING.
pub fn encode_warning(out: &mut BytesMut, code: &'static str, message: &str) {
    let fields = vec![
        (b'S', "WARNING".to_owned()),
        (b'V', "WARNING".to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    let _ = NoticeResponse::new(fields).encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_carries_code_and_message() {
        let mut out = BytesMut::new();
        ClientError::auth_failed("app").encode(&mut out);

        assert_eq!(out[0], b'E');
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("FATAL"));
        assert!(text.contains("28P01"));
        assert!(text.contains("password authentication failed for user \"app\""));
    }
}
