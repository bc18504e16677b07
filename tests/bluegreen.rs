//! Blue/green schema primitives against a real PostgreSQL: tenants are created through the
//! control plane, given a schema with the usual objects as their own role, then copied,
//! swapped, swapped back, purged and discarded as pgtenant's catalog role. Every test uses its
//! own tenant names.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{catalog_file, fleet};
use pgtenant::config::{Config, PoolMode};
use pgtenant::control::create::{CreateRequest, create};
use pgtenant::control::migrate::Target;
use pgtenant::control::migrate::bluegreen::{
    BlueGreenError, build_next, discard_next, next_name, purge_expired, refusals, swap, swap_back,
};
use tokio_postgres::{Client, GenericClient};

const DAY: Duration = Duration::from_secs(86_400);

/// A schema with serial and identity keys, a foreign key, checks, a partial index and two
/// expression indexes (one calling the schema's own function), views over a function and over
/// a primary key's functional dependency, comments, and grants to `<tenant>_reader`. The
/// customer `Cy` is deleted, so `customers_id_seq` is ahead of the highest id.
const FIXTURE: &str = "
CREATE FUNCTION norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT lower($1) $$;
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL CHECK (name <> ''),
    email text,
    code text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE invoices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers ON DELETE CASCADE,
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    doubled bigint GENERATED ALWAYS AS (amount_cents * 2) STORED,
    paid boolean NOT NULL DEFAULT false
);
CREATE INDEX invoices_unpaid ON invoices (customer_id) WHERE NOT paid;
CREATE INDEX customers_email_lower ON customers (lower(email));
CREATE INDEX customers_email_norm ON customers (norm(email));
CREATE FUNCTION invoice_count(customer integer) RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT count(*) FROM invoices WHERE customer_id = customer $$;
CREATE FUNCTION total_cents() RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN RETURN (SELECT coalesce(sum(amount_cents), 0) FROM invoices); END $$;
CREATE VIEW customer_totals AS
    SELECT c.id, c.name, coalesce(sum(i.amount_cents), 0) AS total
    FROM customers c LEFT JOIN invoices i ON i.customer_id = c.id GROUP BY c.id;
CREATE VIEW busy_customers AS SELECT id FROM customers WHERE invoice_count(id) > 1;
COMMENT ON TABLE customers IS 'people who pay';
COMMENT ON COLUMN customers.email IS 'where invoices go';
INSERT INTO customers (name, email, code)
    VALUES ('Ada', 'ADA@x', 'a'), ('Bob', 'bob@x', 'b'), ('Cy', NULL, 'c');
INSERT INTO invoices (customer_id, amount_cents, paid)
    VALUES (1, 100, true), (1, 250, false), (2, 990, false);
DELETE FROM customers WHERE name = 'Cy';
";

/// Grants of [`FIXTURE`]'s schema to `reader`.
fn grants(schema: &str, reader: &str) -> String {
    format!(
        "GRANT USAGE ON SCHEMA {schema} TO {reader};
         GRANT SELECT ON customers, customer_totals TO {reader};
         GRANT SELECT (id, amount_cents) ON invoices TO {reader};"
    )
}

fn config() -> Config {
    Config::from_parsed(catalog_file(), Path::new("/")).unwrap()
}

/// Creates tenant `name` through the control plane, runs `sql` in its schema as its role,
/// and returns a connection as pgtenant's catalog role.
async fn tenant(name: &str, sql: &str) -> Client {
    let config = config();
    let request = CreateRequest {
        name: name.to_owned(),
        tier: None,
        pool_mode: PoolMode::Transaction,
        pool_size: None,
        demo_data: false,
    };
    create(&config, &request).await.unwrap();

    let client = pgtenant::control::open(&config).await.unwrap();
    let script =
        format!("SET ROLE {name}; SET search_path TO {name}; {sql}; RESET ROLE; RESET search_path");
    client.batch_execute(&script).await.unwrap();
    client
}

fn target(name: &str) -> Target<'_> {
    Target {
        tenant: name,
        schema: name,
        role: name,
    }
}

async fn number(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn schema_exists(client: &impl GenericClient, schema: &str) -> bool {
    let sql = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)";
    client.query_one(sql, &[&schema]).await.unwrap().get(0)
}

/// Builds a copy of `name`'s schema, commits it, and returns the copy's name.
async fn build(client: &mut Client, name: &str) -> String {
    let next = next_name(name);
    let tx = client.transaction().await.unwrap();
    build_next(&tx, &target(name), &next).await.unwrap();
    tx.commit().await.unwrap();
    next
}

/// Builds a copy of `name`'s schema and swaps it in with `retention`; returns the retired name.
async fn build_and_swap(client: &mut Client, name: &str, retention: Duration) -> String {
    let next = next_name(name);
    let tx = client.transaction().await.unwrap();
    build_next(&tx, &target(name), &next).await.unwrap();
    let retired = swap(&tx, name, name, &next, retention, ("0001", "0002"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    retired
}

/// Per constraint type, per table: how many constraints `schema` has, as one sorted text.
async fn constraint_shape(client: &Client, schema: &str) -> String {
    let sql = "SELECT string_agg(c.relname || ':' || k.contype::text || '=' || n, ',' \
                                 ORDER BY c.relname, k.contype) FROM ( \
                   SELECT conrelid, contype, count(*) AS n FROM pg_constraint \
                   WHERE connamespace = $1::text::regnamespace GROUP BY 1, 2) k \
               JOIN pg_class c ON c.oid = k.conrelid";
    client.query_one(sql, &[&schema]).await.unwrap().get(0)
}

/// A copy has the live schema's rows, constraints and indexes; its sequences continue after
/// the copied values and its defaults and views use its own objects; grants, comments and
/// ownership come along.
#[tokio::test]
async fn copy_preserves_structure_data_sequences_and_grants() {
    let name = "bg_copy";
    let su = fleet().superuser().await;
    su.batch_execute("CREATE ROLE bg_copy_reader NOLOGIN")
        .await
        .unwrap();
    let mut client = tenant(
        name,
        &format!("{FIXTURE} {}", grants(name, "bg_copy_reader")),
    )
    .await;

    let next = next_name(name);
    let tx = client.transaction().await.unwrap();
    let report = build_next(&tx, &target(name), &next).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        (
            report.tables,
            report.rows,
            report.sequences,
            report.views,
            report.functions
        ),
        (2, 5, 2, 2, 3),
        "{report:?}"
    );
    assert_eq!(report.indexes, 6, "{report:?}");
    for table in ["customers", "invoices"] {
        let count = |schema: &str| format!("SELECT count(*) FROM {schema}.{table}");
        assert_eq!(
            number(&su, &count(name)).await,
            number(&su, &count(&next)).await
        );
    }
    assert_eq!(
        constraint_shape(&su, name).await,
        constraint_shape(&su, &next).await
    );
    let indexes =
        |schema: &str| format!("SELECT count(*) FROM pg_indexes WHERE schemaname = '{schema}'");
    assert_eq!(
        number(&su, &indexes(name)).await,
        number(&su, &indexes(&next)).await
    );

    // Sequences continue after the copied values.
    let insert = |sql: &str| format!("INSERT INTO {next}.{sql} RETURNING id::bigint");
    let id = number(&su, &insert("customers (name) VALUES ('Dee')")).await;
    assert_eq!(id, 4, "Cy took 3 in the live schema");
    let invoice = number(
        &su,
        &insert("invoices (customer_id, amount_cents) VALUES (1, 5)"),
    )
    .await;
    assert_eq!(invoice, 4);

    // Defaults and views use the copy's objects.
    let default: String = su
        .query_one(
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef \
             WHERE adrelid = $1::text::regclass AND adnum = 1",
            &[&format!("{next}.customers")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        default,
        format!("nextval('{next}.customers_id_seq'::regclass)")
    );
    let owned: String = su
        .query_one(
            "SELECT pg_get_serial_sequence($1, 'id')",
            &[&format!("{next}.customers")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        owned,
        format!("{next}.customers_id_seq"),
        "the serial sequence is owned"
    );
    let totals = |schema: &str| format!("SELECT count(*) FROM {schema}.customer_totals");
    assert_eq!(number(&su, &totals(name)).await, 2);
    assert_eq!(
        number(&su, &totals(&next)).await,
        3,
        "the copy's view sees Dee"
    );
    // Function bodies are text, resolved by name when they run: here in the copy.
    su.batch_execute(&format!("SET search_path TO {next}"))
        .await
        .unwrap();
    assert_eq!(number(&su, "SELECT count(*) FROM busy_customers").await, 1);
    su.batch_execute("RESET search_path").await.unwrap();

    assert_copy_rights(&su, name, &next).await;
}

async fn assert_copy_rights(su: &Client, role: &str, next: &str) {
    let reader = format!("{role}_reader");
    let check =
        |sql: String| async move { su.query_one(&sql, &[]).await.unwrap().get::<_, bool>(0) };
    assert!(
        check(format!(
            "SELECT has_schema_privilege('{reader}', '{next}', 'USAGE')"
        ))
        .await
    );
    assert!(
        check(format!(
            "SELECT has_table_privilege('{reader}', '{next}.customers', 'SELECT')"
        ))
        .await
    );
    assert!(
        check(format!(
            "SELECT has_table_privilege('{reader}', '{next}.customer_totals', 'SELECT')"
        ))
        .await
    );
    assert!(
        !check(format!(
            "SELECT has_table_privilege('{reader}', '{next}.invoices', 'SELECT')"
        ))
        .await
    );
    assert!(
        check(format!(
            "SELECT has_column_privilege('{reader}', '{next}.invoices', 'amount_cents', 'SELECT')"
        ))
        .await
    );
    assert!(
        !check(format!(
            "SELECT has_column_privilege('{reader}', '{next}.invoices', 'paid', 'SELECT')"
        ))
        .await
    );

    let foreign_owned = number(
        su,
        &format!(
            "SELECT count(*) FROM pg_class \
         WHERE relnamespace = '{next}'::regnamespace AND relowner <> '{role}'::regrole"
        ),
    )
    .await;
    assert_eq!(
        foreign_owned, 0,
        "the tenant owns every relation of the copy"
    );
    let comment: String = su
        .query_one(
            &format!("SELECT obj_description('{next}.customers'::regclass, 'pg_class')"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment, "people who pay");
}

/// Names that need quoting, a dropped column, a custom identity, an unlogged table with a
/// storage parameter, a sequence of its own with options, a foreign key resting on a unique
/// index, `CLUSTER` and replica identity marks, a view with options, a `BEGIN ATOMIC`
/// function, a function taking a view's row type, a procedure, comments on a constraint, an
/// index and a function, and default privileges. `{reader}` is replaced.
const UNUSUAL: &str = r#"
CREATE TABLE "Order Lines" (
    "Line No" integer GENERATED BY DEFAULT AS IDENTITY (START WITH 100 INCREMENT BY 10)
        PRIMARY KEY,
    "SKU" text NOT NULL,
    qty integer NOT NULL CONSTRAINT "qty is positive" CHECK (qty > 0),
    dropped_later text
);
ALTER TABLE "Order Lines" DROP COLUMN dropped_later;
CREATE UNIQUE INDEX "Order Lines by SKU" ON "Order Lines" ("SKU");
CREATE TABLE "Shipments" ("SKU" text REFERENCES "Order Lines" ("SKU"), note text);
CREATE UNLOGGED TABLE scratch (k int PRIMARY KEY, v text) WITH (fillfactor = 70);
ALTER TABLE "Order Lines" CLUSTER ON "Order Lines_pkey";
ALTER TABLE "Shipments" REPLICA IDENTITY FULL;
CREATE SEQUENCE "Receipt Numbers" AS integer INCREMENT BY 5 MINVALUE 10 MAXVALUE 1000 CYCLE;
SELECT nextval('"Receipt Numbers"'), nextval('"Receipt Numbers"');
CREATE VIEW "Big Lines" WITH (security_barrier = true) AS
    SELECT * FROM "Order Lines" WHERE qty > 10 WITH LOCAL CHECK OPTION;
CREATE FUNCTION line_count() RETURNS bigint LANGUAGE sql
    BEGIN ATOMIC SELECT count(*) FROM "Order Lines"; END;
CREATE FUNCTION "Describe"(line "Big Lines") RETURNS text LANGUAGE sql
    AS $$ SELECT line."SKU" || ' x' || line.qty $$;
CREATE PROCEDURE add_line(sku text, n integer) LANGUAGE plpgsql
    AS $$ BEGIN INSERT INTO "Order Lines" ("SKU", qty) VALUES (sku, n); END $$;
COMMENT ON CONSTRAINT "qty is positive" ON "Order Lines" IS 'no empty lines';
COMMENT ON INDEX "Order Lines by SKU" IS 'one line per SKU';
COMMENT ON FUNCTION "Describe"("Big Lines") IS 'for receipts';
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {reader};
INSERT INTO "Order Lines" ("SKU", qty) VALUES ('a', 5), ('b', 20);
INSERT INTO "Shipments" VALUES ('b', 'soon');
INSERT INTO scratch VALUES (1, 'x');
"#;

/// Quoted names and the less common objects of [`UNUSUAL`] come through the copy intact and
/// bound to the copy's own objects.
#[tokio::test]
async fn copy_keeps_quoted_names_and_less_common_objects() {
    let name = "bg_unusual";
    let su = fleet().superuser().await;
    su.batch_execute("CREATE ROLE bg_unusual_reader NOLOGIN")
        .await
        .unwrap();
    let script = UNUSUAL.replace("{reader}", "bg_unusual_reader");
    let script = script.replace(
        "ALTER DEFAULT PRIVILEGES",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA bg_unusual",
    );
    let mut client = tenant(name, &script).await;

    let next = next_name(name);
    let tx = client.transaction().await.unwrap();
    let report = build_next(&tx, &target(name), &next).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (report.tables, report.rows, report.sequences),
        (3, 4, 2),
        "{report:?}"
    );
    assert_eq!(
        (report.views, report.functions, report.indexes),
        (1, 3, 3),
        "{report:?}"
    );

    let line = number(
        &su,
        &format!(
            "INSERT INTO {next}.\"Order Lines\" (\"SKU\", qty) VALUES ('c', 1) \
         RETURNING \"Line No\"::bigint"
        ),
    )
    .await;
    assert_eq!(line, 120, "the identity continues after 100 and 110");
    let receipt = number(
        &su,
        &format!("SELECT nextval('{next}.\"Receipt Numbers\"')"),
    )
    .await;
    assert_eq!(receipt, 20, "the sequence continues after 10 and 15");
    let counted = number(&su, &format!("SELECT {next}.line_count()")).await;
    assert_eq!(counted, 3, "the BEGIN ATOMIC body counts the copy's rows");

    let facts: String = su
        .query_one(
            &format!(
                "SELECT concat_ws(' | ',
                    (SELECT seqincrement || ',' || seqmax || ',' || seqcycle FROM pg_sequence
                     WHERE seqrelid = '{next}.\"Receipt Numbers\"'::regclass),
                    (SELECT relpersistence::text || array_to_string(reloptions, ',') FROM pg_class
                     WHERE oid = '{next}.scratch'::regclass),
                    (SELECT indisclustered::text FROM pg_index
                     WHERE indexrelid = '{next}.\"Order Lines_pkey\"'::regclass),
                    (SELECT relreplident::text FROM pg_class
                     WHERE oid = '{next}.\"Shipments\"'::regclass),
                    (SELECT array_to_string(reloptions, ',') FROM pg_class
                     WHERE oid = '{next}.\"Big Lines\"'::regclass),
                    (SELECT count(*) FROM pg_proc
                     WHERE pronamespace = '{next}'::regnamespace AND prokind = 'p'),
                    (SELECT count(*) FROM pg_default_acl
                     WHERE defaclnamespace = '{next}'::regnamespace))"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        facts,
        "5,1000,true | ufillfactor=70 | true | f | security_barrier=true,check_option=local | 1 | 1"
    );

    let comments: String = su
        .query_one(
            &format!(
                "SELECT concat_ws(' | ',
                    (SELECT obj_description(oid, 'pg_constraint') FROM pg_constraint
                     WHERE conname = 'qty is positive' AND connamespace = '{next}'::regnamespace),
                    obj_description('{next}.\"Order Lines by SKU\"'::regclass, 'pg_class'),
                    (SELECT obj_description(oid, 'pg_proc') FROM pg_proc
                     WHERE proname = 'Describe' AND pronamespace = '{next}'::regnamespace))"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(comments, "no empty lines | one line per SKU | for receipts");
}

/// `swap` makes the migrated copy live under the live name, keeps the old schema under a
/// retired name and records it in the catalog with its versions and expiry.
#[tokio::test]
async fn swap_makes_the_copy_live_and_retains_the_old_schema() {
    let name = "bg_swap";
    let mut client = tenant(name, FIXTURE).await;
    let next = next_name(name);

    let tx = client.transaction().await.unwrap();
    build_next(&tx, &target(name), &next).await.unwrap();
    let migration = format!(
        "SET LOCAL ROLE {name}; \
         ALTER TABLE {next}.customers ADD COLUMN tier text NOT NULL DEFAULT 'free'; RESET ROLE"
    );
    tx.batch_execute(&migration).await.unwrap();
    let retired = swap(&tx, name, name, &next, DAY, ("0001", "0002"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert!(
        !schema_exists(&client, &next).await,
        "the copy now has the live name"
    );
    assert!(schema_exists(&client, &retired).await);
    let tiers = number(
        &client,
        &format!("SELECT count(tier) FROM {name}.customers"),
    )
    .await;
    assert_eq!(tiers, 2, "the live schema is the migrated copy");
    let old = client
        .query(&format!("SELECT tier FROM {retired}.customers"), &[])
        .await
        .expect_err("the retired schema is the unmigrated one");
    assert_eq!(common::sqlstate(&old), "42703");

    let row = client
        .query_one(
            "SELECT tenant, reason, version_from, version_to, \
                    expires_at - now() BETWEEN interval '23 hours' AND interval '25 hours' \
             FROM pgtenant.retired_schemas WHERE schema_name = $1",
            &[&retired],
        )
        .await
        .unwrap();
    let recorded: (String, String, String, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        recorded,
        (
            name.into(),
            "blue-green".into(),
            "0001".into(),
            "0002".into(),
            true
        )
    );

    // The tenant's own role uses the new live schema, whose sequence continues.
    let tenant_role = tenant_connection(&client, name).await;
    let row = tenant_role
        .query_one(
            "INSERT INTO customers (name) VALUES ('Eve') RETURNING id, tier",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (4, "free".to_owned())
    );
}

/// Connects as the tenant's own role, in its schema, as the proxy's backends do.
async fn tenant_connection(catalog: &Client, name: &str) -> Client {
    let password: String = catalog
        .query_one(
            "SELECT role_password FROM pgtenant.role_secrets WHERE tenant = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    let url = fleet().cluster.url(name, &password, "postgres");
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.options(format!("-c search_path={name}"));
    common::connect_plain(config).await.unwrap()
}

/// `swap_back` restores the schema that was live before the swap, with the data written before
/// it, in milliseconds; the replaced schema is retained as a rollback, and a second swap back
/// rolls forward again.
#[tokio::test]
#[allow(
    clippy::print_stdout,
    reason = "the measured rollback time is shown with --nocapture"
)]
async fn swap_back_restores_the_original_quickly() {
    let name = "bg_back";
    let mut client = tenant(name, FIXTURE).await;
    let before = format!("INSERT INTO {name}.customers (name) VALUES ('written before the swap')");
    client.batch_execute(&before).await.unwrap();
    let retired = build_and_swap(&mut client, name, DAY).await;
    client
        .batch_execute(&format!(
            "DELETE FROM {name}.customers; ALTER TABLE {name}.customers ADD COLUMN tier text"
        ))
        .await
        .unwrap();

    let started = Instant::now();
    let tx = client.transaction().await.unwrap();
    let back = swap_back(&tx, name, name).await.unwrap();
    tx.commit().await.unwrap();
    let elapsed = started.elapsed();
    println!(
        "swap_back took {:.2} ms (renames {:.2} ms)",
        elapsed.as_secs_f64() * 1000.0,
        back.duration.as_secs_f64() * 1000.0
    );

    assert_eq!(back.restored, retired);
    assert_eq!(back.version.as_deref(), Some("0001"));
    let names = format!(
        "SELECT count(*) FROM {name}.customers WHERE name IN ('Ada', 'written before the swap')"
    );
    assert_eq!(
        number(&client, &names).await,
        2,
        "the original data is live again"
    );
    let row = client
        .query_one(
            "SELECT reason, version_from, version_to FROM pgtenant.retired_schemas \
             WHERE schema_name = $1",
            &[&back.retired],
        )
        .await
        .unwrap();
    let recorded: (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(recorded, ("rollback".into(), "0002".into(), "0001".into()));
    let gone = "SELECT count(*) FROM pgtenant.retired_schemas WHERE schema_name = $1";
    let restored_rows: i64 = client.query_one(gone, &[&retired]).await.unwrap().get(0);
    assert_eq!(
        restored_rows, 0,
        "the restored schema is no longer retained"
    );

    let tx = client.transaction().await.unwrap();
    let forward = swap_back(&tx, name, name).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(forward.restored, back.retired);
    assert_eq!(
        number(
            &client,
            &format!("SELECT count(tier) FROM {name}.customers")
        )
        .await,
        0
    );
}

/// A trigger, a materialized view, an enum type, a cross-schema foreign key and a view in
/// another schema are each refused with a one-line reason, and nothing is created.
#[tokio::test]
async fn uncopyable_objects_are_refused_and_nothing_is_created() {
    let name = "bg_refuse";
    let su = fleet().superuser().await;
    let mut client = tenant(
        name,
        "CREATE TABLE customers (id serial PRIMARY KEY, name text);
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch();
         CREATE MATERIALIZED VIEW customer_count AS SELECT count(*) FROM customers;
         CREATE TYPE mood AS ENUM ('happy', 'sad')",
    )
    .await;
    let elsewhere = "CREATE SCHEMA bg_refuse_other AUTHORIZATION bg_refuse;
         SET ROLE bg_refuse;
         CREATE TABLE bg_refuse_other.plans (id int PRIMARY KEY);
         ALTER TABLE bg_refuse.customers ADD COLUMN plan int REFERENCES bg_refuse_other.plans;
         CREATE VIEW bg_refuse_other.names AS SELECT name FROM bg_refuse.customers;
         RESET ROLE";
    su.batch_execute(elsewhere).await.unwrap();

    let next = next_name(name);
    let tx = client.transaction().await.unwrap();
    let error = build_next(&tx, &target(name), &next)
        .await
        .expect_err("refused");
    let BlueGreenError::NotCopyable {
        refusals: found, ..
    } = &error
    else {
        panic!("not a refusal: {error}");
    };
    let kinds: Vec<&str> = found.iter().map(|r| r.kind).collect();
    for kind in [
        "trigger",
        "materialized view",
        "enum type",
        "foreign key",
        "dependent object",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    assert!(!error.to_string().contains('\n'), "one line: {error}");
    assert!(!schema_exists(&tx, &next).await, "nothing was created");
    tx.rollback().await.unwrap();

    let listed = refusals(&client, name).await.unwrap();
    let first = listed
        .iter()
        .find(|r| r.kind == "trigger")
        .unwrap()
        .to_string();
    assert_eq!(
        first,
        "trigger bg_refuse.customers.touch: triggers are not copied"
    );
}

/// Row-level security, rules, partitioning, inheritance, domains, composite and range types,
/// aggregates, generated columns calling the schema's functions, collations, extended
/// statistics and publications are refused too.
#[tokio::test]
async fn every_other_uncopyable_kind_is_named() {
    let name = "bg_refuse_more";
    let client = tenant(
        name,
        "CREATE TABLE notes (id int PRIMARY KEY, body text);
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON notes USING (true);
         CREATE TABLE log (id int);
         CREATE RULE quiet AS ON INSERT TO log DO INSTEAD NOTHING;
         CREATE TABLE events (at date) PARTITION BY RANGE (at);
         CREATE TABLE parent (id int);
         CREATE TABLE child (extra int) INHERITS (parent);
         CREATE DOMAIN positive AS int CHECK (VALUE > 0);
         CREATE TYPE pair AS (a int, b int);
         CREATE TYPE span AS RANGE (subtype = int);
         CREATE AGGREGATE total (int) (sfunc = int4pl, stype = int);
         CREATE FUNCTION twice(int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT $1 * 2 $$;
         CREATE TABLE sizes (n int, doubled int GENERATED ALWAYS AS (twice(n)) STORED);
         CREATE COLLATION plain FROM \"C\";
         CREATE STATISTICS notes_stats ON id, body FROM notes",
    )
    .await;
    let su = fleet().superuser().await;
    su.batch_execute("CREATE PUBLICATION bg_refuse_more_pub FOR TABLE bg_refuse_more.sizes")
        .await
        .unwrap();

    let found = refusals(&client, name).await.unwrap();
    let kinds: Vec<&str> = found.iter().map(|r| r.kind).collect();
    for kind in [
        "row-level security policy",
        "row-level security",
        "rule",
        "partitioned table",
        "table inheritance",
        "domain",
        "composite type",
        "range type",
        "aggregate",
        "generated column",
        "collation",
        "statistics object",
        "dependent object",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {found:?}");
    }
}

/// `purge_expired` drops retained schemas past their retention and forgets them, keeps those
/// still retained, and keeps an expired one that an object elsewhere depends on.
#[tokio::test]
async fn purge_expired_drops_only_expired_schemas() {
    let name = "bg_purge";
    let mut client = tenant(name, FIXTURE).await;
    let expired = build_and_swap(&mut client, name, Duration::ZERO).await;
    let kept = build_and_swap(&mut client, name, DAY).await;

    let watcher =
        format!("CREATE VIEW public.bg_purge_watch AS SELECT id FROM {expired}.customers");
    client.batch_execute(&watcher).await.unwrap();
    let tx = client.transaction().await.unwrap();
    let purged = purge_expired(&tx).await.unwrap();
    tx.commit().await.unwrap();
    assert!(!purged.contains(&expired), "a view elsewhere still uses it");
    assert!(schema_exists(&client, &expired).await);

    client
        .batch_execute("DROP VIEW public.bg_purge_watch")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    let purged = purge_expired(&tx).await.unwrap();
    tx.commit().await.unwrap();
    assert!(purged.contains(&expired), "{purged:?}");
    assert!(!purged.contains(&kept), "{purged:?}");
    assert!(!schema_exists(&client, &expired).await);
    assert!(schema_exists(&client, &kept).await);

    let rows = "SELECT count(*) FROM pgtenant.retired_schemas WHERE schema_name = $1";
    let expired_rows: i64 = client.query_one(rows, &[&expired]).await.unwrap().get(0);
    let kept_rows: i64 = client.query_one(rows, &[&kept]).await.unwrap().get(0);
    assert_eq!((expired_rows, kept_rows), (0, 1));
}

/// For a 63-byte schema name, the copy, retired and set-aside names all fit in 63 bytes and
/// name the schemas PostgreSQL has (nothing was silently truncated).
#[tokio::test]
async fn names_fit_for_a_63_byte_schema() {
    let name = format!("bg_{}", "x".repeat(60));
    assert_eq!(name.len(), 63);
    let mut client = tenant(&name, "CREATE TABLE t (id serial PRIMARY KEY)").await;

    let retired = build_and_swap(&mut client, &name, DAY).await;
    assert!(retired.len() <= 63, "{retired}");
    assert!(schema_exists(&client, &retired).await, "{retired}");

    let tx = client.transaction().await.unwrap();
    let back = swap_back(&tx, &name, &name).await.unwrap();
    tx.commit().await.unwrap();
    assert!(back.retired.len() <= 63, "{}", back.retired);
    assert!(
        schema_exists(&client, &back.retired).await,
        "{}",
        back.retired
    );
    assert_ne!(retired, back.retired);
    assert!(next_name(&name).len() <= 63);
}

/// `discard_next` drops an unfinished copy, does nothing the second time, and refuses a
/// tenant's live schema even when its name looks like a copy's.
#[tokio::test]
async fn discard_next_drops_an_unfinished_copy_only() {
    let name = "bg_next_discard";
    let mut client = tenant(name, FIXTURE).await;
    let next = build(&mut client, name).await;

    for _ in 0..2 {
        let tx = client.transaction().await.unwrap();
        discard_next(&tx, &next).await.unwrap();
        tx.commit().await.unwrap();
        assert!(!schema_exists(&client, &next).await);
    }

    let tx = client.transaction().await.unwrap();
    let error = discard_next(&tx, name)
        .await
        .expect_err("the live schema is kept");
    assert!(matches!(error, BlueGreenError::Protected { .. }), "{error}");
    tx.rollback().await.unwrap();
    assert!(schema_exists(&client, name).await);
}
