"""Completion events: the engine says on the master's bus when a job completes, and how.

When every targeted minion of a job has returned, or was settled ``no_return``, or was
killed, the job is complete in the index (whichever process committed that). The engine
looks for such jobs every ``interval`` seconds (one indexed query: a partial index holds
only the complete jobs not announced yet), marks them announced in the same transaction,
and after the commit fires, for each, ``<tag_prefix>/<jid>/complete`` with a summary (see
:func:`summary`). A job is announced once: the mark is in the database, so an engine that
restarts announces the jobs that completed while it was away (those that ended within
``max_age`` seconds; older ones are marked without a word) and never one twice. If the
bus refuses an event after the mark was committed, that event is lost (logged): at most
once, never a flood of repeats to a reactor that posts to a webhook.

Bookkeeping jobs (``halite.system_functions``: ``saltutil.find_job``, the history's own
reads) are marked and never announced. With ``only_failed`` only failed jobs are.

Several masters sharing one database each announce their own jobs (``master_id``, the
master that published it; a job with none is announced by whichever engine sees it
first).

Nothing here knows Salt: the engine hands in the function that fires an event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update

from halite_core import jids
from halite_core.config import engine_config
from halite_core.errors import ConfigError
from halite_core.jobcache import JobStore
from halite_core.states import COMPLETE, KILLED, NO_RETURN, JobResult, minion_failed_sql
from halite_core.store.schema import job_returns, jobs_index, state_results

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "halite/job"
RERUN = "rerun"  # <tag_prefix>/<jid>/rerun: halite published job <jid> to run one again


@dataclasses.dataclass(frozen=True)
class EventOptions:
    """The engine's ``events:`` options (see the engine's docstring)."""

    enabled: bool = True
    tag_prefix: str = DEFAULT_PREFIX
    only_failed: bool = False
    interval: float = 1.0  # seconds between looks for newly complete jobs
    max_age: float = 3600.0  # seconds: a job that ended longer ago is not announced
    cap: int = 50  # failed minions listed in an event; the rest are counted
    batch: int = 200  # jobs announced per look, at most

    @classmethod
    def from_config(cls, value: object) -> EventOptions:
        """``events:`` as the master config gives it: a mapping, ``false`` (off) or
        nothing (on, with the defaults). Bad values are a clear ConfigError."""
        if value is None or value is True:
            return cls()
        if value is False:
            return cls(enabled=False)
        if not isinstance(value, Mapping):
            raise ConfigError(f"halite engine: events must be a mapping or false, not {value!r}")
        known = {field.name for field in dataclasses.fields(cls)} - {"batch"}
        unknown = sorted(set(map(str, value)) - known)
        if unknown:
            raise ConfigError(f"halite engine: unknown events option(s): {', '.join(unknown)}")
        found: dict[str, Any] = {}
        for name in ("enabled", "only_failed"):
            if name in value:
                if not isinstance(value[name], bool):
                    raise ConfigError(f"halite engine: events.{name} must be true or false")
                found[name] = value[name]
        if "tag_prefix" in value:
            prefix = value["tag_prefix"]
            if not isinstance(prefix, str) or not prefix.strip("/"):
                raise ConfigError("halite engine: events.tag_prefix must be a non-empty tag")
            found["tag_prefix"] = prefix.rstrip("/")
        for name, least in (("interval", 0.05), ("max_age", 0.0)):
            if name in value:
                number = value[name]
                if isinstance(number, bool) or not isinstance(number, (int, float)):
                    raise ConfigError(f"halite engine: events.{name} must be a number of seconds")
                if number < least:
                    raise ConfigError(f"halite engine: events.{name} must be at least {least}")
                found[name] = float(number)
        if "cap" in value:
            cap = value["cap"]
            if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= 10_000:
                raise ConfigError("halite engine: events.cap must be a whole number, 0 to 10000")
            found["cap"] = cap
        return cls(**found)


Fire = Callable[[dict[str, Any], str], Any]


def tag_prefix(opts: Mapping[str, Any]) -> str:
    """The tag prefix of the engine's events in a master's options: its ``events:
    tag_prefix``, else (no engine, or an ``events`` option it refuses at its start) the
    default."""
    config = engine_config(opts) or {}
    try:
        return EventOptions.from_config(config.get("events")).tag_prefix
    except ConfigError:
        return DEFAULT_PREFIX


def rerun_tag(opts: Mapping[str, Any]) -> Callable[[str], str]:
    """The tag of the event a re-run fires, for the re-run's jid."""
    prefix = tag_prefix(opts)
    return lambda jid: f"{prefix}/{jid}/{RERUN}"


def is_rerun_event(prefix: str, tag: object) -> bool:
    """Whether ``tag`` is a re-run's event under ``prefix``."""
    if not isinstance(tag, str) or not tag.startswith(prefix + "/"):
        return False
    middle, _, last = tag[len(prefix) + 1 :].rpartition("/")
    return last == RERUN and jids.is_jid(middle)


class Announcer:
    """Finds the jobs that completed and fires their events (see the module's text)."""

    def __init__(
        self,
        store: JobStore,
        options: EventOptions,
        fire: Fire,
        on_complete: Callable[[str | None, str], None] | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.fire = fire
        self.on_complete = on_complete
        self._next = 0.0
        self._quiet_until = 0.0

    def tick(self, now: float | None = None) -> int:
        """Announce what is due, at most every ``interval`` seconds; the number of events
        fired. A database that cannot be read is logged (once a minute) and tried again at
        the next look."""
        now = time.monotonic() if now is None else now
        if not self.options.enabled or now < self._next:
            return 0
        self._next = now + self.options.interval
        try:
            events = self.claim()
        except Exception as exc:  # the database is down, or locked: next time
            if now >= self._quiet_until:
                log.warning("halite engine: cannot look for completed jobs: %s", exc)
                self._quiet_until = now + 60
            return 0
        fired = 0
        for tag, data in events:
            try:
                self.fire(data, tag)
                fired += 1
            except Exception:
                log.exception("halite engine: the bus refused %s; that event is lost", tag)
        return fired

    def claim(self, now: dt.datetime | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Mark the complete jobs not announced yet as announced, and return the events
        to fire for them (tag, data), in one write transaction."""
        now = now or dt.datetime.now(dt.timezone.utc)
        settings = self.store.settings
        j = jobs_index.c
        mine = or_(j.master_id.is_(None), j.master_id == settings.master_id)
        query = (
            select(j.jid, j.function, j.target, j.target_type, j.user, j.result, j.system,
                   j.start_time, j.end_time, j.minions_targeted, j.minions_returned,
                   j.minions_failed, j.rerun_of)
            .where(j.announced_at.is_(None), j.status == COMPLETE, mine)
            .order_by(j.end_time, j.jid)
            .limit(self.options.batch)
        )  # fmt: skip
        db = self.store.db
        if not db.is_sqlite:
            # Two engines of one master (a restart overlapping): each takes other jobs.
            query = query.with_for_update(skip_locked=True, of=jobs_index)
        events: list[tuple[str, dict[str, Any]]] = []
        with db.write() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return events
            conn.execute(
                update(jobs_index)
                .where(j.jid.in_([row.jid for row in rows]), j.announced_at.is_(None))
                .values(announced_at=now)
            )
            oldest = now - dt.timedelta(seconds=self.options.max_age)
            wanted = [
                row
                for row in rows
                if not row.system
                and not settings.is_system(row.function)
                and (row.end_time or row.start_time) >= oldest
                and (not self.options.only_failed or row.result == JobResult.FAILED.value)
            ]
            for row in wanted:
                data = summary(conn, row, self.options.cap)
                events.append((f"{self.options.tag_prefix}/{row.jid}/complete", data))
        for _, data in events:
            if self.on_complete is not None:
                self.on_complete(data["function"], data["result"])
        return events


def summary(conn: Connection, job: Any, cap: int) -> dict[str, Any]:
    """The event's data for a complete job: its function, target, user and result (as the
    job listing has it), minion counts, the failed minions (at most ``cap``; how many more)
    with their failing state ids, and its start and end time (ISO 8601, UTC)."""
    r = job_returns.c
    settled: dict[str, int] = dict(
        conn.execute(
            select(r.state, func.count())
            .where(r.jid == job.jid, r.state.in_((NO_RETURN, KILLED)))
            .group_by(r.state)
        ).all()
    )
    failed = list(
        conn.execute(
            select(r.minion)
            .where(r.jid == job.jid, minion_failed_sql(r))
            .order_by(r.minion)
            .limit(cap)
        ).scalars()
    )
    states = _failing_states(conn, job.jid, failed)
    return {
        "jid": job.jid,
        "function": job.function,
        "target": job.target,
        "target_type": job.target_type,
        "user": job.user,
        "result": job.result,
        "minions": {
            "targeted": job.minions_targeted,
            "returned": job.minions_returned,
            "failed": job.minions_failed,
            "no_return": int(settled.get(NO_RETURN, 0)),
            "killed": int(settled.get(KILLED, 0)),
        },
        "failed_minions": failed,
        "failed_minions_more": max(0, job.minions_failed - len(failed)),
        "failing_states": states,
        "start_time": _iso(job.start_time),
        "end_time": _iso(job.end_time),
        "rerun_of": job.rerun_of,
    }


def _failing_states(conn: Connection, jid: str, minions: Sequence[str]) -> dict[str, list[str]]:
    """The ids of the states that failed on each of ``minions`` in job ``jid`` (a state
    run's; other jobs have none)."""
    if not minions:
        return {}
    s = state_results.c
    found: dict[str, list[str]] = {}
    for minion, state_id in conn.execute(
        select(s.minion, s.state_id)
        .where(and_(s.jid == jid, s.minion.in_(list(minions)), s.result == JobResult.FAILED.value))
        .order_by(s.minion, s.run_num, s.state_key)
    ):
        ids = found.setdefault(minion, [])
        if state_id not in ids:
            ids.append(state_id)
    return found


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.timezone.utc).isoformat()
