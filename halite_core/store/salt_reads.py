"""Salt's job cache interface, read from the committed index: loads, returns and minions as
Salt's ``local_cache`` gives them back. halite_core.jobcache adds what is accepted but not
committed yet (the journals and the spool)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Text, cast, type_coerce


def _latest(*moments: dt.datetime | None) -> dt.datetime | None:
    known = [moment for moment in moments if moment is not None]
    return max(known) if known else None


def is_master_job(function: object) -> bool:
    """A job the master runs itself (a runner or wheel job), whose publish is its own."""
    return isinstance(function, str) and function.startswith(("runner.", "wheel."))


def _placeholder(load: Mapping[str, Any]) -> bool:
    """A load made from a return that arrived before its publish (no target yet)."""
    return "tgt" not in load and "id" in load


def salt_load(load: Mapping[str, Any]) -> dict[str, Any]:
    """A load as Salt's job cache interface gives it back. A runner or wheel job's
    publish is the engine's ``salt/run/<jid>/new`` (kept with its arguments for halite's
    own views), but Salt's ``local_cache`` holds only what Salt's store_job handed it,
    which has no ``arg``: ``jobs.list_job`` shows ``Arguments: []`` there, and so here."""
    load = dict(load)
    if is_master_job(load.get("fun")):
        load.pop("arg", None)
    return load


def _salt_return(
    value: Any, retcode: int | None, success: bool | None, out: str | None, function: str | None
) -> dict[str, Any]:
    """One minion's entry in Salt's get_jid. A runner's or wheel job's return is stored by
    Salt's store_job with the outcome inside it, so Salt's own cache gives ``return`` only."""
    entry: dict[str, Any] = {"return": value}
    if not is_master_job(function):
        if retcode is not None:
            entry["retcode"] = retcode
        if success is not None:
            entry["success"] = success
    if out is not None:
        entry["out"] = out
    return entry


def _raw(column: Any, is_sqlite: bool) -> Any:
    """A JSON column as the database holds it, for :func:`encoding.loads`. PostgreSQL: its
    JSON text (a cast in SQL, else the driver parses jsonb itself and a JSON string value
    would come back as a Python string indistinguishable from JSON text). SQLite: the
    stored value untouched (a top-level number is stored as a number by the column's
    numeric affinity, and casting it to text would round it to 15 digits)."""
    if is_sqlite:
        return type_coerce(column, Text).label(column.key)
    return cast(column, Text).label(column.key)
