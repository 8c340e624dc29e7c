"""Revision 0007 on a database that revision 0006 built and Salt filled: each job's result
and changed-minion count, and each minion's row in minion_status, come from the history.

The rows are inserted by SQL with the columns 0006 had, as the committer of that release
wrote them (its counters included); the upgrade is halite's own (``ensure_schema``)."""

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import bindparam, select, text

from halite_core.jobcache import JobStore
from halite_core.store import db as dbmod
from halite_core.store.schema import JSONDoc, UTCDateTime, jobs_index, minion_status
from tests.conftest import BACKEND
from tests.helpers import publish, ret, save_return

UTC = dt.timezone.utc

OLD_RUN = "20261130100000000000"  # state.apply: web3 failed, web6 passed
RUN = "20261201100000000000"  # state.apply: web1 failed, web2 changed
CHANGED_RUN = "20261201110000000000"  # state.apply: web3 passed, web4 changed
RUNNING = "20261201120000000000"  # state.apply: web4 failed (and changed), web2 pending
PING = "20261201130000000000"  # test.ping: web1, web3
UNANSWERED = "20261201140000000000"  # test.ping: web7 never answered (no_return)
DRY_RUN = "20261201150000000000"  # state.apply test=True (as Salt's CLI passes it): web1
DRY_KWARG = "20261201160000000000"  # state.apply with test: true as a keyword: web2

JOB_0006 = text(
    'INSERT INTO jobs_index (jid, function, target, target_type, "user", arguments, kwargs,'
    " start_time, end_time, last_return_at, status, minions_targeted, minions_returned,"
    " minions_failed, master_id, load, system, created_at) VALUES (:jid, :function,"
    " :target, 'list', 'root', :arguments, :kwargs, :start_time, :end_time,"
    " :last_return_at, :status, :targeted, :returned, :failed, 'master1_master', :load,"
    " :system, :start_time)"
).bindparams(
    bindparam("arguments", type_=JSONDoc),
    bindparam("kwargs", type_=JSONDoc),
    bindparam("load", type_=JSONDoc),
    bindparam("start_time", type_=UTCDateTime()),
    bindparam("end_time", type_=UTCDateTime()),
    bindparam("last_return_at", type_=UTCDateTime()),
)
RETURN_0006 = text(
    "INSERT INTO job_returns (jid, minion, state, expected, function, start_time,"
    " returned_at, return_value, return_truncated, retcode, success, out, states_total,"
    " states_passed, states_failed, states_changed, states_duration_ms) VALUES (:jid,"
    " :minion, :state, :expected, :function, :start_time, :returned_at, :value, :truncated,"
    " :retcode, :success, :out, :total, :passed, :failed, :changed, :duration)"
).bindparams(
    bindparam("value", type_=JSONDoc),
    bindparam("start_time", type_=UTCDateTime()),
    bindparam("returned_at", type_=UTCDateTime()),
)


def started(jid):
    return dt.datetime.strptime(jid[:20], "%Y%m%d%H%M%S%f").replace(tzinfo=UTC)


def returned(minion, value=True, retcode=0, states=None):
    """A stored return; ``states`` = (total, passed, failed, changed) for a state run."""
    return {"minion": minion, "state": "returned", "value": value, "retcode": retcode,
            "states": states}  # fmt: skip


def settled(minion, state):
    return {"minion": minion, "state": state, "value": None, "retcode": None, "states": None}


def insert_job(conn, jid, function, minions, arguments=(), kwargs=None):
    """A job and its returns as revision 0006 held them: counters, status, end time."""
    rows = []
    for n, minion in enumerate(minions):
        at = started(jid) + dt.timedelta(seconds=5 + n)
        total, passed, failed, changed = minion["states"] or (None,) * 4
        rows.append(
            {"jid": jid, "minion": minion["minion"], "state": minion["state"],
             "expected": True, "function": function if minion["state"] == "returned" else None,
             "start_time": started(jid),
             "returned_at": None if minion["state"] == "pending" else at,
             "value": minion["value"], "truncated": False, "retcode": minion["retcode"],
             "success": True if minion["state"] == "returned" else None,
             "out": "highstate" if minion["states"] else None, "total": total,
             "passed": passed, "failed": failed, "changed": changed,
             "duration": 4.0 if minion["states"] else None}
        )  # fmt: skip
    answers = [row for row in rows if row["state"] == "returned"]
    # 0006's rule for a failed minion: a failed return, or settled without one.
    failed = [
        row
        for row in rows
        if row["state"] in ("no_return", "killed")
        or (row["state"] == "returned" and (row["retcode"] or row["failed"]))
    ]
    complete = all(row["state"] != "pending" for row in rows)
    settled_at = [row["returned_at"] for row in rows if row["returned_at"]]
    arg = [*arguments, *([{**kwargs, "__kwarg__": True}] if kwargs else [])]
    load = {"jid": jid, "fun": function, "arg": arg, "tgt": [m["minion"] for m in minions],
            "tgt_type": "list", "user": "root"}  # fmt: skip
    conn.execute(
        JOB_0006,
        {"jid": jid, "function": function, "target": ",".join(load["tgt"]),
         "arguments": list(arguments), "kwargs": kwargs or {}, "start_time": started(jid),
         "end_time": max(settled_at) if complete else None,
         "last_return_at": max((row["returned_at"] for row in answers), default=None),
         "status": "complete" if complete else "running", "targeted": len(rows),
         "returned": len(answers), "failed": len(failed), "load": load, "system": False},
    )  # fmt: skip
    conn.execute(RETURN_0006, rows)


STATE_RUN = {"file_|-conf_|-/etc/conf_|-managed": {"result": True, "comment": "ok", "changes": {}}}


def history(conn):
    insert_job(conn, OLD_RUN, "state.apply", [
        returned("web3", STATE_RUN, retcode=2, states=(4, 2, 2, 0)),
        returned("web6", STATE_RUN, states=(4, 4, 0, 0)),
    ])  # fmt: skip
    insert_job(conn, RUN, "state.apply", [
        returned("web1", STATE_RUN, retcode=2, states=(4, 3, 1, 0)),
        returned("web2", STATE_RUN, states=(4, 4, 0, 2)),
    ])  # fmt: skip
    insert_job(conn, CHANGED_RUN, "state.apply", [
        returned("web3", STATE_RUN, states=(4, 4, 0, 0)),
        returned("web4", STATE_RUN, states=(4, 4, 0, 1)),
    ])  # fmt: skip
    insert_job(conn, RUNNING, "state.apply", [
        settled("web2", "pending"),
        # retcode 0 and success true: the failed state alone makes the run failed.
        returned("web4", STATE_RUN, retcode=0, states=(4, 3, 1, 1)),
    ])  # fmt: skip
    insert_job(conn, PING, "test.ping", [returned("web1"), returned("web3")])
    insert_job(conn, UNANSWERED, "test.ping", [settled("web7", "no_return")])


@pytest.fixture
def database(request, settings):
    """An empty database at revision 0006 (SQLite, or PostgreSQL with HALITE_TEST_DB: a
    database of its own, not a copy of the tests' template with today's schema)."""
    url = settings.db_url
    if BACKEND == "postgresql":
        server = request.getfixturevalue("pg_server")
        url = server.create_database()
    database = dbmod.Database(url)
    if database.is_sqlite:
        Path(database.url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(dbmod.alembic_config(database), "0006")
    yield database
    database.dispose()
    if BACKEND == "postgresql":
        server.drop_database(url)


def upgraded(database, fill):
    with database.engine.begin() as conn:
        assert dbmod.current_revision(conn) == "0006"
        fill(conn)
    command.upgrade(dbmod.alembic_config(database), "0007")
    with database.engine.connect() as conn:
        assert dbmod.current_revision(conn) == "0007"
        jobs = conn.execute(select(jobs_index.c.jid, jobs_index.c.result,
                                   jobs_index.c.minions_changed)).all()  # fmt: skip
        minions = conn.execute(select(minion_status)).all()
        kept = conn.execute(text("SELECT count(*) FROM state_results")).scalar()
    return ({jid: (result, changed) for jid, result, changed in jobs},
            {row.minion: row for row in minions}, kept)  # fmt: skip


def latest(row):
    return (row.last_jid, row.last_function, row.last_start)


def run(row):
    return (row.state_jid, row.state_function, row.state_start, row.state_result,
            row.states_total, row.states_passed, row.states_failed, row.states_changed,
            row.healthy)  # fmt: skip


def test_each_job_gets_its_result_and_changed_minions_from_its_returns(database):
    jobs, _, _ = upgraded(database, history)
    assert jobs[OLD_RUN] == ("failed", 0)
    assert jobs[RUN] == ("failed", 1)
    assert jobs[CHANGED_RUN] == ("changed", 1)
    # A minion failed and another changed, but one is still pending: running.
    assert jobs[RUNNING] == ("running", 1)
    assert jobs[PING] == ("pass", 0)
    # A minion that never answered failed the job (0006 counted it in minions_failed).
    assert jobs[UNANSWERED] == ("failed", 0)


def test_each_minion_that_returned_gets_its_latest_job_and_state_run(database):
    _, minions, _ = upgraded(database, history)
    # web7 only ever had a no_return: no row, as a minion gets one with its first return.
    assert set(minions) == {"web1", "web2", "web3", "web4", "web6"}
    # The latest job is a ping; the latest state run, older, failed.
    assert latest(minions["web1"]) == (PING, "test.ping", started(PING))
    assert run(minions["web1"]) == (RUN, "state.apply", started(RUN), "failed", 4, 3, 1, 0, 0)
    # A later job where web2 is still pending is not its latest job.
    assert latest(minions["web2"]) == (RUN, "state.apply", started(RUN))
    assert run(minions["web2"]) == (RUN, "state.apply", started(RUN), "changed", 4, 4, 0, 2, 1)
    # The latest run passed: the older failure no longer makes web3 unhealthy.
    assert latest(minions["web3"]) == (PING, "test.ping", started(PING))
    assert run(minions["web3"]) == (
        CHANGED_RUN, "state.apply", started(CHANGED_RUN), "pass", 4, 4, 0, 0, 1)  # fmt: skip
    # A run of a job still running counts once the minion returned.
    assert latest(minions["web4"]) == (RUNNING, "state.apply", started(RUNNING))
    assert run(minions["web4"]) == (
        RUNNING, "state.apply", started(RUNNING), "failed", 4, 3, 1, 1, 0)  # fmt: skip
    assert run(minions["web6"]) == (
        OLD_RUN, "state.apply", started(OLD_RUN), "pass", 4, 4, 0, 0, 1)  # fmt: skip


def test_the_states_of_older_runs_are_not_parsed_again(database):
    _, _, kept = upgraded(database, history)
    assert kept == 0


def test_the_index_goes_on_from_the_history(database, settings):
    """After the upgrade the committer moves the rows on from what the migration filled."""
    upgraded(database, history)
    store = JobStore(dataclasses.replace(settings, db_url=database.url.render_as_string(False)))
    try:
        later = "20261201170000000000"
        publish(store, later, fun="state.apply", minions=("web1",))
        save_return(store, ret(later, "web1", STATE_RUN, fun="state.apply"))
        with store.db.read() as conn:
            row = conn.execute(select(minion_status).where(minion_status.c.minion == "web1")).one()
            result = conn.execute(
                select(jobs_index.c.result).where(jobs_index.c.jid == later)
            ).scalar()
    finally:
        store.db.dispose()
    assert (row.state_jid, row.state_result, row.healthy) == (later, "pass", 1)
    assert result == "pass"


def dry_runs(conn):
    history(conn)
    insert_job(conn, DRY_RUN, "state.apply", [
        returned("web1", STATE_RUN, states=(4, 3, 0, 1)),
    ], arguments=["test=True"])  # fmt: skip
    insert_job(conn, DRY_KWARG, "state.apply", [
        returned("web2", STATE_RUN, states=(4, 4, 0, 0)),
    ], kwargs={"test": True})  # fmt: skip


def test_a_test_run_of_the_history_is_not_the_minions_latest_state_run(database):
    _, minions, _ = upgraded(database, dry_runs)
    assert latest(minions["web1"]) == (DRY_RUN, "state.apply", started(DRY_RUN))
    assert run(minions["web1"]) == (RUN, "state.apply", started(RUN), "failed", 4, 3, 1, 0, 0)
    assert run(minions["web2"]) == (RUN, "state.apply", started(RUN), "changed", 4, 4, 0, 2, 1)


def test_revision_0008_counts_the_complete_history_as_announced(database):
    """An upgrade fires nothing for the jobs already complete; a running job is announced
    once it completes."""

    def fill(conn):
        insert_job(conn, PING, "test.ping", [returned("web1"), returned("web3")])
        insert_job(conn, UNANSWERED, "test.ping", [settled("web7", "pending")])

    upgraded(database, fill)
    database.ensure_schema()
    with database.engine.connect() as conn:
        assert dbmod.current_revision(conn) == "0012"  # on through 0009 (reruns) to 0012
        marks = dict(conn.execute(select(jobs_index.c.jid, jobs_index.c.announced_at)).all())
        # No job of the history re-runs another.
        assert set(conn.execute(select(jobs_index.c.rerun_of)).scalars()) == {None}
    assert marks[PING] == started(PING) + dt.timedelta(seconds=6)  # its end time
    assert marks[UNANSWERED] is None
