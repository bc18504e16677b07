-- Demo migration for `pgtenant dev`: invoices belong to customers.
CREATE TABLE invoices (
    id bigserial PRIMARY KEY,
    customer_id bigint REFERENCES customers,
    amount_cents bigint NOT NULL,
    issued_on date NOT NULL
);
CREATE INDEX invoices_customer_id ON invoices (customer_id);
