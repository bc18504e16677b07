//! Which names a new tenant may take.
//!
//! A tenant's name is also its schema and role name, so it must be a plain lowercase
//! identifier (never quoted anywhere), fit PostgreSQL's 63-byte identifier limit, stay clear
//! of names PostgreSQL or pgtenant use themselves, and not be taken: by a catalog tenant, or
//! by a role or schema that already exists in the cluster (pgtenant never adopts those).

use tokio_postgres::GenericClient;

use crate::tenant::catalog::describe;

/// Names no tenant may take: PostgreSQL's own schemas, databases and reserved role names,
/// pgtenant's catalog schema, and the usual administrative names.
pub const RESERVED: &[&str] = &[
    "public",
    "information_schema",
    "pgtenant",
    "postgres",
    "template0",
    "template1",
    "none",
    "all",
    "current_role",
    "current_user",
    "session_user",
    "admin",
    "administrator",
    "root",
    "superuser",
    "replication",
];

/// Prefixes no tenant name may start with: PostgreSQL's system schemas and roles, and
/// pgtenant's own objects.
pub const RESERVED_PREFIXES: &[&str] = &["pg_", "pgtenant_"];

/// A refused tenant name, with the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// Not a lowercase identifier, or too long.
    #[error("tenant name {0}")]
    Malformed(String),
    /// On the reserved list.
    #[error("tenant name {name:?} is reserved ({why})")]
    Reserved {
        /// The name.
        name: String,
        /// Which rule.
        why: String,
    },
    /// Already in the catalog.
    #[error("tenant {0:?} already exists in the catalog")]
    Exists(String),
    /// A role or schema of that name exists outside pgtenant.
    #[error("a {kind} named {name:?} already exists and was not created by pgtenant")]
    Foreign {
        /// `role` or `schema`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The lookup failed.
    #[error("cannot check whether {name:?} is taken: {}", describe(.source))]
    Lookup {
        /// The name.
        name: String,
        /// Cause.
        source: tokio_postgres::Error,
    },
}

/// Checks the rules that need no database: shape, length and the reserved list.
pub fn check_name(name: &str) -> Result<(), NameError> {
    crate::config::check_identifier(name).map_err(NameError::Malformed)?;

    if RESERVED.contains(&name) {
        let why = "used by PostgreSQL or pgtenant".to_owned();
        return Err(reserved(name, why));
    }
    if let Some(prefix) = RESERVED_PREFIXES.iter().find(|p| name.starts_with(*p)) {
        return Err(reserved(
            name,
            format!("names starting with {prefix:?} are"),
        ));
    }
    Ok(())
}

fn reserved(name: &str, why: String) -> NameError {
    NameError::Reserved {
        name: name.to_owned(),
        why,
    }
}

/// Checks that no catalog tenant, role or schema has the name yet.
pub async fn check_free(client: &impl GenericClient, name: &str) -> Result<(), NameError> {
    let lookup = |source| NameError::Lookup {
        name: name.to_owned(),
        source,
    };
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pgtenant.tenants \
                            WHERE $1 IN (name, schema_name, role_name)), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&name],
        )
        .await
        .map_err(lookup)?;

    let foreign = |kind| NameError::Foreign {
        kind,
        name: name.to_owned(),
    };
    match (row.get(0), row.get(1), row.get(2)) {
        (true, _, _) => Err(NameError::Exists(name.to_owned())),
        (false, true, _) => Err(foreign("role")),
        (false, false, true) => Err(foreign("schema")),
        (false, false, false) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_malformed_names_are_refused() {
        assert!(check_name("acme_2").is_ok());
        for bad in [
            "public",
            "pg_x",
            "pgtenant",
            "pgtenant_x",
            "postgres",
            "Acme",
            "1a",
        ] {
            assert!(check_name(bad).is_err(), "{bad} must be refused");
        }
        assert!(check_name(&"a".repeat(63)).is_ok());
        assert!(check_name(&"a".repeat(64)).is_err());
    }
}
