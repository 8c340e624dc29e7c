"""Salt's master job cache interface on the SQL job index.

:class:`JobStore` holds the writes (publish loads, minion returns, event batches) and the
reads Salt's ``jobs`` runner and CLI make. :meth:`JobStore.record` is what Salt's job path
calls: it never raises; writes are journalled and committed in batches by the process's
:class:`~halite_core.durability.committer.WriteBehind`, and a write the database cannot
take goes to the
:class:`~halite_core.durability.spool.Spool`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    Connection,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.sql.dml import Insert

from halite_core import encoding, highstate, jids, own_runners
from halite_core.bounded import call_within
from halite_core.config import Settings
from halite_core.durability.committer import (
    JOURNAL_SUFFIX,
    RECOVERING,
    SPOOL_OP,
    WriteBehind,
    recover_journals,
)
from halite_core.durability.spool import CLAIMED, Spool, spool_order
from halite_core.durability.spool import SUFFIX as SPOOL_SUFFIX
from halite_core.perprocess import PerProcess
from halite_core.store.db import Database, SchemaError, get_database
from halite_core.store.schema import audit_log, cleaned_jobs, engine_state, job_returns, jobs_index

log = logging.getLogger(__name__)

RUNNING, COMPLETE = "running", "complete"
PENDING, RETURNED, NO_RETURN, KILLED = "pending", "returned", "no_return", "killed"
FIND_JOB = "saltutil.find_job"
# salt/job/<jid>/new, salt/job/<jid>/ret/<minion>, salt/run/<jid>/new, salt/run/<jid>/ret
JOB_EVENT = re.compile(
    r"^salt/(?P<kind>job|run)/(?P<jid>[^/]+)/(?P<what>new|ret)(?:/(?P<minion>.+))?$"
)


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
    """True when the database could not be reached or written at all (down, refusing
    connections, locked, its disk full): worth spooling. The SQLite bulk path raises the
    driver's own errors, unwrapped."""
    if isinstance(exc, (OperationalError, SchemaError, OSError, sqlite3.OperationalError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _retcode(value: object) -> int | None:
    """A return's retcode as the INTEGER column holds it; anything that is not a whole
    number in its 32-bit range is left out (the return itself keeps what was sent)."""
    if value is None:
        return None
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if -(2**31) <= number < 2**31 else None


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


TOMBSTONE_SECONDS = 7 * 86400  # a cleaned jid is remembered at least this long

ZERO_COUNTS = {"minions_targeted": 0, "minions_returned": 0, "minions_failed": 0}
STUB_COLUMNS = (
    "jid",
    "function",
    "target",
    "target_type",
    "user",
    "arguments",
    "kwargs",
    "start_time",
    "status",
    "master_id",
    "load",
    "system",
    "created_at",
)


LOAD_COLUMNS = (
    "function",
    "target",
    "target_type",
    "user",
    "arguments",
    "kwargs",
    "master_id",
    "load",
    "system",
)


ADVISORY_LOCKS = text(
    "SELECT pg_advisory_xact_lock(hashtextextended(j, 0)) FROM unnest(:jids) AS j"
).bindparams(bindparam("jids", type_=ARRAY(String())))


@dataclass(frozen=True)
class _Statements:
    """The write statements of the ingest path, built once with bind parameters."""

    upsert_load: Any
    fill_load: Any
    target: Any
    stub: Any
    upsert_return: Any
    recount: Any
    settle: Any
    endtime: Any
    no_return: Any
    killed: Any

    @classmethod
    def build(cls, insert_: Callable[[Any], Any]) -> _Statements:
        j, r = jobs_index.c, job_returns.c

        def binds(table: Any, names: Iterable[str]) -> dict[str, Any]:
            return {name: bindparam(name, type_=table.c[name].type) for name in names}

        load_insert = insert_(jobs_index).values({**binds(jobs_index, STUB_COLUMNS), **ZERO_COUNTS})
        upsert_load = load_insert.on_conflict_do_update(
            index_elements=["jid"],
            set_={name: load_insert.excluded[name] for name in LOAD_COLUMNS},
        )
        # A publish known second-hand (the engine's bus events, Salt's store_job for runner
        # and `req` jobs) fills a row that has no publish yet, and never replaces one.
        fill_load = load_insert.on_conflict_do_update(
            index_elements=["jid"],
            set_={name: load_insert.excluded[name] for name in LOAD_COLUMNS},
            where=j.load.is_(None),
        )
        placeholder = insert_(job_returns).values(
            binds(job_returns, ("jid", "minion", "state", "expected", "start_time",
                                "return_truncated"))
        )  # fmt: skip
        target = placeholder.on_conflict_do_update(
            index_elements=["jid", "minion"], set_={"expected": True}
        )
        stub = insert_(jobs_index).values({**binds(jobs_index, STUB_COLUMNS), **ZERO_COUNTS})
        return_insert = insert_(job_returns).values(
            binds(job_returns, ("jid", "minion", "expected", "start_time", *RETURN_COLUMNS))
        )
        # A placeholder is filled; a row that already holds a return is left alone.
        upsert_return = return_insert.on_conflict_do_update(
            index_elements=["jid", "minion"],
            set_={name: return_insert.excluded[name] for name in RETURN_COLUMNS},
            where=r.state != RETURNED,
        )
        rows = job_returns.alias("rows")
        of_job = rows.c.jid == j.jid
        returned = rows.c.state == RETURNED
        failed = or_(
            rows.c.success.is_(False),
            and_(rows.c.retcode.is_not(None), rows.c.retcode != 0),
            rows.c.states_failed > 0,
        )
        this_job = j.jid == bindparam("k_jid")
        recount = (
            update(jobs_index)
            .where(this_job)
            .values(
                minions_targeted=select(func.count()).where(of_job).scalar_subquery(),
                minions_returned=select(func.count()).where(of_job, returned).scalar_subquery(),
                # A minion that never answered failed the job, as Salt's CLI reports it.
                minions_failed=select(func.count())
                .where(
                    of_job,
                    or_(and_(returned, failed), rows.c.state == NO_RETURN, rows.c.state == KILLED),
                )
                .scalar_subquery(),
                # Returns only: a minion settled no_return or killed did not return then.
                last_return_at=select(func.max(rows.c.returned_at))
                .where(of_job, returned)
                .scalar_subquery(),
            )
        )
        done = ~select(rows.c.minion).where(of_job, rows.c.state == PENDING).exists()
        settle = (
            update(jobs_index)
            .where(this_job)
            .values(
                status=case((done, COMPLETE), else_=RUNNING),
                # The job ended when its last minion returned or was settled (or killed).
                end_time=case(
                    (
                        done,
                        func.coalesce(
                            select(func.max(rows.c.returned_at)).where(of_job).scalar_subquery(),
                            j.last_return_at,
                            j.start_time,
                        ),
                    ),
                    else_=None,
                ),
            )
        )
        at = bindparam("at", type_=j.last_return_at.type)
        endtime = (
            update(jobs_index)
            .where(this_job, or_(j.last_return_at.is_(None), j.last_return_at < at))
            .values(last_return_at=at)
        )
        # Settling marks are upserts: one may be committed before the publish it refers
        # to (they come from different processes' journals); the publish then finds it.
        settle_insert = insert_(job_returns).values(
            binds(job_returns, ("jid", "minion", "state", "expected", "start_time",
                                "returned_at", "return_truncated"))
        )  # fmt: skip
        no_return = settle_insert.on_conflict_do_update(
            index_elements=["jid", "minion"],
            set_={"state": NO_RETURN, "returned_at": settle_insert.excluded.returned_at},
            where=r.state == PENDING,
        )
        killed = settle_insert.on_conflict_do_update(
            index_elements=["jid", "minion"],
            set_={"state": KILLED, "returned_at": settle_insert.excluded.returned_at},
            where=r.state == PENDING,
        )
        return cls(
            upsert_load, fill_load, target, stub.on_conflict_do_nothing(), upsert_return,
            recount, settle, endtime, no_return, killed,
        )  # fmt: skip


class ReturnRow(NamedTuple):
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


@dataclass(frozen=True)
class LoadItem:
    jid: str
    load: dict[str, Any]
    minions: list[str] | None
    # Second-hand (the engine's bus events, Salt's store_job for runner and `req` jobs):
    # fills in a job that has no publish load yet, never overwrites one.
    only_new: bool = False


@dataclass(frozen=True)
class SettledItem:
    """Minions of a job settled without a return, at ``at``."""

    jid: str
    minions: list[str]
    at: dt.datetime


class NoReturnItem(SettledItem):
    """Minions the engine settled as not returning for a job."""


class KilledItem(SettledItem):
    """Minions that confirmed ``saltutil.kill_job`` for a job: marked ``killed``."""


@dataclass(frozen=True)
class MinionsItem:
    jid: str
    minions: list[str]


class ReturnItem(NamedTuple):
    row: ReturnRow
    stub: dict[str, Any]


@dataclass(frozen=True)
class EndtimeItem:
    jid: str
    at: dt.datetime


@dataclass(frozen=True)
class AuditItem:
    """One audit log entry (:func:`halite_core.audit.entry`), journalled like a return so
    that it survives a database that is locked or away, and is appended in order."""

    entry: dict[str, Any]


@dataclass(frozen=True)
class Journalled:
    """What the journals and the spool hold for a job, not committed yet: its publish
    (function and targets) if any, and the minions whose return, kill mark or settling is
    accepted."""

    function: str | None = None
    published: bool = False
    targets: frozenset[str] = frozenset()
    settled: frozenset[str] = frozenset()


Item = LoadItem | MinionsItem | ReturnItem | EndtimeItem | NoReturnItem | KilledItem | AuditItem


def item_to_line(item: Item) -> str:
    """One JSON line for the journal and the spool."""
    if isinstance(item, ReturnItem):
        row = item.row
        head = encoding.dumps(
            {
                "op": "ret",
                "jid": row.jid,
                "minion": row.minion,
                "function": row.function,
                "start_time": row.start_time.isoformat(),
                "returned_at": row.returned_at.isoformat(),
                "truncated": row.value.truncated,
                "retcode": row.retcode,
                "success": row.success,
                "out": row.out,
                "summary": list(row.summary) if row.summary else None,
                "stub": item.stub,
            }
        )[0]
        # The return is already JSON: splice it in rather than encode it twice.
        return f'{head[:-1]},"value":{row.value.text}}}'
    fields: dict[str, Any]
    if isinstance(item, LoadItem):
        fields = {"op": "load", "jid": item.jid, "load": item.load, "minions": item.minions}
        if item.only_new:
            fields["only_new"] = True
    elif isinstance(item, MinionsItem):
        fields = {"op": "minions", "jid": item.jid, "minions": item.minions}
    elif isinstance(item, SettledItem):
        op = "no_return" if isinstance(item, NoReturnItem) else "killed"
        fields = {"op": op, "jid": item.jid, "minions": item.minions, "at": item.at.isoformat()}
    elif isinstance(item, AuditItem):
        fields = {"op": "audit", "entry": {**item.entry, "at": item.entry["at"].isoformat()}}
    else:
        fields = {"op": "endtime", "jid": item.jid, "at": item.at.isoformat()}
    return encoding.dumps(fields)[0]


def item_from_line(line: str) -> Item:
    data = json.loads(line)
    op = data["op"]
    if op == "ret":
        summary = data["summary"]
        text = json.dumps(data["value"], separators=(",", ":"))
        row = ReturnRow(
            jid=data["jid"],
            minion=data["minion"],
            function=data["function"],
            start_time=dt.datetime.fromisoformat(data["start_time"]),
            returned_at=dt.datetime.fromisoformat(data["returned_at"]),
            value=encoding.Encoded(text, truncated=bool(data["truncated"])),
            retcode=data["retcode"],
            success=data["success"],
            out=data["out"],
            summary=highstate.StateSummary(*summary) if summary else None,
        )
        # The return's value stays as written (already encoded); the load and the stub are
        # read back to what was sent, to be encoded once more on their way in.
        return ReturnItem(row, encoding.restore(data["stub"]))
    if op == "load":
        load = encoding.restore(data["load"])
        return LoadItem(data["jid"], load, data["minions"], bool(data.get("only_new")))
    if op == "no_return":
        return NoReturnItem(data["jid"], data["minions"], dt.datetime.fromisoformat(data["at"]))
    if op == "killed":
        return KilledItem(data["jid"], data["minions"], dt.datetime.fromisoformat(data["at"]))
    if op == "audit":
        entry = dict(data["entry"])
        entry["at"] = dt.datetime.fromisoformat(entry["at"])
        return AuditItem(entry)
    if op == "minions":
        return MinionsItem(data["jid"], data["minions"])
    if op == "endtime":
        return EndtimeItem(data["jid"], dt.datetime.fromisoformat(data["at"]))
    raise ValueError(f"unknown journal entry {op!r}")


def item_jid(item: Item) -> str | None:
    """The job a write belongs to (None for writes of no job, such as audit entries)."""
    if isinstance(item, ReturnItem):
        return item.row.jid
    return getattr(item, "jid", None)


def _listing(directory: str, keep: Callable[[str], bool]) -> list[str]:
    try:
        return sorted(name for name in os.listdir(directory) if keep(name))
    except FileNotFoundError:
        return []


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None  # committed, or replayed, and removed while we looked


def _is_journal(name: str) -> bool:
    # Live journals, and the claims of a recovery moving them to the spool.
    return name.endswith(JOURNAL_SUFFIX) or (name.startswith(".") and RECOVERING in name)


def _is_spooled(name: str) -> bool:
    return not name.startswith(".") and (name.endswith(SPOOL_SUFFIX) or name.endswith(CLAIMED))


def _lines_of(data: bytes, needle: bytes | None) -> Iterator[str]:
    for raw in data.split(b"\n"):
        if raw and (needle is None or needle in raw):
            yield raw.decode("utf-8", errors="replace")


def pending_lines(journal_dir: str, spool_dir: str, jid: str | None = None) -> list[str]:
    """The journal lines of every write accepted but not yet in the database, oldest first
    as far as it is known: in the workers' journals (or being recovered from them), then in
    the spool. Writes only move forward (journal -> spool -> database), and the caller
    reads the database last, so a write moving while we look is seen at least once; a
    file renamed between listing and reading (a claim, a replay) makes us look again.
    ``jid`` narrows the search to the lines naming that job."""
    for _ in range(RESCANS):
        lines, complete = _scan_pending(journal_dir, spool_dir, jid)
        if complete:
            break
    return lines


RESCANS = 5


def _scan_pending(journal_dir: str, spool_dir: str, jid: str | None) -> tuple[list[str], bool]:
    needle = f'"jid":"{jid}"'.encode() if jid is not None else None
    lines: list[str] = []
    complete = True
    for name in _listing(journal_dir, _is_journal):
        data = _read_bytes(os.path.join(journal_dir, name))
        if data is None:
            complete = False
        elif needle is None or needle in data:
            lines.extend(_lines_of(data, needle))
    spooled = None if needle is None else json.dumps(needle.decode())[1:-1].encode()
    for name in sorted(_listing(spool_dir, _is_spooled), key=spool_order):
        data = _read_bytes(os.path.join(spool_dir, name))
        if data is None:
            complete = False
            continue
        if spooled is not None and spooled not in data:
            continue
        try:
            entry = json.loads(data)
        except ValueError:
            continue  # being written
        found = entry.get("args", [None])[0] if entry.get("op") == SPOOL_OP else None
        for line in found if isinstance(found, list) else []:
            if isinstance(line, str) and (needle is None or needle.decode() in line):
                lines.append(line)
    return lines, complete


def pending_items(journal_dir: str, spool_dir: str, jid: str | None = None) -> list[Item]:
    """:func:`pending_lines` parsed (a line still being written is skipped)."""
    items = []
    for line in pending_lines(journal_dir, spool_dir, jid):
        try:
            item = item_from_line(line)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if jid is None or item_jid(item) == jid:
            items.append(item)
    return items


class JobStore:
    """The job index for one database, as Salt's job cache sees it."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        self.db = db or get_database(settings.db_url, settings.sqlite_busy_timeout)
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self._next_spool_check = 0.0
        self._stmts: _Statements | None = None
        self._writer: WriteBehind | None = None
        self._writer_lock = threading.Lock()
        self._replay_lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def _insert(self, table: Any) -> Insert:
        # ON CONFLICT upserts are dialect constructs; Database admits only these two.
        if self.db.dialect_name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def start_time(self, jid: str) -> dt.datetime:
        return jids.start_time(jid, self.settings.jid_utc)

    # ------------------------------------------------------------------ writes
    def reserve_jid(self, jid: str) -> bool:
        """Claim a freshly generated JID for this master; False if another process already
        holds it. A file, never the database: this runs on Salt's publish path."""
        return jids.reserve(self.settings.jid_dir, jid)

    def new_jid(self, unique: bool = False, tries: int = 5) -> str:
        """A JID no other process of this master has: generated like Salt's own, then
        reserved (as Salt's local_cache does, in the file system)."""
        jid = jids.gen_jid(self.settings.jid_utc, unique=unique)
        for _ in range(tries):
            if self.reserve_jid(jid):
                return jid
            jid = jids.next_jid(jid)
        raise RuntimeError(f"could not reserve a unique jid after {tries} tries")

    # ------------------------------------------------------------------ writes
    def items_for(self, op: str, *args: Any) -> list[Item]:
        """Check and prepare one of Salt's job cache writes; raises :class:`InvalidLoad`."""
        if op == "save_load":
            return self._load_items(*args)
        if op == "save_return":
            return [self._return_item(*args)]
        if op == "save_minions":
            jid, minions = args[0], args[1]
            if not jids.is_jid(jid):
                raise InvalidLoad(f"save_minions: {jid!r} is not a Salt job id")
            return [MinionsItem(jid, sorted({str(m) for m in minions or []}))]
        if op == "save_events":
            return self._event_items(*args)
        if op == "update_endtime":
            jid, when = args
            if not jids.is_jid(jid):
                raise InvalidLoad(f"update_endtime: {jid!r} is not a Salt job id")
            if not isinstance(when, dt.datetime) or when.tzinfo is None:
                raise InvalidLoad(f"update_endtime: {when!r} is not a time with a timezone")
            return [EndtimeItem(jid, when)]
        raise InvalidLoad(f"unknown write {op!r}")

    def _load_items(
        self, jid: str, load: Mapping[str, Any], minions: Iterable[str] | None = None
    ) -> list[Item]:
        if not jids.is_jid(jid):
            raise InvalidLoad(f"save_load: {jid!r} is not a Salt job id")
        if not isinstance(load, Mapping):
            raise InvalidLoad(
                f"save_load: the load for {jid} is a {type(load).__name__}, not a dict"
            )
        if is_return_load(load):
            return []  # Salt's store_job passes every return here too; the returner indexes it
        if minions is None:
            minions = load.get("minions")
        listed = None if minions is None else sorted({str(m) for m in minions})
        # Salt's store_job also hands over a runner's return (and a `req` job's) as a load
        # with a target: it describes a job whose publish may already be indexed (the
        # engine's salt/run/<jid>/new, with the arguments), so it only fills a row without one.
        second_hand = "return" in load and "id" in load
        if second_hand:
            # Its target is the one id, the master's. The copy of the return it carries is
            # the returner's to store (within max_return_bytes; a halite runner's answer
            # not at all), not the load's.
            load = {"tgt_type": "list", **{k: v for k, v in load.items() if k != "return"}}
        return [LoadItem(jid, dict(load), listed, only_new=second_hand)]

    def _return_item(self, load: Mapping[str, Any], returned_at: dt.datetime | None = None) -> Item:
        row = self.prepare_return(load, returned_at)
        stub = {k: load.get(k) for k in ("fun", "fun_args", "arg", "user") if k in load}
        stub["id"] = row.minion
        return ReturnItem(row, stub)

    def _event_items(self, events: Sequence[Mapping[str, Any]]) -> list[Item]:
        items: list[Item] = []
        for event in events:
            tag = event.get("tag") if isinstance(event, Mapping) else None
            data = event.get("data") if isinstance(event, Mapping) else None
            match = JOB_EVENT.match(tag) if isinstance(tag, str) else None
            if match is None or match["kind"] != "job" or not isinstance(data, Mapping):
                continue
            if not jids.is_jid(match["jid"]):
                continue
            if match["what"] == "new" and match["minion"] is None:
                items.extend(self._load_items(match["jid"], data))
            elif match["what"] == "ret" and match["minion"]:
                data = {**data, "jid": match["jid"], "id": match["minion"]}
                items.append(self._return_item(data, event_stamp(data.get("_stamp"))))
        return items

    def apply_items(self, items: Sequence[Item]) -> int:
        """Apply prepared writes in one transaction; returns how many returns were stored."""
        if not items:
            return 0
        with self.db.write() as conn:
            return self._apply_items(conn, items)

    def _apply_items(self, conn: Connection, items: Sequence[Item]) -> int:
        stmts = self._statements()
        self._lock_jobs(conn, {jid for jid in map(item_jid, items) if jid is not None})
        loads = [item for item in items if isinstance(item, LoadItem)]
        returns = [item for item in items if isinstance(item, ReturnItem)]
        touched: set[str] = set()
        self._save_loads(conn, loads, touched)
        minion_jobs = {item.jid for item in items if isinstance(item, MinionsItem)}
        cleaned = self._cleaned(conn, minion_jobs - self._known(conn, minion_jobs))
        for item in items:
            if isinstance(item, MinionsItem) and item.jid not in cleaned:
                self._ensure_jobs(conn, {item.jid: {}})
                self._add_minions(conn, item.jid, self.start_time(item.jid), item.minions)
                touched.add(item.jid)
        stored = self._save_returns(conn, returns, touched)
        # After the returns of the same batch: a minion that did return stays returned.
        for kind, state, stmt in (
            (NoReturnItem, NO_RETURN, stmts.no_return),
            (KilledItem, KILLED, stmts.killed),
        ):
            marked = [item for item in items if isinstance(item, kind)]
            if not marked:
                continue
            self._ensure_jobs(conn, {item.jid: {} for item in marked})
            rows = [
                {"jid": item.jid, "minion": minion, "state": state, "expected": True,
                 "start_time": self.start_time(item.jid), "returned_at": item.at,
                 "return_truncated": False}
                for item in marked
                for minion in item.minions
            ]  # fmt: skip
            self.db.executemany(conn, stmt, rows)
            touched.update(item.jid for item in marked)
        self._recount(conn, touched)
        entries = [item.entry for item in items if isinstance(item, AuditItem)]
        if entries:
            # Each entry once, however often its journal line is replayed.
            appended = self._insert(audit_log).on_conflict_do_nothing(index_elements=["entry_id"])  # type: ignore[attr-defined]
            conn.execute(appended, entries)
        endtimes: dict[str, dt.datetime] = {}
        for item in items:
            if isinstance(item, EndtimeItem):
                endtimes[item.jid] = max(item.at, endtimes.get(item.jid, item.at))
        self.db.executemany(
            conn, stmts.endtime, [{"k_jid": jid, "at": at} for jid, at in endtimes.items()]
        )
        return stored

    # The synchronous forms, for callers outside Salt's job path and for tests.
    def save_load(
        self, jid: str, load: Mapping[str, Any], minions: Iterable[str] | None = None
    ) -> None:
        """Index a job's publish load and the minions it targeted."""
        self.apply_items(self.items_for("save_load", jid, load, minions))

    def save_minions(self, jid: str, minions: Iterable[str], syndic_id: str | None = None) -> None:
        """Add minions a syndic matched to a job's target list."""
        self.apply_items(self.items_for("save_minions", jid, minions, syndic_id))

    def save_return(self, load: Mapping[str, Any], returned_at: dt.datetime | None = None) -> bool:
        """Index one minion return; the first for a (jid, minion) wins. False for a duplicate."""
        return self.apply_items(self.items_for("save_return", load, returned_at)) == 1

    def save_events(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Index ``salt/job/<jid>/new`` and ``.../ret/<minion>`` events in one transaction."""
        items = self.items_for("save_events", events)
        self.apply_items(items)
        return len(items)

    def update_endtime(self, jid: str, when: dt.datetime) -> None:
        """Salt's job_cache_store_endtime hook: the latest time a return was stored."""
        self.apply_items(self.items_for("update_endtime", jid, when))

    def _save_loads(self, conn: Connection, items: Sequence[LoadItem], touched: set[str]) -> None:
        """Index publish loads and their target lists; counters follow in :meth:`_recount`."""
        if not items:
            return
        loads: dict[str, LoadItem] = {}
        for item in items:  # a repeated publish: the last one wins, but first-hand over second
            if not (item.only_new and item.jid in loads and not loads[item.jid].only_new):
                loads[item.jid] = item
        rows: list[dict[str, Any]] = []
        fill_only: list[dict[str, Any]] = []
        placeholders: list[dict[str, Any]] = []
        now = utcnow()
        for jid, item in loads.items():
            start = self.start_time(jid)
            args, kwargs = split_arguments(item.load.get("arg", item.load.get("fun_args")))
            (fill_only if item.only_new else rows).append(
                {
                    "jid": jid,
                    "function": function_name(item.load.get("fun")),
                    "target": target_text(item.load.get("tgt")),
                    "target_type": _text(item.load.get("tgt_type", "glob"), 32),
                    "user": _text(item.load.get("user"), 255),
                    "arguments": encoding.encode(args),
                    "kwargs": encoding.encode(kwargs),
                    "master_id": self.settings.master_id,
                    "load": encoding.encode(item.load),
                    "start_time": start,
                    "status": RUNNING,
                    "system": self.settings.is_system(item.load.get("fun")),
                    "created_at": now,
                }
            )
            placeholders.extend(self._placeholders(jid, start, item.minions or []))
        stmts = self._statements()
        self.db.executemany(conn, stmts.upsert_load, rows)
        self.db.executemany(conn, stmts.fill_load, fill_only)
        self.db.executemany(conn, stmts.target, placeholders)
        touched.update(loads)

    @staticmethod
    def _placeholders(jid: str, start: dt.datetime, minions: Iterable[str]) -> list[dict[str, Any]]:
        return [
            {"jid": jid, "minion": m, "state": PENDING, "expected": True, "start_time": start,
             "return_truncated": False}
            for m in minions
        ]  # fmt: skip

    def _add_minions(
        self, conn: Connection, jid: str, start: dt.datetime, minions: Iterable[str]
    ) -> None:
        self.db.executemany(
            conn, self._statements().target, self._placeholders(jid, start, minions)
        )

    def _recount(self, conn: Connection, job_ids: Iterable[str]) -> None:
        """Set the counters, status and end time of jobs from their job_returns rows.

        Recounting (an indexed range scan of the job's rows) rather than incrementing keeps
        the counters exact whatever order and however often writes arrive.
        """
        params = [{"k_jid": jid} for jid in sorted(job_ids)]
        stmts = self._statements()
        self.db.executemany(conn, stmts.recount, params)
        self.db.executemany(conn, stmts.settle, params)

    def _ensure_jobs(self, conn: Connection, stubs: Mapping[str, Mapping[str, Any]]) -> None:
        """Create job rows for JIDs seen before their publish load (which fills them later)."""
        rows = [self._stub_params(jid, stub) for jid, stub in stubs.items()]
        self.db.executemany(conn, self._statements().stub, rows)

    def _stub_params(self, jid: str, stub: Mapping[str, Any]) -> dict[str, Any]:
        args, kwargs = split_arguments(stub.get("fun_args", stub.get("arg")))
        return {
            "jid": jid,
            "function": function_name(stub.get("fun")),
            "target": target_text(stub.get("id")),
            "target_type": "list" if stub.get("id") else None,
            "user": _text(stub.get("user"), 255),
            "arguments": encoding.encode(args),
            "kwargs": encoding.encode(kwargs),
            "start_time": self.start_time(jid),
            "status": RUNNING,
            "master_id": self.settings.master_id,
            "load": encoding.encode(dict(stub)) if stub.get("fun") else None,
            "system": self.settings.is_system(stub.get("fun")),
            "created_at": utcnow(),
        }

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
        inner, runner_success, runner_retcode = highstate.runner_payload(fun, value)
        summary = highstate.summarize(inner) if highstate.is_state_function(fun) else None
        # halite's and the jobs runner's answers are not kept, nor their copies inside
        # other jobs where those name the runner (halite_core/own_runners.py).
        limit = self.settings.max_return_bytes
        encoded = own_runners.withheld_return(
            fun, value, load.get("fun_args"), limit
        ) or encoding.encode(value, limit)
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
        success = load.get("success", runner_success)
        if success is None:
            success = runner_success
        out = load.get("out")
        return ReturnRow(
            jid=jid,
            minion=minion[:255],
            function=function_name(fun),
            start_time=self.start_time(jid),
            returned_at=returned_at or utcnow(),
            value=encoded,
            retcode=_retcode(load.get("retcode", runner_retcode)),
            success=success if isinstance(success, bool) else None,
            out=out[:64] if isinstance(out, str) else None,
            summary=summary,
        )

    def _save_returns(
        self, conn: Connection, items: Sequence[ReturnItem], touched: set[str]
    ) -> int:
        """Store a batch of returns; the first return of a minion for a job wins.
        Returns how many were stored (the others were duplicates)."""
        if not items:
            return 0
        first: dict[tuple[str, str], int] = {}
        stubs: dict[str, dict[str, Any]] = {}
        for i, item in enumerate(items):
            key = (item.row.jid, item.row.minion)
            if key in first:
                continue
            first[key] = i
            stubs.setdefault(item.row.jid, item.stub)
        known = self._known(conn, stubs)
        cleaned = self._cleaned(conn, set(stubs) - known)
        if cleaned:
            # As Salt's local_cache: a return for a job that retention removed is dropped.
            log.info(
                "halite: %d returns dropped for jobs already cleaned: %s",
                sum(1 for key in first if key[0] in cleaned),
                ", ".join(sorted(cleaned)),
            )
            first = {key: i for key, i in first.items() if key[0] not in cleaned}
            stubs = {jid: stub for jid, stub in stubs.items() if jid not in cleaned}
        self._ensure_jobs(conn, {jid: stub for jid, stub in stubs.items() if jid not in known})
        self._lock_jobs(conn, stubs)  # the rows just created as well
        rows = []
        for (jid, minion), i in first.items():
            row = items[i].row
            rows.append(
                {"jid": jid, "minion": minion, "expected": False, "start_time": row.start_time,
                 **row.columns()}
            )  # fmt: skip
        stored = self.db.executemany(conn, self._statements().upsert_return, rows)
        if stored < len(items):
            log.info("halite: %d repeated returns ignored (first wins)", len(items) - stored)
        touched.update(stubs)
        return stored

    def _known(self, conn: Connection, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` that have a row in jobs_index."""
        return self._jids_in(conn, jobs_index.c.jid, job_ids)

    def _cleaned(self, conn: Connection, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` (jobs without a row) that retention removed."""
        return self._jids_in(conn, cleaned_jobs.c.jid, job_ids)

    def _jids_in(self, conn: Connection, column: Any, job_ids: Iterable[str]) -> set[str]:
        wanted = sorted(set(job_ids))
        if not wanted:
            return set()
        return {jid for (jid,) in self._select_in(conn, select(column), column, wanted)}

    def _lock_jobs(self, conn: Connection, jids: Iterable[str]) -> None:
        """PostgreSQL: before a transaction changes anything, lock every job it is about
        to touch, in jid order: a transaction-scoped advisory lock per jid (which also
        covers jobs whose rows do not exist yet) and the rows that exist. Concurrent
        writers (other processes, other masters, the engine settling, a kill) then take
        turns per job without deadlocking, and each recount sees every return committed
        before it: a recount blocked behind another writer would otherwise count from a
        snapshot taken before that writer committed."""
        if self.db.dialect_name != "postgresql":
            return  # SQLite: BEGIN IMMEDIATE already serialises writers
        ordered = sorted(set(jids))
        if not ordered:
            return
        # unnest() yields the array in order, and each row takes its lock in turn.
        conn.execute(ADVISORY_LOCKS, {"jids": ordered})
        self._select_in(
            conn,
            select(jobs_index.c.jid).order_by(jobs_index.c.jid).with_for_update(),
            jobs_index.c.jid,
            ordered,
        )

    @staticmethod
    def _select_in(
        conn: Connection, query: Any, column: Any, values: Sequence[Any], chunk: int = 400
    ) -> set[tuple[Any, ...]]:
        found: set[tuple[Any, ...]] = set()
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk]
            found.update(tuple(row) for row in conn.execute(query.where(column.in_(part))))
        return found

    def _statements(self) -> _Statements:
        # Built once per store: a statement object reused with new parameters skips
        # SQLAlchemy's construction and compilation, which dominate the ingest path otherwise.
        if self._stmts is None:
            self._stmts = _Statements.build(self._insert)
        return self._stmts

    def mark_killed(self, jid: str, minions: Iterable[str], at: dt.datetime | None = None) -> None:
        """Mark the minions still ``pending`` in ``jid`` as ``killed`` (they were sent
        ``saltutil.kill_job`` and confirmed it), which settles the job. Journalled and
        committed with the next batch, like a return: a locked database never holds up a
        kill. A return that arrives after all the same still replaces the mark."""
        marked = sorted(set(minions))
        if marked:
            item = KilledItem(jid, marked, at or utcnow())
            self.submit([(item_to_line(item), item)])

    def record_audit(self, entry: Mapping[str, Any]) -> None:
        """Append an audit log entry (:func:`halite_core.audit.entry`) through the journal,
        as durable as a return; committed in order with the next batch."""
        item = AuditItem(dict(entry))
        self.submit([(item_to_line(item), item)])

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
                    conn.execute(delete(job_returns).where(job_returns.c.jid.in_(batch)))
                    deleted = conn.execute(delete(jobs_index).where(jobs_index.c.jid.in_(batch)))
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

    def _remember_cleaned(self, conn: Connection, batch: Sequence[str], at: dt.datetime) -> None:
        stmt = self._insert(cleaned_jobs).values(
            jid=bindparam("jid", type_=cleaned_jobs.c.jid.type),
            cleaned_at=bindparam("at", type_=cleaned_jobs.c.cleaned_at.type),
        )
        upsert = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
            index_elements=["jid"],
            set_={"cleaned_at": stmt.excluded.cleaned_at},  # type: ignore[attr-defined]
        )
        conn.execute(upsert, [{"jid": jid, "at": at} for jid in batch])

    def save_engine_state(self, master_id: str, values: Mapping[str, Any]) -> None:
        """Create or update the ``engine_state`` row of a master's engine."""
        row = {"master_id": master_id, "started_at": values.get("heartbeat_at"), **values}
        stmt = self._insert(engine_state).values(row)
        update_ = dict(values)
        with self.db.write() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["master_id"], set_=update_))  # type: ignore[attr-defined]

    def engine_state(self, master_id: str) -> dict[str, Any] | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(engine_state).where(engine_state.c.master_id == master_id)
            ).first()
        return None if row is None else dict(row._mapping)

    # ------------------------------------------------------------------ reads
    def pending(self, jid: str | None = None) -> list[Item]:
        """Writes accepted by any process of this master but not in the database yet."""
        return pending_items(self.settings.journal_dir, self.settings.spool_dir, jid)

    def journalled(self, jid: str) -> Journalled:
        """What is accepted for ``jid`` but not committed yet (see :func:`kill.plan`)."""
        function: str | None = None
        published = False
        targets: set[str] = set()
        settled: set[str] = set()
        for item in self.pending(jid):
            if isinstance(item, LoadItem):
                published = True
                function = function_name(item.load.get("fun")) or function
                targets.update(item.minions or ())
            elif isinstance(item, MinionsItem):
                targets.update(item.minions)
            elif isinstance(item, ReturnItem):
                settled.add(item.row.minion)
            elif isinstance(item, SettledItem):
                settled.update(item.minions)
        return Journalled(function, published, frozenset(targets), frozenset(settled))

    def _from_db(
        self, read: Callable[[Connection], Any], default: Any, timeout: float | None = None
    ) -> Any:
        """A read of the database for Salt's job cache interface, bounded by ``timeout``
        (``read_timeout``) on PostgreSQL, whose server may be frozen (SQLite's readers
        never wait for a writer); ``default`` when the database cannot be reached or does
        not answer in time (the journals and the spool then answer alone)."""

        def within() -> Any:
            with self.db.read() as conn:
                return read(conn)

        try:
            if self.db.is_sqlite:
                return within()
            return call_within(timeout or self.settings.read_timeout, within)
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning(
                "halite: the database cannot be read (%s); answering from the journals", exc
            )
            return default

    def get_load(self, jid: str) -> dict[str, Any]:
        """The job's load as Salt saved it, plus ``Minions`` (its target list) when known.
        Salt's CLI asks for it right after publishing, before the master's worker has
        committed it, or while the database is unreachable: what any process has accepted
        counts, in its journal or in the spool. Runner and wheel jobs have no ``Minions``
        and no ``arg``, as with Salt's ``local_cache`` (their publish is the master's own)."""
        pending = self.pending(jid)  # before the database: see pending_lines

        def read(conn: Connection) -> tuple[Any, list[str]]:
            load = conn.scalar(
                select(_raw(jobs_index.c.load, self.db.is_sqlite)).where(jobs_index.c.jid == jid)
            )
            minions = conn.scalars(
                select(job_returns.c.minion).where(
                    job_returns.c.jid == jid, job_returns.c.expected.is_(True)
                )
            ).all()
            return load, list(minions)

        stored, minions = self._from_db(read, (None, []))
        load: dict[str, Any] | None = None
        if stored is not None:
            load = dict(encoding.loads(stored) or {})
        # A row made from a return that came first holds a placeholder: a publish still
        # journalled is the real thing.
        committed = load is not None and not _placeholder(load)
        targets = set(minions)
        second_hand: dict[str, Any] | None = None
        for item in pending:
            if isinstance(item, LoadItem):
                if item.only_new:
                    second_hand = second_hand or dict(item.load)
                elif not committed:
                    load = dict(item.load)  # a repeated publish: the last one wins
                targets.update(item.minions or ())
            elif isinstance(item, MinionsItem):
                targets.update(item.minions)
        if load is None:
            load = second_hand
        if load is None:
            return {}
        load = salt_load(load)
        if targets and not is_master_job(load.get("fun")):
            load["Minions"] = sorted(targets)
        return load

    def get_jid(self, jid: str) -> dict[str, dict[str, Any]]:
        """``{minion: {"return": ..., "retcode": ..., "success": ..., "out": ...}}`` for a job,
        committed or still journalled (the first return of a minion wins). Runner and wheel
        jobs give ``return`` (and ``out``) only, as Salt's ``local_cache`` does."""
        pending = self.pending(jid)
        r = job_returns.c

        def read(conn: Connection) -> list[Any]:
            return list(
                conn.execute(
                    select(
                        r.minion, _raw(r.return_value, self.db.is_sqlite), r.retcode, r.success,
                        r.out, r.function,
                    ).where(r.jid == jid, r.state == RETURNED)
                )
            )  # fmt: skip

        ret: dict[str, dict[str, Any]] = {}
        for minion, value, retcode, success, out, function in self._from_db(read, []):
            ret[minion] = _salt_return(encoding.loads(value), retcode, success, out, function)
        for item in pending:
            if isinstance(item, ReturnItem) and item.row.minion not in ret:
                row = item.row
                ret[row.minion] = _salt_return(
                    encoding.loads(row.value.text), row.retcode, row.success, row.out,
                    row.function,
                )  # fmt: skip
        return ret

    def _pending_loads(self) -> tuple[dict[str, LoadItem], dict[str, dt.datetime]]:
        """The newest pending publish of each job (first-hand over second-hand), and the
        latest pending return (or end time) of each job."""
        loads: dict[str, LoadItem] = {}
        last: dict[str, dt.datetime] = {}
        for item in self.pending():
            if isinstance(item, LoadItem):
                if not (item.only_new and item.jid in loads and not loads[item.jid].only_new):
                    loads[item.jid] = item
            elif isinstance(item, (ReturnItem, EndtimeItem)):
                jid = item_jid(item) or ""
                at = item.row.returned_at if isinstance(item, ReturnItem) else item.at
                last[jid] = max(at, last.get(jid, at))
        return loads, last

    def iter_loads(self) -> Iterator[tuple[str, dict[str, Any], dt.datetime | None]]:
        """Every job that has a load, as ``(jid, load, last_return_at)``: Salt's get_jids
        (which builds a mapping of them all in any case). Read within ``request_timeout``;
        the journals and the spool alone answer when the database does not."""
        pending, last = self._pending_loads()
        j = jobs_index.c
        query = select(j.jid, _raw(j.load, self.db.is_sqlite), j.last_return_at).where(
            j.load.is_not(None)
        )
        rows = self._from_db(
            lambda conn: conn.execute(query).all(), [], self.settings.request_timeout
        )
        seen: set[str] = set()
        for jid, load, stored in rows:
            seen.add(jid)
            item = pending.get(jid)
            found = encoding.loads(load)
            if item is not None and not item.only_new and _placeholder(found):
                found = item.load
            yield jid, salt_load(found), _latest(stored, last.get(jid))
        for jid, item in pending.items():
            if jid not in seen:
                yield jid, salt_load(item.load), last.get(jid)

    def newest_loads(
        self, count: int, filter_find_job: bool = True
    ) -> list[tuple[str, dict[str, Any]]]:
        """The ``count`` newest jobs by JID, oldest first, as Salt's get_jids_filter orders them."""
        size = max(int(count), 0)
        pending = {
            jid: dict(item.load)
            for jid, item in self._pending_loads()[0].items()
            if not (filter_find_job and item.load.get("fun") == FIND_JOB)
        }
        j = jobs_index.c
        query = select(j.jid, _raw(j.load, self.db.is_sqlite)).where(j.load.is_not(None))
        if filter_find_job:
            query = query.where(or_(j.function.is_(None), j.function != FIND_JOB))
        rows = self._from_db(
            lambda conn: conn.execute(query.order_by(j.jid.desc()).limit(size)).all(), []
        )
        found = {jid: encoding.loads(load) for jid, load in rows}
        for jid, load in pending.items():
            if jid not in found or _placeholder(found[jid]):
                found[jid] = load
        found = {jid: salt_load(load) for jid, load in found.items()}
        newest = sorted(found, reverse=True)[:size]
        return [(jid, found[jid]) for jid in reversed(newest)]

    def minions_seen(self) -> list[str]:
        """Every minion that has returned a job still in the index: Salt's get_minions."""
        r = job_returns.c
        pending = self.pending()  # before the database: see pending_lines
        found = set(
            self._from_db(
                lambda conn: list(
                    conn.scalars(select(r.minion).where(r.state == RETURNED).distinct())
                ),
                [],
            )
        )
        found.update(item.row.minion for item in pending if isinstance(item, ReturnItem))
        return sorted(found)

    def last_jid_per_minion(self, fun: str) -> dict[str, str]:
        """``{minion: newest jid}`` of the jobs running ``fun``: Salt's get_fun."""
        r = job_returns.c
        pending = self.pending()  # before the database: see pending_lines
        rows = self._from_db(
            lambda conn: conn.execute(
                select(r.minion, func.max(r.jid))
                .where(r.function == fun, r.state == RETURNED)
                .group_by(r.minion)
            ).all(),
            [],
        )
        newest = {minion: jid for minion, jid in rows}
        for item in pending:
            if isinstance(item, ReturnItem) and item.row.function == fun:
                row = item.row
                if row.jid > newest.get(row.minion, ""):
                    newest[row.minion] = row.jid
        return newest

    def last_return_at(self, jid: str) -> dt.datetime | None:
        """The arrival of the job's latest return (or Salt's update_endtime), pending ones
        included."""
        moments = [
            item.row.returned_at if isinstance(item, ReturnItem) else item.at
            for item in self.pending(jid)
            if isinstance(item, (ReturnItem, EndtimeItem))
        ]
        stored = self._from_db(
            lambda conn: conn.scalar(
                select(jobs_index.c.last_return_at).where(jobs_index.c.jid == jid)
            ),
            None,
        )
        if stored is not None:
            moments.append(stored)
        return max(moments) if moments else None

    # ------------------------------------------------------------------ Salt's job path
    def record(self, op: str, *args: Any) -> bool | None:
        """A write from Salt's job path: checked at once, journalled, and committed with the
        next batch by this process's writer thread. Never raises and never waits for the
        database: bad input goes to the spool's ``rejected/``. True when queued, None when
        set aside."""
        try:
            items = self.items_for(op, *args)
            entries = [(item_to_line(item), item) for item in items]
        except InvalidLoad as exc:
            self.spool.reject(op, *args, reason=str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - the returner must never break a job
            log.error("halite: cannot prepare %s; spooled", op, exc_info=True)
            self.spool.put(op, *args, reason=f"{type(exc).__name__}: {exc}")
            return None
        if items:
            self.submit(entries)
        return True

    def submit(self, entries: Sequence[tuple[str, Item]]) -> None:
        """Journal prepared writes and queue them for this process's writer thread."""
        self.writer().submit(list(entries))

    def apply_entries(self, entries: Sequence[tuple[str, Item]]) -> None:
        """Commit journalled writes in one transaction. If the batch fails for a reason other
        than an outage, each write is tried alone: one bad write (a value the database
        refuses, say) is set aside in ``rejected/`` and does not take its batch with it.
        Raises only for an outage, so that the caller spools what is left."""
        try:
            self.apply_items([item for _, item in entries])
            return
        except Exception as exc:  # noqa: BLE001
            if is_outage(exc):
                raise
            log.warning(
                "halite: a batch of %d writes failed (%s); retrying one by one", len(entries), exc
            )
        for line, item in entries:
            try:
                self.apply_items([item])
            except Exception as exc:  # noqa: BLE001
                if is_outage(exc):
                    raise
                self.spool.reject(SPOOL_OP, [line], reason=f"{type(exc).__name__}: {exc}")

    def writer(self) -> WriteBehind:
        """This process's write-behind queue, started (and dead journals recovered) on first use."""
        writer = self._writer
        if writer is None or writer.pid != os.getpid():
            with self._writer_lock:
                writer = self._writer
                if writer is None or writer.pid != os.getpid():
                    # Dead processes' journals are recovered by the writer thread's first
                    # tick (maybe_replay), never here on Salt's path.
                    writer = self._writer = WriteBehind(
                        apply=self.apply_entries,
                        spool=self.spool,
                        journal_dir=self.settings.journal_dir,
                        interval=self.settings.flush_interval,
                        batch_size=self.settings.batch_size,
                        is_outage=is_outage,
                        tick=self.maybe_replay,
                    )
        return writer

    def flush(self) -> int:
        """Commit what this process has queued (readers call it to see their own writes),
        then replay the spool if it is due."""
        writer = self._writer
        if writer is None or writer.pid != os.getpid():
            return 0
        done = writer.flush()
        self.maybe_replay()
        return done

    def close(self, wait: float | None = None) -> bool:
        """Commit what this store queued, waiting at most ``wait`` seconds (what is left
        stays journalled for recovery), then release the database's connections."""
        writer = self._writer
        done = True
        if writer is not None and writer.pid == os.getpid():
            done = writer.close(wait)
            self._writer = None  # a later write starts a new writer
        if done:
            self.db.dispose()
        return done

    def recover(self) -> int:
        """Take over the journals of dead processes and replay the spool now (on start)."""
        recover_journals(self.settings.journal_dir, self.spool)
        return self.replay_spool()

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
        """Take over the journals of processes that died, then replay the spool."""
        try:
            recover_journals(self.settings.journal_dir, self.spool)
        except OSError as exc:
            log.error("halite: cannot look for journals to recover (%s)", exc)
        return self.spool.replay(self._apply_spooled, is_outage)

    def _apply_spooled(self, op: str, args: list[Any]) -> None:
        if op == SPOOL_OP:
            entries = []
            for line in args[0]:
                try:
                    entries.append((line, item_from_line(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    self.spool.reject(SPOOL_OP, [line], reason=f"unreadable journal line: {exc}")
            self.apply_entries(entries)
        elif op in _SPOOLABLE:
            getattr(self, op)(*args)
        else:
            raise InvalidLoad(f"unknown spooled operation {op!r}")


_SPOOLABLE = {"save_load", "save_return", "save_minions", "save_events", "update_endtime"}


def _latest(*moments: dt.datetime | None) -> dt.datetime | None:
    known = [moment for moment in moments if moment is not None]
    return max(known) if known else None


def is_master_job(function: object) -> bool:
    """A job the master runs itself (a runner or wheel job), whose publish is its own."""
    return isinstance(function, str) and function.startswith(("runner.", "wheel."))


def _placeholder(load: Mapping[str, Any]) -> bool:
    """A load made from a return that arrived before its publish (no target yet)."""
    return "tgt" not in load and "id" in load


def salt_load(load: Mapping[str, Any]) -> dict[str, Any]:
    """A load as Salt's job cache interface gives it back. A runner or wheel job's
    publish is the engine's ``salt/run/<jid>/new`` (kept with its arguments for halite's
    own views), but Salt's ``local_cache`` holds only what Salt's store_job handed it,
    which has no ``arg``: ``jobs.list_job`` shows ``Arguments: []`` there, and so here."""
    load = dict(load)
    if is_master_job(load.get("fun")):
        load.pop("arg", None)
    return load


def _salt_return(
    value: Any, retcode: int | None, success: bool | None, out: str | None, function: str | None
) -> dict[str, Any]:
    """One minion's entry in Salt's get_jid. A runner's or wheel job's return is stored by
    Salt's store_job with the outcome inside it, so Salt's own cache gives ``return`` only."""
    entry: dict[str, Any] = {"return": value}
    if not is_master_job(function):
        if retcode is not None:
            entry["retcode"] = retcode
        if success is not None:
            entry["success"] = success
    if out is not None:
        entry["out"] = out
    return entry


def _raw(column: Any, is_sqlite: bool) -> Any:
    """A JSON column as the database holds it, for :func:`encoding.loads`. PostgreSQL: its
    JSON text (a cast in SQL, else the driver parses jsonb itself and a JSON string value
    would come back as a Python string indistinguishable from JSON text). SQLite: the
    stored value untouched (a top-level number is stored as a number by the column's
    numeric affinity, and casting it to text would round it to 15 digits)."""
    if is_sqlite:
        return type_coerce(column, Text).label(column.key)
    return cast(column, Text).label(column.key)


def function_name(value: object) -> str | None:
    """A job's function as the index stores it and permissions match it: a string as it
    is, anything else (a multi-function job's list) as its ``str``, at most 255 characters."""
    return _text(value, 255)


def _text(value: object, limit: int) -> str | None:
    if value is None:
        return None
    return str(value)[:limit]


def event_stamp(value: object) -> dt.datetime | None:
    """An event's ``_stamp`` (UTC, ISO 8601 without offset) as an aware datetime."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


_stores: PerProcess[Settings, JobStore] = PerProcess(JobStore, lambda store: None)


def get_store(settings: Settings) -> JobStore:
    """This process's :class:`JobStore` for these settings."""
    return _stores.get(settings)


def flush_all() -> int:
    """Commit every write this process has queued, for every database."""
    return sum(store.flush() for store in _stores.mine())
