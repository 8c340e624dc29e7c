"""halite's Prometheus metrics: counters and gauges on a registry of halite's own.

Nothing here knows Salt or Tornado: the engine's state machine, the committer and the HTTP
server call the small ``record`` methods below, and ``/metrics`` renders :attr:`Metrics.registry`.
Labels stay few: a function keeps its name only among the first ``max_functions`` distinct
ones seen (runner and wheel functions are grouped first), a jid or a minion id is never a
label.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import CollectorRegistry, Counter

MAX_FUNCTIONS = 50
OTHER_FUNCTION = "other"
UNKNOWN_FUNCTION = "unknown"
GROUPED_PREFIXES = ("runner.", "wheel.")


class FunctionLabels:
    """The label a job's function gets: its name among the first ``limit`` distinct ones seen,
    ``runner.*`` / ``wheel.*`` for any runner or wheel function, ``other`` past the limit."""

    def __init__(self, limit: int = MAX_FUNCTIONS) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, function: str | None) -> str:
        if not function:
            return UNKNOWN_FUNCTION
        for prefix in GROUPED_PREFIXES:
            if function.startswith(prefix):
                return prefix + "*"
        if function in self._seen:
            return function
        with self._lock:
            if function in self._seen:
                return function
            if len(self._seen) >= self._limit:
                return OTHER_FUNCTION
            self._seen.add(function)
        return function


class Metrics:
    """The process's metrics, on a registry of their own (tests make fresh ones)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, max_functions: int = MAX_FUNCTIONS
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._functions = FunctionLabels(max_functions)
        self._jobs_completed = Counter(
            "halite_jobs_completed",
            "Jobs the engine saw complete, by function (capped) and result.",
            ["function", "result"],
            registry=self.registry,
        )
        self._reruns = Counter(
            "halite_reruns",
            "Jids published again while the engine still followed them (a rerun).",
            registry=self.registry,
        )

    def function_label(self, function: str | None) -> str:
        return self._functions.label(function)

    def job_completed(self, function: str | None, result: str) -> None:
        self._jobs_completed.labels(function=self.function_label(function), result=result).inc()

    def rerun(self) -> None:
        self._reruns.inc()


_instance: tuple[int, Metrics] | None = None
_instance_lock = threading.Lock()


def get_metrics() -> Metrics:
    """This process's :class:`Metrics` (a forked child starts from zero, as its counters are
    its own)."""
    global _instance
    pid = os.getpid()
    current = _instance
    if current is not None and current[0] == pid:
        return current[1]
    with _instance_lock:
        if _instance is None or _instance[0] != pid:
            _instance = (pid, Metrics())
        return _instance[1]
