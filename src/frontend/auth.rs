//! Client authentication: the SCRAM-SHA-256 exchange over the wire, using pgwire's
//! authentication messages. Unknown users and tenants go through the same exchange against a
//! decoy verifier and fail with the same FATAL `28P01` as a wrong password.

use bytes::{Buf, BytesMut};
use pgwire::messages::startup::{Authentication, SASLInitialResponse, SASLResponse};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::scram::{MECHANISM, ScramError, ServerFirst, Verifier};
use super::stream::ClientStream;
use crate::protocol::ClientError;

/// Largest password-family message accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 10_000;

/// Why authentication failed; the client always sees `28P01`, logs see the cause.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Socket failure or disconnect mid-exchange.
    #[error("client i/o during authentication: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent something other than the expected SASL message.
    #[error("unexpected message during authentication: {0}")]
    Protocol(&'static str),
    /// The SCRAM exchange failed.
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// The user or tenant does not exist (decoy exchange completed).
    #[error("unknown user or tenant")]
    Unknown,
}

/// Runs SCRAM-SHA-256 with the client. `verifier` is `None` for unknown users or tenants;
/// they get a decoy whose salt is stable per `decoy_seed`, which must name both the user and
/// the tenant asked for, so that neither an unknown user nor an unknown tenant shows.
pub async fn authenticate(
    stream: &mut ClientStream,
    verifier: Option<Verifier>,
    decoy_seed: &str,
    decoy_secret: &[u8; 32],
) -> Result<(), AuthError> {
    let known = verifier.is_some();
    let verifier = verifier.unwrap_or_else(|| Verifier::decoy(decoy_secret, decoy_seed));

    send(stream, Authentication::SASL(vec![MECHANISM.to_owned()])).await?;

    let initial = read_initial(stream).await?;
    let data = initial.data.unwrap_or_default();
    let (state, server_first) = ServerFirst::start(verifier, &initial.auth_method, &data)?;
    send(stream, Authentication::SASLContinue(server_first.into())).await?;

    let response = read_response(stream).await?;
    let server_final = state.finish(&response.data)?;
    if !known {
        return Err(AuthError::Unknown);
    }

    send(stream, Authentication::SASLFinal(server_final.into())).await?;
    send(stream, Authentication::Ok).await?;
    Ok(())
}

/// Sends the uniform authentication failure.
pub async fn send_failure(stream: &mut ClientStream, user: &str) {
    let mut out = BytesMut::new();
    ClientError::auth_failed(user).encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

async fn send(stream: &mut ClientStream, message: Authentication) -> Result<(), AuthError> {
    let mut out = BytesMut::new();
    message
        .encode(&mut out)
        .map_err(|_| AuthError::Protocol("authentication message too large"))?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one whole `p` frame.
async fn read_password_frame(stream: &mut ClientStream) -> Result<BytesMut, AuthError> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await?;
    if header[0] != b'p' {
        return Err(AuthError::Protocol("expected a SASL response"));
    }

    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_AUTH_MESSAGE).contains(&len) {
        return Err(AuthError::Protocol("SASL message length out of range"));
    }

    let mut frame = BytesMut::zeroed(len + 1);
    frame[..5].copy_from_slice(&header);
    stream.read_exact(&mut frame[5..]).await?;
    Ok(frame)
}

async fn read_initial(stream: &mut ClientStream) -> Result<SASLInitialResponse, AuthError> {
    let frame = read_password_frame(stream).await?;
    check_initial_shape(&frame[5..])?;

    let mut buf = frame;
    let ctx = DecodeContext::new(ProtocolVersion::default());
    match SASLInitialResponse::decode(&mut buf, &ctx) {
        Ok(Some(message)) => Ok(message),
        _ => Err(AuthError::Protocol("malformed SASLInitialResponse")),
    }
}

/// pgwire trusts the inner length of `SASLInitialResponse`; check it before decoding.
fn check_initial_shape(body: &[u8]) -> Result<(), AuthError> {
    let bad = AuthError::Protocol("malformed SASLInitialResponse");
    let nul = body.iter().position(|&b| b == 0).ok_or(bad)?;
    let mut rest = body.get(nul + 1..).unwrap_or(&[]);
    if rest.len() < 4 {
        return Err(AuthError::Protocol("malformed SASLInitialResponse"));
    }

    let declared = rest.get_i32();
    let fits = declared == -1 || usize::try_from(declared).is_ok_and(|n| n == rest.len());
    if !fits {
        return Err(AuthError::Protocol("SASLInitialResponse length mismatch"));
    }
    Ok(())
}

async fn read_response(stream: &mut ClientStream) -> Result<SASLResponse, AuthError> {
    let mut buf = read_password_frame(stream).await?;
    let ctx = DecodeContext::new(ProtocolVersion::default());
    match SASLResponse::decode(&mut buf, &ctx) {
        Ok(Some(message)) => Ok(message),
        _ => Err(AuthError::Protocol("malformed SASLResponse")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_response_shape_is_checked() {
        assert!(check_initial_shape(b"SCRAM-SHA-256\0\0\0\0\x03abc").is_ok());
        assert!(check_initial_shape(b"SCRAM-SHA-256\0\0\0\0\x09abc").is_err());
        assert!(check_initial_shape(b"SCRAM-SHA-256\0\xff\xff\xff\xfe").is_err());
        assert!(check_initial_shape(b"SCRAM").is_err());
    }
}
