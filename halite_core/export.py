"""CSV exports of the HTTP API's listings: ``format=csv`` (or ``Accept: text/csv``) on
``/api/jobs``, ``/api/jobs/{jid}``, ``/api/minions``, ``/api/minions/{id}``, ``/api/states``
and ``/api/states/{state_id}``.

The rows are the answers of the same service calls as the JSON (the same checks, the same
audit), written as they come, a page at a time: one listing pages through the service's
own cursors up to :data:`MAX_ROWS` rows. The columns are the fields of each answer's typed
row in :mod:`halite_core.api`, nested ones flattened with dots (``minions.failed``), so
that they follow the models. No HTTP here: the handlers call :func:`stream` with a way to
fetch the next page and a way to send text.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from typing_extensions import get_type_hints, is_typeddict

from halite_core.api import (
    MAX_LIMIT,
    FailingState,
    Job,
    MinionJob,
    MinionResult,
    MinionRow,
    QueryError,
    StateRunRow,
)

# The most rows one export writes; past it, a last row says where to go on from.
MAX_ROWS = 100_000
# Rows asked of the service per page while exporting (the API's largest page).
PAGE_ROWS = MAX_LIMIT
FORMATS = ("json", "csv")
MEDIA_TYPE = "text/csv; charset=utf-8; header=present"
# A last row whose first cell starts with it is halite's note, never data: data cells that
# start with ``#`` are escaped (below).
NOTE = "# halite: "
# A spreadsheet runs a cell starting with one of these as a formula (OWASP, "CSV
# Injection"; the full-width forms too, which some spreadsheets take as the ASCII ones).
# Such a cell gets a leading ``'``, as do cells starting with ``'`` or ``#``, so that
# removing one leading ``'`` always gives the value back.
FORMULA = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
ESCAPED = (*FORMULA, "'", "#")

Row = Mapping[str, Any]
Fetch = Callable[[str, int], Awaitable[Row]]


class Stopped(Exception):
    """A later page could not be read; the message says why (the export ends with it)."""


# ---------------------------------------------------------------------- cells
def escape(text: str) -> str:
    """``text`` with a leading ``'`` if a spreadsheet would run it as a formula (also when
    spaces or line breaks come first), or it starts with ``'`` or ``#``."""
    first = text.lstrip(" \n")[:1] if text[:1] in (" ", "\n") else text[:1]
    return f"'{text}" if first and first in ESCAPED else text


def cell(value: object) -> str | int | float:
    """One value as a CSV cell: None empty, booleans ``true``/``false``, numbers as they
    are, text escaped; a list of texts or numbers joined with spaces; anything else (a
    return, arguments) as compact JSON text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, (list, tuple)) and all(_scalar(item) for item in value):
        return escape(" ".join(str(item) for item in value))
    return escape(json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False))


def _scalar(value: object) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------- columns
@dataclass(frozen=True)
class Column:
    name: str
    get: Callable[[Row], object]


def field(name: str) -> Column:
    """The value at ``name``, dots going into nested mappings; None where one is missing
    (a row without ``counts``, a minion without a state run)."""
    keys = name.split(".")

    def get(row: Row) -> object:
        value: object = row
        for key in keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value

    return Column(name, get)


def names(kind: type, prefix: str = "") -> list[str]:
    """The fields of the typed dict ``kind``, in order; a field that is itself a typed
    dict (or None) gives its fields, ``prefix.field``."""
    listed = []
    for name, hint in get_type_hints(kind).items():
        inner = _typed_dict(hint)
        if inner is None:
            listed.append(prefix + name)
        else:
            listed.extend(names(inner, f"{prefix}{name}."))
    return listed


def _typed_dict(hint: Any) -> type | None:
    """The typed dict ``hint`` is, or ``X | None`` holds; None for any other type."""
    if is_typeddict(hint):
        return hint
    if get_origin(hint) in (Union, types.UnionType):
        kinds = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(kinds) == 1 and is_typeddict(kinds[0]):
            return kinds[0]
    return None


def columns(kind: type, *, leave_out: Iterable[str] = ()) -> tuple[Column, ...]:
    left_out = set(leave_out)
    return tuple(field(name) for name in names(kind) if name not in left_out)


def _failing_ids(row: Row) -> object:
    failing = (row.get("highstate") or {}).get("failing")
    return [state.get("id") for state in failing] if isinstance(failing, list) else None


# A job's CSV: a row per minion, with the job's jid and function; a highstate as its
# counts and the ids of its failing states (its states in full are in the JSON), then the
# return itself.
JOB_COLUMNS = (
    field("jid"),
    field("function"),
    *columns(MinionResult, leave_out=("return", "highstate")),
    *(field(f"highstate.{name}") for name in ("kind", "counts.total", "counts.passed",
                                              "counts.failed", "counts.changed",
                                              "counts.duration_ms")),
    Column("highstate.failing", _failing_ids),
    field("return"),
)  # fmt: skip


# ---------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Table:
    """What one route exports: its rows in an answer, their columns, and the name of the
    file (``halite-<name>[-<id>]-<time>.csv``)."""

    name: str
    columns: tuple[Column, ...]
    rows: Callable[[Row], Sequence[Row]]

    def filename(self, ident: str | None = None, now: dt.datetime | None = None) -> str:
        moment = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
        part = f"-{_safe(ident)}" if ident is not None else ""
        return f"halite-{self.name}{part}-{moment}.csv"


def _safe(text: str) -> str:
    """``text`` as a part of a file name: letters, digits, ``.``, ``_`` and ``-`` only
    (any other character is ``_``), at most 80 of them, never starting with a dot."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80].lstrip(".") or "_"


def _listed(key: str) -> Callable[[Row], Sequence[Row]]:
    return lambda answer: answer[key]


def _per_minion(detail: Row) -> list[Row]:
    job = {"jid": detail["jid"], "function": detail["function"]}
    return [{**result, **job} for result in detail["minion_results"]]


# By the service's method that answers them.
TABLES = {
    "jobs": Table("jobs", columns(Job), _listed("jobs")),
    "live_jobs": Table("jobs-live", columns(Job), _listed("jobs")),
    "job": Table("job", JOB_COLUMNS, _per_minion),
    "minions": Table("minions", columns(MinionRow), _listed("minions")),
    "minion": Table("minion", columns(MinionJob), _listed("jobs")),
    "states": Table("states", columns(FailingState), _listed("states")),
    "state": Table("state", columns(StateRunRow), _listed("runs")),
}


# ---------------------------------------------------------------------- negotiation
def chosen(given: str | None, accept: str | None) -> Literal["json", "csv"]:
    """The answer's format: ``format`` when given (``json`` or ``csv``, else a QueryError),
    else CSV when ``Accept`` prefers ``text/csv`` to ``application/json`` (by quality, the
    most specific range counting for each; a tie, or no Accept, is JSON)."""
    if given is not None:
        if given not in FORMATS:
            raise QueryError(f"format must be csv or json, not {given!r}")
        return "csv" if given == "csv" else "json"
    csv_q, json_q = _quality(accept or "", "text", "csv"), _quality(accept or "", "application",
                                                                     "json")  # fmt: skip
    return "csv" if csv_q > json_q else "json"


def _quality(accept: str, kind: str, sub: str) -> float:
    """The quality ``accept`` gives ``kind/sub``: that of its most specific matching range
    (``kind/sub``, ``kind/*``, ``*/*``), 0 if none matches."""
    best, quality = 0, 0.0
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        rank = {f"{kind}/{sub}": 3, f"{kind}/*": 2, "*/*": 1}.get(media, 0)
        if rank <= best:
            continue
        best, quality = rank, 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
    return quality


# ---------------------------------------------------------------------- writing
class Writer:
    """CSV text, a piece at a time: the header, rows, a note."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer)

    def _taken(self) -> str:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text

    def header(self) -> str:
        self._csv.writerow([column.name for column in self.table.columns])
        return self._taken()

    def rows(self, rows: Iterable[Row]) -> str:
        columns = self.table.columns
        self._csv.writerows([cell(column.get(row)) for column in columns] for row in rows)
        return self._taken()

    def note(self, text: str) -> str:
        self._csv.writerow([NOTE + text])
        return self._taken()


async def stream(
    table: Table,
    first: Row,
    send: Callable[[str], Awaitable[None]],
    more: Fetch | None = None,
    *,
    max_rows: int = MAX_ROWS,
    page_rows: int = PAGE_ROWS,
) -> int:
    """Send ``first`` (an answer of the service) as CSV, then, while it has a ``next``
    cursor, what ``more(cursor, rows)`` answers, up to ``max_rows`` rows; answers how many
    rows were sent. Without ``more`` (one page was asked for) it stops after ``first``.

    It ends with a note row (its one cell starts with :data:`NOTE`) when rows were left
    out: at ``max_rows``, after the one page asked for, or when ``more`` raised
    :class:`Stopped`; the note names the cursor to go on from when there is one."""
    writer = Writer(table)
    await send(writer.header())
    sent, answer = 0, first
    while True:
        rows = table.rows(answer)
        room = max_rows - sent
        await send(writer.rows(rows[:room]))
        sent += min(len(rows), room)
        cursor = answer.get("next")
        if len(rows) > room:  # one answer larger than the cap (a job of many minions)
            await send(writer.note(
                f"stopped at the cap of {max_rows} rows; {len(rows) - room} more not exported"
            ))  # fmt: skip
            return sent
        if not cursor:
            return sent
        if more is None:
            await send(writer.note(f"more rows follow: continue with cursor={cursor}"))
            return sent
        if sent >= max_rows:
            await send(writer.note(
                f"stopped at the cap of {max_rows} rows; more rows follow: continue with"
                f" cursor={cursor}"
            ))  # fmt: skip
            return sent
        try:
            answer = await more(cursor, min(page_rows, max_rows - sent))
        except Stopped as exc:
            await send(writer.note(
                f"the export stopped early: {exc}; continue with cursor={cursor}"
            ))  # fmt: skip
            return sent
