"""Recognising state runs (``state.apply``, ``state.highstate``, ``state.sls``, ...) in returns.

A state return is a non-empty mapping whose keys look like ``module_|-id_|-name_|-function``
and whose values are mappings with ``result`` and ``comment``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from halite_core import encoding

SEPARATOR = "_|-"


class StateSummary(NamedTuple):
    total: int
    passed: int
    failed: int
    changed: int
    duration_ms: float


def is_state_function(fun: object) -> bool:
    """``state.*`` on minions, and ``state.*`` runners (orchestration) on the master."""
    return isinstance(fun, str) and (fun.startswith("state.") or fun.startswith("runner.state."))


def runner_payload(fun: object, ret: object) -> tuple[object, bool | None, object]:
    """A runner job's return as Salt stores it is the whole ``salt/run/<jid>/ret`` payload
    (``{"fun", "jid", "user", "return": ..., "success": ...}``): its return value, its
    success and its retcode (from the value, as runners such as ``state.orchestrate``
    report it). Anything else is returned as it is, with success and retcode unknown."""
    if (
        isinstance(fun, str)
        and fun.startswith("runner.")
        and isinstance(ret, Mapping)
        and "return" in ret
        and "fun" in ret
    ):
        value = ret["return"]
        success = ret.get("success")
        retcode = value.get("retcode") if isinstance(value, Mapping) else None
        return value, success if isinstance(success, bool) else None, retcode
    return ret, None, None


def unwrap(ret: object) -> object:
    """The states of an orchestration: ``state.orchestrate`` answers
    ``{"data": {master_id: {states}}, "outputter": "highstate", "retcode": n}``."""
    if isinstance(ret, Mapping) and "outputter" in ret and isinstance(ret.get("data"), Mapping):
        data = ret["data"]
        if len(data) == 1:
            (inner,) = data.values()
            return inner
    return ret


def summarize(ret: object) -> StateSummary | None:
    """Counts for a state return, or ``None`` when the return is not a state run."""
    ret = unwrap(ret)
    if not isinstance(ret, Mapping) or not ret:
        return None
    passed = failed = changed = 0
    duration = 0.0
    # One pass that checks the shape and counts: this runs for every state return ingested.
    for key, state in ret.items():
        if not isinstance(key, str) or key.count(SEPARATOR) != 3:
            return None
        if not isinstance(state, Mapping) or "result" not in state or "comment" not in state:
            return None
        result = state["result"]
        if result is True:
            passed += 1
        elif result is not None:  # False, or anything else a state should not answer
            failed += 1
        if state.get("changes"):
            changed += 1
        duration += _number(state.get("duration"))
    return StateSummary(len(ret), passed, failed, changed, round(duration, 3))


class NotableState(NamedTuple):
    """A state of a run that failed or changed something: what ``state_results`` keeps."""

    key: str
    state_id: str
    function: str
    name: str | None
    sls: str | None
    result: str  # failed or changed
    comment: str | None
    run_num: int | None


KEY_CHARS = 1024
COMMENT_CHARS = 2000


def notable(ret: object) -> tuple[NotableState, ...]:
    """The states of a state return that failed or changed something (a failed state that
    also changed is ``failed``), in run order; empty for a return that is not a state run.
    Call it after :func:`summarize` found failed or changed states: it checks no shape."""
    ret = unwrap(ret)
    if not isinstance(ret, Mapping):
        return ()
    found = []
    for key, state in ret.items():
        result = state["result"]
        failed = result is not True and result is not None
        if not failed and not state.get("changes"):
            continue
        module, state_id, name, function = key.split(SEPARATOR)
        comment = state.get("comment")
        if isinstance(comment, list):  # some states answer a list of lines
            comment = "\n".join(str(line) for line in comment)
        run_num = state.get("__run_num__")
        found.append(
            NotableState(
                _state_key(key),
                _short(state.get("__id__", state_id), 255) or _short(state_id, 255) or "",
                _short(f"{module}.{function}", 255) or "",
                _short(state.get("name", name), KEY_CHARS),
                _short(state.get("__sls__"), 255),
                "failed" if failed else "changed",
                _short(comment, COMMENT_CHARS),
                run_num if type(run_num) is int and -(2**31) <= run_num < 2**31 else None,
            )
        )
    found.sort(key=lambda s: (s.run_num is None, s.run_num or 0, s.key))
    return tuple(found)


def _short(value: object, limit: int) -> str | None:
    """Text a database column takes: at most ``limit`` characters, a NUL (which
    PostgreSQL's text refuses) and a lone surrogate (which no UTF-8 holds) escaped as
    ``\\u0000`` and ``\\udcff``. The return in job_returns keeps the original."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return encoding.column_text(text)[:limit]


KEY_BYTES = 900  # with a jid and a minion id, within PostgreSQL's 2,704 bytes for a key


def _state_key(key: str) -> str:
    """Salt's key of a state as ``state_results`` keeps it: a key longer than
    ``KEY_BYTES`` in UTF-8 is cut, and ends with a digest of the whole, so that two long
    keys that share their beginning stay two."""
    key = encoding.column_text(key)
    data = key.encode("utf-8")
    if len(data) <= KEY_BYTES:
        return key
    digest = hashlib.sha256(data).hexdigest()[:16]
    return data[: KEY_BYTES - 20].decode("utf-8", "ignore") + "...#" + digest


_TEST_WORDS = ("true", "yes", "1")


def is_test_run(fun_args: object) -> bool:
    """Whether a state job's arguments ask for a dry run (``test=True``), as Salt passes
    them in a return: ``["test=True"]``, or a keyword mapping ``{"test": True, ...}``."""
    if not isinstance(fun_args, (list, tuple)):
        return False
    for arg in fun_args:
        if isinstance(arg, str) and arg.startswith("test="):
            return arg[5:].strip().lower() in _TEST_WORDS
        if isinstance(arg, Mapping) and "test" in arg:
            value = arg["test"]
            if isinstance(value, bool):
                return value
            if isinstance(value, int):  # Salt's CLI reads test=1 as the integer 1
                return value == 1
            return isinstance(value, str) and value.strip().lower() in _TEST_WORDS
    return False


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        # Old Salt wrote durations as "12.3 ms".
        try:
            return float(value.split()[0])
        except (ValueError, IndexError):
            return 0.0
    return 0.0


ALREADY_RUNNING = re.compile(r'The function "[^"]+" is running as PID \d+')


def _run_order(state: dict[str, Any]) -> tuple[bool, float, str]:
    """Run order: by ``__run_num__`` (a minion may send one that is no number: last), then
    by id as text (an id may be a number)."""
    run_num = state["run_num"]
    number = isinstance(run_num, (int, float)) and not isinstance(run_num, bool)
    return (not number, run_num if number else 0, str(state["id"]))


def parse(ret: object, succeeded: bool = False) -> dict[str, Any]:
    """A minion's return of a ``state.*`` job, for people: what kind it is and, for a state
    run, each state in run order with the counts.

    ``kind`` is ``states`` (a state run), ``render_error`` (a failed return that is a list
    of error strings, e.g. a failed render), ``already_running`` (Salt refused because a
    state run was in progress) or ``other`` (any other return, kept as it is). A list of
    strings from a return that ``succeeded`` (``state.show_states``, ``state.running``) is
    ``other``: only a failed one is an error.
    """
    ret = unwrap(ret)
    states = _states(ret)
    if states is not None:
        states.sort(key=_run_order)
        failing = [
            {"id": s["id"], "comment": s["comment"]} for s in states if s["result"] == "failed"
        ]
        changed = sum(1 for s in states if s["changes"])
        return {
            "kind": "states",
            "states": states,
            "counts": {
                "total": len(states),
                "passed": sum(1 for s in states if s["result"] == "passed"),
                "failed": len(failing),
                "changed": changed,
                "duration_ms": round(sum(s["duration_ms"] for s in states), 3),
            },
            "failing": failing,
        }
    if (
        not succeeded
        and isinstance(ret, list)
        and ret
        and all(isinstance(item, str) for item in ret)
    ):
        if any(ALREADY_RUNNING.search(item) for item in ret):
            return {"kind": "already_running", "messages": list(ret)}
        return {"kind": "render_error", "errors": list(ret)}
    return {"kind": "other"}


def _result(result: object) -> str:
    """``passed`` (True), ``not_run`` (None: test mode) or ``failed`` (anything else)."""
    return "passed" if result is True else "not_run" if result is None else "failed"


def _states(ret: object) -> list[dict[str, Any]] | None:
    """Each state of a state return, in one pass that also checks the shape (the same
    rules as :func:`summarize`); ``None`` when ``ret`` is not a state run."""
    if not isinstance(ret, Mapping) or not ret:
        return None
    states = []
    for key, value in ret.items():
        if not isinstance(key, str) or key.count(SEPARATOR) != 3:
            return None
        if not isinstance(value, Mapping) or "result" not in value or "comment" not in value:
            return None
        module, state_id, name, function = key.split(SEPARATOR)
        get = value.get
        states.append(
            {
                "id": get("__id__", state_id),
                "function": f"{module}.{function}",
                "name": get("name", name),
                "sls": get("__sls__"),
                "result": _result(value["result"]),
                "duration_ms": duration
                if type(duration := get("duration")) is float
                else _number(duration),
                "comment": value["comment"],
                "changes": get("changes") or {},
                "run_num": get("__run_num__"),
                "start_time": get("start_time"),
            }
        )
    return states
