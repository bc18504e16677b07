"""psycopg 3 through pgtenant in transaction pooling mode.

Environment: PGT_HOST, PGT_PORT, PGT_USER, PGT_PASSWORD, PGT_DATABASE (the tenant),
PGT_TABLE (a table this program owns), PGT_CLIENTS (concurrent connections),
PGT_ROUNDS (rounds per connection).

First CLIENTS connections are opened and kept open while one thread uses them in turn:
with fewer backends than open connections this works only if the proxy returns each
backend to its pool between transactions. Then CLIENTS threads work concurrently.

Every connection uses prepare_threshold=0, so each statement is prepared server-side on
its first execution and later executions send only Bind/Execute with the driver's own
statement name (_pg3_0, _pg3_1, ...). Connections prepare the same names for different
SQL (each worker adds its own number), so a proxy that mixed up statements between
clients sharing a backend would return wrong numbers. Prints "OK <n> queries" on success.
"""

import os
import sys
import threading

import psycopg
from psycopg import errors

HOST = os.environ["PGT_HOST"]
PORT = int(os.environ["PGT_PORT"])
USER = os.environ["PGT_USER"]
PASSWORD = os.environ["PGT_PASSWORD"]
DATABASE = os.environ["PGT_DATABASE"]
TABLE = os.environ["PGT_TABLE"]
CLIENTS = int(os.environ.get("PGT_CLIENTS", "5"))
ROUNDS = int(os.environ.get("PGT_ROUNDS", "12"))

counter_lock = threading.Lock()
queries = 0


def count(n=1):
    global queries
    with counter_lock:
        queries += n


def connect(autocommit, app):
    conn = psycopg.connect(
        host=HOST,
        port=PORT,
        user=USER,
        password=PASSWORD,
        dbname=DATABASE,
        sslmode="disable",
        gssencmode="disable",
        connect_timeout=10,
        application_name=app,
        autocommit=autocommit,
        prepare_threshold=0,
    )
    return conn


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(kind, fn, what):
    try:
        fn()
    except kind:
        return
    raise AssertionError(f"{what}: expected {kind.__name__}")


def worker(w, failures):
    """One client: autocommit=True workers use conn.transaction(), the others psycopg's
    implicit transactions with commit()/rollback()."""
    autocommit = w % 2 == 1
    try:
        with connect(autocommit, f"psycopg-{w}") as conn:
            for r in range(ROUNDS):
                # Prepared outside an explicit transaction (in autocommit mode) or as the
                # first statement of an implicit one.
                got = conn.execute(f"SELECT %s::int * 2 + {w}", (r,)).fetchone()[0]
                count()
                check(got == r * 2 + w, f"worker {w} round {r}: select gave {got}")
                got = conn.execute(
                    "SELECT current_schema()::text, %s::text", (f"w{w}",), prepare=True
                ).fetchone()
                count()
                check(got == (DATABASE, f"w{w}"), f"worker {w}: schema/echo gave {got}")
                if not autocommit:
                    conn.commit()

                # Work in an explicit transaction with prepared statements.
                if autocommit:
                    with conn.transaction():
                        insert_and_count(conn, w, r)
                else:
                    insert_and_count(conn, w, r)
                    conn.commit()

                # An error inside a transaction, a statement never prepared before that
                # fails because the transaction is aborted, then rollback.
                if r % 3 == 0:
                    error_in_transaction(conn, w, r, autocommit)

                # An error outside a transaction block, then the connection goes on.
                if r % 4 == 1:
                    expect_error(
                        errors.DivisionByZero,
                        lambda: conn.execute("SELECT 1 / %s::int", (0,)),
                        f"worker {w}: division by zero",
                    )
                    count()
                    if not autocommit:
                        conn.rollback()
                    got = conn.execute("SELECT 10 / %s::int", (5,)).fetchone()[0]
                    count()
                    check(got == 2, f"worker {w}: 10/5 gave {got}")
                    if not autocommit:
                        conn.commit()

                # A batch through psycopg's pipeline mode (executemany pipelines).
                if r % 5 == 2:
                    with conn.cursor() as cur:
                        cur.executemany(
                            f"INSERT INTO {TABLE} (worker, n) VALUES (%s, %s)",
                            [(w, 5000 + r * 10 + k) for k in range(3)],
                        )
                    count(3)
                    got = conn.execute(
                        f"DELETE FROM {TABLE} WHERE worker = %s AND n >= 5000", (w,)
                    ).rowcount
                    count()
                    check(got == 3, f"worker {w}: deleted {got} pipelined rows")
                    if not autocommit:
                        conn.commit()
    except BaseException as e:  # noqa: BLE001 - reported by the main thread
        failures.append(f"worker {w}: {type(e).__name__}: {e}")


def insert_and_count(conn, w, r):
    conn.execute(
        f"INSERT INTO {TABLE} (worker, n) VALUES (%s, %s)", (w, r), prepare=True
    )
    count()
    got = conn.execute(
        f"SELECT count(*) FROM {TABLE} WHERE worker = %s", (w,)
    ).fetchone()[0]
    count()
    check(got == r + 1, f"worker {w} round {r}: {got} rows in the transaction")
    got = conn.execute("SELECT %s::int + 1000", (r,)).fetchone()[0]
    count()
    check(got == r + 1000, f"worker {w}: in-transaction select gave {got}")


def error_in_transaction(conn, w, r, autocommit):
    fresh_sql = f"SELECT {w} * 100 + %s::int /* fresh {r} */"

    def body():
        conn.execute(
            f"INSERT INTO {TABLE} (worker, n) VALUES (%s, %s)", (w, 1000 + r)
        )
        count()
        expect_error(
            errors.UniqueViolation,
            lambda: conn.execute(
                f"INSERT INTO {TABLE} (worker, n) VALUES (%s, %s)", (w, 1000 + r)
            ),
            f"worker {w}: duplicate insert",
        )
        count()
        expect_error(
            errors.InFailedSqlTransaction,
            lambda: conn.execute(fresh_sql, (r,)),
            f"worker {w}: statement in an aborted transaction",
        )
        count()

    if autocommit:
        conn.execute("BEGIN")
        count()
        body()
        conn.execute("ROLLBACK")
        count()
    else:
        body()
        conn.rollback()
        count()

    # The statement whose Parse failed in the aborted transaction works now.
    got = conn.execute(fresh_sql, (r,)).fetchone()[0]
    count()
    check(got == w * 100 + r, f"worker {w}: fresh statement gave {got}")
    got = conn.execute(
        f"SELECT count(*) FROM {TABLE} WHERE worker = %s AND n >= 1000", (w,)
    ).fetchone()[0]
    count()
    check(got == 0, f"worker {w}: {got} rolled-back rows are visible")
    if not autocommit:
        conn.commit()


def interleaved():
    """All connections open at once, used one after another from this thread."""
    conns = [connect(c % 2 == 0, f"psycopg-open-{c}") for c in range(CLIENTS)]
    try:
        for r in range(6):
            for c, conn in enumerate(conns):
                got = conn.execute(f"SELECT %s::int * 10 + {c}", (r,)).fetchone()[0]
                count()
                check(got == r * 10 + c, f"open connection {c} round {r}: got {got}")
                if conn.autocommit:
                    with conn.transaction():
                        got = conn.execute("SELECT %s::text || '!'", (f"c{c}",)).fetchone()
                        count(3)
                else:
                    got = conn.execute("SELECT %s::text || '!'", (f"c{c}",)).fetchone()
                    conn.commit()
                    count(2)
                check(got[0] == f"c{c}!", f"open connection {c}: echo gave {got}")
    finally:
        for conn in conns:
            conn.close()


def main():
    with connect(True, "psycopg-setup") as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, worker int NOT NULL, "
            "n int NOT NULL, UNIQUE (worker, n))"
        )
        count(2)
        schema = conn.execute("SELECT current_schema()::text").fetchone()[0]
        count()
        check(schema == DATABASE, f"current_schema() is {schema}, not {DATABASE}")

    interleaved()

    failures = []
    threads = [
        threading.Thread(target=worker, args=(w, failures)) for w in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        sys.exit(1)

    # Sequential connections after the concurrent phase: each one prepares the same
    # statement name for different SQL on whichever backend it gets.
    for k in range(4):
        with connect(True, f"psycopg-seq-{k}") as conn:
            for i in range(3):
                got = conn.execute(f"SELECT %s::int + {k * 1000}", (i,)).fetchone()[0]
                count()
                check(got == i + k * 1000, f"sequential {k}: got {got}")

    with connect(True, "psycopg-final") as conn:
        total = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        count()
        check(total == CLIENTS * ROUNDS, f"{total} rows, expected {CLIENTS * ROUNDS}")
    print(f"OK {queries} queries")


if __name__ == "__main__":
    main()
