#!/usr/bin/env python3
"""Fleet rollout: how long does `pgtenant migrate apply` take over 1,000 tenant schemas, and
what do clients of the migrating tenants see meanwhile?

One run builds pgtenant in release mode, starts `pgtenant dev` (a throwaway PostgreSQL plus a
catalog-backed proxy), writes a 20-table migration set, points a copy of dev's configuration
at it and creates N tenants with `pgtenant tenant create` (several at a time). It then writes
one more migration that adds a column and an index to 3 tables, starts a steady `pgbench` load
through the proxy on a few of the tenants (`-R` rate-limited, per-transaction latency log),
lets it run alone for a baseline, and runs `pgtenant migrate apply` over the whole fleet.

Reported: total rollout time, per-tenant time p50/p95 (from the rollout's own lines), the
longest pause the rollout recorded, and for the clients: p50/p99/max latency before and during
the rollout, the p99 bump, and failed transactions. Goals (reported, never a reason to fail):
1,000 schemas in under 60 s, a client p99 bump under 100 ms, 0 client errors. The report is
printed and written to bench/results/rollout-<timestamp>.md.

Python 3.11+, standard library only (bench/benchlib.py). See bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402  (bench/benchlib.py: what the bench scripts share)
    BINARY,
    REPO,
    Session,
    bench_config,
    create,
    git_commit,
    load_average,
    log,
    log_findings,
    percentile,
    prepare,
    run_session,
    set_log_name,
    start_dev,
    write_migrations,
)

GOAL_TOTAL_S = 60.0
GOAL_BUMP_MS = 100.0

MIGRATION = """-- Adds a column and an index to three tables.
ALTER TABLE table_01 ADD COLUMN note text;
CREATE INDEX table_01_note ON table_01 (note);
ALTER TABLE table_02 ADD COLUMN note text;
CREATE INDEX table_02_note ON table_02 (note);
ALTER TABLE table_03 ADD COLUMN note text;
CREATE INDEX table_03_note ON table_03 (note);
"""

LOAD_SCRIPT = """\\set id random(1, 1000)
SELECT id, name, status FROM table_01 WHERE id = :id;
INSERT INTO table_02 (name) VALUES ('load');
"""

APPLIED = re.compile(r"^\s+(\S+): applied \S+ \(paused ([\d.]+) ms\) \(([\d.]+) ms\)$")


def create_fleet(config: Path, count: int, parallel: int) -> dict[str, str]:
    """Creates bench_0000 … in parallel; returns every tenant's printed DATABASE_URL."""
    names = [f"bench_{i:04d}" for i in range(count)]
    urls: dict[str, str] = {}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        for name, (_, _, url) in zip(names, pool.map(lambda n: create(config, n), names)):
            urls[name] = url
            if len(urls) % 100 == 0:
                log(f"created {len(urls)}/{count} tenants")
    log(f"created {count} tenants in {time.monotonic() - started:.1f} s")
    return urls


def start_load(session: Session, args, urls: list[str]) -> list[tuple[subprocess.Popen, Path]]:
    """One rate-limited pgbench per load tenant, logging every transaction's latency."""
    script = session.workdir / "load.sql"
    script.write_text(LOAD_SCRIPT)
    runs = []
    for i, url in enumerate(urls):
        prefix = session.workdir / f"load{i}"
        argv = [args.pgbench, "-n", "-M", "simple", "-c", "2", "-j", "1",
                "-R", str(args.load_rate), "-T", str(args.load_seconds), "-f", str(script),
                "-l", "--log-prefix", str(prefix), "--max-tries", "1", "--failures-detailed",
                url.replace("sslmode=require", "sslmode=disable")]
        out = open(session.workdir / f"load{i}.out", "w")
        proc = session.children.start(f"pgbench load {i}", argv, signal.SIGINT,
                                      stdout=out, stderr=subprocess.STDOUT)
        runs.append((proc, prefix))
    return runs


def run_rollout(config: Path, args) -> tuple[float, str, int]:
    """`pgtenant migrate apply`; returns wall seconds, stdout and the exit code."""
    argv = [str(BINARY), "migrate", "apply", "--config", str(config),
            "--concurrency", str(args.concurrency), "--tenant", "bench_*",
            "--busy-tenants", args.busy_tenants]
    log(f"running: {' '.join(argv)}")
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True,
                         env={**os.environ, "PGTENANT_LOG": "warn"})
    return time.monotonic() - started, out.stdout + out.stderr, out.returncode


def read_latencies(prefixes: list[Path]) -> list[tuple[float, float, bool]]:
    """(end time in epoch seconds, latency ms, failed) for every logged transaction."""
    rows = []
    for prefix in prefixes:
        for path in prefix.parent.glob(prefix.name + ".*"):
            # pgbench names its logs <prefix>.<pid>[.<thread>]; skip anything else.
            if not path.name[len(prefix.name) + 1:].replace(".", "").isdigit():
                continue
            for line in path.read_text().splitlines():
                fields = line.split()
                if len(fields) < 6 or not (fields[4].isdigit() and fields[5].isdigit()):
                    continue
                end = int(fields[4]) + int(fields[5]) / 1e6
                failed = fields[2] in ("failed", "serialization", "deadlock", "skipped")
                if not failed and not fields[2].isdigit():
                    continue
                latency = 0.0 if failed else int(fields[2]) / 1000
                rows.append((end, latency, failed))
    return rows


def window(rows, start: float, end: float) -> dict[str, float]:
    inside = [r for r in rows if start <= r[0] < end]
    ok = [r[1] for r in inside if not r[2]]
    if not ok:
        return {"count": 0, "failed": sum(r[2] for r in inside)}
    return {"count": len(inside), "failed": sum(r[2] for r in inside),
            "p50": percentile(ok, 50), "p99": percentile(ok, 99), "max": max(ok)}


def measure(session: Session, args) -> None:
    dev = start_dev(session.children, session.workdir, ["warmup"])
    migrations = session.workdir / "migrations"
    write_migrations(migrations, args.tables)
    config = session.workdir / "pgtenant.toml"
    bench_config(dev.config_path, migrations, config)
    urls = create_fleet(config, args.tenants, args.create_parallel)

    (migrations / f"{args.tables + 1:04d}_add_notes.sql").write_text(MIGRATION)
    args.loaded = sorted(urls)[: args.load_tenants]
    load_urls = [urls[name] for name in args.loaded]
    loads = start_load(session, args, load_urls)
    time.sleep(args.baseline)

    started = time.time()
    took, output, code = run_rollout(config, args)
    ended = time.time()
    for proc, _ in loads:
        proc.wait(timeout=args.load_seconds + 30)

    session.results = {
        "took": took, "output": output, "code": code, "started": started, "ended": ended,
        "rows": read_latencies([prefix for _, prefix in loads]),
    }


def report(session: Session, args) -> str | None:
    results = getattr(session, "results", None)
    if results is None:
        return None
    per_tenant, pauses, loaded_pauses = [], [], []
    for line in results["output"].splitlines():
        match = APPLIED.match(line)
        if match:
            pauses.append(float(match.group(2)))
            per_tenant.append(float(match.group(3)))
            if match.group(1) in args.loaded:
                loaded_pauses.append(float(match.group(2)))
    rows = results["rows"]
    before = window(rows, results["started"] - args.baseline, results["started"])
    during = window(rows, results["started"], results["ended"])
    bump = during.get("p99", 0.0) - before.get("p99", 0.0)
    failed = sum(r[2] for r in rows)

    def fmt(w, key):
        return f"{w[key]:.1f}" if key in w else "—"

    verdict_total = "met" if results["took"] < GOAL_TOTAL_S else "not met"
    verdict_bump = "met" if bump < GOAL_BUMP_MS and failed == 0 else "not met"
    tail = "\n".join(results["output"].splitlines()[-12:])
    lines = [
        f"# pgtenant fleet rollout, {args.started_at}",
        "",
        f"{args.tenants} tenants × {args.tables} tables; migration: a column and an index on 3 "
        f"tables; `--concurrency {args.concurrency} --busy-tenants {args.busy_tenants}`; load: {args.load_tenants} tenants × "
        f"`pgbench -c 2 -R {args.load_rate}` (select + insert) through the proxy. Host "
        f"{platform.node()}, {os.cpu_count()} CPUs, load {args.load_at_start} at start, "
        f"{load_average()} at the end; commit {git_commit()}.",
        "",
        "| measure | value | goal |",
        "| --- | ---: | --- |",
        f"| rollout wall time (s) | {results['took']:.1f} | < {GOAL_TOTAL_S:.0f} s: "
        f"{verdict_total} |",
        f"| tenants applied | {len(per_tenant)} | {args.tenants} |",
        f"| per-tenant time p50 / p95 (ms) | "
        f"{percentile(per_tenant, 50) if per_tenant else 0:.1f} / "
        f"{percentile(per_tenant, 95) if per_tenant else 0:.1f} | |",
        f"| longest pause recorded (ms) | {max(pauses, default=0):.1f} | max_pause 2 s |",
        f"| pauses of the loaded tenants (ms) | "
        f"{', '.join(f'{p:.0f}' for p in loaded_pauses) or '—'} | |",
        f"| client p99 before / during (ms) | {fmt(before, 'p99')} / {fmt(during, 'p99')} | |",
        f"| client p99 bump (ms) | {bump:.1f} | < {GOAL_BUMP_MS:.0f} ms: {verdict_bump} |",
        f"| client max latency during (ms) | {fmt(during, 'max')} | |",
        f"| client transactions before / during | {before['count']} / {during['count']} | |",
        f"| failed client transactions | {failed} | 0 |",
        f"| `migrate apply` exit code | {results['code']} | 0 |",
        "",
        "Last lines of `migrate apply`:",
        "",
        "```",
        tail,
        "```",
        "",
        "## Proxy log",
        "",
        log_findings(session.workdir),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tenants", type=int, default=1000, help="tenant schemas")
    p.add_argument("--tables", type=int, default=20, help="tables per schema")
    p.add_argument("--concurrency", type=int, default=10, help="migrate apply --concurrency")
    p.add_argument("--create-parallel", type=int, default=4, help="tenant creates at once")
    p.add_argument("--load-tenants", type=int, default=4, help="tenants under client load")
    p.add_argument("--load-rate", type=int, default=50, help="pgbench -R per load tenant")
    p.add_argument("--load-seconds", type=int, default=90,
                   help="pgbench -T; must outlast the baseline plus the rollout")
    p.add_argument("--baseline", type=float, default=5.0, help="seconds of load alone first")
    p.add_argument("--busy-tenants", choices=["solo", "shared"], default="solo",
                   help="migrate apply --busy-tenants")
    p.add_argument("--no-build", action="store_true", help="use the existing release binary")
    p.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    set_log_name("rollout")
    args = parse_args(argv)
    notes: list[str] = []
    prepare(args, notes, ["pgbench", "psql"])
    return run_session(args, "pgtenant-rollout-", "rollout-",
                       lambda s: measure(s, args), lambda s: report(s, args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
