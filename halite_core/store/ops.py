"""The typed write operations of the index: what Salt's job path, the engine, a kill and
the audit log hand to the store. The journal encodes them (halite_core.durability.journal);
:class:`halite_core.store.writes.Writes` applies them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from halite_core import encoding, highstate
from halite_core.errors import HaliteError


class SaltWrite(str, Enum):
    """The writes of Salt's job cache interface, as the returner receives them (and as the
    spool names a write it keeps before it could even be checked)."""

    SAVE_LOAD = "save_load"
    SAVE_RETURN = "save_return"
    SAVE_MINIONS = "save_minions"
    SAVE_EVENTS = "save_events"
    UPDATE_ENDTIME = "update_endtime"


class InvalidLoad(HaliteError, ValueError):
    """A load or return that cannot be indexed as given."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ReturnRow(NamedTuple):
    """One minion return, prepared for the database."""

    jid: str
    minion: str
    function: str | None
    start_time: dt.datetime
    returned_at: dt.datetime
    value: encoding.Encoded
    retcode: int | None
    success: bool | None
    out: str | None
    summary: highstate.StateSummary | None
    # A state run's: whether it was a dry run (test=True), and its failed and changed
    # states (halite_core.store.fleet keeps them).
    test_run: bool | None = None
    notable: tuple[highstate.NotableState, ...] = ()


@dataclass(frozen=True)
class LoadItem:
    jid: str
    load: dict[str, Any]
    minions: list[str] | None
    # Second-hand (the engine's bus events, Salt's store_job for runner and `req` jobs):
    # fills in a job that has no publish load yet, never overwrites one.
    only_new: bool = False


@dataclass(frozen=True)
class SettledItem:
    """Minions of a job settled without a return, at ``at``."""

    jid: str
    minions: list[str]
    at: dt.datetime


class NoReturnItem(SettledItem):
    """Minions the engine settled as not returning for a job."""


class KilledItem(SettledItem):
    """Minions that confirmed ``saltutil.kill_job`` for a job: marked ``killed``."""


@dataclass(frozen=True)
class MinionsItem:
    jid: str
    minions: list[str]


class ReturnItem(NamedTuple):
    row: ReturnRow
    stub: dict[str, Any]


@dataclass(frozen=True)
class RawReturn:
    """A minion return of a plain function as Salt handed it to the returner (``load``
    without its ``return``), the return's JSON text as :func:`encoding.dumps` made it, and
    when it was accepted: what Salt's worker journals. :meth:`Writes.prepare_return` makes
    a :class:`ReturnItem` of it without parsing the return again."""

    load: dict[str, Any]
    value: str
    converted: bool
    at: dt.datetime


@dataclass(frozen=True)
class EndtimeItem:
    jid: str
    at: dt.datetime


@dataclass(frozen=True)
class RerunItem:
    """Job ``jid`` was published by halite to run job ``rerun_of`` again."""

    jid: str
    rerun_of: str


@dataclass(frozen=True)
class AuditItem:
    """One audit log entry (:func:`halite_core.audit.entry`), journalled like a return so
    that it survives a database that is locked or away, and is appended in order."""

    entry: dict[str, Any]


Item = (
    LoadItem
    | MinionsItem
    | ReturnItem
    | RawReturn
    | EndtimeItem
    | NoReturnItem
    | KilledItem
    | RerunItem
    | AuditItem
)


def item_jid(item: Item) -> str | None:
    """The job a write belongs to (None for writes of no job, such as audit entries)."""
    if isinstance(item, ReturnItem):
        return item.row.jid
    if isinstance(item, RawReturn):
        jid = item.load.get("jid")
        return jid if isinstance(jid, str) else None
    return getattr(item, "jid", None)
