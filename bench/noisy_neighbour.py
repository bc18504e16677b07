#!/usr/bin/env python3
"""Noisy neighbour: does one tenant's flood change another tenant's latency through pgtenant?

One run builds pgtenant in release mode, starts `pgtenant dev` with two tenants, `noisy` and
`quiet`, each with its own small backend pool, and loads pgbench tables into both tenants'
schemas through the proxy. The quiet tenant then runs the same light, rate-limited
select-only load in every phase, first alone and then while the noisy tenant floods the
proxy, and the quiet tenant's per-transaction latency distribution is computed from
pgbench's per-transaction log. Backend connections per tenant are sampled from
pg_stat_activity every 0.5 s. The report is printed and written to
bench/results/noisy-<timestamp>.md. Everything started is stopped again on exit, Ctrl-C
included.

Python 3.11+, standard library only. Shares its helpers with compare.py and provision.py
(bench/benchlib.py). See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402  (bench/benchlib.py: what the bench scripts share)
    CLK_TCK,
    REPO,
    Children,
    DevBanner,
    Session,
    fmt_num,
    git_commit,
    host_cpu_ticks,
    load_average,
    log,
    log_findings,
    prepare,
    proc_cpu_seconds,
    redact,
    run_checked,
    run_session,
    server_version,
    set_log_name,
    start_dev,
    tool_version,
)

NOISY = "noisy"
QUIET = "quiet"

# The goal this benchmark tracks; reported per phase, never a reason to fail.
GOAL_P99_RATIO = 2.0  # quiet p99 during a flood / quiet p99 alone, at most

PHASES = ("alone", "flood", "flood-rate", "pool-hold", "alone-again")
PHASE_TEXT = {
    "alone": "quiet alone (noisy idle)",
    "flood": "noisy flat out",
    "flood-rate": "noisy rate-limited",
    "pool-hold": "noisy holds its pool (pg_sleep)",
    "alone-again": "quiet alone again",
}

# pgbench's messages for errors pgtenant raises itself (see src/pool and src/protocol).
ERROR_CLASSES = [
    ("53300 queue timeout", re.compile(r"no connection for tenant")),
    ("53300 client cap", re.compile(r"too many client connections for tenant")),
    ("53400 rate limit", re.compile(r"over its limit of .* transactions per second")),
]


# --------------------------------------------------------------------------------------------
# Loading the tenants' tables


def prepare_tables(dev: DevBanner, args) -> None:
    for tenant in (NOISY, QUIET):
        log(f"pgbench -i -s {args.scale} through pgtenant as `{dev.tenants[tenant].user}` "
            f"of tenant {tenant}")
        started = time.monotonic()
        run_checked([args.pgbench, "-i", "-q", "-s", str(args.scale),
                     dev.tenant_url(tenant, args.sslmode)],
                    f"pgbench -i for tenant {tenant}")
        log(f"  done in {time.monotonic() - started:.1f} s")
    where = run_checked(
        [args.psql, "-X", "-Atc",
         "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
         "WHERE c.relname = 'pgbench_accounts' ORDER BY 1", dev.superuser_url],
        "locating pgbench_accounts",
    ).stdout.split()
    if where != sorted([NOISY, QUIET]):
        raise RuntimeError(f"pgbench_accounts should be in schemas noisy and quiet, found: {where}")


# --------------------------------------------------------------------------------------------
# CPU accounting: how much of the machine was used by processes this script did not start


def tree_cpu_ticks(root: int) -> int:
    """utime + stime + cutime + cstime of `root` and all its live descendants, in ticks.

    Descendants that exited were reaped by a parent in the tree, so their time is in that
    parent's cutime/cstime.
    """
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        # After the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14)
        stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children.get(pid, []))
    return total


def own_cpu_ticks(dev_pid: int) -> int:
    """CPU of this script, its reaped children (pgbench, psql) and the pgtenant dev tree."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return round(seconds * CLK_TCK) + tree_cpu_ticks(dev_pid)


# --------------------------------------------------------------------------------------------
# Sampling backend connections


class BackendSampler:
    """Backend connections per tenant role from pg_stat_activity, every 0.5 s.

    One psql process runs the query under `\\watch`, so sampling costs one PostgreSQL backend
    (the superuser's, not counted) instead of a login every half second. The query counts the
    same rows as `SELECT count(*), usename FROM pg_stat_activity WHERE usename IN ('noisy',
    'quiet') GROUP BY usename`, but always returns one row, zeros included.
    """

    def __init__(self, children: Children, args, dev: DevBanner, workdir: Path, name: str):
        query = (
            "SELECT extract(epoch FROM clock_timestamp()), "
            f"count(*) FILTER (WHERE usename = '{QUIET}'), "
            f"count(*) FILTER (WHERE usename = '{NOISY}') "
            f"FROM pg_stat_activity WHERE usename IN ('{QUIET}', '{NOISY}') "
            f"\\watch {args.sample_interval}\n"
        )
        script = workdir / f"sample-{name}.sql"
        script.write_text(query)
        self.children = children
        self.samples: list[tuple[float, int, int]] = []  # (epoch, quiet, noisy)
        self.proc = children.start(
            "psql sampler", [args.psql, "-X", "-q", "-At", "-f", str(script), dev.superuser_url],
            signal.SIGTERM, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.strip().split("|")
            if len(parts) == 3:
                try:
                    self.samples.append((float(parts[0]), int(parts[1]), int(parts[2])))
                except ValueError:
                    pass

    def stop(self) -> None:
        self.children.stop(self.proc, timeout=5)
        self.thread.join(timeout=5)

    def max(self, index: int) -> int | None:
        return max((s[index] for s in self.samples), default=None)


# --------------------------------------------------------------------------------------------
# pgbench runs


@dataclasses.dataclass
class Bench:
    command: str = ""
    exit_code: int | None = None
    tps: float | None = None
    latency_avg_ms: float | None = None
    transactions: int | None = None
    failed: int = 0  # pgbench's "number of failed transactions"
    aborted: int = 0  # clients that stopped on an error (PostgreSQL 15 pgbench: any non-retried error)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)  # error class -> count
    output: str = ""
    timed_out: bool = False

    @property
    def failed_total(self) -> int:
        return self.failed + self.aborted


def start_pgbench(children: Children, name: str, argv: list[str], workdir: Path):
    out = open(workdir / f"{name}.out", "w", encoding="utf-8")
    err = open(workdir / f"{name}.err", "w", encoding="utf-8")
    proc = children.start(name, argv, signal.SIGINT, stdout=out, stderr=err)
    return proc, out, err


def finish_pgbench(children: Children, proc, files, name: str, argv: list[str], conn_url: str,
                   workdir: Path, timeout: float) -> Bench:
    bench = Bench(command=" ".join(argv).replace(conn_url, redact(conn_url)))
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        bench.timed_out = True
        log(f"{name} did not finish within {timeout:.0f} s; stopping it")
    children.stop(proc, timeout=10)
    for f in files:
        f.close()
    bench.exit_code = proc.returncode
    stdout = (workdir / f"{name}.out").read_text(errors="replace")
    stderr = (workdir / f"{name}.err").read_text(errors="replace")
    if m := re.search(r"^tps = ([\d.]+)", stdout, re.M):
        bench.tps = float(m.group(1))
    if m := re.search(r"^latency average = ([\d.]+) ms", stdout, re.M):
        bench.latency_avg_ms = float(m.group(1))
    if m := re.search(r"number of transactions actually processed: (\d+)", stdout):
        bench.transactions = int(m.group(1))
    if m := re.search(r"number of failed transactions: (\d+)", stdout):
        bench.failed = int(m.group(1))
    for line in stderr.splitlines():
        if "aborted in command" in line:
            bench.aborted += 1
        if "ERROR" in line or "FATAL" in line or "aborted" in line:
            kind = next((k for k, rx in ERROR_CLASSES if rx.search(line)), None)
            if kind is None and ("ERROR:" in line or "FATAL:" in line):
                kind = "other"
            if kind:
                bench.errors[kind] = bench.errors.get(kind, 0) + 1
    if bench.timed_out or bench.exit_code != 0 or bench.errors:
        bench.output = (stderr.strip() + "\n" + stdout.strip()).strip()[-4000:]
    return bench


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]


@dataclasses.dataclass
class Latency:
    count: int = 0
    failed_or_skipped: int = 0
    # milliseconds; "total" includes schedule lag (pgbench -R), "service" excludes it
    total: dict[str, float | None] = dataclasses.field(default_factory=dict)
    service: dict[str, float | None] = dataclasses.field(default_factory=dict)
    lag_max: float | None = None


QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p99.9": 0.999, "max": 1.0}


def read_latency_log(prefix: Path) -> Latency:
    """pgbench -l lines: client_id transaction_no time script_no time_epoch time_us [lag].

    With -R, `time` runs from the transaction's scheduled start, so it includes the schedule
    lag (column 7); `time - lag` is the time from the actual start.
    """
    total: list[float] = []
    service: list[float] = []
    lags: list[float] = []
    lat = Latency()
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        for line in path.read_text(errors="replace").splitlines():
            cols = line.split()
            if len(cols) < 6:
                continue
            if not cols[2].isdigit():  # "failed" or "skipped"
                lat.failed_or_skipped += 1
                continue
            t = int(cols[2]) / 1000.0
            lag = int(cols[6]) / 1000.0 if len(cols) > 6 and cols[6].isdigit() else 0.0
            total.append(t)
            service.append(t - lag)
            lags.append(lag)
    total.sort()
    service.sort()
    lat.count = len(total)
    lat.total = {k: percentile(total, q) for k, q in QUANTILES.items()}
    lat.service = {k: percentile(service, q) for k, q in QUANTILES.items()}
    lat.lag_max = max(lags, default=None)
    return lat


@dataclasses.dataclass
class Phase:
    name: str
    noisy_desc: str
    quiet: Bench | None = None
    noisy: Bench | None = None
    latency: Latency | None = None
    max_quiet: int | None = None
    max_noisy: int | None = None
    samples: int = 0
    host_busy_pct: float | None = None
    others_pct: float | None = None  # host CPU used by processes this script did not start
    proxy_cpu_s: float | None = None
    wall_s: float = 0.0

    @property
    def quiet_ok(self) -> bool:
        q = self.quiet
        return (q is not None and q.exit_code == 0 and not q.timed_out and not q.errors
                and q.failed_total == 0 and self.latency is not None and self.latency.count > 0)


def quiet_argv(args, conn_url: str, log_prefix: Path, duration: int) -> list[str]:
    return [args.pgbench, "-n", "-S", "-M", args.mode,
            "-c", str(args.quiet_clients), "-j", "1", "-R", str(args.quiet_rate),
            "-T", str(duration), "-l", "--log-prefix", str(log_prefix), conn_url]


def noisy_argv(args, phase: str, conn_url: str, workdir: Path) -> tuple[list[str], str]:
    argv = [args.pgbench, "-n", "-M", args.mode,
            "-c", str(args.noisy_clients), "-j", str(min(args.noisy_jobs, args.noisy_clients)),
            "-T", str(args.duration + 2 * args.lead)]
    if phase == "pool-hold":
        script = workdir / "hold.sql"
        script.write_text(f"SELECT pg_sleep({args.noisy_sleep_ms / 1000.0});\n")
        argv += ["-f", str(script)]
        desc = f"{args.noisy_clients} clients, `SELECT pg_sleep({args.noisy_sleep_ms / 1000.0})`"
    else:
        argv += ["-b", args.noisy_builtin]
        desc = f"{args.noisy_clients} clients, {args.noisy_builtin}"
    if phase == "flood-rate":
        argv += ["-R", str(args.noisy_rate)]
        desc += f", -R {args.noisy_rate}"
    elif phase == "flood":
        desc += ", flat out"
    return argv + [conn_url], desc


def run_phase(children: Children, args, dev: DevBanner, workdir: Path, name: str) -> Phase:
    phase = Phase(name, "idle")
    quiet_url = dev.tenant_url(QUIET, args.sslmode)
    noisy_url = dev.tenant_url(NOISY, args.sslmode)
    log_dir = workdir / f"log-{name}"
    log_dir.mkdir()
    prefix = log_dir / "quiet"

    sampler = BackendSampler(children, args, dev, workdir, name)
    cpu0 = proc_cpu_seconds(dev.proc.pid)
    own0 = own_cpu_ticks(dev.proc.pid)
    busy0, total0 = host_cpu_ticks()
    t0 = time.monotonic()
    noisy = None
    try:
        if name not in ("alone", "alone-again"):
            argv, phase.noisy_desc = noisy_argv(args, name, noisy_url, workdir)
            proc, out, err = start_pgbench(children, f"noisy-{name}", argv, workdir)
            noisy = (proc, (out, err), argv)
            time.sleep(args.lead)  # let its clients log in before the quiet tenant starts
        q_argv = quiet_argv(args, quiet_url, prefix, args.duration)
        q_proc, q_out, q_err = start_pgbench(children, f"quiet-{name}", q_argv, workdir)
        phase.quiet = finish_pgbench(children, q_proc, (q_out, q_err), f"quiet-{name}", q_argv,
                                     quiet_url, workdir, args.duration + 60)
        if noisy is not None:
            proc, files, argv = noisy
            phase.noisy = finish_pgbench(children, proc, files, f"noisy-{name}", argv,
                                         noisy_url, workdir, 2 * args.lead + 60)
    finally:
        sampler.stop()
    phase.wall_s = time.monotonic() - t0
    busy1, total1 = host_cpu_ticks()
    own1 = own_cpu_ticks(dev.proc.pid)
    if total1 > total0:
        phase.host_busy_pct = 100.0 * (busy1 - busy0) / (total1 - total0)
        others = (busy1 - busy0) - (own1 - own0)
        phase.others_pct = max(0.0, 100.0 * others / (total1 - total0))
    if dev.proc.poll() is None:
        phase.proxy_cpu_s = proc_cpu_seconds(dev.proc.pid) - cpu0
    phase.latency = read_latency_log(prefix)
    phase.samples = len(sampler.samples)
    phase.max_quiet, phase.max_noisy = sampler.max(1), sampler.max(2)
    return phase


def warm_up(children: Children, args, dev: DevBanner, workdir: Path) -> None:
    """Open both pools' connections and warm the caches, unrecorded."""
    log(f"warm-up: {args.warmup} s of pgbench -S for both tenants, unrecorded")
    running = []
    for tenant in (QUIET, NOISY):
        conn = dev.tenant_url(tenant, args.sslmode)
        argv = [args.pgbench, "-n", "-S", "-M", args.mode, "-c", str(args.pool_size), "-j", "1",
                "-T", str(args.warmup), conn]
        proc, out, err = start_pgbench(children, f"warmup-{tenant}", argv, workdir)
        running.append((tenant, proc, (out, err), argv, conn))
    for tenant, proc, files, argv, conn in running:
        b = finish_pgbench(children, proc, files, f"warmup-{tenant}", argv, conn, workdir,
                           args.warmup + 60)
        if b.exit_code != 0:
            raise RuntimeError(f"warm-up of tenant {tenant} failed (exit {b.exit_code}):\n"
                               f"{b.output}")


# --------------------------------------------------------------------------------------------
# Reporting


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def baseline(phases: list[Phase]) -> Phase | None:
    return next((p for p in phases if p.name == "alone" and p.quiet_ok), None)


def ratio_verdict(p: Phase, base: Phase | None) -> tuple[float | None, str]:
    if p.name in ("alone", "alone-again") and p is base:
        return None, "baseline"
    if base is None or not p.quiet_ok:
        return None, "n/a"
    r = p.latency.total["p99"] / base.latency.total["p99"]
    if p.name == "alone-again":
        return r, "(drift check)"
    return r, ("met" if r <= GOAL_P99_RATIO else "not met") + f" (goal ≤ {GOAL_P99_RATIO:g}×)"


def summary_table(args, phases: list[Phase]) -> str:
    base = baseline(phases)
    head = (
        "| phase | noisy load | quiet p50 ms | quiet p99 ms | quiet TPS | noisy TPS "
        "| noisy failed | max backends quiet/noisy | quiet p99 / alone | host CPU busy % "
        "| CPU % of others |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|\n"
    )
    rows = []
    for p in phases:
        lat = p.latency
        quiet_cells = (
            f"{ms(lat.total['p50'])} | {ms(lat.total['p99'])} | {fmt_num(p.quiet.tps, 1)}"
            if p.quiet_ok else "ERROR | ERROR | " + fmt_num(p.quiet.tps if p.quiet else None, 1)
        )
        if p.noisy is None:
            noisy_tps, noisy_failed = "—", "—"
        else:
            noisy_tps = fmt_num(p.noisy.tps, 0) if p.noisy.tps is not None else "ERROR"
            noisy_failed = str(p.noisy.failed_total)
            if p.noisy.errors:
                noisy_failed += " (" + ", ".join(f"{n}× {k}" for k, n in p.noisy.errors.items()) + ")"
        backends = (f"{fmt_num(p.max_quiet)} / {fmt_num(p.max_noisy)}"
                    if p.samples else "no samples")
        r, verdict = ratio_verdict(p, base)
        ratio_cell = verdict if r is None else f"{r:.2f}× {verdict}"
        rows.append(
            f"| {p.name} | {p.noisy_desc} | {quiet_cells} | {noisy_tps} | {noisy_failed} "
            f"| {backends} | {ratio_cell} | {fmt_num(p.host_busy_pct, 0)} "
            f"| {fmt_num(p.others_pct, 0)} |"
        )
    return head + "\n".join(rows) + "\n"


def detail_table(phases: list[Phase]) -> str:
    head = (
        "| phase | quiet txns | quiet failed | p50 | p90 | p99 | p99.9 | max "
        "| p50 excl. lag | p99 excl. lag | max lag | noisy txns | noisy latency avg "
        "| noisy aborted clients | samples | proxy CPU s | wall s |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    rows = []
    for p in phases:
        lat = p.latency or Latency()
        t, s = lat.total, lat.service
        rows.append(
            f"| {p.name} | {fmt_num(lat.count)} "
            f"| {(p.quiet.failed_total if p.quiet else 0) + lat.failed_or_skipped} "
            f"| {ms(t.get('p50'))} | {ms(t.get('p90'))} | {ms(t.get('p99'))} "
            f"| {ms(t.get('p99.9'))} | {ms(t.get('max'))} | {ms(s.get('p50'))} "
            f"| {ms(s.get('p99'))} | {ms(lat.lag_max)} "
            f"| {fmt_num(p.noisy.transactions) if p.noisy else '—'} "
            f"| {ms(p.noisy.latency_avg_ms) if p.noisy else '—'} "
            f"| {p.noisy.aborted if p.noisy else '—'} | {p.samples} "
            f"| {fmt_num(p.proxy_cpu_s, 2)} | {p.wall_s:.1f} |"
        )
    return head + "\n".join(rows) + "\n"


def ratio_lines(phases: list[Phase]) -> str:
    base = baseline(phases)
    if base is None:
        return "No usable baseline (phase `alone`), so no ratio.\n"
    if len(phases) == 1:
        return "Only the baseline ran.\n"
    out = []
    for p in phases:
        if p is base:
            continue
        r, verdict = ratio_verdict(p, base)
        if r is None:
            out.append(f"- {p.name}: n/a (the quiet run failed)")
        else:
            out.append(f"- {p.name}: quiet p99 {ms(p.latency.total['p99'])} ms / "
                       f"{ms(base.latency.total['p99'])} ms alone = **{r:.2f}×** {verdict}")
    return "\n".join(out) + "\n"


def problems_section(phases: list[Phase]) -> str:
    out = []
    for p in phases:
        for who, b in (("quiet", p.quiet), ("noisy", p.noisy)):
            if b is None or not b.output:
                continue
            expected = who == "noisy" and set(b.errors) <= {"53300 queue timeout"} \
                and not b.timed_out
            label = "expected for the noisy tenant" if expected else "UNEXPECTED"
            out.append(f"### {p.name}, {who} tenant: exit {b.exit_code}"
                       f"{', timed out' if b.timed_out else ''}, {label}\n\n"
                       f"```\n$ {b.command}\n{b.output}\n```\n")
    if not out:
        return ""
    return "## pgbench errors\n\n" + "\n".join(out)


def report(args, phases: list[Phase], dev: DevBanner | None, notes: list[str], interrupted: bool,
           workdir: Path) -> str:
    parts = [
        "# pgtenant noisy neighbour" + (" (INTERRUPTED, partial)" if interrupted else "") + "\n",
        f"Run at {args.started_at}.\n",
        f"- pgtenant commit: `{git_commit()}`; `pgtenant dev --tenants {NOISY},{QUIET} --pool-size "
        f"{args.pool_size} --worker-threads {args.worker_threads}` (transaction pooling, a pool "
        f"of {args.pool_size} backends per tenant), `sslmode={args.sslmode}`\n"
        f"- host: {platform.node()}, {os.cpu_count()} CPUs shared by pgbench, the proxy and "
        f"PostgreSQL; kernel {platform.release()}\n"
        f"- PostgreSQL {server_version(args.psql, dev)}; {tool_version([args.pgbench, '--version'])}; scale "
        f"{args.scale} in each tenant's schema\n"
        f"- quiet tenant, every phase: `pgbench -n -S -M {args.mode} -c {args.quiet_clients} "
        f"-j 1 -R {args.quiet_rate} -T {args.duration} -l`\n"
        f"- noisy tenant: `pgbench -n -M {args.mode} -c {args.noisy_clients} -j "
        f"{min(args.noisy_jobs, args.noisy_clients)} -T {args.duration + 2 * args.lead}`, "
        f"started {args.lead} s before the quiet run and ending about {args.lead} s after it\n"
        f"- load average at start: {args.load_at_start}; at report time: {load_average()}\n",
        "Quiet latencies are exact nearest-rank percentiles over every transaction in "
        "pgbench's per-transaction log (column 3, µs). Because the quiet run is "
        "rate-limited (`-R`), that column counts from the transaction's *scheduled* start, so "
        "it **includes schedule lag** (time a request waited because the previous one of the "
        "same client was still running or pgbench itself was starved of CPU); the detail "
        "table also gives it without the lag. `max backends` is the largest count of backend "
        f"connections per tenant role in `pg_stat_activity`, sampled every "
        f"{args.sample_interval} s during the phase (idle pooled connections included); "
        f"each tenant's pool size is {args.pool_size}. `noisy failed` = pgbench's failed "
        "transactions plus clients aborted by an error (pgbench 15 aborts a client on any "
        f"error it does not retry, such as 53300). Goal: quiet p99 during a flood ≤ "
        f"{GOAL_P99_RATIO:g}× quiet p99 alone; reported, never a failure. `host CPU busy %` "
        "is over all CPUs (from /proc/stat); `CPU % of others` is the part of it used by "
        "processes this script did not start (host busy minus the CPU time of pgbench, psql, "
        "`pgtenant dev` and its PostgreSQL): when it is not near 0, something else on the "
        "machine competed with the run and that phase's latencies are skewed.\n",
    ]
    if notes:
        parts.append("Notes:\n" + "".join(f"- {n}\n" for n in notes))
    parts += ["## Summary\n", summary_table(args, phases) if phases else "(no phases)\n",
              "## Quiet p99 against the goal\n", ratio_lines(phases),
              "## Details (latencies in ms)\n", detail_table(phases) if phases else "",
              problems_section(phases)]
    findings = log_findings(workdir)
    if findings:
        parts += ["## Proxy log\n", findings]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=20, help="seconds of quiet load per phase")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated, in order, from: {', '.join(PHASES)}")
    p.add_argument("--pool-size", type=int, default=2, help="backend connections per tenant")
    p.add_argument("--scale", type=int, default=5, help="pgbench -i -s, per tenant")
    p.add_argument("--quiet-clients", type=int, default=2, help="quiet pgbench -c")
    p.add_argument("--quiet-rate", type=int, default=200, help="quiet pgbench -R (TPS)")
    p.add_argument("--noisy-clients", type=int, default=32, help="noisy pgbench -c")
    p.add_argument("--noisy-jobs", type=int, default=2, help="noisy pgbench -j")
    p.add_argument("--noisy-builtin", default="tpcb-like",
                   choices=["tpcb-like", "simple-update", "select-only"],
                   help="noisy pgbench -b for the flood phases")
    p.add_argument("--noisy-rate", type=int, default=200,
                   help="noisy pgbench -R in phase flood-rate (0 drops that phase)")
    p.add_argument("--noisy-sleep-ms", type=int, default=10,
                   help="pg_sleep per noisy transaction in phase pool-hold (0 drops that phase)")
    p.add_argument("--mode", default="simple", choices=["simple", "extended", "prepared"],
                   help="pgbench -M for both tenants")
    p.add_argument("--sslmode", default="disable", choices=["disable", "require"],
                   help="client connections to pgtenant")
    p.add_argument("--lead", type=int, default=1,
                   help="seconds the noisy load runs before and after the quiet run")
    p.add_argument("--warmup", type=int, default=3, help="seconds of unrecorded warm-up")
    p.add_argument("--sample-interval", type=float, default=0.5,
                   help="seconds between pg_stat_activity samples")
    p.add_argument("--worker-threads", type=int, default=1, help="pgtenant session threads")
    p.add_argument("--port", type=int, default=0, help="proxy port; 0 picks a free one")
    p.add_argument("--no-build", action="store_true", help="use the existing release binary")
    p.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    args.phase_list = [x.strip() for x in args.phases.split(",") if x.strip()]
    for x in args.phase_list:
        if x not in PHASES:
            p.error(f"unknown phase {x!r}")
    if args.noisy_rate <= 0:
        args.phase_list = [x for x in args.phase_list if x != "flood-rate"]
    if args.noisy_sleep_ms <= 0:
        args.phase_list = [x for x in args.phase_list if x != "pool-hold"]
    if min(args.duration, args.pool_size, args.quiet_clients, args.quiet_rate,
           args.noisy_clients, args.noisy_jobs) < 1:
        p.error("durations, sizes, client counts and rates must be positive")
    return args


@dataclasses.dataclass
class Outcome:
    """What a run has found so far; the report uses it also when the run stops early."""

    phases: list[Phase] = dataclasses.field(default_factory=list)
    dev: DevBanner | None = None


def measure(args, session: Session, outcome: Outcome) -> None:
    """Starts `pgtenant dev` with both tenants, loads their tables and runs the phases."""
    children, workdir = session.children, session.workdir
    prepare(args, session.notes, ["pgbench", "psql"])

    dev = outcome.dev = start_dev(children, workdir, [NOISY, QUIET], port=args.port, extra_args=[
        "--pool-size", str(args.pool_size),
        "--worker-threads", str(args.worker_threads),
    ])
    log(f"pgtenant dev is up: pid {dev.proc.pid}, proxy port {dev.proxy_port}, "
        f"config {dev.config_path}")
    prepare_tables(dev, args)
    if args.warmup > 0:
        warm_up(children, args, dev, workdir)

    per_phase = args.duration + 2 * args.lead + 1
    log(f"{len(args.phase_list)} phases of about {per_phase} s: "
        f"{len(args.phase_list) * per_phase / 60:.1f} minutes")
    for i, name in enumerate(args.phase_list, 1):
        log(f"[{i}/{len(args.phase_list)}] phase {name}: {PHASE_TEXT[name]}")
        phase = run_phase(children, args, dev, workdir, name)
        outcome.phases.append(phase)
        lat = phase.latency
        noisy = ""
        if phase.noisy is not None:
            noisy = (f"; noisy tps={fmt_num(phase.noisy.tps, 0)} failed="
                     f"{phase.noisy.failed_total} errors={phase.noisy.errors or 'none'}")
        log(f"  quiet p50={ms(lat.total['p50'])} ms p99={ms(lat.total['p99'])} ms "
            f"tps={fmt_num(phase.quiet.tps, 1)}{'' if phase.quiet_ok else ' (QUIET RUN FAILED)'}"
            f"{noisy}; max backends quiet/noisy={phase.max_quiet}/{phase.max_noisy}; "
            f"host CPU busy {fmt_num(phase.host_busy_pct, 0)} %, others "
            f"{fmt_num(phase.others_pct, 0)} %")
        if dev.proc.poll() is not None:
            raise RuntimeError(f"pgtenant dev exited ({dev.proc.returncode}) during phase "
                               f"{name}")
        time.sleep(1)  # let the last noisy transactions drain before the next phase


def final_report(args, session: Session, outcome: Outcome) -> str | None:
    """The report, or None when the run stopped before its first phase ended."""
    if session.interrupted and not outcome.phases:
        return None
    return report(args, outcome.phases, outcome.dev, session.notes, session.interrupted,
                  session.workdir)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    set_log_name("noisy")
    outcome = Outcome()
    return run_session(args, "pgtenant-noisy-", "noisy-",
                       measure=lambda session: measure(args, session, outcome),
                       report=lambda session: final_report(args, session, outcome))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
