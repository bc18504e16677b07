#!/usr/bin/env bash
# Installs what pgtenant's tests, `pgtenant dev` and the benchmarks need on Debian/Ubuntu:
# a PostgreSQL server (initdb, postgres), psql and pgbench, and PgBouncer for the benchmarks;
# and for tests/drivers.rs pgJDBC (apt), psycopg 3 and asyncpg (pip) and node-postgres (npm),
# the last three into target/driver-deps/. Safe to run again; it installs only what is missing.
set -euo pipefail

need=()
have_pg_server() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_pg_server || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)
[ -e /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
# The driver tests' runtimes: a JVM for pgJDBC, pip for psycopg and asyncpg, npm for
# node-postgres. Without them those tests skip (saying why) instead of failing.
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v npm >/dev/null 2>&1 || need+=(npm)

if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need[@]}"
fi

# Driver tests: Python and Node drivers go under target/driver-deps/ (nothing global). A
# failure here only makes the matching driver test skip, so it warns instead of stopping.
deps="$(cd "$(dirname "$0")/.." && pwd)/target/driver-deps"
if command -v python3 >/dev/null 2>&1 &&
  ! PYTHONPATH="$deps/python" python3 -c 'import psycopg, asyncpg' >/dev/null 2>&1; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    --upgrade --target "$deps/python" 'psycopg[binary]' asyncpg ||
    echo "setup.sh: pip could not install psycopg/asyncpg; their driver tests will skip" >&2
fi
if command -v npm >/dev/null 2>&1 &&
  ! NODE_PATH="$deps/node/node_modules" node -e "require('pg')" >/dev/null 2>&1; then
  mkdir -p "$deps/node"
  npm install --silent --no-audit --no-fund --prefix "$deps/node" pg >/dev/null ||
    echo "setup.sh: npm could not install pg; the node-postgres driver test will skip" >&2
fi

# The Debian package starts a system cluster and PgBouncer we do not use; stop them so they
# do not compete for CPU in benchmarks. Ignore failures where no init system runs.
(service postgresql stop || true) >/dev/null 2>&1
(service pgbouncer stop || true) >/dev/null 2>&1
exit 0
