"""Code the benchmark scripts in bench/ share: processes, `pgtenant dev`, the run skeleton.

compare.py, noisy_neighbour.py and provision.py all build pgtenant, start `pgtenant dev` on a
loopback port, read its banner, run clients against it and stop everything they started again,
Ctrl-C included. The code for that lives here, in a module of its own rather than in compare.py:
the other two scripts used to import compare.py for it, which tied them to one benchmark's
file (its PgBouncer setup, its constants, its `[bench]` log prefix) and left each script with
its own copy of what compare.py did not export, such as starting `pgtenant dev` and reading its
banner. This module holds no benchmark of its own, so each script reads as its measurement and
its report, and the shared parts change in one place.

What is here:

- small helpers: logging, free ports, CPU counters from /proc, URLs, number formatting;
- `Children`: every long-running process a run starts, stopped in reverse order;
- `start_dev()`: `pgtenant dev` in the background, its banner parsed into a `DevBanner`;
- `find_tools()`, `build_release()`, `prepare()`: the preamble of a run;
- `run_session()`: the skeleton of a run (signals, exit code, report, cleanup);
- provisioning helpers: `write_migrations()`, `bench_config()`, `create()` (provision.py and
  rollout.py create tenants the same way);
- report helpers: `git_commit()`, `server_version()`, `load_average()`, `log_findings()`,
  `write_results()`.

Python 3.11+, standard library only. See bench/README.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
# Where `cargo build --release`, run in REPO, puts the binary (CARGO_TARGET_DIR honoured).
BINARY = REPO / (os.environ.get("CARGO_TARGET_DIR") or "target") / "release" / "pgtenant"
LOOPBACK = "127.0.0.1"

CLK_TCK = os.sysconf("SC_CLK_TCK")  # same value as `getconf CLK_TCK`


class Stop(Exception):
    """Raised by the signal handlers so that `finally` blocks clean up."""


# --------------------------------------------------------------------------------------------
# Small helpers

_log_name = "bench"


def set_log_name(name: str) -> None:
    """The word in brackets in front of every `log()` line, for example `noisy`."""
    global _log_name
    _log_name = name


def log(message: str) -> None:
    print(f"[{_log_name}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, not its children), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    # The command name is in parentheses and may contain spaces; fields follow the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # After the name, field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user/nice
    return total - idle, total


def tool_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def find_program(name: str, extra_dirs: list[str]) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def tool_dirs() -> list[str]:
    """Where Debian puts PostgreSQL's and PgBouncer's programs when they are not on PATH."""
    pg_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return [str(d) for d in pg_dirs] + ["/usr/sbin"]


def url(user: str, password: str, port: int, database: str, sslmode: str) -> str:
    return (
        f"postgres://{quote(user, safe='')}:{quote(password, safe='')}@{LOOPBACK}:{port}/"
        f"{quote(database, safe='')}?sslmode={sslmode}&gssencmode=disable"
    )


def redact(conn_url: str) -> str:
    return re.sub(r"://([^:]+):[^@]+@", r"://\1:***@", conn_url)


def fmt_num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def load_average() -> str:
    """The three load averages, as `uptime` shows them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------------------------
# Child processes


class Children:
    """Every long-running process this script starts, so that cleanup can stop them all."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, int]] = []

    def start(self, name: str, argv: list[str], stop_signal: int, **kwargs) -> subprocess.Popen:
        # A session of its own: Ctrl-C reaches only this script, which then stops the children
        # in reverse order (pgbench, PgBouncer, then pgtenant dev, which stops PostgreSQL).
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs.append((name, proc, stop_signal))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 30.0) -> None:
        for i, (name, p, sig) in enumerate(self.procs):
            if p is proc:
                self._stop_one(name, p, sig, timeout)
                del self.procs[i]
                return

    def stop_all(self) -> None:
        while self.procs:
            name, proc, sig = self.procs.pop()
            self._stop_one(name, proc, sig, 30.0)

    @staticmethod
    def _stop_one(name: str, proc: subprocess.Popen, sig: int, timeout: float) -> None:
        if proc.poll() is not None:
            return
        log(f"stopping {name} (pid {proc.pid})")
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop within {timeout:.0f} s; killing it")
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass


def run_checked(argv: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {out.returncode})\ncommand: {' '.join(argv)}\n"
            f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
        )
    return out


def install_signal_handlers() -> None:
    def handler(signum, _frame):
        raise Stop(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# pgtenant dev

DEV_LOG = "pgtenant-dev.log"  # in the run's working directory; log_findings() reads it
BANNER_TIMEOUT_S = 90


@dataclasses.dataclass
class TenantLogin:
    """One tenant's client login, from the `DATABASE_URL=` line of the banner."""

    user: str
    password: str
    url: str  # as printed: the proxy's address, sslmode=require


@dataclasses.dataclass
class DevBanner:
    """A running `pgtenant dev` and what its banner says."""

    proc: subprocess.Popen
    config_path: Path
    superuser_url: str  # the throwaway PostgreSQL, directly
    proxy_port: int
    tenants: dict[str, TenantLogin]

    def tenant_url(self, tenant: str, sslmode: str) -> str:
        """The tenant's client URL through the proxy, with the given sslmode."""
        login = self.tenants[tenant]
        return url(login.user, login.password, self.proxy_port, tenant, sslmode)


def start_dev(children: Children, workdir: Path, tenants: list[str], port: int = 0,
              extra_args: list[str] | None = None) -> DevBanner:
    """Starts `pgtenant dev --listen 127.0.0.1:PORT --tenants ...` and reads its banner.

    `port` 0 picks a free one; `extra_args` go after `--tenants` (for example `--pool-size`).
    pgtenant's log (stderr, `info` unless PGTENANT_LOG says otherwise: a line per session,
    none per query) goes to DEV_LOG in `workdir`. The banner is stdout:

        config file: PATH
        postgres:    URL (superuser, direct)
        tenant NAME:
          DATABASE_URL=postgres://USER:PASSWORD@HOST:PORT/NAME?sslmode=require

    This returns once it has the configuration file, the superuser URL and a DATABASE_URL for
    every tenant in `tenants`; it raises RuntimeError if that takes more than 90 s or dev exits.
    A thread keeps reading stdout afterwards, so the proxy never blocks on a full pipe.
    """
    proxy_port = port or free_port()
    argv = [
        str(BINARY), "dev",
        "--listen", f"{LOOPBACK}:{proxy_port}",
        "--tenants", ",".join(tenants),
        *(extra_args or []),
    ]
    log(f"starting: {' '.join(argv)}")
    stderr_log = open(workdir / DEV_LOG, "w", encoding="utf-8")
    proc = children.start("pgtenant dev", argv, signal.SIGINT,
                          stdout=subprocess.PIPE, stderr=stderr_log, text=True)

    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()

    config_path: Path | None = None
    superuser_url: str | None = None
    logins: dict[str, TenantLogin] = {}
    current_tenant: str | None = None  # from the last `tenant NAME:` line
    deadline = time.monotonic() + BANNER_TIMEOUT_S
    while config_path is None or superuser_url is None or not set(tenants) <= logins.keys():
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        except queue.Empty:
            line = None
        if line is None:
            tail = (workdir / DEV_LOG).read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"`pgtenant dev` exited or printed no banner within {BANNER_TIMEOUT_S} s "
                f"(exit code {proc.poll()}); its log ends with:\n{tail}")
        line = line.strip()
        if line.startswith("config file:"):
            config_path = Path(line.split(":", 1)[1].strip())
        elif line.startswith("postgres:"):
            superuser_url = line.split()[1]
        elif line.startswith("tenant ") and line.endswith(":"):
            current_tenant = line[len("tenant "):-1]
        elif line.startswith("DATABASE_URL=") and current_tenant is not None:
            printed = line.split("=", 1)[1]
            match = re.match(r"postgres://([^:]+):([^@]+)@", printed)
            if not match:
                raise RuntimeError(f"cannot parse the tenant URL printed by pgtenant dev: {line}")
            logins[current_tenant] = TenantLogin(match.group(1), match.group(2), printed)
    return DevBanner(proc, config_path, superuser_url, proxy_port, logins)


# --------------------------------------------------------------------------------------------
# The preamble of a run


def find_tools(args, names: list[str], allow_setup: bool) -> None:
    """Sets `args.<name>` to the path of each program in `names`.

    When one is missing: with `allow_setup`, runs scripts/setup.sh once and looks again;
    otherwise, or if it is still missing, raises RuntimeError.
    """
    def lookup() -> bool:
        for name in names:
            setattr(args, name, find_program(name, tool_dirs()))
        return all(getattr(args, name) for name in names)

    listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    if lookup():
        return
    if not allow_setup:
        raise RuntimeError(f"{listed} missing; run ./scripts/setup.sh")
    log(f"{listed} missing: running scripts/setup.sh")
    subprocess.run([str(REPO / "scripts" / "setup.sh")], check=True)
    if not lookup():
        raise RuntimeError(f"{listed} still missing after scripts/setup.sh")


def build_release(args) -> None:
    """`cargo build --release` unless `args.no_build`; then the binary must exist."""
    if not args.no_build:
        log("building pgtenant (cargo build --release)")
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    if not BINARY.exists():
        raise RuntimeError(f"{BINARY} not found; build it or drop --no-build")


def prepare(args, notes: list[str], tools: list[str], allow_setup: bool = False) -> None:
    """The common start of a measuring run: tools, an idle-machine check, the release build.

    Finds `tools` (see find_tools()), adds a note and warns when the 1-minute load average is
    above 0.5 (something else is using the CPUs), then runs build_release().
    """
    find_tools(args, tools, allow_setup)
    if os.getloadavg()[0] > 0.5:
        notes.append(f"the 1-minute load average was {os.getloadavg()[0]:.2f} at start: "
                     "something else was using the CPUs")
        log(f"warning: load average {os.getloadavg()[0]:.2f}; numbers will be noisy")
    build_release(args)


# --------------------------------------------------------------------------------------------
# The run skeleton


class Session:
    """One run: the processes it started, its working directory and its report's notes."""

    def __init__(self, workdir_prefix: str) -> None:
        self.children = Children()
        self.workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
        self.notes: list[str] = []
        self.interrupted = False  # stopped early, by a signal or an error


def run_session(args, workdir_prefix: str, results_prefix: str,
                measure: Callable[[Session], None],
                report: Callable[[Session], str | None]) -> int:
    """Runs `measure(session)`, then writes the report and cleans up, whatever happened.

    Sets `args.started_at` and `args.load_at_start` for the report. Ctrl-C, SIGTERM and SIGHUP
    stop `measure` (exit code 130); an exception stops it too (exit code 1) and becomes a note.
    Then `report(session)` makes the report text, or None when there is nothing to report; it
    is printed and written to `args.results_dir`/<results_prefix><timestamp>.md. Last, every
    child process is stopped and the working directory removed, except after an error once
    `pgtenant dev` had started: then its logs are kept and their place is logged.
    """
    args.started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    args.load_at_start = load_average()
    install_signal_handlers()

    session = Session(workdir_prefix)
    exit_code = 0
    try:
        measure(session)
    except Stop as stop:
        session.interrupted, exit_code = True, 130
        log(f"interrupted by {stop}; cleaning up")
    except KeyboardInterrupt:
        session.interrupted, exit_code = True, 130
        log("interrupted; cleaning up")
    except Exception as error:  # noqa: BLE001 - report, then clean up
        session.interrupted, exit_code = True, 1
        log(f"error: {error}")
        session.notes.append(f"the run stopped early: {str(error).splitlines()[0]}")
    finally:
        # Ignore further Ctrl-C while stopping what we started.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            text = report(session)
            if text is not None:
                write_results(text, args.results_dir, results_prefix)
        finally:
            session.children.stop_all()
            if exit_code == 1 and (session.workdir / DEV_LOG).exists():
                log(f"logs kept in {session.workdir}")
            else:
                shutil.rmtree(session.workdir, ignore_errors=True)
    return exit_code



# --------------------------------------------------------------------------------------------
# Provisioning

TIMINGS = re.compile(r"^timings \(ms\): (.*)$", re.MULTILINE)
DATABASE_URL = re.compile(r"^\s*DATABASE_URL=(\S+)$", re.MULTILINE)


def write_migrations(directory: Path, tables: int) -> None:
    """One file per table; each references the previous table and adds two indexes."""
    directory.mkdir(parents=True)
    for n in range(1, tables + 1):
        parent = f",\n    parent_id bigint REFERENCES table_{n - 1:02d}" if n > 1 else ""
        sql = (
            f"CREATE TABLE table_{n:02d} (\n"
            f"    id bigserial PRIMARY KEY,\n"
            f"    name text NOT NULL,\n"
            f"    status text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'done')),\n"
            f"    amount_cents bigint NOT NULL DEFAULT 0,\n"
            f"    created_at timestamptz NOT NULL DEFAULT now(){parent}\n"
            f");\n"
            f"CREATE INDEX table_{n:02d}_name ON table_{n:02d} (name);\n"
            f"CREATE INDEX table_{n:02d}_created_at ON table_{n:02d} (created_at);\n"
        )
        (directory / f"{n:04d}_table_{n:02d}.sql").write_text(sql)


def bench_config(dev_config: Path, migrations: Path, target: Path) -> None:
    """dev's configuration with `[migrations] dir` pointing at the bench set."""
    text = dev_config.read_text()
    text, count = re.subn(r'(?m)^(\[migrations\]\ndir = ).*$', rf'\g<1>"{migrations}"', text)
    if count != 1:
        raise RuntimeError(f"no [migrations] dir in {dev_config}")
    target.write_text(text)


def create(config: Path, name: str) -> tuple[float, dict[str, float], str]:
    """Runs `tenant create`; returns wall seconds, printed step timings (ms) and the URL."""
    started = time.monotonic()
    out = subprocess.run([str(BINARY), "tenant", "create", name, "--config", str(config)],
                         capture_output=True, text=True,
                         env={**os.environ, "PGTENANT_LOG": "warn"})
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(f"tenant create {name} failed: {out.stderr.strip()}")
    timings = TIMINGS.search(out.stdout)
    url = DATABASE_URL.search(out.stdout)
    if not timings or not url:
        raise RuntimeError(f"tenant create {name} printed no timings or URL:\n{out.stdout}")
    steps = {k: float(v) for k, v in (p.split("=", 1) for p in timings.group(1).split())}
    return wall, steps, url.group(1)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # nearest rank
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------------------------
# Reporting


def write_results(text: str, results_dir: str, prefix: str) -> Path:
    """Writes the report to `results_dir`/<prefix><timestamp>.md and prints it."""
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{prefix}{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(text, encoding="utf-8")
    print(text, flush=True)
    log(f"results written to {path}")
    return path


def git_commit() -> str:
    """`git describe --always --dirty` of the repository, or `unknown`."""
    return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                          capture_output=True, text=True).stdout.strip() or "unknown"


def server_version(psql: str, dev) -> str:
    """PostgreSQL's version, asked through `dev.superuser_url` while `dev.proc` runs."""
    if dev is None or dev.proc.poll() is not None:
        return "unknown"
    return subprocess.run([psql, "-X", "-Atc", "SHOW server_version", dev.superuser_url],
                          capture_output=True, text=True).stdout.strip() or "unknown"


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_findings(workdir: Path) -> str:
    """Warnings and errors the proxies logged during the whole run, for the report."""
    sources = [
        ("pgtenant dev (stderr)", workdir / DEV_LOG,
         re.compile(r"\b(WARN|ERROR)\b|with error|login failed|timed out|no backend")),
        ("PgBouncer", workdir / "pgbouncer" / "pgbouncer.log",
         re.compile(r"\b(WARNING|ERROR|FATAL)\b")),
    ]
    out = []
    for name, path, pattern in sources:
        if not path.exists():
            continue
        lines = [ANSI.sub("", line.rstrip()) for line in
                 path.read_text(encoding="utf-8", errors="replace").splitlines()]
        hits = [line for line in lines if pattern.search(line)]
        out.append(f"- {name}: {len(hits)} warning/error lines"
                   + (" (first 10 below)" if len(hits) > 10 else ""))
        if hits:
            out.append("\n  ```\n" + "".join(f"  {h}\n" for h in hits[:10]) + "  ```")
    return "\n".join(out) + "\n" if out else ""
