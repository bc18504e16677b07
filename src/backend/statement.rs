//! A prepared statement as the proxy keeps it: the SQL text and parameter types a client
//! sent, and, for named statements, the proxy-unique name it has on every backend. Named
//! statements are named by a digest of text and types, so the same statement prepared by
//! many clients exists once per backend.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::frontend::classify::Effect;

/// A client's named statement, as the backend knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Proxy-unique name on every backend.
    pub proxy_name: String,
    /// SQL text.
    pub query: Bytes,
    /// Parameter count and type OIDs, as sent.
    pub param_types: Bytes,
    /// What executing it does to session state (tracked for the unnamed statement only).
    pub effect: Effect,
}

impl Statement {
    /// A named statement, named by a digest of its text and parameter types.
    pub fn new(query: &[u8], param_types: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(query);
        hash.update([0]);
        hash.update(param_types);
        let digest = hash.finalize();
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();

        Self {
            proxy_name: format!("pgt_{hex}"),
            query: Bytes::copy_from_slice(query),
            param_types: Bytes::copy_from_slice(param_types),
            effect: Effect::None,
        }
    }

    /// The unnamed statement: no proxy name, kept only to re-parse it where needed.
    pub fn unnamed(query: &[u8], param_types: &[u8], effect: Effect) -> Self {
        Self {
            proxy_name: String::new(),
            query: Bytes::copy_from_slice(query),
            param_types: Bytes::copy_from_slice(param_types),
            effect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_sql_and_types_give_same_proxy_name() {
        let a = Statement::new(b"select $1", b"\0\x01\0\0\0\x17");
        let b = Statement::new(b"select $1", b"\0\x01\0\0\0\x17");
        let c = Statement::new(b"select $1", b"\0\x01\0\0\0\x19");
        assert_eq!(a.proxy_name, b.proxy_name);
        assert_ne!(a.proxy_name, c.proxy_name);
        assert!(a.proxy_name.len() < 64);
    }
}
