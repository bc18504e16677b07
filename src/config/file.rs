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
    /// Where PostgreSQL is.
    #[serde(default)]
    pub backend: BackendSection,
    /// The global budget of backend connections.
    #[serde(default)]
    pub budget: BudgetSection,
    /// Pool sizes by tier and dynamic tiering.
    #[serde(default)]
    pub tiers: TiersSection,
    /// Default per-tenant limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The tenant catalog in PostgreSQL; when set, it is the source of tenants.
    pub catalog: Option<CatalogSection>,
    /// Where tenant schema migrations live.
    #[serde(default)]
    pub migrations: MigrationsSection,
    /// How `pgtenant tenant create` sets a tenant up.
    #[serde(default)]
    pub provisioning: ProvisioningSection,
    /// Support admins, who may log in to any tenant; every such session is audited.
    #[serde(default)]
    pub admins: Vec<UserSection>,
    /// Tenants served by this proxy (only without a catalog).
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
}

/// `[catalog]`: tenants, credentials and migration state kept in the `pgtenant` schema of
/// `[backend] database`, read by every proxy and written by the CLI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// pgtenant's own PostgreSQL role: owns the catalog, creates tenant roles and schemas
    /// (a superuser, or a role with CREATEROLE and CREATE on the database). Needs a restart.
    pub user: String,
    /// Its password; omit when PostgreSQL trusts it.
    pub password: Option<String>,
    /// Full reload of the catalog even without a change notification. Default `30s`.
    #[serde(default = "default_catalog_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_catalog_reload() -> Duration {
    Duration::from_secs(30)
}

/// `[migrations]`: the SQL files every tenant schema is brought up to, and how
/// `pgtenant migrate apply` rolls them out across the fleet. Read by the CLI at each run; a
/// proxy's reload does not use the rollout keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationsSection {
    /// Directory of migration files (numbered, `.up.sql`/`.down.sql` or Prisma layout);
    /// none when absent. Relative to the configuration file.
    pub dir: Option<PathBuf>,
    /// Tenant migrated alone in the first wave, and copied by `--dry-run`. Default: none.
    pub test_tenant: Option<String>,
    /// Share of the fleet done at the end of each wave after the test tenant, in percent,
    /// rising to 100. Default `[10, 50, 100]`.
    pub waves: Vec<u8>,
    /// Tenants migrated at once. Default `10`.
    pub concurrency: usize,
    /// PostgreSQL connections a rollout may hold in all, taken from `[budget] reserve`.
    /// Default: the reserve.
    pub max_connections: Option<usize>,
    /// Longest a tenant's traffic may stay paused; past it the tenant's change is rolled
    /// back and traffic resumes. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub max_pause: Duration,
    /// How long transactions in flight get to finish once a tenant is paused. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// `skip` (default: resume and leave the tenant for a later run), `cancel` (cancel the
    /// statements still running) or `terminate` (end the backends still inside a
    /// transaction, idle ones included) when the drain timeout passes.
    pub on_drain_timeout: DrainPolicy,
    /// `abort` (default: finish the tenants in flight, start no new ones) or `continue`
    /// after a tenant fails.
    pub on_failure: FailurePolicy,
    /// Consecutive failures that stop a rollout whatever `on_failure` says. Default `3`.
    pub circuit_breaker: u32,
    /// With `on_failure = "continue"`, the largest share of a wave's tenants, in percent
    /// (0–100), that may fail for the next wave to start. Default `10`.
    pub max_wave_failures: u32,
    /// `in-place` (default) or `blue-green`.
    pub strategy: Strategy,
    /// `solo` (default: a tenant with live traffic migrates while no other tenant does, so
    /// its pause is not stretched by their work) or `shared` (no special treatment).
    pub busy_tenants: BusyPolicy,
    /// How long blue/green keeps a tenant's previous schema for `migrate rollback`; expired
    /// ones are dropped by `migrate purge` and at the end of `migrate apply`. Default `7days`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for MigrationsSection {
    fn default() -> Self {
        Self {
            dir: None,
            test_tenant: None,
            waves: vec![10, 50, 100],
            concurrency: 10,
            max_connections: None,
            max_pause: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(1),
            on_drain_timeout: DrainPolicy::Skip,
            on_failure: FailurePolicy::Abort,
            circuit_breaker: 3,
            max_wave_failures: 10,
            strategy: Strategy::InPlace,
            busy_tenants: BusyPolicy::Solo,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What a rollout does with a tenant whose transactions outlast the drain timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DrainPolicy {
    /// Resume the tenant untouched; a later run migrates it.
    Skip,
    /// Cancel the statements still running, then migrate.
    Cancel,
    /// End the backends still inside a transaction (their clients get an error and lose
    /// their session), then migrate.
    Terminate,
}

/// What a rollout does after a tenant fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Finish the tenants in flight and start no new ones.
    Abort,
    /// Go on with the other tenants (the circuit breaker and `max_wave_failures` still
    /// apply).
    Continue,
}

/// How a rollout schedules tenants that have live traffic when their wave starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BusyPolicy {
    /// Each busy tenant runs alone, before the wave's other tenants.
    Solo,
    /// Busy tenants run alongside the others.
    Shared,
}

/// How a migration reaches a tenant's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The migration runs on the live schema, under the tenant's pause.
    InPlace,
    /// The migration runs on a copy, swapped in under the pause; the old schema is kept.
    BlueGreen,
}

/// `[provisioning]`: what `pgtenant tenant create` does besides the role and schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningSection {
    /// SQL file loaded into the new schema with `--demo-data`. Relative to this file.
    pub demo_data: Option<PathBuf>,
    /// `CONNECTION LIMIT` of each tenant role. Default `50`.
    pub connection_limit: i32,
    /// `host:port` printed in `DATABASE_URL`s. Default: `[proxy] listen`.
    pub public_address: Option<String>,
    /// Client login created with each tenant. Default `app`.
    pub user: String,
}

impl Default for ProvisioningSection {
    fn default() -> Self {
        Self {
            demo_data: None,
            connection_limit: 50,
            public_address: None,
            user: "app".into(),
        }
    }
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
    /// Idle backend connections are closed after this long. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `DISCARD ALL` on every backend connection after every transaction, so that session
    /// state the proxy cannot see (set inside functions, procedures or triggers) never
    /// reaches the next client. Costs a round trip per transaction and re-preparing
    /// statements. Default `false`. Reload applies.
    pub reset_after_transaction: bool,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "postgres".into(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            reset_after_transaction: false,
        }
    }
}

/// `[budget]`: one cap on backend connections for the whole PostgreSQL cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSection {
    /// Backend connections pgtenant may open in all. Default `500`. Reload applies.
    pub max_connections: usize,
    /// Part of it tenant pools never take, kept for maintenance and migrations. Default `20`.
    pub reserve: usize,
}

impl Default for BudgetSection {
    fn default() -> Self {
        Self {
            max_connections: 500,
            reserve: 20,
        }
    }
}

/// A pool-size class; tenants move between them with their load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The least busy tenants.
    Cold,
    /// Most tenants.
    Warm,
    /// The busiest tenants.
    Hot,
}

/// `[tiers]`: pool size per tier and how tenants are ranked into tiers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TiersSection {
    /// Pool size of hot tenants. Default `5`. Reload applies.
    pub hot: usize,
    /// Pool size of warm tenants. Default `2`. Reload applies.
    pub warm: usize,
    /// Pool size of cold tenants. Default `1`. Reload applies.
    pub cold: usize,
    /// Tier of a tenant before it has been ranked. Default `warm`.
    pub initial: Tier,
    /// Re-rank tenants by load. Default `true`.
    pub dynamic: bool,
    /// How often tenants are ranked. Default `60s`. Needs a restart.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Consecutive rankings a tenant must qualify for a new tier before it moves. Default `3`.
    pub hysteresis: u32,
}

impl Default for TiersSection {
    fn default() -> Self {
        Self {
            hot: 5,
            warm: 2,
            cold: 1,
            initial: Tier::Warm,
            dynamic: true,
            interval: Duration::from_secs(60),
            hysteresis: 3,
        }
    }
}

/// `[limits]`: per-tenant limits, unless a tenant sets its own. Reload applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Clients that may wait for a backend of one tenant; more get `53300` at once.
    /// Default `1000`.
    pub max_waiting: usize,
    /// Transactions per second per tenant; none when absent.
    pub transactions_per_second: Option<f64>,
    /// Transactions a tenant may run at once above its rate. Default: one second's worth.
    pub burst: Option<u32>,
    /// How long a transaction over the rate may be delayed before it fails with `53400`.
    /// Default `1s`.
    #[serde(with = "humantime_serde")]
    pub rate_limit_wait: Duration,
    /// Client connections per tenant; none when absent.
    pub max_client_connections: Option<usize>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_waiting: 1000,
            transactions_per_second: None,
            burst: None,
            rate_limit_wait: Duration::from_secs(1),
            max_client_connections: None,
        }
    }
}

/// `[[tenants]]`: one customer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Backend connections for this tenant, overriding its tier's size.
    pub pool_size: Option<usize>,
    /// Pins the tenant to a tier; dynamic tiering leaves it there.
    pub tier: Option<Tier>,
    /// Overrides `[limits] transactions_per_second`.
    pub transactions_per_second: Option<f64>,
    /// Overrides `[limits] burst`.
    pub burst: Option<u32>,
    /// Overrides `[limits] max_client_connections`.
    pub max_client_connections: Option<usize>,
    /// New logins are refused and sessions end after their transaction. Default `false`.
    #[serde(default)]
    pub suspended: bool,
    /// Client logins accepted for this tenant.
    #[serde(default)]
    pub users: Vec<UserSection>,
    /// The generation of the tenant's schema, bumped by the migration runner with each
    /// schema change; a new generation retires the tenant's pools. Set by the catalog only,
    /// never in the file.
    #[serde(skip)]
    pub generation: i64,
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// User name the client sends.
    pub name: String,
    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, as `pgtenant passwd` prints.
    pub verifier: String,
}
