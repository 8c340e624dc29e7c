"""Salt's master job cache interface on the SQL job index: the facade Salt's returner,
the engine, the runners and the HTTP API use, with Salt's method names.

Writes: :meth:`JobStore.record` is what Salt's job path calls. It checks the call, encodes
it and appends it to this process's journal (halite_core.durability.journal), and returns:
it never raises and never touches the database. The master's one committer
(halite_core.durability.committer: the engine's process, or a Salt process while no engine
runs) commits the journals in batches through halite_core.store.writes.

Reads: Salt's job cache interface (:meth:`get_load`, :meth:`get_jid`, :meth:`iter_loads`,
...) reads the committed index (halite_core.store) and adds what the journals and the spool
hold beyond it, so that a write accepted by any process is visible at once, as with a
synchronous cache.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, or_, select
from sqlalchemy.exc import DBAPIError, OperationalError

from halite_core import encoding, jids
from halite_core.bounded import call_within
from halite_core.config import Settings
from halite_core.durability.committer import Committer, commit_or_spool, committer_for, forget
from halite_core.durability.journal import (
    SPOOL_OP,
    item_from_line,
    item_to_line,
    pending_items,
    raw_return_line,
    wait_taken,
    writer_for,
)
from halite_core.durability.spool import Spool
from halite_core.perprocess import PerProcess
from halite_core.states import COMPLETE, KILLED, NO_RETURN, PENDING, RETURNED, RUNNING
from halite_core.store.db import Database, SchemaError, get_database
from halite_core.store.engine_state import EngineState
from halite_core.store.ops import (
    AuditItem,
    EndtimeItem,
    InvalidLoad,
    Item,
    KilledItem,
    LoadItem,
    MinionsItem,
    NoReturnItem,
    RawReturn,
    RerunItem,
    ReturnItem,
    SaltWrite,
    SettledItem,
    item_jid,
    utcnow,
)
from halite_core.store.replica import ReplicaReads
from halite_core.store.retention import Retention
from halite_core.store.salt_reads import (
    _latest,
    _placeholder,
    _raw,
    _salt_return,
    is_master_job,
    salt_load,
)
from halite_core.store.schema import job_returns, jobs_index
from halite_core.store.writes import (
    FIND_JOB,
    JOB_EVENT,
    Writes,
    event_stamp,
    function_name,
    is_return_load,
    plain_return,
    split_arguments,
    target_text,
)

__all__ = [
    "COMPLETE", "FIND_JOB", "JOB_EVENT", "KILLED", "NO_RETURN", "PENDING", "RETURNED",
    "RUNNING", "EndtimeItem", "InvalidLoad", "Item", "JobStore", "Journalled", "KilledItem",
    "LoadItem", "MinionsItem", "NoReturnItem", "ReturnItem", "event_stamp", "flush_all",
    "function_name", "get_store", "is_outage", "is_return_load", "item_to_line",
    "split_arguments", "target_text", "utcnow",
]  # fmt: skip

log = logging.getLogger(__name__)


# SQLSTATE classes of a PostgreSQL that cannot take a write now but will later: connection
# exceptions, insufficient resources (a full disk), operator intervention (a shutdown, a
# cancelled statement), system errors, transaction rollbacks (a deadlock), a lock not
# available. Others (a row too large for an index, bad data) refuse the write for good.
OUTAGE_SQLSTATES = ("08", "53", "57", "58", "40", "55")


def is_outage(exc: BaseException) -> bool:
    """True when the database could not be reached or written at all (down, refusing
    connections, locked, its disk full): worth spooling. False for a write the database
    refuses whatever its state, which is set aside. A few lookups on SQLite's own cursor raise
    the driver's errors, unwrapped."""
    if isinstance(exc, (SchemaError, OSError, sqlite3.OperationalError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        state = getattr(exc.orig, "sqlstate", None)
        if isinstance(state, str) and state:
            return state.startswith(OUTAGE_SQLSTATES)
        return isinstance(exc, OperationalError)
    return False


@dataclass(frozen=True)
class Journalled:
    """What the journals and the spool hold for a job, not committed yet: its publish
    (function and targets) if any, and the minions whose return, kill mark or settling is
    accepted."""

    function: str | None = None
    published: bool = False
    targets: frozenset[str] = frozenset()
    settled: frozenset[str] = frozenset()


class JobStore:
    """The job index for one database, as Salt's job cache sees it."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        self.db = db or get_database(settings.db_url, settings.sqlite_busy_timeout)
        if self.db.partitions is not None:
            self.db.partitions.configure(settings.partition_interval, settings.partitions_ahead)
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self.writes = Writes(settings, self.db)
        self.retention = Retention(settings, self.db)
        self._engine_state = EngineState(self.db)
        self._next_spool_check = 0.0
        # A commit failed (the database away), and the first one to succeed after it: the
        # spool is replayed then, not at the next interval.
        self._commits_failing = False
        self._database_back = False
        self._replay_lock = threading.Lock()
        self._committer: Committer | None = None
        self._as_engine = False
        # The runners', the API's and the page's reads: a replica's when one is configured.
        self.views: Database | ReplicaReads = (
            ReplicaReads(
                self.db, settings.read_db_url, settings.read_max_lag, settings.read_timeout
            )
            if settings.read_db_url
            else self.db
        )

    # ------------------------------------------------------------------ jids
    def reserve_jid(self, jid: str) -> bool:
        """Claim a freshly generated JID for this master; False if another process already
        holds it. A file, never the database: this runs on Salt's publish path."""
        return jids.reserve(self.settings.jid_dir, jid)

    def new_jid(self, unique: bool = False, tries: int = 5) -> str:
        """A JID no other process of this master has: generated like Salt's own, then
        reserved (as Salt's local_cache does, in the file system)."""
        jid = jids.gen_jid(self.settings.jid_utc, unique=unique)
        for _ in range(tries):
            if self.reserve_jid(jid):
                return jid
            jid = jids.next_jid(jid)
        raise RuntimeError(f"could not reserve a unique jid after {tries} tries")

    # ------------------------------------------------------------------ writes, at once
    def items_for(self, op: str, *args: Any) -> list[Item]:
        """Check and prepare one of Salt's job cache writes; raises :class:`InvalidLoad`."""
        return self.writes.items_for(op, *args)

    def apply_items(self, items: Sequence[Item]) -> int:
        """Apply prepared writes in one transaction; returns how many returns were stored."""
        return self.writes.apply_items([self._prepared(item) for item in items])

    def mark_killed(self, jid: str, minions: Iterable[str], at: dt.datetime | None = None) -> None:
        """Mark the minions still ``pending`` in ``jid`` as ``killed`` (they were sent
        ``saltutil.kill_job`` and confirmed it), which settles the job. Journalled and
        committed with the next batch, like a return: a locked database never holds up a
        kill. A return that arrives after all the same still replaces the mark."""
        marked = sorted(set(minions))
        if marked:
            item = KilledItem(jid, marked, at or utcnow())
            self.submit([(item_to_line(item), item)])

    def mark_rerun(self, jid: str, rerun_of: str) -> None:
        """Record that job ``jid`` runs job ``rerun_of`` again (``jobs_index.rerun_of``).
        Journalled and committed with the next batch, like a return."""
        item = RerunItem(jid, rerun_of)
        self.submit([(item_to_line(item), item)])

    def record_audit(self, entry: Mapping[str, Any]) -> None:
        """Append an audit log entry (:func:`halite_core.audit.entry`) through the journal,
        as durable as a return; committed in order with the next batch."""
        item = AuditItem(dict(entry))
        self.submit([(item_to_line(item), item)])

    def read_own_writes(self) -> None:
        """The views read the primary for a while (read_max_lag): this process has just
        committed what its next read must show."""
        if isinstance(self.views, ReplicaReads):
            self.views.stay_on_primary()

    # ------------------------------------------------------------------ retention, engine
    def clean_old_jobs(
        self, keep_seconds: int | None = None, now: dt.datetime | None = None
    ) -> int:
        """See :meth:`halite_core.store.retention.Retention.clean_old_jobs`."""
        return self.retention.clean_old_jobs(keep_seconds, now)

    def save_engine_state(self, master_id: str, values: Mapping[str, Any]) -> None:
        self._engine_state.save_engine_state(master_id, values)

    def engine_state(self, master_id: str) -> dict[str, Any] | None:
        return self._engine_state.engine_state(master_id)

    # ------------------------------------------------------------------ reads
    def pending(self, jid: str | None = None) -> list[Item]:
        """Writes accepted by any process of this master but not in the database yet."""
        items = pending_items(self.settings.journal_dir, self.settings.spool_dir, jid)
        return [prepared for item in items if (prepared := self._readable(item)) is not None]

    def _readable(self, item: Item) -> Item | None:
        """A journalled return as the committer will store it (None: one it will refuse)."""
        if not isinstance(item, RawReturn):
            return item
        try:
            return self._prepared(item)
        except (InvalidLoad, ValueError, TypeError):
            return None

    def journalled(self, jid: str) -> Journalled:
        """What is accepted for ``jid`` but not committed yet (see :func:`kill.plan`)."""
        function: str | None = None
        published = False
        targets: set[str] = set()
        settled: set[str] = set()
        for item in self.pending(jid):
            if isinstance(item, LoadItem):
                published = True
                function = function_name(item.load.get("fun")) or function
                targets.update(item.minions or ())
            elif isinstance(item, MinionsItem):
                targets.update(item.minions)
            elif isinstance(item, ReturnItem):
                settled.add(item.row.minion)
            elif isinstance(item, SettledItem):
                settled.update(item.minions)
        return Journalled(function, published, frozenset(targets), frozenset(settled))

    def _from_db(
        self, read: Callable[[Connection], Any], default: Any, timeout: float | None = None
    ) -> Any:
        """A read of the database for Salt's job cache interface, bounded by ``timeout``
        (``read_timeout``) on PostgreSQL, whose server may be frozen (SQLite's readers
        never wait for a writer); ``default`` when the database cannot be reached or does
        not answer in time (the journals and the spool then answer alone)."""

        def within() -> Any:
            with self.db.read() as conn:
                return read(conn)

        try:
            if self.db.is_sqlite:
                return within()
            return call_within(timeout or self.settings.read_timeout, within)
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning(
                "halite: the database cannot be read (%s); answering from the journals", exc
            )
            return default

    def get_load(self, jid: str) -> dict[str, Any]:
        """The job's load as Salt saved it, plus ``Minions`` (its target list) when known.
        Salt's CLI asks for it right after publishing, before the master's worker has
        committed it, or while the database is unreachable: what any process has accepted
        counts, in its journal or in the spool. Runner and wheel jobs have no ``Minions``
        and no ``arg``, as with Salt's ``local_cache`` (their publish is the master's own)."""
        pending = self.pending(jid)  # before the database: see pending_lines

        def read(conn: Connection) -> tuple[Any, list[str]]:
            load = conn.scalar(
                select(_raw(jobs_index.c.load, self.db.is_sqlite)).where(jobs_index.c.jid == jid)
            )
            minions = conn.scalars(
                select(job_returns.c.minion).where(
                    job_returns.c.jid == jid, job_returns.c.expected.is_(True)
                )
            ).all()
            return load, list(minions)

        stored, minions = self._from_db(read, (None, []))
        load: dict[str, Any] | None = None
        if stored is not None:
            load = dict(encoding.loads(stored) or {})
        # A row made from a return that came first holds a placeholder: a publish still
        # journalled is the real thing.
        committed = load is not None and not _placeholder(load)
        targets = set(minions)
        second_hand: dict[str, Any] | None = None
        for item in pending:
            if isinstance(item, LoadItem):
                if item.only_new:
                    second_hand = second_hand or dict(item.load)
                elif not committed:
                    load = dict(item.load)  # a repeated publish: the last one wins
                targets.update(item.minions or ())
            elif isinstance(item, MinionsItem):
                targets.update(item.minions)
        if load is None:
            load = second_hand
        if load is None:
            return {}
        load = salt_load(load)
        if targets and not is_master_job(load.get("fun")):
            load["Minions"] = sorted(targets)
        return load

    def get_jid(self, jid: str) -> dict[str, dict[str, Any]]:
        """``{minion: {"return": ..., "retcode": ..., "success": ..., "out": ...}}`` for a job,
        committed or still journalled (the first return of a minion wins). Runner and wheel
        jobs give ``return`` (and ``out``) only, as Salt's ``local_cache`` does."""
        pending = self.pending(jid)
        r = job_returns.c

        def read(conn: Connection) -> list[Any]:
            return list(
                conn.execute(
                    select(
                        r.minion, _raw(r.return_value, self.db.is_sqlite), r.retcode, r.success,
                        r.out, r.function, r.returned_at,
                    ).where(r.jid == jid, r.state == RETURNED)
                )
            )  # fmt: skip

        ret: dict[str, dict[str, Any]] = {}
        arrived: dict[str, dt.datetime] = {}
        for minion, value, retcode, success, out, function, at in self._from_db(read, []):
            ret[minion] = _salt_return(encoding.loads(value), retcode, success, out, function)
            arrived[minion] = at
        for item in pending:
            if not isinstance(item, ReturnItem):
                continue
            row = item.row
            known = arrived.get(row.minion)
            # The first return of a minion wins, by when it arrived, as the committer keeps it.
            if row.minion in ret and (known is None or known <= row.returned_at):
                continue
            ret[row.minion] = _salt_return(
                encoding.loads(row.value.text), row.retcode, row.success, row.out, row.function
            )
            arrived[row.minion] = row.returned_at
        return ret

    def _pending_loads(self) -> tuple[dict[str, LoadItem], dict[str, dt.datetime]]:
        """The newest pending publish of each job (first-hand over second-hand), and the
        latest pending return (or end time) of each job."""
        loads: dict[str, LoadItem] = {}
        last: dict[str, dt.datetime] = {}
        for item in self.pending():
            if isinstance(item, LoadItem):
                if not (item.only_new and item.jid in loads and not loads[item.jid].only_new):
                    loads[item.jid] = item
            elif isinstance(item, (ReturnItem, EndtimeItem)):
                jid = item_jid(item) or ""
                at = item.row.returned_at if isinstance(item, ReturnItem) else item.at
                last[jid] = max(at, last.get(jid, at))
        return loads, last

    def iter_loads(self) -> Iterator[tuple[str, dict[str, Any], dt.datetime | None]]:
        """Every job that has a load, as ``(jid, load, last_return_at)``: Salt's get_jids
        (which builds a mapping of them all in any case). Read within ``request_timeout``;
        the journals and the spool alone answer when the database does not."""
        pending, last = self._pending_loads()
        j = jobs_index.c
        query = select(j.jid, _raw(j.load, self.db.is_sqlite), j.last_return_at).where(
            j.load.is_not(None)
        )
        rows = self._from_db(
            lambda conn: conn.execute(query).all(), [], self.settings.request_timeout
        )
        seen: set[str] = set()
        for jid, load, stored in rows:
            seen.add(jid)
            item = pending.get(jid)
            found = encoding.loads(load)
            if item is not None and not item.only_new and _placeholder(found):
                found = item.load
            yield jid, salt_load(found), _latest(stored, last.get(jid))
        for jid, item in pending.items():
            if jid not in seen:
                yield jid, salt_load(item.load), last.get(jid)

    def newest_loads(
        self, count: int, filter_find_job: bool = True
    ) -> list[tuple[str, dict[str, Any]]]:
        """The ``count`` newest jobs by JID, oldest first, as Salt's get_jids_filter orders them."""
        size = max(int(count), 0)
        pending = {
            jid: dict(item.load)
            for jid, item in self._pending_loads()[0].items()
            if not (filter_find_job and item.load.get("fun") == FIND_JOB)
        }
        j = jobs_index.c
        query = select(j.jid, _raw(j.load, self.db.is_sqlite)).where(j.load.is_not(None))
        if filter_find_job:
            query = query.where(or_(j.function.is_(None), j.function != FIND_JOB))
        rows = self._from_db(
            lambda conn: conn.execute(query.order_by(j.jid.desc()).limit(size)).all(), []
        )
        found = {jid: encoding.loads(load) for jid, load in rows}
        for jid, load in pending.items():
            if jid not in found or _placeholder(found[jid]):
                found[jid] = load
        found = {jid: salt_load(load) for jid, load in found.items()}
        newest = sorted(found, reverse=True)[:size]
        return [(jid, found[jid]) for jid in reversed(newest)]

    def minions_seen(self) -> list[str]:
        """Every minion that has returned a job still in the index: Salt's get_minions."""
        r = job_returns.c
        pending = self.pending()  # before the database: see pending_lines
        found = set(
            self._from_db(
                lambda conn: list(
                    conn.scalars(select(r.minion).where(r.state == RETURNED).distinct())
                ),
                [],
            )
        )
        found.update(item.row.minion for item in pending if isinstance(item, ReturnItem))
        return sorted(found)

    def last_jid_per_minion(self, fun: str) -> dict[str, str]:
        """``{minion: newest jid}`` of the jobs running ``fun``: Salt's get_fun."""
        r = job_returns.c
        pending = self.pending()  # before the database: see pending_lines
        rows = self._from_db(
            lambda conn: conn.execute(
                select(r.minion, func.max(r.jid))
                .where(r.function == fun, r.state == RETURNED)
                .group_by(r.minion)
            ).all(),
            [],
        )
        newest = {minion: jid for minion, jid in rows}
        for item in pending:
            if isinstance(item, ReturnItem) and item.row.function == fun:
                row = item.row
                if row.jid > newest.get(row.minion, ""):
                    newest[row.minion] = row.jid
        return newest

    def last_return_at(self, jid: str) -> dt.datetime | None:
        """The arrival of the job's latest return (or Salt's update_endtime), pending ones
        included."""
        moments = [
            item.row.returned_at if isinstance(item, ReturnItem) else item.at
            for item in self.pending(jid)
            if isinstance(item, (ReturnItem, EndtimeItem))
        ]
        stored = self._from_db(
            lambda conn: conn.scalar(
                select(jobs_index.c.last_return_at).where(jobs_index.c.jid == jid)
            ),
            None,
        )
        if stored is not None:
            moments.append(stored)
        return max(moments) if moments else None

    # ------------------------------------------------------------------ Salt's job path
    def record(self, write: SaltWrite | str, *args: Any) -> bool | None:
        """A write from Salt's job path: checked, encoded and journalled; the committer
        commits it with its next batch. Never raises and never waits for the database: bad
        input goes to the spool's ``rejected/``. True when journalled, None when set aside."""
        op = str(getattr(write, "value", write))  # how the spool names it
        try:
            if write == SaltWrite.SAVE_RETURN:
                entries = [self._return_entry(*args)]
            else:
                entries = [(item_to_line(item), item) for item in self.items_for(write, *args)]
        except InvalidLoad as exc:
            self.spool.reject(op, *args, reason=str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - the returner must never break a job
            log.error("halite: cannot prepare %s; spooled", op, exc_info=True)
            self.spool.put(op, *args, reason=f"{type(exc).__name__}: {exc}")
            return None
        if entries:
            self._journal(entries)
        return True

    def _return_entry(
        self, load: object, returned_at: dt.datetime | None = None
    ) -> tuple[str, Item]:
        """A minion return as a journal line. A plain function's return (most of them) is
        checked as far as the journal needs (a job and a minion) and encoded once, as Salt
        sent it: the committer stores that text. A state run, a runner's payload or one
        of halite's own answers is prepared in full here (summary, withheld parts)."""
        if not isinstance(load, Mapping):
            raise InvalidLoad(f"a return must be a dict, not {type(load).__name__}")
        if not plain_return(load.get("fun"), load.get("fun_args")):
            item = self.writes.return_item(load, returned_at or utcnow())
            return item_to_line(item), item
        jid, minion = load.get("jid"), load.get("id")
        if not jids.is_jid(jid):
            raise InvalidLoad(f"return from {minion!r} has no valid jid: {jid!r}")
        if not isinstance(minion, str) or not minion:
            raise InvalidLoad(f"return for {jid} has no minion id: {minion!r}")
        value, converted = encoding.dumps(load.get("return"))
        head = {k: v for k, v in load.items() if k != "return"}
        at = returned_at.timestamp() if returned_at is not None else time.time()
        moment = dt.datetime.fromtimestamp(at, dt.timezone.utc)  # as the line reads back
        line = raw_return_line(head, value, converted, at)
        return line, RawReturn(head, value, converted, moment)

    def submit(self, entries: Sequence[tuple[str, Item]]) -> None:
        """Journal prepared writes (the engine's changes, kill marks, audit entries)."""
        self._journal(list(entries))

    def _journal(self, entries: list[tuple[str, Item]]) -> None:
        writer = writer_for(self.settings.journal_dir)
        committer = self.committer()
        held, span = writer.append_at([line for line, _ in entries])
        if held:
            # The journal's disk refuses: the spool (maybe elsewhere) keeps what the writer
            # holds instead; else the writer keeps holding them and journals them with the
            # next write.
            held = writer.take_held()
            if held and not self.spool.put(SPOOL_OP, held, reason="the journal cannot be written"):
                writer.hold(held)
        elif span is not None:
            committer.remember(*span, entries)
        if self.settings.flush_interval <= 0:
            committer.wake()

    def _prepared(self, item: Item) -> Item:
        if isinstance(item, RawReturn):
            encoded = encoding.Encoded(item.value, item.converted)
            return self.writes.return_item(item.load, item.at, encoded)
        return item

    def apply_entries(self, entries: Sequence[tuple[str, Item]]) -> None:
        """Commit journalled writes in one transaction; raises when the database fails
        (halite_core.durability.committer.commit_or_spool decides what then)."""
        self.writes.apply_items([self._prepared(item) for _, item in entries])

    def _apply_journalled(self, entries: Sequence[tuple[str, Item]]) -> None:
        """:meth:`apply_entries` for the committer's batches, which also notes when the
        database is back: a batch committed after one failed because it was away (not
        the spool's own replays, nor writes the database refused)."""
        try:
            self.apply_entries(entries)
        except Exception as exc:
            if is_outage(exc):
                self._commits_failing = True
            raise
        if self._commits_failing:
            self._commits_failing = False
            self._database_back = True

    # ------------------------------------------------------------------ the committer
    def committer(self, engine: bool = False) -> Committer:
        """This process's committer for this store's journals, started on first use. A Salt
        process defers to the engine when the engine is configured (``engine_commits``).
        Stores of one database and journal directory in one process share the committer
        the first of them built (its settings time the commits and the spool's replay)."""
        committer = self._committer
        if committer is None or committer.pid != os.getpid() or (engine and not self._as_engine):
            if engine:
                self._as_engine = True

            def build() -> Committer:
                return Committer(
                    self.settings.journal_dir,
                    apply=self._apply_journalled,
                    spool=self.spool,
                    is_outage=is_outage,
                    interval=self.settings.flush_interval,
                    batch_size=self.settings.batch_size,
                    tick=self.maybe_replay,
                    engine=self._as_engine,
                    defer=self.settings.engine_commits,
                    # SQLite's writers take turns: one transaction at a time.
                    lanes=self.settings.commit_lanes if self.db.dialect_name == "postgresql" else 1,
                )

            key = f"{self.settings.db_url}|{int(self._as_engine)}"
            committer = self._committer = committer_for(key, self.settings.journal_dir, build)
            committer.start()
        return committer

    def flush(self, timeout: float | None = None) -> int:
        """Make what this process journalled visible in the database (readers call it to
        see their own writes): drain the journals now if this process is the committer,
        else wait, at most ``timeout`` seconds, until the committer has taken them."""
        committer = self._committer
        if committer is None or committer.pid != os.getpid():
            return 0
        bound = self.settings.read_timeout if timeout is None else timeout
        if committer.run_once(wait=bound) or committer.holds_lock():
            return 1
        name, size = writer_for(self.settings.journal_dir).position()
        return int(wait_taken(self.settings.journal_dir, name, size, bound))

    def close(self, wait: float | None = None) -> bool:
        """Commit what this process journalled if it is the committer, waiting at most
        ``wait`` seconds (what is left stays journalled for the next committer)."""
        committer = self._committer
        done = True
        if committer is not None and committer.pid == os.getpid():
            done = committer.close(wait)
            forget(committer)
            self._committer = None  # a later write starts a new committer
        return done

    def recover(self) -> int:
        """Commit what the journals hold (of processes that died too) and replay the
        spool now (the engine, on start)."""
        committer = self.committer(engine=self._as_engine)
        done = committer.run_once()
        return done + self.replay_spool()

    def maybe_replay(self, wait: float = 0.0) -> int:
        """Replay the spool if something waits in it: at once when a write was committed
        after one failed (the database is back), else once per ``spool_replay_interval``
        (while it is away, each attempt costs a connection timeout; while only the spooled
        writes fail, each costs what made them fail). ``wait``: how long to wait for a
        replay another thread runs, so that a reader's flush does not return before the
        writes that replay holds are in."""
        lock = self._replay_lock
        if not (lock.acquire(timeout=wait) if wait > 0 else lock.acquire(blocking=False)):
            return 0
        try:
            now = time.monotonic()
            if now < self._next_spool_check and not self._database_back:
                return 0
            self._database_back = False
            self._next_spool_check = now + self.settings.spool_replay_interval
            return self.replay_spool()
        finally:
            self._replay_lock.release()

    def replay_spool(self) -> int:
        """Replay the writes spooled while the database was away, oldest first."""
        return self.spool.replay(self._apply_spooled, is_outage)

    def _apply_spooled(self, op: str, args: list[Any]) -> None:
        if op == SPOOL_OP:
            entries = []
            for line in args[0]:
                try:
                    entries.append((line, item_from_line(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    self.spool.reject(SPOOL_OP, [line], reason=f"unreadable journal line: {exc}")
            commit_or_spool(self.apply_entries, self.spool, entries, is_outage, on_outage="raise")
        else:
            # One of Salt's writes, spooled before it could be checked (the returner could
            # not even open the index): checked now, and committed through the one path.
            try:
                items = self.items_for(SaltWrite(op), *args)
            except ValueError as exc:  # InvalidLoad too: set aside by the spool
                raise InvalidLoad(f"unknown or invalid spooled operation {op!r}: {exc}") from exc
            entries = [(item_to_line(item), item) for item in items]
            commit_or_spool(self.apply_entries, self.spool, entries, is_outage, on_outage="raise")


_stores: PerProcess[Settings, JobStore] = PerProcess(JobStore, lambda store: None)


def get_store(settings: Settings) -> JobStore:
    """This process's :class:`JobStore` for these settings."""
    return _stores.get(settings)


def flush_all(timeout: float | None = None) -> int:
    """Commit every write this process has journalled, for every database (waiting at
    most ``timeout`` seconds for another process's committer, ``read_timeout`` if None)."""
    return sum(store.flush(timeout) for store in _stores.mine())
