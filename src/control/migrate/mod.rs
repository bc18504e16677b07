//! The migrations engine: brings one tenant's schema up to the newest file of a
//! [`MigrationSet`], inside a transaction the caller owns.
//!
//! Each pending file runs as the tenant's role with `search_path` set to its schema, so the
//! objects it creates belong to the tenant and land in its schema; pgtenant's role takes over
//! again to record the step in `pgtenant.migrations`. Nothing is committed here: a failure
//! aborts the caller's transaction, so a tenant is never left half migrated. A version that
//! was applied is never applied again, and a file whose checksum no longer matches the record
//! is refused, since the schema would no longer be what the files say.

pub mod bluegreen;
pub mod dry_run;
pub mod fingerprint;
pub mod fleet;
pub mod health;
pub mod retention;
pub mod rollback;
pub mod source;
pub mod status;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::{GenericClient, Transaction};

pub use source::{Check, DownStep, Layout, Migration, checksum};

use super::provision::quote_ident;
use crate::tenant::catalog::{CatalogError, describe, field};

/// Why migrations could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A directory or file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `.sql` file is not named `NNNN_name.sql`, `NNNN_name.up.sql` or `NNNN_name.down.sql`.
    #[error(
        "{path}: migration files are named NNNN_name.sql, NNNN_name.up.sql or \
         NNNN_name.down.sql (NNNN: up to 38 digits; name: letters, digits, _ and -)"
    )]
    BadFileName {
        /// The file.
        path: PathBuf,
    },
    /// Two entries of one directory follow different layouts.
    #[error("{first} follows the {first_layout} but {second} the {second_layout}; use one layout")]
    MixedLayouts {
        /// An entry of the first layout seen.
        first: PathBuf,
        /// That layout.
        first_layout: Layout,
        /// An entry of another layout.
        second: PathBuf,
        /// That other layout.
        second_layout: Layout,
    },
    /// A down file has no forward file with the same version and name.
    #[error("{path}: down step without its forward step {expected}")]
    OrphanDown {
        /// The down file.
        path: PathBuf,
        /// The forward file it needs.
        expected: PathBuf,
    },
    /// A Prisma migration directory has no `migration.sql`.
    #[error("{dir}: a Prisma migration directory needs a migration.sql file")]
    MissingMigrationSql {
        /// The directory.
        dir: PathBuf,
    },
    /// An entry that the directory's layout does not allow.
    #[error("{path}: not allowed here; {rule}")]
    Unexpected {
        /// The file or directory.
        path: PathBuf,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A file is not UTF-8.
    #[error("{path}: not UTF-8 text")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// Two files share a version.
    #[error("version {version} is used by both {first} and {second}")]
    DuplicateVersion {
        /// The version.
        version: String,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// An applied migration's file changed since.
    #[error(
        "migration {version}_{name} was applied to tenant {tenant:?} with checksum {recorded} \
         but the file now has {found}; applied migrations must not be edited (add a new one)"
    )]
    ChecksumChanged {
        /// The tenant.
        tenant: String,
        /// Version.
        version: String,
        /// Name.
        name: String,
        /// Checksum in the catalog.
        recorded: String,
        /// Checksum of the file.
        found: String,
    },
    /// A file controls transactions itself, which would break all-or-nothing.
    #[error(
        "{}: contains `{statement}`; pgtenant runs each file inside its own transaction \
         (remove it; a SQL-standard `BEGIN ATOMIC` function body needs a dollar-quoted body \
         instead)",
        .path.display()
    )]
    TransactionControl {
        /// The file.
        path: PathBuf,
        /// The statement's first words.
        statement: String,
    },
    /// A migration's SQL failed; the transaction is aborted.
    #[error("migration {} failed for tenant {tenant:?}: {}", .path.display(), describe(.source))]
    Failed {
        /// The tenant.
        tenant: String,
        /// The file.
        path: PathBuf,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// A catalog row could not be read.
    #[error(transparent)]
    Row(#[from] CatalogError),
    /// A catalog statement failed.
    #[error("cannot {step} for tenant {tenant:?}: {}", describe(.source))]
    Catalog {
        /// What was being done.
        step: &'static str,
        /// The tenant.
        tenant: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
}

/// The migration files of one directory, in version order, and its health checks.
#[derive(Debug, Clone, Default)]
pub struct MigrationSet {
    layout: Layout,
    migrations: Vec<Migration>,
    checks: Vec<Check>,
}

impl MigrationSet {
    /// Reads `dir` (see the module `source` for the layouts and file rules).
    pub fn load(dir: &Path) -> Result<Self, MigrateError> {
        let read = source::read_dir(dir)?;
        Ok(Self {
            layout: read.layout,
            migrations: read.migrations,
            checks: read.checks,
        })
    }

    /// The set of `[migrations] dir`, or an empty set when none is configured.
    pub fn configured(dir: Option<&Path>) -> Result<Self, MigrateError> {
        dir.map_or_else(|| Ok(Self::default()), Self::load)
    }

    /// Every migration, oldest first.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The newest migration, if any.
    pub fn newest(&self) -> Option<&Migration> {
        self.migrations.last()
    }

    /// The migration whose version equals `version` as a number (`7` finds `0007`).
    pub fn find(&self, version: &str) -> Option<&Migration> {
        let wanted = source::parse_version(version)?;
        self.migrations.iter().find(|m| m.number() == wanted)
    }

    /// How the directory names its files; `Numbered` for an empty set.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The health checks, in file-name order.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }
}

/// The tenant a migration runs for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Tenant name, as in the catalog.
    pub tenant: &'a str,
    /// Its schema.
    pub schema: &'a str,
    /// Its role, which runs the SQL.
    pub role: &'a str,
}

/// A migration as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Version.
    pub version: String,
    /// Name.
    pub name: String,
    /// Checksum when applied.
    pub checksum: String,
}

/// One migration applied by [`apply_to`].
#[derive(Debug, Clone)]
pub struct Applied {
    /// Version.
    pub version: String,
    /// Name.
    pub name: String,
    /// How long its SQL took.
    pub duration: Duration,
}

/// The migrations recorded as applied for `tenant`.
pub async fn applied(
    client: &impl GenericClient,
    tenant: &str,
) -> Result<Vec<Recorded>, MigrateError> {
    let rows = client
        .query(
            "SELECT version, name, checksum FROM pgtenant.migrations \
             WHERE tenant = $1 AND status = 'applied'",
            &[&tenant],
        )
        .await
        .map_err(catalog_error("read applied migrations", tenant))?;

    let owner = format!("migrations of tenant {tenant:?}");
    rows.iter()
        .map(|row| {
            Ok(Recorded {
                version: field(row, 0, &owner)?,
                name: field(row, 1, &owner)?,
                checksum: field(row, 2, &owner)?,
            })
        })
        .collect()
}

/// The migrations of `set` not yet applied to `tenant`, oldest first; refused when an applied
/// one's file has changed.
pub async fn pending<'s>(
    client: &impl GenericClient,
    set: &'s MigrationSet,
    tenant: &str,
) -> Result<Vec<&'s Migration>, MigrateError> {
    let done = applied(client, tenant).await?;
    let mut todo = Vec::new();

    for migration in set.migrations() {
        let Some(record) = done.iter().find(|r| r.version == migration.version) else {
            todo.push(migration);
            continue;
        };
        if record.checksum != migration.checksum {
            return Err(MigrateError::ChecksumChanged {
                tenant: tenant.to_owned(),
                version: migration.version.clone(),
                name: migration.name.clone(),
                recorded: record.checksum.clone(),
                found: migration.checksum.clone(),
            });
        }
    }
    Ok(todo)
}

/// Applies every pending migration of `set` to `target` in `tx`, recording each with
/// `actor` as `applied_by`. Commits nothing.
pub async fn apply_to(
    tx: &Transaction<'_>,
    set: &MigrationSet,
    target: &Target<'_>,
    actor: &str,
) -> Result<Vec<Applied>, MigrateError> {
    let todo = pending(tx, set, target.tenant).await?;
    let mut done = Vec::with_capacity(todo.len());

    for migration in todo {
        done.push(apply_one(tx, migration, target, actor).await?);
    }
    Ok(done)
}

async fn apply_one(
    tx: &Transaction<'_>,
    migration: &Migration,
    target: &Target<'_>,
    actor: &str,
) -> Result<Applied, MigrateError> {
    let started_at = SystemTime::now();
    let started = Instant::now();

    become_tenant(tx, target)
        .await
        .map_err(catalog_error("switch to the tenant role", target.tenant))?;
    tx.batch_execute(&migration.sql)
        .await
        .map_err(|source| MigrateError::Failed {
            tenant: target.tenant.to_owned(),
            path: migration.path.clone(),
            source,
        })?;
    become_self(tx).await.map_err(catalog_error(
        "switch back from the tenant role",
        target.tenant,
    ))?;

    let duration = started.elapsed();
    record(tx, migration, target.tenant, actor, started_at, duration).await?;
    Ok(Applied {
        version: migration.version.clone(),
        name: migration.name.clone(),
        duration,
    })
}

/// Runs what follows as the tenant's role, in its schema, until [`become_self`] or the end of
/// the transaction.
pub async fn become_tenant(
    tx: &Transaction<'_>,
    target: &Target<'_>,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "SET LOCAL ROLE {}; SET LOCAL search_path TO {}",
        quote_ident(target.role),
        quote_ident(target.schema)
    );
    tx.batch_execute(&sql).await
}

/// Back to pgtenant's own role and the default `search_path`.
pub async fn become_self(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute("RESET ROLE; SET LOCAL search_path TO DEFAULT")
        .await
}

async fn record(
    tx: &Transaction<'_>,
    migration: &Migration,
    tenant: &str,
    actor: &str,
    started_at: SystemTime,
    duration: Duration,
) -> Result<(), MigrateError> {
    let finished_at = started_at + duration;
    let duration_ms = duration.as_secs_f64() * 1000.0;
    tx.execute(
        "INSERT INTO pgtenant.migrations (tenant, version, name, checksum, status, \
             started_at, finished_at, duration_ms, error, applied_by) \
         VALUES ($1, $2, $3, $4, 'applied', $5, $6, $7, NULL, $8) \
         ON CONFLICT (tenant, version) DO UPDATE SET name = EXCLUDED.name, \
             checksum = EXCLUDED.checksum, status = 'applied', \
             started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, \
             duration_ms = EXCLUDED.duration_ms, error = NULL, \
             applied_by = EXCLUDED.applied_by",
        &[
            &tenant,
            &migration.version,
            &migration.name,
            &migration.checksum,
            &started_at,
            &finished_at,
            &duration_ms,
            &actor,
        ],
    )
    .await
    .map_err(catalog_error("record a migration", tenant))?;
    Ok(())
}

fn catalog_error(
    step: &'static str,
    tenant: &str,
) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    let tenant = tenant.to_owned();
    move |source| MigrateError::Catalog {
        step,
        tenant,
        source,
    }
}
