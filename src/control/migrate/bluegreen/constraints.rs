//! What is added to `next`'s tables once their rows are in: defaults, constraints (foreign
//! keys last), indexes, sequence ownership, `CLUSTER` marks and replica identity.
//!
//! Definitions are read while `search_path` names the live schema only, so they print its
//! objects unqualified; they run while it names `next`, so they bind to the copies. Index
//! definitions always name their table qualified, so that one name is replaced.

use super::copy::Ctx;
use super::{BlueGreenError, qualified};
use crate::control::provision::quote_ident;
use crate::tenant::catalog::field;

/// Everything added after the data, read from the live schema.
pub(super) struct Finish {
    defaults: Vec<ColumnDefault>,
    constraints: Vec<Constraint>,
    indexes: Vec<Index>,
    owned_by: Vec<OwnedBy>,
    marks: Vec<Marks>,
}

struct ColumnDefault {
    relation: String,
    is_view: bool,
    column: String,
    expression: String,
}

struct Constraint {
    table: String,
    name: String,
    definition: String,
    /// Backed by an index (primary key, unique, exclusion).
    indexed: bool,
    /// A foreign key, added after every index it may rely on.
    foreign: bool,
}

struct Index {
    name: String,
    definition: String,
    /// ` ON "live"."table" USING `, as the definition spells it.
    live_table: String,
    table: String,
}

struct OwnedBy {
    sequence: String,
    table: String,
    column: String,
}

/// A table's `CLUSTER` index and replica identity.
struct Marks {
    table: String,
    cluster_on: Option<String>,
    replica_identity: String,
    replica_index: Option<String>,
}

const DEFAULTS: &str = "
SELECT c.relname::text, c.relkind = 'v', a.attname::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
FROM pg_catalog.pg_attrdef d
JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'v') AND a.attgenerated = ''
ORDER BY 1, 3";

const CONSTRAINTS: &str = "
SELECT c.relname::text, k.conname::text, pg_catalog.pg_get_constraintdef(k.oid),
       k.contype IN ('p', 'u', 'x'), k.contype = 'f'
FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
WHERE c.relnamespace = $1 AND c.relkind = 'r' AND k.contype IN ('c', 'p', 'u', 'x', 'f')
ORDER BY 1, 2";

const INDEXES: &str = "
SELECT i.relname::text, pg_catalog.pg_get_indexdef(x.indexrelid),
       ' ON ' || pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
           || ' USING ',
       c.relname::text
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
JOIN pg_catalog.pg_class c ON c.oid = x.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relnamespace = $1 AND c.relkind = 'r'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                  WHERE k.conindid = x.indexrelid AND k.contype IN ('p', 'u', 'x'))
ORDER BY 1";

const OWNED_BY: &str = "
SELECT s.relname::text, t.relname::text, a.attname::text
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class s ON s.oid = d.objid
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_catalog.pg_class'::regclass
  AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.deptype = 'a' AND s.relkind = 'S' AND s.relnamespace = $1 AND t.relnamespace = $1
ORDER BY 1";

const MARKS: &str = "
SELECT c.relname::text,
       (SELECT i.relname::text FROM pg_catalog.pg_index x
        JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = c.oid AND x.indisclustered),
       c.relreplident::text,
       (SELECT i.relname::text FROM pg_catalog.pg_index x
        JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = c.oid AND x.indisreplident)
FROM pg_catalog.pg_class c
WHERE c.relnamespace = $1 AND c.relkind = 'r'
  AND (c.relreplident <> 'd' OR EXISTS (SELECT 1 FROM pg_catalog.pg_index x
                                        WHERE x.indrelid = c.oid AND x.indisclustered))
ORDER BY 1";

impl Finish {
    /// Reads the definitions; `search_path` must name the live schema only.
    pub(super) async fn read(ctx: &Ctx<'_>) -> Result<Self, BlueGreenError> {
        Ok(Self {
            defaults: read_defaults(ctx).await?,
            constraints: read_constraints(ctx).await?,
            indexes: read_indexes(ctx).await?,
            owned_by: read_owned_by(ctx).await?,
            marks: read_marks(ctx).await?,
        })
    }

    /// Indexes the finished copy has, those behind constraints included.
    pub(super) fn index_count(&self) -> usize {
        let behind_constraints = self.constraints.iter().filter(|c| c.indexed).count();
        self.indexes.len() + behind_constraints
    }

    /// Adds the defaults of `next`'s tables and views; `search_path` must name `next`.
    pub(super) async fn apply_defaults(&self, ctx: &Ctx<'_>) -> Result<(), BlueGreenError> {
        for default in &self.defaults {
            let relation = qualified(ctx.next, &default.relation);
            let sql = format!(
                "ALTER {} {relation} ALTER COLUMN {} SET DEFAULT {}",
                if default.is_view { "VIEW" } else { "TABLE" },
                quote_ident(&default.column),
                default.expression
            );
            ctx.run("set a column default", &relation, &sql).await?;
        }
        Ok(())
    }

    /// Adds constraints, indexes, ownership and marks; `search_path` must name `next`.
    /// Foreign keys come last: they may rely on a unique index that is no constraint.
    pub(super) async fn apply_keys(&self, ctx: &Ctx<'_>) -> Result<(), BlueGreenError> {
        for constraint in self.constraints.iter().filter(|c| !c.foreign) {
            add_constraint(ctx, constraint).await?;
        }
        for index in &self.indexes {
            create_index(ctx, index).await?;
        }
        for constraint in self.constraints.iter().filter(|c| c.foreign) {
            add_constraint(ctx, constraint).await?;
        }
        self.apply_ownership_and_marks(ctx).await
    }

    async fn apply_ownership_and_marks(&self, ctx: &Ctx<'_>) -> Result<(), BlueGreenError> {
        for owned in &self.owned_by {
            let sequence = qualified(ctx.next, &owned.sequence);
            let sql = format!(
                "ALTER SEQUENCE {sequence} OWNED BY {}.{}",
                qualified(ctx.next, &owned.table),
                quote_ident(&owned.column)
            );
            ctx.run("set a sequence's owner column", &sequence, &sql)
                .await?;
        }
        for marks in &self.marks {
            apply_marks(ctx, marks).await?;
        }
        Ok(())
    }
}

async fn add_constraint(ctx: &Ctx<'_>, constraint: &Constraint) -> Result<(), BlueGreenError> {
    let table = qualified(ctx.next, &constraint.table);
    let sql = format!(
        "ALTER TABLE {table} ADD CONSTRAINT {} {}",
        quote_ident(&constraint.name),
        constraint.definition
    );
    ctx.run("add a constraint", &table, &sql).await
}

async fn create_index(ctx: &Ctx<'_>, index: &Index) -> Result<(), BlueGreenError> {
    let next_table = format!(" ON {} USING ", qualified(ctx.next, &index.table));
    if !index.definition.contains(&index.live_table) {
        return Err(BlueGreenError::Definition {
            object: format!("index {}.{}", ctx.live, index.name),
            message: format!(
                "its definition does not name its table: {}",
                index.definition
            ),
        });
    }

    let sql = index.definition.replacen(&index.live_table, &next_table, 1);
    let name = qualified(ctx.next, &index.name);
    ctx.run("create an index", &name, &sql).await
}

async fn apply_marks(ctx: &Ctx<'_>, marks: &Marks) -> Result<(), BlueGreenError> {
    let table = qualified(ctx.next, &marks.table);
    if let Some(index) = &marks.cluster_on {
        let sql = format!("ALTER TABLE {table} CLUSTER ON {}", quote_ident(index));
        ctx.run("mark the clustering index", &table, &sql).await?;
    }

    let identity = match (marks.replica_identity.as_str(), &marks.replica_index) {
        ("f", _) => "FULL".to_owned(),
        ("n", _) => "NOTHING".to_owned(),
        ("i", Some(index)) => format!("USING INDEX {}", quote_ident(index)),
        _ => return Ok(()),
    };
    let sql = format!("ALTER TABLE {table} REPLICA IDENTITY {identity}");
    ctx.run("set the replica identity", &table, &sql).await
}

async fn read_defaults(ctx: &Ctx<'_>) -> Result<Vec<ColumnDefault>, BlueGreenError> {
    let rows = ctx.rows("read the column defaults", DEFAULTS).await?;
    rows.iter()
        .map(|row| {
            Ok(ColumnDefault {
                relation: field(row, 0, "column defaults")?,
                is_view: field(row, 1, "column defaults")?,
                column: field(row, 2, "column defaults")?,
                expression: field(row, 3, "column defaults")?,
            })
        })
        .collect()
}

async fn read_constraints(ctx: &Ctx<'_>) -> Result<Vec<Constraint>, BlueGreenError> {
    let rows = ctx.rows("read the constraints", CONSTRAINTS).await?;
    rows.iter()
        .map(|row| {
            Ok(Constraint {
                table: field(row, 0, "constraints")?,
                name: field(row, 1, "constraints")?,
                definition: field(row, 2, "constraints")?,
                indexed: field(row, 3, "constraints")?,
                foreign: field(row, 4, "constraints")?,
            })
        })
        .collect()
}

async fn read_indexes(ctx: &Ctx<'_>) -> Result<Vec<Index>, BlueGreenError> {
    let rows = ctx.rows("read the indexes", INDEXES).await?;
    rows.iter()
        .map(|row| {
            Ok(Index {
                name: field(row, 0, "indexes")?,
                definition: field(row, 1, "indexes")?,
                live_table: field(row, 2, "indexes")?,
                table: field(row, 3, "indexes")?,
            })
        })
        .collect()
}

async fn read_owned_by(ctx: &Ctx<'_>) -> Result<Vec<OwnedBy>, BlueGreenError> {
    let rows = ctx.rows("read the sequence owners", OWNED_BY).await?;
    rows.iter()
        .map(|row| {
            Ok(OwnedBy {
                sequence: field(row, 0, "sequence owners")?,
                table: field(row, 1, "sequence owners")?,
                column: field(row, 2, "sequence owners")?,
            })
        })
        .collect()
}

async fn read_marks(ctx: &Ctx<'_>) -> Result<Vec<Marks>, BlueGreenError> {
    let rows = ctx
        .rows("read clustering and replica identity", MARKS)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Marks {
                table: field(row, 0, "table marks")?,
                cluster_on: field(row, 1, "table marks")?,
                replica_identity: field(row, 2, "table marks")?,
                replica_index: field(row, 3, "table marks")?,
            })
        })
        .collect()
}
