"""Calls that must answer within a bound whatever the database does.

A PostgreSQL server that is frozen (stopped, swapped out, its disk hung) accepts a query
and never answers: no server-side timeout fires, and the driver waits forever. Salt's CLI
reads the job cache right after every publish, and a person waits on halite's runners and
pages, so those reads run in a thread of their own and are given up after a bound; the
thread ends when the database answers (or the process does).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from halite_core.errors import HaliteError

T = TypeVar("T")


class DatabaseTimeout(HaliteError, TimeoutError):
    """The database did not answer within the bound (locked, frozen or unreachable).
    A ``TimeoutError``, hence an ``OSError``: callers treat it as an outage."""


def call_within(
    seconds: float, call: Callable[..., T], *args: Any, what: str = "the job index"
) -> T:
    """``call(*args)``, or :class:`DatabaseTimeout` once ``seconds`` have passed."""
    outcome: list[Any] = []
    done = threading.Event()
    # The caller's context variables go along (Salt's loader keeps its dunders in them).
    context = contextvars.copy_context()

    def run() -> None:
        try:
            outcome.append((True, context.run(call, *args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="halite-bounded", daemon=True).start()
    if not done.wait(seconds):
        raise DatabaseTimeout(
            f"{what} did not answer within {seconds:g} s (the database is locked, frozen "
            "or unreachable); try again shortly"
        )
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
