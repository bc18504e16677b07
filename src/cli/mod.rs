//! The command line: one file per subcommand. Commands print for people on stdout and log
//! through `tracing` on stderr; failures are one line naming the offending value.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the CLI talks to a terminal"
)]

pub mod check;
pub mod dev;
pub mod migrate;
pub mod passwd;
pub mod serve;
pub mod tenant;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pgtenant: a PostgreSQL proxy for schema-per-tenant products.
#[derive(Debug, Parser)]
#[command(name = "pgtenant", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy with a configuration file.
    Serve {
        /// Configuration file.
        #[arg(long, short, env = "PGTENANT_CONFIG")]
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL with demo tenants and the proxy in front of it.
    Dev(dev::DevArgs),
    /// Validate a configuration file and exit.
    Check {
        /// Configuration file.
        #[arg(long, short, env = "PGTENANT_CONFIG")]
        config: PathBuf,
    },
    /// Read a password on stdin and print its SCRAM-SHA-256 verifier.
    Passwd,
    /// Create, inspect, change and remove tenants in the catalog.
    Tenant(tenant::TenantArgs),
    /// Roll migrations out across the fleet, show their status, roll a tenant back.
    Migrate(migrate::MigrateArgs),
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();

    let result = match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::Dev(args) => dev::run(args),
        Command::Check { config } => check::run(&config),
        Command::Passwd => passwd::run(),
        Command::Tenant(args) => tenant::run(args),
        Command::Migrate(args) => migrate::run(args),
    };

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pgtenant: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGTENANT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The runtime sessions run on: `workers` threads (`0`: one per CPU). One worker means a
/// single-threaded event loop, which spends no CPU handing tasks between threads.
pub fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}
