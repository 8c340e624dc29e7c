"""Objects that belong to one process: Salt forks its workers, and a connection pool, a
background thread or a journal must never be shared across a fork."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class PerProcess(Generic[K, T]):
    """A cache of objects keyed by this process's pid and a key of the caller's."""

    def __init__(self, create: Callable[[K], T], forget: Callable[[T], None]) -> None:
        self._create = create
        self._forget = forget  # what to do with an object inherited from the parent
        self._items: dict[tuple[int, K], T] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> T:
        full = (os.getpid(), key)
        item = self._items.get(full)
        if item is None:
            with self._lock:
                item = self._items.get(full)
                if item is None:
                    for stale in [k for k in self._items if k[0] != full[0]]:
                        self._forget(self._items.pop(stale))
                    item = self._items[full] = self._create(key)
        return item

    def mine(self) -> Iterator[T]:
        """The objects this process created."""
        pid = os.getpid()
        return iter([item for (owner, _), item in list(self._items.items()) if owner == pid])


def freeze_long_lived() -> None:
    """Take what a long-running process holds from its start to its end (the modules it
    imported, Salt's loader and options, SQLAlchemy's tables) out of the garbage
    collector's full passes (``gc.freeze``), after one last collection. The engine's
    process calls it once started: its committer allocates a batch's objects by the
    hundred thousand, and each full pass they set off walked all those long-lived objects
    again: a tenth of the committer's CPU in ``bench/load.py``, more in a master's engine,
    which holds Salt's loader too."""
    gc.collect()
    gc.freeze()
