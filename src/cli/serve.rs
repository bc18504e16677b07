//! `pgtenant serve`: run the proxy. SIGHUP reloads the file (an invalid file is rejected and
//! the old configuration stays); SIGTERM and SIGINT drain and stop.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::server::{Server, ServerHandle};

/// Runs until SIGTERM or SIGINT.
pub fn run(path: &Path) -> Result<(), String> {
    let config = Config::from_file(path).map_err(|e| e.to_string())?;
    super::runtime(config.proxy.worker_threads)?.block_on(serve(config, path.to_owned()))
}

/// Serves `config`, reloading from `path` on SIGHUP.
pub async fn serve(config: Config, path: PathBuf) -> Result<(), String> {
    if let Some(addr) = &config.proxy.metrics_listen {
        let addr = addr
            .parse()
            .map_err(|e| format!("proxy.metrics_listen: {e}"))?;
        crate::metrics::install_exporter(addr)?;
    }

    let server = Server::bind(config).await.map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "pgtenant listening");

    let handle = server.handle();
    if handle.config().catalog.is_some() {
        crate::tenant::catalog::watch::initial(&handle).await?;
    }
    tokio::spawn(watch_signals(handle, path));
    server.run().await;
    tracing::info!("pgtenant stopped");
    Ok(())
}

async fn watch_signals(handle: ServerHandle, path: PathBuf) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };

    let mut stopping = false;
    loop {
        let stop = tokio::select! {
            _ = hup.recv() => false,
            _ = term.recv() => true,
            _ = int.recv() => true,
        };
        if !stop {
            reload(&handle, &path);
        } else if !stopping {
            tracing::info!("stopping: draining sessions (signal again to stop at once)");
            handle.shutdown();
            stopping = true;
        } else {
            handle.shutdown_now();
            return;
        }
    }
}

fn reload(handle: &ServerHandle, path: &Path) {
    let result = Config::from_file(path)
        .map_err(|e| e.to_string())
        .and_then(|config| handle.reload(config).map_err(|e| e.to_string()));
    if let Err(error) = result {
        tracing::error!(%error, "reload rejected; the previous configuration stays");
    }
}
