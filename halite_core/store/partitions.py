"""Time partitions of the large tables on PostgreSQL.

``jobs_index``, ``job_returns`` and ``state_results`` are range-partitioned by ``jid`` on
PostgreSQL: a Salt jid is the time of its publish (``YYYYMMDDhhmmssffffff``), so the range
``['20261201', '20261202')`` holds the jobs of one day, with their returns and states. The
jid is every one of these tables' key, so the keys, the upserts (``ON CONFLICT (jid)``) and
the foreign keys stay as they are on SQLite, and every read of one job touches one
partition (partition pruning).

- Each table has a ``<table>_default`` partition: a jid whose range has no partition (a job
  of a day before partitioning began, or one published under a skewed clock) goes there.
  When the range of a job from a clock ahead comes due, its partition is made and the
  job's rows move out of the default one (PostgreSQL refuses the partition otherwise, and
  the whole interval would then be written to the default partition, out of reach of
  retention's drops).
- Partitions are created ahead (``partitions_ahead`` intervals beyond the current one) by
  whichever process writes, under one advisory lock, so that several masters on one
  database never race: the first creates, the others find them there. A creation waits at
  most :data:`LOCK_TIMEOUT` for the tables' locks and is tried again later; meanwhile rows
  go to the default partition, which loses nothing.
- Retention drops a partition whole (:meth:`Partitions.drop_expired`) only when every job in
  it is one ``clean_old_jobs`` would remove; the jobs of a partition that holds one to keep
  (the boundary day, a job still running) are removed row by row, as on SQLite.

The interval is ``day`` (the default), ``week`` (from Monday) or ``month``; changing it
later starts the new interval after the partitions already made.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import Any

from sqlalchemy import Connection, and_, false, func, not_, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from halite_core.store.schema import Base, jobs_index

log = logging.getLogger(__name__)

# Dropped in this order (a returns partition refers to its jobs partition), created in the
# reverse one.
TABLES = ("state_results", "job_returns", "jobs_index")
INTERVALS = ("day", "week", "month")
LOCK_KEY = zlib.crc32(b"halite partitions")
LOCK_TIMEOUT = "1s"  # what a creation or a drop waits for the tables' locks
CHECK_EVERY = 600.0  # seconds between a process's checks that the partitions ahead exist
RETRY_AFTER = 60.0  # seconds before a check that failed is tried again
_BOUND = re.compile(r"FOR VALUES FROM \('(?P<lo>[^']*)'\) TO \('(?P<hi>[^']*)'\)")


@dataclasses.dataclass(frozen=True, order=True)
class Range:
    """A partition's jids: from ``lo`` (included) to ``hi`` (excluded), both dates."""

    lo: dt.date
    hi: dt.date

    @property
    def suffix(self) -> str:
        return f"p{self.lo:%Y%m%d}"

    def bounds(self) -> tuple[str, str]:
        return f"{self.lo:%Y%m%d}", f"{self.hi:%Y%m%d}"


def interval_start(day: dt.date, interval: str) -> dt.date:
    """The first day of the interval holding ``day``."""
    if interval == "day":
        return day
    if interval == "week":
        return day - dt.timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown partition interval {interval!r}; known: {', '.join(INTERVALS)}")


def next_start(start: dt.date, interval: str) -> dt.date:
    """The first day of the interval after the one starting at ``start``."""
    if interval == "day":
        return start + dt.timedelta(days=1)
    if interval == "week":
        return start + dt.timedelta(days=7)
    if interval == "month":
        return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    raise ValueError(f"unknown partition interval {interval!r}; known: {', '.join(INTERVALS)}")


def wanted(today: dt.date, interval: str, ahead: int) -> list[Range]:
    """The intervals that should exist: the current one and ``ahead`` more."""
    ranges = []
    start = interval_start(today, interval)
    for _ in range(ahead + 1):
        end = next_start(start, interval)
        ranges.append(Range(start, end))
        start = end
    return ranges


def _date(bound: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(bound, "%Y%m%d").date()
    except ValueError:
        return None


def existing(conn: Connection, table: str) -> dict[str, Range | None]:
    """The partitions of ``table`` by name: their range, or None for the default one (and
    for one whose bounds halite did not write)."""
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:t AS regclass)"
        ),
        {"t": table},
    ).all()
    found: dict[str, Range | None] = {}
    for name, bound in rows:
        match = _BOUND.match(bound or "")
        lo = _date(match["lo"]) if match else None
        hi = _date(match["hi"]) if match else None
        found[name] = Range(lo, hi) if lo is not None and hi is not None else None
    return found


def is_partitioned(conn: Connection, table: str = "jobs_index") -> bool:
    return bool(
        conn.execute(
            text("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)"),
            {"t": table},
        ).first()
    )


def uncovered(needed: Sequence[Range], made: Sequence[Range]) -> list[Range]:
    """The parts of ``needed`` no partition in ``made`` covers (ranges may not overlap)."""
    missing = []
    for want in needed:
        lo = want.lo
        for have in sorted(made):
            if have.hi <= lo or have.lo >= want.hi:
                continue
            if have.lo > lo:
                missing.append(Range(lo, have.lo))
            lo = max(lo, have.hi)
        if lo < want.hi:
            missing.append(Range(lo, want.hi))
    return missing


def _lock(conn: Connection) -> None:
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")


def create_ahead(conn: Connection, today: dt.date, interval: str, ahead: int) -> list[str]:
    """Create the partitions of the current interval and ``ahead`` more that are missing,
    in ``conn``'s transaction; returns the names created. A range whose rows are already in
    the default partition (a future jid) is made with those rows moved in, and said."""
    _lock(conn)
    made = [r for r in existing(conn, "jobs_index").values() if r is not None]
    created = []
    for part in uncovered(wanted(today, interval, ahead), made):
        lo, hi = part.bounds()
        try:
            with conn.begin_nested():
                for table in reversed(TABLES):
                    conn.exec_driver_sql(
                        f"CREATE TABLE IF NOT EXISTS {table}_{part.suffix} PARTITION OF {table}"
                        f" FOR VALUES FROM ('{lo}') TO ('{hi}')"
                    )
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "23514":  # check_violation
                raise
            try:
                moved = _create_from_default(conn, part)
            except DBAPIError as exc:
                # The tables busy (a VACUUM of a default partition, a long transaction):
                # the other ranges are made all the same, this one at the next check.
                log.warning(
                    "halite: no partition yet for jids %s to %s, whose jobs the default"
                    " partition holds (published under a clock ahead of this one): moving"
                    " them failed (%s); tried again at the next check",
                    lo, hi, str(exc.orig or exc).strip().splitlines()[0],
                )  # fmt: skip
                continue
            log.warning(
                "halite: the default partition held %d jobs of jids %s to %s (published under"
                " a clock ahead of this one): moved into the new partition",
                moved, lo, hi,
            )  # fmt: skip
        created.append(f"jobs_index_{part.suffix}")
    if created:
        log.info("halite: created partitions %s", ", ".join(created))
    return created


def _create_from_default(conn: Connection, part: Range) -> int:
    """Make ``part``'s partitions when the default ones already hold rows of its range
    (jids from a clock ahead), moving those rows in: PostgreSQL refuses a new partition
    whose rows the default partition holds. In one savepoint of ``conn``'s transaction (an
    error undoes all of it), the three parent tables and their default partitions locked
    first in the writers' order (jobs, then returns, then states), and only for as long as
    the move takes: the default partition is detached, the new one made, the range's rows
    copied into it and deleted from the default, which is attached again. Returns how many
    jobs moved."""
    lo, hi = part.bounds()
    jobs = 0
    with conn.begin_nested():
        # The parents alone (ONLY) and their default partitions: every read and write goes
        # through a parent, and the other partitions, which a VACUUM may hold, are not
        # touched.
        names = [f"ONLY {t}, {t}_default" for t in reversed(TABLES)]
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE")
        for table in reversed(TABLES):
            quote = conn.dialect.identifier_preparer.quote
            columns = ", ".join(quote(c.name) for c in Base.metadata.tables[table].c)
            default, new = f"{table}_default", f"{table}_{part.suffix}"
            inside = f"jid >= '{lo}' AND jid < '{hi}'"
            conn.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {default}")
            conn.exec_driver_sql(
                f"CREATE TABLE {new} PARTITION OF {table} FOR VALUES FROM ('{lo}') TO ('{hi}')"
            )
            count = conn.exec_driver_sql(
                f"INSERT INTO {new} ({columns}) SELECT {columns} FROM {default} WHERE {inside}"
            ).rowcount
            conn.exec_driver_sql(f"DELETE FROM {default} WHERE {inside}")
            conn.exec_driver_sql(f"ALTER TABLE {table} ATTACH PARTITION {default} DEFAULT")
            if table == "jobs_index":
                jobs = int(count)
    return jobs


class Partitions:
    """A process's upkeep of the partitions of one PostgreSQL database."""

    def __init__(self, interval: str = "day", ahead: int = 2) -> None:
        if interval not in INTERVALS:
            raise ValueError(f"unknown partition interval {interval!r}")
        self.interval = interval
        self.ahead = ahead
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.today: Callable[[], dt.date] = _utc_today  # the day whose jids are written now

    def configure(self, interval: str, ahead: int) -> None:
        """The settings of the process's job store (``partition_interval``, ``ahead``)."""
        if (interval, ahead) != (self.interval, self.ahead):
            if interval not in INTERVALS:
                raise ValueError(f"unknown partition interval {interval!r}")
            self.interval, self.ahead = interval, ahead
            self._next_check = 0.0

    def maybe_create(self, engine: Engine) -> None:
        """Create the partitions ahead if this process has not checked lately; a failure
        (the tables locked, the database away) is logged and tried again later, never
        raised: the write that comes next goes to a partition or to the default one."""
        now = time.monotonic()
        if now < self._next_check or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + RETRY_AFTER
            day = self.today()
            with engine.connect() as conn, conn.begin():
                if not is_partitioned(conn):
                    self._next_check = now + CHECK_EVERY
                    return
                create_ahead(conn, day, self.interval, self.ahead)
            self._next_check = now + CHECK_EVERY
        except Exception as exc:  # noqa: BLE001 - upkeep; the writes go on
            log.warning("halite: could not create the partitions ahead (%s); retrying later", exc)
        finally:
            self._lock.release()


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


@dataclasses.dataclass
class Dropped:
    partitions: list[str]
    ranges: list[tuple[str, str]]  # the jids of each, from (included) and to (excluded)
    jobs: int


def drop_expired(
    begin: Callable[[], ContextManager[Connection]],
    cutoff: dt.datetime,
    idle: Sequence[Any],
    before_drop: Callable[[Connection, str, str], int],
) -> Dropped:
    """Drop the partitions wholly older than ``cutoff`` (by jid) all of whose jobs match
    ``idle`` (the predicates of retention on ``jobs_index``), each in a transaction of its
    own from ``begin()``:

    1. the partition's three tables are locked (EXCLUSIVE: reads go on, a late write to
       that old partition waits), so that no job in it becomes active after the check;
    2. a job to keep (``idle`` not true) leaves the partition to the row-by-row clean-up;
    3. ``before_drop(conn, lo, hi)`` records the jids removed and refreshes what refers to
       them, the partition's rows still there, and returns how many jobs it holds;
    4. the partitions are detached and dropped, last: their parents' lock is held a moment.

    A partition whose locks are not had within :data:`LOCK_TIMEOUT` (or any database
    error) ends this pass, logged: it and the later ones are left for the next clean-up."""
    dropped = Dropped([], [], 0)
    cut = cutoff.date()
    with begin() as conn:
        candidates = [
            (name, part)
            for name, part in sorted(existing(conn, "jobs_index").items())
            if part is not None and part.hi <= cut
        ]
    # A job for which retention's predicate is not true (false, or NULL: a time not known)
    # is one the row-by-row clean-up keeps.
    to_keep = not_(func.coalesce(and_(*idle), false()))
    for name, part in candidates:
        try:
            jobs = _drop_one(begin, name, part, to_keep, before_drop)
        except DBAPIError as exc:
            log.warning(
                "halite: partition %s not dropped this time, its old jobs go row by row (%s)",
                name, str(exc.orig or exc).strip().splitlines()[0],
            )  # fmt: skip
            break
        if jobs is None:
            continue
        dropped.jobs += jobs
        dropped.partitions.append(name)
        dropped.ranges.append(part.bounds())
    return dropped


def _drop_one(
    begin: Callable[[], ContextManager[Connection]],
    name: str,
    part: Range,
    to_keep: Any,
    before_drop: Callable[[Connection, str, str], int],
) -> int | None:
    """One partition's drop (see :func:`drop_expired`): how many jobs it held, or None
    when it stays."""
    j = jobs_index.c
    lo, hi = part.bounds()
    with begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if not conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({LOCK_KEY})").scalar():
            return None  # another master is at it
        if name not in existing(conn, "jobs_index"):
            return None  # dropped meanwhile
        for table in reversed(TABLES):  # the writers' order: the jobs first
            conn.exec_driver_sql(f"LOCK TABLE {table}_{part.suffix} IN EXCLUSIVE MODE")
        kept = conn.execute(select(j.jid).where(j.jid >= lo, j.jid < hi, to_keep).limit(1))
        if kept.first() is not None:
            return None  # a job to keep: this partition is cleaned row by row
        jobs = before_drop(conn, lo, hi)
        for table in TABLES:
            conn.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {table}_{part.suffix}")
            conn.exec_driver_sql(f"DROP TABLE {table}_{part.suffix}")
    return jobs
