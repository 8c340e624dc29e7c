"""The words of the index: a job's status, a minion's state, and when a minion failed a job.

Defined once here; the schema stores these strings, the listing and the detail show them,
and the recount in SQL and the detail in Python apply the same failure rule.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from sqlalchemy import and_, or_


class JobStatus(str, Enum):
    """``jobs_index.status``; ``unknown`` is shown, never stored: a running job while the
    engine has not reconciled the index after a restart."""

    RUNNING = "running"
    COMPLETE = "complete"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


class JobResult(str, Enum):
    """``jobs_index.result``: how a job went, as the listing's badge and filter say it:
    still ``running``; ``failed`` (a minion failed or never answered); ``changed`` (a state
    changed something); or ``pass``."""

    RUNNING = "running"
    FAILED = "failed"
    CHANGED = "changed"
    PASS = "pass"

    def __str__(self) -> str:
        return self.value


RESULTS = tuple(result.value for result in JobResult)


class MinionState(str, Enum):
    """``job_returns.state``: a targeted minion waits (``pending``), returned, was settled as
    not returning by the engine (``no_return``), or confirmed a kill (``killed``)."""

    PENDING = "pending"
    RETURNED = "returned"
    NO_RETURN = "no_return"
    KILLED = "killed"

    def __str__(self) -> str:
        return self.value


SETTLED_WITHOUT_RETURN = (MinionState.NO_RETURN, MinionState.KILLED)


def minion_failed(
    state: str, success: bool | None, retcode: int | None, states_failed: int | None
) -> bool:
    """Whether a minion failed its job, as Salt's CLI reports it: it returned a failure (a
    false ``success``, a non-zero ``retcode``, a failed state), or it never answered (settled
    ``no_return``, or ``killed``). A pending minion has not failed (yet)."""
    if state in SETTLED_WITHOUT_RETURN:
        return True
    if state != MinionState.RETURNED:
        return False
    return (
        success is False
        or (retcode is not None and retcode != 0)
        or (states_failed is not None and states_failed > 0)
    )


def minion_failed_sql(columns: Any) -> Any:
    """:func:`minion_failed` as a SQL condition on ``job_returns`` columns."""
    returned_failed = and_(
        columns.state == MinionState.RETURNED.value,
        or_(
            columns.success.is_(False),
            and_(columns.retcode.is_not(None), columns.retcode != 0),
            columns.states_failed > 0,
        ),
    )
    # Equalities, not IN: the statement is compiled once and run with executemany, where
    # an expanding IN list cannot be bound.
    settled = [columns.state == state.value for state in SETTLED_WITHOUT_RETURN]
    return or_(returned_failed, *settled)


# The stored strings, for SQL statements and comparisons with column values.
RUNNING, COMPLETE = JobStatus.RUNNING.value, JobStatus.COMPLETE.value
PENDING, RETURNED = MinionState.PENDING.value, MinionState.RETURNED.value
NO_RETURN, KILLED = MinionState.NO_RETURN.value, MinionState.KILLED.value
