-- Demo migration for `pgtenant dev`: runs as the tenant's role with search_path set to the
-- tenant's schema, so unqualified names land there.
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    plan text NOT NULL,
    created_at timestamptz DEFAULT now()
);
