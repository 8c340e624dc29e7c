"""Listing benchmark on PostgreSQL: ``halite.jobs`` filters, and ``search=...`` with and
without the pg_trgm index of revision 0005.

Starts a throw-away PostgreSQL server on loopback (as the tests do), creates halite's
schema, and fills ``jobs_index`` with ``--jobs`` jobs (default 1,000,000) in SQL: one job
every five seconds, functions, targets and users drawn in fixed proportions, and a few
rare jobs (``network.traceroute`` to ``rare-host`` by ``auditor``) at known places.
It times the first page of ``list_jobs`` (what ``halite.jobs`` calls) under each filter,
then for common,
middling, rare and absent texts and a jid prefix, first with the trigram index and then,
in the same run on the same rows, without it (a sequential scan),
which is what a role that may not create pg_trgm gets. Both answers are checked against
each other and the rare ones against what the generator wrote; every filtered page is
checked against the same question asked in plain SQL.

Last, as ``bench/listing.py`` does, Salt's own ``local_cache`` is filled with
``--local-jobs`` jobs (default 10,000) and timed on the same two questions, for a ratio.

The jobs fill a partition a day (``--partitions day``, as halite makes them), or all go to
the default partition (``--partitions none``): the same questions over one table.

Usage: python bench/listing_pg.py [--jobs 1000000] [--repeat 9] [--local-jobs 10000]
       [--partitions day|none]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from halite_core.queries import JobFilter, list_jobs  # noqa: E402
from halite_core.store import partitions  # noqa: E402
from halite_core.store.db import Database  # noqa: E402

EPOCH = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
RARE_EVERY = 100_003  # a rare job every this many jobs

FILL = """
INSERT INTO jobs_index (jid, function, target, target_type, "user", start_time, end_time,
    status, minions_targeted, minions_returned, minions_failed, minions_changed, result,
    master_id, system)
SELECT to_char(t, 'YYYYMMDDHH24MISS') || lpad(mod(i, 1000000)::text, 6, '0'),
       CASE WHEN mod(i, {rare}) = 7 THEN 'network.traceroute'
            ELSE (ARRAY['test.ping', 'test.ping', 'test.ping', 'state.apply', 'state.apply',
                        'cmd.run', 'cmd.run', 'grains.items', 'pkg.install',
                        'saltutil.find_job', 'service.restart', 'pkg.upgrade'])[1 + mod(i, 12)]
       END,
       CASE WHEN mod(i, {rare}) = 7 THEN 'rare-host'
            ELSE (ARRAY['minion' || lpad(mod(i, 1000)::text, 5, '0'), 'web*', 'G@os:Debian',
                        'db1,db2,db3'])[1 + mod(i / 12, 4)]
       END,
       'glob',
       CASE WHEN mod(i, {rare}) = 7 THEN 'auditor'
            ELSE (ARRAY['root', 'root', 'root', 'salt-api',
                        'user' || lpad(mod(i, 20)::text, 2, '0')])[1 + mod(i / 7, 5)]
       END,
       t, t + interval '2 seconds', 'complete', 5, 5, 0, 0, 'pass', 'master1',
       mod(i, 12) = 9 AND mod(i, {rare}) <> 7
FROM generate_series(0, {n} - 1) AS i,
     LATERAL (SELECT timestamptz '{epoch}' + i * interval '5 seconds' AS t) AS times
"""

INDEX = "ix_jobs_index_search_trgm"


def timed(
    db: Database, text: str | None, repeat: int, **filters: Any
) -> tuple[list[float], list[str]]:
    times, answer = [], []
    for _ in range(repeat):
        with db.read() as conn:
            started = time.perf_counter()
            page = list_jobs(conn, JobFilter(search=text, **filters), limit=50)
            times.append((time.perf_counter() - started) * 1000)
        answer = [job["jid"] for job in page["jobs"]]
    return times, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--local-jobs", type=int, default=10_000)
    parser.add_argument(
        "--partitions", choices=("day", "none"), default="day",
        help="day: a partition for each day of the jobs, as a live database has them;"
        " none: every job in the default partition, as one plain table",
    )  # fmt: skip
    args = parser.parse_args()

    from tests.pgserver import PostgresServer

    server = PostgresServer().start()
    try:
        server.wait_ready()
        db = Database(server.create_database())
        db.ensure_schema()
        days = 5 * args.jobs // 86400 + 1
        if args.partitions == "day":
            with db.engine.begin() as conn:
                partitions.create_ahead(conn, EPOCH.date(), "day", days)
        started = time.perf_counter()
        with db.engine.begin() as conn:
            conn.exec_driver_sql(FILL.format(n=args.jobs, rare=RARE_EVERY, epoch=EPOCH.isoformat()))
            conn.exec_driver_sql("ANALYZE jobs_index")
            size = conn.exec_driver_sql(f"SELECT pg_relation_size('{INDEX}')").scalar() or 0
        print(
            f"{args.jobs:,} jobs over {days} days written in {time.perf_counter() - started:.0f} s"
            f" with the search index in place; the index holds {size / 2**20:.0f} MiB;"
            f" partitions: {'one a day' if args.partitions == 'day' else 'the default only'}"
        )
        rare = (args.jobs - 1 - 7) // RARE_EVERY + 1 if args.jobs > 7 else 0
        one_hour = EPOCH + dt.timedelta(seconds=5 * args.jobs // 2)
        hour_end = one_hour + dt.timedelta(hours=1)
        hour = f"start_time >= '{one_hour.isoformat()}' AND start_time < '{hour_end.isoformat()}'"
        # (filters, the same question in plain SQL to check the answer against)
        filters: dict[str, tuple[dict[str, Any], str]] = {
            "no filter": ({}, "NOT system"),
            "fun=test.ping (25%)": ({"fun": "test.ping"}, "function = 'test.ping'"),
            f"fun=network.traceroute ({rare})": (
                {"fun": "network.traceroute"}, "function = 'network.traceroute'"),
            "fun=state.*": ({"fun": "state.*"}, "function LIKE 'state.%' AND NOT system"),
            "fun=pkg.*": ({"fun": "pkg.*"}, "function LIKE 'pkg.%' AND NOT system"),
            "fun=*.ping": ({"fun": "*.ping"}, "function LIKE '%.ping' AND NOT system"),
            "target=web*": ({"target": "web*"}, "target LIKE 'web%' AND NOT system"),
            "user=root": ({"user": "root"}, "\"user\" = 'root' AND NOT system"),
            f"user=auditor ({rare})": ({"user": "auditor"}, "\"user\" = 'auditor' AND NOT system"),
            "status=running (none)": ({"status": "running"}, "status = 'running' AND NOT system"),
            "one hour (start, end)": (
                {"start": one_hour, "end": hour_end},
                f"{hour} AND NOT system"),
            "include_system=True": ({"include_system": True}, "true"),
        }  # fmt: skip
        print(f"\nFirst page of 50, median (slowest) of {args.repeat}, on {args.jobs:,} jobs:")
        medians = {}
        for name, (given, where) in filters.items():
            times, answer = timed(db, None, args.repeat, **given)
            with db.read() as conn:
                expected = conn.exec_driver_sql(
                    f"SELECT jid FROM jobs_index WHERE {where} "
                    "ORDER BY start_time DESC, jid DESC LIMIT 50".replace("%", "%%")
                ).scalars().all()  # fmt: skip
            if answer != expected:
                raise SystemExit(f"{name}: halite.jobs and plain SQL disagree")
            medians[name] = statistics.median(times)
            print(f"{name:34} {medians[name]:9.1f} ms ({max(times):5.1f})")
        old_hour = (EPOCH + dt.timedelta(seconds=5 * args.jobs // 10)).strftime("%Y%m%d%H")
        texts = {
            "common (test.ping, 25%)": "ping",
            "middling (pkg.upgrade, 8%)": "pkg.up",
            f"rare function ({rare} jobs)": "traceroute",
            f"rare target ({rare} jobs)": "rare-host",
            f"rare user ({rare} jobs)": "auditor",
            "absent": "nosuchthing",
            "jid prefix, an old hour": old_hour,
        }
        results: dict[str, dict[str, tuple[list[float], list[str]]]] = {}
        for label in ("pg_trgm index", "no index (scan)"):
            if label.startswith("no index"):
                with db.engine.begin() as conn:
                    conn.exec_driver_sql(f"DROP INDEX {INDEX}")
            results[label] = {name: timed(db, text, args.repeat) for name, text in texts.items()}
        indexed, scanned = results["pg_trgm index"], results["no index (scan)"]
        for name in texts:
            if indexed[name][1] != scanned[name][1]:
                raise SystemExit(f"{name}: the index and the scan disagree")
            if name.startswith("rare") and len(indexed[name][1]) != min(rare, 50):
                raise SystemExit(f"{name}: {len(indexed[name][1])} jobs, expected {rare}")
        print(f"\nFirst page of 50, median (slowest) of {args.repeat}, on {args.jobs:,} jobs:")
        print(f"{'search':34} {'pg_trgm index':>20} {'no index (scan)':>20} {'ratio':>8}")
        for name in texts:
            a, b = indexed[name][0], scanned[name][0]
            print(
                f"{name:34} {statistics.median(a):9.1f} ms ({max(a):5.1f}) "
                f"{statistics.median(b):9.1f} ms ({max(b):5.1f}) "
                f"{statistics.median(b) / statistics.median(a):7.1f}x"
            )
        db.dispose()
    finally:
        server.destroy()
    from listing import bench_local_cache  # bench/listing.py

    workdir = Path(tempfile.mkdtemp(prefix="halite-listing-pg-"))
    try:
        lc = bench_local_cache(workdir, args.local_jobs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nlocal_cache with {args.local_jobs:,} jobs x 5 returns (filled in {lc['fill_s']:.0f} s),"
        f" median ms, and halite on PostgreSQL with {args.jobs:,} jobs:"
    )
    for theirs, mine in (("get_jids_filter(50)", "no filter"),
                         ("jobs.list_jobs search_function=state.*", "fun=state.*")):  # fmt: skip
        print(
            f"  {theirs:<40} local_cache {lc[theirs]:9.1f}  halite ({mine}) "
            f"{medians[mine]:6.2f}  RATIO {lc[theirs] / medians[mine]:,.0f}x"
        )


if __name__ == "__main__":
    main()
