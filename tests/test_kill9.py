"""kill -9 of a Salt worker or of the committer, at moments spread over their work, loses
nothing that was accepted, and commits nothing twice.

The worker and the committer are real processes (spawned, so that they start as Salt's own
processes do, without this test's threads); SIGKILL gives them no chance to clean up.
"""

import dataclasses
import datetime as dt
import multiprocessing
import os
import random
import signal
import time

import pytest
from sqlalchemy import func, select

from halite_core.durability.journal import read_committed
from halite_core.jobcache import JobStore
from halite_core.store.schema import job_returns, jobs_index
from tests.helpers import publish, ret, untaken

UTC = dt.timezone.utc
JID = "20261128120000000001"
CTX = multiprocessing.get_context("spawn")


def _worker(settings, count, accepted):
    """A Salt worker deferring to the engine: journals returns, reporting each one the
    returner accepted (its call returned)."""
    store = JobStore(settings)
    for i in range(count):
        store.record("save_return", ret(JID, f"m{i:05d}"), dt.datetime.now(UTC))
        accepted.send(i)
    time.sleep(3600)  # alive until killed


def _engine(settings, started):
    """The engine's committer, as in the engine's process."""
    store = JobStore(settings)
    committer = store.committer(engine=True)
    while not committer.holds_lock():
        time.sleep(0.005)
        committer.run_once()
    started.set()
    while True:
        committer.run_once()
        time.sleep(0.001)


def _returned(store):
    with store.db.read() as conn:
        minions = conn.scalars(
            select(job_returns.c.minion).where(
                job_returns.c.jid == JID, job_returns.c.state == "returned"
            )
        ).all()
        counted = conn.scalar(select(jobs_index.c.minions_returned).where(jobs_index.c.jid == JID))
    return sorted(minions), counted


@pytest.fixture
def deferring(settings):
    """Settings of a master whose config lists the halite engine."""
    return dataclasses.replace(settings, engine_commits=True, batch_size=50)


@pytest.mark.parametrize("after", [1, 37, 250, 799])
def test_a_worker_killed_at_any_point_loses_no_accepted_return(store, deferring, after):
    publish(store, JID, minions=[f"m{i:05d}" for i in range(800)])
    here, there = CTX.Pipe(duplex=False)
    worker = CTX.Process(target=_worker, args=(deferring, 800, there))
    worker.start()
    seen = -1
    while seen < after - 1:
        seen = here.recv()
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(30)
    while here.poll():
        seen = here.recv()  # accepted before the kill, reported after it
    # No engine runs: this process's committer (a Salt worker's) takes over the journal of
    # the dead worker.
    survivor = JobStore(deferring)
    survivor.recover()
    minions, counted = _returned(store)
    accepted = {f"m{i:05d}" for i in range(seen + 1)}
    assert accepted <= set(minions)
    assert len(minions) <= seen + 2  # at most the one call the kill interrupted, whole
    assert counted == len(minions)
    assert untaken(deferring) == []
    survivor.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_committer_killed_at_any_point_loses_nothing_and_commits_nothing_twice(
    store, deferring, seed
):
    count = 3000
    publish(store, JID, minions=[f"m{i:05d}" for i in range(count)])
    worker = JobStore(deferring)  # a Salt worker: defers to the engine below
    started = CTX.Event()
    engine = CTX.Process(target=_engine, args=(deferring, started))
    engine.start()
    assert started.wait(60)
    for i in range(count):
        worker.record("save_return", ret(JID, f"m{i:05d}"), dt.datetime.now(UTC))
    # Let the engine commit part of it, then kill it at a moment of its work.
    deadline = time.monotonic() + 60
    while not read_committed(deferring.journal_dir) and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(random.Random(seed).uniform(0, 0.05))
    os.kill(engine.pid, signal.SIGKILL)
    engine.join(30)
    # The engine is gone: the worker's committer takes over and finishes.
    assert worker.flush(timeout=60)
    minions, counted = _returned(store)
    assert minions == [f"m{i:05d}" for i in range(count)]
    assert counted == count
    assert untaken(deferring) == []
    with store.db.read() as conn:
        assert conn.scalar(select(func.count()).select_from(job_returns)) == count
    worker.close()
