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
    names(config, request, server_name).find_map(|name| config.tenants.get(name).cloned())
}

/// The first name the login gives for a tenant, known or not: what an unknown tenant's
/// decoy salt is derived from, so that it stays the same whatever the later sources say,
/// as a real tenant's salt does when the first source names it.
pub fn first_name<'a>(
    config: &'a Config,
    request: &'a StartupRequest,
    server_name: Option<&'a str>,
) -> Option<&'a str> {
    names(config, request, server_name).next()
}

/// The names the login gives, in the configured order of sources.
fn names<'a>(
    config: &'a Config,
    request: &'a StartupRequest,
    server_name: Option<&'a str>,
) -> impl Iterator<Item = &'a str> {
    let sources = config.proxy.tenant_from.iter();
    sources.filter_map(move |source| match source {
        TenantSource::Database => Some(request.database.as_str()),
        TenantSource::Sni => server_name.and_then(sni_tenant),
        TenantSource::Options => request.tenant_option.as_deref(),
    })
}
