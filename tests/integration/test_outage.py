"""The database goes away under a running master: Salt keeps working, every return is
spooled, and replayed exactly once when the database is back."""

import sqlite3
import time

from sqlalchemy import select

from halite_core.store.schema import audit_log, job_returns
from tests.conftest import postgresql_only, sqlite_only
from tests.integration.conftest import as_user, wait_for
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


def _echo_to(path):
    return ["cmd.run", f"echo run >> {path}"]


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def _returns(index, jid):
    with index.db.read() as conn:
        return conn.execute(
            select(job_returns.c.minion, job_returns.c.state).where(job_returns.c.jid == jid)
        ).all()


def _audited(index, **where):
    query = select(audit_log).order_by(audit_log.c.id)
    for column, value in where.items():
        query = query.where(audit_log.c[column] == value)
    with index.db.read() as conn:
        return conn.execute(query).all()


@sqlite_only("another program write-locks the SQLite file under a running master")
def test_sqlite_locked_salt_publishes_once_kills_and_audits(master, minion, index, tmp_path):
    """With the index's SQLite file write-locked by another program, Salt answers at once
    and runs each command exactly once; kills and refusals are answered and audited; once
    the lock is released every return, mark and entry is in the index exactly once."""
    ran = tmp_path / "ran"
    blocker = sqlite3.connect(index.db.url.database)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        jid = run_job(master, minion, *_echo_to(ran))
        wait_for(lambda: _lines(ran))
        sleeper = run_job(master, minion, "test.sleep", "120")
        cli = master.salt_cli()
        wait_for(
            lambda: any(
                job.get("jid") == sleeper
                for job in cli.run("saltutil.running", minion_tgt=minion.id).data or []
            )
        )
        run = master.salt_run_cli()
        killed = run.run("halite.kill", sleeper, _timeout=60)
        assert killed.returncode == 0, killed
        assert killed.data["signalled"] == [minion.id]
        refused = run.run("halite.audit", env=as_user("bob"))
        assert refused.returncode != 0 and "lacks view:audit:*" in refused.stdout
    finally:
        blocker.rollback()
        blocker.close()
    job = finished_job(index, jid)
    assert (job["minions_targeted"], job["minions_returned"]) == (1, 1)
    assert _returns(index, jid) == [(minion.id, "returned")]
    assert _lines(ran) == ["run"]  # published once, run once
    wait_for(lambda: _returns(index, sleeper) == [(minion.id, "killed")])
    wait_for(lambda: _audited(index, action="kill", jid=sleeper))
    (kill,) = _audited(index, action="kill", jid=sleeper)
    assert kill.decision == "allow" and kill.outcome["signalled"] == [minion.id]
    wait_for(lambda: _audited(index, user="sudo_bob", action="audit"))
    (denial,) = _audited(index, user="sudo_bob", action="audit")
    assert denial.decision == "deny"


@postgresql_only("freezes the PostgreSQL server under a running master")
def test_postgresql_frozen_salt_publishes_once_and_answers(
    master, minion, index, pg_server, tmp_path
):
    """Every PostgreSQL process stopped (SIGSTOP): Salt's CLI answers at once with a jid,
    a plain `salt` call gets its answer, a refusal is answered; nothing runs twice, and
    once the server runs again every return and audit entry is indexed exactly once."""
    ran = tmp_path / "ran"
    pg_server.freeze()
    try:
        jid = run_job(master, minion, *_echo_to(ran))
        wait_for(lambda: _lines(ran))
        answer = master.salt_cli().run("test.echo", "frozen", minion_tgt=minion.id, _timeout=120)
        assert answer.returncode == 0 and answer.data == "frozen"
        refused = master.salt_run_cli().run("halite.audit", env=as_user("bob"), _timeout=120)
        assert refused.returncode != 0 and "lacks view:audit:*" in refused.stdout
    finally:
        pg_server.thaw()
    job = finished_job(index, jid)
    assert (job["minions_targeted"], job["minions_returned"]) == (1, 1)
    assert _returns(index, jid) == [(minion.id, "returned")]
    assert _lines(ran) == ["run"]
    wait_for(lambda: _audited(index, user="sudo_bob", action="audit"))
    assert len(_audited(index, user="sudo_bob", action="audit")) == 1
