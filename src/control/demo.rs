//! Demo tenants for `pgtenant dev`, the integration tests and the benchmarks: each gets a
//! role with a random password, a schema with a little data, and a client login `app` with a
//! random password stored only as a SCRAM verifier.

use rand::RngExt;
use rand::distr::Alphanumeric;

use super::provision::{self, ProvisionError, TenantSpec};
use crate::embedded::{Cluster, EmbeddedError};

/// A provisioned demo tenant and the secrets needed to use it.
#[derive(Debug, Clone)]
pub struct DemoTenant {
    /// Tenant, schema and role name.
    pub name: String,
    /// Password of the backend role.
    pub role_password: String,
    /// Client login name.
    pub user: String,
    /// Client login password (shown once, never stored).
    pub user_password: String,
    /// SCRAM verifier of the client password.
    pub user_verifier: String,
}

/// Failure while creating demo tenants.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded cluster failed.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// Provisioning failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// A random alphanumeric secret.
pub fn random_secret(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Creates `names` as tenants in the cluster's `postgres` database, with demo data.
pub async fn provision(cluster: &Cluster, names: &[&str]) -> Result<Vec<DemoTenant>, DemoError> {
    let client = cluster.connect_superuser().await?;
    let mut tenants = Vec::new();

    for name in names {
        let tenant = new_tenant(name);
        let spec = TenantSpec {
            name,
            schema: name,
            role: name,
            role_password: &tenant.role_password,
            database: "postgres",
            connection_limit: 50,
        };
        provision::create_tenant(&client, &spec).await?;
        provision::load_demo_data(&client, name, &capitalize(name)).await?;
        tenants.push(tenant);
    }
    Ok(tenants)
}

fn new_tenant(name: &str) -> DemoTenant {
    let user_password = random_secret(16);
    DemoTenant {
        name: (*name).to_owned(),
        role_password: random_secret(24),
        user: "app".into(),
        user_verifier: postgres_protocol::password::scram_sha_256(user_password.as_bytes()),
        user_password,
    }
}

fn capitalize(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The `[[tenants]]` sections for these tenants, as TOML text.
pub fn tenants_toml(tenants: &[DemoTenant], pool_size: usize, pool_mode: &str) -> String {
    let mut out = String::new();
    for t in tenants {
        out.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\nrole_password = \"{rp}\"\npool_size = {pool_size}\n\
             pool_mode = \"{pool_mode}\"\n\n\
             [[tenants.users]]\nname = \"{user}\"\nverifier = \"{v}\"\n\n",
            name = t.name,
            rp = t.role_password,
            user = t.user,
            v = t.user_verifier,
        ));
    }
    out
}
