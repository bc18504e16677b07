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
///
/// Every catalog is read through an index: the schema's objects come from `pg_depend` (each
/// relation, routine and type records its schema there; indexes record their table), and
/// their OIDs are passed on as arrays. With a thousand tenant schemas, scanning `pg_class`
/// or `pg_attribute` instead costs tens to hundreds of milliseconds per call.
const ITEMS: &str = "
WITH s AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1),
members AS MATERIALIZED (
    SELECT classid, objid FROM pg_catalog.pg_depend
    WHERE refclassid = 'pg_catalog.pg_namespace'::regclass
        AND refobjid = (SELECT oid FROM s) AND objsubid = 0
),
owned AS (
    SELECT coalesce(array_agg(objid), '{}') AS oids FROM members
    WHERE classid = 'pg_catalog.pg_class'::regclass
),
rels AS MATERIALIZED (
    SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_class c
    WHERE c.oid = ANY ((SELECT oids FROM owned)::oid[])
    UNION ALL
    SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_index x
    JOIN pg_catalog.pg_class c ON c.oid = x.indexrelid
    WHERE x.indrelid = ANY ((SELECT oids FROM owned)::oid[])
),
ids AS (SELECT coalesce(array_agg(oid), '{}') AS oids FROM rels),
items AS (
    SELECT 'rel ' || r.relname || ' ' || r.relkind::text AS item FROM rels r
    UNION ALL
    SELECT 'col ' || r.relname || '.' || a.attname || ' '
        || pg_catalog.format_type(a.atttypid, a.atttypmod)
        || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
        || coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_catalog.pg_attribute a
    JOIN rels r ON r.oid = a.attrelid
    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = ANY ((SELECT oids FROM ids)::oid[])
        AND a.attnum > 0 AND NOT a.attisdropped AND r.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT 'con ' || r.relname || '.' || k.conname || ' ' || pg_catalog.pg_get_constraintdef(k.oid)
    FROM pg_catalog.pg_constraint k
    JOIN rels r ON r.oid = k.conrelid
    WHERE k.conrelid = ANY ((SELECT oids FROM ids)::oid[])
    UNION ALL
    SELECT 'idx ' || r.relname || ' ' || pg_catalog.pg_get_indexdef(x.indexrelid)
    FROM pg_catalog.pg_index x
    JOIN rels r ON r.oid = x.indexrelid
    WHERE x.indrelid = ANY ((SELECT oids FROM ids)::oid[])
    UNION ALL
    SELECT 'view ' || r.relname || ' ' || pg_catalog.pg_get_viewdef(r.oid)
    FROM rels r WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'fn ' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid)
        || ') ' || md5(coalesce(p.prosrc, ''))
    FROM pg_catalog.pg_proc p
    WHERE p.oid IN (SELECT objid FROM members WHERE classid = 'pg_catalog.pg_proc'::regclass)
    UNION ALL
    SELECT 'type ' || t.typname || ' ' || t.typtype::text
    FROM pg_catalog.pg_type t
    WHERE t.oid IN (SELECT objid FROM members WHERE classid = 'pg_catalog.pg_type'::regclass)
        AND (t.typtype IN ('e', 'd', 'r', 'm')
            OR (t.typtype = 'c' AND
                (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c'))
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
