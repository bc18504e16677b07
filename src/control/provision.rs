//! Creating tenants in PostgreSQL: one login role and one schema per tenant.
//!
//! This module owns the SQL that sets a tenant up (its role, its schema and its right to
//! connect) and the small demo data set used by `pgtenant dev`, tests and benchmarks. Every
//! call runs in one transaction on a superuser connection, so a failure leaves nothing behind.
//! Utility statements take no bind parameters, so names and literals are quoted here.

use tokio_postgres::{Client, GenericClient};

/// The transaction-scoped advisory lock that serialises changes to database-wide privileges.
const PRIVILEGES_LOCK: i64 = 0x7067_7465_6e61_6e76;

/// What to create for one tenant.
#[derive(Clone, Copy)]
pub struct TenantSpec<'a> {
    /// The tenant's name, used in errors and logs.
    pub name: &'a str,
    /// The schema holding the tenant's tables.
    pub schema: &'a str,
    /// The login role the tenant's connections use; it owns the schema.
    pub role: &'a str,
    /// The role's password; only its SCRAM-SHA-256 verifier is sent to the server.
    pub role_password: &'a str,
    /// The database the schema lives in; must be the one `client` is connected to.
    pub database: &'a str,
    /// The role's `CONNECTION LIMIT` (-1 for none).
    pub connection_limit: i32,
}

impl std::fmt::Debug for TenantSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSpec")
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("role", &self.role)
            .field("role_password", &"<redacted>")
            .field("database", &self.database)
            .field("connection_limit", &self.connection_limit)
            .finish()
    }
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A statement failed; the transaction was rolled back.
    #[error("could not {step} for `{target}`: {}", describe(.source))]
    Postgres {
        /// What was being done, e.g. "create role".
        step: &'static str,
        /// The tenant or schema it was done for.
        target: String,
        /// The underlying error.
        source: tokio_postgres::Error,
    },

    /// The client is connected to another database than the tenant's.
    #[error("tenant `{tenant}` belongs in database `{expected}` but the client is on `{actual}`")]
    WrongDatabase {
        /// The tenant's name.
        tenant: String,
        /// The database named in the spec.
        expected: String,
        /// The database the client is connected to.
        actual: String,
    },

    /// The schema to load demo data into does not exist.
    #[error("schema `{schema}` does not exist")]
    SchemaNotFound {
        /// The missing schema.
        schema: String,
    },
}

impl ProvisionError {
    /// The SQLSTATE of the server error behind this one, if any.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Self::Postgres { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// Creates (or updates) a tenant's role and schema and lets only that role connect, in one
/// transaction. `client` must be a superuser connected to `spec.database`, and must not be used
/// by anything else during the call.
pub async fn create_tenant(client: &Client, spec: &TenantSpec<'_>) -> Result<(), ProvisionError> {
    let target = spec.name;
    run(client, "begin transaction", target, "BEGIN").await?;
    let outcome = create_tenant_steps(client, spec).await;
    finish(client, target, outcome).await?;

    tracing::info!(
        tenant = spec.name,
        schema = spec.schema,
        role = spec.role,
        "tenant provisioned"
    );
    Ok(())
}

/// Creates `customers` and `invoices` in `schema`, owned by the schema's owner, and fills them
/// with a few rows named after `tenant_label` unless `customers` already has rows.
pub async fn load_demo_data(
    client: &Client,
    schema: &str,
    tenant_label: &str,
) -> Result<(), ProvisionError> {
    run(client, "begin transaction", schema, "BEGIN").await?;
    let outcome = demo_data_steps(client, schema, tenant_label).await;
    finish(client, schema, outcome).await?;

    tracing::info!(schema, tenant_label, "demo data loaded");
    Ok(())
}

/// The statements of [`create_tenant`] without the transaction around them, for callers that
/// provision inside a transaction of their own (`tenant create`).
pub async fn create_tenant_steps(
    client: &impl GenericClient,
    spec: &TenantSpec<'_>,
) -> Result<(), ProvisionError> {
    check_database(client, spec).await?;

    let role = quote_ident(spec.role);
    let schema = quote_ident(spec.schema);
    let database = quote_ident(spec.database);
    let target = spec.name;

    let verb = if role_exists(client, spec).await? {
        "ALTER"
    } else {
        "CREATE"
    };
    let role_sql = format!("{verb} ROLE {role} WITH {}", role_options(spec));
    run(client, "create or alter role", target, &role_sql).await?;

    let schema_sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}; \
         ALTER SCHEMA {schema} OWNER TO {role}"
    );
    run(client, "create schema", target, &schema_sql).await?;

    // GRANT and REVOKE rewrite the database's (and `public`'s, and pg_notify's) catalog row
    // in place, and PostgreSQL fails a second transaction doing the same at once with
    // "tuple concurrently updated" instead of waiting, so creations queue here.
    let lock_sql = format!("SELECT pg_advisory_xact_lock({PRIVILEGES_LOCK})");
    run(client, "lock database privileges", target, &lock_sql).await?;

    // Notification channels are database-wide: pg_notify() could post to any of them with
    // a computed name, so only the superuser keeps it. (LISTEN and NOTIFY statements need
    // no privilege at all; the proxy keeps tenants to their own channels.)
    let access_sql = format!(
        "REVOKE ALL ON SCHEMA public FROM PUBLIC; \
         REVOKE CONNECT ON DATABASE {database} FROM PUBLIC; \
         REVOKE EXECUTE ON FUNCTION pg_catalog.pg_notify(text, text) FROM PUBLIC; \
         GRANT CONNECT ON DATABASE {database} TO {role}"
    );
    run(client, "set database privileges", target, &access_sql).await
}

/// The attributes every tenant role gets, with its limit and hashed password.
fn role_options(spec: &TenantSpec<'_>) -> String {
    let verifier = postgres_protocol::password::scram_sha_256(spec.role_password.as_bytes());
    format!(
        "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS \
         CONNECTION LIMIT {} PASSWORD {}",
        spec.connection_limit,
        quote_literal(&verifier)
    )
}

async fn check_database(
    client: &impl GenericClient,
    spec: &TenantSpec<'_>,
) -> Result<(), ProvisionError> {
    let row = client
        .query_one("SELECT current_database()", &[])
        .await
        .map_err(pg_error("read current database", spec.name))?;
    let actual: String = row.get(0);

    if actual == spec.database {
        return Ok(());
    }
    Err(ProvisionError::WrongDatabase {
        tenant: spec.name.to_owned(),
        expected: spec.database.to_owned(),
        actual,
    })
}

async fn role_exists(
    client: &impl GenericClient,
    spec: &TenantSpec<'_>,
) -> Result<bool, ProvisionError> {
    let rows = client
        .query(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&spec.role],
        )
        .await
        .map_err(pg_error("look up role", spec.name))?;
    Ok(!rows.is_empty())
}

async fn demo_data_steps(client: &Client, schema: &str, label: &str) -> Result<(), ProvisionError> {
    let owner = schema_owner(client, schema).await?;
    let set_role = format!("SET LOCAL ROLE {}", quote_ident(&owner));
    run(client, "switch to the schema owner", schema, &set_role).await?;

    let schema_name = quote_ident(schema);
    let tables_sql = format!(
        "CREATE TABLE IF NOT EXISTS {schema_name}.customers (
             id bigserial PRIMARY KEY,
             name text NOT NULL,
             plan text NOT NULL,
             created_at timestamptz DEFAULT now());
         CREATE TABLE IF NOT EXISTS {schema_name}.invoices (
             id bigserial PRIMARY KEY,
             customer_id bigint REFERENCES {schema_name}.customers,
             amount_cents bigint NOT NULL,
             issued_on date NOT NULL)"
    );
    run(client, "create demo tables", schema, &tables_sql).await?;

    if table_has_rows(client, schema, &schema_name).await? {
        return Ok(());
    }
    insert_demo_rows(client, schema, &schema_name, label).await
}

/// The name of the role owning `schema`.
async fn schema_owner(client: &Client, schema: &str) -> Result<String, ProvisionError> {
    let row = client
        .query_opt(
            "SELECT r.rolname FROM pg_catalog.pg_namespace n \
             JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .map_err(pg_error("look up schema owner", schema))?;

    match row {
        Some(row) => Ok(row.get(0)),
        None => Err(ProvisionError::SchemaNotFound {
            schema: schema.to_owned(),
        }),
    }
}

async fn table_has_rows(
    client: &Client,
    schema: &str,
    schema_name: &str,
) -> Result<bool, ProvisionError> {
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {schema_name}.customers)");
    let row = client
        .query_one(sql.as_str(), &[])
        .await
        .map_err(pg_error("count demo customers", schema))?;
    Ok(row.get(0))
}

/// Inserts three customers named after `label`, each with a few invoices.
async fn insert_demo_rows(
    client: &Client,
    schema: &str,
    schema_name: &str,
    label: &str,
) -> Result<(), ProvisionError> {
    let customers = [
        (
            format!("{label} Rocket Co"),
            "enterprise",
            [125_000_i64, 98_000],
        ),
        (format!("{label} Widgets Ltd"), "pro", [4_900, 4_900]),
        (format!("{label} Labs"), "free", [0, 1_500]),
    ];
    let customer_sql =
        format!("INSERT INTO {schema_name}.customers (name, plan) VALUES ($1, $2) RETURNING id");
    let invoice_sql = format!(
        "INSERT INTO {schema_name}.invoices (customer_id, amount_cents, issued_on) \
         VALUES ($1, $2, DATE '2024-01-01' + $3::int)"
    );

    for (index, (name, plan, amounts)) in customers.iter().enumerate() {
        let row = client
            .query_one(customer_sql.as_str(), &[name, plan])
            .await
            .map_err(pg_error("insert demo customer", schema))?;
        let customer_id: i64 = row.get(0);

        for (month, amount) in amounts.iter().enumerate() {
            let day = i32::try_from(index * 7 + month * 30).unwrap_or(0);
            client
                .execute(invoice_sql.as_str(), &[&customer_id, amount, &day])
                .await
                .map_err(pg_error("insert demo invoice", schema))?;
        }
    }
    Ok(())
}

/// Commits after success; rolls back (best effort) and returns the error after a failure.
async fn finish(
    client: &Client,
    target: &str,
    outcome: Result<(), ProvisionError>,
) -> Result<(), ProvisionError> {
    if let Err(error) = outcome {
        if let Err(rollback) = client.batch_execute("ROLLBACK").await {
            tracing::warn!(target, error = %describe(&rollback), "rollback failed");
        }
        return Err(error);
    }
    run(client, "commit", target, "COMMIT").await
}

/// Runs one or more statements with no parameters.
async fn run(
    client: &impl GenericClient,
    step: &'static str,
    target: &str,
    sql: &str,
) -> Result<(), ProvisionError> {
    client
        .batch_execute(sql)
        .await
        .map_err(pg_error(step, target))
}

fn pg_error(
    step: &'static str,
    target: &str,
) -> impl FnOnce(tokio_postgres::Error) -> ProvisionError {
    let target = target.to_owned();
    move |source| ProvisionError::Postgres {
        step,
        target,
        source,
    }
}

/// Quotes an SQL identifier: wraps it in double quotes, doubling any inside.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal, independent of `standard_conforming_strings`.
pub(crate) fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if doubled.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

/// A one-line description of a driver error, including the server's message if any.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{Cluster, ClusterOptions};
    use tokio_postgres::error::SqlState;

    fn spec<'a>(name: &'a str, password: &'a str) -> TenantSpec<'a> {
        TenantSpec {
            name,
            schema: name,
            role: name,
            role_password: password,
            database: "postgres",
            connection_limit: 10,
        }
    }

    async fn connect(cluster: &Cluster, role: &str, password: &str) -> Client {
        let url = cluster.url(role, password, "postgres");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("tenant role connects");
        tokio::spawn(connection);
        client
    }

    #[tokio::test]
    async fn tenant_reads_own_schema_only() {
        let cluster = Cluster::start(ClusterOptions::default()).expect("cluster starts");
        let admin = cluster
            .connect_superuser()
            .await
            .expect("superuser connects");

        for (name, password, label) in [("a", "pw-a'\\x", "Acme"), ("b", "pw-b", "Globex")] {
            create_tenant(&admin, &spec(name, password))
                .await
                .expect("tenant created");
            create_tenant(&admin, &spec(name, password))
                .await
                .expect("second run is fine");
            load_demo_data(&admin, name, label)
                .await
                .expect("demo data loads");
            load_demo_data(&admin, name, label)
                .await
                .expect("second load is fine");
        }

        let tenant_a = connect(&cluster, "a", "pw-a'\\x").await;
        let rows = tenant_a
            .query("SELECT name FROM a.customers ORDER BY id", &[])
            .await
            .expect("a reads its customers");
        let names: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(names, ["Acme Rocket Co", "Acme Widgets Ltd", "Acme Labs"]);

        let error = tenant_a
            .query("SELECT * FROM b.customers", &[])
            .await
            .expect_err("a must not read b");
        assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));

        let mut elsewhere = spec("c", "pw-c");
        elsewhere.database = "elsewhere";
        let error = create_tenant(&admin, &elsewhere)
            .await
            .expect_err("must refuse");
        assert!(
            matches!(error, ProvisionError::WrongDatabase { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn concurrent_creations_do_not_collide() {
        let cluster = Cluster::start(ClusterOptions::default()).expect("cluster starts");
        let mut admins = Vec::new();
        for _ in 0..8 {
            admins.push(
                cluster
                    .connect_superuser()
                    .await
                    .expect("superuser connects"),
            );
        }

        let names: Vec<String> = (0..admins.len()).map(|i| format!("par{i}")).collect();
        let creations = admins
            .iter()
            .zip(&names)
            .map(|(admin, name)| async move { create_tenant(admin, &spec(name, "pw")).await });
        let outcomes = futures_util::future::join_all(creations).await;

        for (name, outcome) in names.iter().zip(outcomes) {
            outcome.unwrap_or_else(|error| panic!("{name}: {error}"));
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
