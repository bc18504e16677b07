//! The configuration file as written by people: serde types that mirror `pgtenant.toml`.
//!
//! Every struct denies unknown keys so a typo is an error that names the key, and every field
//! documents its default and whether a reload (SIGHUP) applies it. These types are only ever
//! read; `super::Config::from_file` turns them into validated runtime values.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Client-facing listener settings.
    #[serde(default)]
    pub proxy: ProxySection,
    /// Where PostgreSQL is and how tenant pools behave by default.
    #[serde(default)]
    pub backend: BackendSection,
    /// Tenants served by this proxy.
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
}

/// `[proxy]`: the client side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// Address to listen on. Default `127.0.0.1:6432`. Needs a restart.
    pub listen: String,
    /// `required`, `preferred` or `disabled`. Default `preferred`. Reload applies.
    pub tls: TlsMode,
    /// PEM certificate chain. Required unless `tls = "disabled"`. Reload applies.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`. Reload applies.
    pub tls_key: Option<PathBuf>,
    /// How a client names its tenant, tried in order. Default `["database", "sni", "options"]`.
    pub tenant_from: Vec<TenantSource>,
    /// A login must finish within this time. Default `10s`. Reload applies.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// How long a client waits for a backend of its tenant. Default `5s`. Reload applies.
    #[serde(with = "humantime_serde")]
    pub query_wait_timeout: Duration,
    /// On SIGTERM, how long running transactions may finish. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Address of the Prometheus endpoint; none when absent. Needs a restart.
    pub metrics_listen: Option<String>,
    /// Threads that run sessions. Default `1`: one event loop, like PgBouncer, which costs
    /// the least CPU per transaction; `0` means one per CPU for machines where the proxy has
    /// cores of its own. Needs a restart.
    pub worker_threads: usize,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6432".into(),
            tls: TlsMode::Preferred,
            tls_cert: None,
            tls_key: None,
            tenant_from: vec![
                TenantSource::Database,
                TenantSource::Sni,
                TenantSource::Options,
            ],
            login_timeout: Duration::from_secs(10),
            query_wait_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            metrics_listen: None,
            worker_threads: 1,
        }
    }
}

/// Whether the listener offers, demands or refuses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Only TLS 1.3 clients get in.
    Required,
    /// TLS 1.3 when the client asks; plaintext otherwise.
    Preferred,
    /// `SSLRequest` is answered with `N`; direct TLS is refused.
    Disabled,
}

/// One way of naming a tenant at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantSource {
    /// The `database` startup parameter.
    Database,
    /// The first label of the TLS server name (SNI).
    Sni,
    /// `options=-c pgtenant.tenant=<name>`.
    Options,
}

/// `[backend]`: the PostgreSQL server every tenant pool connects to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSection {
    /// Host name or address. Default `127.0.0.1`. Needs a restart.
    pub host: String,
    /// Port. Default `5432`. Needs a restart.
    pub port: u16,
    /// Database that holds the tenant schemas. Default `postgres`.
    pub database: String,
    /// Time allowed to open and log in a backend connection. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Backend connections per tenant unless the tenant says otherwise. Default `5`.
    pub pool_size: usize,
    /// Idle backend connections are closed after this long. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "postgres".into(),
            connect_timeout: Duration::from_secs(5),
            pool_size: 5,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// `[[tenants]]`: one customer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    /// Tenant name, as clients give it (lowercase identifier).
    pub name: String,
    /// Schema pinned as `search_path`. Default: the tenant name.
    pub schema: Option<String>,
    /// PostgreSQL role the backend connections log in as. Default: the tenant name.
    pub role: Option<String>,
    /// Password of that role; omit when PostgreSQL trusts the proxy.
    pub role_password: Option<String>,
    /// `transaction` (default) or `session`.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Backend connections for this tenant; default `[backend] pool_size`.
    pub pool_size: Option<usize>,
    /// Client logins accepted for this tenant.
    #[serde(default)]
    pub users: Vec<UserSection>,
}

/// How long a client keeps a backend connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A backend per transaction.
    #[default]
    Transaction,
    /// A backend per client session.
    Session,
}

/// `[[tenants.users]]`: a client login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// User name the client sends.
    pub name: String,
    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, as `pgtenant passwd` prints.
    pub verifier: String,
}
