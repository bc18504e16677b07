//! `pgtenant dev`: the embedded default. Starts a throwaway PostgreSQL, writes a
//! self-signed certificate, the demo migrations and demo data, and a configuration file whose
//! tenants live in the catalog; creates the demo tenants through the same code path as
//! `pgtenant tenant create --demo-data`, runs the proxy (which follows the catalog, so tenants
//! created later log in at once) and prints how to connect. Ctrl-C stops the proxy and the
//! server and removes their files.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::{Config, PoolMode};
use crate::control::create::{self, CreateRequest, Created};
use crate::embedded::{Cluster, ClusterOptions};

/// The demo migrations, written into the working directory.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_customers.sql",
        include_str!("../../config/migrations/0001_customers.sql"),
    ),
    (
        "0002_invoices.sql",
        include_str!("../../config/migrations/0002_invoices.sql"),
    ),
];

/// The demo data loaded into each demo tenant.
const DEMO_DATA: &str = include_str!("../../config/demo_data.sql");

/// Options of `pgtenant dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address for the proxy.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub listen: String,
    /// Demo tenants to create.
    #[arg(long, value_delimiter = ',', default_value = "acme,globex")]
    pub tenants: Vec<String>,
    /// Backend connections per tenant.
    #[arg(long, default_value_t = 5)]
    pub pool_size: usize,
    /// Pool mode for every demo tenant (`transaction` or `session`).
    #[arg(long, default_value = "transaction")]
    pub pool_mode: String,
    /// Threads that run sessions; `0` means one per CPU.
    #[arg(long, default_value_t = 1)]
    pub worker_threads: usize,
}

/// Runs the embedded default until Ctrl-C.
pub fn run(args: DevArgs) -> Result<(), String> {
    for name in &args.tenants {
        crate::control::names::check_name(name).map_err(|e| format!("--tenants: {e}"))?;
    }
    pool_mode(&args.pool_mode)?;
    super::runtime(args.worker_threads)?.block_on(dev(args))
}

async fn dev(args: DevArgs) -> Result<(), String> {
    let cluster = Cluster::start(ClusterOptions::default()).map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("pgtenant-dev-")
        .tempdir()
        .map_err(|e| format!("cannot create a working directory: {e}"))?;

    write_demo_files(dir.path())?;
    let path = write_config(dir.path(), &cluster, &args)?;
    let config = Config::from_file(&path).map_err(|e| e.to_string())?;
    let tenants = create_tenants(&config, &args).await?;

    print_banner(&path, &tenants, &cluster);
    let served = super::serve::serve(config, path).await;
    drop(cluster);
    served
}

fn pool_mode(text: &str) -> Result<PoolMode, String> {
    match text {
        "transaction" => Ok(PoolMode::Transaction),
        "session" => Ok(PoolMode::Session),
        other => Err(format!(
            "--pool-mode: {other:?} is not `transaction` or `session`"
        )),
    }
}

/// Creates each demo tenant as `tenant create --demo-data` would.
async fn create_tenants(config: &Config, args: &DevArgs) -> Result<Vec<Created>, String> {
    let mut created = Vec::with_capacity(args.tenants.len());
    for name in &args.tenants {
        let request = CreateRequest {
            name: name.clone(),
            tier: None,
            pool_mode: pool_mode(&args.pool_mode)?,
            pool_size: Some(args.pool_size),
            demo_data: true,
        };
        let tenant = create::create(config, &request)
            .await
            .map_err(|e| e.to_string())?;
        created.push(tenant);
    }
    Ok(created)
}

/// The demo migrations under `migrations/` and the demo data as `demo_data.sql`.
fn write_demo_files(dir: &Path) -> Result<(), String> {
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations)
        .map_err(|e| format!("cannot create {}: {e}", migrations.display()))?;

    let files = MIGRATIONS
        .iter()
        .map(|(name, sql)| (migrations.join(name), *sql))
        .chain([(dir.join("demo_data.sql"), DEMO_DATA)]);
    for (path, sql) in files {
        std::fs::write(&path, sql).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A TOML string literal.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn write_config(dir: &Path, cluster: &Cluster, args: &DevArgs) -> Result<PathBuf, String> {
    let (cert, key) = crate::tls::write_self_signed(dir, &["localhost", "*.localhost"])
        .map_err(|e| e.to_string())?;

    let text = format!(
        "# Written by `pgtenant dev`; removed when it stops. Tenants live in the catalog:\n\
         # `pgtenant tenant create NAME --config THIS_FILE` adds one.\n\
         [proxy]\nlisten = {listen}\ntls = \"preferred\"\nworker_threads = {workers}\n\
         tls_cert = {cert}\ntls_key = {key}\n\n\
         [backend]\nhost = {host}\nport = {port}\ndatabase = \"postgres\"\n\n\
         [catalog]\nuser = {user}\npassword = {password}\nreload_interval = \"30s\"\n\n\
         [migrations]\ndir = {migrations}\n\n\
         [provisioning]\ndemo_data = {demo}\n",
        listen = quoted(&args.listen),
        cert = quoted(&cert.display().to_string()),
        key = quoted(&key.display().to_string()),
        host = quoted(cluster.host()),
        port = cluster.port(),
        user = quoted(cluster.superuser()),
        password = quoted(cluster.superuser_password()),
        workers = args.worker_threads,
        migrations = quoted(&dir.join("migrations").display().to_string()),
        demo = quoted(&dir.join("demo_data.sql").display().to_string()),
    );
    let path = dir.join("pgtenant.toml");
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

fn print_banner(path: &Path, tenants: &[Created], cluster: &Cluster) {
    println!("pgtenant dev is running. Ctrl-C stops everything.\n");
    println!("config file: {}", path.display());
    println!(
        "postgres:    {} (superuser, direct)\n",
        cluster.url(
            cluster.superuser(),
            cluster.superuser_password(),
            "postgres"
        )
    );
    for t in tenants {
        super::tenant::print_urls(t);
    }
    println!(
        "More tenants: `pgtenant tenant create demo3 --demo-data --config {}`; the new tenant \
         can log in at once (this proxy follows the catalog).",
        path.display()
    );
}
