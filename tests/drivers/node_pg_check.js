// node-postgres (pg) through pgtenant in transaction pooling mode.
//
// Environment: PGT_HOST, PGT_PORT, PGT_USER, PGT_PASSWORD, PGT_DATABASE (the tenant),
// PGT_TABLE (a table this program owns), PGT_CLIENTS (concurrent connections), PGT_ROUNDS
// (rounds per connection). NODE_PATH must let require('pg') find the driver.
//
// First CLIENTS clients are connected and kept open while one async flow uses them in turn:
// with fewer backends than open connections this works only if the proxy returns each
// backend to its pool between transactions. Then CLIENTS clients work concurrently.
//
// A query with a `name` is a server-side prepared statement: pg sends Parse once per
// connection and afterwards only Bind/Execute with that name. Every client uses the same
// names for different SQL (each worker adds its own number), so a proxy that mixed up
// statements between clients sharing a backend would return wrong numbers. Prints
// "OK <n> queries" on success, exits 1 on any failure.

'use strict';

const { Client, Pool } = require('pg');

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const DATABASE = env('PGT_DATABASE');
const TABLE = env('PGT_TABLE');
const CLIENTS = Number(env('PGT_CLIENTS', '5'));
const ROUNDS = Number(env('PGT_ROUNDS', '12'));

const settings = (app) => ({
  host: env('PGT_HOST'),
  port: Number(env('PGT_PORT')),
  user: env('PGT_USER'),
  password: env('PGT_PASSWORD'),
  database: DATABASE,
  ssl: false,
  application_name: app,
  connectionTimeoutMillis: 10000,
});

let queries = 0;

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

async function q(client, query, values) {
  const result = await client.query(query, values);
  queries += 1;
  return result;
}

async function scalar(client, query, values) {
  const result = await q(client, query, values);
  check(result.rows.length === 1, `one row from ${JSON.stringify(query)}`);
  return Object.values(result.rows[0])[0];
}

async function expectError(code, promise, what) {
  try {
    await promise;
  } catch (e) {
    queries += 1;
    check(e.code === code, `${what}: expected SQLSTATE ${code}, got ${e.code}: ${e.message}`);
    return;
  }
  throw new Error(`${what}: expected SQLSTATE ${code}`);
}

const named = (name, text, values) => ({ name, text, values });

async function worker(w) {
  const client = new Client(settings(`node-pg-${w}`));
  await client.connect();
  try {
    const doubled = (v) => named('doubled', `SELECT $1::int * 2 + ${w} AS v`, [v]);
    const insert = (n) => named('insert', `INSERT INTO ${TABLE} (worker, n) VALUES ($1, $2)`, [w, n]);
    const rows = (from, to) =>
      named('rows', `SELECT count(*)::int AS c FROM ${TABLE} WHERE worker = $1 AND n >= $2 AND n < $3`, [w, from, to]);

    for (let r = 0; r < ROUNDS; r++) {
      // Outside a transaction block.
      check((await scalar(client, doubled(r))) === r * 2 + w, `worker ${w} round ${r}: doubled`);
      const echo = await scalar(client, named('echo', "SELECT current_schema() || ':' || $1 AS e", [`w${w}`]));
      check(echo === `${DATABASE}:w${w}`, `worker ${w}: echo gave ${echo}`);

      // The same named statements inside an explicit transaction.
      await q(client, 'BEGIN');
      await q(client, insert(r));
      check((await scalar(client, rows(0, 1000))) === r + 1, `worker ${w} round ${r}: row count`);
      check((await scalar(client, doubled(r + 1))) === (r + 1) * 2 + w, `worker ${w}: doubled in a transaction`);
      await q(client, 'COMMIT');

      if (r % 3 === 0) {
        // Duplicate key, then a name never prepared on this client in the aborted
        // transaction (its Parse fails), then rollback and the same name again.
        const fresh = named(`fresh_${r}`, `SELECT ${w} * 100 + $1::int AS v`, [r]);
        await q(client, 'BEGIN');
        await q(client, insert(1000 + r));
        await expectError('23505', q(client, insert(1000 + r)), `worker ${w}: duplicate insert`);
        await expectError('25P02', q(client, fresh), `worker ${w}: statement in an aborted transaction`);
        await q(client, 'ROLLBACK');
        check((await scalar(client, fresh)) === w * 100 + r, `worker ${w}: fresh statement after rollback`);
        check((await scalar(client, fresh)) === w * 100 + r, `worker ${w}: fresh statement again`);
        check((await scalar(client, rows(1000, 2000))) === 0, `worker ${w}: rolled-back rows are visible`);
      }

      if (r % 4 === 1) {
        // A savepoint rolled back after an error; the transaction then commits.
        await q(client, 'BEGIN');
        await q(client, insert(2000 + r));
        await q(client, 'SAVEPOINT s');
        await expectError('23505', q(client, insert(2000 + r)), `worker ${w}: duplicate after savepoint`);
        await q(client, 'ROLLBACK TO SAVEPOINT s');
        check((await scalar(client, doubled(r))) === r * 2 + w, `worker ${w}: doubled after savepoint`);
        await q(client, 'COMMIT');
        check((await scalar(client, rows(2000, 3000))) === 1, `worker ${w}: the row before the savepoint`);
        await q(client, named('del', `DELETE FROM ${TABLE} WHERE worker = $1 AND n >= 2000`, [w]));
      }

      if (r % 4 === 2) {
        // An error outside a transaction block, then the client goes on.
        const divide = (v) => named('divide', 'SELECT 10 / $1::int AS v', [v]);
        await expectError('22012', q(client, divide(0)), `worker ${w}: division by zero`);
        check((await scalar(client, divide(5))) === 2, `worker ${w}: 10/5`);
      }
    }
  } finally {
    await client.end();
  }
}

async function poolPhase() {
  // pg.Pool with more connections than the proxy has backends; tasks take turns.
  const pool = new Pool({ ...settings('node-pg-pool'), max: CLIENTS });
  try {
    const task = async (t) => {
      for (let i = 0; i < 5; i++) {
        const client = await pool.connect();
        try {
          const v = await scalar(client, named('pool_sum', 'SELECT $1::int + $2::int AS v', [t, i * 100]));
          check(v === t + i * 100, `pool task ${t}: got ${v}`);
          await q(client, 'BEGIN');
          const s = await scalar(client, named('pool_schema', 'SELECT current_schema()::text || $1 AS s', ['!']));
          check(s === `${DATABASE}!`, `pool task ${t}: schema ${s}`);
          await q(client, 'COMMIT');
        } finally {
          client.release();
        }
      }
    };
    await Promise.all(Array.from({ length: CLIENTS * 2 }, (_, t) => task(t)));
  } finally {
    await pool.end();
  }
}

async function interleaved() {
  const clients = [];
  try {
    for (let c = 0; c < CLIENTS; c++) {
      const client = new Client(settings(`node-pg-open-${c}`));
      await client.connect();
      clients.push(client);
    }
    for (let r = 0; r < 6; r++) {
      for (const [c, client] of clients.entries()) {
        const v = await scalar(client, named('open', `SELECT $1::int * 10 + ${c} AS v`, [r]));
        check(v === r * 10 + c, `open client ${c} round ${r}: got ${v}`);
        await q(client, 'BEGIN');
        const e = await scalar(client, named('open_echo', "SELECT $1::text || '!' AS e", [`c${c}`]));
        check(e === `c${c}!`, `open client ${c}: echo gave ${e}`);
        await q(client, 'COMMIT');
      }
    }
  } finally {
    for (const client of clients) await client.end();
  }
}

async function main() {
  const setup = new Client(settings('node-pg-setup'));
  await setup.connect();
  try {
    await q(setup, `DROP TABLE IF EXISTS ${TABLE}`);
    await q(setup, `CREATE TABLE ${TABLE} (id serial PRIMARY KEY, worker int NOT NULL, n int NOT NULL, UNIQUE (worker, n))`);
    const schema = await scalar(setup, 'SELECT current_schema()::text AS s');
    check(schema === DATABASE, `current_schema() is ${schema}`);
  } finally {
    await setup.end();
  }

  await interleaved();

  const results = await Promise.allSettled(Array.from({ length: CLIENTS }, (_, w) => worker(w)));
  const failures = results
    .map((res, w) => (res.status === 'rejected' ? `worker ${w}: ${res.reason && res.reason.stack}` : null))
    .filter((f) => f !== null);
  if (failures.length > 0) {
    for (const f of failures) console.error(`FAIL ${f}`);
    process.exit(1);
  }

  // Sequential clients: each prepares the same name for different SQL.
  for (let k = 0; k < 4; k++) {
    const client = new Client(settings(`node-pg-seq-${k}`));
    await client.connect();
    try {
      for (let i = 0; i < 6; i++) {
        const v = await scalar(client, named('seq', `SELECT $1::int + ${k * 1000} AS v`, [i]));
        check(v === i + k * 1000, `sequential ${k}: ${i} gave ${v}`);
      }
    } finally {
      await client.end();
    }
  }

  await poolPhase();

  const last = new Client(settings('node-pg-final'));
  await last.connect();
  try {
    const total = await scalar(last, named('total', `SELECT count(*)::int AS c FROM ${TABLE}`, []));
    check(total === CLIENTS * ROUNDS, `${total} rows, expected ${CLIENTS * ROUNDS}`);
  } finally {
    await last.end();
  }
  console.log(`OK ${queries} queries`);
}

main().catch((e) => {
  console.error(`FAIL ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
