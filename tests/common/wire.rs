//! Hand-made protocol messages for cases no client library will produce: malformed startup
//! packets, raw SCRAM, garbage frames.

use std::collections::HashMap;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A backend message: type byte and body (length field removed).
pub type Msg = (u8, Vec<u8>);

/// Prefixes `body` with its length, as every startup-phase packet is.
pub fn with_length(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len() + 4).unwrap();
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(body);
    packet
}

/// An 8-byte request such as SSLRequest or GSSENCRequest.
pub fn request_packet(code: u32) -> Vec<u8> {
    with_length(&code.to_be_bytes())
}

/// A StartupMessage for protocol `major.minor`.
pub fn startup_packet(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&major.to_be_bytes());
    body.extend_from_slice(&minor.to_be_bytes());
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    with_length(&body)
}

/// Reads one backend message.
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Msg> {
    let tag = stream.read_u8().await?;
    read_rest(stream, tag).await
}

/// Reads the rest of a backend message whose type byte was already read.
pub async fn read_rest<S: AsyncRead + Unpin>(stream: &mut S, tag: u8) -> std::io::Result<Msg> {
    let len = stream.read_u32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// The authentication request code of an `R` message.
pub fn auth_code(body: &[u8]) -> i32 {
    i32::from_be_bytes(body[..4].try_into().unwrap())
}

/// The fields of an ErrorResponse, by field type.
pub fn error_fields(body: &[u8]) -> HashMap<char, String> {
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, buf: &BytesMut) {
    stream.write_all(buf).await.unwrap();
    stream.flush().await.unwrap();
}

/// Runs SCRAM-SHA-256 after AuthenticationSASL, checking the server's signature, and
/// returns every later message up to ReadyForQuery or ErrorResponse.
pub async fn scram<S>(stream: &mut S, password: &str) -> Vec<Msg>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut buf = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", client.message(), &mut buf).unwrap();
    send(stream, &buf).await;

    let mut seen = Vec::new();
    loop {
        let (tag, body) = read_message(stream).await.unwrap();
        match (tag, tag == b'R' && auth_code(&body) == 11) {
            (b'R', true) => {
                client.update(&body[4..]).expect("server-first");
                let mut buf = BytesMut::new();
                frontend::sasl_response(client.message(), &mut buf).unwrap();
                send(stream, &buf).await;
            }
            (b'R', false) if auth_code(&body) == 12 => {
                client
                    .finish(&body[4..])
                    .expect("server signature verifies");
            }
            _ => {}
        }
        let done = tag == b'Z' || tag == b'E';
        seen.push((tag, body));
        if done {
            return seen;
        }
    }
}

/// Starts SCRAM as `user` on `database` and returns the salt of the server-first message.
pub async fn server_first<S>(stream: &mut S, user: &str, database: &str) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let params = [("user", user), ("database", database)];
    stream
        .write_all(&startup_packet(3, 0, &params))
        .await
        .unwrap();
    let (tag, body) = read_message(stream).await.unwrap();
    assert_eq!((tag, auth_code(&body)), (b'R', 10));

    let mut buf = BytesMut::new();
    let initial = format!("n,,n=,r=clientnonce{user}");
    frontend::sasl_initial_response("SCRAM-SHA-256", initial.as_bytes(), &mut buf).unwrap();
    send(stream, &buf).await;

    let (tag, body) = read_message(stream).await.unwrap();
    assert_eq!((tag, auth_code(&body)), (b'R', 11), "SASLContinue expected");
    let text = String::from_utf8(body[4..].to_vec()).unwrap();
    let salt = text.split(',').find_map(|a| a.strip_prefix("s="));
    salt.expect("salt attribute").to_owned()
}
