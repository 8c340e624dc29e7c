"""Two real masters, each with its own minion, sharing one halite database (PostgreSQL in
the PostgreSQL run, one SQLite file otherwise): side by side without conflicts, each job
marked with its master, listings by master, and retention run by both at once."""

import dataclasses
import datetime as dt
import multiprocessing

import pytest
from saltfactories.utils import random_string
from sqlalchemy import func, select, update

from halite_core.config import Settings
from halite_core.jobcache import JobStore
from halite_core.store.schema import job_returns, jobs_index
from tests.helpers import publish, ret, save_return
from tests.integration.conftest import _start_master
from tests.integration.test_master_job_cache import finished_job, run_job


@pytest.fixture(scope="module")
def shared_database(new_database, tmp_path_factory):
    return new_database() or {"db_url": f"sqlite:///{tmp_path_factory.mktemp('shared')}/halite.db"}


@pytest.fixture(scope="module")
def two_masters(salt_factories, state_tree, shared_database):
    started = []
    try:
        for name in ("halite-mm-a-", "halite-mm-b-"):
            master = _start_master(
                salt_factories, state_tree, name, shared_database, master_job_cache="halite"
            )
            master.start()
            started.append(master)
            minion = master.salt_minion_daemon(random_string(name.replace("-mm-", "-mmin-")))
            minion.start()
            started.append(minion)
        yield started[0], started[1], started[2], started[3]
    finally:
        for daemon in reversed(started):
            daemon.terminate()


def _clean(config, keep, barrier, results):
    store = JobStore(Settings.from_opts(config))
    barrier.wait(30)
    results.put(store.clean_old_jobs(keep))


def test_two_masters_share_one_history(two_masters):
    master_a, minion_a, master_b, minion_b = two_masters
    index = JobStore(Settings.from_opts(master_a.config))
    jid_a = run_job(master_a, minion_a, "test.echo", "from-a")
    jid_b = run_job(master_b, minion_b, "test.echo", "from-b")
    job_a, job_b = finished_job(index, jid_a), finished_job(index, jid_b)
    assert (job_a["master_id"], job_b["master_id"]) == (master_a.id, master_b.id)
    assert job_a["minions_returned"] == job_b["minions_returned"] == 1

    # Either master's runners see both; master= narrows to one.
    run_b = master_b.salt_run_cli()
    both = run_b.run("halite.jobs", "fun=test.echo")
    assert {jid_a, jid_b} <= {job["jid"] for job in both.data["jobs"]}
    only_a = run_b.run("halite.jobs", f"master={master_a.id}", "fun=test.echo")
    assert [job["jid"] for job in only_a.data["jobs"]] == [jid_a]
    detail = run_b.run("halite.job", jid_a)
    assert detail.data["minion_results"][0]["return"] == "from-a"
    index.db.dispose()


def test_retention_by_both_masters_at_once_deletes_each_job_once(two_masters):
    master_a, _, master_b, _ = two_masters
    seeder = JobStore(dataclasses.replace(Settings.from_opts(master_a.config), clean_batch_size=25))
    old = [f"20260101{n // 3600:02d}{n // 60 % 60:02d}{n % 60:02d}000000" for n in range(400)]
    long_ago = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for jid in old:
        publish(seeder, jid, minions=["m1", "m2"])
        for minion in ("m1", "m2"):
            save_return(seeder, ret(jid, minion), long_ago)
    with seeder.db.write() as conn:  # as if written back then: retention ages by that
        conn.execute(
            update(jobs_index).where(jobs_index.c.jid.in_(old)).values(created_at=long_ago)
        )
    seeder.db.dispose()
    keep = int((dt.datetime.now(dt.timezone.utc) - dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc))
               .total_seconds())  # fmt: skip
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    cleaners = [
        context.Process(
            target=_clean,
            args=(
                {**m.config, "halite": {**m.config["halite"], "clean_batch_size": 25}},
                keep,
                barrier,
                results,
            ),
        )  # fmt: skip
        for m in (master_a, master_b)
    ]
    for process in cleaners:
        process.start()
    removed = [results.get(timeout=120) for _ in cleaners]
    for process in cleaners:
        process.join(60)
        assert process.exitcode == 0
    assert sum(removed) == len(old), removed
    index = JobStore(Settings.from_opts(master_b.config))
    with index.db.read() as conn:
        left = conn.scalar(select(func.count()).where(jobs_index.c.jid.in_(old)))
        orphans = conn.scalar(select(func.count()).where(job_returns.c.jid.in_(old)))
    assert (left, orphans) == (0, 0)
    index.db.dispose()
