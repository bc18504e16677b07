//! Framing of typed messages: a one-byte tag, a four-byte big-endian length that counts
//! itself, and a body. The decoder only looks at headers and tells "need more bytes" apart
//! from "invalid"; callers forward the frame's original bytes.

/// Largest message the proxy accepts in either direction, as PostgreSQL's own limit (1 GiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// A header that can never be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is below 4.
    #[error("message {tag:?} declares length {len}, below the minimum 4")]
    TooShort {
        /// The message tag, as a character.
        tag: char,
        /// Declared length.
        len: usize,
    },
    /// The length is over the cap for this message type.
    #[error("message {tag:?} declares length {len}, over the limit {limit}")]
    TooLong {
        /// The message tag.
        tag: char,
        /// Declared length.
        len: usize,
        /// The limit for this tag.
        limit: usize,
    },
}

/// A complete frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message tag, e.g. `b'Q'`.
    pub tag: u8,
    /// Total length of the frame in bytes (tag + length field + body).
    pub total: usize,
}

/// Cap per message type: control messages with no body are tiny, the rest may be large.
fn limit_for(tag: u8) -> usize {
    match tag {
        b'S' | b'H' | b'X' | b'c' => 4,
        _ => MAX_MESSAGE_LEN,
    }
}

/// Looks at the front of `buf`: `Ok(None)` when the frame is not complete yet.
pub fn next_frame(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };

    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    check_len(tag, len)?;

    let total = len + 1;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(FrameHeader { tag, total }))
}

/// Like [`next_frame`] but without a per-tag cap beyond the global one: backend messages
/// such as `ParameterStatus` reuse tags that are tiny on the client side.
pub fn next_backend_frame(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };

    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len < 4 {
        return Err(FrameError::TooShort {
            tag: tag as char,
            len,
        });
    }
    if len > MAX_MESSAGE_LEN {
        return Err(FrameError::TooLong {
            tag: tag as char,
            len,
            limit: MAX_MESSAGE_LEN,
        });
    }

    let total = len + 1;
    Ok((buf.len() >= total).then_some(FrameHeader { tag, total }))
}

fn check_len(tag: u8, len: usize) -> Result<(), FrameError> {
    if len < 4 {
        return Err(FrameError::TooShort {
            tag: tag as char,
            len,
        });
    }

    let limit = limit_for(tag);
    if len > limit {
        return Err(FrameError::TooLong {
            tag: tag as char,
            len,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_frames_ask_for_more() {
        assert_eq!(next_frame(b"Q\0\0"), Ok(None));
        assert_eq!(next_frame(b"Q\0\0\0\x09SEL"), Ok(None));
    }

    #[test]
    fn complete_frame_reports_total_length() {
        let got = next_frame(b"Q\0\0\0\x05xZ").expect("valid");
        assert_eq!(
            got,
            Some(FrameHeader {
                tag: b'Q',
                total: 6
            })
        );
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(next_frame(b"Q\0\0\0\x03").is_err());
        assert!(next_frame(b"S\0\0\0\x05x").is_err());
        assert!(next_frame(b"Q\x7f\xff\xff\xff").is_err());
    }
}
