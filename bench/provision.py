#!/usr/bin/env python3
"""Provisioning: how long does `pgtenant tenant create` take with a 20-table migration set?

One run builds pgtenant in release mode, starts `pgtenant dev` (a throwaway PostgreSQL plus a
catalog-backed proxy), writes a migration set of 20 tables (one file each, with indexes and
foreign keys) into a temporary directory, points a copy of dev's configuration file at it and
runs `pgtenant tenant create bench_<i>` N times in a row. For each run it keeps the wall time
of the command and the per-step timings the command prints, then checks that the last tenant
logs in through the proxy with the printed URL. The goal, p95 of the total under one second,
is reported as met or not met; it is never a reason to fail. The report is printed and written
to bench/results/provision-<timestamp>.md.

Python 3.11+, standard library only. Shares its helpers with compare.py and noisy_neighbour.py
(bench/benchlib.py). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402  (bench/benchlib.py: what the bench scripts share)
    BINARY,
    REPO,
    Children,
    Stop,
    bench_config,
    build_release,
    create,
    find_program,
    install_signal_handlers,
    load_average,
    log,
    percentile,
    start_dev,
    tool_dirs,
    write_migrations,
    write_results,
)

# The goal this benchmark tracks; reported, never a reason to fail.
GOAL_P95_S = 1.0

def check_login(psql: str | None, url: str, tables: int) -> str:
    """The last tenant's printed URL must log in through the proxy and see its tables."""
    if psql is None:
        return "skipped (no psql)"
    deadline = time.monotonic() + 5
    sql = "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
    while True:
        out = subprocess.run([psql, "-X", "-Atc", sql, url], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() == str(tables):
            return f"ok ({tables} tables through the proxy)"
        if time.monotonic() > deadline:
            return f"FAILED: {out.stdout.strip()} {out.stderr.strip()}"
        time.sleep(0.1)


def report(walls: list[float], runs: list[dict[str, float]], login: str, args) -> str:
    totals = [r["total"] / 1000 for r in runs]
    p95 = percentile(totals, 95)
    steps = [k for k in runs[0] if k != "total"]
    means = {k: sum(r.get(k, 0.0) for r in runs) / len(runs) for k in steps}
    slowest = max(means, key=means.get)
    verdict = "met" if p95 < GOAL_P95_S else "not met"

    lines = [
        f"# pgtenant provisioning, {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        "",
        f"{len(runs)} × `pgtenant tenant create bench_<i>` with {args.tables} migration files "
        f"(one table, two indexes each); host {platform.node()}, {os.cpu_count()} CPUs, "
        f"load {load_average()} at the end.",
        "",
        "| measure | p50 | p95 | max |",
        "| --- | ---: | ---: | ---: |",
        f"| total as printed (ms) | {percentile(totals, 50) * 1000:.1f} | {p95 * 1000:.1f} "
        f"| {max(totals) * 1000:.1f} |",
        f"| wall time of the command (ms) | {percentile(walls, 50) * 1000:.1f} "
        f"| {percentile(walls, 95) * 1000:.1f} | {max(walls) * 1000:.1f} |",
        "",
        "| step | mean (ms) |",
        "| --- | ---: |",
        *[f"| {k} | {v:.1f} |" for k, v in means.items()],
        "",
        f"Slowest step on average: **{slowest}** ({means[slowest]:.1f} ms).",
        f"Goal p95 total < {GOAL_P95_S:.0f} s: **{verdict}** (p95 {p95 * 1000:.1f} ms).",
        f"Last tenant's DATABASE_URL through the proxy: {login}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--count", type=int, default=50, help="tenants to create")
    p.add_argument("--tables", type=int, default=20, help="migration files (one table each)")
    p.add_argument("--port", type=int, default=0, help="proxy port; 0 picks a free one")
    p.add_argument("--no-build", action="store_true", help="use the existing release binary")
    p.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="pgtenant-provision-"))
    try:
        build_release(args)
        dev = start_dev(children, workdir, ["warmup"], port=args.port)
        write_migrations(workdir / "migrations", args.tables)
        config = workdir / "pgtenant.toml"
        bench_config(dev.config_path, workdir / "migrations", config)

        walls, runs, url = [], [], ""
        for i in range(args.count):
            wall, steps, url = create(config, f"bench_{i}")
            walls.append(wall)
            runs.append(steps)
        log(f"created {args.count} tenants")

        login = check_login(find_program("psql", tool_dirs()), url, args.tables)
        write_results(report(walls, runs, login, args), args.results_dir, "provision-")
        return 0
    except (Stop, RuntimeError, subprocess.CalledProcessError) as error:
        log(f"stopped: {error} (working directory kept: {workdir})")
        return 1
    finally:
        children.stop_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
