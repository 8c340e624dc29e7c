"""Listing and detail benchmark: ``halite.jobs`` and ``halite.job`` on a large index.

Builds a SQLite index of ``--jobs`` jobs (default 1,000,000) with five returns each
(5,000,000 returns) plus one ``state.apply`` on 1,000 minions with 50 states each, then
times the core functions the runners call (``list_jobs`` and ``job_detail``, in the
process, on a warm database): every single filter, first pages and pages further on
through the cursor. Every answer is checked against what the generator wrote, so a fast
wrong answer fails the run.

Then Salt's own ``local_cache`` is filled with as many jobs as it can reasonably hold in
the same run (``--local-jobs``, default 10,000, five returns each, written through its
returner) and timed on the same questions: ``get_jids_filter(50)`` and the ``jobs``
runner's ``list_jobs`` with a function filter. The ratio printed is local_cache's time on
its small cache over halite's on the index a hundred times larger.

The rows are generated in bulk with the same encodings halite's writer uses (UTC text
times, JSON, 0/1 booleans) into a schema created by halite's own migrations.

Usage: python bench/listing.py [--jobs 1000000] [--local-jobs 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from halite_core.queries import JobFilter, job_detail, list_jobs
from halite_core.store.db import get_database

EPOCH = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
STEP = dt.timedelta(seconds=5)  # one job every five seconds: 1M jobs cover ~58 days
MINIONS = [f"minion{m:05d}" for m in range(1000)]
USERS = ["root"] * 12 + ["salt-api"] * 4 + [f"user{u:02d}" for u in range(20)]
# (function, weight): common, middling and rare functions, and Salt's own bookkeeping.
FUNCTIONS = [
    ("test.ping", 300),
    ("state.apply", 150),
    ("state.sls", 50),
    ("state.highstate", 5),
    ("cmd.run", 200),
    ("grains.items", 100),
    ("pkg.install", 20),
    ("pkg.upgrade", 4),
    ("saltutil.sync_all", 20),
    ("saltutil.find_job", 100),
    ("network.ping", 1),
    ("service.restart", 50),
]
SYSTEM = {"saltutil.find_job"}
TARGETS = ["*"] * 30 + ["web*"] * 10 + ["db*"] * 5 + ["G@os:Debian"] * 5


def jid_of(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S%f")


def sqltime(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def generate(path: Path, jobs: int, seed: int = 7) -> dict[str, Any]:
    """Write the index; returns what the checks need to know about it."""
    db = get_database(f"sqlite:///{path}")
    db.ensure_schema()
    db.dispose()
    rnd = random.Random(seed)
    funs = [f for f, _ in FUNCTIONS]
    weights = [w for _, w in FUNCTIONS]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    truth: dict[str, Any] = {"count": {}}
    job_rows: list[tuple[Any, ...]] = []
    ret_rows: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.executemany(
            "INSERT INTO jobs_index (jid, function, target, target_type, user, arguments,"
            " kwargs, start_time, end_time, last_return_at, status, minions_targeted,"
            " minions_returned, minions_failed, master_id, load, system)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            job_rows,
        )
        conn.executemany(
            "INSERT INTO job_returns (jid, minion, state, expected, function, start_time,"
            " returned_at, return_value, return_truncated, retcode, success, out)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            ret_rows,
        )
        job_rows.clear()
        ret_rows.clear()

    running_from = jobs - 20  # the newest jobs are still running
    rare_every = max(jobs // 20, 2)
    for n in range(jobs):
        start = EPOCH + n * STEP + dt.timedelta(microseconds=rnd.randrange(1_000_000))
        jid = jid_of(start)
        fun = rnd.choices(funs, weights)[0]
        if n % rare_every == rare_every // 2:
            user = "rare-user"  # twenty jobs in the whole index
        else:
            user = rnd.choice(USERS)
        picked = rnd.sample(MINIONS, 5)
        target = rnd.choice(TARGETS) if rnd.random() < 0.7 else ",".join(picked)
        status = "running" if n >= running_from else "complete"
        end = start + dt.timedelta(seconds=2)
        failed = 1 if fun.startswith("state.") and rnd.random() < 0.1 else 0
        job_rows.append((
            jid, fun, target, "list" if "," in target else "glob", user, "[]", "{}",
            sqltime(start), None if status == "running" else sqltime(end),
            sqltime(end), status, 5, 5, failed, "bench_master", None,
            1 if fun in SYSTEM else 0,
        ))  # fmt: skip
        for i, minion in enumerate(picked):
            bad = failed and i == 0
            ret_rows.append((
                jid, minion, "returned", 1, fun, sqltime(start), sqltime(end),
                "true" if not fun.startswith("state.") else '{"ok": 1}', 0,
                1 if bad else 0, 0 if bad else 1, None,
            ))  # fmt: skip
        for key in (("fun", fun), ("user", user)):
            if fun not in SYSTEM:  # listed by default
                truth["count"][key] = truth["count"].get(key, 0) + 1
        if len(job_rows) >= 20_000:
            flush()
    flush()
    big = add_big_state_job(conn, EPOCH + jobs * STEP, rnd)
    conn.commit()
    conn.close()
    truth["big_jid"] = big
    truth["jobs"] = jobs
    truth["newest_jid"] = big
    return truth


def state_return(minion_index: int, states: int) -> dict[str, Any]:
    ret = {}
    for s in range(states):
        failed = minion_index % 97 == 0 and s == 7
        ret[f"file_|-conf{s}_|-/etc/app/conf{s}.cfg_|-managed"] = {
            "result": not failed,
            "comment": (
                "Source file salt://app/conf.cfg not found"
                if failed
                else f"File /etc/app/conf{s}.cfg is in the correct state"
            ),
            "changes": {"diff": "--- \n+++ \n@@ -1 +1 @@\n-old\n+new\n"} if s % 10 == 3 else {},
            "duration": 2.5 + s / 10,
            "start_time": "12:00:00.000000",
            "__run_num__": s,
            "__sls__": "app",
            "__id__": f"conf{s}",
            "name": f"/etc/app/conf{s}.cfg",
        }
    return ret


def add_big_state_job(conn: sqlite3.Connection, start: dt.datetime, rnd: random.Random) -> str:
    """A ``state.apply`` on 1,000 minions with 50 states each (every 97th minion fails a
    state), stored with the per-return state counts halite's writer computes."""
    jid = jid_of(start)
    end = start + dt.timedelta(seconds=40)
    failing = sum(1 for m in range(len(MINIONS)) if m % 97 == 0)
    conn.execute(
        "INSERT INTO jobs_index (jid, function, target, target_type, user, arguments, kwargs,"
        " start_time, end_time, last_return_at, status, minions_targeted, minions_returned,"
        " minions_failed, master_id, load, system)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (jid, "state.apply", "*", "glob", "root", '["app"]', "{}", sqltime(start),
         sqltime(end), sqltime(end), "complete", len(MINIONS), len(MINIONS), failing,
         "bench_master", None, 0),
    )  # fmt: skip
    rows = []
    for m, minion in enumerate(MINIONS):
        ret = state_return(m, 50)
        bad = m % 97 == 0
        changed = sum(1 for s in ret.values() if s["changes"])
        duration = round(sum(s["duration"] for s in ret.values()), 3)
        rows.append((
            jid, minion, "returned", 1, "state.apply", sqltime(start), sqltime(end),
            json.dumps(ret), 0, 2 if bad else 0, 0 if bad else 1, "highstate",
            50, 49 if bad else 50, 1 if bad else 0, changed, duration,
        ))  # fmt: skip
    conn.executemany(
        "INSERT INTO job_returns (jid, minion, state, expected, function, start_time,"
        " returned_at, return_value, return_truncated, retcode, success, out, states_total,"
        " states_passed, states_failed, states_changed, states_duration_ms)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    return jid


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def listing_cases(truth: dict[str, Any]) -> Iterator[tuple[str, JobFilter, Callable | None]]:
    """(label, filter, check) for every single filter the runner offers."""
    recent = EPOCH + truth["jobs"] * STEP / 2

    def fun_is(pattern: str) -> Callable:
        import fnmatch

        return lambda job: fnmatch.fnmatchcase(job["function"], pattern)

    yield "no filter", JobFilter(), None
    yield "fun=test.ping (30%)", JobFilter(fun="test.ping"), fun_is("test.ping")
    yield "fun=network.ping (0.1%)", JobFilter(fun="network.ping"), fun_is("network.ping")
    yield "fun=state.* (20%)", JobFilter(fun="state.*"), fun_is("state.*")
    yield "fun=pkg.* (2.4%)", JobFilter(fun="pkg.*"), fun_is("pkg.*")
    yield "fun=*.ping (30%)", JobFilter(fun="*.ping"), fun_is("*.ping")
    yield "fun=nosuch.* (none)", JobFilter(fun="nosuch.*"), fun_is("nosuch.*")
    yield "target=web*", JobFilter(target="web*"), lambda j: j["target"].startswith("web")
    yield "target=minion00042*", JobFilter(target="minion00042*"), None
    yield "user=root", JobFilter(user="root"), lambda j: j["user"] == "root"
    rare = "rare-user"
    yield "user=rare-user (20 jobs)", JobFilter(user=rare), lambda j: j["user"] == rare
    yield "status=running", JobFilter(status="running"), lambda j: j["status"] == "running"
    yield "status=complete", JobFilter(status="complete"), None
    yield "minion=minion00500", JobFilter(minion="minion00500"), None
    yield "search=state", JobFilter(search="state"), lambda j: "state" in j["function"]
    yield "search=rare-us", JobFilter(search="rare-us"), lambda j: j["user"] == "rare-user"
    yield "search=<jid prefix>", JobFilter(search=truth["big_jid"][:12]), None
    yield "start/end (one hour)", JobFilter(start=recent, end=recent + dt.timedelta(hours=1)), None
    yield "include_system", JobFilter(include_system=True), None


def bench_halite(path: Path, truth: dict[str, Any], repeat: int) -> list[tuple[str, float, float]]:
    db = get_database(f"sqlite:///{path}")
    out = []
    with db.read() as conn:
        for label, filters, check in listing_cases(truth):
            first, page = timed(lambda f=filters: list_jobs(conn, f, 50), repeat)
            assert page["jobs"] or "none" in label, f"{label}: empty page"
            if "none" in label:
                assert not page["jobs"], f"{label}: jobs listed that do not exist"
            if check is not None:
                assert all(check(job) for job in page["jobs"]), f"{label}: wrong jobs listed"
            if filters.user == "rare-user":
                want = truth["count"][("user", "rare-user")]
                assert len(page["jobs"]) == want, f"{label}: {len(page['jobs'])} jobs, not {want}"
            later = []
            cursor = page["next"]
            for _ in range(repeat):
                if not cursor:
                    break
                t0 = time.perf_counter()
                page = list_jobs(conn, filters, 50, cursor=cursor)
                later.append((time.perf_counter() - t0) * 1000)
                if check is not None:
                    assert all(check(job) for job in page["jobs"]), f"{label}: wrong page"
                cursor = page["next"]
            out.append((label, statistics.median(first), max(first + later)))
        times, detail = timed(lambda: job_detail(conn, truth["big_jid"]), max(3, repeat // 3))
        assert len(detail["minion_results"]) == len(MINIONS)
        assert detail["states"]["states"] == 50 * len(MINIONS)
        assert detail["minion_results"][0]["failed"]
        out.append(("halite.job: state.apply, 1000 minions x 50 states", min(times), max(times)))
    db.dispose()
    return out


def bench_local_cache(root: Path, jobs: int) -> dict[str, float]:
    import salt.runners.jobs
    from ingest import make_master  # bench/ingest.py: a master's opts and returners

    master = make_master(root, "local_cache")
    opts, returners = master.opts, master.returners
    rnd = random.Random(11)
    funs = [f for f, _ in FUNCTIONS]
    weights = [w for _, w in FUNCTIONS]
    t0 = time.perf_counter()
    for n in range(jobs):
        start = EPOCH + n * STEP
        jid = jid_of(start)
        fun = rnd.choices(funs, weights)[0]
        picked = rnd.sample(MINIONS, 5)
        load = {"jid": jid, "fun": fun, "arg": [], "tgt": "*", "tgt_type": "glob",
                "user": rnd.choice(USERS)}  # fmt: skip
        returners["local_cache.prep_jid"](nocache=False, passed_jid=jid)
        returners["local_cache.save_load"](jid, load, picked)
        for minion in picked:
            returners["local_cache.returner"](
                {
                    "id": minion,
                    "jid": jid,
                    "fun": fun,
                    "return": True,
                    "retcode": 0,
                    "success": True,
                }  # fmt: skip
            )
    fill_s = time.perf_counter() - t0
    # The jobs runner as salt-run loads it, with the master's opts.
    runner = types.SimpleNamespace(list_jobs=salt.runners.jobs.list_jobs)
    salt.runners.jobs.__opts__ = opts
    results = {"fill_s": fill_s}
    times, got = timed(lambda: returners["local_cache.get_jids_filter"](50), 3)
    assert len(got) == 50
    results["get_jids_filter(50)"] = statistics.median(times)
    times, got = timed(
        lambda: runner.list_jobs(search_function="state.*", display_progress=False), 3
    )
    assert got and all(job["Function"].startswith("state.") for job in got.values())
    results["jobs.list_jobs search_function=state.*"] = statistics.median(times)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--local-jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="halite-listing-"))
    try:
        path = workdir / "index.db"
        t0 = time.perf_counter()
        truth = generate(path, args.jobs)
        gen_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        print(
            f"listing: index of {args.jobs:,} jobs and {args.jobs * 5 + 1000:,} returns in "
            f"SQLite ({size_mb:,.0f} MB, generated in {gen_s:.0f} s); 50 jobs a page"
        )
        rows = bench_halite(path, truth, args.repeat)
        print(f"  {'question':<52} {'first page':>11} {'worst page':>11}   (ms)")
        for label, first, worst in rows:
            print(f"  {label:<52} {first:>11.2f} {worst:>11.2f}")
        lc = bench_local_cache(workdir / "local_cache", args.local_jobs)
        ours = {label: first for label, first, _ in rows}
        print(
            f"local_cache with {args.local_jobs:,} jobs x 5 returns (filled in "
            f"{lc['fill_s']:.0f} s), median ms, and halite on {args.jobs:,} jobs:"
        )
        pairs = [
            ("get_jids_filter(50)", "no filter"),
            ("jobs.list_jobs search_function=state.*", "fun=state.* (20%)"),
        ]
        for theirs, mine in pairs:
            print(
                f"  {theirs:<40} local_cache {lc[theirs]:9.1f}  halite ({mine}) "
                f"{ours[mine]:6.2f}  RATIO {lc[theirs] / ours[mine]:,.0f}x"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
