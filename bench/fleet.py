"""Fleet benchmark: ``halite.minions``, ``halite.minion``, ``halite.states``, ``halite.state``
and ``halite.jobs result=failed`` on a week of a 10,000-minion fleet, on SQLite and on
PostgreSQL; Salt's local_cache walked as SaltGUI's Highstate page walks it; and what the
fleet tables cost the committer on ingest.

The fleet (``--minions`` 10,000, ``--days`` 7): every hour each minion runs a
``state.apply`` of 50 states (24 runs a day: 168 jobs to all minions, 1,680,000 state
returns) and answers a ``test.ping`` (as many returns again). Besides: a ``cmd.run`` every
four hours on the 100 minions ``minion000*`` (3% of them fail it), a daily ``pkg.upgrade``
on ``minion001*``, and Salt's own ``saltutil.find_job`` every hour on 20 minions (a
bookkeeping job: never a minion's latest job). "2% of the states failing and 5% of the
states changing on 5% of the minions" is read as: in each run a fresh 5% of the minions
(drawn per run) have trouble: one of their 50 states fails (2%), one of five flaky states,
some more often than others, and two or three others change something (5% on average);
the other 95% pass unchanged. So the failing minions are those in the latest run's 5%,
every ``state.apply`` job's result is failed, and state_results holds about 290,000 rows.

1. The index is written in bulk into a schema made by halite's own migrations, with the
   encodings halite's writer uses (UTC text times on SQLite, timestamptz on PostgreSQL,
   JSON, booleans): jobs_index with its counts and result, job_returns with the state
   counts, retcode, success and test_run, state_results with the failed and changed
   states. A state return's ``return_value`` is a short stand-in: 1.68M full highstates
   would be 25 GB, and the fleet views never read it (bench/listing.py times a job's
   detail on full ones). minion_status is not written by hand: a row per minion, then
   halite's own ``refresh_minions_sql`` over every minion and the healthy update
   ``refresh_minions`` runs (timed: it is also what that SQL costs on a big history).
   PostgreSQL is a throw-away server on loopback (as in the tests), loaded with COPY and
   then analysed, as autovacuum would soon after such a load. Then each question is
   asked, in this process, warm, the way the Service asks it (a read connection per call,
   as a user who may view every job: the Service audits a read only when it denies it),
   ``--repeat`` times: best and median against the issue's target (20 ms, 50 ms for
   ``halite.states``), "ok" or "OVER" by the median. Every answer is checked against the
   generator's truth (minion_status row by row, the first pages, the failing minions to
   the last one, the counts): a fast wrong answer ends the run.
2. The baseline without halite: local_cache cannot reasonably hold 1.68M return files, so
   it is filled at a smaller scale (``--small-minions`` 1,000 x ``--small-days`` 1: 24 runs
   of 50 states, with the same other jobs) through Salt's loader and its returner, full
   highstates this time, and read as SaltGUI's Highstate page reads it: ``jobs.list_jobs``
   with search_function state.apply, then the newest jobs' returns (``jobs.list_job``, at
   most 10) until every minion has its latest run, each minion's states looked through for
   a failure. It is timed through the jobs runner (what salt-run and salt-api run, a
   MasterMinion per call) and through the returner's calls alone (get_jids, get_jid: the
   cache's own cost). halite's index is built at the same small scale, and the ratio
   compares that walk with ``halite.minions`` first page + ``failing=True`` first page.
3. The fleet tables' cost on ingest: bench/ingest.py's workload (1 ``state.apply`` in 5
   jobs, whose return has a failed and a changed state) journalled by worker processes
   while the bench holds the committer's locks (as bench/load.py's ``apart()``), then
   drained by the engine's committer in a process of its own; once with the fleet writes,
   once without them (in that process only, ``halite_core.store.fleet.note_returns``
   replaced by a no-op: the difference is exactly what the tables cost), alternating for
   ``--rounds`` rounds, on SQLite and on PostgreSQL (``--ingest-backends``), each run
   into an empty index. Then the same on top of the week's index of part 1 (each
   backend's, before it goes): a ``state.apply`` on every minion of the fleet at a time,
   ``--history-rounds`` rounds: what the tables cost where the history is large.

Usage: python bench/fleet.py [--minions 10000] [--days 7] [--repeat 15]
       [--backends sqlite,postgresql] [--small-minions 1000] [--small-days 1]
       [--ingest-jobs 3000] [--ingest-minions 10] [--rounds 3]
       [--ingest-backends sqlite,postgresql] [--history-rounds 2]
Quick (about half a minute): python bench/fleet.py --minions 1000 --days 1 --small-minions 200
       --ingest-jobs 500 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select, text  # noqa: E402

from halite_core import fleet as views  # noqa: E402
from halite_core.api import MinionQuery, MinionsQuery, StateQuery, StatesQuery  # noqa: E402
from halite_core.config import Settings  # noqa: E402
from halite_core.durability.committer import ENGINE_LOCK, LOCK  # noqa: E402
from halite_core.jobcache import JobStore  # noqa: E402
from halite_core.queries import JobFilter, list_jobs  # noqa: E402
from halite_core.store.db import Database, get_database  # noqa: E402
from halite_core.store.fleet import refresh_minions_sql  # noqa: E402
from halite_core.store.schema import job_returns, minion_status, state_results  # noqa: E402

EPOCH = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)
PAGE = 50
STATE_VALUE = '{"bench": "a return of 50 states, not stored at this scale"}'


# ---------------------------------------------------------------------- the states
class State(NamedTuple):
    key: str  # module_|-id_|-name_|-function, as Salt names a state in its return
    state_id: str
    module: str
    function: str  # module.function
    name: str
    sls: str
    run_num: int


def _states() -> tuple[State, ...]:
    kinds = (
        (20, "file", "managed", "conf", "/etc/app/conf{:02d}.cfg", "app.config"),
        (10, "pkg", "installed", "pkg", "app-lib{:02d}", "base.packages"),
        (10, "service", "running", "svc", "app-worker{:02d}", "app.services"),
        (10, "cmd", "run", "check", "/usr/local/bin/check{:02d}", "app.checks"),
    )
    found = []
    for count, module, fun, prefix, name, sls in kinds:
        for _ in range(count):
            i = len(found)
            sid, full = f"{prefix}{i:02d}", name.format(i)
            found.append(State(f"{module}_|-{sid}_|-{full}_|-{fun}", sid, module,
                               f"{module}.{fun}", full, sls, i))  # fmt: skip
    return tuple(found)


STATES = _states()
# The states that fail, and how often one fails rather than another.
FLAKY = (43, 27, 5, 36, 48)
FLAKY_WEIGHTS = (8, 4, 2, 1, 1)
CHANGERS = tuple(range(20))  # the file states change something now and then
DURATION_MS = 2.5


def comment(state: State, result: str) -> str:
    if result == "failed":
        return {
            "file": f"Source file salt://app/{state.state_id}.cfg not found",
            "pkg": f"Problem encountered installing package(s): {state.name}",
            "service": f"Service {state.name} failed to start",
            "cmd": f'Command "{state.name}" run failed: exit code 1',
        }[state.module]
    if result == "changed":
        return f"File {state.name} updated"
    return {
        "file": f"File {state.name} is in the correct state",
        "pkg": "All specified packages are already installed",
        "service": f"The service {state.name} is already running",
        "cmd": "unless condition is true",
    }[state.module]


def salt_state(state: State, result: str) -> dict[str, Any]:
    """One state of a return as a minion sends it."""
    return {
        "result": result != "failed",
        "comment": comment(state, result),
        "changes": {"diff": "--- \n+++ \n@@ -1 +1 @@\n-old\n+new\n"} if result == "changed" else {},
        "duration": DURATION_MS,
        "start_time": "12:00:00.000000",
        "__run_num__": state.run_num,
        "__sls__": state.sls,
        "__id__": state.state_id,
        "name": state.name,
    }


CLEAN_RUN = {state.key: salt_state(state, "pass") for state in STATES}


# ---------------------------------------------------------------------- the fleet
@dataclasses.dataclass(frozen=True)
class Job:
    jid: str
    function: str
    start: dt.datetime
    target: str
    target_type: str
    minions: range | tuple[int, ...]
    system: bool = False
    arguments: tuple[str, ...] = ()


# A minion's trouble in one run: the state that failed and those that changed.
Trouble = tuple[int, tuple[int, ...]]


class Encoding(NamedTuple):
    """How halite's writer stores a time and a boolean on a backend."""

    time: Callable[[dt.datetime], str]
    true: Any
    false: Any


SQLITE = Encoding(lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S.%f"), 1, 0)
POSTGRES = Encoding(lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S.%f+00"), True, False)

JOB_COLUMNS = (
    "jid", "function", "target", "target_type", "user", "arguments", "kwargs", "start_time",
    "end_time", "last_return_at", "status", "minions_targeted", "minions_returned",
    "minions_failed", "minions_changed", "result", "master_id", "load", "system", "created_at",
)  # fmt: skip
RETURN_COLUMNS = (
    "jid", "minion", "state", "expected", "function", "start_time", "returned_at",
    "return_value", "return_truncated", "retcode", "success", "out", "states_total",
    "states_passed", "states_failed", "states_changed", "states_duration_ms", "test_run",
)  # fmt: skip
STATE_COLUMNS = (
    "jid", "minion", "state_key", "state_id", "function", "name", "sls", "result", "comment",
    "run_num", "start_time", "returned_at", "test_run",
)  # fmt: skip


def jid_of(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S%f")


class Fleet:
    """The generated history and its truth: who had which trouble in which run."""

    def __init__(self, minions: int, days: int, seed: int = 7) -> None:
        self.names = [f"minion{m:05d}" for m in range(minions)]
        self.jobs: list[Job] = []
        self.trouble: dict[str, dict[int, Trouble]] = {}
        self.cmd_failed: dict[str, frozenset[int]] = {}
        everyone = range(minions)
        scoped = range(min(100, minions))  # minion000*
        upgraded = range(100, min(200, minions))  # minion001*
        for hour in range(days * 24):
            at = EPOCH + hour * HOUR
            rnd = random.Random(f"{seed}/{hour}")
            run = Job(jid_of(at), "state.apply", at, "*", "glob", everyone)
            troubled = sorted(rnd.sample(everyone, max(1, minions // 20)))
            trouble: dict[int, Trouble] = {}
            for m in troubled:
                failed = rnd.choices(FLAKY, FLAKY_WEIGHTS)[0]
                others = [i for i in CHANGERS if i != failed]
                changed = rnd.sample(others, 2 if rnd.random() < 0.5 else 3)
                trouble[m] = (failed, tuple(sorted(changed)))
            self.trouble[run.jid] = trouble
            self.jobs.append(run)
            ping = at + dt.timedelta(minutes=30)
            self.jobs.append(Job(jid_of(ping), "test.ping", ping, "*", "glob", everyone))
            probe = at + dt.timedelta(minutes=40)
            probed = tuple(troubled[:20])
            self.jobs.append(Job(jid_of(probe), "saltutil.find_job", probe,
                                 ",".join(self.names[m] for m in probed), "list", probed,
                                 system=True, arguments=(run.jid,)))  # fmt: skip
            if hour % 4 == 0:
                cmd = at + dt.timedelta(minutes=15)
                job = Job(jid_of(cmd), "cmd.run", cmd, "minion000*", "glob", scoped,
                          arguments=("uptime",))  # fmt: skip
                self.cmd_failed[job.jid] = frozenset(m for m in scoped if rnd.random() < 0.03)
                self.jobs.append(job)
            if hour % 24 == 3 and upgraded:
                upgrade = at + dt.timedelta(minutes=45)
                self.jobs.append(Job(jid_of(upgrade), "pkg.upgrade", upgrade, "minion001*",
                                     "glob", upgraded))  # fmt: skip
        self.jobs.sort(key=lambda job: job.start)
        self.runs = [job for job in self.jobs if job.function == "state.apply"]
        self.now = EPOCH + days * 24 * HOUR  # the end of the generated history
        self._last: dict[int, str] = {}
        for job in reversed(self.jobs):
            if not job.system:
                for m in job.minions:
                    self._last.setdefault(m, job.jid)
            if len(self._last) == minions:
                break

    # ------------------------------------------------------------------ rows
    @staticmethod
    def returned_at(job: Job, m: int) -> dt.timedelta:
        if job.function == "state.apply":
            return dt.timedelta(seconds=10 + m % 50)
        return dt.timedelta(seconds=1 + (m % 10) / 10)

    def minion_result(self, job: Job, m: int) -> str:
        if job.function == "state.apply":
            return "failed" if m in self.trouble[job.jid] else "pass"
        if job.function == "cmd.run":
            return "failed" if m in self.cmd_failed[job.jid] else "pass"
        return "pass"

    def job_result(self, job: Job) -> str:
        if job.function == "state.apply":
            return "failed" if self.trouble[job.jid] else "pass"
        if job.function == "cmd.run":
            return "failed" if self.cmd_failed[job.jid] else "pass"
        return "pass"

    def job_row(self, job: Job, enc: Encoding) -> tuple[Any, ...]:
        n = len(job.minions)
        if job.function == "state.apply":
            failed = changed = len(self.trouble[job.jid])
        elif job.function == "cmd.run":
            failed, changed = len(self.cmd_failed[job.jid]), 0
        else:
            failed = changed = 0
        end = job.start + max(self.returned_at(job, m) for m in job.minions[:50])
        start = enc.time(job.start)
        return (
            job.jid, job.function, job.target, job.target_type, "root",
            json.dumps(list(job.arguments)), "{}", start, enc.time(end), enc.time(end),
            "complete", n, n, failed, changed, self.job_result(job), "bench_master", None,
            enc.true if job.system else enc.false, start,
        )  # fmt: skip

    def return_rows(
        self, job: Job, enc: Encoding
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """job_returns and state_results rows of a job, as halite's writer stores them."""
        jid, names, start = job.jid, self.names, enc.time(job.start)
        t, f = enc.true, enc.false
        spread = 50 if job.function == "state.apply" else 10
        times = [enc.time(job.start + self.returned_at(job, m)) for m in range(spread)]
        returns: list[tuple[Any, ...]] = []
        states: list[tuple[Any, ...]] = []
        if job.function == "state.apply":
            trouble = self.trouble[jid]
            total = len(STATES)
            duration = DURATION_MS * total
            for m in job.minions:
                at = times[m % spread]
                hit = trouble.get(m)
                if hit is None:
                    returns.append((jid, names[m], "returned", t, "state.apply", start, at,
                                    STATE_VALUE, f, 0, t, "highstate", total, total, 0, 0,
                                    duration, f))  # fmt: skip
                    continue
                failed, changed = hit
                returns.append((jid, names[m], "returned", t, "state.apply", start, at,
                                STATE_VALUE, f, 2, f, "highstate", total, total - 1, 1,
                                len(changed), duration, f))  # fmt: skip
                for i in sorted((failed, *changed)):
                    s = STATES[i]
                    result = "failed" if i == failed else "changed"
                    states.append((jid, names[m], s.key, s.state_id, s.function, s.name,
                                   s.sls, result, comment(s, result), s.run_num, start, at,
                                   f))  # fmt: skip
            return returns, states
        bad = self.cmd_failed.get(jid, frozenset())
        value = {"test.ping": "true", "cmd.run": '"up 3 days"'}.get(job.function, "{}")
        for m in job.minions:
            retcode = 1 if m in bad else 0
            returns.append((jid, names[m], "returned", t, job.function, start,
                            times[m % spread], value, f, retcode, f if retcode else t, None,
                            None, None, None, None, None, None))  # fmt: skip
        return returns, states

    def salt_return(self, job: Job, m: int) -> dict[str, Any]:
        """A minion's return as Salt's master hands it to the job cache."""
        ret: dict[str, Any] = {"id": self.names[m], "jid": job.jid, "fun": job.function,
                               "fun_args": list(job.arguments)}  # fmt: skip
        if job.function == "state.apply":
            hit = self.trouble[job.jid].get(m)
            value = CLEAN_RUN
            if hit is not None:
                value = dict(CLEAN_RUN)
                failed, changed = hit
                value[STATES[failed].key] = salt_state(STATES[failed], "failed")
                for i in changed:
                    value[STATES[i].key] = salt_state(STATES[i], "changed")
            ret.update({"return": value, "retcode": 2 if hit else 0, "success": not hit,
                        "out": "highstate"})  # fmt: skip
        else:
            failed = m in self.cmd_failed.get(job.jid, frozenset())
            value = {"test.ping": True, "cmd.run": "up 3 days"}.get(job.function, {})
            ret.update({"return": value, "retcode": int(failed), "success": not failed})
        return ret

    # ------------------------------------------------------------------ truth
    def failing(self) -> list[str]:
        """The minions whose latest state run failed, by id."""
        return sorted(self.names[m] for m in self.trouble[self.runs[-1].jid])

    def minion_order(self) -> list[str]:
        """halite.minions' order: failing first, then by id."""
        failing = set(self.failing())
        return sorted(self.names, key=lambda name: (name not in failing, name))

    def history(self, m: int) -> list[tuple[str, str]]:
        """(jid, the minion's result) of its jobs, newest first, bookkeeping left out."""
        mine = [job for job in self.jobs if not job.system and m in job.minions]
        return [(job.jid, self.minion_result(job, m)) for job in reversed(mine)]

    def last_job(self, m: int) -> str:
        """The jid of the minion's latest job, bookkeeping left out."""
        return self._last[m]

    def states_window(self, hours: int) -> list[tuple[str, int, int, str, str]]:
        """(state_key, minions, runs, first, last) of the states that failed in the last
        ``hours`` before ``now``, busiest first."""
        since = self.now - hours * HOUR
        seen: dict[str, tuple[set[int], list[dt.datetime]]] = {}
        for run in self.runs:
            if not since <= run.start <= self.now:
                continue
            for m, (failed, _) in self.trouble[run.jid].items():
                minions, times = seen.setdefault(STATES[failed].key, (set(), []))
                minions.add(m)
                times.append(run.start)
        rows = [(key, len(ms), len(ts), min(ts).isoformat(), max(ts).isoformat())
                for key, (ms, ts) in seen.items()]  # fmt: skip
        return sorted(rows, key=lambda row: (-row[1], -row[2], row[0]))

    def state_runs(self, state_id: str) -> tuple[list[tuple[str, str, str]], int, int]:
        """A state's failed and changed runs (jid, minion, result), newest first, and how
        many runs and minions it failed in."""
        index = next(s.run_num for s in STATES if s.state_id == state_id)
        rows = []
        failed_minions: set[int] = set()
        failed_runs = 0
        for run in self.runs:
            for m, (failed, changed) in self.trouble[run.jid].items():
                if index == failed:
                    rows.append((run.start, run.jid, self.names[m], "failed"))
                    failed_runs += 1
                    failed_minions.add(m)
                elif index in changed:
                    rows.append((run.start, run.jid, self.names[m], "changed"))
        rows.sort(reverse=True)
        return [row[1:] for row in rows], failed_runs, len(failed_minions)

    def failed_jobs(self) -> list[str]:
        failed = [job.jid for job in self.jobs
                  if not job.system and self.job_result(job) == "failed"]  # fmt: skip
        return failed[::-1]

    def counts(self) -> tuple[int, int, int]:
        """(jobs, returns, state rows)."""
        returns = sum(len(job.minions) for job in self.jobs)
        states = sum(1 + len(c) for t in self.trouble.values() for _, c in t.values())
        return len(self.jobs), returns, states


# ---------------------------------------------------------------------- building
def _columns(columns: tuple[str, ...]) -> str:
    return ", ".join(f'"{name}"' for name in columns)  # "user" is a keyword on PostgreSQL


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({_columns(columns)}) VALUES ({', '.join('?' * len(columns))})"


def build_sqlite(path: Path, fleet: Fleet) -> float:
    """Write the index into a schema halite's migrations made; returns the seconds."""
    t0 = time.perf_counter()
    db = get_database(f"sqlite:///{path}")
    db.ensure_schema()
    db.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-2000000")
    conn.executemany(_insert("jobs_index", JOB_COLUMNS),
                     [fleet.job_row(job, SQLITE) for job in fleet.jobs])  # fmt: skip
    for job in fleet.jobs:
        returns, states = fleet.return_rows(job, SQLITE)
        conn.executemany(_insert("job_returns", RETURN_COLUMNS), returns)
        conn.executemany(_insert("state_results", STATE_COLUMNS), states)
    conn.commit()
    conn.close()
    return time.perf_counter() - t0


def build_postgres(url: str, fleet: Fleet) -> tuple[float, float]:
    """The same on PostgreSQL, with COPY; then VACUUM ANALYZE, as autovacuum would soon
    after such a load. Returns the seconds of both."""
    import psycopg
    from sqlalchemy import make_url

    t0 = time.perf_counter()
    Database(url).ensure_schema()
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY jobs_index ({_columns(JOB_COLUMNS)}) FROM STDIN") as copy:
                for job in fleet.jobs:
                    copy.write_row(fleet.job_row(job, POSTGRES))
            # One COPY at a time on a connection: the state rows wait (a few hundred
            # thousand) until the returns are in.
            states: list[tuple[Any, ...]] = []
            with cur.copy(f"COPY job_returns ({_columns(RETURN_COLUMNS)}) FROM STDIN") as copy:
                for job in fleet.jobs:
                    returns, more = fleet.return_rows(job, POSTGRES)
                    for row in returns:
                        copy.write_row(row)
                    states += more
            with cur.copy(f"COPY state_results ({_columns(STATE_COLUMNS)}) FROM STDIN") as copy:
                for row in states:
                    copy.write_row(row)
        conn.commit()
    loaded = time.perf_counter()
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return loaded - t0, time.perf_counter() - loaded


HEALTHY = (
    "UPDATE minion_status SET healthy = CASE WHEN state_result = 'failed' THEN 0 ELSE 1 END"
    " WHERE minion IN ({})"
)


def fill_minion_status(db: Database, fleet: Fleet) -> float:
    """minion_status from the history with halite's own SQL: a row per minion, then every
    row refreshed as retention refreshes the minions it touched; returns the seconds."""
    every = "SELECT minion FROM minion_status"
    t0 = time.perf_counter()
    with db.write() as conn:
        conn.execute(minion_status.insert(), [{"minion": n, "healthy": 1} for n in fleet.names])
        conn.execute(text(refresh_minions_sql(every)))
        conn.execute(text(HEALTHY.format(every)))
    if db.dialect_name == "postgresql":
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE minion_status"
            )
    return time.perf_counter() - t0


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"WRONG ANSWER: {what}")


def check_minion_status(db: Database, fleet: Fleet) -> None:
    """Every row of minion_status against the generator's truth."""
    latest = fleet.runs[-1]
    trouble = fleet.trouble[latest.jid]
    with db.read() as conn:
        rows = {row.minion: row for row in conn.execute(select(minion_status))}
    check(len(rows) == len(fleet.names), f"{len(rows)} minion_status rows, not {len(fleet.names)}")
    for m, name in enumerate(fleet.names):
        row = rows[name]
        hit = trouble.get(m)
        want = (latest.jid, "failed" if hit else "pass", 0 if hit else 1,
                1 if hit else 0, len(hit[1]) if hit else 0, fleet.last_job(m))  # fmt: skip
        got = (row.state_jid, row.state_result, row.healthy, row.states_failed,
               row.states_changed, row.last_jid)  # fmt: skip
        check(got == want, f"minion_status of {name}: {got}, not {want}")


# ---------------------------------------------------------------------- the questions
class Question(NamedTuple):
    label: str
    target_ms: float
    ask: Callable[[Any], Any]
    check: Callable[[Any], None]


def questions(fleet: Fleet) -> list[Question]:
    latest = fleet.runs[-1]
    trouble = fleet.trouble[latest.jid]
    index = {name: m for m, name in enumerate(fleet.names)}
    failing = fleet.failing()
    drill = failing[0]  # the first failing minion, as a user drills down from the list
    busiest = fleet.states_window(24)[0][0]
    state_id = next(s.state_id for s in STATES if s.key == busiest)

    def minions_page(page: Any) -> None:
        got = [entry["minion"] for entry in page["minions"]]
        check(got == fleet.minion_order()[:PAGE], f"halite.minions first page: {got[:5]}...")
        for entry in page["minions"]:
            m = index[entry["minion"]]
            hit = trouble.get(m)
            run = entry["state_run"]
            want = (True, latest.jid, "failed", [STATES[hit[0]].state_id], 1, len(hit[1])) if hit \
                else (False, latest.jid, "pass", [], 0, 0)  # fmt: skip
            got_run = (entry["failing"], run["jid"], run["result"], run["failing_states"],
                       run["counts"]["failed"], run["counts"]["changed"])  # fmt: skip
            check(got_run == want, f"{entry['minion']}: {got_run}, not {want}")
            check(entry["last_job"]["jid"] == fleet.last_job(m), f"{entry['minion']}: last job")

    def failing_page(page: Any) -> None:
        got = [entry["minion"] for entry in page["minions"]]
        check(got == failing[:PAGE], "halite.minions failing=True: first page")
        check(all(entry["failing"] for entry in page["minions"]), "failing=True: healthy listed")

    def history(page: Any) -> None:
        got = [(job["jid"], job["result"]) for job in page["jobs"]]
        check(got == fleet.history(index[drill])[:PAGE], f"halite.minion {drill}: first page")

    def states(page: Any) -> None:
        got = [(s["state_key"], s["minions"], s["runs"], s["first"], s["last"])
               for s in page["states"]]  # fmt: skip
        check(got == fleet.states_window(24)[:PAGE], f"halite.states window=24h: {got[:2]}")

    def state(page: Any) -> None:
        runs, failed_runs, failed_minions = fleet.state_runs(state_id)
        got = [(r["jid"], r["minion"], r["result"]) for r in page["runs"]]
        check(got == runs[:PAGE], f"halite.state {state_id}: first page")
        totals = (page["failed"]["runs"], page["failed"]["minions"])
        check(totals == (failed_runs, failed_minions), f"halite.state {state_id}: {totals}")

    def failed_jobs(page: Any) -> None:
        got = [job["jid"] for job in page["jobs"]]
        check(got == fleet.failed_jobs()[:PAGE], "halite.jobs result=failed: first page")

    return [
        Question("halite.minions (first page)", 20,
                 lambda c: views.minions(c, MinionsQuery(limit=PAGE)), minions_page),
        Question("halite.minions failing=True", 20,
                 lambda c: views.minions(c, MinionsQuery(failing=True, limit=PAGE)),
                 failing_page),
        Question(f"halite.minion {drill}", 20,
                 lambda c: views.minion_history(c, drill, MinionQuery(limit=PAGE)), history),
        Question("halite.states window=24h", 50,
                 lambda c: views.failing_states(c, StatesQuery(window="24h", limit=PAGE),
                                                now=fleet.now), states),
        Question(f"halite.state {state_id}", 20,
                 lambda c: views.state_history(c, state_id, StateQuery(limit=PAGE)), state),
        Question("halite.jobs result=failed", 20,
                 lambda c: list_jobs(c, JobFilter(result="failed", limit=PAGE)), failed_jobs),
    ]  # fmt: skip


def check_all_failing(db: Database, fleet: Fleet) -> int:
    """Every page of ``failing=True``: exactly the minions whose latest run failed."""
    seen: list[str] = []
    cursor = None
    with db.read() as conn:
        while True:
            page = views.minions(conn, MinionsQuery(failing=True, limit=500, cursor=cursor))
            seen += [entry["minion"] for entry in page["minions"]]
            if not (cursor := page["next"]):
                break
    check(seen == fleet.failing(), f"failing=True lists {len(seen)}, not {len(fleet.failing())}")
    return len(seen)


def ask(db: Database, question: Question, repeat: int) -> tuple[float, float]:
    """Best and median ms of ``repeat`` warm calls, each in its own read connection as
    the Service makes them; the first and the last answers are checked."""
    with db.read() as conn:
        question.check(question.ask(conn))  # warm-up
    times = []
    answer = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        with db.read() as conn:
            answer = question.ask(conn)
        times.append((time.perf_counter() - t0) * 1000)
    question.check(answer)
    return min(times), statistics.median(times)


def bench_index(db: Database, fleet: Fleet, repeat: int) -> dict[str, Any]:
    found: dict[str, Any] = {"refresh_s": fill_minion_status(db, fleet)}
    check_minion_status(db, fleet)
    found["failing"] = check_all_failing(db, fleet)
    with db.read() as conn:
        stored = conn.scalar(select(func.count()).select_from(job_returns))
        kept = conn.scalar(select(func.count()).select_from(state_results))
    _, returns, states = fleet.counts()
    check(stored == returns, f"{stored} returns stored, not {returns}")
    check(kept == states, f"{kept} state rows stored, not {states}")
    found["times"] = {q.label: (q.target_ms, *ask(db, q, repeat)) for q in questions(fleet)}
    return found


# ---------------------------------------------------------------------- local_cache
def fill_local_cache(root: Path, fleet: Fleet) -> tuple[types.SimpleNamespace, float]:
    from ingest import make_master  # bench/ingest.py: a master's opts and returners

    master = make_master(root, "local_cache")
    returners = master.returners
    prep = returners["local_cache.prep_jid"]
    save_load = returners["local_cache.save_load"]
    returner = returners["local_cache.returner"]
    t0 = time.perf_counter()
    for job in fleet.jobs:
        load = {"jid": job.jid, "fun": job.function, "arg": list(job.arguments),
                "tgt": job.target, "tgt_type": job.target_type, "user": "root"}  # fmt: skip
        prep(nocache=False, passed_jid=job.jid)
        save_load(job.jid, load, [fleet.names[m] for m in job.minions])
        for m in job.minions:
            returner(fleet.salt_return(job, m))
    return master, time.perf_counter() - t0


def _failed(value: object) -> bool | None:
    """Whether a state return has a failed state (None: not a state return)."""
    if not isinstance(value, dict):
        return None
    return any(isinstance(s, dict) and s.get("result") is False for s in value.values())


def latest_highstates(
    newest_jobs: Callable[[], list[str]],
    returns_of: Callable[[str], dict[str, Any]],
    minions: set[str],
) -> dict[str, bool]:
    """SaltGUI's Highstate page: the newest state jobs (at most 10), newest first, read
    until every minion has its latest run; minion -> whether that run failed."""
    seen: dict[str, bool] = {}
    for jid in newest_jobs()[:10]:
        for minion, ret in returns_of(jid).items():
            if minion in seen or minion not in minions:
                continue
            failed = _failed(ret.get("return"))
            if failed is not None:
                seen[minion] = failed
        if len(seen) == len(minions):
            break
    return seen


def bench_local_cache(master: types.SimpleNamespace, fleet: Fleet) -> dict[str, float]:
    import salt.runners.jobs

    salt.runners.jobs.__opts__ = master.opts  # the jobs runner as salt-run loads it
    # The runner never destroys the MasterMinion it makes per call, and Salt says so.
    logging.getLogger("salt.minion").setLevel(logging.ERROR)
    returners = master.returners
    minions = set(fleet.names)

    def by_runner() -> dict[str, bool]:
        def newest() -> list[str]:
            # Newest first (SaltGUI sorts by start time; a jid is its start time).
            return sorted(salt.runners.jobs.list_jobs(search_function="state.apply"), reverse=True)

        return latest_highstates(
            newest, lambda jid: salt.runners.jobs.list_job(jid)["Result"], minions
        )

    def by_returner() -> dict[str, bool]:
        def newest() -> list[str]:
            jobs = returners["local_cache.get_jids"]()
            return sorted((jid for jid, job in jobs.items() if job["Function"] == "state.apply"),
                          reverse=True)  # fmt: skip

        return latest_highstates(newest, returners["local_cache.get_jid"], minions)

    found = {}
    for label, walk in (("runner", by_runner), ("returner", by_returner)):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            seen = walk()
            # The page itself: failing first, then by id; and the failing ones.
            order = sorted(seen, key=lambda name: (not seen[name], name))
            failing = [name for name in order if seen[name]]
            times.append((time.perf_counter() - t0) * 1000)
            check(order[:PAGE] == fleet.minion_order()[:PAGE], f"local_cache ({label}): order")
            check(failing == fleet.failing(), f"local_cache ({label}): failing minions")
        found[label] = statistics.median(times)
    return found


# ---------------------------------------------------------------------- ingest
# The calls of one job: its jid, its publish, its minions and their returns.
Work = list[tuple[str, dict[str, Any], list[str], list[dict[str, Any]]]]


def _journal(settings: Settings, work: Work, part: int, parts: int) -> None:
    """A master's worker: its share of the publishes and returns, journalled only (the
    returns of one job reach several workers, as Salt's worker processes take them)."""
    store = JobStore(settings)
    n = 0
    for i, (jid, load, names, returns) in enumerate(work):
        if i % parts == part:
            store.record("save_load", jid, load, names)
        for ret in returns:
            if n % parts == part:
                store.record("save_return", ret)
            n += 1


def _no_fleet(*args: Any, **kwargs: Any) -> None:
    """note_returns without the fleet tables (the "without" run only)."""


def _drain(opts: dict[str, Any], without_fleet: bool, out: Any) -> None:
    """The engine's committer draining the workers' backlog, in a process of its own."""
    if without_fleet:
        import halite_core.store.fleet

        halite_core.store.fleet.note_returns = _no_fleet
    store = JobStore(Settings.from_opts(opts))
    store.db.ensure_schema()
    t0 = time.perf_counter()
    committer = store.committer(engine=True)  # its thread takes the lock and drains
    while not committer.holds_lock():
        time.sleep(0.001)
    while committer.drain():  # taken turn about with the thread; 0: nothing is left
        pass
    out.put(time.perf_counter() - t0)
    store.close()


def drain_rate(root: Path, url: str, work: Work, workers: int, without: bool) -> float:
    """Journal ``work`` in ``workers`` processes while nobody may commit, then let the
    engine's committer drain it; returns per second of the drain."""
    opts = {"cachedir": str(root / "cache"), "id": "bench_master", "halite": {"db_url": url},
            "engines": [{"halite": {}}]}  # fmt: skip
    settings = Settings.from_opts(opts)
    JobStore(settings).db.ensure_schema()
    journals = Path(settings.journal_dir)
    journals.mkdir(parents=True, exist_ok=True)
    held = [open(journals / name, "a") for name in (LOCK, ENGINE_LOCK)]  # noqa: SIM115
    for handle in held:
        fcntl.flock(handle, fcntl.LOCK_EX)
    forked = multiprocessing.get_context("fork")
    procs = [forked.Process(target=_journal, args=(settings, work, i, workers))
             for i in range(workers)]  # fmt: skip
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
        check(proc.exitcode == 0, f"a journalling worker ended with {proc.exitcode}")
    for handle in held:
        handle.close()
    spawned = multiprocessing.get_context("spawn")
    out = spawned.Queue()
    drainer = spawned.Process(target=_drain, args=(opts, without, out))
    drainer.start()
    seconds = out.get(timeout=900)
    drainer.join(600)
    return sum(len(returns) for *_, returns in work) / seconds


def _count(url: str, table: Any, jid: str | None = None) -> int:
    db = get_database(url)
    query = select(func.count()).select_from(table)
    if jid is not None:
        query = query.where(table.c.jid == jid)
    with db.read() as conn:
        found = int(conn.scalar(query) or 0)
    return found


def ingest_once(
    root: Path, url: str, jobs: int, minions: int, workers: int, without: bool
) -> float:
    """bench/ingest.py's workload into an empty index; every row checked afterwards."""
    from ingest import workload

    rate = drain_rate(root, url, list(workload(jobs, minions)), workers, without)
    stored = _count(url, job_returns)
    check(stored == jobs * minions, f"ingest: {stored} returns stored of {jobs * minions}")
    state_runs = len(range(0, jobs, 5)) * minions
    want = (0, 0) if without else (state_runs * 2, minions)  # a failed and a changed state
    kept = (_count(url, state_results), _count(url, minion_status))
    check(kept == want, f"ingest: {kept} fleet rows, not {want}")
    get_database(url).dispose()
    return rate


def history_work(fleet: Fleet, at: dt.datetime) -> Work:
    """One more state.apply on every minion of the fleet, after its week: bench/ingest.py's
    state return (a failed and a changed state) from each."""
    from ingest import STATE_RETURN

    jid = jid_of(at)
    load = {"jid": jid, "fun": "state.apply", "arg": [], "tgt": "*", "tgt_type": "glob",
            "user": "root", "ret": "", "kwargs": {}}  # fmt: skip
    returns = [
        {"cmd": "_return", "id": name, "jid": jid, "fun": "state.apply", "fun_args": [],
         "return": STATE_RETURN, "retcode": 2, "success": False, "out": "highstate"}
        for name in fleet.names
    ]  # fmt: skip
    return [(jid, load, list(fleet.names), returns)]


def bench_history_ingest(url: str, fleet: Fleet, rounds: int) -> dict[str, list[float]]:
    """The committer on top of the week's index: a state run of the whole fleet at a time,
    with and without the fleet tables, alternating."""
    rates: dict[str, list[float]] = {"with": [], "without": []}
    later = 0
    for n in range(rounds):
        for key in ("with", "without") if n % 2 == 0 else ("without", "with"):
            later += 1
            work = history_work(fleet, fleet.now + later * HOUR)
            root = Path(tempfile.mkdtemp(prefix="halite-fleet-history-"))
            try:
                rates[key].append(drain_rate(root, url, work, 2, key == "without"))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            jid = work[0][0]
            stored = _count(url, job_returns, jid)
            check(stored == len(fleet.names), f"history ingest: {stored} returns of {jid}")
            kept = _count(url, state_results, jid)
            want = 0 if key == "without" else 2 * len(fleet.names)
            check(kept == want, f"history ingest: {kept} state rows of {jid}, not {want}")
    return rates


def bench_ingest(
    backend: str, jobs: int, minions: int, rounds: int, workers: int = 2
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"with": [], "without": []}
    workdir = Path(tempfile.mkdtemp(prefix="halite-fleet-ingest-"))
    server = None
    try:
        if backend == "postgresql":
            from tests.pgserver import PostgresServer

            server = PostgresServer().start()
            server.wait_ready()
        # Alternating, so that a slow spell of a shared machine hits both.
        for n in range(rounds):
            for key in ("with", "without") if n % 2 == 0 else ("without", "with"):
                root = workdir / f"{key}-{n}"
                url = server.create_database() if server else f"sqlite:///{root}/halite.db"
                os.sync()
                rate = ingest_once(root, url, jobs, minions, workers, key == "without")
                rates[key].append(rate)
                if server is not None:
                    server.drop_database(url)
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if server is not None:
            server.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    return rates


def print_ingest(name: str, rates: dict[str, list[float]]) -> None:
    for key in ("with", "without"):
        spread = ", ".join(f"{rate:,.0f}" for rate in rates[key])
        print(f"   {name:<10} {key + ' the fleet tables':<26} best {max(rates[key]):>8,.0f}"
              f" returns/s   (rounds: {spread})")  # fmt: skip
    # What a return takes with the tables over what it takes without, round by round (the
    # two runs of a round back to back), and best against best.
    extra = [(b / a - 1) * 100 for a, b in zip(rates["with"], rates["without"], strict=True)]
    best = (max(rates["without"]) / max(rates["with"]) - 1) * 100
    rounds = ", ".join(f"{e:.1f}%" for e in extra)
    print(f"   {name:<10} extra cost of the fleet tables: min {min(extra):.1f}%, median "
          f"{statistics.median(extra):.1f}% ({rounds}); best against best {best:.1f}%")  # fmt: skip


# ---------------------------------------------------------------------- report
def verdict(target: float, median: float) -> str:
    return "ok" if median <= target else "OVER"


def print_times(results: dict[str, dict[str, Any]]) -> None:
    backends = list(results)
    head = "".join(f" {name:>10} best / median    " for name in backends)
    print(f"   {'question (first page of 50)':<31} {'target':>6}{head}(ms)")
    for label in next(iter(results.values()))["times"]:
        line = ""
        for name in backends:
            target, best, median = results[name]["times"][label]
            line += f" {best:>15.2f} / {median:>6.2f} {verdict(target, median):<4}"
        print(f"   {label:<31} {target:>6.0f}{line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minions", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--small-minions", type=int, default=1000)
    parser.add_argument("--small-days", type=int, default=1)
    parser.add_argument("--ingest-jobs", type=int, default=3000)
    parser.add_argument("--ingest-minions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ingest-backends", default="sqlite,postgresql")
    parser.add_argument("--history-rounds", type=int, default=2)
    args = parser.parse_args()
    for name in ("minions", "days", "repeat", "small_minions", "small_days", "ingest_jobs",
                 "ingest_minions", "rounds", "history_rounds"):  # fmt: skip
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    started = time.perf_counter()
    fleet = Fleet(args.minions, args.days)
    jobs, returns, states = fleet.counts()
    print(
        f"fleet: {args.minions:,} minions x {len(fleet.runs)} state runs of {len(STATES)} states"
        f" over {args.days} days; {jobs:,} jobs, {returns:,} returns, {states:,} failed or"
        f" changed states; {len(fleet.failing()):,} minions failing; {os.cpu_count()} cores"
    )
    results: dict[str, dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="halite-fleet-"))
    try:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                path = workdir / "index.db"
                build_s = build_sqlite(path, fleet)
                db = get_database(f"sqlite:///{path}")
                results["SQLite"] = bench_index(db, fleet, args.repeat)
                size = sum(p.stat().st_size for p in workdir.glob("index.db*")) / 1e6
                results["SQLite"].update(build_s=build_s, size_mb=size)
                results["SQLite"]["history"] = bench_history_ingest(
                    f"sqlite:///{path}", fleet, args.history_rounds
                )
                db.dispose()
                path.unlink()
            elif backend == "postgresql":
                from tests.pgserver import PostgresServer

                server = PostgresServer().start()
                try:
                    server.wait_ready()
                    url = server.create_database()
                    build_s, analyze_s = build_postgres(url, fleet)
                    db = Database(url)
                    results["PostgreSQL"] = bench_index(db, fleet, args.repeat)
                    with db.read() as conn:
                        size = conn.scalar(text("SELECT pg_database_size(current_database())"))
                    results["PostgreSQL"].update(
                        build_s=build_s, analyze_s=analyze_s, size_mb=(size or 0) / 1e6
                    )
                    results["PostgreSQL"]["history"] = bench_history_ingest(
                        url, fleet, args.history_rounds
                    )
                    db.dispose()
                    get_database(url).dispose()
                finally:
                    server.destroy()
            else:
                raise SystemExit(f"--backends: sqlite or postgresql, not {backend!r}")
        print("1) halite's fleet views, warm, in the process (answers checked against the truth)")
        for name, found in results.items():
            print(
                f"   {name}: built in {found['build_s']:.0f} s"
                + (f" + VACUUM ANALYZE {found['analyze_s']:.0f} s" if "analyze_s" in found else "")
                + f" ({found['size_mb']:,.0f} MB);"
                f" minion_status from the history with refresh_minions_sql in"
                f" {found['refresh_s']:.1f} s, exact for every minion"
                f" ({found['failing']:,} failing, every page of failing=True checked)"
            )
        print_times(results)

        small = Fleet(args.small_minions, args.small_days)
        _, small_returns, _ = small.counts()
        master, fill_s = fill_local_cache(workdir / "local_cache", small)
        theirs = bench_local_cache(master, small)
        path = workdir / "small.db"
        build_sqlite(path, small)
        db = get_database(f"sqlite:///{path}")
        ours = bench_index(db, small, args.repeat)["times"]
        db.dispose()
        view = ours["halite.minions (first page)"][2] + ours["halite.minions failing=True"][2]
        print(
            f"2) the fleet view without halite: local_cache at {args.small_minions:,} minions x "
            f"{len(small.runs)} runs of {len(STATES)} states ({small_returns:,} returns, filled "
            f"through its returner in {fill_s:.0f} s), read as SaltGUI's Highstate page reads "
            "it; halite (SQLite) at the same scale: halite.minions first page + failing=True"
        )
        print(f"   {'halite, first page + failing=True':<50} {view:9.2f} ms")
        for label, how in (("runner", "jobs.list_jobs + jobs.list_job (jobs runner)"),
                           ("returner", "get_jids + get_jid (returner calls only)")):  # fmt: skip
            print(f"   {'local_cache, ' + how:<50} {theirs[label]:9.1f} ms   RATIO "
                  f"{theirs[label] / view:,.0f}x")  # fmt: skip
        print(
            f"   and halite at full scale ({args.minions:,} minions x {len(fleet.runs)} runs)"
            f" against local_cache at the small one ({args.small_minions:,} x {len(small.runs)}):"
        )
        for name, found in results.items():
            full = found["times"]
            big = full["halite.minions (first page)"][2] + full["halite.minions failing=True"][2]
            print(
                f"   {'halite (' + name + ')':<50} {big:9.2f} ms   RATIO"
                f" {theirs['runner'] / big:,.0f}x (jobs runner),"
                f" {theirs['returner'] / big:,.0f}x (returner calls)"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"3) the fleet tables on ingest: bench/ingest.py's workload ({args.ingest_jobs:,} jobs x"
        f" {args.ingest_minions} returns, 1 state.apply in 5), journalled by 2 workers, then"
        f" drained by the engine's committer, {args.rounds} alternating rounds"
    )
    for backend in args.ingest_backends.split(","):
        name = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(backend)
        if name is None:
            raise SystemExit(f"--ingest-backends: sqlite or postgresql, not {backend!r}")
        rates = bench_ingest(backend, args.ingest_jobs, args.ingest_minions, args.rounds)
        print_ingest(name, rates)
    print(
        f"   and on top of part 1's index ({returns:,} returns): a state.apply on all"
        f" {args.minions:,} minions (bench/ingest.py's state return) at a time, drained the"
        f" same way, {args.history_rounds} alternating rounds"
    )
    for name, found in results.items():
        print_ingest(name, found["history"])
    print(f"whole run: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
