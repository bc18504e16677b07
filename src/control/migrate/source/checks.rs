//! Health checks: the `*.sql` files of the migrations directory's `checks/` subdirectory,
//! one check per file, in file-name order (`01_users_have_email.sql` before
//! `02_…`). Other files there (a `README.md`) are ignored.
//!
//! A check is one SQL query that runs as the tenant's role with `search_path` set to the
//! tenant's schema, inside the migration's transaction, before it commits. It passes when it
//! returns no rows. Any row is a failure, and the first column of the first row, as text, is
//! the failure's message, so a check reads best as "select what is wrong":
//! `SELECT 'customer ' || id || ' has no name' FROM customers WHERE name = ''`.
//! Like migration files, a check must be UTF-8 and must not control transactions.
//! `pgtenant migrate apply` runs them (`migrate::health`); `tenant create` and `tenant
//! migrate` do not.

use std::path::{Path, PathBuf};

use super::entries::Entry;
use super::{file_name, list, read_sql};
use crate::control::migrate::MigrateError;

/// One health check: a query that returns no rows when the tenant's schema is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The file stem, such as `01_users_have_email`.
    pub name: String,
    /// The query.
    pub sql: String,
    /// Where it was read from.
    pub path: PathBuf,
}

/// The checks of the `checks/` entry, if there is one.
pub(super) fn read(entries: &[Entry]) -> Result<Vec<Check>, MigrateError> {
    let dir = entries.iter().find_map(|entry| match entry {
        Entry::ChecksDir(path) => Some(path),
        _ => None,
    });

    match dir {
        Some(dir) => read_dir(dir),
        None => Ok(Vec::new()),
    }
}

/// Every `*.sql` file of `dir`, in file-name order.
fn read_dir(dir: &Path) -> Result<Vec<Check>, MigrateError> {
    let mut checks = Vec::new();

    for path in list(dir)? {
        let file_name = file_name(&path);
        let Some(name) = file_name.strip_suffix(".sql") else {
            continue;
        };
        if !path.is_file() {
            continue;
        }

        let file = read_sql(&path)?;
        checks.push(Check {
            name: name.to_owned(),
            sql: file.sql,
            path,
        });
    }
    Ok(checks)
}
