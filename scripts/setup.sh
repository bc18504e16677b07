#!/usr/bin/env bash
# Installs what pgtenant's tests, `pgtenant dev` and the benchmarks need on Debian/Ubuntu:
# a PostgreSQL server (initdb, postgres), psql and pgbench, and PgBouncer for the benchmarks.
# Safe to run again; it installs only what is missing.
set -euo pipefail

need=()
have_pg_server() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_pg_server || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)

if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need[@]}"
fi

# The Debian package starts a system cluster and PgBouncer we do not use; stop them so they
# do not compete for CPU in benchmarks. Ignore failures where no init system runs.
(service postgresql stop || true) >/dev/null 2>&1
(service pgbouncer stop || true) >/dev/null 2>&1
exit 0
