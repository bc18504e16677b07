//! Prisma's layout: one subdirectory per migration, `20240101120000_init/migration.sql`,
//! with an optional `down.sql` beside it. At the top, only those subdirectories, `checks/`
//! and non-SQL files (such as `migration_lock.toml`) may appear; inside a migration's
//! subdirectory, only those two SQL files.

use std::path::Path;

use super::entries::{Entry, Named};
use super::{Migration, file_name, list, read_down, read_sql};
use crate::control::migrate::MigrateError;

const TOP_RULE: &str =
    "a Prisma migrations directory holds <version>_<name>/ directories, checks/ and non-SQL files";
const DOWN_RULE: &str = "a Prisma migration's down step is down.sql inside its directory";
const INSIDE_RULE: &str = "a Prisma migration directory holds migration.sql and down.sql only";

/// The migrations of a Prisma directory, in directory order.
pub(super) fn read(entries: &[Entry]) -> Result<Vec<Migration>, MigrateError> {
    let mut migrations = Vec::new();

    for entry in entries {
        match entry {
            Entry::PrismaDir(named) => migrations.push(read_one(named)?),
            Entry::ChecksDir(_) => {}
            Entry::Down(named) => return Err(unexpected(&named.path, DOWN_RULE)),
            Entry::Forward(named) | Entry::Up(named) => {
                return Err(unexpected(&named.path, TOP_RULE));
            }
            Entry::OtherDir(path) => return Err(unexpected(path, TOP_RULE)),
        }
    }
    Ok(migrations)
}

/// One `<version>_<name>/` directory.
fn read_one(named: &Named) -> Result<Migration, MigrateError> {
    refuse_stray_sql(&named.path)?;

    let forward_path = named.path.join("migration.sql");
    if !forward_path.is_file() {
        return Err(MigrateError::MissingMigrationSql {
            dir: named.path.clone(),
        });
    }
    let forward = read_sql(&forward_path)?;

    let down_path = named.path.join("down.sql");
    let down = down_path
        .is_file()
        .then(|| read_down(&down_path))
        .transpose()?;

    Ok(Migration {
        version: named.version.clone(),
        name: named.name.clone(),
        sql: forward.sql,
        checksum: forward.checksum,
        path: forward_path,
        down,
    })
}

/// Refuses any `.sql` entry of a migration's directory other than its two files.
fn refuse_stray_sql(dir: &Path) -> Result<(), MigrateError> {
    for path in list(dir)? {
        let name = file_name(&path);
        let known = name == "migration.sql" || name == "down.sql";
        if name.ends_with(".sql") && !known {
            return Err(unexpected(&path, INSIDE_RULE));
        }
    }
    Ok(())
}

fn unexpected(path: &Path, rule: &'static str) -> MigrateError {
    MigrateError::Unexpected {
        path: path.to_owned(),
        rule,
    }
}
