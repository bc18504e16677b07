-- Demo rows for `pgtenant tenant create --demo-data`. Runs as the tenant's role with
-- search_path set to its schema, after the migrations; the tables are created here too so the
-- file also works without config/migrations. Customer names start with the tenant's name.
CREATE TABLE IF NOT EXISTS customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    plan text NOT NULL,
    created_at timestamptz DEFAULT now()
);
CREATE TABLE IF NOT EXISTS invoices (
    id bigserial PRIMARY KEY,
    customer_id bigint REFERENCES customers,
    amount_cents bigint NOT NULL,
    issued_on date NOT NULL
);

INSERT INTO customers (name, plan)
SELECT initcap(current_schema()) || v.suffix, v.plan
FROM (VALUES (1, ' Rocket Co', 'enterprise'),
             (2, ' Widgets Ltd', 'pro'),
             (3, ' Labs', 'free')) AS v (n, suffix, plan)
ORDER BY v.n;

INSERT INTO invoices (customer_id, amount_cents, issued_on)
SELECT c.id, v.amount, DATE '2024-01-01' + v.day
FROM customers c
JOIN (VALUES ('enterprise', 125000, 0), ('enterprise', 98000, 30),
             ('pro', 4900, 7), ('pro', 4900, 37),
             ('free', 0, 14), ('free', 1500, 44)) AS v (plan, amount, day)
  ON v.plan = c.plan
ORDER BY c.id, v.day;
