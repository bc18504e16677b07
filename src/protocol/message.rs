//! Readers for the message bodies the proxy must understand, and builders for the messages it
//! writes itself. Readers take a whole frame (tag and length included) and fail with
//! [`BodyError`] on anything truncated or malformed; they never panic.

use bytes::{BufMut, BytesMut};

/// A body that does not match its message type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {tag:?} message")]
pub struct BodyError {
    /// The message tag.
    pub tag: char,
}

/// A cursor over a frame body.
struct Body<'a> {
    tag: u8,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Body<'a> {
    fn of(frame: &'a [u8]) -> Self {
        Self {
            tag: frame.first().copied().unwrap_or(0),
            bytes: frame.get(5..).unwrap_or(&[]),
            pos: 0,
        }
    }

    fn err(&self) -> BodyError {
        BodyError {
            tag: self.tag as char,
        }
    }

    fn cstr(&mut self) -> Result<&'a [u8], BodyError> {
        let rest = self.bytes.get(self.pos..).ok_or(self.err())?;
        let end = rest.iter().position(|&b| b == 0).ok_or(self.err())?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    fn byte(&mut self) -> Result<u8, BodyError> {
        let b = *self.bytes.get(self.pos).ok_or(self.err())?;
        self.pos += 1;
        Ok(b)
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or(&[])
    }
}

/// Text of a simple `Query` (`Q`).
pub fn query_text(frame: &[u8]) -> Result<&[u8], BodyError> {
    Body::of(frame).cstr()
}

/// The parts of a `Parse` (`P`) message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: &'a [u8],
    /// The SQL text.
    pub query: &'a [u8],
    /// Parameter type count and OIDs, kept as bytes.
    pub param_types: &'a [u8],
}

/// Reads a `Parse` message.
pub fn parse(frame: &[u8]) -> Result<Parse<'_>, BodyError> {
    let mut body = Body::of(frame);
    let name = body.cstr()?;
    let query = body.cstr()?;
    Ok(Parse {
        name,
        query,
        param_types: body.rest(),
    })
}

/// The parts of a `Bind` (`B`) message the proxy may rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal.
    pub portal: &'a [u8],
    /// Source statement.
    pub statement: &'a [u8],
    /// Formats and parameter values, kept as bytes.
    pub rest: &'a [u8],
}

/// Reads a `Bind` message.
pub fn bind(frame: &[u8]) -> Result<Bind<'_>, BodyError> {
    let mut body = Body::of(frame);
    let portal = body.cstr()?;
    let statement = body.cstr()?;
    Ok(Bind {
        portal,
        statement,
        rest: body.rest(),
    })
}

/// The portal name of an `Execute` (`E`).
pub fn execute_portal(frame: &[u8]) -> Result<&[u8], BodyError> {
    Body::of(frame).cstr()
}

/// A `Describe` (`D`) or `Close` (`C`) target: `S` for a statement, `P` for a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// `b'S'` or `b'P'`.
    pub kind: u8,
    /// Object name.
    pub name: &'a [u8],
}

/// Reads a `Describe` or `Close` message.
pub fn target(frame: &[u8]) -> Result<Target<'_>, BodyError> {
    let mut body = Body::of(frame);
    let kind = body.byte()?;
    let name = body.cstr()?;
    if kind != b'S' && kind != b'P' {
        return Err(body.err());
    }
    Ok(Target { kind, name })
}

/// Transaction status of a `ReadyForQuery` (`Z`): `I`, `T` or `E`.
pub fn ready_status(frame: &[u8]) -> Result<u8, BodyError> {
    Body::of(frame).byte()
}

/// Name and value of a `ParameterStatus` (`S`).
pub fn parameter_status(frame: &[u8]) -> Result<(String, String), BodyError> {
    let mut body = Body::of(frame);
    let name = String::from_utf8_lossy(body.cstr()?).into_owned();
    let value = String::from_utf8_lossy(body.cstr()?).into_owned();
    Ok((name, value))
}

/// The channel of a `NotificationResponse` (`A`).
pub fn notification_channel(frame: &[u8]) -> Result<&[u8], BodyError> {
    let mut body = Body::of(frame);
    for _ in 0..4 {
        body.byte()?;
    }
    body.cstr()
}

/// The fields of an `ErrorResponse` or `NoticeResponse` that the proxy looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// Non-localized severity (`V`), or `S` when `V` is absent.
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
}

/// Reads an `ErrorResponse` (`E`) or `NoticeResponse` (`N`).
pub fn error_fields(frame: &[u8]) -> Result<ErrorFields, BodyError> {
    let mut body = Body::of(frame);
    let mut fields = ErrorFields::default();
    loop {
        let kind = body.byte()?;
        if kind == 0 {
            return Ok(fields);
        }
        let value = String::from_utf8_lossy(body.cstr()?).into_owned();
        match kind {
            b'V' => fields.severity = value,
            b'S' if fields.severity.is_empty() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
    }
}

/// Starts a frame with `tag`, returning the offset of its length field.
fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    at
}

/// Writes the final length of a frame started with [`begin`].
fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Appends a `Parse`.
pub fn put_parse(out: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    let at = begin(out, b'P');
    put_cstr(out, name);
    put_cstr(out, query);
    out.put_slice(param_types);
    finish(out, at);
}

/// Appends a `Bind` naming another statement.
pub fn put_bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    let at = begin(out, b'B');
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_slice(rest);
    finish(out, at);
}

/// Appends a `Describe` (`tag = b'D'`) or `Close` (`tag = b'C'`).
pub fn put_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    let at = begin(out, tag);
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, at);
}

/// Appends a simple `Query`.
pub fn put_query(out: &mut BytesMut, sql: &str) {
    let at = begin(out, b'Q');
    put_cstr(out, sql.as_bytes());
    finish(out, at);
}

/// Appends a `Sync`.
pub fn put_sync(out: &mut BytesMut) {
    out.put_slice(b"S\0\0\0\x04");
}

/// Appends a `Terminate`.
pub fn put_terminate(out: &mut BytesMut) {
    out.put_slice(b"X\0\0\0\x04");
}

/// Appends a `ParseComplete`.
pub fn put_parse_complete(out: &mut BytesMut) {
    out.put_slice(b"1\0\0\0\x04");
}

/// Appends a `CloseComplete`.
pub fn put_close_complete(out: &mut BytesMut) {
    out.put_slice(b"3\0\0\0\x04");
}

/// Appends a `ReadyForQuery` with the given status byte.
pub fn put_ready_for_query(out: &mut BytesMut, status: u8) {
    out.put_slice(b"Z\0\0\0\x05");
    out.put_u8(status);
}

/// Appends a `ParameterStatus`.
pub fn put_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let at = begin(out, b'S');
    put_cstr(out, name.as_bytes());
    put_cstr(out, value.as_bytes());
    finish(out, at);
}

/// Appends a `BackendKeyData`.
pub fn put_backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_slice(b"K\0\0\0\x0c");
    out.put_i32(pid);
    out.put_i32(secret);
}

/// Appends a `CommandComplete`.
pub fn put_command_complete(out: &mut BytesMut, tag: &str) {
    let at = begin(out, b'C');
    put_cstr(out, tag.as_bytes());
    finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips() {
        let mut out = BytesMut::new();
        put_parse(&mut out, b"s1", b"select $1", b"\0\x01\0\0\0\x17");
        let p = parse(&out).expect("valid parse");
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"select $1");
        assert_eq!(p.param_types, b"\0\x01\0\0\0\x17");
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        assert!(parse(b"P\0\0\0\x06ab").is_err());
        assert!(bind(b"B\0\0\0\x04").is_err());
        assert!(target(b"D\0\0\0\x05X").is_err());
        assert!(error_fields(b"E\0\0\0\x06Cx").is_err());
        assert!(ready_status(b"Z").is_err());
    }

    #[test]
    fn readers_survive_every_short_body() {
        let full = b"P\0\0\0\x20name\0select 1\0\0\x01\0\0\0\x17extra\0\0";
        for end in 0..=full.len() {
            let frame = &full[..end];
            let _ = query_text(frame);
            let _ = parse(frame);
            let _ = bind(frame);
            let _ = target(frame);
            let _ = ready_status(frame);
            let _ = parameter_status(frame);
            let _ = error_fields(frame);
        }
    }

    #[test]
    fn error_fields_prefer_unlocalized_severity() {
        let frame = b"E\0\0\0\x1bSFEHLER\0VERROR\0C42P01\0\0";
        let f = error_fields(frame).expect("valid");
        assert_eq!(f.severity, "ERROR");
        assert_eq!(f.code, "42P01");
    }
}
