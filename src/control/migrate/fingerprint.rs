//! A tenant schema's fingerprint: one hash of its catalog entries, so a rollout can tell
//! whether a migration changed the schema and record what the schema was before and after.
//!
//! It covers relations and their kinds, columns with types, NOT NULL and defaults,
//! constraints, indexes, view definitions, routines (name, arguments, body hash) and
//! user-defined types. The schema's own name is cut out of every definition, so a copy of the
//! schema under another name (blue/green) has the same fingerprint as the original. OIDs,
//! statistics and data are left out.

use tokio_postgres::GenericClient;

/// The items the fingerprint hashes, one text per catalog entry; `$1` is the schema name,
/// `$2` its quoted form followed by a dot, cut out of definitions.
const ITEMS: &str = "
WITH s AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1),
items AS (
    SELECT 'rel ' || c.relname || ' ' || c.relkind::text AS item
    FROM pg_catalog.pg_class c JOIN s ON c.relnamespace = s.oid
    UNION ALL
    SELECT 'col ' || c.relname || '.' || a.attname || ' '
        || pg_catalog.format_type(a.atttypid, a.atttypmod)
        || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
        || coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN s ON c.relnamespace = s.oid
    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT 'con ' || c.relname || '.' || k.conname || ' ' || pg_catalog.pg_get_constraintdef(k.oid)
    FROM pg_catalog.pg_constraint k
    JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
    JOIN s ON c.relnamespace = s.oid
    UNION ALL
    SELECT 'idx ' || i.relname || ' ' || pg_catalog.pg_get_indexdef(i.oid)
    FROM pg_catalog.pg_index x
    JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
    JOIN s ON i.relnamespace = s.oid
    UNION ALL
    SELECT 'view ' || c.relname || ' ' || pg_catalog.pg_get_viewdef(c.oid)
    FROM pg_catalog.pg_class c JOIN s ON c.relnamespace = s.oid
    WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'fn ' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid)
        || ') ' || md5(coalesce(p.prosrc, ''))
    FROM pg_catalog.pg_proc p JOIN s ON p.pronamespace = s.oid
    UNION ALL
    SELECT 'type ' || t.typname || ' ' || t.typtype::text
    FROM pg_catalog.pg_type t JOIN s ON t.typnamespace = s.oid
    WHERE t.typtype IN ('e', 'd', 'r', 'm')
        OR (t.typtype = 'c' AND
            (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')
)
SELECT md5(coalesce(string_agg(replace(item, $2, ''), E'\\n' ORDER BY item), '')), count(*)
FROM items";

/// A schema's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hex MD5 of the sorted catalog entries (a change detector, not a security measure).
    pub hash: String,
    /// How many entries went into it.
    pub entries: i64,
}

/// Reads the fingerprint of `schema` as the server sees it now (inside `client`'s
/// transaction, if any).
pub async fn of_schema(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Fingerprint, tokio_postgres::Error> {
    let qualifier = format!("{}.", super::super::provision::quote_ident(schema));
    let row = client.query_one(ITEMS, &[&schema, &qualifier]).await?;

    Ok(Fingerprint {
        hash: row.try_get(0)?,
        entries: row.try_get(1)?,
    })
}
