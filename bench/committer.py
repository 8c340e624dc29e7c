"""The engine's committer in a process of its own, as the engine's process runs it on a
master, for the benchmarks: start it, run Salt's calls in other processes, stop it."""

from __future__ import annotations

import multiprocessing
import resource
import time
from typing import Any

from halite_core.config import Settings
from halite_core.jobcache import JobStore
from halite_core.perprocess import freeze_long_lived


def _run(opts: dict[str, Any], ready: Any, stop: Any, peak: Any, cpu: Any) -> None:
    store = JobStore(Settings.from_opts(opts))
    committer = store.committer(engine=True)
    freeze_long_lived()  # as the engine's process does once started
    while not committer.holds_lock():
        committer.run_once()
        time.sleep(0.01)
    ready.set()
    stop.wait()
    store.close(wait=600)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak.value = usage.ru_maxrss  # KiB
    cpu.value = usage.ru_utime + usage.ru_stime


class EngineCommitter:
    """``with EngineCommitter(opts) as engine: ...``; ``engine.peak_rss_mb`` and
    ``engine.cpu_seconds`` (the process's, user and system) afterwards."""

    def __init__(self, opts: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._peak = ctx.Value("q", 0)
        self._cpu = ctx.Value("d", 0.0)
        keep = {k: opts[k] for k in ("cachedir", "id", "engines", "halite") if k in opts}
        self._proc = ctx.Process(
            target=_run, args=(keep, self._ready, self._stop, self._peak, self._cpu)
        )
        self.peak_rss_mb = 0.0
        self.cpu_seconds = 0.0

    def __enter__(self) -> EngineCommitter:
        self._proc.start()
        if not self._ready.wait(120):
            raise RuntimeError("the engine's committer did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._proc.join(600)
        self.peak_rss_mb = self._peak.value / 1024
        self.cpu_seconds = self._cpu.value
