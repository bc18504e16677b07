//! `pgtenant tenant ...`: the control plane's commands. Each reads the configuration, needs
//! its `[catalog]`, makes one change in one transaction and prints the result for people.
//! Passwords are printed once, when made, and never again.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};

use crate::config::{Config, PoolMode, Tier};
use crate::control::create::{self, CreateRequest, Created};
use crate::control::inspect::{self, TenantDetails, TenantRow};
use crate::control::remove::{self, Removed};
use crate::control::{ControlError, manage};

/// Options of `pgtenant tenant`.
#[derive(Debug, Args)]
pub struct TenantArgs {
    /// Configuration file; it must have a [catalog] section.
    #[arg(long, short, env = "PGTENANT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: TenantCommand,
}

/// A tier to pin on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TierArg {
    /// The busiest tenants' pool size.
    Hot,
    /// Most tenants' pool size.
    Warm,
    /// The least busy tenants' pool size.
    Cold,
    /// No pinned tier: dynamic tiering decides.
    Auto,
}

impl TierArg {
    fn tier(self) -> Option<Tier> {
        match self {
            Self::Hot => Some(Tier::Hot),
            Self::Warm => Some(Tier::Warm),
            Self::Cold => Some(Tier::Cold),
            Self::Auto => None,
        }
    }
}

/// A pool mode on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PoolModeArg {
    /// A backend per transaction.
    Transaction,
    /// A backend per client session.
    Session,
}

impl From<PoolModeArg> for PoolMode {
    fn from(mode: PoolModeArg) -> Self {
        match mode {
            PoolModeArg::Transaction => Self::Transaction,
            PoolModeArg::Session => Self::Session,
        }
    }
}

/// Tenant subcommands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant: role, schema, migrations, catalog rows and a client login.
    Create {
        /// Tenant name (also its schema and role).
        name: String,
        /// Load the [provisioning] demo_data SQL into the new schema.
        #[arg(long)]
        demo_data: bool,
        /// Pin a tier; `auto` (the default) leaves it to dynamic tiering.
        #[arg(long, value_enum, default_value = "auto")]
        tier: TierArg,
        /// Pool mode.
        #[arg(long, value_enum, default_value = "transaction")]
        pool_mode: PoolModeArg,
        /// Backend connections, overriding the tier's size.
        #[arg(long)]
        pool_size: Option<usize>,
    },
    /// List tenants.
    List,
    /// Show one tenant: settings, logins, migrations and recent audit rows.
    Show {
        /// Tenant name.
        name: String,
    },
    /// Refuse new logins and end sessions after their transaction.
    Suspend {
        /// Tenant name.
        name: String,
    },
    /// Serve a suspended tenant again.
    Resume {
        /// Tenant name.
        name: String,
    },
    /// Give the client login a new password (printed once).
    RotateCredentials {
        /// Tenant name.
        name: String,
        /// Also give the backend role a new password.
        #[arg(long)]
        role: bool,
    },
    /// Pin the tenant's tier, or `auto` for dynamic tiering.
    SetTier {
        /// Tenant name.
        name: String,
        /// hot, warm, cold or auto.
        #[arg(value_enum)]
        tier: TierArg,
    },
    /// Apply pending migrations from [migrations] dir to one tenant.
    Migrate {
        /// Tenant name.
        name: String,
    },
    /// Drop the tenant's schema, role and catalog rows (or archive them).
    Drop {
        /// Tenant name.
        name: String,
        /// Confirm: nothing is dropped without it.
        #[arg(long)]
        yes: bool,
        /// Keep the data: rename the schema aside, lock the role, mark the tenant archived.
        #[arg(long)]
        archive: bool,
    },
}

/// Runs a tenant subcommand.
pub fn run(args: TenantArgs) -> Result<(), String> {
    let config = load_config(args.config.as_deref())?;
    super::runtime(1)?.block_on(dispatch(&config, args.command))
}

/// Reads `--config`, which must have a `[catalog]` section.
pub fn load_config(path: Option<&Path>) -> Result<Config, String> {
    let path = path.ok_or("tenant commands need --config FILE (or PGTENANT_CONFIG)")?;
    let config = Config::from_file(path).map_err(|e| e.to_string())?;
    if config.catalog.is_none() {
        return Err(format!(
            "{}: tenant commands need a [catalog] section (tenants live in the catalog)",
            path.display()
        ));
    }
    Ok(config)
}

async fn dispatch(config: &Config, command: TenantCommand) -> Result<(), String> {
    run_command(config, command)
        .await
        .map_err(|e| e.to_string())
}

async fn run_command(config: &Config, command: TenantCommand) -> Result<(), ControlError> {
    match command {
        TenantCommand::Create {
            name,
            demo_data,
            tier,
            pool_mode,
            pool_size,
        } => {
            let request = CreateRequest {
                name,
                tier: tier.tier(),
                pool_mode: pool_mode.into(),
                pool_size,
                demo_data,
            };
            let created = create::create(config, &request).await?;
            print_created(&created, demo_data);
        }
        TenantCommand::List => {
            print_list(&inspect::list(&crate::control::open(config).await?).await?)
        }
        TenantCommand::Show { name } => {
            let client = crate::control::open(config).await?;
            print_details(&inspect::show(&client, &name).await?);
        }
        TenantCommand::Suspend { name } => suspend(config, &name, true).await?,
        TenantCommand::Resume { name } => suspend(config, &name, false).await?,
        TenantCommand::RotateCredentials { name, role } => rotate(config, &name, role).await?,
        TenantCommand::SetTier { name, tier } => {
            manage::set_tier(config, &name, tier.tier()).await?;
            println!("tenant {name}: tier {}", tier_label(tier.tier()));
        }
        TenantCommand::Migrate { name } => migrate(config, &name).await?,
        TenantCommand::Drop { name, yes, archive } => {
            drop_tenant(config, &name, yes, archive).await?
        }
    }
    Ok(())
}

fn tier_label(tier: Option<Tier>) -> &'static str {
    tier.map_or("auto (dynamic tiering)", crate::control::tier_name)
}

/// Prints the URLs as `pgtenant dev` does, then the step timings.
fn print_created(created: &Created, demo_data: bool) {
    let newest = created
        .migrations
        .last()
        .map(|m| format!(", newest {}_{}", m.version, m.name))
        .unwrap_or_default();
    println!(
        "tenant {} created ({} migrations applied{newest}{}).\n",
        created.name,
        created.migrations.len(),
        if demo_data { "; demo data loaded" } else { "" }
    );
    print_urls(created);
    println!(
        "The password is shown only now and stored nowhere (only its SCRAM verifier); \
         `pgtenant tenant rotate-credentials {}` makes a new one.",
        created.name
    );
    println!("timings (ms): {}", timings_line(&created.steps));
}

/// The `tenant X:` block of URLs, in the format `pgtenant dev`'s banner uses.
pub fn print_urls(created: &Created) {
    let url = created.database_url();
    println!("tenant {}:", created.name);
    println!("  DATABASE_URL={url}");
    println!("  psql \"{url}\"");
    println!("  prisma: {}\n", created.prisma_url());
}

fn timings_line(steps: &[(&'static str, std::time::Duration)]) -> String {
    let parts: Vec<String> = steps
        .iter()
        .map(|(name, d)| format!("{name}={:.2}", d.as_secs_f64() * 1000.0))
        .collect();
    parts.join(" ")
}

fn print_list(rows: &[TenantRow]) {
    let header = [
        "NAME",
        "SCHEMA",
        "TIER",
        "POOL MODE",
        "STATE",
        "CREATED (UTC)",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.as_str(),
                r.schema.as_str(),
                r.tier.as_str(),
                r.pool_mode.as_str(),
                r.state.as_str(),
                r.created.as_str(),
            ]
        })
        .collect();

    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    print_row(&header, &widths);
    for row in &cells {
        print_row(row, &widths);
    }
}

fn print_row(cells: &[&str; 6], widths: &[usize; 6]) {
    let parts: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(cell, width)| format!("{cell:<width$}"))
        .collect();
    println!("{}", parts.join("  ").trim_end());
}

fn print_details(d: &TenantDetails) {
    let unset = |v: Option<String>| v.unwrap_or_else(|| "default".into());
    println!("tenant:        {}", d.row.name);
    println!("state:         {}", d.row.state);
    println!("schema:        {}", d.row.schema);
    println!("role:          {}", d.role);
    println!("tier:          {}", d.row.tier);
    println!("pool mode:     {}", d.row.pool_mode);
    println!(
        "pool size:     {}",
        unset(d.pool_size.map(|n| n.to_string()))
    );
    println!(
        "rate limit:    {}",
        unset(d.transactions_per_second.map(|r| format!("{r} tx/s")))
    );
    println!("burst:         {}", unset(d.burst.map(|n| n.to_string())));
    println!(
        "max clients:   {}",
        unset(d.max_client_connections.map(|n| n.to_string()))
    );
    println!("created (UTC): {}", d.row.created);
    println!("updated (UTC): {}", d.updated);

    println!("\nlogins:");
    for (user, created) in &d.logins {
        println!("  {user} (since {created})");
    }
    println!("\nmigrations:");
    for m in &d.migrations {
        let ms = m
            .duration_ms
            .map_or(String::new(), |ms| format!(", {ms:.1} ms"));
        let at = m.finished.as_deref().unwrap_or("-");
        println!("  {}_{}  {} {at}{ms}", m.version, m.name, m.status);
    }
    println!("\nrecent audit:");
    for a in &d.audit {
        let detail = a.detail.as_deref().unwrap_or("");
        println!("  {}  {}  {}  {detail}", a.at, a.actor, a.action);
    }
}

async fn suspend(config: &Config, name: &str, suspended: bool) -> Result<(), ControlError> {
    let changed = manage::set_suspended(config, name, suspended).await?;
    let state = if suspended { "suspended" } else { "active" };
    if !changed {
        println!("tenant {name} was already {state}");
    } else if suspended {
        println!(
            "tenant {name} suspended: new logins are refused (SQLSTATE 55000); open sessions \
             end after their current transaction"
        );
    } else {
        println!("tenant {name} resumed: logins are accepted again");
    }
    Ok(())
}

async fn rotate(config: &Config, name: &str, role: bool) -> Result<(), ControlError> {
    let rotated = manage::rotate_credentials(config, name, role).await?;
    let url = format!(
        "postgres://{}:{}@{}/{name}?sslmode=require",
        rotated.user, rotated.password, config.provisioning.public_address
    );
    println!("tenant {name}: new password for login {}", rotated.user);
    println!("  DATABASE_URL={url}");
    println!("  psql \"{url}\"");
    println!("  prisma: {url}&schema={name}");
    if rotated.role_rotated {
        println!("The backend role's password was changed too (proxies pick it up on reload).");
    }
    println!("The old password no longer works; the new one is shown only now.");
    Ok(())
}

async fn migrate(config: &Config, name: &str) -> Result<(), ControlError> {
    let applied = manage::migrate_tenant(config, name).await?;
    if applied.is_empty() {
        println!("tenant {name}: up to date");
    }
    for m in &applied {
        let ms = m.duration.as_secs_f64() * 1000.0;
        println!(
            "tenant {name}: applied {}_{} ({ms:.1} ms)",
            m.version, m.name
        );
    }
    Ok(())
}

async fn drop_tenant(
    config: &Config,
    name: &str,
    yes: bool,
    archive: bool,
) -> Result<(), ControlError> {
    if !yes {
        return Err(ControlError::NotConfirmed(name.to_owned()));
    }
    match remove::remove(config, name, archive).await? {
        Removed::Dropped => {
            println!("tenant {name} dropped: schema, role and catalog rows removed")
        }
        Removed::Archived { schema } => println!(
            "tenant {name} archived: data kept in schema {schema}, role can no longer log in"
        ),
    }
    Ok(())
}
