"""The committer: one per master, it drains every process's journal into the database.

Salt calls the job cache once per minion return, from several worker processes; they only
append to their journals (halite_core.durability.journal). One committer takes the lines
in order, journal by journal, and commits them in batches of ``batch_size`` every
``flush_interval`` seconds, through the one path every write takes,
:func:`commit_or_spool`: commit the batch; if the database is away, spool it; if the
database refuses it, try each write alone and set aside (``rejected/``) those it refuses.
On PostgreSQL a batch is split by job and its parts committed in ``lanes`` transactions at
once (the ``commit_lanes`` option, 2 by default; :func:`split_by_job`): the database and the
committer work at the same time instead of waiting for each other.

Who commits is decided by two ``flock`` locks in the journal directory, which the kernel
releases when their process dies:

- ``.committer.lock``: held by the one process that commits. With the engine configured it
  is the engine's process; without, the first Salt process that journals something.
- ``.engine.lock``: held by the engine while it runs. A Salt worker that defers to the
  engine commits only while no engine holds it (the engine is down or restarting).

Crash safety: a line is in the journal before Salt's call returns. The committer records
how far it has taken each journal in ``.committed`` only after the lines are committed or
spooled, and removes a journal only once it is closed (its process moved on to a newer one,
or died) and taken whole. A committer killed at any point leaves at worst lines committed
that ``.committed`` does not count yet; they are committed again, and every write is
idempotent.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import logging
import multiprocessing.util
import os
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from halite_core.durability.journal import (
    COMMITTED,
    SPOOL_OP,
    alive,
    close_inherited,
    item_from_line,
    journal_owner,
    owner_of,
    read_committed,
    write_committed,
)
from halite_core.durability.spool import Spool
from halite_core.metrics import get_metrics
from halite_core.store.ops import RawReturn, ReturnItem, item_jid

log = logging.getLogger(__name__)

LOCK = ".committer.lock"
ENGINE_LOCK = ".engine.lock"
CLOSE_SECONDS = 2.0  # longest a process's exit waits for its last batch
IDLE_SECONDS = 0.01  # flush_interval 0: how often the committer looks for new lines
# Batches of fewer writes than this are committed in one transaction, whatever the lanes.
LANE_MIN = 64
READ_BYTES = 4 << 20  # read at most this much of a journal at once: memory stays bounded
# A batch is committed once it holds batch_size writes or this many bytes of lines: a
# batch of large returns stays a few tens of MB.
BATCH_BYTES = 32 << 20

Entry = tuple[str, Any]  # a journal line and the operation it holds
Span = tuple[int, int, list[Entry]]  # where this process journalled some entries
LOCAL_MAX = 32 << 20  # bytes of own lines remembered for the drain at most (memory bound)
Apply = Callable[[Sequence[Entry]], object]


def commit_or_spool(
    apply: Apply,
    spool: Spool,
    entries: Sequence[Entry],
    is_outage: Callable[[BaseException], bool],
    on_outage: str = "spool",
) -> bool:
    """The one path of every write to the database: commit ``entries`` in one transaction;
    if the database is away, spool them (``on_outage="raise"``: raise, for the spool's own
    replay, which keeps the file); if it refuses the batch, try each write alone and set
    aside in ``rejected/`` each one it refuses, so that one bad write does not take its
    batch with it. False only when the writes could be neither committed nor spooled (the
    spool is full): the caller keeps them."""
    left, exc = commit_or_leave(apply, spool, entries, is_outage)
    if exc is None:
        return True
    return _on_outage(spool, left, exc, on_outage)


def commit_or_leave(
    apply: Apply,
    spool: Spool,
    entries: Sequence[Entry],
    is_outage: Callable[[BaseException], bool],
) -> tuple[Sequence[Entry], Exception | None]:
    """:func:`commit_or_spool` up to the spool: the writes left because the database is
    away (to be spooled by the caller), and why; ``((), None)`` when all were committed
    or set aside."""
    if not entries:
        return (), None
    metrics = get_metrics()
    try:
        apply(entries)
        metrics.batch_committed(first_return_delay(entries))
        return (), None
    except Exception as exc:  # noqa: BLE001
        if is_outage(exc):
            metrics.db_error("unavailable")
            return entries, exc
        metrics.db_error("refused")
        log.warning(
            "halite: a batch of %d writes failed (%s); retrying one by one", len(entries), exc
        )
    for done, (line, item) in enumerate(entries):
        try:
            apply([(line, item)])
        except Exception as exc:  # noqa: BLE001
            if is_outage(exc):
                metrics.db_error("unavailable")
                return entries[done:], exc
            metrics.db_error("refused")
            spool.reject(SPOOL_OP, [line], reason=f"{type(exc).__name__}: {exc}")
    return (), None


def first_return_delay(entries: Sequence[Entry], now: float | None = None) -> float | None:
    """Seconds from the arrival of the first minion return in ``entries`` (the event's
    ``_stamp`` the engine stored, or when Salt's worker journalled it) to ``now``; None
    when they hold no return. One lookup per batch: the first return is the batch's
    oldest in its journal's order, so this is close to the longest wait in the batch."""
    for _, item in entries:
        if isinstance(item, RawReturn):
            at = item.at
        elif isinstance(item, ReturnItem):
            at = item.row.returned_at
        else:
            continue
        return (time.time() if now is None else now) - at.timestamp()
    return None


def _on_outage(spool: Spool, entries: Sequence[Entry], exc: Exception, on_outage: str) -> bool:
    if on_outage == "raise":
        raise exc
    log.error("halite: database unavailable (%s); %d writes spooled", exc, len(entries))
    reason = f"{type(exc).__name__}: {exc}"
    return spool.put(SPOOL_OP, [line for line, _ in entries], reason=reason) is not None


class _Lock:
    """A non-blocking ``flock`` on a file of the journal directory, held by this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.pid = os.getpid()
        _locks.add(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # The directory is unusable (a full or read-only disk): no process can journal
            # there nor hold this lock, and the spool's claims keep replays apart.
            log.error("halite: cannot take the lock %s (%s)", self.path, exc)
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def free(self) -> bool:
        """Whether nobody holds the lock (taken and let go at once to find out)."""
        if self._fd is not None:
            return False
        if not self.take():
            return False
        self.release()
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor lets go of the flock
            self._fd = None


_locks: weakref.WeakSet[_Lock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A flock belongs to the open file, which a forked child shares: a child that kept
    # the descriptor (Salt forks runner jobs from its workers) would hold the lock for as
    # long as it lives, and no engine could take it. The child closes it; the parent
    # keeps its lock.
    close_inherited(_locks)
    _committers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Committer:
    """Drains a journal directory into the database while this process holds its lock.

    ``apply`` commits prepared entries (raising on failure); ``tick`` runs after each pass
    (the spool's replay), given how long it may wait for a tick another thread runs.
    ``engine``: this is the engine's committer, which takes the lock whoever held it
    before. ``defer``: a Salt worker's, which commits only while no engine runs."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        apply: Apply,
        spool: Spool,
        is_outage: Callable[[BaseException], bool],
        interval: float,
        batch_size: int,
        tick: Callable[[float], object] | None = None,
        engine: bool = False,
        defer: bool = False,
        lanes: int = 1,
    ) -> None:
        self.directory = Path(directory)
        self._lanes = max(1, lanes)
        self._apply = apply
        self._spool = spool
        self._is_outage = is_outage
        self._interval = interval
        self._batch_size = batch_size
        self._tick = tick
        self._engine = engine
        self._defer = defer and not engine
        self.pid = os.getpid()
        self._lock = _Lock(self.directory / LOCK)
        self._engine_lock = _Lock(self.directory / ENGINE_LOCK)
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._taken: dict[str, int] | None = None
        self._local: dict[str, collections.deque[Span]] = {}
        self._local_lock = threading.Lock()
        self._remembered = 0
        self.committed = 0  # writes this committer committed or spooled

    # ------------------------------------------------------------------ who commits
    def holds_lock(self) -> bool:
        return self._lock.held

    def _may_commit(self) -> bool:
        if self._engine:
            self._engine_lock.take()  # announce the engine, then wait for the lock
        elif self._defer and not self._engine_lock.free():
            if self._lock.held:
                log.info("halite: the engine runs again; it commits the journals")
                self._let_go()
            return False
        if not self._lock.held:
            if not self._lock.take():
                return False
            self._taken = None  # read afresh: another process committed until now
        return True

    def _let_go(self) -> None:
        with self._drain_lock:
            self._lock.release()
            self._taken = None

    # ------------------------------------------------------------------ the thread
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="halite-committer", daemon=True)
        self._thread.start()
        # A clean exit commits what is left; Salt's worker processes end through
        # multiprocessing, which runs its finalizers but not atexit.
        atexit.register(self.close)
        multiprocessing.util.Finalize(self, self.close, exitpriority=100)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        backlog = False
        while not self._closed:
            if not backlog:  # a full batch last time: more is waiting, go on at once
                self._wake.wait(self._interval if self._interval > 0 else IDLE_SECONDS)
            self._wake.clear()
            try:
                backlog = self.run_once() >= self._batch_size
            except Exception:  # noqa: BLE001 - the committer must survive anything
                backlog = False
                log.exception("halite: the committer's pass failed")

    def run_once(self, wait: float = 0.0) -> int:
        """One pass: take the lock if this process may commit, drain, then tick; ``wait``:
        how long the tick may wait for one another thread runs (a reader that wants every
        write of this process visible waits; the committer's own thread does not)."""
        if self._closed or not self._may_commit():
            return 0
        done = self.drain()
        if self._tick is not None:
            self._tick(wait)
        return done

    # ------------------------------------------------------------------ draining
    def drain(self) -> int:
        """Commit every complete line the journals hold beyond what was taken; returns how
        many writes were committed or spooled. Only while holding the lock."""
        with self._drain_lock:
            if not self._lock.held:
                return 0
            return self._drain()

    def _drain(self) -> int:
        if self._taken is None:
            self._taken = read_committed(self.directory)
        taken = self._taken
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        journals: list[tuple[str, str, int]] = []  # (name, owner, sequence)
        newest: dict[str, int] = {}
        for name in names:
            if name.startswith(COMMITTED + ".") and name.endswith(".tmp"):
                _remove_stale_progress(self.directory, name)
            owned = journal_owner(name)
            if owned is not None:
                owner, seq, _ = owned
                journals.append((name, owner, seq))
                newest[owner] = max(seq, newest.get(owner, seq))
        journals.sort(key=lambda j: (j[1], j[2]))
        me = _me()
        lives = {owner: owner == me or _writes_still(owner, me) for owner in newest}
        batch: list[Entry] = []
        marks: dict[str, int] = {}
        size = 0  # bytes of the batch's lines: large returns end a batch sooner
        done = 0
        finished: list[str] = []
        for name, owner, seq in journals:
            closed = not lives[owner] or seq < newest[owner]
            path = self.directory / name
            offset = taken.get(name, 0)
            local = self._local.get(name)
            while True:
                # This process's own lines, as it journalled them: their operations are
                # taken as they are instead of being read back and parsed.
                while local and local[0][1] <= offset:
                    self._forget_local(local)  # read from the file already
                if local and local[0][0] == offset:
                    start, offset, entries = self._forget_local(local)
                    batch.extend(entries)
                    size += offset - start
                    marks[name] = offset
                    if len(batch) >= self._batch_size or size >= BATCH_BYTES:
                        if not self._commit(batch, marks):
                            return done
                        done += len(batch)
                        batch, marks, size = [], {}, 0
                    continue
                limit = local[0][0] - offset if local and local[0][0] > offset else READ_BYTES
                chunk = _read_chunk(path, offset, limit)
                if chunk is None:
                    break
                data, length = chunk  # and the journal's length now
                end = data.rfind(b"\n") + 1
                if end == 0 and closed and data:
                    # A last line its writer never ended: the write was cut (the process
                    # died in it, the disk was full), so its call never returned. Kept in
                    # rejected/ for a person to see, never applied.
                    self._spool.reject(
                        SPOOL_OP, [data.decode("utf-8", "replace")],
                        reason=f"a line of {name} cut short by the end of its writer",
                    )  # fmt: skip
                    offset += len(data)
                    marks[name] = offset
                    if offset >= length:
                        finished.append(name)
                    break
                at = 0
                while at < end:
                    newline = data.index(b"\n", at)
                    raw, at = data[at:newline], newline + 1
                    if raw.strip():
                        entry = self._entry(raw)
                        if entry is not None:
                            batch.append(entry)
                    size += len(raw) + 1
                    if len(batch) >= self._batch_size or size >= BATCH_BYTES:
                        marks[name] = offset + at  # this far, the rest of the chunk next
                        if not self._commit(batch, marks):
                            return done
                        done += len(batch)
                        batch, marks, size = [], {}, 0
                offset += end
                marks[name] = offset
                if end == 0 or offset >= length:
                    if closed and offset >= length:
                        finished.append(name)
                    break
        if not self._commit(batch, marks):
            return done
        done += len(batch)
        for name in finished:
            (self.directory / name).unlink(missing_ok=True)
            taken.pop(name, None)
            self._local.pop(name, None)
        present = {name for name, _, _ in journals}
        stale = [name for name in taken if name not in present]
        for name in stale:
            del taken[name]
        if finished or stale:
            self._save_taken()
        self.committed += done
        return done

    def remember(self, name: str, start: int, end: int, entries: list[Entry]) -> None:
        """Lines this process just journalled (bytes ``start`` to ``end`` of journal
        ``name``) with their operations, so that its own drain need not parse them back.
        Only while this process commits, and within a bound: beyond it they are parsed."""
        if not self._lock.held or self._remembered + (end - start) > LOCAL_MAX:
            return
        with self._local_lock:
            self._local.setdefault(name, collections.deque()).append((start, end, entries))
            self._remembered += end - start

    def _forget_local(self, local: collections.deque[Span]) -> Span:
        span = local.popleft()
        with self._local_lock:
            self._remembered -= span[1] - span[0]
        return span

    def _entry(self, raw: bytes) -> Entry | None:
        line = raw.decode("utf-8", errors="replace")
        try:
            return line, item_from_line(line)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            self._spool.reject(SPOOL_OP, [line], reason=f"unreadable journal line: {exc}")
            return None

    def _commit(self, batch: list[Entry], marks: dict[str, int]) -> bool:
        if not self._commit_in_lanes(batch):
            return False  # the spool is full: the lines stay in their journals
        if marks:
            assert self._taken is not None
            self._taken.update(marks)
            self._save_taken()
        return True

    def _commit_in_lanes(self, batch: list[Entry]) -> bool:
        """Commit a batch, in ``lanes`` transactions at once when it is large enough: its
        writes split by job, each job's in one lane in the order read (see
        :func:`split_by_job`). While one transaction waits for the database another
        builds its rows, and the database works on both. True once every part is
        committed, or what the database (away) left of them is spooled, in one file; when
        the spool has no room for that, False: the batch's lines stay in their journals,
        to be committed again, the parts already in included (each write is idempotent)."""
        # One lane (SQLite) or a small batch: neither split nor a thread.
        large = self._lanes > 1 and len(batch) >= LANE_MIN
        parts = split_by_job(batch, self._lanes) if large else [batch]
        if len(parts) == 1:
            return commit_or_spool(self._apply, self._spool, batch, self._is_outage)
        outcomes: list[Any] = [None] * len(parts)

        def commit(index: int) -> None:
            try:
                outcomes[index] = commit_or_leave(
                    self._apply, self._spool, parts[index], self._is_outage
                )
            except BaseException as exc:  # noqa: BLE001 - raised again below
                outcomes[index] = exc

        others = [
            threading.Thread(target=commit, args=(i,), name="halite-commit-lane", daemon=True)
            for i in range(1, len(parts))
        ]
        for thread in others:
            thread.start()
        commit(0)
        for thread in others:
            thread.join()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        # What the database, away, did not take from any part is spooled in one file, or
        # not at all (the spool full): the batch is then taken again whole, and no part
        # already spooled is spooled again with it.
        left = [entry for part_left, _ in outcomes for entry in part_left]
        why = next((exc for _, exc in outcomes if exc is not None), None)
        return why is None or _on_outage(self._spool, left, why, "spool")

    def _save_taken(self) -> None:
        assert self._taken is not None
        try:
            write_committed(self.directory, self._taken)
        except OSError as exc:
            log.error("halite: cannot record the committer's progress (%s)", exc)

    # ------------------------------------------------------------------ the end
    def close(self, wait: float | None = None) -> bool:
        """Commit what is left before the process ends, waiting at most ``wait`` seconds
        (``CLOSE_SECONDS``): a database that is locked or frozen must not hold up the exit
        of a Salt process. What is not committed by then stays in the journals, which the
        next committer takes. True when all was committed."""
        if self._closed or os.getpid() != self.pid:
            return True
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(CLOSE_SECONDS if wait is None else wait)
            if thread.is_alive():
                log.warning(
                    "halite: the database did not take the last writes in time; they stay "
                    "in the journals of %s",
                    self.directory,
                )
                return False
        done = True
        if self._lock.held or self._may_commit_now():
            finished = threading.Event()

            def last() -> None:
                try:
                    self.drain()
                finally:
                    finished.set()

            worker = threading.Thread(target=last, name="halite-last-commit", daemon=True)
            worker.start()
            done = finished.wait(CLOSE_SECONDS if wait is None else wait)
        if done:
            self._lock.release()
            self._engine_lock.release()
        return done

    def stop(self) -> None:
        """Stop at once, without a last pass, and let go of the locks (a store for another
        database takes this directory over)."""
        self._closed = True
        self._wake.set()
        with self._drain_lock:
            self._lock.release()
            self._engine_lock.release()

    def _may_commit_now(self) -> bool:
        if self._defer and not self._engine_lock.free():
            return False
        if self._lock.take():
            self._taken = None
            return True
        return False


def split_by_job(batch: list[Entry], lanes: int) -> list[list[Entry]]:
    """``batch`` in at most ``lanes`` parts, the writes of one job always in the same part
    (by a digest of its jid; writes of no job, audit entries, in the first), each part in
    the order read. Two parts never lock the same job: their transactions never wait for
    each other there (only for the rows of a minion both hold returns of, which each
    writes last)."""
    parts: list[list[Entry]] = [[] for _ in range(lanes)]
    for entry in batch:
        jid = item_jid(entry[1])
        parts[zlib.crc32(jid.encode("utf-8", "surrogatepass")) % lanes if jid else 0].append(entry)
    return [part for part in parts if part]


def _me() -> str:
    return owner_of(os.getpid())


def _writes_still(owner: str, me: str) -> bool:
    """Whether the process that owns a journal may still write to it. An owner named by
    its pid alone, where this process is named with its start time too, wrote the journal
    with an earlier version of halite, before the master restarted: whatever process has
    that pid now is another one."""
    if "." not in owner and "." in me:
        return False
    return alive(owner)


def _remove_stale_progress(directory: Path, name: str) -> None:
    """A ``.committed.<pid>.tmp`` left by a committer that died while writing it."""
    try:
        pid = int(name[len(COMMITTED) + 1 : -len(".tmp")])
    except ValueError:
        return
    if pid != os.getpid() and not alive(str(pid)):
        (directory / name).unlink(missing_ok=True)


def _read_chunk(path: Path, offset: int, limit: int = READ_BYTES) -> tuple[bytes, int] | None:
    """Up to ``limit`` bytes of a journal from ``offset`` (whole lines: a longer line is read
    whole), and the file's size; None when the file is gone."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= offset:
                return b"", size
            handle.seek(offset)
            data = handle.read(limit)
            if len(data) == limit and not data.endswith(b"\n") and b"\n" not in data:
                data += handle.readline()  # one line longer than a chunk: read it whole
            return data, size
    except FileNotFoundError:
        return None


_committers: dict[tuple[int, str], tuple[str, Committer]] = {}
_committers_lock = threading.Lock()


def committer_for(key: str, directory: str, build: Callable[[], Committer]) -> Committer:
    """This process's committer for a journal directory; ``key`` names the database and
    the role it commits for. A directory has one committer per process: a store with
    another key (the configuration changed) replaces it."""
    slot = (os.getpid(), directory)
    found = _committers.get(slot)
    if found is None or found[0] != key or found[1]._closed:
        with _committers_lock:
            found = _committers.get(slot)
            if found is None or found[0] != key or found[1]._closed:
                for stale in [k for k in _committers if k[0] != slot[0]]:
                    del _committers[stale]  # inherited from the parent across fork
                if found is not None:
                    found[1].stop()
                found = _committers[slot] = (key, build())
    return found[1]


def forget(committer: Committer) -> None:
    with _committers_lock:
        for slot, (_, found) in list(_committers.items()):
            if found is committer:
                del _committers[slot]
