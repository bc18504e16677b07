//! TLS for the client side: a rustls server configuration that speaks TLS 1.3 only, with the
//! `ring` provider and ALPN `postgresql`, plus detection of PostgreSQL 17's direct TLS (a
//! ClientHello as the very first bytes) and a self-signed certificate for `pgtenant dev`.
//!
//! The configuration lives behind an `ArcSwap`-like `RwLock<Arc<_>>` in the server so SIGHUP
//! can replace certificates; connections already established keep the one they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol name PostgreSQL 17 clients send.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// First byte of a TLS handshake record; a StartupMessage can never begin with it.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// A TLS setup problem, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file did not load.
    #[error("{setting}: cannot load {path}: {message}")]
    Load {
        /// The setting that names the file (`proxy.tls_cert`, `proxy.tls_key`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("proxy.tls_cert {cert} and proxy.tls_key {key} do not form a valid pair: {message}")]
    Pair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// Why.
        message: String,
    },
    /// A generated certificate or key could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Self-signed generation failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// Builds the TLS 1.3-only server configuration from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |e: &dyn std::fmt::Display| TlsError::Load {
        setting: "proxy.tls_cert",
        path: cert.to_owned(),
        message: e.to_string(),
    };
    let key_err = |e: &dyn std::fmt::Display| TlsError::Load {
        setting: "proxy.tls_key",
        path: key.to_owned(),
        message: e.to_string(),
    };

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(&e))?;
    if chain.is_empty() {
        return Err(cert_err(&"no certificate found"));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(&e))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_err = |e: rustls::Error| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        message: e.to_string(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(pair_err)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(pair_err)?;

    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// Writes a self-signed certificate for `names` into `dir`; returns (cert, key) paths.
pub fn write_self_signed(dir: &Path, names: &[&str]) -> Result<(PathBuf, PathBuf), TlsError> {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;

    let cert_path = dir.join("pgtenant.crt");
    let key_path = dir.join("pgtenant.key");
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| TlsError::Write {
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    write(&cert_path, generated.cert.pem())?;
    write(&key_path, generated.signing_key.serialize_pem())?;

    Ok((cert_path, key_path))
}

/// The tenant named by the first label of an SNI host name (`acme.db.example.com` → `acme`).
pub fn sni_tenant(server_name: &str) -> Option<&str> {
    let first = server_name.split('.').next()?;
    (!first.is_empty()).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_loads_as_tls13_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_self_signed(dir.path(), &["localhost"]).expect("generate");
        let config = server_config(&cert, &key).expect("loads");
        assert_eq!(config.alpn_protocols, vec![ALPN_POSTGRESQL.to_vec()]);
    }

    #[test]
    fn missing_files_are_named() {
        let err =
            server_config(Path::new("/nope.crt"), Path::new("/nope.key")).expect_err("must fail");
        assert!(err.to_string().contains("/nope.crt"), "{err}");
    }

    #[test]
    fn sni_first_label_names_tenant() {
        assert_eq!(sni_tenant("acme.db.example.com"), Some("acme"));
        assert_eq!(sni_tenant(".x"), None);
    }
}
