"""A Salt worker in a real process, driven over a pipe: the tests of the write pipeline
(tests/test_pipeline_faults.py) make it journal returns, cut its writes short, fork and
run committer passes, then kill it with SIGKILL.

The process is spawned, not forked, so that it starts as Salt's own processes do: without
the test process's threads, journal writers and locks.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import resource
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from halite_core.config import Settings
from halite_core.durability.journal import writer_for
from halite_core.jobcache import JobStore

CTX = multiprocessing.get_context("spawn")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def serve(settings: Settings, conn: Connection) -> None:
    """Answer ``(op, args)`` messages until ``None`` (then close the store)."""
    store = JobStore(settings)
    conn.send(os.getpid())
    while True:
        msg = conn.recv()
        if msg is None:
            conn.send(store.close())
            return
        op, args = msg
        conn.send(_OPS[op](store, settings, *args))


def _record(store: JobStore, settings: Settings, *args: Any) -> Any:
    return store.record(*args)


def _audit(store: JobStore, settings: Settings, entry: dict[str, Any]) -> bool:
    store.record_audit(entry)
    return True


def _raw(store: JobStore, settings: Settings, data: bytes) -> bool:
    """Bytes written straight onto this process's open journal: what a write left when it
    was cut short (the journal must be open: record something first)."""
    fd = writer_for(settings.journal_dir)._fd
    assert fd is not None, "no journal open yet"
    os.write(fd, data)
    return True


def _position(store: JobStore, settings: Settings) -> tuple[str | None, int]:
    return writer_for(settings.journal_dir).position()


def _file_size_limit(store: JobStore, settings: Settings, limit: int) -> bool:
    """Files of this process may grow to ``limit`` bytes at most (-1: no limit): a write
    past it writes what fits and returns its count, as on a disk that is nearly full."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the write kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return True


def _committer_pass(store: JobStore, settings: Settings, engine: bool) -> bool:
    """One pass of this process's committer (the engine's if ``engine``); whether this
    process holds the commit lock afterwards."""
    committer = store.committer(engine=engine)
    committer.run_once()
    return committer.holds_lock()


def _fork(store: JobStore, settings: Settings) -> int:
    """Fork a child that lives until killed, as Salt forks a runner job from a worker (a
    forked child keeps every descriptor of its parent); its pid."""
    child = os.fork()
    if child == 0:
        time.sleep(3600)  # the test kills it
        os._exit(0)
    return child


_OPS = {
    "record": _record,
    "audit": _audit,
    "raw": _raw,
    "position": _position,
    "file_size_limit": _file_size_limit,
    "committer_pass": _committer_pass,
    "fork": _fork,
}


class Worker:
    """The test's end of a :func:`serve` process: ``worker(op, *args)`` returns its answer."""

    def __init__(self, settings: Settings) -> None:
        self.conn, there = CTX.Pipe()
        self.proc = CTX.Process(target=serve, args=(settings, there))
        self.proc.start()
        there.close()
        self.pid: int = self.conn.recv()

    def __call__(self, op: str, *args: Any) -> Any:
        self.conn.send((op, args))
        return self.conn.recv()

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone. Not ``join``: a child it forked
        keeps the sentinel pipe open, and ``join`` would wait for that child too."""
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        while self.proc.is_alive():  # reaps it
            time.sleep(0.005)
        self.conn.close()
