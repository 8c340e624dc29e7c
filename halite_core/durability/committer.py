"""Write-behind for Salt's job path: journal each write at once, commit them in batches.

Salt calls the job cache once per minion return, from several worker processes. One SQL
transaction per call costs more than everything else Salt does for a return, so a
:class:`WriteBehind` keeps each write in memory and in an append-only journal file of its
process, and a background thread commits what has gathered in one transaction every
``flush_interval`` seconds (sooner when ``batch_size`` writes are waiting).

Durability is that of Salt's own local_cache (a file write, no fsync): when a process dies
before its batch was committed, the next process to start finds the dead process's journal
and hands it to the spool, which replays it. Every write is idempotent, so replaying a
journal whose batch was in fact committed changes nothing. A batch the database refuses is
spooled the same way.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing.util
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halite_core.durability.spool import Spool

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".jsonl"
SPOOL_OP = "journal"
_journal_seq = itertools.count()  # one sequence per process: several writers may share a dir
_open_journals: set[Path] = set()  # journals this process is still writing
CLOSE_SECONDS = 2.0  # longest a process's exit waits for its last batch
IDLE_SECONDS = 1.0  # flush_interval 0: how often the idle writer still replays the spool
RECOVERING = ".recovering-"


def process_stamp(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), or None
    where that cannot be read: a pid alone may be reused by a new process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def _owner(pid: int) -> str:
    """``<pid>`` or ``<pid>.<start>``: who owns a journal or a claim."""
    stamp = process_stamp(pid)
    return f"{pid}.{stamp}" if stamp else str(pid)


def _alive(owner: str) -> bool:
    """Whether the process named by :func:`_owner` still runs (the same process, not a
    new one that got its pid)."""
    pid_text, _, stamp = owner.partition(".")
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not stamp or process_stamp(pid) in (None, stamp)


class WriteBehind:
    """One per process and database: queue + journal + flusher thread."""

    def __init__(
        self,
        apply: Callable[[list[tuple[str, Any]]], object],
        spool: Spool,
        journal_dir: str | os.PathLike[str],
        interval: float,
        batch_size: int,
        is_outage: Callable[[BaseException], bool],
        tick: Callable[[], object] | None = None,
    ) -> None:
        self._apply = apply
        self._spool = spool
        self._dir = Path(journal_dir)
        self._interval = interval
        self._batch_size = batch_size
        self._is_outage = is_outage
        self._tick = tick  # run after every flush, e.g. to replay the spool
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards the queue and the current journal
        self._flush_lock = threading.Lock()  # one batch at a time
        self._wake = threading.Event()
        self._pending: list[tuple[str, Any]] = []
        self._journal: Path | None = None
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pid(self) -> int:
        return self._pid

    # ------------------------------------------------------------------ producer side
    def submit(self, entries: list[tuple[str, Any]]) -> None:
        """Journal and queue writes, each a JSON line and its parsed item; returns at once,
        whatever the state of the database: Salt's job path calls this."""
        data = "".join(line + "\n" for line, _ in entries).encode("utf-8")
        with self._lock:
            try:
                if self._fd is None:
                    self._open_journal()
                assert self._fd is not None
                os.write(self._fd, data)
            except OSError as exc:
                # A full or read-only disk: the writes are held in memory only until the
                # next commit (lost if this process dies first), never sent to the
                # database from here.
                log.error(
                    "halite: cannot journal %d writes (%s); kept in memory", len(entries), exc
                )
            self._pending.extend(entries)
            due = self._interval <= 0 or len(self._pending) >= self._batch_size
        if self._thread is None:
            self._start()
        if due:
            self._wake.set()

    def _open_journal(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        name = f"{self._pid}-{next(_journal_seq):08d}-{_owner(self._pid)}{JOURNAL_SUFFIX}"
        self._journal = self._dir / name
        _open_journals.add(self._journal)
        self._fd = os.open(self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="halite-writer", daemon=True)
            self._thread.start()
        # A clean exit flushes; Salt's worker processes end through multiprocessing, which
        # runs its finalizers but not atexit.
        atexit.register(self.close)
        multiprocessing.util.Finalize(self, self.close, exitpriority=100)

    def _run(self) -> None:
        while True:
            # flush_interval 0: commit as soon as something is queued (a submit wakes us).
            self._wake.wait(self._interval if self._interval > 0 else IDLE_SECONDS)
            self._wake.clear()
            try:
                self.flush()
                if self._tick is not None and not self._closed:
                    self._tick()
            except Exception:  # noqa: BLE001 - the writer thread must survive anything
                log.exception("halite: background flush failed")
            if self._closed:
                return

    # ------------------------------------------------------------------ consumer side
    def flush(self) -> int:
        """Commit everything queued so far in one transaction; returns how many writes."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                journal, fd = self._journal, self._fd
                self._journal = self._fd = None
            if fd is not None:
                os.close(fd)
            if not batch:
                self._drop(journal)
                return 0
            try:
                self._apply(batch)
            except Exception as exc:  # noqa: BLE001
                reason = f"{type(exc).__name__}: {exc}"
                if self._is_outage(exc):
                    log.error(
                        "halite: database unavailable (%s); %d writes spooled", exc, len(batch)
                    )
                else:
                    log.error(
                        "halite: batch of %d writes failed; spooled", len(batch), exc_info=True
                    )
                lines = [line for line, _ in batch]
                if self._spool.put(SPOOL_OP, lines, reason=reason) is None:
                    if journal is not None:
                        _open_journals.discard(journal)  # left for recovery
                    return 0
            self._drop(journal)
            return len(batch)

    @staticmethod
    def _drop(journal: Path | None) -> None:
        if journal is not None:
            journal.unlink(missing_ok=True)
            _open_journals.discard(journal)

    def close(self, wait: float | None = None) -> bool:
        """Commit what is queued before the process ends, waiting at most ``wait`` seconds
        (``CLOSE_SECONDS``): a database that is locked or frozen must not hold up the exit
        of a Salt process. What is not committed by then stays in the journal, which the
        next process to start (or the engine) recovers. True when all was committed."""
        if self._closed or os.getpid() != self._pid:
            return True
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(CLOSE_SECONDS if wait is None else wait)
        if thread.is_alive():
            log.warning(
                "halite: the database did not take the last writes in time; they stay in "
                "the journal %s for recovery",
                self._dir,
            )
            return False
        return True


def _journal_owner(name: str) -> tuple[str, str] | None:
    """``(journal name, the process that may still own it)`` for a journal file name: a
    live journal ``<pid>-<seq>-<pid>.<start>.jsonl`` (owned by its writer; older names
    ``<pid>-<seq>.jsonl``) or a claim ``.<journal>.recovering-<pid>.<start>`` (owned by
    the process recovering it)."""
    try:
        if name.endswith(JOURNAL_SUFFIX) and not name.startswith("."):
            parts = name[: -len(JOURNAL_SUFFIX)].split("-")
            owner = parts[2] if len(parts) > 2 else parts[0]
            int(owner.partition(".")[0])
            return name, owner
        if name.startswith(".") and RECOVERING in name:
            journal, claimer = name[1:].rsplit(RECOVERING, 1)
            int(claimer.partition(".")[0])
            if journal.endswith(JOURNAL_SUFFIX):
                return journal, claimer
    except ValueError:
        return None
    return None


_recovering = threading.Lock()  # one recovery at a time in a process (claims carry its pid)


def recover_journals(journal_dir: str | os.PathLike[str], spool: Spool) -> int:
    """Hand the journals nobody writes any more (their process died, or an earlier process
    with this pid did) to the spool, and so the claims of recoveries that died half-way;
    returns how many."""
    with _recovering:
        return _recover_journals(Path(journal_dir), spool)


def _recover_journals(directory: Path, spool: Spool) -> int:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    recovered = 0
    for name in sorted(names):
        owned = _journal_owner(name)
        if owned is None:
            continue
        journal, owner = owned
        path = directory / name
        me = _owner(os.getpid())
        if path in _open_journals or (owner != me and _alive(owner)):
            continue  # still being written, or recovered by a live process
        claimed = directory / f".{journal}{RECOVERING}{me}"
        if path != claimed:
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another process recovers it
        text = claimed.read_text(encoding="utf-8", errors="replace")
        lines = [line for line in text.split("\n") if line.strip()]
        if lines and spool.put(SPOOL_OP, lines, reason=f"journal {journal}") is None:
            os.rename(claimed, directory / journal)
            continue
        claimed.unlink(missing_ok=True)
        recovered += 1
        log.warning("halite: recovered %d unflushed writes of journal %s", len(lines), journal)
    return recovered
