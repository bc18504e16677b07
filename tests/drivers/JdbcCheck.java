// pgJDBC through pgtenant in transaction pooling mode.
//
// Environment: PGT_HOST, PGT_PORT, PGT_USER, PGT_PASSWORD, PGT_DATABASE (the tenant),
// PGT_TABLE (a table this program owns), PGT_CLIENTS (concurrent connections), PGT_ROUNDS
// (rounds per connection), PGT_JDBC_OPTIONS (more URL parameters, "&a=b&c=d", optional).
//
// First CLIENTS connections are opened and kept open while the main thread uses them in
// turn: with fewer backends than open connections this works only if the proxy returns each
// backend to its pool between transactions. Then CLIENTS threads work concurrently.
//
// prepareThreshold=1 makes pgJDBC use named server-side statements (S_1, S_2, ...) from the
// first execution on, and later executions send only Bind/Execute. Every connection prepares
// the same names in the same order for different SQL (each worker adds its own number), so
// a proxy that mixed up statements between clients sharing a backend would return wrong
// numbers. Prints "OK <n> queries" on success, exits 1 on any failure.

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicInteger;

public final class JdbcCheck {
    private static final String HOST = env("PGT_HOST");
    private static final String PORT = env("PGT_PORT");
    private static final String DATABASE = env("PGT_DATABASE");
    private static final String TABLE = env("PGT_TABLE");
    private static final int CLIENTS = Integer.parseInt(envOr("PGT_CLIENTS", "5"));
    private static final int ROUNDS = Integer.parseInt(envOr("PGT_ROUNDS", "12"));
    private static final AtomicInteger QUERIES = new AtomicInteger();

    private JdbcCheck() {}

    private static String env(String name) {
        String value = System.getenv(name);
        if (value == null) {
            throw new IllegalStateException(name + " is not set");
        }
        return value;
    }

    private static String envOr(String name, String fallback) {
        String value = System.getenv(name);
        return value == null ? fallback : value;
    }

    private static Connection connect(String app) throws SQLException {
        String url = "jdbc:postgresql://" + HOST + ":" + PORT + "/" + DATABASE
                + "?sslmode=disable&gssEncMode=disable&prepareThreshold=1&connectTimeout=10"
                + envOr("PGT_JDBC_OPTIONS", "");
        Properties props = new Properties();
        props.setProperty("user", env("PGT_USER"));
        props.setProperty("password", env("PGT_PASSWORD"));
        props.setProperty("ApplicationName", app);
        return DriverManager.getConnection(url, props);
    }

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    private static long scalar(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            QUERIES.incrementAndGet();
            check(rs.next(), "no row");
            long value = rs.getLong(1);
            check(!rs.next(), "more than one row");
            return value;
        }
    }

    private static String text(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            QUERIES.incrementAndGet();
            check(rs.next(), "no row");
            return rs.getString(1);
        }
    }

    /** Runs {@code action}, which must fail with {@code sqlState}. */
    private static void expectError(String sqlState, SqlAction action, String what) {
        try {
            action.run();
        } catch (SQLException e) {
            QUERIES.incrementAndGet();
            check(sqlState.equals(e.getSQLState()),
                    what + ": expected SQLSTATE " + sqlState + ", got " + e.getSQLState() + ": " + e);
            return;
        }
        throw new AssertionError(what + ": expected SQLSTATE " + sqlState);
    }

    @FunctionalInterface
    private interface SqlAction {
        void run() throws SQLException;
    }

    private static void worker(int w) throws SQLException {
        try (Connection conn = connect("jdbc-" + w);
                PreparedStatement doubled = conn.prepareStatement("SELECT ?::int * 2 + " + w);
                PreparedStatement echo = conn.prepareStatement("SELECT current_schema() || ':' || ?");
                PreparedStatement insert = conn.prepareStatement(
                        "INSERT INTO " + TABLE + " (worker, n) VALUES (?, ?)");
                PreparedStatement countRows = conn.prepareStatement(
                        "SELECT count(*) FROM " + TABLE + " WHERE worker = ? AND n >= ? AND n < ?");
                PreparedStatement divide = conn.prepareStatement("SELECT 10 / ?::int")) {
            for (int r = 0; r < ROUNDS; r++) {
                // Autocommit: the same statements outside a transaction block.
                conn.setAutoCommit(true);
                doubled.setInt(1, r);
                check(scalar(doubled) == r * 2L + w, "worker " + w + " round " + r + ": doubled");
                echo.setString(1, "w" + w);
                String got = text(echo);
                check(got.equals(DATABASE + ":w" + w), "worker " + w + ": echo gave " + got);

                // An explicit transaction with the same PreparedStatements.
                conn.setAutoCommit(false);
                insert.setInt(1, w);
                insert.setInt(2, r);
                check(insert.executeUpdate() == 1, "worker " + w + ": insert");
                QUERIES.incrementAndGet();
                check(rows(countRows, w, 0, 1000) == r + 1, "worker " + w + " round " + r + ": row count");
                doubled.setInt(1, r + 1);
                check(scalar(doubled) == (r + 1) * 2L + w, "worker " + w + ": doubled in a transaction");
                conn.commit();

                if (r % 3 == 0) {
                    errorInTransaction(conn, insert, countRows, w, r);
                }
                if (r % 4 == 1) {
                    savepointRollback(conn, insert, countRows, doubled, w, r);
                }
                if (r % 4 == 2) {
                    // An error outside a transaction block, then the connection goes on.
                    conn.setAutoCommit(true);
                    divide.setInt(1, 0);
                    expectError("22012", () -> scalar(divide), "worker " + w + ": division by zero");
                    divide.setInt(1, 5);
                    check(scalar(divide) == 2, "worker " + w + ": 10/5");
                }
                if (r % 5 == 3) {
                    batch(conn, insert, countRows, w, r);
                }
            }
        }
    }

    private static long rows(PreparedStatement countRows, int w, int from, int to) throws SQLException {
        countRows.setInt(1, w);
        countRows.setInt(2, from);
        countRows.setInt(3, to);
        return scalar(countRows);
    }

    /** Duplicate key, a statement never prepared before in the aborted transaction, rollback. */
    private static void errorInTransaction(
            Connection conn, PreparedStatement insert, PreparedStatement countRows, int w, int r)
            throws SQLException {
        conn.setAutoCommit(false);
        insert.setInt(1, w);
        insert.setInt(2, 1000 + r);
        insert.executeUpdate();
        QUERIES.incrementAndGet();
        expectError("23505", insert::executeUpdate, "worker " + w + ": duplicate insert");
        try (PreparedStatement fresh = conn.prepareStatement("SELECT " + w + " * 100 + ?::int /* fresh " + r + " */")) {
            fresh.setInt(1, r);
            expectError("25P02", () -> scalar(fresh), "worker " + w + ": statement in an aborted transaction");
            conn.rollback();
            QUERIES.incrementAndGet();
            check(scalar(fresh) == w * 100L + r, "worker " + w + ": fresh statement after rollback");
            check(scalar(fresh) == w * 100L + r, "worker " + w + ": fresh statement again");
        }
        check(rows(countRows, w, 1000, 2000) == 0, "worker " + w + ": rolled-back rows are visible");
        conn.commit();
    }

    /** An error after a savepoint, rollback to it, then the transaction commits. */
    private static void savepointRollback(Connection conn, PreparedStatement insert,
            PreparedStatement countRows, PreparedStatement doubled, int w, int r) throws SQLException {
        conn.setAutoCommit(false);
        insert.setInt(1, w);
        insert.setInt(2, 2000 + r);
        insert.executeUpdate();
        QUERIES.incrementAndGet();
        Savepoint sp = conn.setSavepoint();
        QUERIES.incrementAndGet();
        expectError("23505", insert::executeUpdate, "worker " + w + ": duplicate after savepoint");
        conn.rollback(sp);
        QUERIES.incrementAndGet();
        doubled.setInt(1, r);
        check(scalar(doubled) == r * 2L + w, "worker " + w + ": doubled after rollback to savepoint");
        conn.commit();
        check(rows(countRows, w, 2000, 3000) == 1, "worker " + w + ": the row before the savepoint");
        try (PreparedStatement del = conn.prepareStatement(
                "DELETE FROM " + TABLE + " WHERE worker = ? AND n >= 2000 AND n < 3000")) {
            del.setInt(1, w);
            check(del.executeUpdate() == 1, "worker " + w + ": delete the savepoint row");
            QUERIES.incrementAndGet();
        }
        conn.commit();
    }

    /** A JDBC batch: many Bind/Execute before one Sync, once committed, once failing. */
    private static void batch(Connection conn, PreparedStatement insert, PreparedStatement countRows,
            int w, int r) throws SQLException {
        conn.setAutoCommit(false);
        for (int k = 0; k < 4; k++) {
            insert.setInt(1, w);
            insert.setInt(2, 5000 + r * 10 + k);
            insert.addBatch();
        }
        int[] counts = insert.executeBatch();
        QUERIES.addAndGet(counts.length);
        check(counts.length == 4, "worker " + w + ": batch counts");
        conn.rollback();
        QUERIES.incrementAndGet();

        // A batch whose third row is a duplicate fails as a whole.
        for (int k = 0; k < 4; k++) {
            insert.setInt(1, w);
            insert.setInt(2, 6000 + r * 10 + (k == 2 ? 0 : k));
            insert.addBatch();
        }
        try {
            insert.executeBatch();
            throw new AssertionError("worker " + w + ": a batch with a duplicate succeeded");
        } catch (BatchUpdateException e) {
            QUERIES.incrementAndGet();
            check("23505".equals(e.getSQLState()), "worker " + w + ": batch failed with " + e.getSQLState());
        }
        conn.rollback();
        check(rows(countRows, w, 5000, 7000) == 0, "worker " + w + ": rolled-back batch rows are visible");
        conn.commit();
    }

    /** All connections open at once, used one after another by this thread. */
    private static void interleaved() throws SQLException {
        List<Connection> conns = new ArrayList<>();
        List<PreparedStatement> selects = new ArrayList<>();
        try {
            for (int c = 0; c < CLIENTS; c++) {
                Connection conn = connect("jdbc-open-" + c);
                conns.add(conn);
                selects.add(conn.prepareStatement("SELECT ?::int * 10 + " + c));
            }
            for (int r = 0; r < 7; r++) {
                for (int c = 0; c < CLIENTS; c++) {
                    Connection conn = conns.get(c);
                    PreparedStatement ps = selects.get(c);
                    conn.setAutoCommit(r % 2 == 0);
                    ps.setInt(1, r);
                    check(scalar(ps) == r * 10L + c, "open connection " + c + " round " + r);
                    if (r % 2 == 1) {
                        ps.setInt(1, r + 1);
                        check(scalar(ps) == (r + 1) * 10L + c, "open connection " + c + " in a transaction");
                        conn.commit();
                    }
                }
            }
        } finally {
            for (Connection conn : conns) {
                conn.close();
            }
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection conn = connect("jdbc-setup"); Statement st = conn.createStatement()) {
            st.execute("DROP TABLE IF EXISTS " + TABLE);
            st.execute("CREATE TABLE " + TABLE + " (id serial PRIMARY KEY, worker int NOT NULL, "
                    + "n int NOT NULL, UNIQUE (worker, n))");
            QUERIES.addAndGet(2);
            check(DATABASE.equals(conn.getSchema()), "current schema is " + conn.getSchema());
            QUERIES.incrementAndGet();
        }

        interleaved();

        List<String> failures = Collections.synchronizedList(new ArrayList<>());
        List<Thread> threads = new ArrayList<>();
        for (int w = 0; w < CLIENTS; w++) {
            final int worker = w;
            Thread t = new Thread(() -> {
                try {
                    worker(worker);
                } catch (Throwable e) {
                    failures.add("worker " + worker + ": " + e);
                    e.printStackTrace();
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        if (!failures.isEmpty()) {
            for (String f : failures) {
                System.err.println("FAIL " + f);
            }
            System.exit(1);
        }

        // Sequential connections: the same SQL prepared again on each, executed more than
        // five times inside and outside transactions, on whichever backend is free.
        for (int k = 0; k < 4; k++) {
            try (Connection conn = connect("jdbc-seq-" + k);
                    PreparedStatement ps = conn.prepareStatement("SELECT ?::int + " + k * 1000)) {
                for (int i = 0; i < 7; i++) {
                    conn.setAutoCommit(i % 2 == 0);
                    ps.setInt(1, i);
                    check(scalar(ps) == i + k * 1000L, "sequential " + k + ": " + i);
                    if (i % 2 == 1) {
                        conn.commit();
                    }
                }
            }
        }

        try (Connection conn = connect("jdbc-final");
                PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM " + TABLE)) {
            long total = scalar(ps);
            check(total == (long) CLIENTS * ROUNDS, total + " rows, expected " + CLIENTS * ROUNDS);
        }
        System.out.println("OK " + QUERIES.get() + " queries");
    }
}
