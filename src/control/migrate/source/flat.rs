//! The two flat layouts, where every step is a file at the top of the directory: numbered
//! (`0001_init.sql`) and up/down (`0001_init.up.sql`). In both, `0001_init.down.sql` is the
//! down step of the forward file with the same version and name, and must have one.

use super::entries::{Entry, Named};
use super::{Layout, Migration, read_down, read_sql};
use crate::control::migrate::MigrateError;

/// The migrations of a numbered or up/down directory, in directory order.
pub(super) fn read(layout: Layout, entries: &[Entry]) -> Result<Vec<Migration>, MigrateError> {
    let mut migrations = Vec::new();
    for entry in entries {
        if let Entry::Forward(named) | Entry::Up(named) = entry {
            migrations.push(read_forward(named)?);
        }
    }

    for entry in entries {
        if let Entry::Down(named) = entry {
            attach_down(layout, &mut migrations, named)?;
        }
    }
    Ok(migrations)
}

fn read_forward(named: &Named) -> Result<Migration, MigrateError> {
    let file = read_sql(&named.path)?;
    Ok(Migration {
        version: named.version.clone(),
        name: named.name.clone(),
        sql: file.sql,
        checksum: file.checksum,
        path: named.path.clone(),
        down: None,
    })
}

/// Reads a down file into the migration it reverses; refused when there is none.
fn attach_down(
    layout: Layout,
    migrations: &mut [Migration],
    down: &Named,
) -> Result<(), MigrateError> {
    let forward = migrations
        .iter_mut()
        .find(|m| m.version == down.version && m.name == down.name);

    let Some(forward) = forward else {
        let suffix = if layout == Layout::UpDown {
            ".up.sql"
        } else {
            ".sql"
        };
        return Err(MigrateError::OrphanDown {
            path: down.path.clone(),
            expected: down
                .path
                .with_file_name(format!("{}_{}{suffix}", down.version, down.name)),
        });
    };

    forward.down = Some(read_down(&down.path)?);
    Ok(())
}
