"""Listing jobs from the index: filters, counts and keyset pagination, all in SQL.

:func:`list_jobs` is the query behind ``salt-run halite.jobs``: newest first, filtered in
indexed SQL, one page at a time. A page ends with a cursor naming the last job shown;
the next page starts strictly after it in (start time, jid) order, so it continues exactly
where the last one ended even while new jobs arrive.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import gc
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    and_,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from halite_core import highstate, jids
from halite_core.active import effective_status
from halite_core.errors import HaliteError
from halite_core.store.schema import (
    PG_SEARCH_TEXT,
    engine_state,
    job_returns,
    job_search,
    job_search_keys,
    jobs_index,
)

DEFAULT_LIMIT = 50
MAX_TEXT = 1024
MAX_LIMIT = 500
STATUSES = ("running", "complete")


class QueryError(HaliteError, ValueError):
    """A listing argument that cannot be used; the message says which and why."""


class UnknownJob(QueryError):
    """No job with that jid in the index."""


@dataclass(frozen=True)
class JobFilter:
    """What to list; every field optional. Globs use ``*`` and ``?``, case-sensitive."""

    fun: str | None = None
    target: str | None = None
    user: str | None = None
    status: str | None = None
    minion: str | None = None
    search: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    include_system: bool = False
    master: str | None = None
    # The function globs the asking user may view (``None``: all); see permissions.py.
    functions: tuple[str, ...] | None = None


def encode_cursor(start_time: dt.datetime, jid: str) -> str:
    """A page's end, as a keyset cursor: a time and a key (a jid, an audit entry's id)."""
    text = f"{start_time.astimezone(dt.timezone.utc).isoformat()}|{jid}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        when, jid = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        moment = dt.datetime.fromisoformat(when)
        # Cursors are handed out in UTC; a forged offset must not reach the driver, which
        # cannot bind a time outside the years 1 to 9999 in UTC.
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.timezone.utc)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError) as exc:
        raise QueryError(f"cursor {cursor!r} is not one this listing handed out") from exc
    if moment.tzinfo is None:
        raise QueryError(f"cursor {cursor!r} is not one this listing handed out")
    return moment, jid


def _decode_jobs_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """A job listing's cursor ends in a jid: anything else is forged, and must not reach
    the database (PostgreSQL refuses a NUL in text with an error, not an empty page)."""
    moment, jid = decode_cursor(cursor)
    if not jids.is_jid(jid):
        raise QueryError(f"cursor {cursor!r} is not one this listing handed out")
    return moment, jid


def _glob(column: Any, pattern: str, dialect: str) -> ColumnElement[bool]:
    """A shell glob on a column: equality when there is no wildcard (an index lookup),
    GLOB on SQLite and an escaped LIKE elsewhere (both case-sensitive, both use an index
    for a fixed prefix)."""
    if "[" in pattern or "]" in pattern:
        raise QueryError(f"{pattern!r}: only the * and ? wildcards are supported")
    if "*" not in pattern and "?" not in pattern:
        return column == pattern
    if dialect == "sqlite":
        return column.op("GLOB")(pattern)
    like = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(like.replace("*", "%").replace("?", "_"), escape="\\")


def _limit(limit: object) -> int:
    try:
        if isinstance(limit, bool):  # int(True) is 1
            raise TypeError(limit)
        value = int(limit)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: limit=.inf
        raise QueryError(f"limit must be a number from 1 to {MAX_LIMIT}, not {limit!r}") from exc
    if not 1 <= value <= MAX_LIMIT:
        raise QueryError(f"limit must be a number from 1 to {MAX_LIMIT}, not {limit!r}")
    return value


# A glob with few matching values (``state.*``: state.apply, state.sls, ...) is listed as
# one newest-first index range per value, merged; beyond these bounds the glob is a filter.
GLOB_WALK = 256  # distinct values of the column looked at
GLOB_VALUES = 32  # matching values merged
GLOB_SMALL_RANGE = 2000  # jobs in a prefix's range few enough to read and sort
# Text search first looks among the newest jobs (cheap when the text is common), then
# asks the trigram index (cheap when it is rare): exact either way.
SEARCH_SCAN = 5000
GLOB_COLUMNS = {"fun": "function", "target": "target"}


@dataclass(frozen=True)
class Plan:
    """How a listing reads the index: ``values`` is (column, values) a glob was expanded
    to; ``search`` is ``like`` (a filter), ``scan`` (a filter on the newest
    ``SEARCH_SCAN`` candidates only) or ``fts`` (candidates from the trigram index)."""

    values: tuple[str, tuple[str, ...]] | None = None
    search: str = "like"


def list_jobs(
    conn: Connection,
    filters: JobFilter = JobFilter(),
    limit: object = DEFAULT_LIMIT,
    cursor: str | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """``{"jobs": [...], "next": cursor or None}``: one page, newest first."""
    size = _limit(limit)
    dialect = conn.dialect.name
    plan = Plan(values=_expand_glob(conn, filters))
    if filters.search and len(filters.search) >= 3:
        scan = replace(plan, search="scan")
        rows = conn.execute(listing_query(filters, size + 1, cursor, dialect, scan)).all()
        if len(rows) <= size:
            fts = replace(plan, search="fts")
            rows = conn.execute(listing_query(filters, size + 1, cursor, dialect, fts)).all()
    else:
        rows = conn.execute(listing_query(filters, size + 1, cursor, dialect, plan)).all()
    engines = {row.master_id: dict(row._mapping) for row in conn.execute(select(engine_state))}
    moment = now or dt.datetime.now(dt.timezone.utc)
    jobs = [_job(dict(row._mapping), engines, moment) for row in rows[:size]]
    last = rows[size - 1] if len(rows) > size else None
    return {"jobs": jobs, "next": encode_cursor(last.start_time, last.jid) if last else None}


def _expand_glob(conn: Connection, filters: JobFilter) -> tuple[str, tuple[str, ...]] | None:
    """The few distinct values a ``fun`` or ``target`` glob matches, found by walking the
    column's index one distinct value at a time (within the glob's fixed prefix on
    SQLite); ``None`` when there is no glob to expand or it matches too many values."""
    if filters.minion is not None:
        return None  # the minion's own index drives that listing
    for name, column in GLOB_COLUMNS.items():
        pattern = getattr(filters, name)
        if pattern and ("*" in pattern or "?" in pattern):
            return _expand(conn, column, pattern)
    return None


def _expand(conn: Connection, column: str, pattern: str) -> tuple[str, tuple[str, ...]] | None:
    _glob(jobs_index.c[column], pattern, conn.dialect.name)  # rejects unsupported patterns
    prefix = pattern[: min(i for i in (pattern.find("*"), pattern.find("?")) if i >= 0)]
    bounds = ""
    params: dict[str, Any] = {"cap": GLOB_WALK, "pattern": pattern, "lo": ""}
    if prefix and conn.dialect.name == "sqlite" and ord(prefix[-1]) not in (0xD7FF, 0x10FFFF):
        # SQLite compares text byte-wise, so the prefix is a range of the index.
        bounds = f" AND {column} < :hi"
        params.update(lo=prefix, hi=prefix[:-1] + chr(ord(prefix[-1]) + 1))
        in_range = text(
            f"SELECT count(*) FROM (SELECT 1 FROM jobs_index WHERE {column} >= :lo{bounds}"
            " LIMIT :small)"
        )
        if conn.execute(in_range, {**params, "small": GLOB_SMALL_RANGE}).scalar_one() < (
            GLOB_SMALL_RANGE
        ):
            return None  # few jobs in the prefix's range: reading and sorting them is cheaper
    match = "v GLOB :pattern" if conn.dialect.name == "sqlite" else "v LIKE :like ESCAPE '\\'"
    if conn.dialect.name != "sqlite":
        like = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["like"] = like.replace("*", "%").replace("?", "_")
    walk = text(
        "WITH RECURSIVE walk(v, n) AS ("
        f" SELECT (SELECT min({column}) FROM jobs_index WHERE {column} >= :lo{bounds}), 1"
        " UNION ALL"
        f" SELECT (SELECT min({column}) FROM jobs_index WHERE {column} > walk.v{bounds}),"
        " n + 1 FROM walk WHERE walk.v IS NOT NULL AND n < :cap)"
        f" SELECT v, n, CASE WHEN {match} THEN 1 ELSE 0 END FROM walk WHERE v IS NOT NULL"
    )
    seen = conn.execute(walk, params).all()
    if len(seen) >= GLOB_WALK:
        return None
    values = tuple(v for v, _, hit in seen if hit)
    if len(values) > GLOB_VALUES:
        return None
    return column, values


def listing_query(
    filters: JobFilter,
    limit: int,
    cursor: str | None = None,
    dialect: str = "sqlite",
    plan: Plan = Plan(),
) -> Select[Any]:
    """The SQL of a listing page (``limit`` rows after ``cursor``), newest first."""
    for name in ("fun", "target", "user", "minion", "search", "master"):
        value = getattr(filters, name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            raise QueryError(
                f"{name} must be text of at most {MAX_TEXT} characters, not {_preview(value)}"
            )
        if value is not None and "\x00" in value:  # SQLite would end the text there
            raise QueryError(f"{name} must not contain a NUL character")
    if filters.status is not None and filters.status not in STATUSES:
        raise QueryError(f"status must be one of {', '.join(STATUSES)}, not {filters.status!r}")
    j = jobs_index.c
    if filters.minion is not None:
        # Newest jobs of a minion: one range of job_returns' (minion, start_time) index.
        r = job_returns.c
        order_start, order_jid = r.start_time, r.jid
        query = (
            select(jobs_index)
            .select_from(job_returns.join(jobs_index, j.jid == r.jid))
            .where(r.minion == filters.minion)
        )
    else:
        order_start, order_jid = j.start_time, j.jid
        query = select(jobs_index)
    query = query.where(j.status != "new")  # a reserved jid is not a job yet
    if not filters.include_system:
        query = query.where(j.system.is_(False))
    expanded = plan.values[0] if plan.values else None
    if filters.fun and expanded != "function":
        query = query.where(_glob(j.function, filters.fun, dialect))
    if filters.target and expanded != "target":
        query = query.where(_glob(j.target, filters.target, dialect))
    if filters.user:
        query = query.where(j.user == filters.user)
    if filters.master:
        query = query.where(j.master_id == filters.master)
    query = query.where(*_scope(j.function, filters.functions, dialect))
    if filters.status is not None:
        query = query.where(j.status == filters.status)
    if filters.search and plan.search != "scan":
        query = query.where(_search(j, filters.search, dialect))
        if plan.search == "fts":
            query = query.where(j.jid.in_(_fts_candidates(filters.search, dialect)))
    if filters.start is not None:
        query = query.where(order_start >= _aware(filters.start, "start"))
    if filters.end is not None:
        query = query.where(order_start < _aware(filters.end, "end"))
    if cursor:
        after_start, after_jid = _decode_jobs_cursor(cursor)
        query = query.where(
            or_(
                order_start < after_start,
                and_(order_start == after_start, order_jid < after_jid),
            )
        )
    newest = (order_start.desc(), order_jid.desc())
    inner_limit = SEARCH_SCAN if filters.search and plan.search == "scan" else limit
    if plan.values:
        column, values = plan.values
        if not values:
            query = query.where(false())
        elif len(values) == 1:
            query = query.where(j[column] == values[0])
        else:
            parts = [
                select(query.where(j[column] == value).order_by(*newest).limit(inner_limit)
                       .subquery())
                for value in values
            ]  # fmt: skip
            merged = union_all(*parts).subquery()
            query = select(merged)
            newest = (merged.c.start_time.desc(), merged.c.jid.desc())
    query = query.order_by(*newest).limit(inner_limit)
    if filters.search and plan.search == "scan":
        newest_jobs = query.subquery()
        query = (
            select(newest_jobs)
            .where(_search(newest_jobs.c, filters.search, dialect))
            .order_by(newest_jobs.c.start_time.desc(), newest_jobs.c.jid.desc())
            .limit(limit)
        )
    return query


def _scope(
    column: Any, functions: tuple[str, ...] | None, dialect: str
) -> tuple[ColumnElement[bool], ...]:
    """The conditions that keep a listing to the functions a user may view."""
    if functions is None:
        return ()
    if not functions:
        return (false(),)
    return (or_(*(_glob(column, pattern, dialect) for pattern in functions)),)


def _search(columns: Any, needle: str, dialect: str) -> ColumnElement[bool]:
    """The jid starting with the text, or the text anywhere in the function, target or
    user, ignoring ASCII case."""
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    cols = (columns.function, columns.target, columns.user)
    if dialect == "sqlite":  # SQLite's LIKE already ignores ASCII case
        anywhere = [col.like(pattern, escape="\\") for col in cols]
    else:
        anywhere = [col.ilike(pattern, escape="\\") for col in cols]
    return or_(columns.jid.like(f"{escaped}%", escape="\\"), *anywhere)


def _fts_candidates(needle: str, dialect: str) -> Any:
    """Jobs the text may match: from the trigram index of function, target and user (a
    superset of the LIKE match: SQLite's index also folds non-ASCII case, PostgreSQL's
    matches the three fields as one text), and the jids in the text's prefix range (jids
    are digits, which sort the same in every collation). The LIKE then decides."""
    if dialect == "sqlite":
        phrase = '"' + needle.replace('"', '""') + '"'
        indexed = (
            select(job_search_keys.c.jid)
            .select_from(
                job_search_keys.join(job_search, job_search.c.rowid == job_search_keys.c.id)
            )
            .where(literal_column("job_search").op("MATCH")(phrase))
        )
    else:
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        indexed = select(jobs_index.c.jid).where(
            literal_column(PG_SEARCH_TEXT).ilike(f"%{escaped}%", escape="\\")
        )
    by_jid = select(jobs_index.c.jid).where(jobs_index.c.jid >= needle)
    if ord(needle[-1]) not in (0xD7FF, 0x10FFFF):
        by_jid = by_jid.where(jobs_index.c.jid < needle[:-1] + chr(ord(needle[-1]) + 1))
    return union_all(indexed, by_jid)


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}... ({len(text)} characters)"


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise QueryError(f"{name} must be a date and time with a timezone, not {value!r}")
    return value


def _job(
    row: Mapping[str, Any], engines: Mapping[str | None, Mapping[str, Any]], now: dt.datetime
) -> dict[str, Any]:
    return {
        "jid": row["jid"],
        "function": row["function"],
        "target": row["target"],
        "target_type": row["target_type"],
        "user": row["user"],
        "start_time": row["start_time"].isoformat(),
        "end_time": row["end_time"].isoformat() if row["end_time"] else None,
        "status": effective_status(row["status"], engines.get(row["master_id"]), now),
        "minions": {
            "targeted": row["minions_targeted"],
            "returned": row["minions_returned"],
            "failed": row["minions_failed"],
        },
        "system": row["system"],
        "master_id": row["master_id"],
    }


MINION_STATES = {
    "pending": "running",
    "returned": "returned",
    "no_return": "no_return",
    "killed": "killed",
}


_gc_lock = threading.Lock()
_gc_pause = {"depth": 0, "was_enabled": False}


@contextlib.contextmanager
def _gc_paused() -> Any:
    """Pause the cyclic garbage collector while a large acyclic answer is built: a
    highstate on 1,000 minions is ~100,000 new dicts, and the collections they trigger
    cost more than a third of the time (the answer holds no cycles to collect). Nested
    and concurrent pauses restore the collector once, when the last one ends."""
    with _gc_lock:
        if _gc_pause["depth"] == 0:
            _gc_pause["was_enabled"] = gc.isenabled()
            gc.disable()
        _gc_pause["depth"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause["depth"] -= 1
            if _gc_pause["depth"] == 0 and _gc_pause["was_enabled"]:
                gc.enable()


def job_detail(conn: Connection, jid: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """One job: its metadata and one entry per targeted minion, failures first; for
    ``state.*`` jobs each return parsed into states (see :func:`highstate.parse`)."""
    with _gc_paused():
        return _job_detail(conn, jid, now)


def _job_detail(conn: Connection, jid: str, now: dt.datetime | None) -> dict[str, Any]:
    if not jids.is_jid(jid):
        raise QueryError(f"{jid!r} is not a Salt job id (20 digits, optional _pid)")
    row = conn.execute(select(jobs_index).where(jobs_index.c.jid == jid)).first()
    if row is None or row.status == "new":
        raise UnknownJob(f"no job with jid {jid} in the index")
    engines = {r.master_id: dict(r._mapping) for r in conn.execute(select(engine_state))}
    job = _job(dict(row._mapping), engines, now or dt.datetime.now(dt.timezone.utc))
    job["arguments"] = row.arguments
    job["kwargs"] = row.kwargs
    r = job_returns.c
    returns = conn.execute(
        select(
            r.minion, r.state, r.success, r.retcode, r.out, r.returned_at,
            r.return_value, r.return_truncated,
        ).where(r.jid == jid)
    ).all()  # fmt: skip
    is_state_job = highstate.is_state_function(row.function)
    minions = []
    totals = {"states": 0, "passed": 0, "failed": 0, "changed": 0, "duration_ms": 0.0}
    for ret in returns:
        entry: dict[str, Any] = {
            "minion": ret.minion,
            "state": MINION_STATES.get(ret.state, ret.state),
            "success": ret.success,
            "retcode": ret.retcode,
            "returned_at": ret.returned_at.isoformat() if ret.returned_at else None,
            "return": ret.return_value,
            "truncated": ret.return_truncated,
            "failed": bool(
                ret.state in ("no_return", "killed")
                or ret.success is False
                or (ret.retcode is not None and ret.retcode != 0)
            ),
        }
        if is_state_job and ret.state == "returned":
            value, _, _ = highstate.runner_payload(row.function, ret.return_value)
            parsed = highstate.parse(value, succeeded=not entry["failed"])
            entry["highstate"] = parsed
            if parsed["kind"] == "states":
                counts = parsed["counts"]
                for key, name in (("states", "total"), ("passed", "passed"),
                                  ("failed", "failed"), ("changed", "changed"),
                                  ("duration_ms", "duration_ms")):  # fmt: skip
                    totals[key] += counts[name]
                entry["failed"] = entry["failed"] or bool(parsed["failing"])
            elif parsed["kind"] in ("render_error", "already_running"):
                entry["failed"] = True
        minions.append(entry)
    # What a person looks at first: minions that failed, then the rest, each by name.
    minions.sort(key=lambda m: (not m["failed"], m["minion"]))
    job["minion_results"] = minions
    if is_state_job:
        totals["duration_ms"] = round(totals["duration_ms"], 3)
        job["states"] = totals
    return job


WINDOWS = {"1h": 1, "4h": 4, "24h": 24, "7d": 168}
MAX_BARS = 2000


def _hour_bucket(column: Any, dialect: str) -> Any:
    if dialect == "postgresql":
        return func.to_char(
            func.date_trunc("hour", func.timezone("UTC", column)), 'YYYY-MM-DD"T"HH24'
        )
    return func.strftime("%Y-%m-%dT%H", column)


def activity(
    conn: Connection,
    hours: object = 24,
    now: dt.datetime | None = None,
    functions: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Jobs started per hour over the last ``hours`` hours (the current, partial hour
    included, oldest first, empty hours as 0), and how many jobs are running now."""
    try:
        if isinstance(hours, bool):  # int(True) is 1
            raise TypeError(hours)
        span = int(hours)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: hours=.inf
        raise QueryError(f"hours must be a number from 1 to 168, not {hours!r}") from exc
    if not 1 <= span <= 168:
        raise QueryError(f"hours must be a number from 1 to 168, not {hours!r}")
    moment = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    first = moment.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=span - 1)
    j = jobs_index.c
    bucket = _hour_bucket(j.start_time, conn.dialect.name).label("hour")
    counted: dict[str, int] = dict(
        conn.execute(
            select(bucket, func.count())
            .where(j.start_time >= first, j.status != "new", j.system.is_(False))
            .where(*_scope(j.function, functions, conn.dialect.name))
            .group_by(bucket)
        ).all()
    )
    running = conn.scalar(
        select(func.count())
        .where(j.status == "running", j.system.is_(False))
        .where(*_scope(j.function, functions, conn.dialect.name))
    )
    buckets = []
    for n in range(span):
        hour = first + dt.timedelta(hours=n)
        buckets.append(
            {"hour_start": hour.isoformat(), "count": counted.get(f"{hour:%Y-%m-%dT%H}", 0)}
        )
    return {"hours": buckets, "total": sum(b["count"] for b in buckets), "running": running}


def timeline(
    conn: Connection,
    window: object = "24h",
    group_by: object = "function",
    now: dt.datetime | None = None,
    functions: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Jobs of the last ``window`` grouped by function or user, busiest row first; each
    job a bar from its start to its end (or now) with a status a chart can colour:
    ``running``, ``failed``, ``changed`` (a state changed something) or ``pass``."""
    if not isinstance(window, str) or window not in WINDOWS:  # a list is not hashable
        raise QueryError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    if group_by not in ("function", "user"):
        raise QueryError(f"group_by must be function or user, not {group_by!r}")
    moment = now or dt.datetime.now(dt.timezone.utc)
    since = moment - dt.timedelta(hours=WINDOWS[str(window)])
    j, r = jobs_index.c, job_returns.c
    changed = (
        select(func.count())
        .where(r.jid == j.jid, r.states_changed > 0)
        .scalar_subquery()
        .label("changed")
    )
    rows = conn.execute(
        select(
            j.jid,
            j.function,
            j.user,
            j.target,
            j.start_time,
            j.end_time,
            j.status,
            j.minions_targeted,
            j.minions_failed,
            changed,
        )  # fmt: skip
        .where(j.start_time >= since, j.status != "new", j.system.is_(False))
        .where(*_scope(j.function, functions, conn.dialect.name))
        .order_by(j.start_time.desc(), j.jid.desc())
        .limit(MAX_BARS + 1)
    ).all()
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows[:MAX_BARS]:
        key = (row.function if group_by == "function" else row.user) or "(unknown)"
        status = (
            "running" if row.status == "running"
            else "failed" if row.minions_failed
            else "changed" if row.changed
            else "pass"
        )  # fmt: skip
        groups.setdefault(key, []).append(
            {
                "jid": row.jid,
                "function": row.function,
                "user": row.user,
                "target": row.target,
                "start": row.start_time.isoformat(),
                "end": (row.end_time or moment).isoformat(),
                "status": status,
                "minions": row.minions_targeted,
                "failed_minions": row.minions_failed,
            }
        )
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return {
        "window": window,
        "group_by": group_by,
        "rows": [{"key": key, "bars": bars} for key, bars in ordered],
        "truncated": len(rows) > MAX_BARS,
    }
