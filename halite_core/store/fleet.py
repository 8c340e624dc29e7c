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

from sqlalchemy import Connection, bindparam, text

from halite_core.store.db import Database
from halite_core.store.ops import ReturnRow
from halite_core.store.schema import UTCDateTime

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
_TIMES = (
    bindparam("start_time", type_=UTCDateTime()),
    bindparam("returned_at", type_=UTCDateTime()),
)

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
    " WHERE minion = :minion AND " + _LATER.format(col="state")
).bindparams(_TIMES[0])
DROP_REPLACED = text(
    "DELETE FROM state_results WHERE jid = :jid AND minion = :minion AND returned_at <>"
    " (SELECT r.returned_at FROM job_returns r WHERE r.jid = :jid AND r.minion = :minion)"
)
ADD_STATE = text(
    "INSERT INTO state_results (jid, minion, state_key, state_id, function, name, sls,"
    " result, comment, run_num, start_time, returned_at, test_run)"
    # Typed: PostgreSQL deduces a parameter's type once, and :jid is also compared below.
    " SELECT CAST(:jid AS VARCHAR(64)), CAST(:minion AS VARCHAR(255)),"
    " CAST(:state_key AS VARCHAR(1024)), CAST(:state_id AS VARCHAR(255)),"
    " CAST(:function AS VARCHAR(255)), CAST(:name AS VARCHAR(1024)),"
    " CAST(:sls AS VARCHAR(255)), CAST(:result AS VARCHAR(16)), CAST(:comment AS TEXT),"
    " CAST(:run_num AS INTEGER), :start_time, :returned_at, CAST(:test_run AS BOOLEAN)"
    " WHERE EXISTS (SELECT 1 FROM job_returns r WHERE r.jid = :jid AND r.minion = :minion"
    " AND r.returned_at = :returned_at)"
    " ON CONFLICT (jid, minion, state_key) DO NOTHING"
).bindparams(*_TIMES)


def refresh_minions_sql(minions: str) -> str:
    """Set the rows of the minions ``minions`` (a subquery) from their whole history in
    job_returns: for retention, which may remove a minion's latest job."""
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
        f" WHERE minion IN ({minions})"
    )


def of_minions(function: str | None) -> bool:
    """Whether a return of ``function`` is a minion's: a runner's or a wheel job's comes
    from the master, which is not a minion of the fleet."""
    return not (function or "").startswith(MASTER_JOBS)


MASTER_JOBS = ("runner.", "wheel.")
# The same in SQL, for the refresh from the history (and revision 0007's frozen copy).
MINION_JOB = (
    "coalesce(r.function, '') NOT LIKE 'runner.%' AND coalesce(r.function, '') NOT LIKE 'wheel.%'"
)


def note_returns(
    db: Database,
    conn: Connection,
    rows: Sequence[ReturnRow],
    is_system: Callable[[str | None], bool] = lambda _: False,
) -> None:
    """After a batch's returns are stored: their minions' rows, and their state runs'
    failed and changed states. Returns from the master (runner and wheel jobs) are left
    out of the minions' rows; a bookkeeping job (``is_system``: ``saltutil.find_job``, ...)
    is never a minion's latest job."""
    rows = [row for row in rows if of_minions(row.function)]
    if not rows:
        return
    minions = sorted({row.minion for row in rows})
    db.executemany(conn, ENSURE_MINION, [{"minion": m} for m in minions])
    latest = [_key(row) | {"function": row.function} for row in rows if not is_system(row.function)]
    db.executemany(conn, LAST_JOB, latest)
    runs = [row for row in rows if row.summary is not None]
    if not runs:
        return
    db.executemany(conn, LAST_RUN, [_key(row) for row in runs if not row.test_run])
    db.executemany(conn, DROP_REPLACED, [_key(row) for row in runs])
    states = [
        {**_key(row), "state_key": state.key, "state_id": state.state_id,
         "function": state.function, "name": state.name, "sls": state.sls,
         "result": state.result, "comment": state.comment, "run_num": state.run_num,
         "returned_at": row.returned_at, "test_run": row.test_run}
        for row in runs
        for state in row.notable
    ]  # fmt: skip
    db.executemany(conn, ADD_STATE, states)


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
