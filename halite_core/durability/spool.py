"""A durable spool for writes the database could not take.

Each failed write becomes one JSON file, written atomically, in the spool directory. A later
successful write replays the spool, oldest first. A file is claimed by renaming it, so
several Salt worker processes never replay the same write twice at once; the writes are
idempotent anyway. A write that fails for a reason other than the database being
unavailable is moved to ``rejected/`` and logged, never dropped.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halite_core import encoding

log = logging.getLogger(__name__)

SUFFIX = ".json"
CLAIMED = ".claimed"
STALE_CLAIM_SECONDS = 300.0
_sequence = itertools.count()


GROWTH_LOG_FROM = 1024 * 1024  # log when the spool first holds 1 MiB, then at each doubling
RESCAN_EVERY = 200  # puts between two measurements of the spool on disk


class Spool:
    """``max_bytes`` bounds the spool on disk (all processes together, measured every
    ``RESCAN_EVERY`` writes and counted in between): beyond it a new write is dropped with
    an error in the log, rather than filling the master's disk."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.rejected = self.directory / "rejected"
        self.max_bytes = max_bytes
        self._size: int | None = None
        self._puts = 0
        self._logged_at = GROWTH_LOG_FROM // 2
        self.dropped = 0

    def size(self) -> int:
        """Bytes of spooled writes waiting on disk (``rejected/`` not counted)."""
        total = 0
        try:
            for entry in os.scandir(self.directory):
                if entry.is_file() and not entry.name.startswith("."):
                    try:
                        total += entry.stat().st_size
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return 0
        return total

    def _room_for(self, op: str, size: int) -> bool:
        if self._size is None or self._puts % RESCAN_EVERY == 0:
            self._size = self.size()
        self._puts += 1
        if self.max_bytes is not None and self._size + size > self.max_bytes:
            self.dropped += 1
            log.error(
                "halite: the spool %s is full (%d bytes, spool_max_bytes=%d): %s dropped "
                "(%d dropped by this process); the database has been unreachable for long",
                self.directory, self._size, self.max_bytes, op, self.dropped,
            )  # fmt: skip
            return False
        self._size += size
        if self._size >= self._logged_at * 2:
            while self._size >= self._logged_at * 2:
                self._logged_at *= 2
            log.warning(
                "halite: the spool %s holds %.1f MB of writes waiting for the database",
                self.directory, self._size / 1e6,
            )  # fmt: skip
        return True

    def put(self, op: str, *args: Any, reason: str = "") -> Path | None:
        """Keep one write for later. Returns its file, or None if it could not be kept
        (the spool is full, or even the spool failed)."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            text, _ = encoding.dumps({"op": op, "args": list(args), "reason": reason})
            if not self._room_for(op, len(text.encode())):
                return None
            tmp = self.directory / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            final = self.directory / f"{name}{SUFFIX}"
            os.replace(tmp, final)
            return final
        except Exception:  # noqa: BLE001 - last line of defence, must not raise into Salt
            log.critical(
                "halite: could not spool %s to %s; the write is lost: %.2000r",
                op,
                self.directory,
                args,
                exc_info=True,
            )
            return None

    def reject(self, op: str, *args: Any, reason: str) -> Path | None:
        """Keep a write that can never succeed (malformed input) for a person to inspect."""
        kept = Spool(self.rejected).put(op, *args, reason=reason)
        log.error("halite: rejected %s (%s); kept in %s", op, reason, kept)
        return kept

    def waiting(self) -> list[Path]:
        """Every spooled write not applied yet, oldest first: those :meth:`pending` lists
        and those a live process is replaying at this moment (claimed: renamed back should
        the database be away still)."""
        try:
            names = [e.name for e in os.scandir(self.directory) if e.is_file()]
        except FileNotFoundError:
            return []
        files = [self.directory / n for n in names if n.endswith((SUFFIX, CLAIMED))]
        return sorted(files, key=lambda p: p.name)

    def pending(self) -> list[Path]:
        """Spooled writes waiting for replay, oldest first (including stale claims)."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        now = time.time()
        files = []
        for entry in entries:
            if entry.name.endswith(SUFFIX):
                files.append(Path(entry.path))
            elif entry.name.endswith(CLAIMED):
                try:
                    stale = now - entry.stat().st_mtime > STALE_CLAIM_SECONDS
                except FileNotFoundError:
                    continue
                # A live claimer may be slow (a frozen database): only a dead one's claim
                # is taken over; the age rule is for names that do not say who claimed.
                alive = _claimer_alive(entry.name)
                if alive is False or (alive is None and stale):
                    files.append(Path(entry.path))
        return sorted(files, key=lambda p: p.name)

    def replay(
        self, apply: Callable[[str, list[Any]], None], is_outage: Callable[[BaseException], bool]
    ) -> int:
        """Apply spooled writes oldest first; stop at the first outage. Returns how many."""
        done = 0
        for path in self.pending():
            # A claim is a rename to a name of this process's own: of two processes taking
            # the same (stale) file, only one can succeed.
            mine = f"{_base(path.name)}.{os.getpid()}-{next(_sequence)}{CLAIMED}"
            claimed = path.with_name(mine)
            try:
                os.rename(path, claimed)
                os.utime(claimed)
            except FileNotFoundError:
                continue  # another process claimed it
            try:
                entry = json.loads(claimed.read_text(encoding="utf-8"))
                op, args = entry["op"], encoding.restore(entry["args"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._move_to_rejected(claimed, f"unreadable spool file: {exc}")
                continue
            try:
                apply(op, args)
            except Exception as exc:  # noqa: BLE001
                if is_outage(exc):
                    os.rename(claimed, claimed.with_name(_base(claimed.name) + SUFFIX))
                    log.warning("halite: database still unavailable, %s stays spooled", path.name)
                    break
                self._move_to_rejected(claimed, f"{type(exc).__name__}: {exc}")
                continue
            claimed.unlink(missing_ok=True)
            done += 1
        if done:
            log.info("halite: replayed %d spooled writes from %s", done, self.directory)
        return done

    def _move_to_rejected(self, path: Path, reason: str) -> None:
        self.rejected.mkdir(parents=True, exist_ok=True)
        target = self.rejected / (_base(path.name) + SUFFIX)
        os.replace(path, target)
        log.error(
            "halite: spooled write %s cannot be applied (%s); moved to %s",
            path.name,
            reason,
            target,
        )


def _claimer_alive(name: str) -> bool | None:
    """Whether the process that claimed a spool file (``<base>.<pid>-<seq>.claimed``) still
    runs (None: the name does not say): a claim of a process that died is taken up at
    once."""
    try:
        pid = int(name.split(".")[1].split("-")[0])
    except (IndexError, ValueError):
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spool_order(name: str) -> str:
    """Spool files sort by their own name (``<ns>-<pid>-<seq>``), claimed or not."""
    return _base(name)


def _base(name: str) -> str:
    """A spool file's own name, without its suffix or a claim's (``<ns>-<pid>-<seq>``)."""
    return name.split(".", 1)[0]
