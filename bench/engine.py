"""Engine benchmark: bus events processed per second by one engine process, and how long
a change waits before it is in the database.

Synthetic events as a busy master emits them (publishes, then a fan-in of returns), fed
to the engine's core (halite_core.active) the way its Salt loop does: handled one by one,
with a tick (probes, settling, batch writes) after each slice of events. The index is a
SQLite file. Two configurations: the default with halite as the master job cache (the
returner writes returns, the engine tracks and settles), and ``write_returns: true`` (the
engine writes every return itself, for masters that keep another job cache). Afterwards
the index is checked: every job complete, every return counted.

Usage: python bench/engine.py [--jobs 500] [--minions 40] [--fan-in 5000]
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from halite_core.active import ActiveJobs
from halite_core.config import EngineOptions, Settings
from halite_core.jobcache import JobStore
from halite_core.store.schema import jobs_index

BASE = 20261128000000000000
STATE_RETURN = {
    f"pkg_|-pkg{i}_|-pkg{i}_|-installed": {
        "result": True, "comment": "installed", "changes": {}, "duration": 1.5, "__run_num__": i,
    }
    for i in range(5)
}  # fmt: skip


def events(jobs: int, minions: int, fan_in: int):
    """``(tag, data)`` for ``jobs`` jobs of ``minions`` minions, then one of ``fan_in``."""
    sizes = [minions] * jobs + ([fan_in] if fan_in else [])
    for n, size in enumerate(sizes):
        jid = str(BASE + n * 1000)
        names = [f"minion{m:05d}" for m in range(size)]
        fun = "state.apply" if n % 2 else "test.ping"
        yield f"salt/job/{jid}/new", {
            "jid": jid, "fun": fun, "arg": [], "tgt": "*", "tgt_type": "glob", "user": "root",
            "minions": names, "missing": [], "_stamp": "2026-11-28T12:00:00.000000",
        }  # fmt: skip
        for name in names:
            yield f"salt/job/{jid}/ret/{name}", {
                "jid": jid, "id": name, "fun": fun, "fun_args": [],
                "return": STATE_RETURN if fun == "state.apply" else True, "retcode": 0,
                "success": True, "_stamp": "2026-11-28T12:00:01.000000",
            }  # fmt: skip


def run(root: Path, work: list, write_returns: bool, slice_: int) -> dict:
    settings = Settings.from_opts({"cachedir": str(root), "id": "bench_master"})
    store = JobStore(settings)
    engine = ActiveJobs(store, EngineOptions(write_returns=write_returns), lambda jid, m: None)
    engine.recover()
    start = time.perf_counter()
    for n, (tag, data) in enumerate(work, 1):
        engine.handle(tag, data)
        if n % slice_ == 0:
            engine.tick()
    engine.flush()
    seconds = time.perf_counter() - start
    with store.db.read() as conn:
        jobs, done, returned = conn.execute(
            select(
                func.count(),
                func.count().filter(jobs_index.c.status == "complete"),
                func.sum(jobs_index.c.minions_returned),
            )
        ).one()
    store.db.dispose()
    return {
        "events": len(work),
        "seconds": seconds,
        "max_delay": engine.max_delay,
        "jobs": jobs,
        "complete": done,
        "returned": returned or 0,
        "running_left": len(engine.jobs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--minions", type=int, default=40)
    parser.add_argument("--fan-in", type=int, default=5000)
    parser.add_argument("--slice", type=int, default=200, help="events between ticks")
    args = parser.parse_args()
    work = list(events(args.jobs, args.minions, args.fan_in))
    returns = sum(1 for tag, _ in work if "/ret/" in tag)
    workdir = Path(tempfile.mkdtemp(prefix="halite-engine-bench-"))
    try:
        results = {
            name: run(workdir / name, work, write_returns, args.slice)
            for name, write_returns in (("tracking", False), ("write_returns", True))
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"engine: {len(work)} events ({args.jobs} jobs x {args.minions} minions and one "
        f"{args.fan_in}-minion fan-in), one engine process, SQLite"
    )
    for name, res in results.items():
        rate = res["events"] / res["seconds"]
        print(
            f"   {name:<14} {rate:>9.0f} events/s   event-to-database delay at most "
            f"{res['max_delay'] * 1000:.0f} ms   (targets: >= 20,000 events/s, < 1,000 ms)"
        )
        expected_returned = returns if name == "write_returns" else 0
        assert res["jobs"] == args.jobs + bool(args.fan_in), res
        assert res["running_left"] == 0, res
        if name == "write_returns":
            assert res["complete"] == res["jobs"] and res["returned"] == expected_returned, res


if __name__ == "__main__":
    main()
