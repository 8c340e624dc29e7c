"""Retention: jobs idle for longer than ``keep_jobs_seconds`` leave the index in batches,
and their jids are remembered for a while so that a late return for one is dropped."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, literal, or_, select
from sqlalchemy.exc import DBAPIError

from halite_core import jids
from halite_core.config import Settings
from halite_core.states import RUNNING
from halite_core.store import fleet, partitions
from halite_core.store.db import Database
from halite_core.store.ops import utcnow
from halite_core.store.schema import cleaned_jobs, job_returns, jobs_index, state_results
from halite_core.store.writes import insert_for

log = logging.getLogger(__name__)

TOMBSTONE_SECONDS = 7 * 86400  # a cleaned jid is remembered at least this long


class Retention:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    def _insert(self, table: object) -> Any:
        return insert_for(self.db, table)

    def clean_old_jobs(
        self, keep_seconds: int | None = None, now: dt.datetime | None = None
    ) -> int:
        """Delete, in batches, the jobs (with their returns) that are not running and whose
        last activity (written to the index, a return, its end) is more than
        ``keep_seconds`` ago; 0 keeps all. A job is aged by when it was written, not by its
        jid, as Salt's local_cache ages a job's directory, so one stored today under an old
        jid (a syndic's, a passed jid, a skewed clock) is kept. Each deleted jid is
        remembered as long again, so that a late return for it is dropped."""
        jids.remove_old_reservations(self.settings.jid_dir)
        keep = self.settings.keep_jobs_seconds if keep_seconds is None else keep_seconds
        if keep <= 0:
            return 0
        moment = now or utcnow()
        cutoff = moment - dt.timedelta(seconds=keep)
        j = jobs_index.c
        # A running job is kept, unless it has been idle for keep_running_seconds too (a
        # minion that never answers, with no engine to settle it, must not keep its job
        # forever); 0 keeps running jobs whatever their age.
        running_kept = j.status != RUNNING
        if self.settings.keep_running_seconds > 0:
            stale = moment - dt.timedelta(seconds=max(keep, self.settings.keep_running_seconds))
            running_kept = or_(
                j.status != RUNNING,
                and_(
                    j.created_at < stale,
                    or_(j.last_return_at.is_(None), j.last_return_at < stale),
                ),
            )
        idle = (
            j.created_at < cutoff,
            running_kept,
            or_(j.last_return_at.is_(None), j.last_return_at < cutoff),
            or_(j.end_time.is_(None), j.end_time < cutoff),
        )
        removed = 0
        if self.db.partitions is not None:
            removed += self._drop_partitions(cutoff, idle, moment)
        while True:
            with self.db.write() as conn:
                oldest = (
                    select(j.jid)
                    .where(*idle)
                    .order_by(j.created_at)
                    .limit(self.settings.clean_batch_size)
                )
                if not self.db.is_sqlite:
                    # Several masters on one database clean at once: each takes batches
                    # the others have not locked, so every old job is deleted exactly once.
                    oldest = oldest.with_for_update(skip_locked=True)
                batch = conn.scalars(oldest).all()
                if batch:
                    conn.execute(delete(state_results).where(state_results.c.jid.in_(batch)))
                    conn.execute(delete(job_returns).where(job_returns.c.jid.in_(batch)))
                    deleted = conn.execute(delete(jobs_index).where(jobs_index.c.jid.in_(batch)))
                    fleet.refresh_minions(conn, batch)
                    removed += deleted.rowcount
                    self._remember_cleaned(conn, batch, moment)
            if len(batch) < self.settings.clean_batch_size:
                break
        forget = moment - dt.timedelta(seconds=max(keep, TOMBSTONE_SECONDS))
        with self.db.write() as conn:
            conn.execute(delete(cleaned_jobs).where(cleaned_jobs.c.cleaned_at < forget))
        if removed:
            log.info("halite: removed %d jobs idle for more than %ss", removed, keep)
        return removed

    def _drop_partitions(self, cutoff: dt.datetime, idle: Sequence[Any], at: dt.datetime) -> int:
        """PostgreSQL: drop the partitions all of whose jobs are to go (see partitions.py),
        their jids remembered and the minions whose latest job was one of them refreshed
        first; the rest goes row by row."""
        with self.db.read() as conn:
            if not partitions.is_partitioned(conn):
                return 0

        def before_drop(conn: Connection, lo: str, hi: str) -> int:
            removed = self._remember_range(conn, lo, hi, at)
            fleet.refresh_minions_outside(conn, lo, hi)
            return removed

        try:
            dropped = partitions.drop_expired(self.db.write, cutoff, idle, before_drop)
        except DBAPIError as exc:
            # Its locks not had in time (a long read, a late write), or anything else: the
            # old jobs go row by row this time, and the drop is tried at the next clean-up.
            log.warning(
                "halite: no partition dropped this time, old jobs go row by row (%s)",
                str(exc.orig or exc).strip().splitlines()[0],
            )
            return 0
        if dropped.partitions:
            log.info(
                "halite: dropped partitions %s (%d jobs idle for more than %s)",
                ", ".join(dropped.partitions), dropped.jobs, cutoff.isoformat(),
            )  # fmt: skip
        return dropped.jobs

    def _remember_range(self, conn: Connection, lo: str, hi: str, at: dt.datetime) -> int:
        """Remember the jobs of jids ``lo`` to ``hi`` as cleaned; returns how many."""
        j = jobs_index.c
        rows = select(j.jid, literal(at, cleaned_jobs.c.cleaned_at.type)).where(
            j.jid >= lo, j.jid < hi
        )
        stmt = self._insert(cleaned_jobs).from_select(["jid", "cleaned_at"], rows)
        upsert = stmt.on_conflict_do_update(
            index_elements=["jid"], set_={"cleaned_at": stmt.excluded.cleaned_at}
        )
        conn.execute(upsert)
        return int(
            conn.scalar(select(func.count()).select_from(jobs_index).where(j.jid >= lo, j.jid < hi))
            or 0
        )

    def _remember_cleaned(self, conn: Connection, batch: Sequence[str], at: dt.datetime) -> None:
        stmt = self._insert(cleaned_jobs).values(
            jid=bindparam("jid", type_=cleaned_jobs.c.jid.type),
            cleaned_at=bindparam("at", type_=cleaned_jobs.c.cleaned_at.type),
        )
        upsert = stmt.on_conflict_do_update(
            index_elements=["jid"],
            set_={"cleaned_at": stmt.excluded.cleaned_at},
        )
        conn.execute(upsert, [{"jid": jid, "at": at} for jid in batch])
