#!/usr/bin/env python3
"""Compare pgtenant with direct PostgreSQL and PgBouncer using `pgbench -S`.

One run builds pgtenant in release mode, starts `pgtenant dev` (a throwaway PostgreSQL plus the
proxy) with one tenant, loads pgbench tables into the tenant's schema through the proxy, starts
PgBouncer in transaction pooling mode in front of the same server, then runs the select-only
pgbench workload against all three at several client counts, measuring each proxy's CPU time
from /proc. It prints a comparison table and writes it, with the raw numbers, to
bench/results/<timestamp>.md. Everything it starts is stopped again on exit, Ctrl-C included.

Python 3.11+, standard library only. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402  (bench/benchlib.py: what the bench scripts share)
    LOOPBACK,
    REPO,
    Children,
    Session,
    fmt_num,
    free_port,
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
    start_dev,
    tool_version,
    url,
)

TENANT = "bench"

# The target this benchmark tracks; reported per row, never a reason to fail.
TARGET_TPS_RATIO = 1.3  # pgtenant TPS / PgBouncer TPS, at least
TARGET_CPU_RATIO = 0.7  # pgtenant CPU per transaction / PgBouncer's, at most


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


# --------------------------------------------------------------------------------------------
# Setting up


@dataclasses.dataclass
class Dev:
    """`pgtenant dev` with its one tenant, as this benchmark reaches it three ways."""

    proc: subprocess.Popen
    config_path: Path
    superuser_url: str
    app_user: str  # the tenant's client login through the proxy
    app_password: str
    role_password: str  # the tenant role's own, for direct connections and PgBouncer
    pg_port: int
    proxy_port: int
    tls_cert: Path
    tls_key: Path


def start_bench_dev(children: Children, args, workdir: Path) -> Dev:
    """`pgtenant dev` with tenant `bench`, plus what its config file and catalog add."""
    banner = start_dev(children, workdir, [TENANT], port=args.pgtenant_port, extra_args=[
        "--pool-size", str(args.pool_size),
        "--worker-threads", str(args.worker_threads),
    ])
    config = tomllib.loads(banner.config_path.read_text())
    login = banner.tenants[TENANT]
    return Dev(
        proc=banner.proc,
        config_path=banner.config_path,
        superuser_url=banner.superuser_url,
        app_user=login.user,
        app_password=login.password,
        role_password=catalog_role_password(args, banner.superuser_url, TENANT),
        pg_port=int(config["backend"]["port"]),
        proxy_port=banner.proxy_port,
        tls_cert=Path(config["proxy"]["tls_cert"]),
        tls_key=Path(config["proxy"]["tls_key"]),
    )


def catalog_role_password(args, superuser_url: str, tenant: str) -> str:
    """The tenant role's password, from the catalog `pgtenant dev` keeps its tenants in."""
    out = run_checked(
        [args.psql, "-X", "-Atc",
         f"SELECT role_password FROM pgtenant.role_secrets WHERE tenant = '{tenant}'",
         superuser_url],
        "reading the tenant's role password from the catalog",
    ).stdout.strip()
    if not out:
        raise RuntimeError(f"no role secret for tenant {tenant} in the catalog")
    return out


def prepare_database(dev: Dev, args) -> None:
    # Direct connections and PgBouncer log in as the tenant role itself, which has no
    # search_path of its own (pgtenant pins it per connection). Give the role the tenant's
    # schema, and lift the demo connection limit (50) so 64 direct clients fit.
    sql = (
        f"ALTER ROLE {TENANT} SET search_path = {TENANT}; "
        f"ALTER ROLE {TENANT} CONNECTION LIMIT -1;"
    )
    run_checked([args.psql, "-X", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql, dev.superuser_url],
                "ALTER ROLE via the superuser")

    log(f"initialising pgbench tables (scale {args.scale}) through pgtenant as `{dev.app_user}`")
    started = time.monotonic()
    run_checked(
        [args.pgbench, "-i", "-q", "-s", str(args.scale),
         url(dev.app_user, dev.app_password, dev.proxy_port, TENANT, "disable")],
        "pgbench -i through pgtenant",
    )
    log(f"pgbench -i done in {time.monotonic() - started:.1f} s")

    where = run_checked(
        [args.psql, "-X", "-Atc",
         "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
         "ON n.oid = c.relnamespace WHERE c.relname = 'pgbench_accounts'",
         dev.superuser_url],
        "locating pgbench_accounts",
    ).stdout.split()
    if where != [f"{TENANT}.pgbench_accounts"]:
        raise RuntimeError(f"pgbench_accounts should be only in schema {TENANT}, found: {where}")


def pgbouncer_version(program: str) -> tuple[int, ...]:
    text = tool_version([program, "--version"])
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g or 0) for g in match.groups()) if match else (0, 0, 0)


def start_pgbouncer(children: Children, args, dev: Dev, workdir: Path, max_clients: int):
    version = pgbouncer_version(args.pgbouncer)
    supports_prepared = version >= (1, 21)
    port = args.pgbouncer_port or free_port()
    pgb_dir = workdir / "pgbouncer"
    pgb_dir.mkdir()

    # TLS for the TLS comparison row: the same self-signed certificate pgtenant dev serves.
    shutil.copy(dev.tls_cert, pgb_dir / "server.crt")
    shutil.copy(dev.tls_key, pgb_dir / "server.key")
    # The client password in plain text, not pgtenant's SCRAM verifier: given a verifier,
    # PgBouncer 1.18 reuses the client's SCRAM keys to log in to the server ("SCRAM
    # pass-through") instead of the role password below, and the server rejects them.
    (pgb_dir / "userlist.txt").write_text(f'"{dev.app_user}" "{dev.app_password}"\n')

    backend = (
        f"host={LOOPBACK} port={dev.pg_port} dbname=postgres user={TENANT} "
        f"password={dev.role_password} pool_size={args.pool_size}"
    )
    settings = {
        "listen_addr": LOOPBACK,
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": str(pgb_dir / "userlist.txt"),
        "pool_mode": "transaction",
        "default_pool_size": str(args.pool_size),
        "min_pool_size": "0",
        "reserve_pool_size": "0",
        "max_client_conn": str(max_clients + 20),
        "server_tls_sslmode": "disable",
        "client_tls_sslmode": "allow",
        "client_tls_protocols": "tlsv1.3",
        "client_tls_cert_file": str(pgb_dir / "server.crt"),
        "client_tls_key_file": str(pgb_dir / "server.key"),
        "logfile": str(pgb_dir / "pgbouncer.log"),
        "log_connections": "0",
        "log_disconnections": "0",
        "admin_users": "",
    }
    if supports_prepared:
        settings["max_prepared_statements"] = "200"
    ini = "[databases]\n" + f"{TENANT} = {backend}\n\n[pgbouncer]\n" + "".join(
        f"{k} = {v}\n" for k, v in settings.items()
    )
    (pgb_dir / "pgbouncer.ini").write_text(ini)

    argv = [args.pgbouncer]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root; -u makes it switch user itself, in the same
        # process, so the PID we hold is the one to measure.
        account = pwd.getpwnam(args.pgbouncer_user)
        for path in [pgb_dir, *pgb_dir.iterdir()]:
            os.chown(path, account.pw_uid, account.pw_gid)
        argv += ["-u", args.pgbouncer_user]
    argv.append(str(pgb_dir / "pgbouncer.ini"))
    (pgb_dir / "server.key").chmod(0o600)

    log(f"starting PgBouncer {'.'.join(map(str, version))}: {' '.join(argv)}")
    stdio = open(pgb_dir / "stdio.log", "w", encoding="utf-8")
    proc = children.start("PgBouncer", argv, signal.SIGTERM, stdout=stdio, stderr=stdio)

    client_url = url(dev.app_user, dev.app_password, port, TENANT, "disable")
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"PgBouncer exited ({proc.returncode}):\n"
                + (pgb_dir / "pgbouncer.log").read_text(errors="replace")[-3000:]
                + (pgb_dir / "stdio.log").read_text(errors="replace")[-3000:]
            )
        check = subprocess.run([args.psql, "-X", "-Atc", "SELECT 1", client_url],
                               capture_output=True, text=True)
        if check.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"PgBouncer does not answer on port {port}: {check.stderr}")
        time.sleep(0.2)
    return proc, port, version, supports_prepared


def sanity_check(args, name: str, conn_url: str) -> str:
    """Each target must see the tenant's tables through search_path, as the tenant role."""
    out = run_checked(
        [args.psql, "-X", "-Atc",
         "SELECT current_user || ' ' || current_setting('search_path') || ' ' || "
         "(SELECT count(*) FROM pgbench_branches)", conn_url],
        f"sanity check through {name}",
    ).stdout.strip()
    expected = f"{TENANT} {TENANT} {args.scale}"
    if out != expected:
        raise RuntimeError(f"{name}: expected `{expected}` (user, search_path, branches), got `{out}`")
    return out


# --------------------------------------------------------------------------------------------
# Measuring


@dataclasses.dataclass
class Run:
    target: str  # direct | pgtenant | pgbouncer
    mode: str  # simple | prepared
    clients: int
    sslmode: str
    exit_code: int = 0
    tps: float | None = None
    transactions: int | None = None
    failed: int | None = None
    wall_s: float = 0.0
    proxy_cpu_s: float | None = None
    host_busy_pct: float | None = None
    error: str = ""
    command: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.tps is not None and not self.failed

    @property
    def cpu_us_per_txn(self) -> float | None:
        if self.proxy_cpu_s is None or not self.transactions:
            return None
        return self.proxy_cpu_s * 1e6 / self.transactions


def run_pgbench(args, run: Run, conn_url: str, proxy_pid: int | None,
                children: Children) -> Run:
    argv = [
        args.pgbench, "-S", "-n", "-M", run.mode,
        "-c", str(run.clients), "-j", str(min(args.jobs, run.clients)),
        "-T", str(args.duration), conn_url,
    ]
    run.command = " ".join(argv).replace(conn_url, redact(conn_url))
    cpu0 = proc_cpu_seconds(proxy_pid) if proxy_pid else None
    busy0, total0 = host_cpu_ticks()
    t0 = time.monotonic()
    proc = children.start("pgbench", argv, signal.SIGINT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.duration + 120)
    except subprocess.TimeoutExpired:
        children.stop(proc, timeout=5)
        stdout, stderr = "", "pgbench did not finish within duration + 120 s; killed"
    children.stop(proc)  # already exited; drop it from the list
    run.wall_s = time.monotonic() - t0
    busy1, total1 = host_cpu_ticks()
    if proxy_pid:
        run.proxy_cpu_s = proc_cpu_seconds(proxy_pid) - cpu0
    if total1 > total0:
        run.host_busy_pct = 100.0 * (busy1 - busy0) / (total1 - total0)
    run.exit_code = proc.returncode

    if m := re.search(r"^tps = ([\d.]+)", stdout, re.M):
        run.tps = float(m.group(1))
    if m := re.search(r"number of transactions actually processed: (\d+)", stdout):
        run.transactions = int(m.group(1))
    if m := re.search(r"number of failed transactions: (\d+)", stdout):
        run.failed = int(m.group(1))
    if not run.ok:
        run.error = (stderr.strip() + "\n" + stdout.strip()).strip()[-4000:]
    return run


# --------------------------------------------------------------------------------------------
# Reporting


def target_verdict(tps_ratio: float | None, cpu_ratio: float | None) -> str:
    if tps_ratio is None or cpu_ratio is None:
        return "n/a (no pair of good pgtenant and PgBouncer runs)"
    misses = []
    if tps_ratio < TARGET_TPS_RATIO:
        misses.append(f"TPS {tps_ratio:.2f}× < {TARGET_TPS_RATIO}×")
    if cpu_ratio > TARGET_CPU_RATIO:
        misses.append(f"CPU {cpu_ratio:.2f}× > {TARGET_CPU_RATIO}×")
    return "met" if not misses else "not met (" + "; ".join(misses) + ")"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def good_tps(run: Run | None) -> float | None:
    return run.tps if run is not None and run.ok else None


def good_cpu(run: Run | None) -> float | None:
    return run.cpu_us_per_txn if run is not None and run.ok else None


def comparison_table(runs: list[Run]) -> str:
    index = {(r.target, r.mode, r.clients, r.sslmode): r for r in runs}
    rows = sorted(
        {(r.sslmode, r.mode, r.clients) for r in runs},
        key=lambda k: (k[0] != "disable", k[1] != "simple", k[2]),
    )
    head = (
        "| mode | clients | TPS direct | TPS pgtenant | TPS pgbouncer | pgtenant/direct "
        "| pgtenant/pgbouncer | CPU µs/txn pgtenant | CPU µs/txn pgbouncer "
        "| CPU pgtenant/pgbouncer | target |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n"
    )
    lines = []
    for sslmode, mode, clients in rows:
        direct = index.get(("direct", mode, clients, sslmode))
        tenant = index.get(("pgtenant", mode, clients, sslmode))
        bouncer = index.get(("pgbouncer", mode, clients, sslmode))
        label = mode + (" (TLS)" if sslmode != "disable" else "")

        def cell(run: Run | None, value: str) -> str:
            if run is None:
                return "—"
            if not run.ok:
                return f"ERROR ({run.target})"
            return value

        t_direct, t_tenant, t_bouncer = good_tps(direct), good_tps(tenant), good_tps(bouncer)
        c_tenant, c_bouncer = good_cpu(tenant), good_cpu(bouncer)
        tps_vs_bouncer = ratio(t_tenant, t_bouncer)
        cpu_vs_bouncer = ratio(c_tenant, c_bouncer)
        lines.append(
            f"| {label} | {clients} "
            f"| {cell(direct, fmt_num(t_direct))} "
            f"| {cell(tenant, fmt_num(t_tenant))} "
            f"| {cell(bouncer, fmt_num(t_bouncer))} "
            f"| {fmt_ratio(ratio(t_tenant, t_direct))} "
            f"| {fmt_ratio(tps_vs_bouncer)} "
            f"| {cell(tenant, fmt_num(c_tenant, 1))} "
            f"| {cell(bouncer, fmt_num(c_bouncer, 1))} "
            f"| {fmt_ratio(cpu_vs_bouncer)} "
            f"| {target_verdict(tps_vs_bouncer, cpu_vs_bouncer)} |"
        )
    return head + "\n".join(lines) + "\n"


def raw_table(runs: list[Run]) -> str:
    head = (
        "| target | mode | clients | sslmode | exit | TPS | transactions | failed | wall s "
        "| proxy CPU s | CPU µs/txn | host CPU busy % |\n"
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = [
        f"| {r.target} | {r.mode} | {r.clients} | {r.sslmode} | {r.exit_code} "
        f"| {fmt_num(r.tps, 1)} | {fmt_num(r.transactions)} | {fmt_num(r.failed)} "
        f"| {r.wall_s:.1f} | {fmt_num(r.proxy_cpu_s, 2)} | {fmt_num(r.cpu_us_per_txn, 1)} "
        f"| {fmt_num(r.host_busy_pct, 0)} |"
        for r in runs
    ]
    return head + "\n".join(lines) + "\n"


def errors_section(runs: list[Run]) -> str:
    bad = [r for r in runs if not r.ok]
    if not bad:
        return ""
    out = ["## Failed runs\n"]
    for r in bad:
        out.append(
            f"### {r.target}, {r.mode}, {r.clients} clients, sslmode={r.sslmode} "
            f"(exit {r.exit_code}, failed transactions {r.failed})\n\n"
            f"```\n$ {r.command}\n{r.error}\n```\n"
        )
    return "\n".join(out) + "\n"


def environment(args, dev: Dev | None, pgb_version: tuple[int, ...] | None) -> str:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"- pgtenant commit: `{git_commit()}`\n"
        f"- host: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}\n"
        f"- PostgreSQL {server_version(args.psql, dev)}; "
        f"{tool_version([args.pgbench, '--version'])}; "
        f"PgBouncer {'.'.join(map(str, pgb_version)) if pgb_version else 'not started'}\n"
        f"- workload: `pgbench -S -n`, scale {args.scale}, {args.duration} s per run, "
        f"`-j {args.jobs}` (at most one thread per client), pool size {args.pool_size} "
        f"for pgtenant and PgBouncer (both transaction pooling); direct = one backend per client\n"
        f"- load average at start: {args.load_at_start}; at report time: {load_average()}\n"
        f"- pgbench, the proxy and PostgreSQL share the same {os.cpu_count()} CPUs\n"
    )


def report(args, runs: list[Run], dev: Dev | None, pgb_version, notes: list[str],
           interrupted: bool, workdir: Path) -> str:
    title = "# pgtenant benchmark: pgbench -S, direct vs pgtenant vs PgBouncer"
    parts = [
        title + (" (INTERRUPTED, partial)" if interrupted else "") + "\n",
        f"Run at {args.started_at}.\n",
        environment(args, dev, pgb_version),
        f"**Target:** pgtenant ≥ {TARGET_TPS_RATIO}× PgBouncer's throughput at ≤ "
        f"{TARGET_CPU_RATIO}× its CPU per transaction. Reported per row; it never fails the run.\n",
        "CPU µs/txn = the proxy process's utime+stime during the run (from /proc/<pid>/stat) "
        "divided by the transactions pgbench processed. TLS rows: pgtenant and PgBouncer with "
        "`sslmode=require` (TLS 1.3, same certificate); PostgreSQL itself has no TLS here, so "
        "no direct number.\n",
    ]
    if notes:
        parts.append("Notes:\n" + "".join(f"- {n}\n" for n in notes))
    parts += ["## Comparison\n", comparison_table(runs) if runs else "(no runs)\n",
              "## Raw numbers\n", raw_table(runs) if runs else "(no runs)\n",
              errors_section(runs)]
    findings = log_findings(workdir)
    if findings:
        parts += ["## Proxy logs\n", findings]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=15, help="seconds per pgbench run")
    p.add_argument("--clients", default="1,8,32,64", help="comma-separated client counts")
    p.add_argument("--modes", default="simple,prepared", help="pgbench -M protocols to run")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (capped at the client count)")
    p.add_argument("--pool-size", type=int, default=16,
                   help="backend connections for pgtenant's tenant and PgBouncer's pool")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    p.add_argument("--worker-threads", type=int, default=1,
                   help="pgtenant session threads (pgtenant's default 1; 0: one per CPU)")
    p.add_argument("--tls-clients", type=int, default=8,
                   help="client count of the TLS rows (pgtenant and PgBouncer); 0 skips them")
    p.add_argument("--warmup", type=int, default=5, help="seconds of unrecorded warm-up")
    p.add_argument("--pgtenant-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--pgbouncer-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--pgbouncer-user", default="postgres",
                   help="system user PgBouncer switches to when this runs as root")
    p.add_argument("--no-build", action="store_true", help="use the existing release binary")
    p.add_argument("--no-setup", action="store_true",
                   help="do not run scripts/setup.sh when pgbench or pgbouncer is missing")
    p.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    args.client_counts = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.mode_list:
        if m not in ("simple", "extended", "prepared"):
            p.error(f"unknown pgbench mode {m!r}")
    if not args.client_counts or min(args.client_counts) < 1:
        p.error("--clients needs positive numbers")
    return args


@dataclasses.dataclass
class Outcome:
    """What a run has found so far; the report uses it also when the run stops early."""

    runs: list[Run] = dataclasses.field(default_factory=list)
    dev: Dev | None = None
    pgb_version: tuple[int, ...] | None = None


def measure(args, session: Session, outcome: Outcome) -> None:
    """Sets up the three targets and runs the pgbench plan against them, interleaved."""
    children, workdir = session.children, session.workdir
    os.chmod(workdir, 0o755)  # PgBouncer, running as postgres, reads its files below it
    prepare(args, session.notes, ["pgbench", "psql", "pgbouncer"], allow_setup=not args.no_setup)

    dev = outcome.dev = start_bench_dev(children, args, workdir)
    log(f"pgtenant dev is up: pid {dev.proc.pid}, proxy port {dev.proxy_port}, "
        f"PostgreSQL port {dev.pg_port}, config {dev.config_path}")
    prepare_database(dev, args)

    max_clients = max(args.client_counts + [args.tls_clients])
    pgb_proc, pgb_port, pgb_version, pgb_prepared = start_pgbouncer(
        children, args, dev, workdir, max_clients)
    outcome.pgb_version = pgb_version
    if not pgb_prepared and "prepared" in args.mode_list:
        session.notes.append(
            f"PgBouncer {'.'.join(map(str, pgb_version))} predates 1.21, which added "
            "`max_prepared_statements`; it cannot serve `-M prepared` in transaction "
            "pooling mode, so those PgBouncer runs are skipped (shown as —)."
        )

    targets = {
        "direct": (lambda ssl: url(TENANT, dev.role_password, dev.pg_port, "postgres", ssl),
                   None),
        "pgtenant": (lambda ssl: url(dev.app_user, dev.app_password, dev.proxy_port,
                                     TENANT, ssl), dev.proc.pid),
        "pgbouncer": (lambda ssl: url(dev.app_user, dev.app_password, pgb_port,
                                      TENANT, ssl), pgb_proc.pid),
    }
    for name, (make_url, _) in targets.items():
        log(f"sanity check {name}: {sanity_check(args, name, make_url('disable'))}")

    def skip(target: str, mode: str) -> bool:
        return target == "pgbouncer" and mode == "prepared" and not pgb_prepared

    plan: list[tuple[str, str, int, str]] = []
    for mode in args.mode_list:
        for clients in args.client_counts:
            for target in targets:
                if not skip(target, mode):
                    plan.append((target, mode, clients, "disable"))
    if args.tls_clients > 0:
        for mode in args.mode_list:
            for target in ("pgtenant", "pgbouncer"):
                if not skip(target, mode):
                    plan.append((target, mode, args.tls_clients, "require"))

    total_s = len(plan) * (args.duration + 1) + args.warmup
    log(f"{len(plan)} pgbench runs of {args.duration} s: about {total_s / 60:.1f} minutes")

    if args.warmup > 0:
        log(f"warm-up: {args.warmup} s direct, unrecorded")
        warm = argparse.Namespace(**vars(args))
        warm.duration = args.warmup
        run_pgbench(warm, Run("direct", "simple", 8, "disable"),
                    targets["direct"][0]("disable"), None, children)

    for i, (target, mode, clients, sslmode) in enumerate(plan, 1):
        make_url, pid = targets[target]
        run = run_pgbench(args, Run(target, mode, clients, sslmode), make_url(sslmode),
                          pid, children)
        outcome.runs.append(run)
        status = "ok" if run.ok else f"FAILED (exit {run.exit_code}, failed {run.failed})"
        cpu = f", proxy CPU {run.cpu_us_per_txn:.1f} µs/txn" if run.cpu_us_per_txn else ""
        log(f"[{i}/{len(plan)}] {target:9} {mode:8} c={clients:<3} ssl={sslmode:7} "
            f"tps={fmt_num(run.tps, 0)}{cpu} {status}")
        if not run.ok:
            log(f"  command: {run.command}\n  output:\n{run.error}")
        for name, proc in (("pgtenant dev", dev.proc), ("PgBouncer", pgb_proc)):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) during the runs")


def final_report(args, session: Session, outcome: Outcome) -> str | None:
    """The report, or None when the run stopped before its first pgbench run."""
    if session.interrupted and not outcome.runs:
        return None
    return report(args, outcome.runs, outcome.dev, outcome.pgb_version, session.notes,
                  session.interrupted, session.workdir)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    outcome = Outcome()
    return run_session(args, "pgtenant-bench-", "",
                       measure=lambda session: measure(args, session, outcome),
                       report=lambda session: final_report(args, session, outcome))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
