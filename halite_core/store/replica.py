"""Reads from a PostgreSQL streaming replica (``halite: read_db_url``).

The runners', the API's and the page's reads go to the replica while it is at most
``read_max_lag`` seconds behind the primary; beyond that, or when it does not answer, they
go to the primary, and the log says so (once per change, and again when the replica is
back). Salt's job cache interface (``get_load``, ``get_jid``, ...), the plans of kills and
re-runs and the audit log read the primary always: they must see what was just written.

A replica that does not answer at all (its host hung: connections accepted, nothing
answered) is given ``read_timeout`` seconds, for the lag's measure and for a read's
connection; then the reads go to the primary, and it is measured again only after
:data:`AWAY_RECHECK` seconds (each measure of a hung replica costs a reader that bound).
A read already under way on it when it hung waits for the bound of the runner or request.

The lag is measured at most once per :data:`CHECK_EVERY` seconds: the primary's WAL
position is read (where it inserts: a commit need not be flushed to be seen, with
``synchronous_commit`` off), then the replica's. It is 0 when the replica has replayed up to that
position; else the time since the last transaction it replayed was committed on the primary
(none replayed: not known, taken as too far behind). A server that is not in recovery is no
replica (a promoted one has left the primary's history): the reads go to the primary.
After this process commits what it must read back (a kill, a re-run), its reads go to the
primary for ``read_max_lag`` seconds.

Several masters' engines writing heartbeats keep the last replayed time recent on a live
site.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from halite_core.bounded import DatabaseTimeout, call_within
from halite_core.store.db import Database, get_database

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between two measures of the replica's lag
AWAY_RECHECK = 10.0  # seconds before a replica that did not answer is measured again
PRIMARY_POSITION = "SELECT CAST(pg_current_wal_insert_lsn() AS text)"
UNKNOWN_POSITION = "FFFFFFFF/FFFFFFFF"  # no replica has replayed that far
LAG = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= CAST(%(at)s AS pg_lsn),"
    " extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
)


class ReplicaReads:
    """``read()``: a read transaction on the replica while it is close enough, else on the
    primary. ``source``, ``lag`` and ``reason`` say where the last choice went and why."""

    def __init__(self, primary: Database, url: str, max_lag: float, timeout: float = 2.0) -> None:
        self.primary = primary
        self.url = url
        self.max_lag = max_lag
        self.timeout = timeout  # seconds the replica has to answer (read_timeout)
        self.check_every = CHECK_EVERY
        self.source = "primary"
        self.lag: float | None = None  # seconds; None: not measured, or not answering
        self.reason = "not measured yet"
        self._checked_at = -math.inf
        self._primary_until = -math.inf
        self._lock = threading.Lock()
        self._shown = make_url(url).render_as_string()

    @property
    def replica(self) -> Database:
        # One engine per process (Salt forks), as for the primary.
        return get_database(self.url)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        if self._choose() == "replica":
            try:
                conn = self._connect()
            except (DBAPIError, DatabaseTimeout) as exc:
                self._left(f"it does not answer ({_first_line(exc)})", None)
            else:
                with conn, conn.begin():
                    try:
                        yield conn
                    except OperationalError as exc:
                        # Gone in the middle of a read: this one fails, the next go on.
                        self._left(f"it failed a read ({_first_line(exc)})", None)
                        raise
                return
        with self.primary.read() as conn:
            yield conn

    def _choose(self) -> str:
        now = time.monotonic()
        if now < self._primary_until:
            return "primary"
        if now - self._checked_at < self.check_every or not self._lock.acquire(blocking=False):
            return self.source
        try:
            self._checked_at = now
            self.primary.ensure_schema()  # the replica has the schema the primary has
            try:
                with self.primary.engine.connect() as conn:
                    position = conn.exec_driver_sql(PRIMARY_POSITION).scalar()
                    conn.rollback()
            except DBAPIError:
                position = UNKNOWN_POSITION  # the primary away: judged by time alone
            try:
                standby, caught_up, since = call_within(
                    self.timeout, self._measure, position, what=f"the replica {self._shown}"
                )
            except (DBAPIError, DatabaseTimeout) as exc:
                self._left(f"it does not answer ({_first_line(exc)})", None)
                self._checked_at = now + AWAY_RECHECK - self.check_every
                return self.source
            if not standby:
                self._left("it is not a standby (not in recovery)", None)
                return self.source
            lag = 0.0 if caught_up else math.inf if since is None else max(float(since), 0.0)
            if lag > self.max_lag:
                behind = "not known" if lag == math.inf else f"{lag:.1f} s"
                self._left(f"it is behind by {behind} (read_max_lag {self.max_lag:g} s)", lag)
            else:
                if self.source != "replica":
                    log.warning(
                        "halite: reads from the replica %s again (%.1f s behind)", self._shown, lag
                    )
                self.source, self.lag, self.reason = "replica", lag, "close enough"
            return self.source
        finally:
            self._lock.release()

    def _measure(self, position: str) -> tuple[bool, bool, float | None]:
        with self.replica.engine.connect() as conn:
            standby, caught_up, since = conn.exec_driver_sql(LAG, {"at": position}).one()
            conn.rollback()
        return standby, caught_up, since

    def _connect(self) -> Connection:
        """A connection to the replica within ``timeout`` (its pool checks it first, which
        waits as long as the replica does); one that comes later is closed."""
        late = threading.Event()

        def connect() -> Connection:
            conn = self.replica.engine.connect()
            if late.is_set():
                conn.close()
            return conn

        try:
            return call_within(self.timeout, connect, what=f"the replica {self._shown}")
        except DatabaseTimeout:
            late.set()
            raise

    def stay_on_primary(self) -> None:
        """Read the primary for ``max_lag`` seconds: this process just committed what it
        must read back."""
        self._primary_until = time.monotonic() + self.max_lag

    def _left(self, why: str, lag: float | None) -> None:
        if self.source != "primary" or self.reason == "not measured yet":
            log.warning("halite: reads from the primary, not the replica %s: %s", self._shown, why)
        self.source, self.lag, self.reason = "primary", lag, why


def _first_line(exc: DBAPIError | DatabaseTimeout) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) else None
    return str(cause or exc).strip().splitlines()[0]
