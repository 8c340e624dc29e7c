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

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from halite_core import highstate
from halite_core.store.db import Database
from halite_core.store.ops import ReturnRow
from halite_core.store.schema import UTCDateTime, job_returns, sqlite_text, state_results

# A state run's result as the fleet views show it, from a job_returns row ``r``.
RUN_RESULT = (
    "CASE WHEN r.success IS FALSE OR (r.retcode IS NOT NULL AND r.retcode <> 0)"
    " OR r.states_failed > 0 THEN 'failed' WHEN r.states_changed > 0 THEN 'changed'"
    " ELSE 'pass' END"
)
_LATER = (
    "({col}_start IS NULL OR {col}_start < :start_time"
    " OR ({col}_start = :start_time AND {col}_jid <= :jid))"
)
_TIMES = (bindparam("start_time", type_=UTCDateTime()),)

ENSURE_MINION = text(
    "INSERT INTO minion_status (minion, healthy) VALUES (:minion, 1)"
    " ON CONFLICT (minion) DO NOTHING"
)
LAST_JOB = text(
    "UPDATE minion_status SET last_jid = :jid, last_function = :function,"
    " last_start = :start_time WHERE minion = :minion AND " + _LATER.format(col="last")
).bindparams(_TIMES[0])
LAST_RUN = text(
    "UPDATE minion_status SET (state_jid, state_function, state_start, states_total,"
    " states_passed, states_failed, states_changed, state_result, healthy) = ("
    " SELECT r.jid, r.function, r.start_time, r.states_total, r.states_passed,"
    f" r.states_failed, r.states_changed, {RUN_RESULT},"
    f" CASE WHEN {RUN_RESULT} = 'failed' THEN 0 ELSE 1 END"
    " FROM job_returns r WHERE r.jid = :jid AND r.minion = :minion)"
    " WHERE minion = :minion AND " + _LATER.format(col="state") +
    # The return kept may be another than the batch's (one accepted earlier won): it must
    # be a real state run too.
    " AND EXISTS (SELECT 1 FROM job_returns r WHERE r.jid = :jid AND r.minion = :minion"
    " AND r.states_total IS NOT NULL AND r.test_run IS NOT TRUE)"
).bindparams(_TIMES[0])


MASTER_JOBS = ("runner.", "wheel.")
# The same in SQL, for the refresh from the history (and revision 0007's frozen copy).
MINION_JOB = (
    "coalesce(r.function, '') NOT LIKE 'runner.%' AND coalesce(r.function, '') NOT LIKE 'wheel.%'"
)


def refresh_minions_sql(minions: str, where: str = "") -> str:
    """Set the rows of the minions ``minions`` (a subquery), those also matching ``where``,
    from their whole history in job_returns: for retention, which may remove a minion's
    latest job, and for a state run replaced by a return that is none."""
    latest = (
        "FROM job_returns r WHERE r.minion = minion_status.minion AND r.state = 'returned'"
        f" AND {MINION_JOB} {{more}} ORDER BY r.start_time DESC, r.jid DESC LIMIT 1"
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
DROP_REPLACED = text(
    "DELETE FROM state_results WHERE jid = :jid AND minion = :minion AND returned_at <>"
    " (SELECT r.returned_at FROM job_returns r WHERE r.jid = :jid AND r.minion = :minion)"
)


def of_minions(function: str | None) -> bool:
    """Whether a return of ``function`` is a minion's: a runner's or a wheel job's comes
    from the master, which is not a minion of the fleet."""
    return not (function or "").startswith(MASTER_JOBS)


def note_returns(
    db: Database,
    conn: Connection,
    rows: Sequence[ReturnRow],
    is_system: Callable[[str | None], bool] = lambda _: False,
) -> None:
    """After a batch's returns are stored: their minions' rows, and their state runs'
    failed and changed states. Returns from the master (runner and wheel jobs) are left
    out of the minions' rows; a bookkeeping job (``is_system``: ``saltutil.find_job``, ...)
    is never a minion's latest job. One statement per minion of the batch, and one row per
    kept state: this runs with every batch the committer takes."""
    rows = [row for row in rows if of_minions(row.function)]
    if not rows:
        return
    minions = sorted({row.minion for row in rows})
    db.executemany(conn, ENSURE_MINION, [{"minion": m} for m in minions])
    latest = _latest_per_minion(row for row in rows if not is_system(row.function))
    db.executemany(conn, LAST_JOB, [_key(row) | {"function": row.function} for row in latest])
    # Every return of a state job: one of them may have replaced a state run kept before.
    state_jobs = [row for row in rows if highstate.is_state_function(row.function)]
    if not state_jobs:
        return
    runs = [row for row in state_jobs if row.summary is not None]
    real = _latest_per_minion(row for row in runs if not row.test_run)
    db.executemany(conn, LAST_RUN, [_key(row) for row in real])
    db.executemany(conn, DROP_REPLACED, [_key(row) for row in state_jobs])
    others = [_key(row) for row in state_jobs if row.summary is None]
    if others:
        db.executemany(conn, RUN_GONE, others)
        db.executemany(conn, HEALTHY, [{"minion": key["minion"]} for key in others])
    noted = [row for row in runs if row.notable]
    if not noted:
        return
    # Only the states of the returns job_returns kept (a return that lost to one accepted
    # earlier, in this batch or before, leaves none).
    kept = _stored_times(db, conn, {(row.jid, row.minion) for row in noted})
    states = [
        (row.jid, row.minion, state.key, state.state_id, state.function, state.name, state.sls,
         state.result, state.comment, state.run_num, row.start_time, row.returned_at,
         row.test_run)
        for row in noted
        if kept.get((row.jid, row.minion)) == _when(db, row.returned_at)
        for state in row.notable
    ]  # fmt: skip
    db.executemany_rows(conn, _add_states(db), STATE_PARAMETERS, states)


STATE_PARAMETERS = (
    "jid", "minion", "state_key", "state_id", "function", "name", "sls", "result", "comment",
    "run_num", "start_time", "returned_at", "test_run",
)  # fmt: skip
_ADD_STATES: dict[str, Any] = {}


def _add_states(db: Database) -> Any:
    """INSERT of state_results rows, a row already there left alone (a batch replayed)."""
    stmt = _ADD_STATES.get(db.dialect_name)
    if stmt is None:
        dialect = postgresql if db.dialect_name == "postgresql" else sqlite
        columns = {
            name: bindparam(name, type_=state_results.c[name].type) for name in STATE_PARAMETERS
        }
        stmt = _ADD_STATES[db.dialect_name] = (
            dialect.insert(state_results).values(columns).on_conflict_do_nothing()
        )
    return stmt


def _latest_per_minion(rows: Iterable[ReturnRow]) -> list[ReturnRow]:
    """Of each minion's rows, the one of the latest job (by start time, then jid)."""
    best: dict[str, ReturnRow] = {}
    for row in rows:
        seen = best.get(row.minion)
        if seen is None or (row.start_time, row.jid) > (seen.start_time, seen.jid):
            best[row.minion] = row
    return list(best.values())


def _stored_times(
    db: Database, conn: Connection, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], Any]:
    """When the return job_returns holds for each (jid, minion) was accepted (on SQLite as
    its stored text, see :func:`_when`)."""
    wanted = sorted(keys)
    found: dict[tuple[str, str], Any] = {}
    if db.is_sqlite:
        # One primary-key lookup per pair, on the driver: SQLite scans job_returns for a
        # row-value IN, and plans an OR of hundreds of pairs slowly.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for key in wanted:
                cursor.execute(STORED_AT, key)
                row = cursor.fetchone()
                if row is not None:
                    found[key] = row[0]
        finally:
            cursor.close()
        return found
    r = job_returns.c
    for start in range(0, len(wanted), 400):
        part = wanted[start : start + 400]
        query = select(r.jid, r.minion, r.returned_at).where(tuple_(r.jid, r.minion).in_(part))
        for jid, minion, returned_at in conn.execute(query):
            found[(jid, minion)] = returned_at
    return found


STORED_AT = "SELECT returned_at FROM job_returns WHERE jid = ? AND minion = ?"


def _when(db: Database, moment: Any) -> Any:
    """A time as :func:`_stored_times` gives it back: SQLite's text of it, else itself."""
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
    minions = [m for (m,) in conn.execute(text(stale), params)]
    for start in range(0, len(minions), 400):
        part = {f"m{i}": m for i, m in enumerate(minions[start : start + 400])}
        listed = ", ".join(f":{name}" for name in part)
        conn.execute(text(refresh_minions_sql(listed)), part)
        conn.execute(
            text(
                f"DELETE FROM minion_status WHERE minion IN ({listed}) AND NOT EXISTS (SELECT 1"
                " FROM job_returns r WHERE r.minion = minion_status.minion AND r.state = 'returned'"
                f" AND {MINION_JOB})"
            ),
            part,
        )
        conn.execute(
            text(
                "UPDATE minion_status SET healthy = CASE WHEN state_result = 'failed'"
                f" THEN 0 ELSE 1 END WHERE minion IN ({listed})"
            ),
            part,
        )
