"""halite's own runner calls, seen from the index: what it keeps of them, and whether
anything feeds it at all.

Every ``salt-run halite.*`` (and every call through salt-api) is itself a Salt runner
job, which Salt hands to the job cache with the runner's answer as its return. Those
answers are copies of data guarded by their own permissions: the audit log
(``view:audit:*``), job listings and details narrowed to what the caller may view. Kept in
the index, they would be readable by anyone who may view ``runner.halite.*`` jobs. So the
index keeps such a job (who ran what, when, its success and retcode) and stores
:data:`WITHHELD` in place of its answer, for every halite runner (``halite.kill`` too: its
answer is what the audit log records of the kill).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from halite_core.encoding import MARKER, Encoded, to_jsonable

PREFIX = "runner.halite."
WITHHELD: dict[str, str] = {
    MARKER: "withheld",
    "reason": "halite runner answers are not kept in the index: they copy data guarded "
    "by its own permissions (job views, the audit log); call the runner again",
}
# What the stored payload of a withheld runner job keeps besides the marker.
PAYLOAD_KEYS = ("fun", "jid", "user", "success", "retcode")


def is_own_runner(function: object) -> bool:
    """Whether a job is a call of one of halite's runners (``runner.halite.<name>``)."""
    return isinstance(function, str) and function.startswith(PREFIX)


def withheld_return(function: object, value: object) -> Encoded | None:
    """What the index stores as the return of a halite runner job: Salt's runner payload
    (``{"fun", "jid", "user", "return", "success"}``, as ``store_job`` hands it over) with
    :data:`WITHHELD` as its ``return``, or the marker alone for the engine's bare answer.
    None for every other job, whose return is stored as it is."""
    payload = value if isinstance(value, Mapping) and "return" in value and "fun" in value else None
    # A load without its function (a return seen before Salt names it) is judged by the
    # payload's own: the answer must not slip through for want of a name.
    if function is None and payload is not None:
        function = payload["fun"]
    if not is_own_runner(function):
        return None
    stored: Any = dict(WITHHELD)
    if payload is not None:
        kept = {key: to_jsonable(payload[key]) for key in PAYLOAD_KEYS if key in payload}
        stored = {**kept, "return": stored}
    # Written directly rather than through encoding.encode, which would escape the marker
    # as a returned mapping that happens to hold a __halite_type__ key.
    return Encoded(json.dumps(stored, separators=(",", ":")))


def withheld_load(load: Mapping[str, Any]) -> Mapping[str, Any]:
    """A load Salt's ``store_job`` makes for a halite runner job carries the runner's
    whole payload under ``return``; the index keeps the load without it."""
    ret = load.get("return")
    function = load.get("fun")
    if function is None and isinstance(ret, Mapping):
        function = ret.get("fun")
    if not is_own_runner(function) or "return" not in load:
        return load
    return {key: value for key, value in load.items() if key != "return"}


def feed_warning(opts: Mapping[str, Any]) -> str | None:
    """Why this master's index may be empty or old, or None when something feeds it.

    halite's index is fed by its returner as the master job cache
    (``master_job_cache: halite``) or from the event bus (``event_return: halite``), and
    by its engine (``engines: [halite]``), which indexes publishes and, unless told
    otherwise, returns. Without any of them the runners would answer from whatever was
    indexed before (or by other masters sharing the database) without a word.
    """
    if opts.get("master_job_cache") == "halite" or "halite" in _names(opts.get("event_return")):
        return None
    engine = _engine_options(opts.get("engines"))
    if engine is not None:
        if engine.get("write_returns") in (False, "false", "False", 0):
            return (
                "this master indexes publishes only: its halite engine has write_returns: "
                "false and neither master_job_cache: halite nor event_return: halite is "
                "set, so no return reaches halite's index"
            )
        return None
    return (
        "nothing on this master feeds halite's index: set master_job_cache: halite (or "
        "event_return: halite) in the master config and restart it; until then this "
        "answer holds only what was indexed earlier or by other masters"
    )


def _names(value: object) -> list[str]:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",")]
    if isinstance(value, (list, tuple)):
        return [name for name in value if isinstance(name, str)]
    return []


def _engine_options(engines: object) -> Mapping[str, Any] | None:
    """The halite engine's options in the master's ``engines`` list, or None."""
    if not isinstance(engines, (list, tuple)):
        return None
    for entry in engines:
        if entry == "halite":
            return {}
        if not isinstance(entry, Mapping):
            continue
        for name, options in entry.items():
            options = options if isinstance(options, Mapping) else {}
            # Salt also runs an engine under another name: {name: {engine_module: halite}}.
            if name == "halite" or options.get("engine_module") == "halite":
                return options
    return None
