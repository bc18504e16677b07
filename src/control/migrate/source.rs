//! Migration files on disk: a directory of `NNNN_name.sql` files read in version order.
//!
//! A file's version is its leading digits (compared as a number, kept as written), its name
//! the rest of the file stem. `NNNN_name.down.sql` files are reverse steps, skipped here; any
//! other `.sql` file that does not follow the pattern is an error, so a typo is never silently
//! left unapplied. Each file's checksum is the SHA-256 of its bytes.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::MigrateError;

/// One forward migration read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version as written in the file name, such as `0001`.
    pub version: String,
    /// The rest of the file stem, such as `init`.
    pub name: String,
    /// The SQL text.
    pub sql: String,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub checksum: String,
    /// Where it was read from.
    pub path: PathBuf,
}

impl Migration {
    /// The version as a number, for ordering.
    fn number(&self) -> u64 {
        self.version.parse().unwrap_or(u64::MAX)
    }
}

/// Reads every forward migration in `dir`, ordered by version; two files with the same
/// version are refused.
pub fn read_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let entries = std::fs::read_dir(dir).map_err(|source| MigrateError::Read {
        path: dir.to_owned(),
        source,
    })?;

    let mut migrations = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| MigrateError::Read {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if let Some(migration) = read_file(&path)? {
            migrations.push(migration);
        }
    }

    migrations.sort_by_key(Migration::number);
    refuse_duplicates(&migrations)?;
    Ok(migrations)
}

/// Reads one file if it is a forward migration; `None` for other files.
fn read_file(path: &Path) -> Result<Option<Migration>, MigrateError> {
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    let Some(stem) = file_name.strip_suffix(".sql") else {
        return Ok(None);
    };
    if stem.ends_with(".down") {
        return Ok(None);
    }

    let (version, name) = split_stem(stem).ok_or_else(|| MigrateError::BadFileName {
        path: path.to_owned(),
    })?;
    let bytes = std::fs::read(path).map_err(|source| MigrateError::Read {
        path: path.to_owned(),
        source,
    })?;
    let sql = String::from_utf8(bytes.clone()).map_err(|_| MigrateError::NotUtf8 {
        path: path.to_owned(),
    })?;
    refuse_transaction_control(path, &sql)?;

    Ok(Some(Migration {
        version: version.to_owned(),
        name: name.to_owned(),
        sql,
        checksum: checksum(&bytes),
        path: path.to_owned(),
    }))
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

/// `0001_add_users` → (`0001`, `add_users`); `None` unless digits, `_`, then a name.
fn split_stem(stem: &str) -> Option<(&str, &str)> {
    let (version, name) = stem.split_once('_')?;
    let digits = !version.is_empty() && version.len() <= 18;
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');

    (digits && version.chars().all(|c| c.is_ascii_digit()) && name_ok).then_some((version, name))
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

/// Lowercase hex SHA-256.
pub fn checksum(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_split_into_version_and_name() {
        assert_eq!(split_stem("0001_init"), Some(("0001", "init")));
        assert_eq!(split_stem("12_add-users_2"), Some(("12", "add-users_2")));
        assert_eq!(split_stem("init"), None);
        assert_eq!(split_stem("v1_init"), None);
        assert_eq!(split_stem("0001_"), None);
    }

    #[test]
    fn directory_is_read_in_version_order_without_down_files() {
        let dir = tempfile::tempdir().expect("dir");
        for (file, sql) in [
            ("10_ten.sql", "SELECT 10"),
            ("2_two.sql", "SELECT 2"),
            ("2_two.down.sql", "SELECT -2"),
            ("README.md", "notes"),
        ] {
            std::fs::write(dir.path().join(file), sql).expect("write");
        }

        let found = read_dir(dir.path()).expect("reads");
        let versions: Vec<&str> = found.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(versions, ["2", "10"]);
        assert_eq!(found[0].checksum, checksum(b"SELECT 2"));
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("first.sql"), "SELECT 1").expect("write");
        let error = read_dir(dir.path()).expect_err("no version");
        assert!(matches!(error, MigrateError::BadFileName { .. }), "{error}");

        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("1_a.sql"), "SELECT 1").expect("write");
        std::fs::write(dir.path().join("001_b.sql"), "SELECT 1").expect("write");
        let error = read_dir(dir.path()).expect_err("same version");
        assert!(
            matches!(error, MigrateError::DuplicateVersion { .. }),
            "{error}"
        );
    }
}
