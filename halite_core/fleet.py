"""The fleet's health, in SQL: which minions are failing, each minion's history, which states
fail across the fleet and since when. The queries behind ``salt-run halite.minions``,
``halite.minion``, ``halite.states`` and ``halite.state`` (and the API's ``/api/minions`` and
``/api/states``), over the tables :mod:`halite_core.store.fleet` keeps: ``minion_status``
(one row per minion) and ``state_results`` (failed and changed states of state runs).

Permissions: ``functions`` are the function globs the caller may view (None: all), as for
the job listing. A minion's job history and latest job keep to them. State runs are shown
only to a caller who may view every state job (``view:job:state.*``): the minions' order
(failing first) and ``failing`` tell of state runs, so without it minions are listed by id
with ``failing`` and ``state_run`` set to None.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Connection, and_, case, exists, func, literal, or_, select, tuple_

from halite_core.api import (
    WINDOWS,
    FailingState,
    JobRef,
    MinionHistory,
    MinionJob,
    MinionQuery,
    MinionRow,
    MinionsPage,
    MinionsQuery,
    QueryError,
    StateCounts,
    StateHistory,
    StateQuery,
    StateRun,
    StateRunRow,
    StatesPage,
    StatesQuery,
    text_arg,
)
from halite_core.queries import _glob, _scope
from halite_core.states import JobResult, MinionState, minion_failed_sql
from halite_core.store.schema import job_returns, jobs_index, minion_status, state_results

RETURNED = MinionState.RETURNED.value
PENDING = MinionState.PENDING.value
# A minion's state in one job, as its history shows it: one still pending is running it.
SHOWN_STATE = {PENDING: "running"}


class UnknownMinion(QueryError):
    """No job of that minion in the index (or none the caller may view)."""


# ---------------------------------------------------------------------- cursors
def _encode(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def _decode(cursor: str, shape: Sequence[type]) -> list[Any]:
    """A cursor this module handed out: a JSON list of values of the types ``shape``."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise QueryError(f"cursor {cursor!r} is not one this listing handed out") from exc
    if (
        not isinstance(values, list)
        or len(values) != len(shape)
        or not all(type(v) is t for v, t in zip(values, shape, strict=True))
        or any(isinstance(v, str) and "\x00" in v for v in values)
        # Numbers are a health flag or a position: small, never negative.
        or any(type(v) is int and not 0 <= v < 2**31 for v in values)
    ):
        raise QueryError(f"cursor {cursor!r} is not one this listing handed out")
    return values


def _time(text: str, cursor: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
        if moment.tzinfo is not None:
            return moment.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        pass
    raise QueryError(f"cursor {cursor!r} is not one this listing handed out")


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# ---------------------------------------------------------------------- minions
def minions(
    conn: Connection,
    asked: MinionsQuery,
    functions: tuple[str, ...] | None = None,
    states_visible: bool = True,
) -> MinionsPage:
    """One page of minions: failing first, then by id (by id only when the caller may not
    view state runs: ``states_visible`` False)."""
    ms = minion_status.c
    dialect = conn.dialect.name
    query = select(minion_status)
    if asked.minion:
        query = query.where(_glob(ms.minion, asked.minion, dialect))
    if asked.failing:
        query = query.where(ms.healthy == 0)
    if functions is not None:
        # Only minions that returned for a job the caller may view.
        r, j = job_returns.c, jobs_index.c
        query = query.where(
            exists(
                select(r.jid)
                .select_from(job_returns.join(jobs_index, j.jid == r.jid))
                .where(
                    r.minion == ms.minion,
                    r.state == RETURNED,
                    *_scope(j.function, functions, dialect),
                )
            )
        )
    if states_visible:
        if asked.cursor:
            healthy, minion = _decode(asked.cursor, (int, str))
            query = query.where(tuple_(ms.healthy, ms.minion) > tuple_(healthy, minion))
        query = query.order_by(ms.healthy, ms.minion)
    else:
        if asked.cursor:
            (minion,) = _decode(asked.cursor, (str,))
            query = query.where(ms.minion > minion)
        query = query.order_by(ms.minion)
    rows = conn.execute(query.limit(asked.limit + 1)).all()
    page = rows[: asked.limit]
    failing = (
        _failing_states(conn, [(r.state_jid, r.minion) for r in page if r.state_jid])
        if states_visible
        else {}
    )
    last = _last_jobs(conn, [r.minion for r in page], functions) if functions is not None else {}
    found: list[MinionRow] = []
    for row in page:
        state_run: StateRun | None = None
        if states_visible and row.state_jid is not None and row.state_start is not None:
            state_run = {
                "jid": row.state_jid,
                "function": row.state_function,
                "start_time": row.state_start.isoformat(),
                "result": cast(Any, row.state_result),
                "counts": _counts(row),
                "failing_states": failing.get((row.state_jid, row.minion), []),
            }
        if functions is None:
            job: JobRef | None = (
                {"jid": row.last_jid, "function": row.last_function,
                 "start_time": row.last_start.isoformat()}
                if row.last_jid is not None and row.last_start is not None else None
            )  # fmt: skip
        else:
            job = last.get(row.minion)
        found.append(
            {
                "minion": row.minion,
                "failing": (row.healthy == 0) if states_visible else None,
                "state_run": state_run,
                "last_job": job,
            }
        )
    more = len(rows) > asked.limit
    end = page[-1] if more else None
    cursor = None
    if end is not None:
        cursor = _encode((end.healthy, end.minion) if states_visible else (end.minion,))
    return {"minions": found, "next": cursor}


def _counts(row: Any) -> StateCounts:
    return {
        "states": row.states_total,
        "passed": row.states_passed,
        "failed": row.states_failed,
        "changed": row.states_changed,
    }


def _failing_states(
    conn: Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """The ids of the failed states of each (jid, minion) state run, in run order."""
    wanted = sorted(set(keys))
    found: dict[tuple[str, str], list[str]] = {}
    s = state_results.c
    for start in range(0, len(wanted), 200):
        part = wanted[start : start + 200]
        rows = conn.execute(
            select(s.jid, s.minion, s.state_id, s.result)
            # Equalities on the primary key alone: SQLite answers a row-value IN, or these
            # with a condition on `result` too, by reading every failed row of the history
            # through the (result, start_time) index. A run has few rows: the rest is here.
            .where(or_(*(and_(s.jid == jid, s.minion == minion) for jid, minion in part)))
            .order_by(s.jid, s.minion, s.run_num, s.state_key)
        )
        for jid, minion, state_id, result in rows:
            if result == JobResult.FAILED.value:
                found.setdefault((jid, minion), []).append(state_id)
    return found


def _last_jobs(
    conn: Connection, names: Sequence[str], functions: tuple[str, ...]
) -> dict[str, JobRef]:
    """Each minion's latest returned job among those the caller may view (one index range
    of job_returns per minion, newest first)."""
    r, j = job_returns.c, jobs_index.c
    found: dict[str, JobRef] = {}
    for name in names:
        row = conn.execute(
            select(j.jid, j.function, j.start_time)
            .select_from(job_returns.join(jobs_index, j.jid == r.jid))
            .where(
                r.minion == name,
                r.state == RETURNED,
                j.system.is_(False),  # as minion_status: bookkeeping is no latest job
                *_scope(j.function, functions, conn.dialect.name),
            )
            .order_by(r.start_time.desc(), r.jid.desc())
            .limit(1)
        ).first()
        if row is not None:
            found[name] = {
                "jid": row.jid,
                "function": row.function,
                "start_time": row.start_time.isoformat(),
            }
    return found


# ---------------------------------------------------------------------- one minion
def minion_result(r: Any) -> Any:
    """A minion's result in a job, in SQL: running (pending), failed (it failed, never
    answered or was killed), changed (a state changed something) or pass."""
    return case(
        (r.state == PENDING, JobResult.RUNNING.value),
        (minion_failed_sql(r), JobResult.FAILED.value),
        (r.states_changed > 0, JobResult.CHANGED.value),
        else_=JobResult.PASS.value,
    )


def minion_history(
    conn: Connection,
    minion: object,
    asked: MinionQuery,
    functions: tuple[str, ...] | None = None,
    states_visible: bool = True,
) -> MinionHistory:
    """A minion's jobs, newest first (one range of job_returns' (minion, start_time, jid)
    index), with its state and result in each; its state runs' counts and failed states
    when the caller may view them."""
    name = text_arg("minion", minion)
    if not name:
        raise QueryError("minion: give a minion id")
    r, j = job_returns.c, jobs_index.c
    dialect = conn.dialect.name
    result = minion_result(r).label("result")
    query = (
        select(r.jid, j.function, r.start_time, r.state, r.success, r.retcode, r.returned_at,
               r.test_run, r.states_total, r.states_passed, r.states_failed, r.states_changed,
               result)
        .select_from(job_returns.join(jobs_index, j.jid == r.jid))
        .where(r.minion == name, j.system.is_(False), *_scope(j.function, functions, dialect))
    )  # fmt: skip
    if asked.fun:
        query = query.where(_glob(j.function, asked.fun, dialect))
    if asked.result:
        query = query.where(minion_result(r) == asked.result)
    if asked.cursor:
        when, jid = _decode(asked.cursor, (str, str))
        after = _time(when, asked.cursor)
        query = query.where(or_(r.start_time < after, and_(r.start_time == after, r.jid < jid)))
    rows = conn.execute(
        query.order_by(r.start_time.desc(), r.jid.desc()).limit(asked.limit + 1)
    ).all()
    page = rows[: asked.limit]
    if not page and not asked.cursor and not known_minion(conn, name, functions):
        raise UnknownMinion(f"no minion {name!r} in the index")
    runs = [row for row in page if row.states_total is not None and states_visible]
    failing = _failing_states(conn, [(row.jid, name) for row in runs])
    jobs: list[MinionJob] = []
    for row in page:
        entry: MinionJob = {
            "jid": row.jid,
            "function": row.function,
            "start_time": row.start_time.isoformat(),
            "state": cast(Any, SHOWN_STATE.get(row.state, row.state)),
            "success": row.success,
            "retcode": row.retcode,
            "result": cast(Any, row.result),
            "returned_at": _iso(row.returned_at),
            "test_run": row.test_run,
        }
        if row.states_total is not None and states_visible:
            entry["counts"] = _counts(row)
            entry["failing_states"] = failing.get((row.jid, name), [])
        jobs.append(entry)
    end = page[-1] if len(rows) > asked.limit else None
    cursor = (
        _encode((end.start_time.astimezone(dt.timezone.utc).isoformat(), end.jid)) if end else None
    )
    return {"minion": name, "jobs": jobs, "next": cursor}


def known_minion(conn: Connection, name: str, functions: tuple[str, ...] | None) -> bool:
    r, j = job_returns.c, jobs_index.c
    query = (
        select(r.jid)
        .select_from(job_returns.join(jobs_index, j.jid == r.jid))
        .where(r.minion == name, *_scope(j.function, functions, conn.dialect.name))
        .limit(1)
    )
    return conn.execute(query).first() is not None


# ---------------------------------------------------------------------- states
def failing_states(
    conn: Connection, asked: StatesQuery, now: dt.datetime | None = None
) -> StatesPage:
    """The states that failed (or changed) in the window, busiest first: on the most
    minions, then in the most runs. Paged by position (an aggregate has no key to page
    by): the cursor holds the first page's time, and every page counts the runs that had
    returned by then, in the same window, so the pages neither repeat nor skip a state."""
    s = state_results.c
    dialect = conn.dialect.name
    offset = 0
    moment = now or dt.datetime.now(dt.timezone.utc)
    if asked.cursor:
        end_text, offset = _decode(asked.cursor, (str, int))
        moment = _time(end_text, asked.cursor)
    try:
        since = moment - dt.timedelta(hours=WINDOWS[asked.window])
    except OverflowError:
        raise QueryError(f"cursor {asked.cursor!r} is not one this listing handed out") from None
    where = [
        s.result == asked.result,
        s.start_time >= since,
        s.start_time <= moment,
        # The listing is of what had returned at its first page: a return stored between
        # two pages cannot reorder the ranking (the next page would repeat or skip states).
        s.returned_at <= moment,
        s.test_run.is_not(True),
    ]
    if asked.minion:
        where.append(_glob(s.minion, asked.minion, dialect))
    if asked.sls:
        where.append(_glob(s.sls, asked.sls, dialect))
    minions_n = func.count(func.distinct(s.minion)).label("minions")
    runs_n = func.count().label("runs")
    rows = conn.execute(
        select(s.state_key, func.max(s.state_id).label("state_id"),
               func.max(s.function).label("function"), func.max(s.name).label("name"),
               func.max(s.sls).label("sls"), minions_n, runs_n,
               func.min(s.start_time).label("first"), func.max(s.start_time).label("last"))
        .where(*where)
        .group_by(s.state_key)
        .order_by(minions_n.desc(), runs_n.desc(), s.state_key)
        .offset(offset)
        .limit(asked.limit + 1)
    ).all()  # fmt: skip
    page = rows[: asked.limit]
    comments = _latest_comments(conn, [row.state_key for row in page], where)
    states: list[FailingState] = [
        {
            "state_key": row.state_key,
            "state_id": row.state_id,
            "function": row.function,
            "name": row.name,
            "sls": row.sls,
            "minions": row.minions,
            "runs": row.runs,
            "first": _first_time(row.first).isoformat(),
            "last": _first_time(row.last).isoformat(),
            "comment": comments.get(row.state_key),
        }
        for row in page
    ]
    cursor = (
        _encode((moment.isoformat(), offset + asked.limit)) if len(rows) > asked.limit else None
    )
    return {
        "window": asked.window,
        "result": cast(Any, asked.result),
        "states": states,
        "next": cursor,
    }


def _first_time(value: Any) -> dt.datetime:
    """min()/max() of a time column: SQLite hands back its text, PostgreSQL a time."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromisoformat(str(value)).replace(tzinfo=dt.timezone.utc)


def _latest_comments(
    conn: Connection, keys: Sequence[str], where: Sequence[Any]
) -> dict[str, str | None]:
    s = state_results.c
    found: dict[str, str | None] = {}
    for key in keys:
        row = conn.execute(
            select(s.comment)
            .where(s.state_key == key, *where)
            .order_by(s.start_time.desc(), s.jid.desc())
            .limit(1)
        ).first()
        found[key] = row.comment if row is not None else None
    return found


def state_history(conn: Connection, state_id: object, asked: StateQuery) -> StateHistory:
    """A state's failed and changed runs across the fleet, newest first (one range of the
    (state_id, start_time, jid, minion) index), and when and where it failed."""
    name = text_arg("state_id", state_id)
    if not name:
        raise QueryError("state_id: give a state id (its __id__, as halite.states shows it)")
    s = state_results.c
    dialect = conn.dialect.name
    query = select(state_results).where(s.state_id == name)
    if asked.result:
        query = query.where(s.result == asked.result)
    if asked.minion:
        query = query.where(_glob(s.minion, asked.minion, dialect))
    if asked.cursor:
        when, jid, minion, key = _decode(asked.cursor, (str, str, str, str))
        after = _time(when, asked.cursor)
        query = query.where(
            or_(
                s.start_time < after,
                and_(
                    s.start_time == after,
                    tuple_(s.jid, s.minion, s.state_key) < tuple_(jid, minion, key),
                ),
            )
        )
    order = (s.start_time.desc(), s.jid.desc(), s.minion.desc(), s.state_key.desc())
    rows = conn.execute(query.order_by(*order).limit(asked.limit + 1)).all()
    page = rows[: asked.limit]
    # The result written into the statement, not bound: the planner then knows the partial
    # index of failed states (ix_state_results_failed) holds every row asked for.
    failed_only = s.result == literal(JobResult.FAILED.value, literal_execute=True)
    failing = (s.state_id == name, failed_only, s.test_run.is_not(True))
    if dialect == "postgresql":
        # A group per minion, read in the covering index's order: PostgreSQL's count of
        # distinct minions would sort every failed entry again.
        per_minion = (
            select(s.minion, func.count().label("runs"), func.min(s.start_time).label("first"),
                   func.max(s.start_time).label("last"))
            .where(*failing)
            .group_by(s.minion)
            .subquery()
        )  # fmt: skip
        totals = select(func.coalesce(func.sum(per_minion.c.runs), 0), func.count(),
                        func.min(per_minion.c.first), func.max(per_minion.c.last))  # fmt: skip
    else:
        # SQLite counts distinct values of the index's order as it reads them.
        totals = select(func.count(), func.count(func.distinct(s.minion)),
                        func.min(s.start_time), func.max(s.start_time)).where(*failing)  # fmt: skip
    failed = conn.execute(totals).one()
    runs: list[StateRunRow] = [
        {
            "jid": row.jid,
            "minion": row.minion,
            "state_key": row.state_key,
            "function": row.function,
            "name": row.name,
            "sls": row.sls,
            "result": cast(Any, row.result),
            "comment": row.comment,
            "start_time": row.start_time.isoformat(),
            "returned_at": row.returned_at.isoformat(),
            "test_run": row.test_run,
        }
        for row in page
    ]
    end = page[-1] if len(rows) > asked.limit else None
    cursor = (
        _encode(
            (
                end.start_time.astimezone(dt.timezone.utc).isoformat(),
                end.jid,
                end.minion,
                end.state_key,
            )
        )
        if end
        else None
    )
    return {
        "state_id": name,
        "failed": {
            "runs": int(failed[0]),
            "minions": failed[1],
            "first": _first_time(failed[2]).isoformat() if failed[2] is not None else None,
            "last": _first_time(failed[3]).isoformat() if failed[3] is not None else None,
        },
        "runs": runs,
        "next": cursor,
    }
