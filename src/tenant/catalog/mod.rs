//! The tenant catalog: tenants, client credentials, role secrets, support admins, migration
//! state and the audit log, kept in PostgreSQL's `pgtenant` schema of the backend database.
//!
//! Proxies read it (`load`) and hear of changes through `LISTEN pgtenant_catalog` (`watch`),
//! and of pauses for migrations through `LISTEN pgtenant_pause` (`pauses`); the CLI and the
//! migration runner write it. `install` creates and upgrades the schema under an advisory lock, so
//! several processes starting together apply each step once. The connection logs in as
//! pgtenant's own role from `[catalog]`, the only role that can read the catalog.

pub mod audit;
pub mod pauses;
mod schema;
pub mod watch;

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::{Client, GenericClient, NoTls};

pub use schema::{CHANNEL, PAUSE_ACK_CHANNEL, PAUSE_CHANNEL};

use crate::config::file::UserSection;
use crate::config::{CatalogSettings, Config, PoolMode, TenantSection, Tier};

/// Key of the advisory lock held while the catalog schema is created or upgraded.
const INSTALL_LOCK: i64 = 0x7067_7465_6e61_6e74; // "pgtenant"

/// Why the catalog could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No `[catalog]` section.
    #[error("no [catalog] section in the configuration")]
    NotConfigured,
    /// The connection failed.
    #[error("cannot connect to the catalog at {target}: {}", describe(.source))]
    Connect {
        /// `user@host:port/database`.
        target: String,
        /// Cause.
        source: tokio_postgres::Error,
    },
    /// A catalog statement failed.
    #[error("catalog: cannot {step}: {}", describe(.source))]
    Query {
        /// What was being done.
        step: &'static str,
        /// Cause.
        source: tokio_postgres::Error,
    },
    /// The catalog was made by a newer pgtenant.
    #[error("the catalog is at version {found}, newer than this pgtenant knows ({known})")]
    TooNew {
        /// Version in the database.
        found: i32,
        /// Newest version this build knows.
        known: i32,
    },
    /// The catalog connection ended.
    #[error("the catalog connection was closed")]
    Lost,
    /// A row holds a value pgtenant cannot use.
    #[error("catalog: {row}: {message}")]
    BadRow {
        /// Which row, e.g. `tenant "acme"`.
        row: String,
        /// What is wrong.
        message: String,
    },
}

/// A step name for [`CatalogError::Query`].
pub fn query_error(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
    move |source| CatalogError::Query { step, source }
}

/// A one-line description of a driver error, with the server's SQLSTATE and message.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

/// What the catalog says the proxies serve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Active and suspended tenants, in the configuration file's shape.
    pub tenants: Vec<TenantSection>,
    /// Support admins, who may open a session on any tenant.
    pub admins: Vec<UserSection>,
}

/// How long a catalog connection may sit silent before TCP keepalive probes start.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Time between keepalive probes; with [`KEEPALIVE_RETRIES`] unanswered ones the kernel
/// declares the connection dead, about a minute after the peer went silent.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered keepalive probes before the connection is dropped.
const KEEPALIVE_RETRIES: u32 = 3;

/// The driver configuration for pgtenant's own role; `application_name` tells operators
/// which process a catalog connection belongs to.
///
/// TCP keepalives are on with short timers (the driver's default waits two hours): a
/// catalog, rollout worker or pause connection whose server or network vanished without a
/// FIN then fails within about a minute instead of leaving its task waiting, a rollout
/// stuck and a proxy deaf to pauses.
pub fn pg_config(
    config: &Config,
    application_name: &str,
) -> Result<tokio_postgres::Config, CatalogError> {
    let catalog = settings(config)?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.backend.host)
        .port(config.backend.port)
        .dbname(&config.backend.database)
        .user(&catalog.user)
        .application_name(application_name)
        .connect_timeout(config.backend.connect_timeout)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES);
    if let Some(password) = &catalog.password {
        pg.password(password);
    }
    Ok(pg)
}

/// The `[catalog]` section, or an error saying it is missing.
pub fn settings(config: &Config) -> Result<&CatalogSettings, CatalogError> {
    config.catalog.as_ref().ok_or(CatalogError::NotConfigured)
}

/// Connects as pgtenant's role; the connection runs in its own task.
pub async fn connect(config: &Config) -> Result<Client, CatalogError> {
    let pg = pg_config(config, "pgtenant")?;
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|source| connect_error(config, source))?;

    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %describe(&error), "catalog connection ended");
        }
    });
    Ok(client)
}

/// The error for a failed catalog login, naming where it went.
pub fn connect_error(config: &Config, source: tokio_postgres::Error) -> CatalogError {
    let user = config.catalog.as_ref().map_or("?", |c| c.user.as_str());
    CatalogError::Connect {
        target: format!(
            "{user}@{}:{}/{}",
            config.backend.host, config.backend.port, config.backend.database
        ),
        source,
    }
}

/// Creates the catalog or brings it to the newest version; returns that version.
pub async fn install(client: &mut Client) -> Result<i32, CatalogError> {
    let tx = client
        .transaction()
        .await
        .map_err(query_error("begin the catalog install"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTALL_LOCK])
        .await
        .map_err(query_error("lock the catalog install"))?;
    tx.batch_execute(schema::BOOTSTRAP)
        .await
        .map_err(query_error("create the pgtenant schema"))?;

    let found = installed_version(&tx).await?;
    let known = i32::try_from(schema::STEPS.len()).unwrap_or(i32::MAX);
    if found > known {
        return Err(CatalogError::TooNew { found, known });
    }

    for sql in schema::STEPS
        .iter()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql)
            .await
            .map_err(query_error("upgrade the catalog"))?;
    }
    tx.execute(
        "INSERT INTO pgtenant.catalog_version (version) VALUES ($1) \
         ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
        &[&known],
    )
    .await
    .map_err(query_error("record the catalog version"))?;

    tx.commit()
        .await
        .map_err(query_error("commit the catalog install"))?;
    if found < known {
        tracing::info!(from = found, to = known, "catalog schema upgraded");
    }
    Ok(known)
}

async fn installed_version(tx: &tokio_postgres::Transaction<'_>) -> Result<i32, CatalogError> {
    let row = tx
        .query_opt("SELECT version FROM pgtenant.catalog_version", &[])
        .await
        .map_err(query_error("read the catalog version"))?;
    match row {
        Some(row) => field(&row, 0, "catalog_version"),
        None => Ok(0),
    }
}

/// Reads every active and suspended tenant with its logins, and the support admins; inside
/// a transaction, as that transaction sees them.
pub async fn load(client: &impl GenericClient) -> Result<Snapshot, CatalogError> {
    let mut users = load_credentials(client).await?;

    let rows = client
        .query(
            "SELECT t.name, t.schema_name, t.role_name, s.role_password, t.pool_mode, \
                    t.pool_size, t.tier, t.transactions_per_second, t.burst, \
                    t.max_client_connections, t.state = 'suspended', t.generation \
             FROM pgtenant.tenants t LEFT JOIN pgtenant.role_secrets s ON s.tenant = t.name \
             WHERE t.state IN ('active', 'suspended') ORDER BY t.name",
            &[],
        )
        .await
        .map_err(query_error("read tenants"))?;

    let mut tenants = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = field(row, 0, "tenants")?;
        let logins = users.remove(&name).unwrap_or_default();
        tenants.push(tenant_section(row, name, logins)?);
    }

    let admins = load_admins(client).await?;
    Ok(Snapshot { tenants, admins })
}

/// Column `i` of a catalog row, or an error naming the row (`owner`): a catalog changed
/// by hand must not panic the proxy or the CLI.
pub fn field<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r tokio_postgres::Row,
    i: usize,
    owner: &str,
) -> Result<T, CatalogError> {
    row.try_get(i).map_err(|e| CatalogError::BadRow {
        row: owner.to_owned(),
        message: format!("column {:?}: {e}", row.columns().get(i).map(|c| c.name())),
    })
}

fn tenant_section(
    row: &tokio_postgres::Row,
    name: String,
    users: Vec<UserSection>,
) -> Result<TenantSection, CatalogError> {
    let owner = format!("tenant {name:?}");
    let bad = |message: String| CatalogError::BadRow {
        row: owner.clone(),
        message,
    };
    let pool_mode = match field::<&str>(row, 4, &owner)? {
        "session" => PoolMode::Session,
        "transaction" => PoolMode::Transaction,
        other => return Err(bad(format!("unknown pool_mode {other:?}"))),
    };
    let tier = field::<Option<&str>>(row, 6, &owner)?
        .map(|t| parse_tier(t).ok_or_else(|| bad(format!("unknown tier {t:?}"))))
        .transpose()?;
    let count = |i: usize| -> Result<Option<u32>, CatalogError> {
        field::<Option<i32>>(row, i, &owner)?
            .map(|n| u32::try_from(n).map_err(|_| bad(format!("negative count {n}"))))
            .transpose()
    };
    let size =
        |i: usize| -> Result<Option<usize>, CatalogError> { Ok(count(i)?.map(|n| n as usize)) };

    Ok(TenantSection {
        schema: Some(field(row, 1, &owner)?),
        role: Some(field(row, 2, &owner)?),
        role_password: field(row, 3, &owner)?,
        pool_mode,
        pool_size: size(5)?,
        tier,
        transactions_per_second: field(row, 7, &owner)?,
        burst: count(8)?,
        max_client_connections: size(9)?,
        suspended: field(row, 10, &owner)?,
        generation: field(row, 11, &owner)?,
        users,
        name,
    })
}

/// A tier as the catalog spells it.
pub fn parse_tier(text: &str) -> Option<Tier> {
    match text {
        "hot" => Some(Tier::Hot),
        "warm" => Some(Tier::Warm),
        "cold" => Some(Tier::Cold),
        _ => None,
    }
}

async fn load_credentials(
    client: &impl GenericClient,
) -> Result<HashMap<String, Vec<UserSection>>, CatalogError> {
    let rows = client
        .query(
            "SELECT tenant, user_name, verifier FROM pgtenant.credentials \
             ORDER BY tenant, user_name",
            &[],
        )
        .await
        .map_err(query_error("read credentials"))?;

    let mut users: HashMap<String, Vec<UserSection>> = HashMap::new();
    for row in &rows {
        let tenant: String = field(row, 0, "credentials")?;
        let user = UserSection {
            name: field(row, 1, "credentials")?,
            verifier: field(row, 2, "credentials")?,
        };
        users.entry(tenant).or_default().push(user);
    }
    Ok(users)
}

async fn load_admins(client: &impl GenericClient) -> Result<Vec<UserSection>, CatalogError> {
    let rows = client
        .query(
            "SELECT user_name, verifier FROM pgtenant.admins ORDER BY user_name",
            &[],
        )
        .await
        .map_err(query_error("read admins"))?;
    rows.iter()
        .map(|row| {
            Ok(UserSection {
                name: field(row, 0, "admins")?,
                verifier: field(row, 1, "admins")?,
            })
        })
        .collect()
}
