//! The catalog's own schema, `pgtenant`, as numbered steps that `install` applies once each.
//!
//! A step is never edited after release: a change to the catalog is a new step. Every table
//! is owned by pgtenant's role and readable by nobody else (`REVOKE ALL ... FROM PUBLIC` on
//! the schema), which keeps role passwords and verifiers away from tenant roles. Changes to
//! what proxies serve raise `NOTIFY pgtenant_catalog` from statement-level triggers, so every
//! proxy hears of them when the writing transaction commits. Pauses (`pgtenant.pauses`) have
//! their own channel, `pgtenant_pause`, so that pausing a tenant does not cost every proxy a
//! full catalog reload.

/// The channel proxies listen on for catalog changes.
pub const CHANNEL: &str = "pgtenant_catalog";

/// The channel proxies listen on for pauses taken or lifted.
pub const PAUSE_CHANNEL: &str = "pgtenant_pause";

/// The channel on which a proxy acknowledges a pause: `<token> <proxy name>`.
pub const PAUSE_ACK_CHANNEL: &str = "pgtenant_pause_ack";

/// Runs before the steps: the schema and the version record, safe to run every time.
pub const BOOTSTRAP: &str = "
CREATE SCHEMA IF NOT EXISTS pgtenant;
REVOKE ALL ON SCHEMA pgtenant FROM PUBLIC;
CREATE TABLE IF NOT EXISTS pgtenant.catalog_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL
);
";

/// The catalog steps; step `n` (1-based) brings the catalog to version `n`.
pub const STEPS: &[&str] = &[STEP_1, STEP_2, STEP_3];

const STEP_1: &str = "
CREATE TABLE pgtenant.tenants (
    name text PRIMARY KEY,
    schema_name text NOT NULL UNIQUE,
    role_name text NOT NULL UNIQUE,
    tier text CHECK (tier IN ('hot', 'warm', 'cold')),
    pool_mode text NOT NULL DEFAULT 'transaction'
        CHECK (pool_mode IN ('transaction', 'session')),
    pool_size integer CHECK (pool_size > 0),
    transactions_per_second double precision CHECK (transactions_per_second > 0),
    burst integer CHECK (burst > 0),
    max_client_connections integer CHECK (max_client_connections > 0),
    state text NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'suspended', 'archived')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtenant.credentials (
    tenant text NOT NULL REFERENCES pgtenant.tenants ON UPDATE CASCADE ON DELETE CASCADE,
    user_name text NOT NULL,
    verifier text NOT NULL CHECK (verifier LIKE 'SCRAM-SHA-256$%'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, user_name)
);

CREATE TABLE pgtenant.role_secrets (
    tenant text PRIMARY KEY REFERENCES pgtenant.tenants ON UPDATE CASCADE ON DELETE CASCADE,
    role_password text NOT NULL,
    rotated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtenant.admins (
    user_name text PRIMARY KEY,
    verifier text NOT NULL CHECK (verifier LIKE 'SCRAM-SHA-256$%'),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtenant.migrations (
    tenant text NOT NULL REFERENCES pgtenant.tenants ON UPDATE CASCADE ON DELETE CASCADE,
    version text NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    status text NOT NULL
        CHECK (status IN ('pending', 'running', 'applied', 'failed', 'rolled_back')),
    started_at timestamptz,
    finished_at timestamptz,
    duration_ms double precision,
    error text,
    fingerprint_before text,
    fingerprint_after text,
    applied_by text NOT NULL,
    PRIMARY KEY (tenant, version)
);

CREATE TABLE pgtenant.audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    tenant text,
    client_addr text,
    detail text,
    ended_at timestamptz
);
CREATE INDEX audit_log_tenant_at ON pgtenant.audit_log (tenant, at);

CREATE FUNCTION pgtenant.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NOTIFY pgtenant_catalog;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON pgtenant.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER credentials_changed AFTER INSERT OR UPDATE OR DELETE ON pgtenant.credentials
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER role_secrets_changed AFTER INSERT OR UPDATE OR DELETE ON pgtenant.role_secrets
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER admins_changed AFTER INSERT OR UPDATE OR DELETE ON pgtenant.admins
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_change();
";

/// Pauses of one tenant's traffic for a schema change, and the generation of each tenant's
/// schema: a change of generation retires the tenant's pools at every proxy.
const STEP_2: &str = "
CREATE TABLE pgtenant.pauses (
    tenant text PRIMARY KEY REFERENCES pgtenant.tenants ON UPDATE CASCADE ON DELETE CASCADE,
    token text NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE FUNCTION pgtenant.notify_pause() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NOTIFY pgtenant_pause;
    RETURN NULL;
END
$$;

CREATE TRIGGER pauses_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgtenant.pauses
    FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_pause();

ALTER TABLE pgtenant.tenants ADD COLUMN generation bigint NOT NULL DEFAULT 0;
";

/// Schemas set aside by blue/green swaps and rollbacks, kept until `expires_at` so that a
/// rollback is a rename; `reason` is `blue-green` (replaced by a migrated copy) or
/// `rollback` (replaced by the schema it had replaced).
const STEP_3: &str = "
CREATE TABLE pgtenant.retired_schemas (
    tenant text REFERENCES pgtenant.tenants ON UPDATE CASCADE ON DELETE CASCADE,
    schema_name text PRIMARY KEY,
    retired_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    version_from text,
    version_to text,
    reason text NOT NULL CHECK (reason IN ('blue-green', 'rollback'))
);
CREATE INDEX retired_schemas_tenant ON pgtenant.retired_schemas (tenant, retired_at);
";
