"""The database goes away under a running master: Salt keeps working, every return is
spooled, and replayed exactly once when the database is back."""

import time

from sqlalchemy import select

from halite_core.models import job_returns
from tests.conftest import postgresql_only
from tests.integration.test_master_job_cache import finished_job, run_job


@postgresql_only("stops the PostgreSQL server under a running master")
def test_postgresql_stopped_in_the_middle_of_jobs(master, minion, index, pg_server):
    before = [run_job(master, minion, "test.echo", f"before-{n}") for n in range(3)]
    for jid in before:
        finished_job(index, jid)
    pg_server.stop()
    try:
        # Salt keeps working: jobs publish, minions return, the CLI gets its answers.
        during = [run_job(master, minion, "test.echo", f"during-{n}") for n in range(5)]
        answer = master.salt_cli().run("test.echo", "sync", minion_tgt=minion.id, _timeout=120)
        assert answer.returncode == 0 and answer.data == "sync"
        time.sleep(2)  # the returns arrive while the database is down
    finally:
        pg_server.start()
        pg_server.wait_ready()
    after = [run_job(master, minion, "test.echo", f"after-{n}") for n in range(2)]
    expected = {jid: f"{tag}-{n}" for tag, jids in (("before", before), ("during", during),
                ("after", after)) for n, jid in enumerate(jids)}  # fmt: skip
    for jid, value in expected.items():
        job = finished_job(index, jid)  # replayed: every job complete
        assert (job["minions_targeted"], job["minions_returned"]) == (1, 1), job
        with index.db.read() as conn:
            rows = conn.execute(
                select(job_returns.c.minion, job_returns.c.return_value).where(
                    job_returns.c.jid == jid
                )
            ).all()
        assert [tuple(row) for row in rows] == [(minion.id, value)]  # exactly once
