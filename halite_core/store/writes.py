"""Writes to the index: publish loads, target lists, returns, settling marks, end times and
audit entries, applied in one transaction per batch with their locks and recounts.

Checking Salt's input (:meth:`Writes.items_for`) turns each of Salt's job cache writes into
typed operations (halite_core.store.ops); :meth:`Writes.apply_items` commits a batch of them.
Every operation is idempotent: applying a batch twice changes nothing, which is what lets the
journal be replayed after a crash.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    String,
    any_,
    bindparam,
    case,
    cast,
    column,
    func,
    or_,
    select,
    table,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from halite_core import encoding, highstate, jids, own_runners
from halite_core.config import Settings
from halite_core.states import (
    COMPLETE,
    KILLED,
    NO_RETURN,
    PENDING,
    RETURNED,
    RUNNING,
    JobResult,
    minion_failed_sql,
)
from halite_core.store import fleet
from halite_core.store.db import Database, Stage, run_staged
from halite_core.store.ops import (
    AuditItem,
    EndtimeItem,
    InvalidLoad,
    Item,
    KilledItem,
    LoadItem,
    MinionsItem,
    NoReturnItem,
    RerunItem,
    ReturnItem,
    ReturnRow,
    SaltWrite,
    SettledItem,
    item_jid,
    utcnow,
)
from halite_core.store.schema import audit_log, cleaned_jobs, job_returns, jobs_index

log = logging.getLogger(__name__)


FIND_JOB = "saltutil.find_job"


# salt/job/<jid>/new, salt/job/<jid>/ret/<minion>, salt/run/<jid>/new, salt/run/<jid>/ret
JOB_EVENT = re.compile(
    r"^salt/(?P<kind>job|run)/(?P<jid>[^/]+)/(?P<what>new|ret)(?:/(?P<minion>.+))?$"
)


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


TARGET_CHARS = 600  # the indexed column: PostgreSQL's B-tree takes at most 2,704 bytes a row


def target_text(tgt: object) -> str | None:
    """A target as people read it: list targets comma-separated, at most ``TARGET_CHARS``
    characters (a longer one ends in ``...``; the load keeps it whole). A list of thousands
    of minions otherwise makes a row PostgreSQL's index refuses, and its publish is lost."""
    if tgt is None:
        return None
    if isinstance(tgt, (list, tuple, set)):
        text = ",".join(str(t) for t in tgt)
    else:
        text = str(tgt)
    text = encoding.column_text(text)
    return text if len(text) <= TARGET_CHARS else text[: TARGET_CHARS - 3] + "..."


def is_return_load(load: Mapping[str, Any]) -> bool:
    """Salt's store_job hands every minion return to save_load too; those are not publishes."""
    return "return" in load and "id" in load and "tgt" not in load


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
    "test_run",
)


# The parameters of a stored return, in the order :meth:`Writes._save_returns` gives them
# (``highstate.StateSummary``'s fields last).
RETURN_PARAMETERS = ("jid", "minion", "expected", "start_time", *RETURN_COLUMNS)

# PostgreSQL: a batch's returns staged (binary COPY, halite_core.store.db.Stage) and
# upserted by one statement, with the upsert of ``_Statements.upsert_return``. Row by row,
# each return is a statement of its own and a message each way; while Salt's workers keep
# both cores busy (a 10,000-minion fan-in), each of those exchanges waits for the server
# to be scheduled, and a batch of 3,000 returns took seconds; as arrays, one per column,
# the driver spent more on building them than the server on the rows. Large returns stay
# row by row: copying megabyte values through the stage costs PostgreSQL more than the
# rows do.
SMALL_RETURN = 4096
_RETURN_TYPES = {
    "jid": "text", "minion": "text", "expected": "bool", "start_time": "timestamptz",
    "state": "text", "function": "text", "returned_at": "timestamptz",
    "return_value": "text", "return_truncated": "bool", "retcode": "int4",
    "success": "bool", "out": "text", "states_total": "int4",
    "states_passed": "int4", "states_failed": "int4", "states_changed": "int4",
    "states_duration_ms": "float8", "test_run": "bool",
}  # fmt: skip
RETURNS_STAGE = Stage(
    "halite_stage_returns", tuple((name, _RETURN_TYPES[name]) for name in RETURN_PARAMETERS)
)
UPSERT_RETURNS_POSTGRESQL = RETURNS_STAGE.statement(
    f"INSERT INTO job_returns ({', '.join(RETURN_PARAMETERS)}) SELECT "
    + ", ".join(
        "CAST(k.return_value AS jsonb)" if name == "return_value" else f"k.{name}"
        for name in RETURN_PARAMETERS
    )
    + " FROM k ON CONFLICT (jid, minion) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in RETURN_COLUMNS)
    + f" WHERE job_returns.state <> '{RETURNED}'"
    " OR job_returns.returned_at > excluded.returned_at"
)
NO_SUMMARY = (None, None, None, None, None)

ZERO_COUNTS = {"minions_targeted": 0, "minions_returned": 0, "minions_failed": 0,
               "minions_changed": 0, "result": RUNNING}  # fmt: skip


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


# PostgreSQL: a batch's publish loads staged and upserted by one statement (and those known
# second-hand by another, which fills only a row without a publish); executed once per
# load, each is a statement of its own for the server, and 4,000 of them took PostgreSQL
# 0.4 s, four times what the same rows cost staged. The keys are unique (a load per jid).
_LOAD_TYPES = {
    "jid": "text", "function": "text", "target": "text", "target_type": "text",
    "user": "text", "arguments": "text", "kwargs": "text", "start_time": "timestamptz",
    "status": "text", "master_id": "text", "load": "text", "system": "bool",
    "created_at": "timestamptz",
}  # fmt: skip
_JSON_LOAD_COLUMNS = ("arguments", "kwargs", "load")


def _quoted(name: str) -> str:
    return f'"{name}"' if name == "user" else name  # a reserved word in PostgreSQL


LOADS_STAGE = Stage(
    "halite_stage_loads", tuple((_quoted(name), _LOAD_TYPES[name]) for name in STUB_COLUMNS)
)


def _staged_loads(where: str = "") -> str:
    """The upsert of :data:`LOADS_STAGE`'s rows; the counters start at ZERO_COUNTS, bound."""
    values = [
        f"CAST(k.{name} AS jsonb)" if name in _JSON_LOAD_COLUMNS else f"k.{_quoted(name)}"
        for name in STUB_COLUMNS
    ]
    return LOADS_STAGE.statement(
        f"INSERT INTO jobs_index ({', '.join(map(_quoted, (*STUB_COLUMNS, *ZERO_COUNTS)))})"
        f" SELECT {', '.join(values)}, "
        + ", ".join(f"%({name})s" for name in ZERO_COUNTS)
        + " FROM k ON CONFLICT (jid) DO UPDATE SET "
        + ", ".join(f"{_quoted(name)} = excluded.{_quoted(name)}" for name in LOAD_COLUMNS)
        + where
    )


UPSERT_LOADS_POSTGRESQL = _staged_loads()
FILL_LOADS_POSTGRESQL = _staged_loads(" WHERE jobs_index.load IS NULL")


def _counts_of(rows: Any) -> list[Any]:
    """The aggregates a job's counters come from, over its ``job_returns`` rows ``rows``."""
    returned = rows.c.state == RETURNED
    minions = func.count(rows.c.minion)
    return [
        minions.label("targeted"),
        minions.filter(returned).label("returned"),
        minions.filter(minion_failed_sql(rows.c)).label("failed"),
        minions.filter(returned, rows.c.states_changed > 0).label("changed"),
        minions.filter(rows.c.state == PENDING).label("pending"),
        func.max(rows.c.returned_at).filter(returned).label("last_return"),
        func.max(rows.c.returned_at).label("last_settled"),
    ]


def _counted(c: Any, start_time: Any) -> dict[str, Any]:
    """A job's counters, status, result and end time from :func:`_counts_of`'s ``c``."""
    done = c.pending == 0
    return {
        "minions_targeted": c.targeted,
        "minions_returned": c.returned,
        "minions_failed": c.failed,
        "minions_changed": c.changed,
        "last_return_at": c.last_return,
        "status": case((done, COMPLETE), else_=RUNNING),
        "result": case(
            (~done, RUNNING),
            (c.failed > 0, JobResult.FAILED.value),
            (c.changed > 0, JobResult.CHANGED.value),
            else_=JobResult.PASS.value,
        ),
        # The job ended when its last minion returned or was settled (or killed).
        "end_time": case(
            (done, func.coalesce(c.last_settled, c.last_return, start_time)), else_=None
        ),
    }


def _folded_loads() -> str:
    """PostgreSQL: the upsert of :data:`LOADS_STAGE`'s publish loads with their counters,
    counted from the rows the batch wrote before it (targets, returns, settles). Run in
    place of the recount for those jobs: a job is then written once, not inserted and
    updated again (which, its status and result being indexed, writes a new version of
    the row and an entry in each of its ten indexes twice)."""
    k = table(LOADS_STAGE.table, *(column(name) for name in STUB_COLUMNS)).alias("k")
    rows = job_returns.alias("rows")
    c = select(*_counts_of(rows)).where(rows.c.jid == k.c.jid).lateral("c")
    counted = _counted(c.c, k.c.start_time)
    values = {
        name: cast(k.c[name], postgresql.JSONB) if name in _JSON_LOAD_COLUMNS else k.c[name]
        for name in STUB_COLUMNS
    }
    values.update(counted)
    folded = postgresql.insert(jobs_index).from_select(
        list(values), select(*values.values()).select_from(k.join(c, true()))
    )
    changed = [*LOAD_COLUMNS, *counted]
    folded = folded.on_conflict_do_update(
        index_elements=[jobs_index.c.jid], set_={name: folded.excluded[name] for name in changed}
    )
    compiled = folded.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    return str(compiled)


FOLDED_LOADS_POSTGRESQL = _folded_loads()


def _load_row(params: Mapping[str, Any]) -> tuple[Any, ...]:
    """A load's parameters as a row of :data:`LOADS_STAGE` (JSON as its text)."""
    return tuple(
        value.text if isinstance(value, encoding.Encoded) else value
        for value in (params[name] for name in STUB_COLUMNS)
    )


# PostgreSQL: a batch's placeholders (a row per targeted minion that has not returned)
# staged and upserted by one statement; row by row, a 10,000-minion publish costs
# PostgreSQL 10,000 statements. The keys are unique (ON CONFLICT cannot touch a row twice
# in one statement).
PLACEHOLDERS_STAGE = Stage(
    "halite_stage_targets", (("jid", "text"), ("minion", "text"), ("start_time", "timestamptz"))
)
PLACEHOLDERS_POSTGRESQL = PLACEHOLDERS_STAGE.statement(
    "INSERT INTO job_returns (jid, minion, state, expected, start_time, return_truncated) "
    f"SELECT k.jid, k.minion, '{PENDING}', true, k.start_time, false FROM k"
    " ON CONFLICT (jid, minion) DO UPDATE SET expected = true"
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
    recount_all: Any
    endtime: Any
    no_return: Any
    killed: Any
    rerun: Any

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
        # A placeholder is filled; a row that already holds a return is left alone, unless
        # this one was accepted earlier (two workers' journals reach the committer in no
        # particular order): the first return of a minion wins, by when it arrived.
        upsert_return = return_insert.on_conflict_do_update(
            index_elements=["jid", "minion"],
            set_={name: return_insert.excluded[name] for name in RETURN_COLUMNS},
            where=or_(
                r.state != RETURNED,
                r.returned_at > return_insert.excluded.returned_at,
            ),
        )
        rows = job_returns.alias("rows")
        of_job = rows.c.jid == j.jid
        returned = rows.c.state == RETURNED
        this_job = j.jid == bindparam("k_jid")
        recount = (
            update(jobs_index)
            .where(this_job)
            .values(
                minions_targeted=select(func.count()).where(of_job).scalar_subquery(),
                minions_returned=select(func.count()).where(of_job, returned).scalar_subquery(),
                # A minion that never answered failed the job, as Salt's CLI reports it.
                minions_failed=select(func.count())
                .where(of_job, minion_failed_sql(rows.c))
                .scalar_subquery(),
                minions_changed=select(func.count())
                .where(of_job, returned, rows.c.states_changed > 0)
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
                # Counted by the recount just before (a separate statement).
                result=case(
                    (~done, RUNNING),
                    (j.minions_failed > 0, JobResult.FAILED.value),
                    (j.minions_changed > 0, JobResult.CHANGED.value),
                    else_=JobResult.PASS.value,
                ),
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
        # PostgreSQL: the two above for a batch of jobs in one statement, from one pass
        # over their rows (the jobs' rows are locked by then, in jid order).
        wanted = select(
            func.unnest(bindparam("jids", type_=ARRAY(String()))).label("jid")
        ).subquery("wanted")
        counts = (
            select(wanted.c.jid, *_counts_of(rows))
            .select_from(wanted.outerjoin(rows, rows.c.jid == wanted.c.jid))
            .group_by(wanted.c.jid)
            .subquery("counts")
        )
        recount_all = (
            update(jobs_index)
            .where(j.jid == counts.c.jid)
            .values(**_counted(counts.c, j.start_time))
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
        rerun = (
            update(jobs_index)
            .where(this_job)
            .values(rerun_of=bindparam("rerun_of", type_=j.rerun_of.type))
        )
        return cls(
            upsert_load, fill_load, target, stub.on_conflict_do_nothing(), upsert_return,
            recount, settle, recount_all, endtime, no_return, killed, rerun,
        )  # fmt: skip


def _minions_items(
    jid: object, minions: Iterable[str] | None, syndic_id: object = None
) -> list[Item]:
    if not jids.is_jid(jid):
        raise InvalidLoad(f"save_minions: {jid!r} is not a Salt job id")
    assert isinstance(jid, str)
    return [MinionsItem(jid, sorted({str(m) for m in minions or []}))]


def _endtime_items(jid: object, when: object) -> list[Item]:
    if not jids.is_jid(jid):
        raise InvalidLoad(f"update_endtime: {jid!r} is not a Salt job id")
    if not isinstance(when, dt.datetime) or when.tzinfo is None:
        raise InvalidLoad(f"update_endtime: {when!r} is not a time with a timezone")
    assert isinstance(jid, str)
    return [EndtimeItem(jid, when)]


def plain_return(function: object, fun_args: object) -> bool:
    """Whether a return of ``function`` is stored as it is, its JSON text as Salt's worker
    made it: not a state run (summarised, and maybe withheld in part), not a runner or wheel
    job (a payload holding the outcome), not one of halite's or the jobs runner's answers
    (withheld; see own_runners.py). The others are prepared in full where they arrive."""
    return (
        isinstance(function, str)
        and not highstate.is_state_function(function)
        and not function.startswith(("runner.", "wheel."))
        and not own_runners.is_own_runner(function)
        and not own_runners.calls_withheld_runner(function, fun_args)
    )


def function_name(value: object) -> str | None:
    """A job's function as the index stores it and permissions match it: a string as it
    is, anything else (a multi-function job's list) as its ``str``, at most 255 characters."""
    return _text(value, 255)


def _text(value: object, limit: int) -> str | None:
    """A text column's value: at most ``limit`` characters, without what PostgreSQL's
    text refuses (encoding.column_text), so that a row is never set aside for it."""
    if value is None:
        return None
    return encoding.column_text(str(value))[:limit]


def minion_id(minion: str) -> str:
    """A minion id as ``job_returns`` keys it, the same from a target list, a return or a
    settling mark: at most 255 characters, a NUL or lone surrogate escaped."""
    return encoding.column_text(minion)[:255]


def event_stamp(value: object) -> dt.datetime | None:
    """An event's ``_stamp`` (UTC, ISO 8601 without offset) as an aware datetime."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


def insert_for(db: Database, table: Any) -> Insert:
    """An INSERT that takes ON CONFLICT clauses (a dialect construct; Database admits only
    these two)."""
    if db.dialect_name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class Writes:
    """The write half of the index for one database."""

    # PostgreSQL: a batch's first-hand publish loads are written with their counters, at
    # the end of the batch (FOLDED_LOADS_POSTGRESQL), not written and recounted; False
    # takes the second way (the tests compare the two).
    fold_counts = True

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._stmts: _Statements | None = None

    # ------------------------------------------------------------------ helpers
    def _insert(self, table: Any) -> Insert:
        # ON CONFLICT upserts are dialect constructs; Database admits only these two.
        if self.db.dialect_name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def start_time(self, jid: str) -> dt.datetime:
        return jids.start_time(jid, self.settings.jid_utc)

    # ------------------------------------------------------------------ writes
    def items_for(self, write: SaltWrite | str, *args: Any) -> list[Item]:
        """Check and prepare one of Salt's job cache writes as typed operations; raises
        :class:`InvalidLoad` for input that cannot be indexed."""
        try:
            kind = SaltWrite(write)
        except ValueError as exc:
            raise InvalidLoad(f"unknown write {write!r}") from exc
        prepare: dict[SaltWrite, Callable[..., list[Item]]] = {
            SaltWrite.SAVE_LOAD: self._load_items,
            SaltWrite.SAVE_RETURN: lambda *a: [self.return_item(*a)],
            SaltWrite.SAVE_MINIONS: _minions_items,
            SaltWrite.SAVE_EVENTS: self._event_items,
            SaltWrite.UPDATE_ENDTIME: _endtime_items,
        }
        return prepare[kind](*args)

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

    def return_item(
        self,
        load: Mapping[str, Any],
        returned_at: dt.datetime | None = None,
        encoded: encoding.Encoded | None = None,
    ) -> ReturnItem:
        row = self.prepare_return(load, returned_at, encoded)
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
                items.append(self.return_item(data, event_stamp(data.get("_stamp"))))
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
        # A targeted minion whose return is in the same batch gets its returned row at once,
        # not a pending row first: half the row writes of a publish and its returns.
        returned = {(item.row.jid, item.row.minion) for item in returns}
        expected: set[tuple[str, str]] = set()
        # Jobs whose row the batch writes at its end, with their counters (fold_counts):
        # known to be there from here on.
        folded: dict[str, dict[str, Any]] = {}
        self._save_loads(conn, loads, touched, returned, expected, folded)
        # Minions added to a job, and minions settled (no return, killed), for a job that
        # retention removed are dropped, as its returns are: they must not bring it back.
        later = {item.jid for item in items if isinstance(item, MinionsItem | SettledItem)}
        cleaned = self._cleaned(conn, later - self._known(conn, later) - folded.keys())
        if cleaned:
            log.info(
                "halite: minions added or settled for jobs already cleaned, dropped: %s",
                ", ".join(sorted(cleaned)),
            )
        for item in items:
            if isinstance(item, MinionsItem) and item.jid not in cleaned:
                if item.jid not in folded:
                    self._ensure_jobs(conn, {item.jid: {}})
                self._add_minions(conn, item.jid, self.start_time(item.jid), item.minions)
                touched.add(item.jid)
        fleet_rows: list[tuple[list[ReturnRow], Any]] = []
        stored = self._save_returns(conn, returns, touched, expected, fleet_rows, folded)
        # After the returns of the same batch: a minion that did return stays returned.
        for kind, state, stmt in (
            (NoReturnItem, NO_RETURN, stmts.no_return),
            (KilledItem, KILLED, stmts.killed),
        ):
            marked = [item for item in items if isinstance(item, kind) and item.jid not in cleaned]
            if not marked:
                continue
            self._ensure_jobs(conn, {item.jid: {} for item in marked if item.jid not in folded})
            rows = [
                {"jid": item.jid, "minion": minion, "state": state, "expected": True,
                 "start_time": self.start_time(item.jid), "returned_at": item.at,
                 "return_truncated": False}
                for item in marked
                for minion in map(minion_id, item.minions)
            ]  # fmt: skip
            self.db.executemany(conn, stmt, rows)
            touched.update(item.jid for item in marked)
        self._recount(conn, touched - folded.keys())
        if folded:
            loaded = [_load_row(params) for params in folded.values()]
            run_staged(conn, LOADS_STAGE, loaded, FOLDED_LOADS_POSTGRESQL)
        self._link_reruns(conn, [item for item in items if isinstance(item, RerunItem)])
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
        # Last: the rows of the minions, which another transaction writing returns of the
        # same minions (a lane of this committer, another master) waits for until commit.
        for kept, prior in fleet_rows:
            fleet.note_returns(self.db, conn, kept, prior, self.settings.is_system)
        return stored

    def _link_reruns(self, conn: Connection, items: Sequence[RerunItem]) -> None:
        """Record which job each re-run runs again. The link may be committed before the
        re-run's publish load (another process journalled that): a row waits for it."""
        if not items:
            return
        asked = {item.jid for item in items}
        # A link replayed after retention removed its job must not bring the job back.
        cleaned = self._cleaned(conn, asked - self._known(conn, asked))
        kept = [item for item in items if item.jid not in cleaned]
        self._ensure_jobs(conn, {item.jid: {} for item in kept})
        self.db.executemany(
            conn,
            self._statements().rerun,
            [{"k_jid": item.jid, "rerun_of": item.rerun_of} for item in kept],
        )

    def _save_loads(
        self,
        conn: Connection,
        items: Sequence[LoadItem],
        touched: set[str],
        returned: set[tuple[str, str]],
        expected: set[tuple[str, str]],
        folded: dict[str, dict[str, Any]],
    ) -> None:
        """Index publish loads and their target lists; counters follow in :meth:`_recount`.
        On PostgreSQL the first-hand loads are left in ``folded`` instead, for the caller to
        write with their counters once the batch's other rows are in."""
        if not items:
            return
        loads: dict[str, LoadItem] = {}
        for item in items:  # a repeated publish: the last one wins, but first-hand over second
            if not (item.only_new and item.jid in loads and not loads[item.jid].only_new):
                loads[item.jid] = item
        rows: list[dict[str, Any]] = []
        fill_only: list[dict[str, Any]] = []
        placeholders: list[tuple[str, str, dt.datetime]] = []
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
            targets = [minion_id(m) for m in item.minions or []]
            expected.update((jid, minion) for minion in targets if (jid, minion) in returned)
            pending = [m for m in targets if (jid, m) not in returned]
            placeholders.extend((jid, minion, start) for minion in pending)
        if self.db.dialect_name == "postgresql":
            staged = [(fill_only, FILL_LOADS_POSTGRESQL)]
            if self.fold_counts:
                folded.update((params["jid"], params) for params in rows)
            else:
                staged.append((rows, UPSERT_LOADS_POSTGRESQL))
            for params, sql in staged:
                if params:
                    loaded = [_load_row(p) for p in params]
                    run_staged(conn, LOADS_STAGE, loaded, sql, ZERO_COUNTS)
        else:
            stmts = self._statements()
            self.db.executemany(conn, stmts.upsert_load, rows)
            self.db.executemany(conn, stmts.fill_load, fill_only)
        self._add_placeholders(conn, placeholders)
        touched.update(loads)

    def _add_minions(
        self, conn: Connection, jid: str, start: dt.datetime, minions: Iterable[str]
    ) -> None:
        self._add_placeholders(conn, [(jid, minion_id(minion), start) for minion in minions])

    def _add_placeholders(
        self, conn: Connection, keys: Sequence[tuple[str, str, dt.datetime]]
    ) -> None:
        """A pending row for each (jid, minion, job start) without one; a row there already
        (a return, a placeholder) is marked expected and otherwise left alone."""
        unique = list({(jid, minion): start for jid, minion, start in keys}.items())
        if not unique:
            return
        if self.db.dialect_name == "postgresql":
            rows = [(jid, minion, start) for (jid, minion), start in unique]
            run_staged(conn, PLACEHOLDERS_STAGE, rows, PLACEHOLDERS_POSTGRESQL)
            return
        params = [
            {"jid": jid, "minion": minion, "state": PENDING, "expected": True,
             "start_time": start, "return_truncated": False}
            for (jid, minion), start in unique
        ]  # fmt: skip
        self.db.executemany(conn, self._statements().target, params)

    def _recount(self, conn: Connection, job_ids: Iterable[str]) -> None:
        """Set the counters, status and end time of jobs from their job_returns rows.

        Recounting (an indexed range scan of the job's rows) rather than incrementing keeps
        the counters exact whatever order and however often writes arrive. On PostgreSQL
        one statement recounts the batch's jobs: two correlated statements per job cost
        several times more on partitioned tables (a scan of the partitions' plans each).
        """
        ordered = sorted(set(job_ids))
        if not ordered:
            return
        stmts = self._statements()
        if self.db.dialect_name == "postgresql":
            conn.execute(stmts.recount_all, {"jids": ordered})
            return
        params = [{"k_jid": jid} for jid in ordered]
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
        self,
        load: Mapping[str, Any],
        returned_at: dt.datetime | None = None,
        encoded: encoding.Encoded | None = None,
    ) -> ReturnRow:
        """A minion return as its row. ``encoded``: the return's JSON text, already made
        (a journalled :class:`RawReturn` of a function whose return :func:`plain_return`
        says is stored as it is); ``load["return"]`` is then not looked at."""
        if not isinstance(load, Mapping):
            raise InvalidLoad(f"a return must be a dict, not {type(load).__name__}")
        jid, minion = load.get("jid"), load.get("id")
        if not jids.is_jid(jid):
            raise InvalidLoad(f"return from {minion!r} has no valid jid: {jid!r}")
        if not isinstance(minion, str) or not minion:
            raise InvalidLoad(f"return for {jid} has no minion id: {minion!r}")
        assert isinstance(jid, str)
        fun = load.get("fun")
        limit = self.settings.max_return_bytes
        summary = None
        test_run: bool | None = None
        notable: tuple[highstate.NotableState, ...] = ()
        runner_success: bool | None = None
        runner_retcode: object = None
        if encoded is not None:
            encoded = encoding.limited(encoded.text, encoded.converted, limit)
        else:
            value = load.get("return")
            inner, runner_success, runner_retcode = highstate.runner_payload(fun, value)
            summary = highstate.summarize(inner) if highstate.is_state_function(fun) else None
            if summary is not None:
                test_run = highstate.is_test_run(load.get("fun_args"))
                if summary.failed or summary.changed:
                    notable = highstate.notable(inner)
            # halite's and the jobs runner's answers are not kept, nor their copies inside
            # other jobs where those name the runner (halite_core/own_runners.py).
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
            minion=minion_id(minion),
            function=function_name(fun),
            start_time=self.start_time(jid),
            returned_at=returned_at or utcnow(),
            value=encoded,
            retcode=_retcode(load.get("retcode", runner_retcode)),
            success=success if isinstance(success, bool) else None,
            out=_text(out, 64) if isinstance(out, str) else None,
            summary=summary,
            test_run=test_run,
            notable=notable,
        )

    def _save_returns(
        self,
        conn: Connection,
        items: Sequence[ReturnItem],
        touched: set[str],
        expected: set[tuple[str, str]],
        fleet_rows: list[tuple[list[ReturnRow], Any]],
        folded: Mapping[str, Any],
    ) -> int:
        """Store a batch of returns; the first return of a minion for a job wins.
        Returns how many were stored (the others were duplicates). What the fleet's rows
        need (:func:`fleet.note_returns`) is left in ``fleet_rows``, for the caller to
        write at the end of the transaction."""
        if not items:
            return 0
        first: dict[tuple[str, str], int] = {}
        stubs: dict[str, dict[str, Any]] = {}
        for i, item in enumerate(items):
            key = (item.row.jid, item.row.minion)
            if key in first and items[first[key]].row.returned_at <= item.row.returned_at:
                continue  # the earliest accepted wins
            first[key] = i
            stubs.setdefault(item.row.jid, item.stub)
        known = self._known(conn, stubs) | (folded.keys() & stubs.keys())
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
        for key, i in first.items():
            row = items[i].row
            summary = row.summary or NO_SUMMARY
            rows.append(
                (row.jid, row.minion, key in expected, row.start_time, RETURNED, row.function,
                 row.returned_at, row.value, row.value.truncated, row.retcode, row.success,
                 row.out, *summary, row.test_run)
            )  # fmt: skip
        kept = [items[i].row for i in first.values()]
        prior = fleet.prior_returns(self.db, conn, kept)
        stored = self._upsert_returns(conn, rows)
        if stored < len(items):
            log.info("halite: %d repeated returns ignored (first wins)", len(items) - stored)
        fleet_rows.append((kept, prior))
        touched.update(stubs)
        return stored

    def _upsert_returns(self, conn: Connection, rows: list[tuple[Any, ...]]) -> int:
        """Store returns (tuples of RETURN_PARAMETERS, one per (jid, minion)); how many
        were stored, the others being later repeats of a stored return."""
        stmt = self._statements().upsert_return
        if self.db.dialect_name != "postgresql":
            return self.db.executemany_rows(conn, stmt, RETURN_PARAMETERS, rows)
        value = RETURN_PARAMETERS.index("return_value")
        duration = RETURN_PARAMETERS.index("states_duration_ms")
        large = [row for row in rows if len(row[value].text) > SMALL_RETURN]
        stored = self.db.executemany_rows(conn, stmt, RETURN_PARAMETERS, large)
        small = [
            (*row[:value], row[value].text, *row[value + 1 : duration],
             None if row[duration] is None else float(row[duration]), *row[duration + 1 :])
            for row in rows if len(row[value].text) <= SMALL_RETURN
        ]  # fmt: skip
        if small:
            stored += run_staged(conn, RETURNS_STAGE, small, UPSERT_RETURNS_POSTGRESQL)
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
        if conn.dialect.name == "postgresql":
            # One array parameter: an IN of hundreds of bound values costs SQLAlchemy more
            # to render (a parameter each) than the server to answer, with every batch.
            wanted = bindparam("wanted", list(values), type_=ARRAY(String()))
            return {tuple(row) for row in conn.execute(query.where(column == any_(wanted)))}
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
