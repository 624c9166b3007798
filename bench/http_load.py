"""What the HTTP benches share: gunicorn started on a free port, a wrk run parsed, and the CPU
time processes spent (gunicorn's workers, PostgreSQL's backends) read from /proc.

Used by bench/gateway_http.py and bench/signup_http.py (run as scripts: this folder is on
their import path), with another revision of kyc checked out beside this one for an A/B
(`revision`, `check_imports`).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import text

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@contextmanager
def revision(root: Path, rev: str, where: Path) -> Iterator[Path]:
    """A `git worktree` of `rev` at `where` (the A/B's other side: its own code, rules, migrations
    and gunicorn.conf.py), removed afterwards."""
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(where)], check=False)


def check_imports(checkout: Path, env: dict) -> None:
    """A side runs its own code, not the package installed in this interpreter."""
    where = subprocess.run([sys.executable, "-c", "import kyc; print(kyc.__file__)"], cwd=checkout, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(checkout.resolve()), f"{checkout} imported kyc from {where}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(app: str, port: int, workers: int, env: dict, cwd: Path, python: str = sys.executable,
          threads: int = 1, log: Path | None = None) -> subprocess.Popen:
    """gunicorn serving `app` from `cwd` (which reads its gunicorn.conf.py, if any), once every
    worker has loaded the app, with `threads` threads a worker. Its access log and output are
    dropped unless `log` names a file to write them to: a line per request would flood a
    timing run, and a run looking for errors reads them."""
    output = open(log, "ab") if log else subprocess.DEVNULL      # kyc's access lines go to stderr
    try:
        process = subprocess.Popen([python, "-m", "gunicorn", app, "-w", str(workers), "--threads", str(threads),
                                    "-b", f"127.0.0.1:{port}", "--log-level", "warning"], cwd=cwd, env=env,
                                   stdout=output, stderr=output)
    finally:
        if log:
            output.close()                                       # the child holds its own copy
    deadline = time.time() + 120
    last: dict[int, int] = {}
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{app} in {cwd} exited with {process.returncode}")
        time.sleep(1)
        # The master listens before its workers have imported the app (seconds on a loaded
        # machine); a request sent then waits for them. A worker that loaded the app waits for
        # connections and spends no CPU: ready once every worker's CPU stands still for a second.
        ticks = {pid: cpu_ticks(pid) for pid in children(process.pid)}
        if len(ticks) == workers and ticks == last:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return process
        last = ticks
    process.kill()
    raise RuntimeError(f"{app} did not start")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wrk(port: int, script: str, duration: int, threads: int, connections: int) -> dict:
    """One wrk run: requests/s, latency p50 and p99 (as wrk prints them), requests sent, non-2xx."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
                              "-s", f.name, f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50": pct.get("50"), "p99": pct.get("99"), "requests": requests,
            "non_2xx": int(errors.group(1)) if errors else 0}


def cpu_ticks(pid: int) -> int:
    """User + system CPU of a process so far, in clock ticks (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2:].split()      # after "pid (comm) "; comm may hold spaces
    return int(fields[11]) + int(fields[12])           # utime, stime: fields 14 and 15 of stat


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (gunicorn's workers under its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU spent between two {pid: ticks} readings (a process born in between counts in full)."""
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items()) / TICKS_PER_SECOND


def statement_ms(admin_engine) -> float | None:
    """The server's time so far in this database's statements (execution and planning, ms), from
    pg_stat_statements where the server loads it and the database has the extension; else None.
    Why beside backend_ticks: a backend's CPU also counts its buffer misses on a database of a
    million accounts, which vary with what earlier runs left cached (bench/activity.py's
    PostgreSQL CPU a bulk call varied 2x between runs of the same code); the time in statements
    compared in an A/B showed a plan change the CPU figure hid."""
    with admin_engine.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")).scalar():
            return None
        return conn.execute(text(
            "SELECT coalesce(sum(total_exec_time + total_plan_time), 0) FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")).scalar()


def backend_ticks(admin_engine) -> dict[int, int]:
    """CPU so far of the database's client backends other than this script's own."""
    with admin_engine.connect() as conn:
        database = conn.execute(text("SELECT current_database()")).scalar()
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid() "
                                 "AND backend_type = 'client backend'"), {"db": database}).scalars().all()
    return {pid: cpu_ticks(pid) for pid in pids}


def wrk_with_cpu(server, port: int, script: str, duration: int, threads: int, connections: int,
                 admin_engine) -> dict:
    """One wrk run (as wrk() answers it), with the CPU seconds `server`'s workers (worker_cpu) and
    the database's client backends (pg_cpu) spent in it, read from /proc before and after: what a
    call costs each side, which requests/s on a shared machine hide."""
    before, pg_before = {pid: cpu_ticks(pid) for pid in children(server.pid)}, backend_ticks(admin_engine)
    result = wrk(port, script, duration, threads, connections)
    after, pg_after = {pid: cpu_ticks(pid) for pid in children(server.pid)}, backend_ticks(admin_engine)
    return {**result, "worker_cpu": cpu_seconds(before, after), "pg_cpu": cpu_seconds(pg_before, pg_after)}
