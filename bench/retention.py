"""Retention on PostgreSQL: one day of a 10,000-minion fleet (48 jobs of 10,000 returns:
a highstate every 30 minutes, 480,000 returns) removed by dropping its partition, against
the batched DELETE halite does on SQLite (and did before partitions), on the same rows;
and the time revision 0010 takes to convert the same history from plain tables.

Starts a throw-away PostgreSQL server on loopback (as the tests do), creates halite's
schema with its partitions, and writes the day through halite's own write path (the
returns of a state run, a summary of 12 states each, as job_returns holds them). The
database is then copied twice (CREATE DATABASE ... TEMPLATE), so that each way of
removing the day starts from the same rows:

- drop: ``clean_old_jobs`` as shipped: the day's partition, all of whose jobs are past
  ``keep_jobs_seconds``, is dropped whole (with its jids remembered and the minions'
  latest runs refreshed);
- delete: the same call with partition drops turned off: batches of ``clean_batch_size``
  jobs deleted with their returns, as on SQLite.

Both must leave the same tables (no job, no return, every jid remembered). Reported: the
seconds of each and their ratio, also counting the VACUUM a DELETE leaves to autovacuum;
the database's size before and after each (a DELETE leaves its pages to VACUUM, a drop
gives them back at once); and the time of the migration of the third copy, taken back to
revision 0009's plain tables first. The server runs with fsync off, as in the tests: on
real disks every figure is larger, the DELETE's most (it writes every row's change).

Usage: python bench/retention.py [--minions 10000] [--jobs 48]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alembic import command  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from halite_core.config import Settings  # noqa: E402
from halite_core.jobcache import JobStore  # noqa: E402
from halite_core.store import db as dbmod  # noqa: E402
from halite_core.store.schema import cleaned_jobs, job_returns, jobs_index  # noqa: E402
from tests.pgserver import PostgresServer  # noqa: E402

DAY = dt.date(2026, 11, 20)
UTC = dt.timezone.utc


def state_return(jid: str, minion: str, n: int) -> dict:
    states = {
        f"file_|-conf{i}_|-/etc/app/conf{i}_|-managed": {
            "result": True,
            "comment": "File is in the correct state",
            "changes": {},
            "duration": 1.5,
            "__run_num__": i,
            "__sls__": "app",
            "__id__": f"conf{i}",
            "name": f"/etc/app/conf{i}",
            "start_time": "12:00:00.000000",
        }  # fmt: skip
        for i in range(12)
    }
    return {"jid": jid, "id": minion, "fun": "state.apply", "fun_args": [], "return": states,
            "retcode": 0, "success": True, "out": "highstate"}  # fmt: skip


def fill(store: JobStore, minions: int, jobs: int) -> int:
    names = [f"minion{m:05d}" for m in range(minions)]
    written = 0
    for n in range(jobs):
        start = dt.datetime.combine(DAY, dt.time(), UTC) + dt.timedelta(minutes=30 * n)
        jid = start.strftime("%Y%m%d%H%M%S%f")
        load = {"jid": jid, "fun": "state.apply", "arg": [], "tgt": "*", "tgt_type": "glob",
                "user": "root"}  # fmt: skip
        store.apply_items(store.items_for("save_load", jid, load, names))
        for at in range(0, minions, 2000):
            items = []
            for minion in names[at : at + 2000]:
                items += store.items_for("save_return", state_return(jid, minion, n))
            written += store.apply_items(items)
    return written


def settings_for(url: str, tmp: Path, name: str) -> Settings:
    return Settings.from_opts(
        {
            "cachedir": str(tmp / name),
            "id": "bench",
            "halite": {"db_url": url},
            "keep_jobs_seconds": 86400,
        }  # fmt: skip
    )


def size(store: JobStore) -> int:
    with store.db.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar())


def left(store: JobStore) -> tuple[int, int, int]:
    with store.db.read() as conn:
        return (
            conn.scalar(select(func.count()).select_from(jobs_index)) or 0,
            conn.scalar(select(func.count()).select_from(job_returns)) or 0,
            conn.scalar(select(func.count()).select_from(cleaned_jobs)) or 0,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minions", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=48)
    args = parser.parse_args()
    server = PostgresServer().start()
    server.wait_ready()
    tmp = server.root / "bench"
    try:
        source_url = server.create_database("day")
        source = JobStore(settings_for(source_url, tmp, "source"))
        source.db.partitions.today = lambda: DAY
        began = time.perf_counter()
        written = fill(source, args.minions, args.jobs)
        print(f"filled one day: {args.jobs} jobs, {written:,} returns in"
              f" {time.perf_counter() - began:.0f} s ({size(source) / 2**20:,.0f} MB)")  # fmt: skip
        source.close()
        source.db.dispose()
        copies = {name: server.url(name) for name in ("drop", "delete", "migrate")}
        engine = dbmod.Database(server.url()).engine.execution_options(isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in copies:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "day"')
        engine.dispose()
        # Three days on: the jobs were written (created_at) just now, under the day's jids.
        now = dt.datetime.now(UTC) + dt.timedelta(days=3)
        timings = {}
        for name in ("drop", "delete"):
            store = JobStore(settings_for(copies[name], tmp, name))
            store.db.ensure_schema()
            if name == "delete":
                store.db.partitions = None  # batched DELETE, as on SQLite
            before = size(store)
            began = time.perf_counter()
            removed = store.clean_old_jobs(now=now)
            timings[name] = time.perf_counter() - began
            vacuum = 0.0
            if name == "delete":
                # What the DELETE leaves to (auto)vacuum before the pages can be used again.
                began = time.perf_counter()
                with store.db.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                ) as conn:
                    conn.exec_driver_sql("VACUUM jobs_index, job_returns, state_results")
                vacuum = time.perf_counter() - began
            timings[f"{name}+vacuum"] = timings[name] + vacuum
            after = size(store)
            remaining = left(store)
            assert removed == args.jobs, (name, removed)
            assert remaining == (0, 0, args.jobs), (name, remaining)
            then = f", then VACUUM {vacuum:.2f} s" if vacuum else ""
            print(f"{name:>6}: removed {removed} jobs ({written:,} returns) in"
                  f" {timings[name]:7.2f} s{then}; database {before / 2**20:,.0f} MB ->"
                  f" {after / 2**20:,.0f} MB")  # fmt: skip
            store.close()
            store.db.dispose()
        print(f"partition drop is {timings['delete'] / timings['drop']:,.1f}x faster than"
              f" batched DELETE on the same {written:,} returns,"
              f" {timings['delete+vacuum'] / timings['drop']:,.1f}x with the VACUUM"
              " the DELETE leaves")  # fmt: skip
        migrating = dbmod.Database(copies["migrate"])
        cfg = dbmod.alembic_config(migrating)
        command.downgrade(cfg, "0009")
        began = time.perf_counter()
        command.upgrade(cfg, "head")
        took = time.perf_counter() - began
        per_million = took / written * 1e6
        print(f"revision 0010 converted {args.jobs} jobs and {written:,} returns from plain"
              f" tables in {took:.1f} s ({per_million:.0f} s per million returns)")  # fmt: skip
        migrating.dispose()
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
