"""Killing a running job: which minions to signal, and what their replies mean.

``salt-run halite.kill <jid>`` asks :func:`plan` which minions still run the job (those
``pending`` in the index), sends them ``saltutil.kill_job <jid>`` (a list target, never
``*``), reads each reply with :func:`outcomes`, and marks the signalled minions ``killed``
(:meth:`JobStore.mark_killed`) so the job shows complete at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, select

from halite_core import jids
from halite_core.jobcache import Journalled
from halite_core.queries import RESERVED, QueryError, UnknownJob
from halite_core.states import MinionState
from halite_core.store.schema import job_returns, jobs_index

SIGNALLED = "signalled"  # "Signal 9 sent to job <jid> at pid <pid>"
NOT_RUNNING = "not_running"  # nothing by that jid was running on the minion
NO_ANSWER = "no_answer"  # the minion did not reply in time


class NothingToKill(QueryError):
    """The job exists but no minion is still running it."""

    def __init__(self, message: str, function: str | None) -> None:
        super().__init__(message)
        self.function = function


def plan(
    conn: Connection, jid: object, journalled: Callable[[str], Journalled] | None = None
) -> dict[str, Any]:
    """``{"jid", "function", "minions"}``: the job and the minions still running it, from
    the index and from what is still journalled (a job published a moment ago, or while
    the database is locked, is in a worker's journal)."""
    if not isinstance(jid, str) or not jids.is_jid(jid):
        raise QueryError(f"{jid!r} is not a Salt job id (20 digits, optional _pid)")
    waiting = journalled(jid) if journalled is not None else Journalled()
    row = conn.execute(
        select(jobs_index.c.function, jobs_index.c.status).where(jobs_index.c.jid == jid)
    ).first()
    if (row is None or row.status == RESERVED) and not waiting.published:
        raise UnknownJob(f"no job with jid {jid} in the index")
    function = row.function if row is not None and row.function else waiting.function
    r = job_returns.c
    states = dict(conn.execute(select(r.minion, r.state).where(r.jid == jid)).all())
    running = {minion for minion, state in states.items() if state == MinionState.PENDING}
    running |= {minion for minion in waiting.targets if minion not in states}
    pending = sorted(running - waiting.settled)
    if not pending:
        raise NothingToKill(
            f"job {jid} ({function}) is already complete: nothing to kill", function
        )
    return {"jid": jid, "function": function, "minions": pending}


def outcomes(minions: Iterable[str], replies: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each asked minion's outcome from the ``saltutil.kill_job`` replies."""
    result = {}
    for minion in minions:
        if minion not in replies:
            result[minion] = {"outcome": NO_ANSWER, "reply": None}
            continue
        reply = replies[minion]
        text = reply if isinstance(reply, str) else None
        if text and text.startswith("Signal ") and " sent to job " in text:
            outcome = SIGNALLED
        else:
            # "" (nothing running by that jid), or "Job ... was not running and job data
            # has been cleaned up", or an error from the minion.
            outcome = NOT_RUNNING
        result[minion] = {"outcome": outcome, "reply": reply}
    return result
