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
from halite_core.models import job_returns, jobs_index
from halite_core.queries import QueryError, UnknownJob

SIGNALLED = "signalled"  # "Signal 9 sent to job <jid> at pid <pid>"
NOT_RUNNING = "not_running"  # nothing by that jid was running on the minion
NO_ANSWER = "no_answer"  # the minion did not reply in time


class NothingToKill(QueryError):
    """The job exists but no minion is still running it."""

    def __init__(self, message: str, function: str | None) -> None:
        super().__init__(message)
        self.function = function


def plan(
    conn: Connection, jid: object, settled: Callable[[str], set[str]] | None = None
) -> dict[str, Any]:
    """``{"jid", "function", "minions"}``: the job and the minions still running it.
    ``settled(jid)`` names the minions whose return, kill or settling is accepted but not
    committed yet (still journalled): they are not running it either."""
    if not isinstance(jid, str) or not jids.is_jid(jid):
        raise QueryError(f"{jid!r} is not a Salt job id (20 digits, optional _pid)")
    row = conn.execute(
        select(jobs_index.c.function, jobs_index.c.status).where(jobs_index.c.jid == jid)
    ).first()
    if row is None or row.status == "new":
        raise UnknownJob(f"no job with jid {jid} in the index")
    r = job_returns.c
    pending = [
        minion
        for (minion,) in conn.execute(
            select(r.minion).where(r.jid == jid, r.state == "pending").order_by(r.minion)
        )
    ]
    if pending and settled is not None:
        done = settled(jid)
        pending = [minion for minion in pending if minion not in done]
    if not pending:
        raise NothingToKill(
            f"job {jid} ({row.function}) is already complete: nothing to kill", row.function
        )
    return {"jid": jid, "function": row.function, "minions": pending}


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
