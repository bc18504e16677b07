//! `tenant create`: a new tenant, ready for logins, in one transaction.
//!
//! Order: check the name and read the migration and demo data files (nothing touched yet);
//! install the catalog; then, in one transaction under an advisory lock that serialises
//! creations, check the name is free, create the role and schema, write the catalog rows
//! (refused, for a pinned tier or `pool_size`, if the proxies' budget check would refuse the
//! catalog they leave; see [`super::fit`]), apply every migration as the tenant, load demo
//! data, store the client login's verifier and the audit row, and commit. PostgreSQL runs
//! `CREATE ROLE` and `CREATE SCHEMA` inside a transaction, so any failure, or a crash, leaves
//! no role, schema or row behind, and running the command again starts from scratch. The
//! commit fires the catalog trigger, and every proxy serves the tenant within about a second.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::Transaction;

use super::demo::random_secret;
use super::error::{ControlError, query};
use super::fit;
use super::migrate::{self, Applied, MigrationSet, Target};
use super::names;
use super::provision::{self, TenantSpec, quote_ident};
use crate::config::{Config, PoolMode, Tier};
use crate::tenant::catalog::audit::{self, AuditEntry};

/// Key of the advisory lock that serialises tenant creation (and the database-wide grants
/// each creation makes).
const CREATE_LOCK: i64 = 0x7067_7465_6e61_6e75;

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Tenant, schema and role name.
    pub name: String,
    /// Pinned tier; `None` lets dynamic tiering decide.
    pub tier: Option<Tier>,
    /// Pool mode.
    pub pool_mode: PoolMode,
    /// Pool size overriding the tier's.
    pub pool_size: Option<usize>,
    /// Load `[provisioning] demo_data` into the new schema.
    pub demo_data: bool,
}

/// A created tenant and the one copy of its client password.
#[derive(Clone)]
pub struct Created {
    /// Tenant name.
    pub name: String,
    /// Client login name.
    pub user: String,
    /// Client password; stored nowhere, only its SCRAM verifier is.
    pub password: String,
    /// `host:port` clients use.
    pub public_address: String,
    /// Migrations applied.
    pub migrations: Vec<Applied>,
    /// How long each step took, in order, ending with `total`.
    pub steps: Vec<(&'static str, Duration)>,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("steps", &self.steps)
            .finish()
    }
}

impl Created {
    /// The libpq URL for the client login.
    pub fn database_url(&self) -> String {
        format!(
            "postgres://{}:{}@{}/{}?sslmode=require",
            self.user, self.password, self.public_address, self.name
        )
    }

    /// The same URL with Prisma's `schema` parameter.
    pub fn prisma_url(&self) -> String {
        format!("{}&schema={}", self.database_url(), self.name)
    }
}

/// Step durations in the order they ran.
#[derive(Debug, Default)]
struct Steps(Vec<(&'static str, Duration)>);

impl Steps {
    /// Records `name` as having run since `started`; returns now, the next step's start.
    fn done(&mut self, name: &'static str, started: Instant) -> Instant {
        let now = Instant::now();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += now - started,
            None => self.0.push((name, now - started)),
        }
        now
    }
}

/// Files read before anything is changed.
struct Inputs {
    migrations: MigrationSet,
    demo_data: Option<(PathBuf, String)>,
}

/// Secrets made for the tenant.
struct Secrets {
    role_password: String,
    client_password: String,
}

/// Creates the tenant `request` describes; see the module documentation for the steps.
pub async fn create(config: &Config, request: &CreateRequest) -> Result<Created, ControlError> {
    let started = Instant::now();
    let mut steps = Steps::default();

    names::check_name(&request.name)?;
    let inputs = read_inputs(config, request)?;
    let mut at = steps.done("validate", started);

    let mut client = super::open(config).await?;
    at = steps.done("connect", at);

    let tx = client
        .transaction()
        .await
        .map_err(query("begin a transaction", &request.name))?;
    let secrets = Secrets {
        role_password: random_secret(32),
        client_password: random_secret(24),
    };
    let migrations = run_steps(&tx, config, request, &inputs, &secrets, &mut steps, at).await?;

    at = Instant::now();
    tx.commit().await.map_err(query("commit", &request.name))?;
    steps.done("commit", at);
    steps.0.push(("total", started.elapsed()));

    tracing::info!(tenant = request.name, "tenant created");
    Ok(Created {
        name: request.name.clone(),
        user: config.provisioning.user.clone(),
        password: secrets.client_password,
        public_address: config.provisioning.public_address.clone(),
        migrations,
        steps: steps.0,
    })
}

fn read_inputs(config: &Config, request: &CreateRequest) -> Result<Inputs, ControlError> {
    let migrations = MigrationSet::configured(config.migrations.dir.as_deref())?;
    if !request.demo_data {
        return Ok(Inputs {
            migrations,
            demo_data: None,
        });
    }

    let path = config
        .provisioning
        .demo_data
        .clone()
        .ok_or(ControlError::NoDemoData)?;
    let sql = std::fs::read_to_string(&path).map_err(|source| ControlError::Read {
        path: path.clone(),
        source,
    })?;
    crate::control::migrate::source::refuse_transaction_control(&path, &sql)?;
    Ok(Inputs {
        migrations,
        demo_data: Some((path, sql)),
    })
}

/// Everything between BEGIN and COMMIT; returns the migrations applied.
async fn run_steps(
    tx: &Transaction<'_>,
    config: &Config,
    request: &CreateRequest,
    inputs: &Inputs,
    secrets: &Secrets,
    steps: &mut Steps,
    mut at: Instant,
) -> Result<Vec<Applied>, ControlError> {
    let name = request.name.as_str();
    let target = Target {
        tenant: name,
        schema: name,
        role: name,
    };

    lock_and_check(tx, name).await?;
    at = steps.done("validate", at);

    role_and_schema(tx, config, name, &secrets.role_password).await?;
    at = steps.done("role+schema", at);

    catalog_rows(tx, config, request, &secrets.role_password).await?;
    at = steps.done("catalog_rows", at);

    let actor = audit::cli_actor();
    let applied = migrate::apply_to(tx, &inputs.migrations, &target, &actor).await?;
    at = steps.done("migrations", at);

    if let Some((path, sql)) = &inputs.demo_data {
        load_demo_data(tx, &target, path, sql).await?;
    }
    at = steps.done("demo_data", at);

    credentials(tx, config, name, &secrets.client_password).await?;
    record_audit(tx, request, &actor, applied.len()).await?;
    steps.done("credentials", at);
    Ok(applied)
}

async fn lock_and_check(tx: &Transaction<'_>, name: &str) -> Result<(), ControlError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
        .await
        .map_err(query("lock tenant creation", name))?;
    names::check_free(tx, name).await?;
    Ok(())
}

async fn role_and_schema(
    tx: &Transaction<'_>,
    config: &Config,
    name: &str,
    role_password: &str,
) -> Result<(), ControlError> {
    let spec = TenantSpec {
        name,
        schema: name,
        role: name,
        role_password,
        database: &config.backend.database,
        connection_limit: config.provisioning.connection_limit,
    };
    provision::create_tenant_steps(tx, &spec).await?;
    join_role_unless_superuser(tx, name).await
}

/// `SET ROLE` to the tenant (for migrations and demo data) needs membership in its role;
/// a superuser has it implicitly, any other pgtenant role is granted it.
async fn join_role_unless_superuser(tx: &Transaction<'_>, role: &str) -> Result<(), ControlError> {
    let row = tx
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(query("check whether pgtenant's role is a superuser", role))?;
    if row.get::<_, bool>(0) {
        return Ok(());
    }

    let sql = format!("GRANT {} TO CURRENT_USER", quote_ident(role));
    tx.batch_execute(&sql)
        .await
        .map_err(query("grant the tenant role to pgtenant's role", role))
}

/// The tenant's catalog rows; a pinned tier or pool size is checked against the budget.
async fn catalog_rows(
    tx: &Transaction<'_>,
    config: &Config,
    request: &CreateRequest,
    role_password: &str,
) -> Result<(), ControlError> {
    let name = request.name.as_str();
    let tier = request.tier.map(super::tier_name);
    let pool_size = request
        .pool_size
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    let pinned = request.tier.is_some() || request.pool_size.is_some();
    let before = if pinned {
        Some(fit::before(tx, config, name).await?)
    } else {
        None
    };

    tx.execute(
        "INSERT INTO pgtenant.tenants (name, schema_name, role_name, tier, pool_mode, pool_size) \
         VALUES ($1, $1, $1, $2, $3, $4)",
        &[
            &name,
            &tier,
            &super::pool_mode_name(request.pool_mode),
            &pool_size,
        ],
    )
    .await
    .map_err(query("insert the tenant row", name))?;
    if let Some(before) = before {
        fit::after(tx, config, before, create_change(request)).await?;
    }

    tx.execute(
        "INSERT INTO pgtenant.role_secrets (tenant, role_password) VALUES ($1, $2)",
        &[&name, &role_password],
    )
    .await
    .map_err(query("store the role secret", name))?;
    Ok(())
}

/// The command as the budget error names it, e.g. `create big --pool-size 40`.
fn create_change(request: &CreateRequest) -> String {
    let mut change = format!("create {}", request.name);
    if let Some(tier) = request.tier {
        change.push_str(&format!(" --tier {}", super::tier_name(tier)));
    }
    if let Some(size) = request.pool_size {
        change.push_str(&format!(" --pool-size {size}"));
    }
    change
}

async fn load_demo_data(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    path: &std::path::Path,
    sql: &str,
) -> Result<(), ControlError> {
    let failed = |source| ControlError::DemoData {
        tenant: target.tenant.to_owned(),
        path: path.to_owned(),
        source,
    };
    migrate::become_tenant(tx, target).await.map_err(failed)?;
    tx.batch_execute(sql).await.map_err(failed)?;
    migrate::become_self(tx).await.map_err(failed)
}

async fn credentials(
    tx: &Transaction<'_>,
    config: &Config,
    name: &str,
    password: &str,
) -> Result<(), ControlError> {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    tx.execute(
        "INSERT INTO pgtenant.credentials (tenant, user_name, verifier) VALUES ($1, $2, $3)",
        &[&name, &config.provisioning.user, &verifier],
    )
    .await
    .map_err(query("store the client login", name))?;
    Ok(())
}

async fn record_audit(
    tx: &Transaction<'_>,
    request: &CreateRequest,
    actor: &str,
    migrations: usize,
) -> Result<(), ControlError> {
    let detail = format!(
        "tier={} pool_mode={} migrations={migrations} demo_data={}",
        request.tier.map_or("auto", super::tier_name),
        super::pool_mode_name(request.pool_mode),
        request.demo_data
    );
    let entry = AuditEntry {
        actor: actor.to_owned(),
        action: "tenant.create".into(),
        tenant: Some(request.name.clone()),
        client_addr: None,
        detail: Some(detail),
    };
    audit::record(tx, &entry).await?;
    Ok(())
}
