"""asyncpg through pgtenant in transaction pooling mode.

Environment: PGT_HOST, PGT_PORT, PGT_USER, PGT_PASSWORD, PGT_DATABASE (the tenant),
PGT_TABLE (a table this program owns), PGT_CLIENTS (concurrent connections),
PGT_ROUNDS (rounds per connection). The argument names the phase:

  connections  CLIENTS connections open at once and used in turn by one task (this works
               with fewer backends only if each goes back to the proxy's pool after a
               transaction), then CLIENTS concurrent tasks, then a few sequential
               connections (default)
  pool         asyncpg's own pool with CLIENTS connections and twice as many tasks; asyncpg
               resets a connection when it goes back to its pool with
               "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"

asyncpg prepares every statement server-side (named __asyncpg_stmt_N__) and caches it per
connection, so repeated queries send only Bind/Execute. Every connection asks for
search_path=public in its startup packet, which the proxy must ignore: unqualified names
must still resolve in the tenant's schema. Prints "OK <n> queries" on success.
"""

import asyncio
import os
import sys

import asyncpg

HOST = os.environ["PGT_HOST"]
PORT = int(os.environ["PGT_PORT"])
USER = os.environ["PGT_USER"]
PASSWORD = os.environ["PGT_PASSWORD"]
DATABASE = os.environ["PGT_DATABASE"]
TABLE = os.environ["PGT_TABLE"]
CLIENTS = int(os.environ.get("PGT_CLIENTS", "5"))
ROUNDS = int(os.environ.get("PGT_ROUNDS", "12"))

queries = 0


def count(n=1):
    global queries
    queries += n


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def expect_error(kind, coro, what):
    try:
        await coro
    except kind:
        return
    raise AssertionError(f"{what}: expected {kind.__name__}")


def connect_args(app):
    return dict(
        host=HOST,
        port=PORT,
        user=USER,
        password=PASSWORD,
        database=DATABASE,
        ssl=False,
        timeout=10,
        server_settings={"search_path": "public", "application_name": app},
    )


async def connect(app):
    return await asyncpg.connect(**connect_args(app))


async def worker(w):
    conn = await connect(f"asyncpg-{w}")
    try:
        schema = await conn.fetchval("SELECT current_schema()::text")
        count()
        check(schema == DATABASE, f"worker {w}: current_schema() is {schema}")

        doubled = await conn.prepare(f"SELECT $1::int * 2 + {w}")
        for r in range(ROUNDS):
            # Cached statements outside a transaction block.
            got = await doubled.fetchval(r)
            count()
            check(got == r * 2 + w, f"worker {w} round {r}: prepared gave {got}")
            got = await conn.fetchrow(
                "SELECT current_schema()::text AS s, $1::text AS e", f"w{w}"
            )
            count()
            check(
                (got["s"], got["e"]) == (DATABASE, f"w{w}"),
                f"worker {w}: schema/echo gave {tuple(got)}",
            )

            # The same statements inside an explicit transaction.
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO {TABLE} (worker, n) VALUES ($1, $2)", w, r
                )
                count()
                got = await conn.fetchval(
                    f"SELECT count(*) FROM {TABLE} WHERE worker = $1", w
                )
                count()
                check(got == r + 1, f"worker {w} round {r}: {got} rows")
                got = await doubled.fetchval(r + 1)
                count()
                check(got == (r + 1) * 2 + w, f"worker {w}: prepared in tx gave {got}")

            if r % 3 == 0:
                await error_in_transaction(conn, w, r)

            # An error outside a transaction block.
            if r % 4 == 1:
                await expect_error(
                    asyncpg.DivisionByZeroError,
                    conn.fetchval("SELECT 1 / $1::int", 0),
                    f"worker {w}: division by zero",
                )
                count()
                got = await conn.fetchval("SELECT 10 / $1::int", 5)
                count()
                check(got == 2, f"worker {w}: 10/5 gave {got}")

            # A cursor: a portal executed a few rows at a time inside a transaction.
            if r % 5 == 2:
                async with conn.transaction():
                    total = 0
                    async for rec in conn.cursor(
                        "SELECT g FROM generate_series(1, $1::int) g", 25, prefetch=7
                    ):
                        total += rec["g"]
                    count()
                    check(total == 25 * 26 // 2, f"worker {w}: cursor sum {total}")

            # executemany: many Bind/Execute pairs before one Sync.
            if r % 5 == 3:
                await conn.executemany(
                    f"INSERT INTO {TABLE} (worker, n) VALUES ($1, $2)",
                    [(w, 5000 + r * 10 + k) for k in range(4)],
                )
                count(4)
                got = await conn.execute(
                    f"DELETE FROM {TABLE} WHERE worker = $1 AND n >= 5000", w
                )
                count()
                check(got == "DELETE 4", f"worker {w}: {got} after executemany")
    finally:
        await conn.close()


async def error_in_transaction(conn, w, r):
    fresh_sql = f"SELECT {w} * 100 + $1::int /* fresh {r} */"
    tr = conn.transaction()
    await tr.start()
    count()
    await conn.execute(f"INSERT INTO {TABLE} (worker, n) VALUES ($1, $2)", w, 1000 + r)
    count()
    await expect_error(
        asyncpg.UniqueViolationError,
        conn.execute(f"INSERT INTO {TABLE} (worker, n) VALUES ($1, $2)", w, 1000 + r),
        f"worker {w}: duplicate insert",
    )
    count()
    # Never prepared before: its Parse fails because the transaction is aborted.
    await expect_error(
        asyncpg.InFailedSQLTransactionError,
        conn.fetchval(fresh_sql, r),
        f"worker {w}: statement in an aborted transaction",
    )
    count()
    await tr.rollback()
    count()

    got = await conn.fetchval(fresh_sql, r)
    count()
    check(got == w * 100 + r, f"worker {w}: fresh statement gave {got}")
    got = await conn.fetchval(
        f"SELECT count(*) FROM {TABLE} WHERE worker = $1 AND n >= 1000", w
    )
    count()
    check(got == 0, f"worker {w}: {got} rolled-back rows are visible")

    # The context-manager form: the error propagates and the block is rolled back.
    try:
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO {TABLE} (worker, n) VALUES ($1, $2)", w, 2000 + r
            )
            count()
            await conn.fetchval("SELECT 1 / $1::int", 0)
        raise AssertionError(f"worker {w}: division by zero in a block did not fail")
    except asyncpg.DivisionByZeroError:
        count()
    got = await conn.fetchval(
        f"SELECT count(*) FROM {TABLE} WHERE worker = $1 AND n >= 2000", w
    )
    count()
    check(got == 0, f"worker {w}: {got} rows of a failed block are visible")


async def pool_phase():
    """asyncpg's own pool, bigger than the proxy's: connections are released (and reset by
    asyncpg) and acquired again by other tasks."""
    pool = await asyncpg.create_pool(
        min_size=CLIENTS, max_size=CLIENTS, **connect_args("asyncpg-pool")
    )
    try:

        async def task(t):
            for i in range(4):
                async with pool.acquire() as conn:
                    got = await conn.fetchval("SELECT $1::int + $2::int", t, i * 100)
                    count()
                    check(got == t + i * 100, f"pool task {t}: got {got}")
                    schema = await conn.fetchval("SELECT current_schema()::text")
                    count()
                    check(schema == DATABASE, f"pool task {t}: schema {schema}")
                    async with conn.transaction():
                        got = await conn.fetchval("SELECT $1::int * 3", t)
                        count()
                        check(got == t * 3, f"pool task {t}: in a transaction got {got}")

        await asyncio.wait_for(
            asyncio.gather(*(task(t) for t in range(CLIENTS * 2))), 60
        )
    except BaseException:
        pool.terminate()
        raise
    await asyncio.wait_for(pool.close(), 30)


async def interleaved():
    """All connections open at once, used one after another by this task."""
    conns = [await connect(f"asyncpg-open-{c}") for c in range(CLIENTS)]
    try:
        for r in range(6):
            for c, conn in enumerate(conns):
                got = await conn.fetchval(f"SELECT $1::int * 10 + {c}", r)
                count()
                check(got == r * 10 + c, f"open connection {c} round {r}: got {got}")
                async with conn.transaction():
                    got = await conn.fetchval("SELECT $1::text || '!'", f"c{c}")
                count(3)
                check(got == f"c{c}!", f"open connection {c}: echo gave {got}")
    finally:
        for conn in conns:
            await conn.close()


async def connections_phase():
    conn = await connect("asyncpg-setup")
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(
            f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, worker int NOT NULL, "
            "n int NOT NULL, UNIQUE (worker, n))"
        )
        count(2)
    finally:
        await conn.close()

    await interleaved()

    results = await asyncio.gather(
        *(worker(w) for w in range(CLIENTS)), return_exceptions=True
    )
    failures = [
        f"worker {w}: {type(e).__name__}: {e}"
        for w, e in enumerate(results)
        if isinstance(e, BaseException)
    ]
    if failures:
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        sys.exit(1)

    # Sequential connections: each prepares its own statements on whichever backend it gets.
    for k in range(4):
        conn = await connect(f"asyncpg-seq-{k}")
        try:
            for i in range(3):
                got = await conn.fetchval(f"SELECT $1::int + {k * 1000}", i)
                count()
                check(got == i + k * 1000, f"sequential {k}: got {got}")
        finally:
            await conn.close()

    conn = await connect("asyncpg-final")
    try:
        total = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
        count()
        check(total == CLIENTS * ROUNDS, f"{total} rows, expected {CLIENTS * ROUNDS}")
        path = await conn.fetchval("SHOW search_path")
        count()
        check(DATABASE in path and path != "public", f"search_path is {path}")
    finally:
        await conn.close()


async def main():
    phase = sys.argv[1] if len(sys.argv) > 1 else "connections"
    if phase == "connections":
        await connections_phase()
    elif phase == "pool":
        await pool_phase()
    else:
        raise SystemExit(f"unknown phase {phase}")
    print(f"OK {queries} queries")


if __name__ == "__main__":
    asyncio.run(main())
