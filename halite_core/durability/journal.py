"""The journal: every write a process accepts, one JSON line each, appended to a file of its
own before the call returns, as Salt's ``local_cache`` writes a file per return.

- :func:`item_to_line` / :func:`item_from_line` are the one line codec (a typed operation of
  halite_core.store.ops <-> a line); :func:`raw_return_line` is the cheap form Salt's worker
  writes for a minion return (the return as Salt sent it; the committer prepares it).
- :class:`JournalWriter` appends a process's lines (``<pid>-<seq>-<pid>.<start>.jsonl``) and
  starts a new file every ``ROTATE_BYTES``: a journal whose process has moved on to a newer
  one, or has died, is *closed*, and the committer removes it once it has taken all of it.
- The committer records how far it has taken each journal in ``.committed``; the lookups
  (:func:`pending_lines`, :func:`pending_items`) read what lies beyond, and the spool, so that
  Salt's reads see every accepted write whether or not it is in the database yet.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from halite_core import encoding, highstate
from halite_core.durability.spool import CLAIMED, spool_order
from halite_core.durability.spool import SUFFIX as SPOOL_SUFFIX
from halite_core.store.ops import (
    AuditItem,
    EndtimeItem,
    Item,
    KilledItem,
    LoadItem,
    MinionsItem,
    NoReturnItem,
    RawReturn,
    RerunItem,
    ReturnItem,
    ReturnRow,
    SettledItem,
    item_jid,
)

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".jsonl"
SPOOL_OP = "journal"  # a batch of journal lines kept in the spool
RECOVERING = ".recovering-"  # claims left by an earlier version's recovery: read as journals
COMMITTED = ".committed"  # {journal name: bytes taken by the committer}
ROTATE_BYTES = 1 << 20  # a process starts a new journal past this size
RESCANS = 5
_journal_seq = itertools.count()  # one sequence per process: several writers may share a dir


# ---------------------------------------------------------------------- processes
def process_stamp(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), or None
    where that cannot be read: a pid alone may be reused by a new process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def owner_of(pid: int) -> str:
    """``<pid>`` or ``<pid>.<start>``: who owns a journal."""
    stamp = process_stamp(pid)
    return f"{pid}.{stamp}" if stamp else str(pid)


def alive(owner: str) -> bool:
    """Whether the process named by :func:`owner_of` still runs (the same process, not a
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


def journal_owner(name: str) -> tuple[str, int, str] | None:
    """``(owner, sequence, key)`` of a journal file name, or None for any other file:
    ``<pid>-<seq>-<pid>.<start>.jsonl`` (older names ``<pid>-<seq>.jsonl``), and the claims
    ``.<journal>.recovering-<pid>.<start>`` an earlier version left (owned by the claimer).
    ``key`` orders the journals of one owner."""
    try:
        if name.endswith(JOURNAL_SUFFIX) and not name.startswith("."):
            parts = name[: -len(JOURNAL_SUFFIX)].split("-")
            owner = parts[2] if len(parts) > 2 else parts[0]
            int(owner.partition(".")[0])
            return owner, int(parts[1]), name
        if name.startswith(".") and RECOVERING in name:
            journal, claimer = name[1:].rsplit(RECOVERING, 1)
            int(claimer.partition(".")[0])
            if journal.endswith(JOURNAL_SUFFIX):
                return claimer, -1, name
    except (ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------- codec
def raw_return_line(load: Mapping[str, Any], value: str, converted: bool, at: float) -> str:
    """A minion return as Salt handed it over (without its ``return``), the return's JSON
    text and the time it was accepted: all Salt's worker encodes for a plain function."""
    head, _ = encoding.dumps({"op": "raw", "at": at, "converted": converted, "load": load})
    return f"{head}\t{value}"


def item_to_line(item: Item) -> str:
    """One JSON line for the journal and the spool."""
    if isinstance(item, ReturnItem):
        row = item.row
        head = encoding.dumps(
            {
                "op": "ret",
                "jid": row.jid,
                "minion": row.minion,
                "function": row.function,
                "start_time": row.start_time.isoformat(),
                "returned_at": row.returned_at.isoformat(),
                "truncated": row.value.truncated,
                "retcode": row.retcode,
                "success": row.success,
                "out": row.out,
                "summary": list(row.summary) if row.summary else None,
                "test": row.test_run,
                "notable": [list(state) for state in row.notable],
                "stub": item.stub,
            }
        )[0]
        # The return is already JSON: it follows the head after a tab (which JSON text never
        # holds unescaped), so that reading the line back does not parse it again.
        return f"{head}\t{row.value.text}"
    if isinstance(item, RawReturn):
        return raw_return_line(item.load, item.value, item.converted, item.at.timestamp())
    fields: dict[str, Any]
    if isinstance(item, LoadItem):
        fields = {"op": "load", "jid": item.jid, "load": item.load, "minions": item.minions}
        if item.only_new:
            fields["only_new"] = True
    elif isinstance(item, MinionsItem):
        fields = {"op": "minions", "jid": item.jid, "minions": item.minions}
    elif isinstance(item, SettledItem):
        op = "no_return" if isinstance(item, NoReturnItem) else "killed"
        fields = {"op": op, "jid": item.jid, "minions": item.minions, "at": item.at.isoformat()}
    elif isinstance(item, AuditItem):
        fields = {"op": "audit", "entry": {**item.entry, "at": item.entry["at"].isoformat()}}
    elif isinstance(item, RerunItem):
        fields = {"op": "rerun", "jid": item.jid, "rerun_of": item.rerun_of}
    else:
        fields = {"op": "endtime", "jid": item.jid, "at": item.at.isoformat()}
    return encoding.dumps(fields)[0]


def item_from_line(line: str) -> Item:
    """The operation a journal line holds; raises ValueError (or KeyError, TypeError) for a
    line that is not one."""
    head, tab, value = line.partition("\t")
    data = json.loads(head)
    op = data["op"]
    if op == "raw":
        load = data["load"]
        if encoding.MARKER in head:
            load = encoding.restore(load)
        at = dt.datetime.fromtimestamp(float(data["at"]), dt.timezone.utc)
        return RawReturn(load, value, bool(data.get("converted")), at)
    if op == "ret":
        summary = data["summary"]
        # An earlier version spliced the value into the head's JSON.
        text = value if tab else json.dumps(data["value"], separators=(",", ":"))
        row = ReturnRow(
            jid=data["jid"],
            minion=data["minion"],
            function=data["function"],
            start_time=dt.datetime.fromisoformat(data["start_time"]),
            returned_at=dt.datetime.fromisoformat(data["returned_at"]),
            value=encoding.Encoded(text, truncated=bool(data["truncated"])),
            retcode=data["retcode"],
            success=data["success"],
            out=data["out"],
            summary=highstate.StateSummary(*summary) if summary else None,
            # Written since revision 0007 of the schema; absent from older lines.
            test_run=data.get("test"),
            notable=tuple(highstate.NotableState(*state) for state in data.get("notable", ())),
        )
        # The return's value stays as written (already encoded); the load and the stub are
        # read back to what was sent, to be encoded once more on their way in.
        stub = encoding.restore(data["stub"]) if encoding.MARKER in head else data["stub"]
        return ReturnItem(row, stub)
    if encoding.MARKER in head:
        data = encoding.restore(data)  # the whole line was encoded: a load, a minion id
    if op == "load":
        return LoadItem(data["jid"], data["load"], data["minions"], bool(data.get("only_new")))
    if op == "no_return":
        return NoReturnItem(data["jid"], data["minions"], dt.datetime.fromisoformat(data["at"]))
    if op == "killed":
        return KilledItem(data["jid"], data["minions"], dt.datetime.fromisoformat(data["at"]))
    if op == "audit":
        entry = dict(data["entry"])
        entry["at"] = dt.datetime.fromisoformat(entry["at"])
        return AuditItem(entry)
    if op == "minions":
        return MinionsItem(data["jid"], data["minions"])
    if op == "rerun":
        return RerunItem(data["jid"], data["rerun_of"])
    if op == "endtime":
        return EndtimeItem(data["jid"], dt.datetime.fromisoformat(data["at"]))
    raise ValueError(f"unknown journal entry {op!r}")


# ---------------------------------------------------------------------- writing
class JournalWriter:
    """A process's journal in one directory: appends whole lines (so a line is never
    interleaved with another process's), and starts a new file every ``ROTATE_BYTES``.
    A write the disk cuts short is undone back to the last whole line. Thread-safe."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._name: str | None = None
        self._size = 0
        self._held: list[str] = []  # lines the disk refused, in order
        _open_writers.add(self)

    def append(self, lines: list[str]) -> list[str]:
        """Journal ``lines`` (after those held from an earlier failure); returns the lines
        the disk refused, now held in memory (empty when all are journalled). The caller
        keeps them elsewhere and calls :meth:`take_held`; else they are journalled with the
        next append (and lost if the process dies first)."""
        return self.append_at(lines)[0]

    def append_at(self, lines: list[str]) -> tuple[list[str], tuple[str, int, int] | None]:
        """:meth:`append`, and where ``lines`` alone were written: ``(journal, start, end)``
        (None when they were not, or were written after lines held from before)."""
        with self._lock:
            held = bool(self._held)
            waiting = self._held + lines
            # One text (each line and its newline), then its bytes: a megabyte return is
            # copied twice, not three times (a copy with its newline, then the join).
            data = "\n".join([*waiting, ""]).encode("utf-8", "surrogatepass")
            try:
                if self._fd is None or self._size >= ROTATE_BYTES:
                    self._open()
                assert self._fd is not None
                self._write_all(self._fd, data)
            except OSError as exc:
                log.error("halite: cannot journal %d writes (%s); kept in memory", len(lines), exc)
                self._held = waiting
                return list(waiting), None
            self._held = []
            start = self._size
            self._size += len(data)
            if held or self._name is None:
                return [], None
            return [], (self._name, start, self._size)

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.write(fd, view[done:])
        except OSError:
            if done:
                # A full disk cut the write short: undo the part written, so that the next
                # line does not land on the end of a cut one.
                try:
                    os.ftruncate(fd, self._size)
                except OSError:
                    self._fd = None  # cannot undo: the next append starts a new journal
                    os.close(fd)
            raise

    def take_held(self) -> list[str]:
        """The lines held after a failed write, no longer held: the caller keeps them."""
        with self._lock:
            held, self._held = self._held, []
            return held

    def hold(self, lines: list[str]) -> None:
        """Hold ``lines`` again (before any held since), when keeping them elsewhere failed."""
        with self._lock:
            self._held = lines + self._held

    def position(self) -> tuple[str | None, int]:
        """The current journal's name and how many bytes this process wrote to it."""
        with self._lock:
            return self._name, self._size

    def _open(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{self.pid}-{next(_journal_seq):08d}-{owner_of(self.pid)}{JOURNAL_SUFFIX}"
        self._fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._name, self._size = name, 0

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


_writers: dict[tuple[int, str], JournalWriter] = {}
_writers_lock = threading.Lock()
_open_writers: weakref.WeakSet[JournalWriter] = weakref.WeakSet()


def close_inherited(holders: Iterable[Any]) -> None:
    """In a forked child: close the descriptors that ``holders`` of the parent (objects
    with a ``pid`` and an ``_fd``) left open in it."""
    me = os.getpid()
    for holder in list(holders):
        if holder.pid != me and holder._fd is not None:
            try:
                os.close(holder._fd)
            except OSError:
                pass
            holder._fd = None


def _after_fork_in_child() -> None:
    # A forked child (Salt forks its workers, and runner jobs from them) must not write to
    # its parent's journal, nor keep its descriptors open.
    close_inherited(_open_writers)
    _writers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def writer_for(directory: str) -> JournalWriter:
    """This process's :class:`JournalWriter` for ``directory`` (a forked child gets its own)."""
    key = (os.getpid(), directory)
    writer = _writers.get(key)
    if writer is None:
        with _writers_lock:
            writer = _writers.get(key)
            if writer is None:
                for stale in [k for k in _writers if k[0] != key[0]]:
                    del _writers[stale]  # inherited from the parent across fork
                writer = _writers[key] = JournalWriter(directory)
    return writer


# ---------------------------------------------------------------------- progress
def read_committed(directory: str | os.PathLike[str]) -> dict[str, int]:
    """How many bytes of each journal the committer has taken (committed or spooled)."""
    try:
        with open(os.path.join(directory, COMMITTED), "rb") as handle:
            found = json.loads(handle.read() or b"{}")
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}


def backlog_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes of the journals beyond what the committer has taken (committed or spooled):
    what a crash of every process now would leave for the next committer. Read from the
    directory and ``.committed`` (for a metric, at a scrape: never on the write path)."""
    taken = read_committed(directory)
    total = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if journal_owner(entry.name) is None:
            continue
        try:
            size = entry.stat().st_size
        except OSError:
            continue  # taken whole and removed meanwhile
        total += max(size - taken.get(entry.name, 0), 0)
    return total


def write_committed(directory: str | os.PathLike[str], taken: Mapping[str, int]) -> None:
    path = os.path.join(directory, COMMITTED)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(dict(taken), handle)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- lookups
def _listing(directory: str, keep: Callable[[str], bool]) -> list[str]:
    try:
        return sorted(name for name in os.listdir(directory) if keep(name))
    except FileNotFoundError:
        return []


def _read_from(path: str, offset: int) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            if offset:
                handle.seek(offset)
            return handle.read()
    except OSError:
        return None  # committed, or replayed, and removed while we looked


def _is_journal(name: str) -> bool:
    return journal_owner(name) is not None


def _is_spooled(name: str) -> bool:
    return not name.startswith(".") and (name.endswith(SPOOL_SUFFIX) or name.endswith(CLAIMED))


def _lines_of(data: bytes, needle: bytes | None) -> Iterator[str]:
    # Whole lines only: a line without its newline is still being written (a reader may
    # see part of a write), or was cut by the death of its writer (its call never returned).
    for raw in data[: data.rfind(b"\n") + 1].split(b"\n"):
        if raw and (needle is None or needle in raw):
            yield raw.decode("utf-8", errors="replace")


def pending_lines(journal_dir: str, spool_dir: str, jid: str | None = None) -> list[str]:
    """The journal lines of every write accepted but not yet in the database, oldest first
    as far as it is known: beyond what the committer has taken of each journal, then in the
    spool. Writes only move forward (journal -> spool -> database) and ``.committed`` is
    written after what it counts is committed or spooled; the caller reads the database
    last, so a write moving while we look is seen at least once; a file removed between
    listing and reading makes us look again. ``jid`` narrows the search to the lines naming
    that job."""
    lines: list[str] = []
    for _ in range(RESCANS):
        lines, complete = _scan_pending(journal_dir, spool_dir, jid)
        if complete:
            break
    return lines


def _scan_pending(journal_dir: str, spool_dir: str, jid: str | None) -> tuple[list[str], bool]:
    needle = f'"jid":"{jid}"'.encode() if jid is not None else None
    lines: list[str] = []
    complete = True
    taken = read_committed(journal_dir)
    for name in _listing(journal_dir, _is_journal):
        data = _read_from(os.path.join(journal_dir, name), taken.get(name, 0))
        if data is None:
            complete = False
        elif needle is None or needle in data:
            lines.extend(_lines_of(data, needle))
    spooled = None if needle is None else json.dumps(needle.decode())[1:-1].encode()
    for name in sorted(_listing(spool_dir, _is_spooled), key=spool_order):
        data = _read_from(os.path.join(spool_dir, name), 0)
        if data is None:
            complete = False
            continue
        if spooled is not None and spooled not in data:
            continue
        try:
            entry = json.loads(data)
        except ValueError:
            continue  # being written
        found = entry.get("args", [None])[0] if entry.get("op") == SPOOL_OP else None
        for line in found if isinstance(found, list) else []:
            if isinstance(line, str) and (needle is None or needle.decode() in line):
                lines.append(line)
    return lines, complete


def pending_items(journal_dir: str, spool_dir: str, jid: str | None = None) -> list[Item]:
    """:func:`pending_lines` parsed (a line still being written is skipped)."""
    items = []
    for line in pending_lines(journal_dir, spool_dir, jid):
        try:
            item = item_from_line(line)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            continue
        if jid is None or item_jid(item) == jid:
            items.append(item)
    return items


def wait_taken(directory: str, name: str | None, size: int, timeout: float) -> bool:
    """Wait (at most ``timeout`` seconds) until the committer has taken the first ``size``
    bytes of journal ``name``: this process's writes are then committed or spooled."""
    if name is None or size == 0:
        return True
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        if read_committed(directory).get(name, 0) >= size:
            return True
        if not os.path.exists(os.path.join(directory, name)):
            return True  # taken whole and removed
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
