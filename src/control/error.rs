//! The errors of control-plane commands, each a single line naming what was refused or
//! which step failed. A failed command has rolled its transaction back.

use std::path::PathBuf;

use super::migrate::MigrateError;
use super::names::NameError;
use super::provision::ProvisionError;
use crate::config::Overfull;
use crate::tenant::catalog::{CatalogError, describe};

/// Why a control-plane command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The catalog could not be reached or installed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The tenant name breaks a rule or is taken.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The role or schema could not be created.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// Migrations could not be read or applied.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// No such tenant.
    #[error("no tenant named {0:?} in the catalog")]
    UnknownTenant(String),
    /// The command does not apply in the tenant's state.
    #[error("tenant {tenant:?} is {state}; {message}")]
    WrongState {
        /// The tenant.
        tenant: String,
        /// Its state.
        state: String,
        /// What cannot be done.
        message: &'static str,
    },
    /// `tenant drop` without `--yes`.
    #[error("refusing to drop tenant {0:?} without --yes (add --archive to keep its data)")]
    NotConfirmed(String),
    /// `--demo-data` without `[provisioning] demo_data`.
    #[error("--demo-data needs `demo_data` in the [provisioning] section")]
    NoDemoData,
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The demo data SQL failed.
    #[error("demo data {} failed for tenant {tenant:?}: {}", .path.display(), describe(.source))]
    DemoData {
        /// The tenant.
        tenant: String,
        /// The SQL file.
        path: PathBuf,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// A command-line value is not acceptable, or a dry run found a failure.
    #[error("{0}")]
    Flag(String),
    /// A rollback needs a down step the files do not have.
    #[error(
        "tenant {tenant:?}: version {version} has no down step (NNNN_name.down.sql) and no \
         retained blue/green schema; nothing was rolled back"
    )]
    NoDownStep {
        /// The tenant.
        tenant: String,
        /// The version.
        version: String,
    },
    /// A down step failed; the rollback is undone.
    #[error("down step {} failed for tenant {tenant:?}: {message}", .path.display())]
    DownFailed {
        /// The tenant.
        tenant: String,
        /// The file.
        path: PathBuf,
        /// The server's error.
        message: String,
    },
    /// The tenant could not be paused.
    #[error("cannot pause tenant {tenant:?}: {message}")]
    Paused {
        /// The tenant.
        tenant: String,
        /// Why.
        message: String,
    },
    /// Blue/green schemas could not be built, swapped or read.
    #[error(transparent)]
    BlueGreen(#[from] super::migrate::bluegreen::BlueGreenError),
    /// The change would leave the tenants' pinned pools over the budget, and proxies
    /// would refuse the catalog.
    #[error(
        "tenant {change}: pinned pools would need {} connections, budget.max_connections {} \
         minus reserve {} leaves {}",
        .over.need,
        .over.budget.max_connections,
        .over.budget.reserve,
        .over.budget.for_tenants()
    )]
    OverBudget {
        /// The command and its values, e.g. `set-tier big hot`.
        change: String,
        /// What the tenants would need, and the budget.
        over: Overfull,
    },
    /// A statement failed.
    #[error("cannot {step} for tenant {tenant:?}: {}", describe(.source))]
    Query {
        /// What was being done.
        step: &'static str,
        /// The tenant.
        tenant: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
}

/// A [`ControlError::Query`] maker for `map_err`.
pub fn query(
    step: &'static str,
    tenant: &str,
) -> impl FnOnce(tokio_postgres::Error) -> ControlError {
    let tenant = tenant.to_owned();
    move |source| ControlError::Query {
        step,
        tenant,
        source,
    }
}
