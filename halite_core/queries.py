"""Listing jobs from the index: filters, counts and keyset pagination, all in SQL.

:func:`list_jobs` is the query behind ``salt-run halite.jobs``: newest first, filtered in
indexed SQL, one page at a time. A page ends with a cursor naming the last job shown;
the next page starts strictly after it in (start time, jid) order, so it continues exactly
where the last one ended even while new jobs arrive.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

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
from halite_core.api import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_TEXT,
    STATUSES,
    WINDOWS,
    Activity,
    ActivityQuery,
    Bar,
    HourCount,
    HourResults,
    Job,
    JobDetail,
    JobFilter,
    MinionResult,
    Page,
    QueryError,
    StateTotals,
    Timeline,
    TimelineQuery,
    UnknownJob,
    arguments_preview,
    count_arg,
)
from halite_core.states import JobStatus, MinionState, minion_failed
from halite_core.store.schema import (
    PG_SEARCH_TEXT,
    engine_state,
    job_returns,
    job_search,
    job_search_keys,
    jobs_index,
)

# The arguments and answers are defined in halite_core.api; these names stay importable
# from here for the callers of the queries (audit, kill, the benchmarks).
__all__ = [
    "DEFAULT_LIMIT", "MAX_LIMIT", "MAX_TEXT", "STATUSES", "JobFilter", "QueryError",
    "UnknownJob", "activity", "job_detail", "list_jobs", "listing_query", "timeline",
]  # fmt: skip

# The status of a jid reserved by older halites, before its job was published: not a job.
RESERVED = "new"
EVERY_JOB = JobFilter()


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
    return count_arg("limit", limit, MAX_LIMIT)


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
    filters: JobFilter = EVERY_JOB,
    limit: object = None,
    cursor: str | None = None,
    now: dt.datetime | None = None,
    functions: tuple[str, ...] | None = None,
) -> Page:
    """One page, newest first: ``filters.limit`` jobs after ``filters.cursor`` (``limit``
    and ``cursor``, when given, page through the same filter instead). ``functions``: the
    function globs the asking user may view (``None``: all); see permissions.py."""
    size = filters.limit if limit is None else _limit(limit)
    after = filters.cursor if cursor is None else cursor
    dialect = conn.dialect.name
    plan = Plan(values=_expand_glob(conn, filters))

    def page(how: Plan) -> list[Any]:
        query = listing_query(filters, size + 1, after, dialect, how, functions=functions)
        return list(conn.execute(query).all())

    if filters.search and len(filters.search) >= 3:
        rows = page(replace(plan, search="scan"))
        if len(rows) <= size:
            rows = page(replace(plan, search="fts"))
    else:
        rows = page(plan)
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


# PostgreSQL partitions the large tables by jid, and a job's start time is its jid's time
# (in UTC, or in the master's local time: jid_utc). A bound on the start time therefore
# bounds the jid too, within this margin, and the jid bound lets the planner leave out the
# partitions of other days: the start-time condition stays, and decides which jobs are in.
JID_MARGIN = dt.timedelta(days=1)


def jid_bounds(
    column: Any, dialect: str, after: dt.datetime | None = None, before: dt.datetime | None = None
) -> list[ColumnElement[bool]]:
    """Conditions on a jid ``column`` implied by start times from ``after`` and before
    ``before``, on PostgreSQL (none elsewhere: SQLite's tables are not partitioned, and a
    second range there could turn its planner from the start-time index)."""
    if dialect != "postgresql":
        return []
    found: list[ColumnElement[bool]] = []
    for moment, later in ((after, False), (before, True)):
        if moment is None:
            continue
        try:
            edge = moment + JID_MARGIN if later else moment - JID_MARGIN
        except OverflowError:
            continue  # a bound at the calendar's end bounds nothing
        utc = edge.astimezone(dt.timezone.utc)
        # The year padded by hand: strftime writes the year 999 as "999", not "0999".
        text = f"{utc.year:04d}{utc:%m%d%H%M%S%f}"
        found.append(column < text if later else column >= text)
    return found


def listing_query(
    filters: JobFilter,
    limit: int,
    cursor: str | None = None,
    dialect: str = "sqlite",
    plan: Plan = Plan(),
    functions: tuple[str, ...] | None = None,
) -> Select[Any]:
    """The SQL of a listing page (``limit`` rows after ``cursor``), newest first; the
    filter's values were checked by :class:`~halite_core.api.JobFilter`."""
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
    query = query.where(j.status != RESERVED)
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
    query = query.where(*_scope(j.function, functions, dialect))
    if filters.status is not None:
        query = query.where(j.status == filters.status)
    if filters.result is not None:
        query = query.where(j.result == filters.result)
    if filters.search and plan.search != "scan":
        query = query.where(_search(j, filters.search, dialect))
        if plan.search == "fts":
            query = query.where(j.jid.in_(_fts_candidates(filters.search, dialect)))
    if filters.start is not None:
        query = query.where(order_start >= filters.start)
    if filters.end is not None:
        query = query.where(order_start < filters.end)
    # The rows ordered by (a minion's returns, or the jobs), and the jobs joined to them.
    for jid in [order_jid] if order_jid is j.jid else [order_jid, j.jid]:
        query = query.where(*jid_bounds(jid, dialect, filters.start, filters.end))
    if cursor:
        after_start, after_jid = _decode_jobs_cursor(cursor)
        query = query.where(
            or_(
                order_start < after_start,
                and_(order_start == after_start, order_jid < after_jid),
            ),
            *jid_bounds(order_jid, dialect, before=after_start),
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


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise QueryError(f"{name} must be a date and time with a timezone, not {value!r}")
    return value


def _job(
    row: Mapping[str, Any], engines: Mapping[str | None, Mapping[str, Any]], now: dt.datetime
) -> Job:
    status = effective_status(row["status"], engines.get(row["master_id"]), now)
    return {
        "jid": row["jid"],
        "function": row["function"],
        "target": row["target"],
        "target_type": row["target_type"],
        "user": row["user"],
        "start_time": row["start_time"].isoformat(),
        "end_time": row["end_time"].isoformat() if row["end_time"] else None,
        "status": cast(Any, status),  # one of JobStatus's values
        "result": cast(Any, row["result"]),  # one of JobResult's values
        "minions": {
            "targeted": row["minions_targeted"],
            "returned": row["minions_returned"],
            "failed": row["minions_failed"],
            "changed": row["minions_changed"],
        },
        "system": row["system"],
        "master_id": row["master_id"],
        "arguments_preview": arguments_preview(row.get("arguments"), row.get("kwargs")),
    }


# A minion's state as the detail shows it: one still pending is running the job.
MINION_STATES = {
    MinionState.PENDING.value: JobStatus.RUNNING.value,
    MinionState.RETURNED.value: MinionState.RETURNED.value,
    MinionState.NO_RETURN.value: MinionState.NO_RETURN.value,
    MinionState.KILLED.value: MinionState.KILLED.value,
}


MAX_RERUNS_SHOWN = 20  # a job's re-runs its detail lists, newest first


def job_detail(conn: Connection, jid: str, now: dt.datetime | None = None) -> JobDetail:
    """One job: its metadata and one entry per targeted minion, failures first; for
    ``state.*`` jobs each return parsed into states (see :func:`highstate.parse`). A
    minion failed by :func:`~halite_core.states.minion_failed`, the rule the job's
    ``minions.failed`` count is recounted with."""
    if not jids.is_jid(jid):
        raise QueryError(f"{jid!r} is not a Salt job id (20 digits, optional _pid)")
    row = conn.execute(select(jobs_index).where(jobs_index.c.jid == jid)).first()
    if row is None or row.status == RESERVED:
        raise UnknownJob(f"no job with jid {jid} in the index")
    engines = {r.master_id: dict(r._mapping) for r in conn.execute(select(engine_state))}
    job = _job(dict(row._mapping), engines, now or dt.datetime.now(dt.timezone.utc))
    r = job_returns.c
    returns = conn.execute(
        select(
            r.minion, r.state, r.success, r.retcode, r.out, r.returned_at,
            r.return_value, r.return_truncated, r.states_failed,
        ).where(r.jid == jid)
    ).all()  # fmt: skip
    is_state_job = highstate.is_state_function(row.function)
    minions: list[MinionResult] = []
    totals: StateTotals = {"states": 0, "passed": 0, "failed": 0, "changed": 0,
                           "duration_ms": 0.0}  # fmt: skip
    for ret in returns:
        failed = minion_failed(ret.state, ret.success, ret.retcode, ret.states_failed)
        entry: MinionResult = {
            "minion": ret.minion,
            "state": cast(Any, MINION_STATES.get(ret.state, ret.state)),
            "success": ret.success,
            "retcode": ret.retcode,
            "returned_at": ret.returned_at.isoformat() if ret.returned_at else None,
            "return": ret.return_value,
            "truncated": ret.return_truncated,
            "failed": failed,
        }
        if is_state_job and ret.state == MinionState.RETURNED:
            value, _, _ = highstate.runner_payload(row.function, ret.return_value)
            parsed = highstate.parse(value, succeeded=not failed)
            entry["highstate"] = parsed
            if parsed["kind"] == "states":
                counts = parsed["counts"]
                totals["states"] += counts["total"]
                totals["passed"] += counts["passed"]
                totals["failed"] += counts["failed"]
                totals["changed"] += counts["changed"]
                totals["duration_ms"] += counts["duration_ms"]
        minions.append(entry)
    # What a person looks at first: minions that failed, then the rest, each by name.
    minions.sort(key=lambda m: (not m["failed"], m["minion"]))
    j = jobs_index.c
    reruns = conn.scalars(
        select(j.jid)
        .where(j.rerun_of == jid, j.status != RESERVED)
        .order_by(j.jid.desc())
        .limit(MAX_RERUNS_SHOWN + 1)
    ).all()
    detail: JobDetail = {
        **job,
        "arguments": row.arguments,
        "kwargs": row.kwargs,
        "minion_results": minions,
        "rerun_of": row.rerun_of,
        "reruns": list(reruns[:MAX_RERUNS_SHOWN]),
        "reruns_more": len(reruns) > MAX_RERUNS_SHOWN,
    }
    if is_state_job:
        totals["duration_ms"] = round(totals["duration_ms"], 3)
        detail["states"] = totals
    return detail


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
) -> Activity:
    """Jobs started per hour over the last ``hours`` hours (the current, partial hour
    included, oldest first, empty hours as 0), each hour's jobs by their result (running,
    failed, changed, pass: the listing's ``result``), and how many jobs are running now."""
    span = ActivityQuery.parse({"hours": hours}).hours
    moment = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    first = moment.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=span - 1)
    j = jobs_index.c
    bucket = _hour_bucket(j.start_time, conn.dialect.name).label("hour")
    counted: dict[str, dict[str, int]] = {}
    for hour, result, count in conn.execute(
        select(bucket, j.result, func.count())
        .where(j.start_time >= first, j.status != RESERVED, j.system.is_(False))
        .where(*jid_bounds(j.jid, conn.dialect.name, first))
        .where(*_scope(j.function, functions, conn.dialect.name))
        .group_by(bucket, j.result)
    ).all():
        counted.setdefault(hour, {})[result] = count
    running = conn.execute(
        select(func.count())
        .where(j.status == JobStatus.RUNNING.value, j.system.is_(False))
        .where(*_scope(j.function, functions, conn.dialect.name))
    ).scalar_one()
    buckets: list[HourCount] = []
    for n in range(span):
        hour = first + dt.timedelta(hours=n)
        found = counted.get(f"{hour:%Y-%m-%dT%H}", {})
        results: HourResults = {
            "running": found.get("running", 0),
            "failed": found.get("failed", 0),
            "changed": found.get("changed", 0),
            "pass": found.get("pass", 0),
        }
        # The total counts every job of the hour, whatever its result column says.
        buckets.append(
            {"hour_start": hour.isoformat(), "count": sum(found.values()), "results": results}
        )
    return {"hours": buckets, "total": sum(b["count"] for b in buckets), "running": running}


def timeline(
    conn: Connection,
    window: object = "24h",
    group_by: object = "function",
    now: dt.datetime | None = None,
    functions: tuple[str, ...] | None = None,
) -> Timeline:
    """Jobs of the last ``window`` grouped by function or user, busiest row first; each
    job a bar from its start to its end (or now) with a status a chart can colour:
    ``running``, ``failed``, ``changed`` (a state changed something) or ``pass``."""
    asked = TimelineQuery.parse({"window": window, "group_by": group_by})
    moment = now or dt.datetime.now(dt.timezone.utc)
    since = moment - dt.timedelta(hours=WINDOWS[asked.window])
    j, r = jobs_index.c, job_returns.c
    changed = (
        select(func.count())
        .where(r.jid == j.jid, r.states_changed > 0)
        .where(*jid_bounds(r.jid, conn.dialect.name, since))
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
        .where(j.start_time >= since, j.status != RESERVED, j.system.is_(False))
        .where(*jid_bounds(j.jid, conn.dialect.name, since))
        .where(*_scope(j.function, functions, conn.dialect.name))
        .order_by(j.start_time.desc(), j.jid.desc())
        .limit(MAX_BARS + 1)
    ).all()
    groups: dict[str, list[Bar]] = {}
    for row in rows[:MAX_BARS]:
        key = (row.function if asked.group_by == "function" else row.user) or "(unknown)"
        status = (
            "running" if row.status == JobStatus.RUNNING
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
                "status": cast(Any, status),
                "minions": row.minions_targeted,
                "failed_minions": row.minions_failed,
            }
        )
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return {
        "window": asked.window,
        "group_by": asked.group_by,
        "rows": [{"key": key, "bars": bars} for key, bars in ordered],
        "truncated": len(rows) > MAX_BARS,
    }
