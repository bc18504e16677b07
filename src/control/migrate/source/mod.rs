//! Migration files on disk: one directory read in version order, in whichever of three
//! layouts it uses, plus the optional health checks of its `checks/` subdirectory.
//!
//! The layout is detected from the directory's contents:
//!
//! - numbered: `0001_init.sql`, with an optional reverse step `0001_init.down.sql`;
//! - up/down (sqlx, golang-migrate): `20240101120000_init.up.sql` and `…_init.down.sql`;
//! - Prisma: subdirectories `20240101120000_init/` holding `migration.sql` and an optional
//!   `down.sql`; Prisma's `migration_lock.toml` is ignored.
//!
//! A version is the leading digits (compared as a number, kept as written), a name the rest.
//! In every layout: a directory mixing layouts is refused; a `.sql` file that breaks its
//! layout's naming rule is refused, so a typo is never silently left unapplied, while
//! non-SQL files (`README.md`, `.gitkeep`) are ignored; two migrations with one version are
//! refused, and so is a down step without its forward step; every file must be UTF-8 and
//! must not control transactions (see [`refuse_transaction_control`]); a file's checksum is
//! the SHA-256 of its bytes. Subdirectories other than `checks/` are ignored by the two flat
//! layouts and refused by Prisma's. Check files are described in `checks.rs`.

mod checks;
mod entries;
mod flat;
mod prisma;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::MigrateError;

pub use checks::Check;

/// Versions longer than this could overflow a `u128`.
const MAX_VERSION_DIGITS: usize = 38;

/// One migration read from disk: its forward step and, when there is one, its down step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version as written, such as `0001` or `20240101120000`.
    pub version: String,
    /// The rest of the file or directory name, such as `init`.
    pub name: String,
    /// The forward SQL text.
    pub sql: String,
    /// Lowercase hex SHA-256 of the forward file's bytes.
    pub checksum: String,
    /// Where the forward step was read from.
    pub path: PathBuf,
    /// The reverse step, when the directory has one for this migration.
    pub down: Option<DownStep>,
}

/// The reverse step of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownStep {
    /// The SQL text.
    pub sql: String,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub checksum: String,
    /// Where it was read from.
    pub path: PathBuf,
}

/// How a migrations directory names its files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// `0001_init.sql`, optional `0001_init.down.sql`; also an empty directory.
    #[default]
    Numbered,
    /// `<version>_<name>.up.sql` and `<version>_<name>.down.sql` (sqlx, golang-migrate).
    UpDown,
    /// `<version>_<name>/migration.sql`, optional `<version>_<name>/down.sql` (Prisma).
    Prisma,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Numbered => "numbered layout (NNNN_name.sql)",
            Self::UpDown => "up/down layout (NNNN_name.up.sql)",
            Self::Prisma => "Prisma layout (NNNN_name/migration.sql)",
        })
    }
}

/// Everything read from a migrations directory.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// The layout detected.
    pub layout: Layout,
    /// The migrations, oldest first.
    pub migrations: Vec<Migration>,
    /// The health checks, in file-name order.
    pub checks: Vec<Check>,
}

impl Migration {
    /// The version as a number, for ordering and lookup.
    pub fn number(&self) -> u128 {
        version_number(&self.version)
    }
}

/// A version's number, for ordering; text that is not a version sorts last.
pub fn version_number(text: &str) -> u128 {
    parse_version(text).unwrap_or(u128::MAX)
}

/// Reads the migrations and checks of `dir`.
pub fn read_dir(dir: &Path) -> Result<Directory, MigrateError> {
    let entries = entries::classify_all(dir)?;
    let layout = entries::layout(&entries)?;

    let mut migrations = match layout {
        Layout::Prisma => prisma::read(&entries)?,
        Layout::Numbered | Layout::UpDown => flat::read(layout, &entries)?,
    };
    migrations.sort_by_key(Migration::number);
    refuse_duplicates(&migrations)?;

    let checks = checks::read(&entries)?;
    Ok(Directory {
        layout,
        migrations,
        checks,
    })
}

/// Refuses SQL that would end the transaction pgtenant runs it in, so a failure after it
/// could not be rolled back.
pub fn refuse_transaction_control(path: &Path, sql: &str) -> Result<(), MigrateError> {
    match crate::frontend::classify::transaction_control(sql) {
        Some(statement) => Err(MigrateError::TransactionControl {
            path: path.to_owned(),
            statement,
        }),
        None => Ok(()),
    }
}

/// Lowercase hex SHA-256.
pub fn checksum(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A SQL file's text and checksum.
struct SqlFile {
    sql: String,
    checksum: String,
}

/// Reads a SQL file that pgtenant will run: UTF-8, no transaction control.
fn read_sql(path: &Path) -> Result<SqlFile, MigrateError> {
    let bytes = std::fs::read(path).map_err(|source| MigrateError::Read {
        path: path.to_owned(),
        source,
    })?;

    let checksum = checksum(&bytes);
    let sql = String::from_utf8(bytes).map_err(|_| MigrateError::NotUtf8 {
        path: path.to_owned(),
    })?;

    refuse_transaction_control(path, &sql)?;
    Ok(SqlFile { sql, checksum })
}

/// A down step read from `path`.
fn read_down(path: &Path) -> Result<DownStep, MigrateError> {
    let file = read_sql(path)?;
    Ok(DownStep {
        sql: file.sql,
        checksum: file.checksum,
        path: path.to_owned(),
    })
}

/// The entries of `dir`, sorted by path so that reading and errors are deterministic.
fn list(dir: &Path) -> Result<Vec<PathBuf>, MigrateError> {
    let read_error = |source| MigrateError::Read {
        path: dir.to_owned(),
        source,
    };

    let mut paths = std::fs::read_dir(dir)
        .map_err(read_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    paths.sort();
    Ok(paths)
}

/// A path's last component as text; non-UTF-8 bytes become U+FFFD, which no rule accepts.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `0001_add_users` → (`0001`, `add_users`); `None` unless digits, `_`, then a name.
fn split_stem(stem: &str) -> Option<(&str, &str)> {
    let (version, name) = stem.split_once('_')?;
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');

    (parse_version(version).is_some() && name_ok).then_some((version, name))
}

/// `0042` → 42; `None` unless 1 to 38 ASCII digits.
pub(super) fn parse_version(text: &str) -> Option<u128> {
    let digits = text.bytes().all(|b| b.is_ascii_digit());
    if text.is_empty() || text.len() > MAX_VERSION_DIGITS || !digits {
        return None;
    }

    text.parse().ok()
}

fn refuse_duplicates(migrations: &[Migration]) -> Result<(), MigrateError> {
    for pair in migrations.windows(2) {
        if let [a, b] = pair
            && a.number() == b.number()
        {
            return Err(MigrateError::DuplicateVersion {
                version: b.version.clone(),
                first: a.path.clone(),
                second: b.path.clone(),
            });
        }
    }
    Ok(())
}
