//! Sequences, tables and their rows: read from the live schema, made again in `next`.
//!
//! Tables are created with `LIKE`, which brings columns, types, collations, `NOT NULL`,
//! identity and generated columns, storage and compression, but neither defaults nor
//! constraints: those are read back as text and added later (`constraints`), so a serial
//! column's `nextval` names `next`'s sequence and keys are built once, after the data.

use tokio_postgres::Row;

use super::copy::Ctx;
use super::{BlueGreenError, qualified, query};
use crate::control::provision::{quote_ident, quote_literal};
use crate::tenant::catalog::field;

/// A sequence that is not an identity column's.
pub(super) struct Sequence {
    name: String,
    unlogged: bool,
    data_type: String,
    start: i64,
    increment: i64,
    max: i64,
    min: i64,
    cache: i64,
    cycle: bool,
    last_value: Option<i64>,
}

/// A table and what its copy needs.
pub(super) struct Table {
    name: String,
    unlogged: bool,
    options: Vec<String>,
    /// Columns given values on insert: all but generated ones.
    inserted: Vec<String>,
    has_identity: bool,
}

/// An identity column and its sequence's current value.
pub(super) struct Identity {
    table: String,
    column: String,
    last_value: Option<i64>,
}

const SEQUENCES: &str = "
SELECT c.relname::text, c.relpersistence = 'u', pg_catalog.format_type(s.seqtypid, NULL),
       s.seqstart, s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle,
       pg_catalog.pg_sequence_last_value(c.oid)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
WHERE c.relnamespace = $1 AND c.relkind = 'S'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'i')
ORDER BY 1";

const TABLES: &str = "
SELECT c.relname::text, c.relpersistence = 'u', coalesce(c.reloptions, '{}'),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = '' ORDER BY a.attnum),
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = c.oid AND a.attidentity <> '' AND NOT a.attisdropped)
FROM pg_catalog.pg_class c
WHERE c.relnamespace = $1 AND c.relkind = 'r'
ORDER BY 1";

const IDENTITIES: &str = "
SELECT t.relname::text, a.attname::text, pg_catalog.pg_sequence_last_value(d.objid::regclass)
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_catalog.pg_class'::regclass
  AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.deptype = 'i' AND t.relnamespace = $1
ORDER BY 1, 2";

/// Locks every table of the live schema against writers until the transaction ends, so the
/// copy is one consistent state.
pub(super) async fn lock(ctx: &Ctx<'_>) -> Result<(), BlueGreenError> {
    let rows = ctx
        .rows(
            "list the tables to lock",
            "SELECT relname::text FROM pg_catalog.pg_class \
               WHERE relnamespace = $1 AND relkind = 'r' ORDER BY 1",
        )
        .await?;
    let names: Vec<String> = rows
        .iter()
        .map(|row| field::<String>(row, 0, "tables").map(|name| qualified(ctx.live, &name)))
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Ok(());
    }

    let sql = format!("LOCK TABLE ONLY {} IN SHARE MODE", names.join(", "));
    ctx.run("lock the live tables", ctx.live, &sql).await
}

/// The live schema's sequences, identity sequences aside.
pub(super) async fn read_sequences(ctx: &Ctx<'_>) -> Result<Vec<Sequence>, BlueGreenError> {
    let rows = ctx.rows("read the sequences", SEQUENCES).await?;
    rows.iter().map(sequence).collect()
}

fn sequence(row: &Row) -> Result<Sequence, BlueGreenError> {
    let owner = "sequences";
    Ok(Sequence {
        name: field(row, 0, owner)?,
        unlogged: field(row, 1, owner)?,
        data_type: field(row, 2, owner)?,
        start: field(row, 3, owner)?,
        increment: field(row, 4, owner)?,
        max: field(row, 5, owner)?,
        min: field(row, 6, owner)?,
        cache: field(row, 7, owner)?,
        cycle: field(row, 8, owner)?,
        last_value: field(row, 9, owner)?,
    })
}

/// The live schema's tables.
pub(super) async fn read_tables(ctx: &Ctx<'_>) -> Result<Vec<Table>, BlueGreenError> {
    let rows = ctx.rows("read the tables", TABLES).await?;
    rows.iter()
        .map(|row| {
            Ok(Table {
                name: field(row, 0, "tables")?,
                unlogged: field(row, 1, "tables")?,
                options: field(row, 2, "tables")?,
                inserted: field(row, 3, "tables")?,
                has_identity: field(row, 4, "tables")?,
            })
        })
        .collect()
}

/// The live schema's identity columns with their sequences' values.
pub(super) async fn read_identities(ctx: &Ctx<'_>) -> Result<Vec<Identity>, BlueGreenError> {
    let rows = ctx.rows("read the identity columns", IDENTITIES).await?;
    rows.iter()
        .map(|row| {
            Ok(Identity {
                table: field(row, 0, "identity columns")?,
                column: field(row, 1, "identity columns")?,
                last_value: field(row, 2, "identity columns")?,
            })
        })
        .collect()
}

/// Creates each sequence in `next` with the live one's options and position.
pub(super) async fn create_sequences(
    ctx: &Ctx<'_>,
    sequences: &[Sequence],
) -> Result<(), BlueGreenError> {
    for sequence in sequences {
        let name = qualified(ctx.next, &sequence.name);
        let sql = format!(
            "CREATE {}SEQUENCE {name} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} \
             START WITH {} CACHE {} {}CYCLE",
            if sequence.unlogged { "UNLOGGED " } else { "" },
            sequence.data_type,
            sequence.increment,
            sequence.min,
            sequence.max,
            sequence.start,
            sequence.cache,
            if sequence.cycle { "" } else { "NO " },
        );
        ctx.run("create a sequence", &name, &sql).await?;
        set_value(ctx, &name, sequence.last_value).await?;
    }
    Ok(())
}

/// Moves the sequence `name` (qualified SQL) to `last_value`, if the live one was used.
async fn set_value(
    ctx: &Ctx<'_>,
    name: &str,
    last_value: Option<i64>,
) -> Result<(), BlueGreenError> {
    let Some(value) = last_value else {
        return Ok(());
    };
    ctx.tx
        .execute(
            "SELECT pg_catalog.setval($1::text::regclass, $2, true)",
            &[&name, &value],
        )
        .await
        .map_err(query("set a sequence's value", name))?;
    Ok(())
}

/// Creates each table in `next` and copies its rows; returns the number of rows copied.
pub(super) async fn create_tables(ctx: &Ctx<'_>, tables: &[Table]) -> Result<u64, BlueGreenError> {
    let mut rows = 0;
    for table in tables {
        create_table(ctx, table).await?;
        rows += copy_rows(ctx, table).await?;
    }
    Ok(rows)
}

async fn create_table(ctx: &Ctx<'_>, table: &Table) -> Result<(), BlueGreenError> {
    let name = qualified(ctx.next, &table.name);
    let sql = format!(
        "CREATE {}TABLE {name} (LIKE {} INCLUDING IDENTITY INCLUDING GENERATED \
         INCLUDING STORAGE INCLUDING COMPRESSION){}",
        if table.unlogged { "UNLOGGED " } else { "" },
        qualified(ctx.live, &table.name),
        with_options(&table.options),
    );
    ctx.run("create a table", &name, &sql).await
}

async fn copy_rows(ctx: &Ctx<'_>, table: &Table) -> Result<u64, BlueGreenError> {
    if table.inserted.is_empty() {
        return Ok(0);
    }
    let columns: Vec<String> = table.inserted.iter().map(|c| quote_ident(c)).collect();
    let columns = columns.join(", ");
    let name = qualified(ctx.next, &table.name);

    let sql = format!(
        "INSERT INTO {name} ({columns}) {}SELECT {columns} FROM {}",
        if table.has_identity {
            "OVERRIDING SYSTEM VALUE "
        } else {
            ""
        },
        qualified(ctx.live, &table.name),
    );
    ctx.tx
        .execute(sql.as_str(), &[])
        .await
        .map_err(query("copy the rows", &name))
}

/// Moves each identity column's new sequence to the live one's position.
pub(super) async fn set_identities(
    ctx: &Ctx<'_>,
    identities: &[Identity],
) -> Result<(), BlueGreenError> {
    for identity in identities {
        let Some(value) = identity.last_value else {
            continue;
        };
        let table = qualified(ctx.next, &identity.table);
        ctx.tx
            .execute(
                "SELECT pg_catalog.setval(\
                     pg_catalog.pg_get_serial_sequence($1, $2)::regclass, $3, true)",
                &[&table, &identity.column, &value],
            )
            .await
            .map_err(query("set an identity column's sequence", &table))?;
    }
    Ok(())
}

/// ` WITH ("name" = 'value', ...)` for storage parameters `name=value`, or nothing.
pub(super) fn with_options(options: &[String]) -> String {
    if options.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = options
        .iter()
        .map(|option| match option.split_once('=') {
            Some((name, value)) => format!("{} = {}", quote_ident(name), quote_literal(value)),
            None => quote_ident(option),
        })
        .collect();
    format!(" WITH ({})", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_parameters_are_quoted() {
        assert_eq!(with_options(&[]), "");
        let options = ["fillfactor=70".to_owned(), "check_option=local".to_owned()];
        assert_eq!(
            with_options(&options),
            " WITH (\"fillfactor\" = '70', \"check_option\" = 'local')"
        );
    }
}
