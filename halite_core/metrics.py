"""halite's Prometheus metrics, on a registry of halite's own (never the global default one).

Nothing here knows Salt or Tornado. The engine's state machine (halite_core.active), the
committer (halite_core.durability.committer) and the service record through the small
methods of :class:`Metrics`; the gauges are read when ``/metrics`` is scraped, from the
callables the engine hands to :meth:`Metrics.watch_engine` and :meth:`Metrics.watch_storage`
(the running jobs held in memory, the journals and the spool on disk), so that they cost
nothing on the ingest path. :func:`render` is the text a scrape receives.

Labels stay few: a function keeps its name only among the first ``max_functions`` distinct
ones seen (every runner function is ``runner.*``, every wheel function ``wheel.*``), the
rest are ``other``; a jid or a minion id is never a label.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MAX_FUNCTIONS = 50
OTHER_FUNCTION = "other"
UNKNOWN_FUNCTION = "unknown"
GROUPED_PREFIXES = ("runner.", "wheel.")
RETURN_RESULTS = ("success", "failed")
DB_ERROR_KINDS = ("unavailable", "refused")
# Seconds from a return's arrival to its commit: a batch every flush_interval (0.1 s) at
# best; minutes while the database is locked or away and the writes wait in the spool.
DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
# The text format every Prometheus reads (names and labels here are plain ASCII, so the
# body is the same in the newer 1.0.0 that recent clients announce).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Running = Callable[[], "tuple[int, float | None]"]  # (running jobs, oldest one's age in s)
Size = Callable[[], int]
Replica = Callable[[], "tuple[str, float | None]"]  # (where reads go, the replica's lag in s)
T = TypeVar("T")


class FunctionLabels:
    """The label a job's function gets: its own name among the first ``limit`` distinct
    names seen, ``runner.*`` / ``wheel.*`` for any runner or wheel function, ``other``
    past the limit and ``unknown`` when there is none."""

    def __init__(self, limit: int = MAX_FUNCTIONS) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, function: str | None) -> str:
        if not function or not isinstance(function, str):
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


class _Gauges(Collector):
    """The gauges, computed at each scrape from what the engine handed over."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(empty=True))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families())

    def _families(self, empty: bool = False) -> list[Metric]:
        running = GaugeMetricFamily(
            "halite_running_jobs",
            "Jobs the engine holds as running (published, some minion not returned or settled).",
        )
        oldest = GaugeMetricFamily(
            "halite_oldest_running_job_age_seconds",
            "Seconds since the publish of the oldest job the engine holds as running (0: none).",
        )
        backlog = GaugeMetricFamily(
            "halite_journal_backlog_bytes",
            "Bytes of the journals not taken by the committer yet (neither committed nor spooled).",
        )
        spool = GaugeMetricFamily(
            "halite_spool_bytes",
            "Bytes of writes waiting in the spool for the database (rejected/ not counted).",
        )
        on_replica = GaugeMetricFamily(
            "halite_reads_on_replica",
            "1 while the runners', the API's and the page's reads go to read_db_url's replica,"
            " 0 while they go to the primary (the replica behind or not answering).",
        )
        lag = GaugeMetricFamily(
            "halite_replica_lag_seconds",
            "How far behind the primary read_db_url's replica was at its last measure"
            " (absent: not known).",
        )
        families: list[Metric] = [running, oldest, backlog, spool, on_replica, lag]
        if empty:
            return families
        watched = self._metrics.watched
        if watched.running is not None:
            none: tuple[int, float | None] = (0, None)
            count, age = _safely(watched.running, none)
            running.add_metric([], count)
            oldest.add_metric([], max(age or 0.0, 0.0))
        if watched.backlog is not None:
            backlog.add_metric([], _safely(watched.backlog, 0))
        if watched.spool is not None:
            spool.add_metric([], _safely(watched.spool, 0))
        if watched.replica is not None:
            unknown: tuple[str, float | None] = ("primary", None)
            source, seconds = _safely(watched.replica, unknown)
            on_replica.add_metric([], 1 if source == "replica" else 0)
            if seconds is not None and seconds != float("inf"):
                lag.add_metric([], seconds)
        return [family for family in families if family.samples]


def _safely(call: Callable[[], T], default: T) -> T:
    # A scrape must answer even when one source fails (a directory gone, say).
    try:
        return call()
    except Exception:  # noqa: BLE001
        log.warning("halite metrics: a gauge could not be read", exc_info=True)
        return default


class Watched:
    """What the gauges read: set by the engine of this process (None: not measured here)."""

    def __init__(self) -> None:
        self.running: Running | None = None
        self.backlog: Size | None = None
        self.spool: Size | None = None
        self.replica: Replica | None = None


class Metrics:
    """The process's metrics, on a registry of their own (tests make fresh ones)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, max_functions: int = MAX_FUNCTIONS
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.watched = Watched()
        self._functions = FunctionLabels(max_functions)
        r = self.registry
        self._jobs_completed = Counter(
            "halite_jobs_completed",
            "Jobs completed, by function (the first 50 distinct keep their name; runner.* and"
            " wheel.* grouped; the rest other) and the job's result (failed, changed, pass).",
            ["function", "result"],
            registry=r,
        )
        self._returns = Counter(
            "halite_minion_returns",
            "Minion returns the engine handled, by result: failed (success false or a non-zero"
            " retcode, which Salt sets for a failed state) or success.",
            ["result"],
            registry=r,
        )
        self._returns_by = {result: self._returns.labels(result) for result in RETURN_RESULTS}
        self._no_return = Counter(
            "halite_no_return_settled",
            "Minions the engine settled as no_return (silent, or no longer running the job).",
            registry=r,
        )
        self._kills = Counter(
            "halite_kills",
            "saltutil.kill_job publications the engine saw (halite.kill, the page's Kill"
            " button, or by hand).",
            registry=r,
        )
        self._reruns = Counter(
            "halite_reruns",
            "Jobs halite published to run a job again (halite.rerun, the API, the page's"
            " Re-run buttons), from their <tag_prefix>/<jid>/rerun events.",
            registry=r,
        )
        self._events = Counter(
            "halite_events", "Events from the master's event bus the engine handled.", registry=r
        )
        self._delay = Histogram(
            "halite_event_to_database_seconds",
            "Per committed batch: seconds from the arrival of its first minion return (the"
            " return event's _stamp, or when Salt's worker journalled it) to the batch's commit.",
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self._db_errors = Counter(
            "halite_db_errors",
            "Failed database writes: unavailable (down, locked, full: the writes are spooled)"
            " or refused (the database rejects the write itself: set aside in rejected/).",
            ["kind"],
            registry=r,
        )
        self._db_errors_by = {kind: self._db_errors.labels(kind) for kind in DB_ERROR_KINDS}
        r.register(_Gauges(self))

    # ------------------------------------------------------------------ recording
    def function_label(self, function: str | None) -> str:
        return self._functions.label(function)

    def job_completed(self, function: str | None, result: str) -> None:
        self._jobs_completed.labels(function=self.function_label(function), result=result).inc()

    def engine_counts(
        self,
        events: int,
        returns: Mapping[str, int],
        no_return: int,
        kills: int,
        reruns: int = 0,
    ) -> None:
        """What the engine tallied since it last handed its counts over (once per pass of
        its loop, not per event)."""
        if events:
            self._events.inc(events)
        for result, count in returns.items():
            if count:
                self._returns_by.get(result, self._returns_by["success"]).inc(count)
        if no_return:
            self._no_return.inc(no_return)
        if kills:
            self._kills.inc(kills)
        if reruns:
            self._reruns.inc(reruns)

    def batch_committed(self, delay: float | None) -> None:
        """A batch was committed; ``delay``: seconds since its first return arrived (None:
        it held no return)."""
        if delay is not None:
            self._delay.observe(max(delay, 0.0))

    def db_error(self, kind: str) -> None:
        self._db_errors_by.get(kind, self._db_errors_by["refused"]).inc()

    # ------------------------------------------------------------------ gauges
    def watch_engine(self, running: Running) -> None:
        """``running()``: how many jobs the engine holds as running, and the age in seconds
        of the oldest (None: none); called at each scrape."""
        self.watched.running = running

    def watch_replica(self, replica: Replica) -> None:
        """``replica()``: where the reads went last ("replica" or "primary"), and the
        replica's lag in seconds (None: not known); called at each scrape."""
        self.watched.replica = replica

    def watch_storage(self, backlog: Size, spool: Size) -> None:
        """Bytes of the journals not committed yet, and of the spool; called at each scrape."""
        self.watched.backlog = backlog
        self.watched.spool = spool


def render(metrics: Metrics) -> bytes:
    """The Prometheus text exposition of ``metrics`` (served with :data:`CONTENT_TYPE`)."""
    return generate_latest(metrics.registry)


_instance: tuple[int, Metrics] | None = None
_instance_lock = threading.Lock()


def get_metrics() -> Metrics:
    """This process's :class:`Metrics`. A process forked from it starts afresh: its counts
    are its own (Salt forks its workers from the master)."""
    global _instance
    pid = os.getpid()
    current = _instance
    if current is not None and current[0] == pid:
        return current[1]
    with _instance_lock:
        if _instance is None or _instance[0] != pid:
            _instance = (pid, Metrics())
        return _instance[1]
