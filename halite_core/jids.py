"""Salt job ids: validation, start times and generation.

A JID is ``YYYYmmddHHMMSSffffff`` with an optional ``_<pid>`` suffix (``unique_jid``). Salt
3008+ always writes it in UTC; older Salt writes the master's local time unless
``utc_jid: True``. Callers say which with ``utc``.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import os
import re
import threading

from halite_core.errors import HaliteError

_JID_RE = re.compile(r"^(\d{20})(?:_(\d+))?$")
_MONTHS = list(calendar.month_abbr)
_last_jid: dt.datetime | None = None
_last_jid_lock = threading.Lock()


class InvalidJid(HaliteError, ValueError):
    """Not a Salt job id."""


def is_jid(jid: object) -> bool:
    if type(jid) is str and len(jid) == 20 and jid.isdecimal():
        return True  # the common form, without the regular expression (once per return)
    return isinstance(jid, str) and _JID_RE.match(jid) is not None


def _naive(jid: str) -> dt.datetime:
    match = _JID_RE.match(jid) if isinstance(jid, str) else None
    if match is None:
        raise InvalidJid(f"{jid!r} is not a Salt job id (expected 20 digits, optional _pid)")
    d = match.group(1)
    try:
        return dt.datetime(
            int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]), int(d[10:12]), int(d[12:14]),
            int(d[14:20]),
        )  # fmt: skip
    except ValueError as exc:
        raise InvalidJid(f"{jid!r} is not a Salt job id: {exc}") from exc


def to_utc(naive: dt.datetime, utc: bool) -> dt.datetime:
    """Read a naive wall-clock time as UTC, or as this host's local time, and return UTC."""
    if utc:
        return naive.replace(tzinfo=dt.timezone.utc)
    # astimezone() on a naive datetime applies the local zone's rules for that date,
    # so daylight saving time is honoured.
    return naive.astimezone().astimezone(dt.timezone.utc)


def from_utc(moment: dt.datetime, utc: bool) -> dt.datetime:
    """The inverse of :func:`to_utc`: a naive wall-clock time in JID time."""
    if utc:
        return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return moment.astimezone().replace(tzinfo=None)


@functools.lru_cache(maxsize=4096)
def start_time(jid: str, utc: bool) -> dt.datetime:
    """The timezone-aware UTC time at which the job with this JID was published."""
    # Cached: every return of a job asks again for the same JID.
    return to_utc(_naive(jid), utc)


def salt_time_text(moment: dt.datetime, utc: bool) -> str:
    """Format a time the way Salt's ``jid_to_time`` does: ``2026, Nov 28 11:51:38.123456``."""
    wall = from_utc(moment, utc)
    return f"{wall.year}, {_MONTHS[wall.month]} {wall:%d %H:%M:%S.%f}"


def parse_salt_time_text(text: str, utc: bool) -> dt.datetime:
    """Parse the text of :func:`salt_time_text` back into an aware UTC time."""
    try:
        year, rest = text.split(", ", 1)
        month_name, day, clock = rest.split(" ")
        naive = dt.datetime.strptime(
            f"{year}-{_MONTHS.index(month_name):02d}-{day} {clock}", "%Y-%m-%d %H:%M:%S.%f"
        )
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a Salt job time") from exc
    return to_utc(naive, utc)


def gen_jid(utc: bool, unique: bool = False, now: dt.datetime | None = None) -> str:
    """A new JID, monotonic within this process, as Salt's own ``gen_jid`` makes them."""
    global _last_jid
    moment = now or dt.datetime.now(dt.timezone.utc)
    wall = from_utc(moment, utc)
    with _last_jid_lock:
        if _last_jid is not None and _last_jid >= wall:
            wall = _last_jid + dt.timedelta(microseconds=1)
        _last_jid = wall
    jid = f"{wall:%Y%m%d%H%M%S%f}"
    return f"{jid}_{os.getpid()}" if unique else jid


def next_jid(jid: str) -> str:
    """The JID one microsecond later, keeping any ``_pid`` suffix: used to dodge a collision."""
    match = _JID_RE.match(jid)
    if match is None:
        raise InvalidJid(f"{jid!r} is not a Salt job id")
    later = _naive(jid) + dt.timedelta(microseconds=1)
    suffix = f"_{match.group(2)}" if match.group(2) else ""
    return f"{later:%Y%m%d%H%M%S%f}{suffix}"


RESERVATION_HOURS = 2  # a reservation only has to outlive the microsecond it names
TRASH = ".trash-"


def reserve(directory: str | os.PathLike[str], jid: str) -> bool:
    """Claim ``jid`` for this master: an empty file created exclusively under
    ``directory/<YYYYmmddHH>/``, as Salt's ``local_cache`` claims a jid with its directory.
    False if another process holds it. No database is involved: this runs on Salt's
    publish path, which must never wait for one."""
    hour = os.path.join(os.fspath(directory), jid[:10])
    path = os.path.join(hour, jid)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except FileNotFoundError:
        os.makedirs(hour, exist_ok=True)
        _set_aside_old_hours(os.fspath(directory), jid[:10])
        return reserve(directory, jid)
    os.close(fd)
    return True


def _set_aside_old_hours(directory: str, current_hour: str) -> None:
    """Move the folders of hours long past out of the way: one rename each, cheap enough
    for the publish path (an hour may hold hundreds of thousands of reservations); they
    are deleted by :func:`remove_old_reservations`, off that path."""
    try:
        hours = sorted(name for name in os.listdir(directory) if name.isdigit())
    except FileNotFoundError:
        return
    for name in hours[:-RESERVATION_HOURS]:
        if name >= current_hour:
            continue
        try:
            os.rename(
                os.path.join(directory, name),
                os.path.join(directory, f"{TRASH}{name}-{os.getpid()}"),
            )
        except OSError:
            continue  # another process moved it at the same time


def remove_old_reservations(directory: str | os.PathLike[str]) -> int:
    """Delete the reservation folders set aside (Salt's maintenance calls this through
    ``clean_old_jobs``, in a thread of its own); returns how many files it removed."""
    removed = 0
    folder_names = []
    try:
        folder_names = [n for n in os.listdir(directory) if n.startswith(TRASH)]
    except FileNotFoundError:
        return 0
    for name in folder_names:
        folder = os.path.join(os.fspath(directory), name)
        try:
            for entry in os.scandir(folder):
                os.unlink(entry.path)
                removed += 1
            os.rmdir(folder)
        except OSError:
            continue
    return removed
