//! Changing an existing tenant: suspend and resume, new credentials, tier, and bringing its
//! schema up to the migration files. Each command is one transaction that locks the tenant's
//! catalog row, makes the change, writes the audit row and commits; the catalog trigger then
//! tells every proxy, which applies the change within about a second. Resuming and pinning a
//! tier count against the budget, and are refused when the proxies would refuse the catalog
//! they leave (see [`super::fit`]).

use super::error::{ControlError, query};
use super::fit;
use super::migrate::{self, Applied, MigrationSet, Target};
use super::provision::{quote_ident, quote_literal};
use super::{audit_cli, demo::random_secret, lock_tenant, refuse_archived, tier_name};
use crate::config::{Config, Tier};
use crate::tenant::catalog::audit;

/// New credentials, shown once.
#[derive(Clone)]
pub struct Rotated {
    /// Client login name.
    pub user: String,
    /// The new client password.
    pub password: String,
    /// Whether the backend role's password changed too.
    pub role_rotated: bool,
}

impl std::fmt::Debug for Rotated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotated")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("role_rotated", &self.role_rotated)
            .finish()
    }
}

/// Suspends (`true`) or resumes (`false`) a tenant; returns whether its state changed.
pub async fn set_suspended(
    config: &Config,
    name: &str,
    suspended: bool,
) -> Result<bool, ControlError> {
    let mut client = super::open(config).await?;
    let tx = client.transaction().await.map_err(query("begin", name))?;
    let record = lock_tenant(&tx, name).await?;
    refuse_archived(&record)?;

    let state = if suspended { "suspended" } else { "active" };
    if record.state == state {
        return Ok(false);
    }
    let before = fit::before(&tx, config, name).await?;
    tx.execute(
        "UPDATE pgtenant.tenants SET state = $2, updated_at = now() WHERE name = $1",
        &[&name, &state],
    )
    .await
    .map_err(query("update the tenant state", name))?;
    let command = if suspended { "suspend" } else { "resume" };
    fit::after(&tx, config, before, format!("{command} {name}")).await?;

    let action = format!("tenant.{command}");
    audit_cli(&tx, &action, name, None).await?;
    tx.commit().await.map_err(query("commit", name))?;
    Ok(true)
}

/// Gives the client login a new password and, with `role`, the backend role too.
pub async fn rotate_credentials(
    config: &Config,
    name: &str,
    role: bool,
) -> Result<Rotated, ControlError> {
    let mut client = super::open(config).await?;
    let tx = client.transaction().await.map_err(query("begin", name))?;
    let record = lock_tenant(&tx, name).await?;
    refuse_archived(&record)?;

    let user = config.provisioning.user.clone();
    let password = random_secret(24);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    tx.execute(
        "INSERT INTO pgtenant.credentials (tenant, user_name, verifier) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant, user_name) DO UPDATE SET verifier = EXCLUDED.verifier, \
             created_at = now()",
        &[&name, &user, &verifier],
    )
    .await
    .map_err(query("store the new client login", name))?;

    if role {
        rotate_role_password(&tx, &record.role, name).await?;
    }
    let detail = format!("user={user} role={role}");
    audit_cli(&tx, "tenant.rotate_credentials", name, Some(detail)).await?;
    tx.commit().await.map_err(query("commit", name))?;
    Ok(Rotated {
        user,
        password,
        role_rotated: role,
    })
}

/// A new password for the backend role, in PostgreSQL and in the catalog, atomically.
async fn rotate_role_password(
    tx: &tokio_postgres::Transaction<'_>,
    role: &str,
    name: &str,
) -> Result<(), ControlError> {
    let password = random_secret(32);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let sql = format!(
        "ALTER ROLE {} PASSWORD {}",
        quote_ident(role),
        quote_literal(&verifier)
    );
    tx.batch_execute(&sql)
        .await
        .map_err(query("change the role password", name))?;

    tx.execute(
        "INSERT INTO pgtenant.role_secrets (tenant, role_password) VALUES ($1, $2) \
         ON CONFLICT (tenant) DO UPDATE SET role_password = EXCLUDED.role_password, \
             rotated_at = now()",
        &[&name, &password],
    )
    .await
    .map_err(query("store the role secret", name))?;
    Ok(())
}

/// Pins the tenant's tier, or with `None` leaves it to dynamic tiering.
pub async fn set_tier(config: &Config, name: &str, tier: Option<Tier>) -> Result<(), ControlError> {
    let mut client = super::open(config).await?;
    let tx = client.transaction().await.map_err(query("begin", name))?;
    let record = lock_tenant(&tx, name).await?;
    refuse_archived(&record)?;

    let value = tier.map(tier_name);
    let before = fit::before(&tx, config, name).await?;
    tx.execute(
        "UPDATE pgtenant.tenants SET tier = $2, updated_at = now() WHERE name = $1",
        &[&name, &value],
    )
    .await
    .map_err(query("update the tier", name))?;
    let label = value.unwrap_or("auto");
    fit::after(&tx, config, before, format!("set-tier {name} {label}")).await?;

    let detail = format!("tier={label}");
    audit_cli(&tx, "tenant.set_tier", name, Some(detail)).await?;
    tx.commit().await.map_err(query("commit", name))?;
    Ok(())
}

/// Applies the pending migrations of `[migrations] dir` to one tenant, all or none.
pub async fn migrate_tenant(config: &Config, name: &str) -> Result<Vec<Applied>, ControlError> {
    let set = MigrationSet::configured(config.migrations.dir.as_deref())?;
    let mut client = super::open(config).await?;
    let tx = client.transaction().await.map_err(query("begin", name))?;
    let record = lock_tenant(&tx, name).await?;
    refuse_archived(&record)?;

    let target = Target {
        tenant: &record.name,
        schema: &record.schema,
        role: &record.role,
    };
    let applied = migrate::apply_to(&tx, &set, &target, &audit::cli_actor()).await?;
    if applied.is_empty() {
        return Ok(applied);
    }

    let versions: Vec<&str> = applied.iter().map(|a| a.version.as_str()).collect();
    let detail = format!("applied={}", versions.join(","));
    audit_cli(&tx, "tenant.migrate", name, Some(detail)).await?;
    tx.commit().await.map_err(query("commit", name))?;
    Ok(applied)
}
