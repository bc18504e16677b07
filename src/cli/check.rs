//! `pgtenant check`: validate a configuration file, including its TLS files, without
//! starting anything.

use std::path::Path;

use crate::config::Config;

/// Exits non-zero with a one-line reason when the file is not usable.
pub fn run(path: &Path) -> Result<(), String> {
    let config = Config::from_file(path).map_err(|e| e.to_string())?;
    if let Some((cert, key)) = &config.proxy.tls_files {
        crate::tls::server_config(cert, key).map_err(|e| e.to_string())?;
    }
    let tenants = match &config.catalog {
        Some(catalog) => format!("tenants from the catalog as {}", catalog.user),
        None => format!("{} tenants", config.tenants.len()),
    };
    println!(
        "{}: ok ({tenants}, listen {})",
        path.display(),
        config.proxy.listen
    );
    Ok(())
}
