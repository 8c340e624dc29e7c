"""``live=True`` listings: the master's own job cache and the minions' running lists,
bypassing the index, for the rare case where the index is suspect. The Salt calls are the
loader modules'; the shaping is here, shared by the runner and the HTTP API."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, cast

from halite_core import jids
from halite_core.api import Job, Page, arguments_preview
from halite_core.queries import QueryError
from halite_core.states import JobStatus
from halite_core.store.writes import split_arguments

MAX_LIVE = 500


def live_limit(limit: object) -> int:
    try:
        # int(True) is 1 and int(.inf) an OverflowError: neither is a count.
        size = 0 if isinstance(limit, bool) else int(limit)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        size = 0
    if not 1 <= size <= MAX_LIVE:
        raise QueryError(f"limit must be a number from 1 to {MAX_LIVE}, not {limit!r}")
    return size


def running_jids(answers: Mapping[str, Any] | None) -> set[str]:
    """The jids in the minions' ``saltutil.running`` answers."""
    return {
        str(job.get("jid"))
        for jobs_of_minion in (answers or {}).values()
        if isinstance(jobs_of_minion, list)
        for job in jobs_of_minion
        if isinstance(job, dict)
    }


def live_page(
    found: Iterable[Mapping[str, Any]],
    running: set[str],
    scope: tuple[str, ...] | None,
    jid_utc: bool,
    master_id: str | None,
) -> Page:
    """``get_jids_filter``'s jobs as a listing page, newest first; ``running`` if a minion
    said it runs the job. ``scope`` keeps the functions the caller may view."""
    listed: list[Job] = []
    for job in sorted(found, key=lambda j: str(j.get("JID")), reverse=True):
        function = str(job.get("Function"))
        if scope is not None and not any(fnmatch.fnmatchcase(function, p) for p in scope):
            continue
        target = job.get("Target")
        jid = str(job.get("JID"))
        status = JobStatus.RUNNING if jid in running else JobStatus.COMPLETE
        listed.append(
            {
                "jid": jid,
                "function": job.get("Function"),
                "target": ",".join(map(str, target)) if isinstance(target, list) else target,
                "target_type": job.get("Target-type"),
                "user": job.get("User"),
                "start_time": jids.start_time(jid, jid_utc).isoformat() if jids.is_jid(jid)
                else None,
                "end_time": None,
                "status": cast(Any, status.value),
                "result": None,
                "minions": {"targeted": None, "returned": None, "failed": None, "changed": None},
                "system": False,
                "master_id": master_id,
                "arguments_preview": arguments_preview(*split_arguments(job.get("Arguments"))),
            }
        )  # fmt: skip
    return {"jobs": listed, "next": None, "live": True}
