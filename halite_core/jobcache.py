"""Salt's master job cache interface on the SQL job index.

:class:`JobStore` holds the writes (publish loads, minion returns, event batches) and the
reads Salt's ``jobs`` runner and CLI make. Its ``record_*`` methods are what Salt's job path
calls: they never raise; a write the database cannot take goes to the :class:`Spool`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.sql.dml import Insert

from halite_core import encoding, highstate, jids
from halite_core.config import Settings
from halite_core.db import Database, SchemaError, get_database
from halite_core.models import job_returns, jobs_index
from halite_core.spool import Spool

log = logging.getLogger(__name__)

NEW, RUNNING, COMPLETE = "new", "running", "complete"
PENDING, RETURNED = "pending", "returned"
FIND_JOB = "saltutil.find_job"
JOB_EVENT = re.compile(r"^salt/job/(?P<jid>[^/]+)/(?:new|ret/(?P<minion>.+))$")


class InvalidLoad(ValueError):
    """A load or return that cannot be indexed as given."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def split_arguments(arg: object) -> tuple[list[Any], dict[str, Any]]:
    """Salt's ``arg`` list holds keyword arguments as dicts flagged ``__kwarg__: True``."""
    if arg is None:
        return [], {}
    if not isinstance(arg, (list, tuple)):
        return [arg], {}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for item in arg:
        if isinstance(item, Mapping) and item.get("__kwarg__") is True:
            kwargs.update({str(k): v for k, v in item.items() if k != "__kwarg__"})
        else:
            args.append(item)
    return args, kwargs


def target_text(tgt: object) -> str | None:
    """A target as people read it: list targets comma-separated."""
    if tgt is None:
        return None
    if isinstance(tgt, (list, tuple, set)):
        return ",".join(str(t) for t in tgt)
    return str(tgt)


def is_return_load(load: Mapping[str, Any]) -> bool:
    """Salt's store_job hands every minion return to save_load too; those are not publishes."""
    return "return" in load and "id" in load and "tgt" not in load


def is_outage(exc: BaseException) -> bool:
    """True when the database could not be reached or written at all: worth spooling."""
    if isinstance(exc, (OperationalError, SchemaError, OSError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _retcode(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None if value is None else int(value)
    if isinstance(value, int):
        return value
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


RETURN_COLUMNS = (
    "state",
    "function",
    "returned_at",
    "return_value",
    "return_truncated",
    "retcode",
    "success",
    "out",
    "states_total",
    "states_passed",
    "states_failed",
    "states_changed",
    "states_duration_ms",
)


@dataclass(frozen=True)
class _ReturnStatements:
    fill: Any
    add: Any
    count: Any


@dataclass(frozen=True)
class ReturnRow:
    """One minion return, prepared for the database."""

    jid: str
    minion: str
    function: str | None
    start_time: dt.datetime
    returned_at: dt.datetime
    value: encoding.Encoded
    retcode: int | None
    success: bool | None
    out: str | None
    summary: highstate.StateSummary | None

    @property
    def failed(self) -> bool:
        return (
            self.success is False
            or (self.retcode is not None and self.retcode != 0)
            or (self.summary is not None and self.summary.failed > 0)
        )

    def columns(self) -> dict[str, Any]:
        summary = self.summary
        return {
            "state": RETURNED,
            "function": self.function,
            "returned_at": self.returned_at,
            "return_value": self.value,
            "return_truncated": self.value.truncated,
            "retcode": self.retcode,
            "success": self.success,
            "out": self.out,
            "states_total": summary.total if summary else None,
            "states_passed": summary.passed if summary else None,
            "states_failed": summary.failed if summary else None,
            "states_changed": summary.changed if summary else None,
            "states_duration_ms": summary.duration_ms if summary else None,
        }


class JobStore:
    """The job index for one database, as Salt's job cache sees it."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        self.db = db or get_database(settings.db_url, settings.sqlite_busy_timeout)
        self.spool = Spool(settings.spool_dir)
        self._next_spool_check = 0.0
        self._stmts: _ReturnStatements | None = None
        self._replay_lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def _insert(self, table: Any) -> Insert:
        if self.db.dialect_name == "postgresql":
            return postgresql.insert(table)
        if self.db.dialect_name == "sqlite":
            return sqlite.insert(table)
        return insert(table)

    def start_time(self, jid: str) -> dt.datetime:
        return jids.start_time(jid, self.settings.jid_utc)

    # ------------------------------------------------------------------ writes
    def reserve_jid(self, jid: str) -> bool:
        """Claim a freshly generated JID; False if another process already holds it."""
        stmt = self._insert(jobs_index).values(
            jid=jid,
            start_time=self.start_time(jid),
            status=NEW,
            minions_targeted=0,
            minions_returned=0,
            minions_failed=0,
            master_id=self.settings.master_id,
        )
        with self.db.write() as conn:
            return conn.execute(stmt.on_conflict_do_nothing()).rowcount == 1  # type: ignore[attr-defined]

    def new_jid(self, unique: bool = False, tries: int = 5) -> str:
        """A JID no other process has: generated like Salt's own, then reserved in the index."""
        jid = jids.gen_jid(self.settings.jid_utc, unique=unique)
        for _ in range(tries):
            if self.reserve_jid(jid):
                return jid
            jid = jids.next_jid(jid)
        raise RuntimeError(f"could not reserve a unique jid after {tries} tries")

    def save_load(
        self, jid: str, load: Mapping[str, Any], minions: Iterable[str] | None = None
    ) -> None:
        """Index a job's publish load and the minions it targeted."""
        if not jids.is_jid(jid):
            raise InvalidLoad(f"save_load: {jid!r} is not a Salt job id")
        if not isinstance(load, Mapping):
            raise InvalidLoad(
                f"save_load: the load for {jid} is a {type(load).__name__}, not a dict"
            )
        if is_return_load(load):
            return  # the returner call that follows indexes it
        if minions is None:
            minions = load.get("minions")
        with self.db.write() as conn:
            self._save_load(conn, jid, load, minions)

    def _save_load(
        self, conn: Connection, jid: str, load: Mapping[str, Any], minions: Iterable[str] | None
    ) -> None:
        args, kwargs = split_arguments(load.get("arg", load.get("fun_args")))
        start = self.start_time(jid)
        values = {
            "function": _text(load.get("fun"), 255),
            "target": target_text(load.get("tgt")),
            "target_type": _text(load.get("tgt_type", "glob"), 32),
            "user": _text(load.get("user"), 255),
            "arguments": encoding.encode(args),
            "kwargs": encoding.encode(kwargs),
            "master_id": self.settings.master_id,
            "load": encoding.encode(dict(load)),
        }
        stmt = self._insert(jobs_index).values(
            jid=jid,
            start_time=start,
            status=RUNNING,
            minions_targeted=0,
            minions_returned=0,
            minions_failed=0,
            **values,
        )
        conn.execute(stmt.on_conflict_do_update(index_elements=["jid"], set_=values))  # type: ignore[attr-defined]
        self._add_minions(conn, jid, start, minions or [])
        self._recount(conn, jid)

    def _add_minions(
        self, conn: Connection, jid: str, start: dt.datetime, minions: Iterable[str]
    ) -> None:
        rows = [
            {
                "jid": jid,
                "minion": str(m),
                "state": PENDING,
                "expected": True,
                "start_time": start,
                "return_truncated": False,
            }
            for m in sorted(set(map(str, minions)))
        ]
        if not rows:
            return
        stmt = self._insert(job_returns)
        stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
            index_elements=["jid", "minion"], set_={"expected": True}
        )
        conn.execute(stmt, rows)

    def _recount(self, conn: Connection, jid: str) -> None:
        """Set a job's counters and status from its job_returns rows (once per publish)."""
        r = job_returns.c
        failed = or_(
            r.success.is_(False), and_(r.retcode.is_not(None), r.retcode != 0), r.states_failed > 0
        )
        targeted, returned, nfailed, last = conn.execute(
            select(
                func.count(),
                func.count().filter(r.state == RETURNED),
                func.count().filter(and_(r.state == RETURNED, failed)),
                func.max(r.returned_at),
            ).where(r.jid == jid)
        ).one()
        complete = returned >= targeted
        conn.execute(
            update(jobs_index)
            .where(jobs_index.c.jid == jid)
            .values(
                minions_targeted=targeted,
                minions_returned=returned,
                minions_failed=nfailed,
                last_return_at=last,
                status=COMPLETE if complete else RUNNING,
                end_time=(last or jobs_index.c.start_time) if complete else None,
            )
        )

    def save_minions(self, jid: str, minions: Iterable[str], syndic_id: str | None = None) -> None:
        """Add minions a syndic matched to a job's target list."""
        if not jids.is_jid(jid):
            raise InvalidLoad(f"save_minions: {jid!r} is not a Salt job id")
        minions = list(minions)
        with self.db.write() as conn:
            self._ensure_job(conn, jid, {"fun": None})
            self._add_minions(conn, jid, self.start_time(jid), minions)
            self._recount(conn, jid)

    def _ensure_job(self, conn: Connection, jid: str, load: Mapping[str, Any]) -> bool:
        """Create a job row for a JID seen before its publish load; True if created."""
        args, kwargs = split_arguments(load.get("fun_args", load.get("arg")))
        stub = {k: v for k, v in load.items() if k not in ("return", "retcode", "success", "out")}
        stmt = self._insert(jobs_index).values(
            jid=jid,
            function=_text(load.get("fun"), 255),
            target=target_text(load.get("id")),
            target_type="list" if load.get("id") else None,
            user=_text(load.get("user"), 255),
            arguments=encoding.encode(args),
            kwargs=encoding.encode(kwargs),
            start_time=self.start_time(jid),
            status=RUNNING,
            minions_targeted=0,
            minions_returned=0,
            minions_failed=0,
            master_id=self.settings.master_id,
            load=encoding.encode(stub) if load.get("fun") else None,
        )
        return conn.execute(stmt.on_conflict_do_nothing()).rowcount == 1  # type: ignore[attr-defined]

    def prepare_return(
        self, load: Mapping[str, Any], returned_at: dt.datetime | None = None
    ) -> ReturnRow:
        if not isinstance(load, Mapping):
            raise InvalidLoad(f"a return must be a dict, not {type(load).__name__}")
        jid, minion = load.get("jid"), load.get("id")
        if not jids.is_jid(jid):
            raise InvalidLoad(f"return from {minion!r} has no valid jid: {jid!r}")
        if not isinstance(minion, str) or not minion:
            raise InvalidLoad(f"return for {jid} has no minion id: {minion!r}")
        assert isinstance(jid, str)
        fun = load.get("fun")
        value = load.get("return")
        summary = highstate.summarize(value) if highstate.is_state_function(fun) else None
        encoded = encoding.encode(value, self.settings.max_return_bytes)
        if encoded.truncated:
            log.warning(
                "halite: return of %s for %s is %d bytes, over max_return_bytes=%d: truncated",
                minion,
                jid,
                encoded.size,
                self.settings.max_return_bytes,
            )
        elif encoded.converted:
            log.info(
                "halite: return of %s for %s held non-JSON values, stored with type markers",
                minion,
                jid,
            )
        success = load.get("success")
        out = load.get("out")
        return ReturnRow(
            jid=jid,
            minion=minion[:255],
            function=_text(fun, 255),
            start_time=self.start_time(jid),
            returned_at=returned_at or utcnow(),
            value=encoded,
            retcode=_retcode(load.get("retcode")),
            success=success if isinstance(success, bool) else None,
            out=out[:64] if isinstance(out, str) else None,
            summary=summary,
        )

    def save_return(self, load: Mapping[str, Any], returned_at: dt.datetime | None = None) -> bool:
        """Index one minion return; the first for a (jid, minion) wins. False for a duplicate."""
        row = self.prepare_return(load, returned_at)
        with self.db.write() as conn:
            return self._save_return(conn, row, load)

    def _save_return(self, conn: Connection, row: ReturnRow, load: Mapping[str, Any]) -> bool:
        stmts = self._return_statements()
        params = {"k_jid": row.jid, "k_minion": row.minion, **row.columns()}
        added = 0
        if not conn.execute(stmts.fill, params).rowcount:
            self._ensure_job(conn, row.jid, load)
            params.update(jid=row.jid, minion=row.minion, expected=False, start_time=row.start_time)
            added = conn.execute(stmts.add, params).rowcount
            if not added:
                log.info(
                    "halite: duplicate return from %s for %s ignored (first wins)",
                    row.minion,
                    row.jid,
                )
                return False
        conn.execute(
            stmts.count,
            {"k_jid": row.jid, "added": added, "failed": int(row.failed), "at": row.returned_at},
        )
        return True

    def _return_statements(self) -> _ReturnStatements:
        # Built once: a statement object reused with new parameters skips SQLAlchemy's
        # per-call construction and cache-key work, which dominates the hot path otherwise.
        if self._stmts is None:
            r, j = job_returns.c, jobs_index.c
            columns = {name: bindparam(name, type_=r[name].type) for name in RETURN_COLUMNS}
            fill = (
                update(job_returns)
                .where(r.jid == bindparam("k_jid"), r.minion == bindparam("k_minion"))
                .where(r.state != RETURNED)
                .values(columns)
            )
            add = self._insert(job_returns).values(
                jid=bindparam("jid"),
                minion=bindparam("minion"),
                expected=bindparam("expected"),
                start_time=bindparam("start_time", type_=r.start_time.type),
                **columns,
            )
            at = bindparam("at", type_=j.last_return_at.type)
            later = or_(j.last_return_at.is_(None), j.last_return_at < at)
            done = (j.minions_returned + 1) >= (j.minions_targeted + bindparam("added"))
            count = (
                update(jobs_index)
                .where(j.jid == bindparam("k_jid"))
                .values(
                    minions_returned=j.minions_returned + 1,
                    minions_targeted=j.minions_targeted + bindparam("added"),
                    minions_failed=j.minions_failed + bindparam("failed"),
                    last_return_at=case((later, at), else_=j.last_return_at),
                    status=case((done, COMPLETE), else_=RUNNING),
                    end_time=case((and_(done, later), at), (done, j.last_return_at), else_=None),
                )
            )
            self._stmts = _ReturnStatements(fill, add.on_conflict_do_nothing(), count)  # type: ignore[attr-defined]
        return self._stmts

    def update_endtime(self, jid: str, when: dt.datetime) -> None:
        """Salt's job_cache_store_endtime hook: the latest time a return was stored."""
        j = jobs_index.c
        with self.db.write() as conn:
            conn.execute(
                update(jobs_index)
                .where(j.jid == jid, or_(j.last_return_at.is_(None), j.last_return_at < when))
                .values(last_return_at=when)
            )

    def save_events(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Index ``salt/job/<jid>/new`` and ``.../ret/<minion>`` events in one transaction."""
        work: list[tuple[str, Any]] = []
        for event in events:
            tag, data = event.get("tag"), event.get("data")
            match = JOB_EVENT.match(tag) if isinstance(tag, str) else None
            if match is None or not isinstance(data, Mapping):
                continue
            if not jids.is_jid(match["jid"]):
                continue
            if match["minion"] is None:
                work.append(("load", (match["jid"], data)))
            else:
                data = {"jid": match["jid"], "id": match["minion"], **data}
                row = self.prepare_return(data, _stamp(data.get("_stamp")))
                work.append(("ret", (row, data)))
        if not work:
            return 0
        with self.db.write() as conn:
            for kind, item in work:
                if kind == "load":
                    jid, data = item
                    self._save_load(conn, jid, data, data.get("minions"))
                else:
                    self._save_return(conn, *item)
        return len(work)

    def clean_old_jobs(
        self, keep_seconds: int | None = None, now: dt.datetime | None = None
    ) -> int:
        """Delete jobs (with their returns) started more than ``keep_seconds`` ago; 0 keeps all."""
        keep = self.settings.keep_jobs_seconds if keep_seconds is None else keep_seconds
        if keep <= 0:
            return 0
        cutoff = (now or utcnow()) - dt.timedelta(seconds=keep)
        removed = 0
        while True:
            with self.db.write() as conn:
                batch = conn.scalars(
                    select(jobs_index.c.jid)
                    .where(jobs_index.c.start_time < cutoff)
                    .order_by(jobs_index.c.start_time)
                    .limit(self.settings.clean_batch_size)
                ).all()
                if batch:
                    conn.execute(delete(job_returns).where(job_returns.c.jid.in_(batch)))
                    conn.execute(delete(jobs_index).where(jobs_index.c.jid.in_(batch)))
            removed += len(batch)
            if len(batch) < self.settings.clean_batch_size:
                break
        if removed:
            log.info("halite: removed %d jobs older than %ss", removed, keep)
        return removed

    # ------------------------------------------------------------------ reads
    def get_load(self, jid: str) -> dict[str, Any]:
        """The job's load as Salt saved it, plus ``Minions`` (its target list) when known."""
        with self.db.read() as conn:
            load = conn.scalar(select(jobs_index.c.load).where(jobs_index.c.jid == jid))
            if not load:
                return {}
            minions = conn.scalars(
                select(job_returns.c.minion)
                .where(job_returns.c.jid == jid, job_returns.c.expected.is_(True))
                .order_by(job_returns.c.minion)
            ).all()
        ret = dict(encoding.restore(load))
        if minions:
            ret["Minions"] = list(minions)
        return ret

    def get_jid(self, jid: str) -> dict[str, dict[str, Any]]:
        """``{minion: {"return": ..., "retcode": ..., "success": ..., "out": ...}}`` for a job."""
        r = job_returns.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(r.minion, r.return_value, r.retcode, r.success, r.out).where(
                    r.jid == jid, r.state == RETURNED
                )
            ).all()
        ret: dict[str, dict[str, Any]] = {}
        for minion, value, retcode, success, out in rows:
            entry: dict[str, Any] = {"return": encoding.restore(value)}
            if retcode is not None:
                entry["retcode"] = retcode
            if success is not None:
                entry["success"] = success
            if out is not None:
                entry["out"] = out
            ret[minion] = entry
        return ret

    def iter_loads(self) -> Iterator[tuple[str, dict[str, Any], dt.datetime | None]]:
        """Every job that has a load, as ``(jid, load, last_return_at)``: Salt's get_jids."""
        j = jobs_index.c
        with self.db.read() as conn:
            result = conn.execution_options(yield_per=1000).execute(
                select(j.jid, j.load, j.last_return_at).where(j.load.is_not(None))
            )
            for jid, load, last in result:
                yield jid, encoding.restore(load), last

    def newest_loads(
        self, count: int, filter_find_job: bool = True
    ) -> list[tuple[str, dict[str, Any]]]:
        """The ``count`` newest jobs by JID, oldest first, as Salt's get_jids_filter orders them."""
        j = jobs_index.c
        query = select(j.jid, j.load).where(j.load.is_not(None))
        if filter_find_job:
            query = query.where(or_(j.function.is_(None), j.function != FIND_JOB))
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(j.jid.desc()).limit(max(int(count), 0))).all()
        return [(jid, encoding.restore(load)) for jid, load in reversed(rows)]

    def minions_seen(self) -> list[str]:
        """Every minion that has returned a job still in the index: Salt's get_minions."""
        r = job_returns.c
        with self.db.read() as conn:
            return list(conn.scalars(select(r.minion).where(r.state == RETURNED).distinct()))

    def last_jid_per_minion(self, fun: str) -> dict[str, str]:
        """``{minion: newest jid}`` of the jobs running ``fun``: Salt's get_fun."""
        r = job_returns.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(r.minion, func.max(r.jid))
                .where(r.function == fun, r.state == RETURNED)
                .group_by(r.minion)
            ).all()
        return {minion: jid for minion, jid in rows}

    def last_return_at(self, jid: str) -> dt.datetime | None:
        with self.db.read() as conn:
            return conn.scalar(select(jobs_index.c.last_return_at).where(jobs_index.c.jid == jid))

    # ------------------------------------------------------------------ Salt's job path
    def record(self, op: str, *args: Any) -> Any:
        """Run a write for Salt's job path: never raises; spools what the database refuses."""
        method = getattr(self, op)
        try:
            result = method(*args)
        except InvalidLoad as exc:
            self.spool.reject(op, *args, reason=str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - the returner must never break a job
            if is_outage(exc):
                log.error("halite: database unavailable (%s); %s spooled for replay", exc, op)
            else:
                log.error("halite: %s failed; spooled for replay", op, exc_info=True)
            self.spool.put(op, *args, reason=f"{type(exc).__name__}: {exc}")
            self._next_spool_check = time.monotonic() + self.settings.spool_replay_interval
            return None
        self.maybe_replay()
        return result

    def maybe_replay(self) -> int:
        """Replay the spool if the replay interval has passed and something is waiting."""
        now = time.monotonic()
        if now < self._next_spool_check or not self._replay_lock.acquire(blocking=False):
            return 0
        try:
            self._next_spool_check = now + self.settings.spool_replay_interval
            return self.replay_spool()
        finally:
            self._replay_lock.release()

    def replay_spool(self) -> int:
        return self.spool.replay(self._apply_spooled, is_outage)

    def _apply_spooled(self, op: str, args: list[Any]) -> None:
        if op not in _SPOOLABLE:
            raise InvalidLoad(f"unknown spooled operation {op!r}")
        getattr(self, op)(*args)


_SPOOLABLE = {"save_load", "save_return", "save_minions", "save_events", "update_endtime"}


def _text(value: object, limit: int) -> str | None:
    if value is None:
        return None
    return str(value)[:limit]


def _stamp(value: object) -> dt.datetime | None:
    """An event's ``_stamp`` (UTC, ISO 8601 without offset) as an aware datetime."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


_stores: dict[tuple[int, Settings], JobStore] = {}
_stores_lock = threading.Lock()


def get_store(settings: Settings) -> JobStore:
    """This process's :class:`JobStore` for these settings."""
    key = (os.getpid(), settings)
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.get(key)
            if store is None:
                for stale in [k for k in _stores if k[0] != key[0]]:
                    del _stores[stale]
                store = _stores[key] = JobStore(settings)
    return store
