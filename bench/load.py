"""Load test: 8 master worker processes writing returns at once, on SQLite and PostgreSQL.

Each worker process is what a Salt master's MWorker is to halite: it has its own job store
and calls the returner for the publishes and returns it receives. The mix: for every job a
publish, then five returns; most are small (``test.ping``), one return in 200 is a 1 MB
highstate. The run is bounded by a fixed count of returns (``--returns``). Reported per
backend: returns per second (clock to the last commit of every worker), p50/p99 latency of
the returner call (the time the master's worker spends in halite), errors (calls that
raised or writes set aside; must be 0) and rows lost (returns not in the database
afterwards; must be 0). PostgreSQL is a throw-away server on loopback, as in the tests.

Two ways to commit, as on a master: ``engine``, the master's config lists the halite engine
and the engine's committer (in a process of its own) commits every worker's journal; ``own``,
no engine, and the first worker that journals commits for all. On PostgreSQL the engine's
run is made twice, with ``commit_lanes`` 2 (the default: each batch split by job into two
transactions at once) and 1 (``one-lane``: one transaction a batch), and their ratio printed.

With the engine's committer, each backend is also run in two halves: the workers alone
(nobody commits) and then the committer alone, draining their backlog; together the
halves show whether the workers or the committer bound the rate.

A third run stops the database (SQLite: another program holds its write lock; PostgreSQL:
the server is stopped) for a burst of ``--returns`` returns, and reports the committer's peak
resident memory while the journals and the spool take the burst on disk, then that every
return is in the database once it is back.

Usage: python bench/load.py [--returns 20000] [--workers 8] [--backend sqlite,postgresql]
       [--committer engine,one-lane,own,outage]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import fcntl
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from committer import EngineCommitter  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from halite_core.config import Settings  # noqa: E402
from halite_core.durability.committer import ENGINE_LOCK, LOCK  # noqa: E402
from halite_core.jobcache import JobStore  # noqa: E402
from halite_core.store.schema import job_returns  # noqa: E402

MINIONS_PER_JOB = 5
BIG_EVERY = 200
GOAL = 10_000  # returns/s on PostgreSQL with 8 workers, the large-sites goal


def big_highstate() -> dict:
    """About 1 MB: 400 states with a 2.5 kB diff each."""
    diff = "".join(f"+line {n} of the new configuration\n" for n in range(80))
    return {
        f"file_|-conf{i}_|-/etc/app/conf{i}_|-managed": {
            "result": i % 50 != 7,
            "comment": f"File /etc/app/conf{i} updated",
            "changes": {"diff": diff},
            "duration": 3.5,
            "__run_num__": i,
            "__sls__": "app",
            "__id__": f"conf{i}",
            "name": f"/etc/app/conf{i}",
            "start_time": "12:00:00.000000",
        }
        for i in range(400)
    }


def worker(settings: Settings, index: int, jobs: int, start_gate, results, wait=True) -> None:
    store = JobStore(settings)
    big = big_highstate()
    base = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc) + dt.timedelta(hours=index)
    latencies = []
    errors = 0
    count = 0
    start_gate.wait(60)
    t0 = time.perf_counter()
    for n in range(jobs):
        jid = (base + dt.timedelta(milliseconds=n)).strftime("%Y%m%d%H%M%S%f")
        minions = [f"w{index}-m{m}" for m in range(MINIONS_PER_JOB)]
        big_job = n % (BIG_EVERY // MINIONS_PER_JOB) == 0
        fun = "state.apply" if big_job else "test.ping"
        load = {"jid": jid, "fun": fun, "arg": [], "tgt": minions, "tgt_type": "list",
                "user": "root"}  # fmt: skip
        calls = [("save_load", jid, load, minions)]
        for m, minion in enumerate(minions):
            value = big if big_job and m == 0 else True
            calls.append(("save_return", {"jid": jid, "id": minion, "fun": fun, "return": value,
                                          "retcode": 0, "success": True}))  # fmt: skip
        for op, *args in calls:
            c0 = time.perf_counter()
            try:
                if store.record(op, *args) is not True:
                    errors += 1
            except Exception:  # noqa: BLE001 - counted: the returner must never raise
                errors += 1
            latencies.append(time.perf_counter() - c0)
            count += op == "save_return"
    if wait:
        store.flush(timeout=600)  # until a committer has taken every write of this worker
    elapsed = time.perf_counter() - t0
    rejected = len(list(Path(settings.spool_dir, "rejected").glob("*.json")))
    cpu = time.process_time()
    results.put((count, elapsed, latencies, errors, len(store.spool.waiting()), rejected, cpu))


def run(
    backend: str, url: str, root: Path, returns: int, workers: int, how: str, server=None
) -> dict:
    opts = {"cachedir": str(root / "cache"), "id": "load_master", "halite": {"db_url": url}}
    if how == "own":
        found = _run(backend, opts, returns, workers)
    else:
        opts["engines"] = [{"halite": {}}]
        if how == "one-lane":
            opts["halite"]["commit_lanes"] = 1  # each batch in one transaction, as before
        if how == "outage":
            # The database stopped for the whole burst: another program holds SQLite's
            # write lock; the committer gives up on each batch at once and spools it.
            opts["halite"].update(sqlite_busy_timeout=0.05, spool_replay_interval=0.5)
            JobStore(Settings.from_opts(opts)).db.ensure_schema()
            blocker = sqlite3.connect(url.removeprefix("sqlite:///"))
            blocker.execute("BEGIN EXCLUSIVE")
        with EngineCommitter(opts) as engine:
            before = server.cpu_seconds() if server is not None else 0.0
            found = _run(backend, opts, returns, workers)
            if how == "outage":
                found["spool_mb"] = _size(Path(Settings.from_opts(opts).spool_dir)) / 1e6
                blocker.rollback()
                blocker.close()
                t0 = time.perf_counter()
                found["lost"] = _wait_stored(opts, found["returns"], 600)
                found["recovery_s"] = time.perf_counter() - t0
            if server is not None:
                found["db_cpu"] = server.cpu_seconds() - before
        found["rss_mb"] = engine.peak_rss_mb
        found["committer_cpu"] = engine.cpu_seconds
    if "lost" not in found:
        found["lost"] = found["returns"] - _stored(opts)
    found["how"] = how
    return found


def apart(url: str, root: Path, returns: int, workers: int) -> dict:
    """The two halves of the engine run, each alone: the workers journalling while nobody
    commits (the bench holds the committer's and the engine's locks), which bounds what any
    committer can reach on this machine; then the engine's committer draining that backlog
    with the workers gone."""
    opts = {"cachedir": str(root / "cache"), "id": "load_master", "halite": {"db_url": url},
            "engines": [{"halite": {}}]}  # fmt: skip
    settings = Settings.from_opts(opts)
    journals = Path(settings.journal_dir)
    journals.mkdir(parents=True, exist_ok=True)
    held = [open(journals / name, "a") for name in (LOCK, ENGINE_LOCK)]  # noqa: SIM115
    for handle in held:
        fcntl.flock(handle, fcntl.LOCK_EX)
    found = _run("sqlite", opts, returns, workers, wait=False)
    for handle in held:
        handle.close()
    store = JobStore(settings)
    t0 = time.perf_counter()
    committer = store.committer(engine=True)  # its thread takes the lock and drains
    while not committer.holds_lock():
        time.sleep(0.001)
    while committer.drain():  # taken turn about with the thread; 0: nothing is left
        pass
    found["drain_rate"] = found["returns"] / (time.perf_counter() - t0)
    store.close()
    found["lost"] = found["returns"] - _stored(opts)
    return found


def _stored(opts: dict) -> int:
    store = JobStore(Settings.from_opts(opts))
    with store.db.read() as conn:
        stored = conn.scalar(
            select(func.count()).select_from(job_returns).where(job_returns.c.state == "returned")
        )
    store.db.dispose()
    return int(stored or 0)


def _wait_stored(opts: dict, count: int, timeout: float) -> int:
    """Returns still missing once the spool is replayed (0), or when ``timeout`` is over."""
    deadline = time.monotonic() + timeout
    while True:
        missing = count - _stored(opts)
        if missing <= 0 or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _run(backend: str, opts: dict, returns: int, workers: int, wait: bool = True) -> dict:
    settings = Settings.from_opts(opts)
    # The master's defaults: commits batched every 0.1 s by each worker's flush thread.
    settings = dataclasses.replace(settings, spool_replay_interval=0)
    JobStore(settings).db.ensure_schema()
    jobs = returns // (workers * MINIONS_PER_JOB)
    context = multiprocessing.get_context("fork")
    gate, results = context.Barrier(workers), context.Queue()
    procs = [
        context.Process(target=worker, args=(settings, i, jobs, gate, results, wait))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    outs = [results.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join(60)
    count = sum(o[0] for o in outs)
    elapsed = max(o[1] for o in outs)
    latencies = sorted(x for o in outs for x in o[2])
    errors = sum(o[3] for o in outs) + sum(o[5] for o in outs)
    spooled = max(o[4] for o in outs)
    return {
        "workers_cpu": sum(o[6] for o in outs),
        "backend": backend,
        "returns": count,
        "rate": count / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "errors": errors,
        "spooled": spooled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--returns", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--backend", default="sqlite,postgresql")
    parser.add_argument("--committer", default="engine,one-lane,own,outage")
    args = parser.parse_args()
    rows = []
    halves = {}
    for backend in args.backend.split(","):
        server = None
        try:
            if backend == "postgresql":
                from tests.pgserver import PostgresServer

                server = PostgresServer().start()
                server.wait_ready()
            for n, how in enumerate(args.committer.split(",")):
                if how == "outage" and server is not None:
                    continue  # PostgreSQL stopped under a master: tests/integration
                if how == "one-lane" and server is None:
                    continue  # SQLite commits a batch in one transaction anyway
                root = Path(tempfile.mkdtemp(prefix=f"halite-load-{backend}-{how}-"))
                try:
                    if server is not None:
                        url = server.create_database(f"load{n}")
                    else:
                        url = f"sqlite:///{root}/halite.db"
                    rows.append(run(backend, url, root, args.returns, args.workers, how, server))
                finally:
                    shutil.rmtree(root, ignore_errors=True)
            if "engine" in args.committer.split(","):
                root = Path(tempfile.mkdtemp(prefix=f"halite-load-{backend}-apart-"))
                try:
                    if server is not None:
                        url = server.create_database("apart")
                    else:
                        url = f"sqlite:///{root}/halite.db"
                    halves[backend] = apart(url, root, args.returns, args.workers)
                finally:
                    shutil.rmtree(root, ignore_errors=True)
        finally:
            if server is not None:
                server.destroy()
    print(
        f"load: {args.workers} worker processes at once, {args.returns:,} returns "
        f"(a publish per {MINIONS_PER_JOB} returns; 1 return in {BIG_EVERY} a 1 MB highstate), "
        f"{os.cpu_count()} cores"
    )
    print(f"  {'backend':<11} {'committer':<10} {'returns/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'errors':>7} {'lost':>5} {'committer RSS':>14}")  # fmt: skip
    for r in rows:
        rss = f"{r['rss_mb']:.0f} MB" if "rss_mb" in r else "(in a worker)"
        print(
            f"  {r['backend']:<11} {r['how']:<10} {r['rate']:>10,.0f} {r['p50_ms']:>8.3f} "
            f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} {r['errors']:>7} {r['lost']:>5} {rss:>14}"
        )
    for r in rows:
        if r["backend"] == "postgresql" and r["how"] == "engine":
            print(
                f"  writers on PostgreSQL: {r['rate']:,.0f} returns/s, {r['rate'] / GOAL:.2f}x the "
                f"goal of {GOAL:,} returns/s for {args.workers} workers"
            )
    for r in rows:
        if r["how"] != "one-lane":
            continue
        for lanes in rows:
            if lanes["backend"] == r["backend"] and lanes["how"] == "engine":
                print(
                    f"  RATIO {r['backend']}: a batch in two transactions at once (commit_lanes 2)"
                    f" {lanes['rate']:,.0f} returns/s vs one (commit_lanes 1)"
                    f" {r['rate']:,.0f}: {lanes['rate'] / r['rate']:.2f}x"
                )
    cores = os.cpu_count() or 1
    for r in rows:
        if r["how"] != "engine":
            continue
        # Where the time goes: CPU seconds per 1,000 returns of each part, and the rate
        # they allow when all of this machine's cores do nothing else.
        parts = {"workers": r["workers_cpu"], "committer": r["committer_cpu"]}
        if "db_cpu" in r:
            parts["PostgreSQL"] = r["db_cpu"]
        per = {name: seconds * 1000 / r["returns"] for name, seconds in parts.items()}
        print(
            f"  CPU, {r['backend']}, engine: "
            + ", ".join(f"{name} {value:.2f} s" for name, value in per.items())
            + f" per 1,000 returns; {cores} cores at most "
            f"{cores * 1000 / sum(per.values()):,.0f} returns/s"
        )
    for backend, half in halves.items():
        print(
            f"  apart, {backend}: the {args.workers} workers alone (nobody commits: the most "
            f"this machine journals) {half['rate']:,.0f} returns/s; "
            f"the engine's committer alone, draining their backlog, {half['drain_rate']:,.0f} "
            f"returns/s ({half['lost']} missing)"
        )
    for r in rows:
        if r["how"] == "outage":
            print(
                f"  outage: the database stopped for the burst; {r['spool_mb']:.0f} MB spooled on "
                f"disk, the committer's peak memory {r['rss_mb']:.0f} MB; every return in the "
                f"database {r['recovery_s']:.1f} s after it came back ({r['lost']} missing)"
            )


if __name__ == "__main__":
    main()
