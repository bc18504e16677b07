//! Names of the side schemas: `<schema>_next_<ms>` for a copy being built and
//! `<schema>_retired_<ms>` for a schema set aside, `<ms>` being Unix milliseconds.
//!
//! PostgreSQL silently truncates identifiers past 63 bytes, which could make two names equal,
//! so a schema name too long to take the suffix is cut and followed by eight hex digits of its
//! SHA-256: names of different long schemas stay apart, and every name fits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// PostgreSQL's identifier limit in bytes (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER: usize = 63;

/// The marker [`next_name`] puts before its stamp; `discard_next` drops only such names.
pub(super) const NEXT_MARKER: &str = "_next_";

/// The last stamp [`next_name`] handed out, so two calls never share one.
static LAST_NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh name for a copy of `schema` being built: distinct for every call in this process
/// (a millisecond stamp that never repeats), at most 63 bytes.
pub fn next_name(schema: &str) -> String {
    let now = unix_millis(SystemTime::now());
    let stamp = match LAST_NEXT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        Some(now.max(last + 1))
    }) {
        Ok(last) | Err(last) => now.max(last + 1),
    };
    side_name(schema, NEXT_MARKER, stamp)
}

/// The name `schema` takes when it is retired at `at`, at most 63 bytes.
pub fn retired_name(schema: &str, at: SystemTime) -> String {
    side_name(schema, "_retired_", unix_millis(at))
}

fn side_name(schema: &str, marker: &str, stamp: u64) -> String {
    let suffix = format!("{marker}{stamp}");
    if schema.len() + suffix.len() <= MAX_IDENTIFIER {
        return format!("{schema}{suffix}");
    }

    let digest = Sha256::digest(schema.as_bytes());
    let tag: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = MAX_IDENTIFIER - suffix.len() - tag.len() - 1;
    format!("{}_{tag}{suffix}", prefix(schema, keep))
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character boundary.
fn prefix(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

fn unix_millis(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn short_names_keep_the_schema_and_a_stamp() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(retired_name("acme", at), "acme_retired_1700000000123");
        assert!(next_name("acme").starts_with("acme_next_"));
    }

    #[test]
    fn next_names_differ_between_calls() {
        let names: Vec<String> = (0..50).map(|_| next_name("acme")).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn long_names_are_shortened_with_a_hash_and_stay_apart() {
        let a = "a".repeat(63);
        let b = format!("{}b", "a".repeat(62));
        let at = SystemTime::now();
        for name in [next_name(&a), retired_name(&a, at), retired_name(&b, at)] {
            assert!(name.len() <= MAX_IDENTIFIER, "{name} is too long");
        }
        assert_ne!(retired_name(&a, at), retired_name(&b, at));
        assert!(next_name(&a).contains(NEXT_MARKER));
    }

    #[test]
    fn multibyte_names_are_cut_on_character_boundaries() {
        let schema = "é".repeat(31);
        let name = retired_name(&schema, SystemTime::now());
        assert!(name.len() <= MAX_IDENTIFIER);
        assert!(name.starts_with('é'));
    }
}
