//! Configuration: the file format (`file`) and the validated runtime values built from it.
//!
//! Loading is parse → validate → build. A reload runs the same steps and the caller swaps the
//! result in atomically, so a bad file never replaces a good configuration. Errors name the
//! offending key and value in one line.

pub mod file;
pub mod governance;
pub mod rollout;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use file::{BusyPolicy, DrainPolicy, FailurePolicy, Strategy};
pub use file::{CatalogSection as CatalogSettings, TenantSection};
pub use file::{PoolMode, TenantSource, Tier, TlsMode};
pub use governance::{BudgetSettings, LimitSettings, Overfull, Rate, TierSettings};
pub use rollout::RolloutSettings;

use crate::frontend::scram::Verifier;
use file::{ConfigFile, ProvisioningSection, UserSection};

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's one-line message.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key path, such as `tenants[1].schema`.
        key: String,
        /// What is wrong, quoting the value.
        message: String,
    },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A catalog row refused: the tenant's name and why.
type Rejected = (String, ConfigError);

/// Validated, ready-to-use configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client side.
    pub proxy: ProxySettings,
    /// Server side.
    pub backend: BackendSettings,
    /// Global connection budget.
    pub budget: BudgetSettings,
    /// Tier sizes and ranking.
    pub tiers: TierSettings,
    /// Default per-tenant limits.
    pub limits: LimitSettings,
    /// The tenant catalog; when set, `tenants` is what it last held.
    pub catalog: Option<CatalogSettings>,
    /// Migration files and how rollouts run.
    pub migrations: RolloutSettings,
    /// How new tenants are set up.
    pub provisioning: ProvisioningSettings,
    /// Tenants by name, suspended ones included.
    pub tenants: HashMap<String, Arc<Tenant>>,
    /// Support admins: login name → SCRAM verifier (the file's and the catalog's).
    pub admins: HashMap<String, Verifier>,
    /// The file's own admins, which a catalog snapshot adds to.
    file_admins: HashMap<String, Verifier>,
}

/// Validated `[provisioning]`.
#[derive(Debug, Clone)]
pub struct ProvisioningSettings {
    /// Demo data SQL file, resolved against the file's folder.
    pub demo_data: Option<PathBuf>,
    /// `CONNECTION LIMIT` of tenant roles.
    pub connection_limit: i32,
    /// `host:port` for printed URLs.
    pub public_address: String,
    /// Client login created with each tenant.
    pub user: String,
}

/// Validated `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Listen address (`host:port`).
    pub listen: String,
    /// TLS policy.
    pub tls: TlsMode,
    /// Certificate and key paths when TLS is on.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Tenant naming order.
    pub tenant_from: Vec<TenantSource>,
    /// Login deadline.
    pub login_timeout: Duration,
    /// Queue deadline for a backend.
    pub query_wait_timeout: Duration,
    /// Drain deadline on shutdown.
    pub shutdown_timeout: Duration,
    /// Prometheus endpoint.
    pub metrics_listen: Option<String>,
    /// Session threads; 0 = one per CPU.
    pub worker_threads: usize,
}

/// Validated `[backend]`.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// Connect + login deadline.
    pub connect_timeout: Duration,
    /// Idle connection lifetime.
    pub idle_timeout: Duration,
    /// `DISCARD ALL` after every transaction.
    pub reset_after_transaction: bool,
}

/// One tenant, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Name clients use.
    pub name: String,
    /// Schema pinned as `search_path`.
    pub schema: String,
    /// Backend login role.
    pub role: String,
    /// Backend login password, if PostgreSQL asks for one.
    pub role_password: Option<String>,
    /// Pooling mode.
    pub pool_mode: PoolMode,
    /// Backend connections, overriding the tier's size.
    pub pool_size: Option<usize>,
    /// Tier pinned in the configuration.
    pub tier: Option<Tier>,
    /// Transaction rate limit (the tenant's own or the default).
    pub rate: Option<Rate>,
    /// Client connection cap (the tenant's own or the default).
    pub max_client_connections: Option<usize>,
    /// Logins refused, sessions ended after their transaction.
    pub suspended: bool,
    /// Client logins: user name → SCRAM verifier.
    pub users: HashMap<String, Verifier>,
    /// Generation of the tenant's schema (the catalog's; 0 for tenants in the file).
    pub generation: i64,
}

impl Tenant {
    /// Whether backend connections made for `other` would be the same as for `self`: same
    /// role, password, schema, pooling and schema generation, and both served. Limits and
    /// logins may differ. A new generation means the schema changed under the connections:
    /// their cached plans and prepared statements may be stale, so the pool is replaced.
    pub fn same_backend(&self, other: &Tenant) -> bool {
        !self.suspended
            && !other.suspended
            && self.generation == other.generation
            && self.name == other.name
            && self.schema == other.schema
            && self.role == other.role
            && self.role_password == other.role_password
            && self.pool_mode == other.pool_mode
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;

        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
        })?;

        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_parsed(file, base)
    }

    /// Validates an already parsed file; relative paths resolve against `base`.
    pub fn from_parsed(file: ConfigFile, base: &Path) -> Result<Self, ConfigError> {
        let proxy = validate_proxy(&file.proxy, base)?;
        let backend = validate_backend(&file.backend)?;
        let budget = governance::budget(&file.budget)?;
        let tiers = governance::tiers(&file.tiers)?;
        let limits = governance::limits(&file.limits)?;

        let catalog = validate_catalog(file.catalog, &file.tenants)?;
        let provisioning = validate_provisioning(&file.provisioning, &proxy, base)?;
        let migrations = rollout::validate(&file.migrations, &budget, base)?;

        let tenants = tenant_map(&file.tenants, &limits, "tenants")?;
        governance::check_fit(&tenants, &budget, &tiers)?;
        let admins = logins(&file.admins, "admins")?;
        Ok(Self {
            proxy,
            backend,
            budget,
            tiers,
            limits,
            catalog,
            migrations,
            provisioning,
            tenants,
            file_admins: admins.clone(),
            admins,
        })
    }

    /// This configuration serving `sections` and `admins` (read from the catalog) instead
    /// of its own. A tenant whose row is invalid keeps its previous definition (or stays
    /// unserved) and is logged, so one bad row never holds back the rest of the catalog;
    /// tenants that cannot fit in the budget refuse the whole snapshot.
    pub fn with_tenants(
        &self,
        sections: &[TenantSection],
        admins: &[UserSection],
    ) -> Result<Self, ConfigError> {
        let (tenants, rejected) = self.catalog_tenants(sections);
        for (name, error) in &rejected {
            tracing::error!(
                %error,
                tenant = %name,
                kept_previous = tenants.contains_key(name),
                "catalog tenant rejected"
            );
        }
        governance::check_fit(&tenants, &self.budget, &self.tiers)?;

        let mut all_admins = logins(admins, "catalog admins")?;
        all_admins.extend(self.file_admins.clone());
        Ok(Self {
            tenants,
            admins: all_admins,
            ..self.clone()
        })
    }

    /// Whether the tenants of a catalog snapshot fit in the budget, judged exactly as
    /// [`Config::with_tenants`] judges it: the connections they are promised, or by how much
    /// they are over. A snapshot replaces the tenants wholesale, and a file with `[catalog]`
    /// may name no tenants of its own, so only the snapshot's tenants count.
    pub fn catalog_fit(&self, sections: &[TenantSection]) -> Result<usize, Overfull> {
        let (tenants, _) = self.catalog_tenants(sections);
        governance::fit(&tenants, &self.budget, &self.tiers)
    }

    /// The tenants a snapshot's `sections` describe, and the rows refused with why. A
    /// refused row keeps its tenant's previous definition, if it had one.
    fn catalog_tenants(
        &self,
        sections: &[TenantSection],
    ) -> (HashMap<String, Arc<Tenant>>, Vec<Rejected>) {
        let mut tenants = HashMap::new();
        let mut rejected = Vec::new();
        for section in sections {
            let key = format!("catalog tenant {:?}", section.name);
            match validate_tenant(&key, section, &self.limits) {
                Ok(tenant) => {
                    tenants.insert(tenant.name.clone(), Arc::new(tenant));
                }
                Err(error) => {
                    if let Some(previous) = self.tenants.get(&section.name) {
                        tenants.insert(section.name.clone(), previous.clone());
                    }
                    rejected.push((section.name.clone(), error));
                }
            }
        }
        (tenants, rejected)
    }
}

/// Client logins by name, their verifiers parsed; `key` prefixes error keys.
fn logins(users: &[UserSection], key: &str) -> Result<HashMap<String, Verifier>, ConfigError> {
    let mut map = HashMap::new();
    for (j, u) in users.iter().enumerate() {
        let verifier =
            Verifier::parse(&u.verifier).map_err(|m| invalid(format!("{key}[{j}].verifier"), m))?;
        map.insert(u.name.clone(), verifier);
    }
    Ok(map)
}

/// Validates tenant sections into a map, refusing duplicates. `what` prefixes error keys.
fn tenant_map(
    sections: &[TenantSection],
    limits: &LimitSettings,
    what: &str,
) -> Result<HashMap<String, Arc<Tenant>>, ConfigError> {
    let mut tenants = HashMap::new();
    for (i, section) in sections.iter().enumerate() {
        let tenant = validate_tenant(&format!("{what}[{i}]"), section, limits)?;
        if tenants.contains_key(&tenant.name) {
            let msg = format!("tenant {:?} is defined twice", tenant.name);
            return Err(invalid(format!("{what}[{i}].name"), msg));
        }
        tenants.insert(tenant.name.clone(), Arc::new(tenant));
    }
    Ok(tenants)
}

/// With a catalog, tenants live there only: two sources of truth would disagree.
fn validate_catalog(
    catalog: Option<CatalogSettings>,
    tenants: &[TenantSection],
) -> Result<Option<CatalogSettings>, ConfigError> {
    let Some(catalog) = catalog else {
        return Ok(None);
    };

    if let Some(first) = tenants.first() {
        let msg = format!(
            "tenant {:?} is in the file but [catalog] is set; tenants then live in the \
             catalog only (create them with `pgtenant tenant create`)",
            first.name
        );
        return Err(invalid("tenants[0]", msg));
    }

    if catalog.user.is_empty() {
        return Err(invalid("catalog.user", "must not be empty"));
    }

    if catalog.reload_interval.is_zero() {
        return Err(invalid("catalog.reload_interval", "must be longer than 0s"));
    }
    Ok(Some(catalog))
}

fn validate_provisioning(
    p: &ProvisioningSection,
    proxy: &ProxySettings,
    base: &Path,
) -> Result<ProvisioningSettings, ConfigError> {
    if p.connection_limit < 1 {
        let msg = format!("must be at least 1, got {}", p.connection_limit);
        return Err(invalid("provisioning.connection_limit", msg));
    }

    if p.user.is_empty() {
        return Err(invalid("provisioning.user", "must not be empty"));
    }

    let public_address = p
        .public_address
        .clone()
        .unwrap_or_else(|| proxy.listen.clone());
    Ok(ProvisioningSettings {
        demo_data: p.demo_data.as_ref().map(|f| base.join(f)),
        connection_limit: p.connection_limit,
        public_address,
        user: p.user.clone(),
    })
}

/// TOML errors span several lines with a caret diagram; keep the first meaningful line.
fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .collect();
    parts.join(" ")
}

fn validate_proxy(p: &file::ProxySection, base: &Path) -> Result<ProxySettings, ConfigError> {
    if p.listen.parse::<std::net::SocketAddr>().is_err() {
        let msg = format!("{:?} is not an address such as 127.0.0.1:6432", p.listen);
        return Err(invalid("proxy.listen", msg));
    }

    if p.login_timeout.is_zero() {
        return Err(invalid("proxy.login_timeout", "must be longer than 0s"));
    }

    if p.tenant_from.is_empty() {
        return Err(invalid("proxy.tenant_from", "needs at least one source"));
    }

    let tls_files = match (&p.tls_cert, &p.tls_key, p.tls) {
        (_, _, TlsMode::Disabled) => None,
        (Some(cert), Some(key), _) => Some((base.join(cert), base.join(key))),
        _ => {
            let msg = "tls is enabled but tls_cert and tls_key are not both set";
            return Err(invalid("proxy.tls_cert", msg));
        }
    };

    if let Some(addr) = &p.metrics_listen
        && addr.parse::<std::net::SocketAddr>().is_err()
    {
        return Err(invalid(
            "proxy.metrics_listen",
            format!("{addr:?} is not an address"),
        ));
    }

    Ok(ProxySettings {
        listen: p.listen.clone(),
        tls: p.tls,
        tls_files,
        tenant_from: p.tenant_from.clone(),
        login_timeout: p.login_timeout,
        query_wait_timeout: p.query_wait_timeout,
        shutdown_timeout: p.shutdown_timeout,
        metrics_listen: p.metrics_listen.clone(),
        worker_threads: p.worker_threads,
    })
}

fn validate_backend(b: &file::BackendSection) -> Result<BackendSettings, ConfigError> {
    if b.connect_timeout.is_zero() {
        return Err(invalid("backend.connect_timeout", "must be longer than 0s"));
    }

    if b.database.is_empty() {
        return Err(invalid("backend.database", "must not be empty"));
    }

    Ok(BackendSettings {
        host: b.host.clone(),
        port: b.port,
        database: b.database.clone(),
        connect_timeout: b.connect_timeout,
        idle_timeout: b.idle_timeout,
        reset_after_transaction: b.reset_after_transaction,
    })
}

fn validate_tenant(
    prefix: &str,
    t: &TenantSection,
    limits: &LimitSettings,
) -> Result<Tenant, ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");

    check_identifier(&t.name).map_err(|m| invalid(key("name"), m))?;
    let schema = t.schema.clone().unwrap_or_else(|| t.name.clone());
    check_identifier(&schema).map_err(|m| invalid(key("schema"), m))?;
    let role = t.role.clone().unwrap_or_else(|| t.name.clone());
    check_identifier(&role).map_err(|m| invalid(key("role"), m))?;

    if t.pool_size == Some(0) {
        return Err(invalid(key("pool_size"), "must be at least 1, got 0"));
    }
    if t.max_client_connections == Some(0) {
        return Err(invalid(
            key("max_client_connections"),
            "must be at least 1, got 0",
        ));
    }
    let own_rate = governance::rate(prefix, t.transactions_per_second, t.burst)?;

    let users = logins(&t.users, &format!("{prefix}.users"))?;

    Ok(Tenant {
        name: t.name.clone(),
        schema,
        role,
        role_password: t.role_password.clone(),
        pool_mode: t.pool_mode,
        pool_size: t.pool_size,
        tier: t.tier,
        rate: own_rate.or(limits.rate),
        max_client_connections: t.max_client_connections.or(limits.max_client_connections),
        suspended: t.suspended,
        users,
        generation: t.generation,
    })
}

/// Tenant, schema and role names are plain lowercase identifiers, so they never need quoting
/// in SQL or in the backend `options` string.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');

    if !first_ok || !rest_ok {
        return Err(format!(
            "{name:?} is not a lowercase identifier (a-z, 0-9, _; not starting with a digit)"
        ));
    }

    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 bytes"));
    }

    Ok(())
}

#[cfg(test)]
mod tests;
