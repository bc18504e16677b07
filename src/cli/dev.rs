//! `pgtenant dev`: the embedded default. Starts a throwaway PostgreSQL, creates demo tenants,
//! writes a self-signed certificate and a configuration file, runs the proxy and prints how
//! to connect. Ctrl-C stops the proxy and the server and removes their files.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::Config;
use crate::control::demo::{self, DemoTenant};
use crate::embedded::{Cluster, ClusterOptions};

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
        crate::config::check_identifier(name).map_err(|e| format!("--tenants: {e}"))?;
    }
    super::runtime(args.worker_threads)?.block_on(dev(args))
}

async fn dev(args: DevArgs) -> Result<(), String> {
    let cluster = Cluster::start(ClusterOptions::default()).map_err(|e| e.to_string())?;
    let names: Vec<&str> = args.tenants.iter().map(String::as_str).collect();
    let tenants = demo::provision(&cluster, &names)
        .await
        .map_err(|e| e.to_string())?;

    let dir = tempfile::Builder::new()
        .prefix("pgtenant-dev-")
        .tempdir()
        .map_err(|e| format!("cannot create a working directory: {e}"))?;
    let path = write_config(dir.path(), &cluster, &tenants, &args)?;
    let config = Config::from_file(&path).map_err(|e| e.to_string())?;

    print_banner(&path, &args.listen, &tenants, &cluster);
    let served = super::serve::serve(config, path).await;
    drop(cluster);
    served
}

fn write_config(
    dir: &Path,
    cluster: &Cluster,
    tenants: &[DemoTenant],
    args: &DevArgs,
) -> Result<PathBuf, String> {
    let (cert, key) = crate::tls::write_self_signed(dir, &["localhost", "*.localhost"])
        .map_err(|e| e.to_string())?;

    let text = format!(
        "# Written by `pgtenant dev`; removed when it stops.\n\
         [proxy]\nlisten = \"{listen}\"\ntls = \"preferred\"\nworker_threads = {workers}\n\
         tls_cert = \"{cert}\"\ntls_key = \"{key}\"\n\n\
         [backend]\nhost = \"{host}\"\nport = {port}\ndatabase = \"postgres\"\n\n{tenants}",
        listen = args.listen,
        cert = cert.display(),
        key = key.display(),
        host = cluster.host(),
        port = cluster.port(),
        workers = args.worker_threads,
        tenants = demo::tenants_toml(tenants, args.pool_size, &args.pool_mode),
    );
    let path = dir.join("pgtenant.toml");
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

fn print_banner(path: &Path, listen: &str, tenants: &[DemoTenant], cluster: &Cluster) {
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
        let url = format!(
            "postgres://{}:{}@{listen}/{}?sslmode=require",
            t.user, t.user_password, t.name
        );
        println!("tenant {}:", t.name);
        println!("  DATABASE_URL={url}");
        println!("  psql \"{url}\"");
        println!("  prisma: {url}&schema={}\n", t.name);
    }
}
