//! Tenants: which one a client belongs to. The router tries the configured sources in order
//! (database name, TLS SNI, `options`) and takes the first name that is a known tenant.
//! `catalog` is where tenants come from when they are not in the configuration file.

pub mod catalog;

use std::sync::Arc;

use crate::config::{Config, Tenant, TenantSource};
use crate::frontend::startup::StartupRequest;
use crate::tls::sni_tenant;

/// The tenant a login names, or `None` when no source names a known tenant.
pub fn route(
    config: &Config,
    request: &StartupRequest,
    server_name: Option<&str>,
) -> Option<Arc<Tenant>> {
    config.proxy.tenant_from.iter().find_map(|source| {
        let name = match source {
            TenantSource::Database => Some(request.database.as_str()),
            TenantSource::Sni => server_name.and_then(sni_tenant),
            TenantSource::Options => request.tenant_option.as_deref(),
        }?;
        config.tenants.get(name).cloned()
    })
}
