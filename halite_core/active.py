"""The active-job engine: which jobs are running, kept exact from the master's event bus.

:class:`ActiveJobs` follows ``salt/job/<jid>/new``, ``salt/job/<jid>/ret/<minion>``,
``salt/run/<jid>/new`` and ``salt/run/<jid>/ret`` events. A job is running from its ``new``
event until every targeted minion has returned or has been settled as not returning.

Minions that do not answer are handled the way Salt's CLI does, in the background: once a
job has run ``timeout`` seconds, only its still-pending minions are asked
(``saltutil.find_job`` with a list target) whether they still run it; those that do not
answer within ``timeout_grace`` seconds, or no longer run it, are settled ``no_return``.
Minions that still run it are asked again ``timeout_grace`` seconds later. When none of a
job's pending minions can be asked at all (their keys were deleted: Salt publishes to
nobody), they are settled after ``UNSENDABLE_TRIES`` such attempts.

A repeated ``new`` for a job (a syndic forwards its own, with its own minions) adds the
minions not seen before, and takes up again a job that had completed without them.

Every change is written to the job index in batches (at most ``flush_interval`` seconds
or ``batch_size`` changes apart), so runners in other processes read the same truth. On
start the engine rebuilds its view from the index and asks the minions of every job that
was running; until that is done its ``engine_state`` row says it has not reconciled, and
readers report such jobs as ``unknown`` rather than as running or complete. If the
database is down when the engine starts, it follows the bus all the same and rebuilds its
view once the database answers.

The engine tallies what it sees (events, minion returns by result, minions settled
``no_return``, kills) in plain counters and hands them to halite_core.metrics once per pass
of its loop; the running jobs and the age of the oldest are read from memory at a scrape.

Nothing here knows Salt: the event source and the ``find_job`` sender are handed in.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from halite_core import jids
from halite_core.announce import DEFAULT_PREFIX, is_rerun_event
from halite_core.config import EngineOptions
from halite_core.durability.journal import backlog_bytes
from halite_core.jobcache import (
    FIND_JOB,
    JOB_EVENT,
    PENDING,
    RUNNING,
    Item,
    JobStore,
    LoadItem,
    MinionsItem,
    NoReturnItem,
    event_stamp,
    is_outage,
    item_to_line,
)
from halite_core.metrics import Metrics, get_metrics
from halite_core.store.replica import ReplicaReads
from halite_core.store.schema import job_returns, jobs_index

log = logging.getLogger(__name__)

EARLY_RETURNS_KEPT = 10_000
HEARTBEAT_SECONDS = 5.0
UNSENDABLE_TRIES = 3  # find_job sent to nobody this many times in a row: settle the minions
RECOVER_RETRY_SECONDS = 10.0
KILL_JOB = "saltutil.kill_job"


@dataclass
class Active:
    jid: str
    function: str | None
    pending: set[str]
    probe_at: float  # when to ask the pending minions
    started: float  # when it was published (epoch seconds)
    runner: bool = False
    probe: str | None = None  # jid of the find_job asked and not yet settled
    unsendable: int = 0  # find_job sends in a row that reached no minion
    answered: set[str] = field(default_factory=set)  # returned or settled


@dataclass
class Probe:
    jid: str  # the job asked about
    asked: set[str]  # the minions asked that have not answered yet
    deadline: float
    running: set[str] = field(default_factory=set)
    minions: frozenset[str] = frozenset()  # all the minions asked


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def return_failed(data: Mapping[str, Any]) -> bool:
    """Whether a return event reports a failure, from its own fields alone (no parsing of
    the return): ``success`` false or a non-zero ``retcode``, which Salt sets for a
    failed state too."""
    retcode = data.get("retcode")
    return data.get("success") is False or (retcode is not None and retcode != 0)


@dataclass
class Tally:
    """What the engine saw since it last handed its counts to the metrics."""

    events: int = 0
    returned: int = 0
    failed: int = 0
    no_return: int = 0
    kills: int = 0
    reruns: int = 0


class ActiveJobs:
    """The engine's state and its writes; drive it with :meth:`handle` and :meth:`tick`."""

    def __init__(
        self,
        store: JobStore,
        options: EngineOptions,
        send_find_job: Callable[[str, list[str]], str | None],
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.master_id = store.settings.master_id or "master"
        self._send_find_job = send_find_job
        self._clock = clock
        self.jobs: dict[str, Active] = {}
        self.probes: dict[str, Probe] = {}
        self._early: OrderedDict[str, set[str]] = OrderedDict()  # returns before their `new`
        self._finished: OrderedDict[str, None] = OrderedDict()  # recently completed jobs
        self._unreconciled: set[str] = set()
        self._reconciled = False
        self._recovered = False
        self._recover_at = 0.0
        self._queue: list[Item] = []
        self._oldest: float | None = None
        self._next_heartbeat = 0.0
        self.max_delay = 0.0  # longest event-to-database delay seen, in seconds
        self._tally = Tally()
        # The prefix of halite's own events (the engine's events: tag_prefix): a re-run's
        # <prefix>/<jid>/rerun is counted.
        self.event_prefix = DEFAULT_PREFIX
        self.metrics = metrics if metrics is not None else get_metrics()
        self.metrics.watch_engine(self._running_now)
        journal_dir, spool = store.settings.journal_dir, store.spool
        self.metrics.watch_storage(lambda: backlog_bytes(journal_dir), spool.size)
        views = store.views
        if isinstance(views, ReplicaReads):
            self.metrics.watch_replica(lambda: (views.source, views.lag))

    # ------------------------------------------------------------------ start
    def recover(self) -> int:
        """Rebuild the running set from the index and schedule a check of each such job.
        While the database is unreachable this returns 0 and :meth:`tick` tries again."""
        now = self._clock()
        try:
            # Writes the master's workers journalled but did not commit before it stopped.
            self.store.recover()
            j, r = jobs_index.c, job_returns.c
            with self.store.db.read() as conn:
                rows = conn.execute(
                    select(j.jid, j.function, j.start_time, r.minion)
                    .join(job_returns, r.jid == j.jid)
                    .where(j.status == RUNNING, r.state == PENDING)
                    .where((j.master_id == self.master_id) | j.master_id.is_(None))
                ).all()
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._recover_at = now + RECOVER_RETRY_SECONDS
            log.error(
                "halite engine: database unavailable at start (%s); following the bus, "
                "recovering the running jobs once it answers",
                exc,
            )
            return 0
        self._recovered = True
        runner_settled: dict[str, list[str]] = {}
        for jid, function, start_time, minion in rows:
            if function and function.startswith("runner.") and minion == self.master_id:
                # A runner runs inside the master: it did not survive the restart.
                runner_settled.setdefault(jid, []).append(minion)
                continue
            job = self.jobs.setdefault(
                jid, Active(jid, function, set(), probe_at=now, started=start_time.timestamp())
            )
            job.pending.add(minion)
        for jid, minions in runner_settled.items():
            self._queue_item(NoReturnItem(jid, minions, _utc(now)), now)
        self._unreconciled = set(self.jobs)
        self._write_state(now, started=True)
        log.info("halite engine: recovered %d running jobs from the index", len(self.jobs))
        return len(self.jobs)

    # ------------------------------------------------------------------ events
    def handle(self, tag: str, data: Mapping[str, Any]) -> None:
        self._tally.events += 1
        if is_rerun_event(self.event_prefix, tag):
            self._tally.reruns += 1
            return
        match = JOB_EVENT.match(tag) if isinstance(tag, str) else None
        if match is None or not isinstance(data, Mapping) or not jids.is_jid(match["jid"]):
            return
        now = self._clock()
        jid = match["jid"]
        if match["kind"] == "run":
            self._on_runner(jid, match["what"], data, now)
        elif match["what"] == "new" and match["minion"] is None:
            self._on_new(jid, data, now)
        elif match["what"] == "ret" and match["minion"]:
            self._on_return(jid, match["minion"], data, now)

    def _on_new(self, jid: str, data: Mapping[str, Any], now: float) -> None:
        listed = data.get("minions")
        minions = sorted({str(m) for m in listed}) if isinstance(listed, (list, tuple)) else []
        if jid in self.jobs or jid in self._finished:
            self._on_repeated_new(jid, data, set(minions), now)
            return
        load = {k: v for k, v in data.items() if k not in ("minions", "missing", "_stamp")}
        self._queue_item(LoadItem(jid, load, minions, only_new=True), now)
        if data.get("fun") == KILL_JOB:
            self._tally.kills += 1
        pending = set(minions) - self._early.pop(jid, set())
        if pending:
            self.jobs[jid] = Active(
                jid, data.get("fun"), pending, probe_at=now + self.options.timeout, started=now
            )
        else:
            self._finish(jid)  # every minion answered before the announcement

    def _on_repeated_new(
        self, jid: str, data: Mapping[str, Any], minions: set[str], now: float
    ) -> None:
        """Another announcement of a job already followed: a syndic forwards its own
        ``new`` with its own minions. Those not yet returned or settled are followed too."""
        job = self.jobs.get(jid)
        extra = minions - (job.pending | job.answered if job else set())
        if not extra:
            return
        self.flush()  # the engine's own writes first, so that the index is up to date
        r = job_returns.c
        try:
            with self.store.db.read() as conn:
                done = set(
                    conn.scalars(
                        select(r.minion).where(
                            r.jid == jid, r.minion.in_(sorted(extra)), r.state != PENDING
                        )
                    )
                )
        except Exception:  # noqa: BLE001 - unsure: follow them; a probe settles them
            log.warning("halite engine: cannot read the minions of %s", jid, exc_info=True)
            done = set()
        extra -= done
        if not extra:
            return
        self._queue_item(MinionsItem(jid, sorted(extra)), now)
        if job is None:
            self._finished.pop(jid, None)
            job = self.jobs[jid] = Active(
                jid, data.get("fun"), set(), probe_at=now + self.options.timeout, started=now
            )
        job.pending |= extra

    def _on_return(self, jid: str, minion: str, data: Mapping[str, Any], now: float) -> None:
        self._tally.returned += 1
        if return_failed(data):
            self._tally.failed += 1
        probe = self.probes.get(jid)
        if probe is not None:
            self._on_probe_answer(probe, minion, data.get("return"))
        if self.options.write_returns:
            self._queue_return({**data, "jid": jid, "id": minion}, now)
        job = self.jobs.get(jid)
        if job is None:
            self._remember_early(jid, minion)
            return
        job.pending.discard(minion)
        job.answered.add(minion)
        if not job.pending:
            self._finish(jid)

    def _on_runner(self, jid: str, what: str, data: Mapping[str, Any], now: float) -> None:
        if what == "new":
            load = {
                "fun": data.get("fun"),
                "arg": data.get("fun_args", []),
                "user": data.get("user"),
                "tgt": self.master_id,
                "tgt_type": "list",
            }
            # First-hand: for a runner job this event is the publish (with its arguments);
            # Salt's store_job only hands the job cache the runner's return.
            self._queue_item(LoadItem(jid, load, [self.master_id]), now)
            self.jobs[jid] = Active(
                jid, data.get("fun"), {self.master_id}, probe_at=float("inf"), started=now,
                runner=True,
            )  # fmt: skip
        else:
            if self.options.write_returns:
                self._queue_return({**data, "jid": jid, "id": self.master_id}, now)
            self.jobs.pop(jid, None)

    def _remember_early(self, jid: str, minion: str) -> None:
        self._early.setdefault(jid, set()).add(minion)
        self._early.move_to_end(jid)
        while len(self._early) > EARLY_RETURNS_KEPT:
            self._early.popitem(last=False)

    def _finish(self, jid: str) -> None:
        job = self.jobs.pop(jid, None)
        if job is not None and job.probe:
            self.probes.pop(job.probe, None)
        self._unreconciled.discard(jid)
        self._finished[jid] = None
        while len(self._finished) > EARLY_RETURNS_KEPT:
            self._finished.popitem(last=False)

    # ------------------------------------------------------------------ minions that never answer
    def _on_probe_answer(self, probe: Probe, minion: str, answer: Any) -> None:
        if minion not in probe.asked:
            return
        probe.asked.discard(minion)
        if isinstance(answer, Mapping) and answer:
            probe.running.add(minion)  # still running the job: ask again later

    def _send_probes(self, now: float) -> None:
        for job in list(self.jobs.values()):
            if job.probe is not None or job.probe_at > now or not job.pending:
                continue
            if job.function == FIND_JOB:
                # Never ask about a question: settle the minions that did not answer it.
                self._settle(job, set(job.pending), now)
                continue
            minions = sorted(job.pending)
            try:
                probe_jid = self._send_find_job(job.jid, minions)
            except Exception:  # noqa: BLE001 - the master may be busy; try again later
                log.warning("halite engine: could not ask about %s", job.jid, exc_info=True)
                job.probe_at = now + self.options.timeout_grace
                continue
            if not probe_jid:
                # Published to nobody: none of these minions is accepted any more.
                job.unsendable += 1
                if job.unsendable >= UNSENDABLE_TRIES:
                    log.warning(
                        "halite engine: %s cannot be asked about %s (not accepted?)",
                        ", ".join(minions),
                        job.jid,
                    )
                    self._settle(job, set(job.pending), now)
                else:
                    job.probe_at = now + self.options.timeout_grace
                continue
            job.unsendable = 0
            job.probe = str(probe_jid)
            self.probes[job.probe] = Probe(
                job.jid, set(minions), deadline=now + self.options.timeout_grace,
                minions=frozenset(minions),
            )  # fmt: skip

    def _settle_probes(self, now: float) -> None:
        for probe_jid, probe in list(self.probes.items()):
            job = self.jobs.get(probe.jid)
            if job is None:
                del self.probes[probe_jid]
                continue
            if probe.asked and now < probe.deadline:
                continue  # answers still awaited
            del self.probes[probe_jid]
            job.probe = None
            # Of the minions asked: silent, or no longer running it (minions added to the
            # job since are asked next time).
            gone = (job.pending & probe.minions) - probe.running
            self._settle(job, gone, now)
            if job.pending:
                job.probe_at = now + self.options.timeout_grace
            self._unreconciled.discard(job.jid)

    def _settle(self, job: Active, minions: set[str], now: float) -> None:
        minions &= job.pending
        if minions:
            log.info(
                "halite engine: %s did not return %s; settled as no_return",
                ", ".join(sorted(minions)),
                job.jid,
            )
            self._queue_item(NoReturnItem(job.jid, sorted(minions), _utc(now)), now)
            self._tally.no_return += len(minions)
            job.pending -= minions
            job.answered |= minions
        if not job.pending:
            self._finish(job.jid)

    # ------------------------------------------------------------------ writing
    def _queue_return(self, load: Mapping[str, Any], now: float) -> None:
        when = event_stamp(load.get("_stamp")) or _utc(now)
        try:
            items = self.store.items_for("save_return", load, when)
        except ValueError as exc:
            self.store.spool.reject("save_return", load, reason=str(exc))
            return
        for item in items:
            self._queue_item(item, now)

    def _queue_item(self, item: Item, now: float) -> None:
        self._queue.append(item)
        if self._oldest is None:
            self._oldest = now

    def tick(self) -> None:
        """Ask, settle and write what is due; call it often (every event and when idle)."""
        self._hand_counts()
        now = self._clock()
        if not self._recovered and now >= self._recover_at:
            self.recover()
        self._send_probes(now)
        self._settle_probes(now)
        if self._queue and (
            len(self._queue) >= self.options.batch_size
            or now - (self._oldest or now) >= self.options.flush_interval
        ):
            self.flush(commit=False)  # the bus loop never waits for the database
        if self._recovered and not self._reconciled and not self._unreconciled and not self._queue:
            # Only once written: readers report running jobs as unknown until then.
            self._reconciled = self._write_state(now, reconciled=True)
            if self._reconciled:
                log.info("halite engine: reconciled the jobs that were running")
        elif now >= self._next_heartbeat:
            self._write_state(now)

    def flush(self, commit: bool = True) -> int:
        """Journal the queued changes for the committer, which takes them with Salt's
        writes through the one write path; ``commit``: and wait (within ``read_timeout``)
        until they are in the database. Returns how many changes."""
        self._hand_counts()
        items, self._queue = self._queue, []
        oldest, self._oldest = self._oldest, None
        if items:
            self.store.submit([(item_to_line(item), item) for item in items])
        if commit:
            self.store.flush()
        if oldest is not None:
            self.max_delay = max(self.max_delay, self._clock() - oldest)
        return len(items)

    def _write_state(self, now: float, started: bool = False, reconciled: bool = False) -> bool:
        self._next_heartbeat = now + HEARTBEAT_SECONDS
        values: dict[str, Any] = {"heartbeat_at": _utc(now)}
        if started:
            values.update(started_at=_utc(now), reconciled_at=None)
        if reconciled:
            values["reconciled_at"] = _utc(now)
        try:
            self.store.save_engine_state(self.master_id, values)
        except Exception:  # noqa: BLE001
            log.warning("halite engine: could not write its state", exc_info=True)
            return False
        return True

    def running(self) -> Iterable[str]:
        return list(self.jobs)

    # ------------------------------------------------------------------ metrics
    def _hand_counts(self) -> None:
        tally = self._tally
        if tally.events or tally.returned or tally.no_return or tally.kills or tally.reruns:
            self._tally = Tally()
            returns = {"success": tally.returned - tally.failed, "failed": tally.failed}
            self.metrics.engine_counts(
                tally.events, returns, tally.no_return, tally.kills, tally.reruns
            )

    def _running_now(self) -> tuple[int, float | None]:
        """How many jobs are running and the oldest one's age in seconds: read at a scrape,
        from another thread (a copy of the values: the engine's thread changes the dict)."""
        jobs = list(self.jobs.values())
        if not jobs:
            return 0, None
        return len(jobs), self._clock() - min(job.started for job in jobs)


def effective_status(
    status: str, engine: Mapping[str, Any] | None, now: dt.datetime, stale_after: float = 30.0
) -> str:
    """The status to report for a job, given its stored ``status`` and its master's
    ``engine_state`` row (None where no engine runs): a running job is ``unknown`` while
    the engine has not reconciled since it started, or has stopped beating."""
    if status != RUNNING or engine is None:
        return status
    if engine.get("reconciled_at") is None:
        return "unknown"
    if (now - engine["heartbeat_at"]).total_seconds() > stale_after:
        return "unknown"
    return status
