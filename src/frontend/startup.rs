//! Negotiation before authentication: direct TLS or `SSLRequest`, `GSSENCRequest`, the
//! `StartupMessage` (protocol 3.0, newer minors answered with `NegotiateProtocolVersion`) or a
//! `CancelRequest`. Startup packets are capped at 10,000 bytes; anything malformed ends the
//! connection with FATAL `08P01`.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgwire::messages::startup::{NegotiateProtocolVersion, Startup};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::stream::ClientStream;
use crate::config::TlsMode;
use crate::protocol::{ClientError, ErrorKind, sqlstate};
use crate::tls::{ALPN_POSTGRESQL, TLS_HANDSHAKE_BYTE};

/// Largest startup-phase packet accepted.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// The setting that names a tenant at login; never passed on as a client setting, so a
/// client cannot make its backend claim another tenant.
const TENANT_SETTING: &str = "pgtenant.tenant";

/// What the client opened the connection for.
pub enum Hello {
    /// A login, to be authenticated.
    Login(ClientStream, StartupRequest),
    /// A cancel request for another session.
    Cancel {
        /// The pid from our `BackendKeyData`.
        pid: i32,
        /// The secret from our `BackendKeyData`.
        secret: i32,
    },
}

/// The parameters of a `StartupMessage`, sorted into what the proxy uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupRequest {
    /// `user`.
    pub user: String,
    /// `database` (defaults to the user name, as in PostgreSQL).
    pub database: String,
    /// `-c pgtenant.tenant=…` from `options`.
    pub tenant_option: Option<String>,
    /// Every other setting, from parameters and `options`, in arrival order.
    pub settings: Vec<(String, String)>,
}

/// Why negotiation ended without a login.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    /// The client went away or the socket failed.
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (for example a TLS 1.2-only client).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// We sent the client an error and closed.
    #[error("{}", .0.message)]
    Refused(ClientError),
}

/// Runs negotiation on a fresh connection.
pub async fn negotiate(
    tcp: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    mode: TlsMode,
) -> Result<Hello, NegotiateError> {
    let tls = tls.filter(|_| mode != TlsMode::Disabled);

    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    let mut stream = if n == 1 && first[0] == TLS_HANDSHAKE_BYTE {
        direct_tls(tcp, tls.clone()).await?
    } else {
        ClientStream::Plain(tcp)
    };

    loop {
        let packet = read_packet(&mut stream).await?;
        match code_of(&packet) {
            SSL_REQUEST => stream = ssl_request(stream, tls.clone()).await?,
            GSSENC_REQUEST => stream.write_all(b"N").await?,
            CANCEL_REQUEST => return cancel_request(&packet),
            _ => {
                let request = startup(&mut stream, packet, mode).await?;
                return Ok(Hello::Login(stream, request));
            }
        }
    }
}

async fn direct_tls(
    tcp: TcpStream,
    tls: Option<Arc<ServerConfig>>,
) -> Result<ClientStream, NegotiateError> {
    let Some(config) = tls else {
        return Err(NegotiateError::Tls(std::io::Error::other(
            "TLS is disabled",
        )));
    };

    let stream = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(NegotiateError::Tls)?;
    if stream.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        let mut stream = ClientStream::Tls(Box::new(stream));
        let msg = "direct TLS connection without ALPN protocol \"postgresql\"";
        return Err(refuse(&mut stream, ClientError::protocol(msg)).await);
    }
    Ok(ClientStream::Tls(Box::new(stream)))
}

async fn ssl_request(
    mut stream: ClientStream,
    tls: Option<Arc<ServerConfig>>,
) -> Result<ClientStream, NegotiateError> {
    if stream.is_tls() {
        let err = ClientError::protocol("SSLRequest received on an encrypted connection");
        return Err(refuse(&mut stream, err).await);
    }
    let ClientStream::Plain(mut tcp) = stream else {
        return Err(NegotiateError::Io(std::io::Error::other(
            "unreachable stream state",
        )));
    };

    let Some(config) = tls else {
        tcp.write_all(b"N").await?;
        return Ok(ClientStream::Plain(tcp));
    };

    // Bytes sent before the handshake would be read as if they were encrypted.
    let mut probe = [0u8; 1];
    if tcp.try_read(&mut probe).is_ok_and(|n| n > 0) {
        let mut plain = ClientStream::Plain(tcp);
        let err = ClientError::protocol("received unencrypted data after SSLRequest");
        return Err(refuse(&mut plain, err).await);
    }

    tcp.write_all(b"S").await?;
    let tls = TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(NegotiateError::Tls)?;
    Ok(ClientStream::Tls(Box::new(tls)))
}

/// Reads one length-prefixed startup-phase packet, length field included.
async fn read_packet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<BytesMut, NegotiateError> {
    let mut len_bytes = [0u8; 4];
    stream.read_exact(&mut len_bytes).await?;
    let len = u32::from_be_bytes(len_bytes) as usize;

    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        let err = ClientError::protocol(format!("invalid startup packet length {len}"));
        return Err(refuse(stream, err).await);
    }

    let mut packet = BytesMut::with_capacity(len);
    packet.put_slice(&len_bytes);
    packet.resize(len, 0);
    stream.read_exact(&mut packet[4..]).await?;
    Ok(packet)
}

fn code_of(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

fn cancel_request(packet: &[u8]) -> Result<Hello, NegotiateError> {
    let Some(body) = packet.get(8..16) else {
        return Err(NegotiateError::Refused(ClientError::protocol(
            "short CancelRequest",
        )));
    };
    Ok(Hello::Cancel {
        pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    })
}

async fn startup(
    stream: &mut ClientStream,
    mut packet: BytesMut,
    mode: TlsMode,
) -> Result<StartupRequest, NegotiateError> {
    let major = packet[4..6]
        .iter()
        .fold(0u16, |a, b| (a << 8) | u16::from(*b));
    if major != 3 {
        let msg = format!("unsupported frontend protocol {major}: pgtenant supports 3.0");
        let err = ClientError::fatal(ErrorKind::Client, sqlstate::FEATURE_NOT_SUPPORTED, msg);
        return Err(refuse(stream, err).await);
    }

    if mode == TlsMode::Required && !stream.is_tls() {
        let err = ClientError::fatal(
            ErrorKind::Auth,
            sqlstate::INVALID_AUTHORIZATION,
            "pgtenant requires TLS: connect with sslmode=require",
        );
        return Err(refuse(stream, err).await);
    }

    let ctx = DecodeContext::new(ProtocolVersion::default());
    let decoded = Startup::decode(&mut packet, &ctx);
    let Ok(Some(message)) = decoded else {
        return Err(refuse(stream, ClientError::protocol("invalid startup packet")).await);
    };

    negotiate_version(stream, &message).await?;
    match sort_parameters(message) {
        Ok(request) => Ok(request),
        Err(err) => Err(refuse(stream, err).await),
    }
}

/// Answers a newer minor version or `_pq_.` options with `NegotiateProtocolVersion`.
async fn negotiate_version(
    stream: &mut ClientStream,
    message: &Startup,
) -> Result<(), NegotiateError> {
    let unsupported: Vec<String> = message
        .parameters
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if message.protocol_number_minor == 0 && unsupported.is_empty() {
        return Ok(());
    }

    let mut out = BytesMut::new();
    let reply = NegotiateProtocolVersion::new(0, unsupported);
    reply
        .encode(&mut out)
        .map_err(|e| NegotiateError::Io(std::io::Error::other(e.to_string())))?;
    stream.write_all(&out).await?;
    Ok(())
}

fn sort_parameters(message: Startup) -> Result<StartupRequest, ClientError> {
    let mut request = StartupRequest::default();
    for (name, value) in message.parameters {
        match name.as_str() {
            "user" => request.user = value,
            "database" => request.database = value,
            "options" => parse_options(&value, &mut request)?,
            n if n.eq_ignore_ascii_case(TENANT_SETTING) => request.tenant_option = Some(value),
            "replication" if value != "false" && value != "0" => {
                return Err(ClientError::fatal(
                    ErrorKind::Client,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "replication connections are not supported through pgtenant",
                ));
            }
            n if n.starts_with("_pq_.") || n == "replication" => {}
            _ => request.settings.push((name, value)),
        }
    }

    if request.user.is_empty() {
        return Err(ClientError::protocol(
            "no PostgreSQL user name specified in startup packet",
        ));
    }
    if request.database.is_empty() {
        request.database = request.user.clone();
    }
    Ok(request)
}

/// Reads `-c name=value`, `-cname=value` and `--name=value` switches, honouring `\ ` escapes.
fn parse_options(options: &str, request: &mut StartupRequest) -> Result<(), ClientError> {
    let words = split_escaped(options);
    let mut iter = words.iter();
    while let Some(word) = iter.next() {
        let setting = if word == "-c" {
            iter.next().map(String::as_str)
        } else if let Some(rest) = word.strip_prefix("--") {
            Some(rest)
        } else {
            word.strip_prefix("-c")
        };

        let Some((name, value)) = setting.and_then(|s| s.split_once('=')) else {
            let msg = format!("invalid command-line argument in options: {word:?}");
            return Err(ClientError::fatal(
                ErrorKind::Client,
                sqlstate::PROTOCOL_VIOLATION,
                msg,
            ));
        };

        let name = name.replace('-', "_");
        if name.eq_ignore_ascii_case(TENANT_SETTING) {
            request.tenant_option = Some(value.to_owned());
        } else {
            request.settings.push((name, value.to_owned()));
        }
    }
    Ok(())
}

fn split_escaped(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Sends a FATAL error and returns the matching negotiation error.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, err: ClientError) -> NegotiateError {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    NegotiateError::Refused(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_switches_are_sorted() {
        let mut r = StartupRequest::default();
        parse_options(
            "-c pgtenant.tenant=acme -cstatement_timeout=5s --search-path=x -c a=b\\ c",
            &mut r,
        )
        .expect("valid options");

        assert_eq!(r.tenant_option.as_deref(), Some("acme"));
        assert_eq!(
            r.settings,
            vec![
                ("statement_timeout".into(), "5s".into()),
                ("search_path".into(), "x".into()),
                ("a".into(), "b c".into()),
            ]
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let mut r = StartupRequest::default();
        assert!(parse_options("-x", &mut r).is_err());
        assert!(parse_options("-c novalue", &mut r).is_err());
    }
}
