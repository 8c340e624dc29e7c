"""The fleet's tables, kept with every batch of returns: ``state_results`` (the states of
each state run that failed or changed something) and ``minion_status`` (each minion's
latest job and latest real state run). Both follow what ``job_returns`` holds, so they
stay exact whatever order returns, duplicates, settles and kills arrive in:

- a state run's rows belong to the return job_returns keeps for (jid, minion): rows of a
  return that lost to an earlier one are never written, and those of a return replaced
  by an earlier-accepted one are removed;
- a minion's row moves forward only to a later job (by start time, then jid), and takes
  its values from the stored return; retention refreshes the minions whose latest jobs it
  removed from what is left (:func:`refresh_minions`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects import sqlite

from halite_core import highstate
from halite_core.states import RETURNED, minion_failed
from halite_core.store.db import Database, Stage, copy_new_rows, run_staged
from halite_core.store.ops import ReturnRow
from halite_core.store.schema import UTCDateTime, sqlite_text, state_results

log = logging.getLogger(__name__)

# A state run's result as the fleet views show it, from a job_returns row ``r``.
RUN_RESULT = (
    "CASE WHEN r.success IS FALSE OR (r.retcode IS NOT NULL AND r.retcode <> 0)"
    " OR r.states_failed > 0 THEN 'failed' WHEN r.states_changed > 0 THEN 'changed'"
    " ELSE 'pass' END"
)


def _later(col: str) -> str:
    """An upsert's condition: the batch's job (``excluded``) is the minion's ``col`` job
    or a later one (by start time, then jid)."""
    old, new = f"minion_status.{col}", f"excluded.{col}"
    return (
        f"{new}_jid IS NOT NULL AND ({old}_start IS NULL OR {old}_start < {new}_start"
        f" OR ({old}_start = {new}_start AND {old}_jid <= {new}_jid))"
    )


_LAST = ("last_jid", "last_function", "last_start")
_RUN = ("state_jid", "state_function", "state_start", "states_total", "states_passed",
        "states_failed", "states_changed", "state_result", "healthy")  # fmt: skip
MINION_PARAMETERS = ("minion", *_LAST, *_RUN)
# One statement per minion of a batch: its row made if it is new, its latest job and its
# latest real state run each moved forward only (every value on the right is the row's
# old one, as in any UPDATE). A minion without a job or run in the batch has NULLs there.
_MINION_SET = " ON CONFLICT (minion) DO UPDATE SET " + ", ".join(
    f"{name} = CASE WHEN {_later(cols[0][:-4])} THEN excluded.{name} ELSE minion_status.{name} END"
    for cols in (_LAST, _RUN)
    for name in cols
)
UPSERT_MINION = text(
    f"INSERT INTO minion_status ({', '.join(MINION_PARAMETERS)}) VALUES"
    f" ({', '.join(':' + name for name in MINION_PARAMETERS[:-1])}, coalesce(:healthy, 1))"
    + _MINION_SET
).bindparams(
    bindparam("last_start", type_=UTCDateTime()), bindparam("state_start", type_=UTCDateTime())
)
# PostgreSQL: the same for a batch's minions in one statement (each minion once), staged
# (halite_core.store.db.Stage): a statement per minion is a message each way per minion,
# and while Salt's workers keep the cores busy each waits for the server to be scheduled.
_MINION_TYPES = {"last_start": "timestamptz", "state_start": "timestamptz",
                 "states_total": "int4", "states_passed": "int4", "states_failed": "int4",
                 "states_changed": "int4", "healthy": "int4"}  # fmt: skip
MINIONS_STAGE = Stage(
    "halite_stage_minions",
    tuple((name, _MINION_TYPES.get(name, "text")) for name in MINION_PARAMETERS),
)
UPSERT_MINIONS_POSTGRESQL = MINIONS_STAGE.statement(
    f"INSERT INTO minion_status ({', '.join(MINION_PARAMETERS)}) SELECT "
    + ", ".join(f"k.{name}" for name in MINION_PARAMETERS[:-1])
    + ", coalesce(k.healthy, 1) FROM k"
    + _MINION_SET
)


MASTER_JOBS = ("runner.", "wheel.")
# The same in SQL, for the refresh from the history (and revision 0007's frozen copy).
MINION_JOB = (
    "coalesce(r.function, '') NOT LIKE 'runner.%' AND coalesce(r.function, '') NOT LIKE 'wheel.%'"
)


# The returns of a partition about to be dropped (jids :lo to :hi), left out of a refresh.
OUTSIDE_RANGE = " AND NOT (r.jid >= :lo AND r.jid < :hi)"


def refresh_minions_sql(minions: str, where: str = "", outside: str = "") -> str:
    """Set the rows of the minions ``minions`` (a subquery), those also matching ``where``,
    from their whole history in job_returns (but the returns ``outside`` leaves out): for
    retention, which may remove a minion's latest job, and for a state run replaced by a
    return that is none."""
    latest = (
        "FROM job_returns r WHERE r.minion = minion_status.minion AND r.state = 'returned'"
        f" AND {MINION_JOB}{outside} {{more}} ORDER BY r.start_time DESC, r.jid DESC LIMIT 1"
    )
    real_run = "AND r.states_total IS NOT NULL AND r.test_run IS NOT TRUE"
    not_system = "AND NOT EXISTS (SELECT 1 FROM jobs_index j WHERE j.jid = r.jid AND j.system)"
    return (
        "UPDATE minion_status SET (last_jid, last_function, last_start) ="
        f" (SELECT r.jid, r.function, r.start_time {latest.format(more=not_system)}),"
        " (state_jid, state_function, state_start, states_total, states_passed,"
        " states_failed, states_changed, state_result) ="
        " (SELECT r.jid, r.function, r.start_time, r.states_total, r.states_passed,"
        f" r.states_failed, r.states_changed, {RUN_RESULT} {latest.format(more=real_run)})"
        f" WHERE minion IN ({minions}){where}"
    )


# A minion whose latest run was this job's, where the return kept is no state run (a render
# error accepted earlier won over it): its latest run is the one before.
RUN_GONE = text(
    refresh_minions_sql(
        ":minion",
        " AND state_jid = :jid AND NOT EXISTS (SELECT 1 FROM job_returns r WHERE r.jid = :jid"
        " AND r.minion = :minion AND r.states_total IS NOT NULL AND r.test_run IS NOT TRUE)",
    )
)
HEALTHY = text(
    "UPDATE minion_status SET healthy = CASE WHEN state_result = 'failed' THEN 0 ELSE 1 END"
    " WHERE minion = :minion"
)
# The states kept for a return that another replaced (one accepted earlier won).
DROP_REPLACED = text("DELETE FROM state_results WHERE jid = :jid AND minion = :minion")


def of_minions(function: str | None) -> bool:
    """Whether a return of ``function`` is a minion's: a runner's or a wheel job's comes
    from the master, which is not a minion of the fleet."""
    return not (function or "").startswith(MASTER_JOBS)


class Prior(NamedTuple):
    """What job_returns held for a (jid, minion) before a batch's return was stored."""

    state: str
    returned_at: Any  # on SQLite its stored text, see :func:`_when`


def _state_jobs(rows: Iterable[ReturnRow]) -> list[ReturnRow]:
    """The minions' returns of state jobs among ``rows`` (each function looked at once)."""
    rows = list(rows)
    wanted = {
        fun for fun in {row.function for row in rows}
        if of_minions(fun) and highstate.is_state_function(fun)
    }  # fmt: skip
    return [row for row in rows if row.function in wanted]


def prior_returns(
    db: Database, conn: Connection, rows: Iterable[ReturnRow]
) -> dict[tuple[str, str], Prior]:
    """Before a batch's returns are stored (its jobs locked): what job_returns holds for
    the state jobs' among ``rows``, so that :func:`note_returns` knows which of them it
    keeps, and which replace a return kept before."""
    wanted = sorted({(row.jid, row.minion) for row in _state_jobs(rows)})
    found: dict[tuple[str, str], Prior] = {}
    if not wanted:
        return found
    if db.is_sqlite:
        # One primary-key lookup per pair, on the driver: SQLite scans job_returns for a
        # row-value IN, and plans an OR of hundreds of pairs slowly.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for key in wanted:
                cursor.execute(PRIOR_SQLITE, key)
                row = cursor.fetchone()
                if row is not None:
                    found[key] = Prior(*row)
        finally:
            cursor.close()
        return found
    jids, minions = zip(*wanted, strict=True)
    for jid, minion, state, returned_at in conn.execute(
        PRIOR_POSTGRESQL, {"jids": list(jids), "minions": list(minions)}
    ):
        found[(jid, minion)] = Prior(state, returned_at)
    return found


PRIOR_SQLITE = "SELECT state, returned_at FROM job_returns WHERE jid = ? AND minion = ?"
# One primary-key lookup per pair, in one statement: the LIMIT keeps the planner from
# turning the lateral lookups into a join, which it would plan with a scan of job_returns
# while the table's statistics are young.
PRIOR_POSTGRESQL = text(
    "SELECT k.jid, k.minion, r.state, r.returned_at"
    " FROM unnest(CAST(:jids AS text[]), CAST(:minions AS text[])) AS k(jid, minion)"
    " CROSS JOIN LATERAL (SELECT j.state, j.returned_at FROM job_returns j"
    " WHERE j.jid = k.jid AND j.minion = k.minion LIMIT 1) AS r"
)


def note_returns(
    db: Database,
    conn: Connection,
    rows: Sequence[ReturnRow],
    prior: Mapping[tuple[str, str], Prior],
    is_system: Callable[[str | None], bool] = lambda _: False,
) -> None:
    """After a batch's returns are stored (``rows``: one per (jid, minion), the batch's
    earliest; ``prior``: :func:`prior_returns` of them): their minions' rows, and their
    state runs' failed and changed states. Returns from the master (runner and wheel
    jobs) are left out of the minions' rows; a bookkeeping job (``is_system``:
    ``saltutil.find_job``, ...) is never a minion's latest job. One statement per minion
    of the batch, and one row per failed or changed state kept: this runs with every
    batch the committer takes."""
    functions = {row.function for row in rows}
    theirs = {fun for fun in functions if of_minions(fun)}
    if not theirs:
        return
    rows = [row for row in rows if row.function in theirs]
    # The state jobs' returns job_returns kept, as its upsert decided (a placeholder
    # filled, or a return accepted later replaced), and those that replaced a return.
    kept: list[ReturnRow] = []
    replaced: list[ReturnRow] = []
    for row in _state_jobs(rows):
        before = prior.get((row.jid, row.minion))
        if before is None or before.state != RETURNED:
            kept.append(row)
        elif before.returned_at > _when(db, row.returned_at):
            kept.append(row)
            replaced.append(row)
    runs = [row for row in kept if row.summary is not None]
    system = {fun for fun in theirs if is_system(fun)}
    last = _latest_per_minion(row for row in rows if row.function not in system)
    real = _latest_per_minion(row for row in runs if not row.test_run)
    keys = [_key(row) for row in replaced]
    if keys:
        db.executemany(conn, DROP_REPLACED, keys)
    _add_notable(db, conn, runs)
    # The minions' rows last, in minion order: another transaction writing returns of the
    # same minions (another master, another lane of the committer) waits for them only
    # from here to the commit, and never in an order that could deadlock.
    minions = sorted({row.minion for row in rows})
    params = [_minion(name, last.get(name), real.get(name)) for name in minions]
    if db.is_sqlite:
        db.executemany_rows(conn, UPSERT_MINION, MINION_PARAMETERS, params)
    else:
        run_staged(conn, MINIONS_STAGE, params, UPSERT_MINIONS_POSTGRESQL)
    if keys:
        # A minion whose latest run was a return now replaced by one that is no real run:
        # its latest run is the one before (the statement checks what was kept).
        db.executemany(conn, RUN_GONE, keys)
        db.executemany(conn, HEALTHY, [{"minion": key["minion"]} for key in keys])


def _add_notable(db: Database, conn: Connection, runs: Sequence[ReturnRow]) -> None:
    """The failed and changed states of the state runs ``runs`` kept, a row each."""
    states = [
        (row.jid, row.minion, state.key, state.state_id, state.function, state.name, state.sls,
         state.result, state.comment, state.run_num, row.start_time, row.returned_at,
         row.test_run)
        for row in runs
        for state in row.notable
    ]  # fmt: skip
    if not states:
        return
    if db.is_sqlite:
        db.executemany_rows(conn, _add_states(db), STATE_PARAMETERS, states)
        return
    # The runs kept have no rows yet: a replayed return is not kept again, and the rows of
    # one it replaces were dropped just before. So they are copied straight in (a state
    # twice in one run, two keys that column_text made one, once), which costs the
    # server about 30% less than the staged INSERT ... ON CONFLICT DO NOTHING; should a row
    # be there after all, nothing is copied and the staged statement skips it.
    unique: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for state_row in states:
        unique.setdefault(state_row[:3], state_row)
    if not copy_new_rows(conn, "state_results", STATES_STAGE.columns, list(unique.values())):
        log.warning("halite: state results already stored for a run kept; added the others")
        run_staged(conn, STATES_STAGE, states, ADD_STATES_POSTGRESQL)


def _minion(name: str, last: ReturnRow | None, run: ReturnRow | None) -> tuple[Any, ...]:
    """The parameters of :data:`UPSERT_MINION` for one minion, in MINION_PARAMETERS' order."""
    job = (last.jid, last.function, last.start_time) if last else (None, None, None)
    if run is None or run.summary is None:
        return (name, *job, *(None,) * len(_RUN))
    summary = run.summary
    failed = minion_failed(RETURNED, run.success, run.retcode, summary.failed)
    result = "failed" if failed else "changed" if summary.changed > 0 else "pass"
    return (name, *job, run.jid, run.function, run.start_time, summary.total, summary.passed,
            summary.failed, summary.changed, result, 0 if failed else 1)  # fmt: skip


STATE_PARAMETERS = (
    "jid", "minion", "state_key", "state_id", "function", "name", "sls", "result", "comment",
    "run_num", "start_time", "returned_at", "test_run",
)  # fmt: skip
# PostgreSQL: a batch's rows staged (halite_core.store.db.Stage), in one statement.
STATES_STAGE = Stage(
    "halite_stage_states",
    tuple(zip(STATE_PARAMETERS, (*("text",) * 9, "int4", "timestamptz", "timestamptz", "bool"),
              strict=True)),
)  # fmt: skip
ADD_STATES_POSTGRESQL = STATES_STAGE.statement(
    f"INSERT INTO state_results ({', '.join(STATE_PARAMETERS)}) SELECT "
    + ", ".join(f"k.{name}" for name in STATE_PARAMETERS)
    + " FROM k"
    " ON CONFLICT DO NOTHING"
)
_ADD_STATES: dict[str, Any] = {}


def _add_states(db: Database) -> Any:
    """SQLite's INSERT of state_results rows, a row already there left alone (a batch
    replayed); PostgreSQL's is :data:`ADD_STATES_POSTGRESQL`."""
    stmt = _ADD_STATES.get(db.dialect_name)
    if stmt is None:
        columns = {
            name: bindparam(name, type_=state_results.c[name].type) for name in STATE_PARAMETERS
        }
        stmt = _ADD_STATES[db.dialect_name] = (
            sqlite.insert(state_results).values(columns).on_conflict_do_nothing()
        )
    return stmt


def _latest_per_minion(rows: Iterable[ReturnRow]) -> dict[str, ReturnRow]:
    """Of each minion's rows, the one of the latest job (by start time, then jid)."""
    best: dict[str, ReturnRow] = {}
    for row in rows:
        seen = best.get(row.minion)
        if (
            seen is None
            or row.start_time > seen.start_time
            or (row.start_time == seen.start_time and row.jid > seen.jid)
        ):
            best[row.minion] = row
    return best


def _when(db: Database, moment: Any) -> Any:
    """A time as :func:`prior_returns` gives it back: SQLite's text of it, else itself."""
    return sqlite_text(moment) if db.is_sqlite else moment


def _key(row: ReturnRow) -> dict[str, Any]:
    return {"jid": row.jid, "minion": row.minion, "start_time": row.start_time}


def refresh_minions(conn: Connection, jobs: Iterable[str]) -> None:
    """Before retention removes ``jobs``: nothing. After: the minions whose latest job or
    state run was one of them get theirs from what is left; a minion with no return left
    loses its row."""
    removed = sorted(set(jobs))
    if not removed:
        return
    params = {f"j{i}": jid for i, jid in enumerate(removed)}
    among = ", ".join(f":{name}" for name in params)
    stale = (
        f"SELECT minion FROM minion_status WHERE last_jid IN ({among}) OR state_jid IN ({among})"
    )
    refresh_listed(conn, [m for (m,) in conn.execute(text(stale), params)])


def refresh_minions_outside(conn: Connection, lo: str, hi: str) -> None:
    """:func:`refresh_minions` for the jobs of jids ``lo`` (included) to ``hi`` (excluded),
    before they go: a partition retention is about to drop whole. Their returns are left
    out, so the partition can be dropped last, holding its parent's lock a moment only."""
    stale = (
        "SELECT minion FROM minion_status WHERE (last_jid >= :lo AND last_jid < :hi)"
        " OR (state_jid >= :lo AND state_jid < :hi)"
    )
    bounds = {"lo": lo, "hi": hi}
    found = [m for (m,) in conn.execute(text(stale), bounds)]
    refresh_listed(conn, found, OUTSIDE_RANGE, bounds)


def refresh_listed(
    conn: Connection, minions: list[str], outside: str = "", bounds: dict[str, str] | None = None
) -> None:
    """Set the rows of ``minions`` from what job_returns holds of them (but the returns
    ``outside`` leaves out, with its parameters ``bounds``)."""
    if minions and conn.dialect.name == "postgresql":
        # Each statement reads a few index entries per minion, but its estimated cost
        # grows with its 400 subqueries and with a partition not analysed yet (a new day,
        # a database just converted): past jit_above_cost PostgreSQL compiled each one,
        # 0.7 s of a 0.04 s statement, and retention's clean of a 10,000-minion day took
        # 19 s instead of 2.
        conn.exec_driver_sql("SET LOCAL jit = off")
    for start in range(0, len(minions), 400):
        part: dict[str, str] = {f"m{i}": m for i, m in enumerate(minions[start : start + 400])}
        listed = ", ".join(f":{name}" for name in part)
        params = {**part, **(bounds or {})}
        conn.execute(text(refresh_minions_sql(listed, outside=outside)), params)
        conn.execute(
            text(
                # Only rows the update just emptied can have no return left; said first,
                # it keeps the planner from a scan of job_returns to answer NOT EXISTS.
                f"DELETE FROM minion_status WHERE minion IN ({listed})"
                " AND last_jid IS NULL AND state_jid IS NULL AND NOT EXISTS (SELECT 1"
                " FROM job_returns r WHERE r.minion = minion_status.minion AND r.state = 'returned'"
                f" AND {MINION_JOB}{outside})"
            ),
            params,
        )
        conn.execute(
            text(
                "UPDATE minion_status SET healthy = CASE WHEN state_result = 'failed'"
                f" THEN 0 ELSE 1 END WHERE minion IN ({listed})"
            ),
            part,
        )
