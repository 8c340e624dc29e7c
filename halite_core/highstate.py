"""Recognising state runs (``state.apply``, ``state.highstate``, ``state.sls``, ...) in returns.

A state return is a non-empty mapping whose keys look like ``module_|-id_|-name_|-function``
and whose values are mappings with ``result`` and ``comment``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

SEPARATOR = "_|-"


class StateSummary(NamedTuple):
    total: int
    passed: int
    failed: int
    changed: int
    duration_ms: float


def is_state_function(fun: object) -> bool:
    return isinstance(fun, str) and fun.startswith("state.")


def summarize(ret: object) -> StateSummary | None:
    """Counts for a state return, or ``None`` when the return is not a state run."""
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
        elif result is False:
            failed += 1
        if state.get("changes"):
            changed += 1
        duration += _number(state.get("duration"))
    return StateSummary(len(ret), passed, failed, changed, round(duration, 3))


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
