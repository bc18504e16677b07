//! SCRAM-SHA-256 server side (RFC 5802, RFC 7677) against PostgreSQL-format verifiers.
//!
//! Only `StoredKey` and `ServerKey` are kept, never a password or a salted password. A login
//! for an unknown user or tenant runs the same exchange against a decoy verifier derived from
//! a per-process secret, so the salt is stable per user name and the failure looks exactly
//! like a wrong password. Channel binding (`-PLUS`) is not offered.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The only mechanism offered.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// A parsed `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

impl Verifier {
    /// Parses the PostgreSQL text form; the error quotes the part that is wrong, never keys.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or("verifier must start with \"SCRAM-SHA-256$\"")?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or("verifier must look like SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>")?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or("missing \":\" after iterations")?;
        let (stored, server) = keys.split_once(':').ok_or("missing \":\" between keys")?;

        let iterations: u32 = iter
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("iteration count {iter:?} is not a positive number"))?;
        let salt = B64
            .decode(salt)
            .map_err(|_| "salt is not base64".to_owned())?;

        Ok(Self {
            iterations,
            salt,
            stored_key: decode_key(stored, "StoredKey")?,
            server_key: decode_key(server, "ServerKey")?,
        })
    }

    /// A decoy verifier for unknown users and tenants: a salt that is stable per `seed` (the
    /// user and the tenant names the login asked for), keys nobody can match.
    pub fn decoy(secret: &[u8; 32], seed: &str) -> Self {
        let salt = hmac(secret, seed.as_bytes());
        Self {
            iterations: 4096,
            salt: salt[..16].to_vec(),
            stored_key: hmac(secret, b"stored"),
            server_key: hmac(secret, b"server"),
        }
    }
}

fn decode_key(text: &str, what: &str) -> Result<[u8; 32], String> {
    let bytes = B64
        .decode(text)
        .map_err(|_| format!("{what} is not base64"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{what} is not 32 bytes"))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Why an exchange failed. All variants end in the same client-visible `28P01`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client asked for a mechanism we do not offer.
    #[error("unsupported SASL mechanism {0:?}")]
    Mechanism(String),
    /// A SCRAM message did not parse.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding was requested; it is not offered.
    #[error("channel binding requested but not offered")]
    ChannelBinding,
    /// The proof did not match.
    #[error("wrong proof")]
    WrongProof,
}

/// State after the server-first message: waiting for the client's final message.
pub struct ServerFirst {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerFirst {
    /// Handles the client-first message and returns the state plus the server-first message.
    pub fn start(
        verifier: Verifier,
        mechanism: &str,
        client_first: &[u8],
    ) -> Result<(Self, String), ScramError> {
        if mechanism != MECHANISM {
            return Err(ScramError::Mechanism(mechanism.to_owned()));
        }

        let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("utf8"))?;
        let (gs2_header, bare) = split_gs2(text)?;
        let client_nonce = attribute(bare, 'r').ok_or(ScramError::Malformed("missing nonce"))?;

        let nonce = format!("{client_nonce}{}", server_nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );

        let state = Self {
            verifier,
            gs2_header: gs2_header.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((state, server_first))
    }

    /// Checks the client-final message; on success returns the server-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("utf8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;

        let binding = attribute(without_proof, 'c').ok_or(ScramError::Malformed("missing c"))?;
        if binding != B64.encode(&self.gs2_header) {
            return Err(ScramError::Malformed("channel binding data mismatch"));
        }
        if attribute(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce mismatch"));
        }

        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        self.verify_proof(&auth_message, proof)?;

        let signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(signature)))
    }

    fn verify_proof(&self, auth_message: &str, proof: &str) -> Result<(), ScramError> {
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof"))?;
        if proof.len() != 32 {
            return Err(ScramError::WrongProof);
        }

        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let stored_key: [u8; 32] = Sha256::digest(&client_key).into();

        if bool::from(stored_key.ct_eq(&self.verifier.stored_key)) {
            Ok(())
        } else {
            Err(ScramError::WrongProof)
        }
    }
}

/// Splits `gs2-header` (`n,,` or `y,,`) from `client-first-message-bare`.
fn split_gs2(text: &str) -> Result<(&str, &str), ScramError> {
    let flag = text.chars().next().ok_or(ScramError::Malformed("empty"))?;
    if flag == 'p' {
        return Err(ScramError::ChannelBinding);
    }
    if flag != 'n' && flag != 'y' {
        return Err(ScramError::Malformed("gs2 flag"));
    }

    // gs2-header = flag "," [authzid] ","
    let mut commas = text.match_indices(',').map(|(i, _)| i);
    let second = commas.nth(1).ok_or(ScramError::Malformed("gs2 header"))?;
    Ok(text.split_at(second + 1))
}

/// Value of a one-letter attribute (`r=...`) in a comma-separated SCRAM message.
fn attribute(text: &str, name: char) -> Option<&str> {
    text.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

fn server_nonce() -> String {
    let bytes: [u8; 18] = rand::rng().random();
    B64.encode(bytes)
}

/// A fresh process-wide secret for decoy verifiers.
pub fn decoy_secret() -> [u8; 32] {
    rand::rng().random()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the client side with postgres-protocol to check the server against it.
    fn login(verifier_text: &str, password: &str) -> Result<(), ScramError> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

        let verifier = Verifier::parse(verifier_text).expect("valid verifier");
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (state, server_first) = ServerFirst::start(verifier, MECHANISM, client.message())?;

        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server-first"))?;
        let server_final = state.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server signature"))
    }

    #[test]
    fn right_password_logs_in_and_server_is_verified() {
        let verifier = postgres_protocol::password::scram_sha_256(b"s3cret");
        assert_eq!(login(&verifier, "s3cret"), Ok(()));
    }

    #[test]
    fn wrong_password_is_refused() {
        let verifier = postgres_protocol::password::scram_sha_256(b"s3cret");
        assert_eq!(login(&verifier, "guess"), Err(ScramError::WrongProof));
    }

    #[test]
    fn decoy_never_accepts() {
        let decoy = Verifier::decoy(&[7; 32], "nobody");
        let (state, _) = ServerFirst::start(decoy, MECHANISM, b"n,,n=,r=abc").expect("starts");
        let forged = format!("c=biws,r=abc,p={}", B64.encode([0u8; 32]));
        assert!(state.finish(forged.as_bytes()).is_err());
    }

    #[test]
    fn malformed_verifiers_name_the_problem() {
        assert!(Verifier::parse("md5abc").is_err());
        let err = Verifier::parse("SCRAM-SHA-256$x:c2FsdA==$a:b").expect_err("bad iter");
        assert!(err.contains("\"x\""), "{err}");
    }

    #[test]
    fn channel_binding_is_refused() {
        let verifier = Verifier::decoy(&[1; 32], "u");
        let got = ServerFirst::start(verifier, MECHANISM, b"p=tls-server-end-point,,n=,r=x");
        assert!(matches!(got, Err(ScramError::ChannelBinding)));
    }
}
