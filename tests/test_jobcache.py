import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select

from halite_core.durability.committer import commit_or_spool
from halite_core.jobcache import JobStore, is_outage, item_to_line, split_arguments
from halite_core.store.ops import MinionsItem
from halite_core.store.schema import job_returns, jobs_index
from tests.conftest import postgresql_only, sqlite_only
from tests.helpers import publish, restricted_role, ret, save_return, untaken

UTC = dt.timezone.utc
JID = "20261128120000000001"


def job_row(store, jid):
    with store.db.read() as conn:
        return conn.execute(select(jobs_index).where(jobs_index.c.jid == jid)).one()._asdict()


def return_rows(store, jid):
    with store.db.read() as conn:
        rows = conn.execute(select(job_returns).where(job_returns.c.jid == jid)).all()
    return {row.minion: row._asdict() for row in rows}


def test_publish_then_returns_keeps_counts_and_status_exact(store):
    publish(store, JID, arg=["a", {"__kwarg__": True, "x": 1}], minions=("m1", "m2", "m3"))
    job = job_row(store, JID)
    assert job["status"] == "running" and job["end_time"] is None
    assert (job["minions_targeted"], job["minions_returned"], job["minions_failed"]) == (3, 0, 0)
    assert job["arguments"] == ["a"] and job["kwargs"] == {"x": 1}
    assert job["target"] == "m1,m2,m3" and job["target_type"] == "list"
    assert job["start_time"] == dt.datetime(2026, 11, 28, 12, 0, 0, 1, tzinfo=UTC)
    assert job["master_id"] == "master1_master"

    t1 = dt.datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC)
    t2 = t1 + dt.timedelta(seconds=3)
    save_return(store, ret(JID, "m1"), t1)
    save_return(store, ret(JID, "m2", False, retcode=1, success=False), t2)
    job = job_row(store, JID)
    assert job["status"] == "running"
    assert (job["minions_returned"], job["minions_failed"]) == (2, 1)
    save_return(store, ret(JID, "m3"), t1)  # arrives last but stamped earlier
    job = job_row(store, JID)
    assert job["status"] == "complete"
    assert job["end_time"] == t2 and job["last_return_at"] == t2
    rows = return_rows(store, JID)
    assert rows["m2"]["retcode"] == 1 and rows["m2"]["success"] is False
    assert rows["m1"]["returned_at"] == t1


def test_repeated_return_keeps_the_first(store):
    publish(store, JID, minions=("m1",))
    assert save_return(store, ret(JID, "m1", "first"))
    assert not save_return(store, ret(JID, "m1", "second"))
    assert store.get_jid(JID)["m1"]["return"] == "first"
    assert job_row(store, JID)["minions_returned"] == 1


def test_small_and_large_returns_of_one_batch_are_stored_and_the_earliest_wins(store):
    """PostgreSQL stores a batch's small returns in one statement and its large ones row
    by row: both keep the first-wins rule (the earliest accepted return of a minion) and
    the count of returns stored, whatever path each took."""
    big = {"lines": ["x" * 100] * 60}  # over 4 kB as JSON
    publish(store, JID, minions=("m1", "m2", "m3"))
    t0 = dt.datetime(2026, 11, 28, 12, 0, 10, tzinfo=UTC)
    later, earlier = t0 + dt.timedelta(seconds=5), t0 - dt.timedelta(seconds=5)

    def items(minion, value, at):
        return store.items_for("save_return", ret(JID, minion, value), at)

    assert store.apply_items(items("m1", "small, later", later) + items("m2", big, later)) == 2
    batch = (
        items("m1", "small, earlier", earlier)  # replaces the later one
        + items("m2", {**big, "n": 2}, earlier)  # the same, large
        + items("m3", "m3 at t0", t0)
        + items("m3", "m3 later", later)  # a repeat in the batch: the earliest is kept
    )
    assert store.apply_items(batch) == 3
    assert store.apply_items(items("m1", "too late", later)) == 0
    got = store.get_jid(JID)
    assert got["m1"]["return"] == "small, earlier"
    assert got["m2"]["return"] == {**big, "n": 2}
    assert got["m3"]["return"] == "m3 at t0"
    rows = return_rows(store, JID)
    assert rows["m1"]["returned_at"] == earlier and rows["m3"]["returned_at"] == t0
    job = job_row(store, JID)
    assert (job["minions_returned"], job["status"]) == (3, "complete")


def test_return_before_publish_then_publish_reconciles(store):
    save_return(store, ret(JID, "m1", fun="test.ping"))
    job = job_row(store, JID)
    assert job["function"] == "test.ping" and job["minions_returned"] == 1
    publish(store, JID, fun="test.ping", minions=("m1", "m2"))
    job = job_row(store, JID)
    assert (job["minions_targeted"], job["minions_returned"], job["status"]) == (2, 1, "running")
    assert job["target"] == "m1,m2"
    assert store.get_load(JID)["Minions"] == ["m1", "m2"]


def test_a_target_list_naming_a_minion_twice_and_a_repeated_publish_count_each_minion_once(
    store,
):
    """The placeholders of a batch go to the database in one statement on PostgreSQL,
    which may not touch a row twice: a minion listed twice (a publish, the minions a
    syndic adds, as a journal line may hold them) is one pending row; a minion that
    returned keeps its return."""
    publish(store, JID, minions=("m1", "m2", "m1"))
    assert job_row(store, JID)["minions_targeted"] == 2
    save_return(store, ret(JID, "m2"))
    # One batch: the journal's line as it was written, and the same minions again.
    store.apply_items([MinionsItem(JID, ["m2", "m3", "m3", "m1"]), MinionsItem(JID, ["m3"])])
    rows = return_rows(store, JID)
    assert sorted(rows) == ["m1", "m2", "m3"]
    assert {m: r["state"] for m, r in rows.items()} == {
        "m1": "pending",
        "m2": "returned",
        "m3": "pending",
    }
    assert all(row["expected"] for row in rows.values())
    job = job_row(store, JID)
    assert (job["minions_targeted"], job["minions_returned"], job["status"]) == (3, 1, "running")


def test_unexpected_minion_counts_as_targeted(store):
    publish(store, JID, minions=("m1",))
    save_return(store, ret(JID, "m1"))
    save_return(store, ret(JID, "surprise"))
    job = job_row(store, JID)
    assert (job["minions_targeted"], job["minions_returned"]) == (2, 2)
    assert store.get_load(JID)["Minions"] == ["m1"]  # the target list Salt computed


def test_job_with_no_minions_is_complete(store):
    publish(store, JID, minions=())
    assert job_row(store, JID)["status"] == "complete"


def test_state_run_summary_is_stored(store):
    states = {
        "file_|-a_|-/a_|-managed": {
            "result": True,
            "comment": "",
            "changes": {"x": 1},
            "duration": 2,
        },
        "cmd_|-b_|-false_|-run": {"result": False, "comment": "boom", "changes": {}, "duration": 3},
    }
    publish(store, JID, fun="state.apply", minions=("m1",))
    save_return(store, ret(JID, "m1", states, fun="state.apply", retcode=2, success=False))
    row = return_rows(store, JID)["m1"]
    assert (row["states_total"], row["states_passed"], row["states_failed"]) == (2, 1, 1)
    assert (row["states_changed"], row["states_duration_ms"]) == (1, 5.0)
    assert job_row(store, JID)["minions_failed"] == 1


def test_non_dict_and_odd_returns_are_stored_faithfully(store):
    publish(store, JID, minions=("a", "b", "c", "d", "e"))
    save_return(store, ret(JID, "a", ["Rendering SLS 'base:web' failed: boom"], fun="state.apply"))
    save_return(store, ret(JID, "b", None))
    save_return(store, ret(JID, "c", {b"k": {1, 2}}))
    save_return(store, {"jid": JID, "id": "d", "return": 5})  # no retcode, success, fun
    save_return(store, ret(JID, "e", 2**64))  # a bare number past SQLite's 64-bit integers
    got = store.get_jid(JID)
    assert got["a"]["return"] == ["Rendering SLS 'base:web' failed: boom"]
    assert got["b"]["return"] is None
    assert got["c"]["return"] == {"b'k'": {1, 2}}
    assert got["d"] == {"return": 5}
    assert got["e"]["return"] == 2**64
    assert return_rows(store, JID)["a"]["states_total"] is None


def test_odd_retcodes_never_lose_the_return(store):
    # The retcode column is a 32-bit INTEGER; what does not fit it is left out of the
    # column, and the return is stored all the same (an infinite retcode once raised).
    sent = {"a": float("inf"), "b": 2**40, "c": "3", "d": "x", "e": 1.0, "f": -1, "g": True}
    publish(store, JID, minions=tuple(sent))
    for minion, retcode in sent.items():
        assert save_return(store, ret(JID, minion, minion, retcode=retcode)) is not False
    store.flush()
    rows = return_rows(store, JID)
    got = {minion: rows[minion]["retcode"] for minion in sent}
    assert got == {"a": None, "b": None, "c": 3, "d": None, "e": 1, "f": -1, "g": 1}
    assert all(rows[minion]["return_value"] == minion for minion in sent)


def test_oversized_return_is_truncated_with_a_marker(store):
    small = JobStore(dataclasses.replace(store.settings, max_return_bytes=1024), store.db)
    publish(small, JID, minions=("m1",))
    save_return(small, ret(JID, "m1", "x" * 5000))
    row = return_rows(small, JID)["m1"]
    assert row["return_truncated"] is True
    assert row["return_value"]["__halite_type__"] == "truncated"
    assert row["return_value"]["limit"] == 1024


def test_bad_input_is_rejected_to_the_spool_not_raised(store):
    assert store.record("save_return", {"jid": "nonsense", "id": "m1", "return": 1}) is None
    assert store.record("save_return", "not a dict") is None
    rejected = sorted(store.spool.rejected.iterdir())
    assert len(rejected) == 2
    assert "no valid jid" in json.loads(rejected[0].read_text())["reason"]


def test_split_arguments():
    assert split_arguments(["a", 1, {"__kwarg__": True, "k": "v"}, {"plain": "dict"}]) == (
        ["a", 1, {"plain": "dict"}],
        {"k": "v"},
    )
    assert split_arguments(None) == ([], {})
    assert split_arguments("x") == (["x"], {})


def test_newest_loads_orders_limits_and_hides_find_job(store):
    for n in range(1, 6):
        publish(store, f"2026112812000000000{n}", minions=("m1",))
    publish(store, "20261128120000000009", fun="saltutil.find_job", minions=("m1",))
    newest = [jid for jid, _ in store.newest_loads(3)]
    assert newest == ["20261128120000000003", "20261128120000000004", "20261128120000000005"]
    with_find = [jid for jid, _ in store.newest_loads(2, filter_find_job=False)]
    assert with_find == ["20261128120000000005", "20261128120000000009"]


def test_clean_old_jobs_deletes_jobs_and_returns_together(store):
    done, running = "20261128110000000000", "20261128110000000001"
    for jid in (done, running):
        publish(store, jid, minions=("m1", "m2"))
        save_return(store, ret(jid, "m1"))
    save_return(store, ret(done, "m2"))
    later = dt.datetime.now(UTC) + dt.timedelta(hours=2)
    assert store.clean_old_jobs(keep_seconds=3600, now=later) == 1
    with store.db.read() as conn:
        assert conn.scalars(select(jobs_index.c.jid)).all() == [running]
        assert set(conn.scalars(select(job_returns.c.jid))) == {running}
        orphans = conn.scalar(
            select(func.count())
            .select_from(job_returns)
            .where(job_returns.c.jid.not_in(select(jobs_index.c.jid)))
        )
        assert orphans == 0
    assert store.clean_old_jobs(keep_seconds=0, now=later + dt.timedelta(days=9)) == 0


def test_retention_ages_jobs_by_activity_and_never_deletes_a_running_one(store):
    """As Salt's local_cache: a job is aged by when it was written (and its last return),
    not by its jid; a running job is never deleted; a return for a job already cleaned is
    dropped instead of bringing the job back."""
    sleeping, old_jid = "20261128110000000002", "20261101000000000003"
    publish(store, sleeping, fun="test.sleep", minions=("m1",))  # still running
    publish(store, old_jid, minions=("m1",))  # a job stored now under an old jid (a syndic's)
    save_return(store, ret(old_jid, "m1"))
    now = dt.datetime.now(UTC)
    assert store.clean_old_jobs(keep_seconds=30, now=now) == 0
    assert job_row(store, old_jid)["status"] == "complete"
    assert store.clean_old_jobs(keep_seconds=30, now=now + dt.timedelta(seconds=60)) == 1
    assert job_row(store, sleeping)["status"] == "running"  # kept while it runs
    assert store.get_load(old_jid) == {}
    save_return(store, ret(old_jid, "m2", "late"))  # a return after its job was cleaned
    assert store.get_jid(old_jid) == {}
    with store.db.read() as conn:
        assert conn.scalar(select(func.count()).where(jobs_index.c.jid == old_jid)) == 0
    save_return(store, ret(sleeping, "m1", "woke up"), now + dt.timedelta(seconds=60))
    assert store.get_jid(sleeping)["m1"]["return"] == "woke up"
    assert store.clean_old_jobs(keep_seconds=30, now=now + dt.timedelta(seconds=60)) == 0
    assert store.clean_old_jobs(keep_seconds=30, now=now + dt.timedelta(seconds=120)) == 1


def test_reserved_jids_never_collide(store):
    jid = store.new_jid()
    assert not store.reserve_jid(jid)
    assert store.new_jid() != jid
    with store.db.read() as conn:  # a reservation is a file, not a row
        assert conn.scalar(select(func.count()).select_from(jobs_index)) == 0


def test_jids_are_reserved_without_the_database(settings, tmp_path):
    """prep_jid runs on Salt's publish path: a database that cannot be reached (here: a
    file where its directory should be) must not stop or slow it."""
    (tmp_path / "blocker").write_text("")
    down = JobStore(dataclasses.replace(settings, db_url=f"sqlite:///{tmp_path}/blocker/halite.db"))
    jids_given = {down.new_jid() for _ in range(100)}
    assert len(jids_given) == 100


def test_event_batch_indexes_publish_and_returns(store):
    events = [
        {"tag": "salt/auth", "data": {"id": "m1"}},
        {
            "tag": f"salt/job/{JID}/new",
            "data": {
                "jid": JID,
                "fun": "test.ping",
                "arg": [],
                "tgt": "*",
                "tgt_type": "glob",
                "user": "sudo_alice",
                "minions": ["m1", "m2"],
                "missing": [],
            },
        },
        {
            "tag": f"salt/job/{JID}/ret/m1",
            "data": {
                "fun": "test.ping",
                "fun_args": [],
                "return": True,
                "retcode": 0,
                "success": True,
                "_stamp": "2026-11-28T12:00:01.500000",
            },
        },
        {"tag": f"salt/job/{JID}/ret/m2", "data": {"return": True, "retcode": 0, "success": True}},
    ]
    items = store.items_for("save_events", events)
    store.apply_items(items)
    assert len(items) == 3
    job = job_row(store, JID)
    assert (job["user"], job["target"], job["status"], job["minions_returned"]) == (
        "sudo_alice",
        "*",
        "complete",
        2,
    )
    stamp = return_rows(store, JID)["m1"]["returned_at"]
    assert stamp == dt.datetime(2026, 11, 28, 12, 0, 1, 500000, tzinfo=UTC)


def _write_returns(settings, jid, minions):
    store = JobStore(settings)
    for minion in minions:
        assert store.record("save_return", ret(jid, minion)) is True
    store.flush()  # forked workers end without atexit; Salt's end through multiprocessing
    store.db.dispose()


def test_concurrent_writer_processes_lose_nothing(store):
    minions = [f"m{i:03d}" for i in range(240)]
    publish(store, JID, minions=minions)
    chunks = [minions[i::4] for i in range(4)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_returns, args=(store.settings, JID, c)) for c in chunks]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    job = job_row(store, JID)
    assert (job["minions_targeted"], job["minions_returned"], job["status"]) == (
        240,
        240,
        "complete",
    )
    assert len(store.get_jid(JID)) == 240
    assert store.spool.waiting() == []


@sqlite_only("another program holds the SQLite file's lock (PostgreSQL: the stop test below)")
def test_database_outage_spools_and_replays(store, settings):
    # The replay interval is an hour: the spool is replayed because a write was committed
    # again (the database is back), not because the interval passed. This store journals
    # first, so the process's committer is its own (stores of one database share it).
    impatient = JobStore(
        dataclasses.replace(settings, sqlite_busy_timeout=0.05, spool_replay_interval=3600)
    )
    impatient.db.ensure_schema()
    publish(impatient, JID, minions=("m1", "m2"))
    impatient.flush()
    blocker = sqlite3.connect(store.db.url.database)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        assert impatient.record("save_return", ret(JID, "m1"), dt.datetime.now(UTC)) is True
        impatient.flush()  # the batch meets the locked database
        assert len(impatient.spool.waiting()) == 1
    finally:
        blocker.rollback()
        blocker.close()
    assert return_rows(store, JID)["m1"]["state"] == "pending"
    assert untaken(settings) == []
    impatient.record("save_return", ret(JID, "m2"), dt.datetime.now(UTC))
    impatient.flush()  # commits m2, then replays the spool
    assert impatient.spool.waiting() == []
    assert job_row(store, JID)["minions_returned"] == 2
    assert set(store.get_jid(JID)) == {"m1", "m2"}


@postgresql_only("stops the PostgreSQL server")
def test_postgresql_stopped_and_restarted_loses_nothing(store, settings, pg_server):
    publish(store, JID, minions=("m1", "m2", "m3"))
    patient = JobStore(dataclasses.replace(settings, spool_replay_interval=0))
    patient.record("save_return", ret(JID, "m1"), dt.datetime.now(UTC))
    patient.flush()
    pg_server.stop()
    try:
        # Salt's job path goes on: the returner neither raises nor blocks for long.
        assert patient.record("save_return", ret(JID, "m2"), dt.datetime.now(UTC)) is True
        patient.flush()  # the batch meets the stopped server: spooled, in order
        assert len(patient.spool.waiting()) == 1
        assert patient.record("save_return", ret(JID, "m2"), dt.datetime.now(UTC)) is True
        patient.flush()
        assert len(patient.spool.waiting()) == 2
    finally:
        pg_server.start()
        pg_server.wait_ready()
    # The master restarted meanwhile: a new process finds the spool on disk and replays it.
    restarted = JobStore(dataclasses.replace(settings, spool_replay_interval=0))
    restarted.record("save_return", ret(JID, "m3"), dt.datetime.now(UTC))
    restarted.flush()  # commits m3, then replays the spool (m2 twice: the first one wins)
    assert restarted.spool.waiting() == []
    rows = return_rows(store, JID)
    assert {m: r["state"] for m, r in rows.items()} == dict.fromkeys(("m1", "m2", "m3"), "returned")
    assert job_row(store, JID)["minions_returned"] == 3
    assert job_row(store, JID)["status"] == "complete"


@postgresql_only("a PostgreSQL role that may not create temporary tables")
def test_a_role_without_temporary_gets_a_clear_error_and_loses_nothing(pg_server, opts, caplog):
    """PostgreSQL batches are staged in temporary tables: a role without TEMPORARY on its
    database (revoked from PUBLIC) is told what to grant, its writes wait in the spool,
    and they are all committed once it is granted."""
    from halite_core.config import Settings

    with restricted_role(pg_server, "halite_no_temp", "TEMPORARY") as (plain, admin, database):
        opts = {**opts, "halite": {"db_url": plain}}
        settings = dataclasses.replace(Settings.from_opts(opts), spool_replay_interval=0)
        store = JobStore(settings)
        try:
            with caplog.at_level("WARNING"):
                assert store.record("save_return", ret(JID, "m1"), dt.datetime.now(UTC)) is True
                store.flush()
            assert len(store.spool.waiting()) == 1
            grant = f'GRANT TEMPORARY ON DATABASE "{database}" TO "halite_no_temp"'
            assert grant in caplog.text
            with store.db.read() as conn:
                assert conn.execute(select(func.count()).select_from(job_returns)).scalar() == 0
            with admin.connect() as conn:
                conn.exec_driver_sql(f'GRANT TEMPORARY ON DATABASE "{database}" TO halite_no_temp')
            store.record("save_return", ret(JID, "m2"), dt.datetime.now(UTC))
            store.flush()  # commits m2, then replays the spool
            assert store.spool.waiting() == []
            assert set(return_rows(store, JID)) == {"m1", "m2"}
            assert job_row(store, JID)["minions_returned"] == 2
            # Revoked again after the check: a new session cannot make its stage, and the
            # write waits in the spool again (not set aside as refused).
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    f'REVOKE TEMPORARY ON DATABASE "{database}" FROM halite_no_temp'
                )
            store.db.engine.dispose()
            caplog.clear()
            with caplog.at_level("WARNING"):
                store.record("save_return", ret(JID, "m3"), dt.datetime.now(UTC))
                store.flush()
            assert len(store.spool.waiting()) == 1
            assert not store.spool.rejected.exists() or not any(store.spool.rejected.iterdir())
            assert "may no longer create temporary tables" in caplog.text
            with admin.connect() as conn:
                conn.exec_driver_sql(f'GRANT TEMPORARY ON DATABASE "{database}" TO halite_no_temp')
            store.record("save_return", ret(JID, "m4"), dt.datetime.now(UTC))
            store.flush()
            assert store.spool.waiting() == []
            assert job_row(store, JID)["minions_returned"] == 4
        finally:
            store.db.dispose()


@postgresql_only("concurrent writers on PostgreSQL (SQLite serialises them with BEGIN IMMEDIATE)")
@pytest.mark.parametrize("settle", ["no_return", "killed"])
def test_settling_while_a_return_batch_commits_counts_both(store, settings, settle):
    """The engine settles m1 (or a kill marks it) while a worker's batch holding m2's return
    is not yet committed: the settle waits for the batch, and its recount sees m2."""
    import threading
    import time

    from halite_core.jobcache import KilledItem, NoReturnItem, utcnow
    from halite_core.store.db import Database

    publish(store, JID, minions=("m1", "m2"))
    engine = JobStore(settings, db=Database(store.db.url.render_as_string(False)))
    with store.db.write() as conn:  # the worker's batch, held open
        store.writes._apply_items(conn, store.items_for("save_return", ret(JID, "m2")))
        if settle == "no_return":
            work = lambda: engine.apply_items([NoReturnItem(JID, ["m1"], utcnow())])  # noqa: E731
        else:
            work = lambda: engine.apply_items([KilledItem(JID, ["m1"], utcnow())])  # noqa: E731
        thread = threading.Thread(target=work)
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the engine waits for the batch's lock
            with store.db.engine.connect() as probe:
                waiting = probe.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).scalar()
            if waiting:
                break
            time.sleep(0.05)
        assert waiting, "the settle did not wait for the uncommitted batch"
    thread.join(30)
    engine.db.dispose()
    states = {m: r["state"] for m, r in return_rows(store, JID).items()}
    assert states == {"m1": settle, "m2": "returned"}
    job = job_row(store, JID)
    assert (job["status"], job["minions_returned"], job["minions_failed"]) == ("complete", 1, 1)


@postgresql_only("concurrent writers on PostgreSQL (SQLite serialises them with BEGIN IMMEDIATE)")
def test_mirrored_batches_never_deadlock(store, settings):
    """Two workers' batches at once, each publishing its own new jobs and carrying returns
    for the other's: rows are created in item order, so without a lock on every job first
    each waits for the other (PostgreSQL then aborts one of them)."""
    import threading

    from halite_core.store.db import Database

    url = store.db.url.render_as_string(False)
    workers = [JobStore(settings, db=Database(url)) for _ in range(2)]
    errors: list[BaseException] = []

    def batch(me: int, jids: list[str], barrier: threading.Barrier) -> None:
        try:
            worker, items = workers[me], []
            for jid in jids[me::2]:
                items += worker.items_for("save_load", jid, {"fun": "test.ping", "tgt": "*"},
                                          ["m1", "m2"])  # fmt: skip
            for jid in jids[1 - me :: 2]:
                items += worker.items_for("save_return", ret(jid, "m1", fun="test.ping"))
            barrier.wait()
            worker.apply_items(items)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for round_ in range(8):
        jids = [f"20261128{round_:02d}000000{i:04d}" for i in range(20)]
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=batch, args=(me, jids, barrier)) for me in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for worker in workers:
        worker.db.dispose()
    assert errors == []
    with store.db.read() as conn:
        counts = conn.execute(
            select(jobs_index.c.minions_targeted, jobs_index.c.minions_returned, func.count())
            .group_by(jobs_index.c.minions_targeted, jobs_index.c.minions_returned)
        ).all()  # fmt: skip
    assert [tuple(row) for row in counts] == [(2, 1, 160)]


def test_a_settled_minion_ends_the_job_but_is_no_return(store):
    """last_return_at (Salt's get_endtime) is the last real return; end_time is when the
    last minion returned or was settled."""
    from halite_core.jobcache import NoReturnItem

    t1 = dt.datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC)
    t2 = dt.datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC)
    publish(store, JID, minions=("m1", "m2"))
    save_return(store, ret(JID, "m1"), t1)
    store.apply_items([NoReturnItem(JID, ["m2"], t2)])
    row = job_row(store, JID)
    assert (row["status"], row["last_return_at"], row["end_time"]) == ("complete", t1, t2)


def test_a_journal_that_cannot_be_written_loses_nothing(store, settings, tmp_path, caplog):
    """The journal's directory cannot be made (a file is in the way; a full disk is the
    same): the returner does not raise, the write is spooled instead, and the committer
    commits it from the spool (Salt's call itself never writes to the database)."""
    (tmp_path / "blocker").write_text("")
    blocked = JobStore(
        dataclasses.replace(settings, journal_dir=str(tmp_path / "blocker" / "journal")),
        store.db,
    )
    try:
        publish(store, JID, minions=("m1",))
        assert blocked.record("save_return", ret(JID, "m1"), dt.datetime.now(UTC)) is True
        assert "cannot journal 1 writes" in caplog.text
        blocked.flush()
        assert set(store.get_jid(JID)) == {"m1"}
        assert job_row(store, JID)["status"] == "complete"
    finally:
        blocked.close(wait=10)  # its committer, which keeps failing to take its lock, ends


def test_spooled_and_journalled_writes_read_back_as_sent(store, settings, tmp_path):
    """A publish holding bytes and a mapping with the marker's own key, and a return of a
    job not yet published: through a journal line, or spooled while the database is down
    and replayed, each reads back as it was sent (its markers are not encoded twice)."""
    from halite_core.durability.journal import item_from_line

    marker_like = {"__halite_type__": "bytes", "base64": "AA=="}
    load = {"jid": JID, "fun": "file.write", "tgt": ["m1"], "tgt_type": "list", "user": "root",
            "arg": ["/tmp/x", b"\x00\xff", marker_like]}  # fmt: skip
    early = ret("20261128120000000002", "m1", fun="test.arg")
    early["fun_args"] = [b"\x01", {"__kwarg__": True, "when": dt.date(2026, 11, 28)}]
    for item in store.items_for("save_load", JID, load, ["m1"]) + store.items_for(
        "save_return", early
    ):
        again = item_from_line(item_to_line(item))
        assert again == item, (again, item)
    (tmp_path / "blocker").write_text("")
    # A journal directory serves one database: this store has its own.
    down = JobStore(dataclasses.replace(
        settings, flush_interval=0, db_url=f"sqlite:///{tmp_path}/blocker/halite.db",
        journal_dir=str(tmp_path / "down-journal")))  # fmt: skip
    assert down.record("save_load", JID, load, ["m1"]) is True  # journalled
    assert down.record("save_return", early) is True
    down.flush()  # the committer meets the database it cannot open: spooled
    down.close(wait=10)  # its replays of the spool (which keep failing) end
    assert down.spool.waiting() != []
    store.replay_spool()
    assert store.get_load(JID)["arg"] == load["arg"]
    with store.db.read() as conn:
        kept = conn.execute(
            select(jobs_index.c.arguments, jobs_index.c.kwargs)
            .where(jobs_index.c.jid == "20261128120000000002")
        ).one()  # fmt: skip
    assert store.get_jid("20261128120000000002")["m1"]["return"] is True
    assert kept.arguments == [{"__halite_type__": "bytes", "base64": "AQ=="}]
    assert kept.kwargs == {"when": {"__halite_type__": "datetime", "iso": "2026-11-28",
                                    "cls": "date"}}  # fmt: skip


def _crash_after_recording(settings, jid):
    store = JobStore(dataclasses.replace(settings, flush_interval=3600))
    store.record("save_return", ret(jid, "m1"), dt.datetime.now(UTC))
    os._exit(0)  # dies before its batch is committed: no flush, no atexit


def test_journal_of_a_dead_process_is_recovered(store, settings):
    publish(store, JID, minions=("m1", "m2"))
    child = multiprocessing.get_context("fork").Process(
        target=_crash_after_recording, args=(settings, JID)
    )
    child.start()
    child.join(60)
    assert return_rows(store, JID)["m1"]["state"] == "pending"
    assert len(untaken(settings)) == 1
    survivor = JobStore(dataclasses.replace(settings, spool_replay_interval=0))
    survivor.record("save_return", ret(JID, "m2"), dt.datetime.now(UTC))
    survivor.flush()
    assert untaken(settings) == []
    assert set(store.get_jid(JID)) == {"m1", "m2"}
    assert job_row(store, JID)["status"] == "complete"


def test_write_behind_batches_and_reads_see_own_writes(store):
    publish(store, JID, minions=[f"m{i}" for i in range(50)])
    for i in range(50):
        assert store.record("save_return", ret(JID, f"m{i}"), dt.datetime.now(UTC)) is True
    assert store.record("save_return", ret(JID, "m0", "again"), dt.datetime.now(UTC)) is True
    got = store.get_jid(JID)  # read from the journal: not committed yet
    assert len(got) == 50 and got["m0"]["return"] is True
    store.flush()
    assert store.get_jid(JID) == got
    job = job_row(store, JID)
    assert (job["minions_returned"], job["status"]) == (50, "complete")


def test_load_not_yet_committed_is_found_in_the_journal(store, settings):
    # A master worker has queued a publish; Salt's CLI, another process, asks for it at once.
    worker = JobStore(dataclasses.replace(settings, flush_interval=3600))
    load = {"jid": JID, "fun": "test.ping", "arg": [], "tgt": "*", "tgt_type": "glob"}
    assert worker.record("save_load", JID, load, ["m2", "m1"]) is True
    with store.db.read() as conn:
        assert conn.scalar(select(func.count()).select_from(jobs_index)) == 0
    assert store.get_load(JID) == {**load, "Minions": ["m1", "m2"]}
    worker.flush()
    assert untaken(settings) == []
    assert store.get_load(JID) == {**load, "Minions": ["m1", "m2"]}
    assert store.get_load("20261128120000000999") == {}


def test_a_live_writers_journal_is_not_recovered_from_under_it(store, settings):
    patient = dataclasses.replace(settings, flush_interval=3600)
    first = JobStore(patient)
    first.record("save_return", ret(JID, "m1"), dt.datetime.now(UTC))
    second = JobStore(dataclasses.replace(patient, max_return_bytes=1 << 20))
    second.record("save_return", ret(JID, "m2"), dt.datetime.now(UTC))
    assert second.spool.waiting() == []
    # One journal per process, whatever number of stores write to it.
    assert len(list(Path(settings.journal_dir).glob(f"{os.getpid()}-*.jsonl"))) == 1
    first.flush()
    second.flush()
    assert set(store.get_jid(JID)) == {"m1", "m2"}
    assert untaken(settings) == []


def test_a_write_the_database_refuses_does_not_take_its_batch_along(store):
    publish(store, JID, minions=("m1", "m2", "m3"))
    items = [store.items_for("save_return", ret(JID, m))[0] for m in ("m1", "m2", "m3")]
    # A write SQLite refuses with an integrity error (no start time for the job it creates).
    broken = items[1]._replace(
        row=items[1].row._replace(jid="20261128120000000666", start_time=None)
    )
    entries = [
        (item_to_line(i) if i is not broken else "{}", i) for i in (items[0], broken, items[2])
    ]
    assert commit_or_spool(store.apply_entries, store.spool, entries, is_outage) is True
    assert set(store.get_jid(JID)) == {"m1", "m3"}
    (rejected,) = store.spool.rejected.iterdir()
    assert "IntegrityError" in json.loads(rejected.read_text())["reason"]


def test_a_publish_to_thousands_of_listed_minions_is_stored(store):
    """A list target of 3,000 minions (21,000 characters) made a row PostgreSQL's index on
    the target refuses, and the publish was spooled for ever: the column keeps 600
    characters, the load the whole target."""
    minions = [f"m{i:05d}" for i in range(3000)]
    publish(store, JID, minions=minions)
    row = job_row(store, JID)
    assert len(row["target"]) == 600
    assert row["target"].startswith("m00000,m00001,") and row["target"].endswith("...")
    assert store.get_load(JID)["tgt"] == minions
    assert row["minions_targeted"] == 3000


@postgresql_only("a PostgreSQL error that refuses a write for good")
def test_a_write_postgresql_refuses_for_good_is_not_an_outage(store):
    """PostgreSQL's "index row requires 10032 bytes" arrives as an OperationalError: it is
    not an outage (spooling it would retry it for ever), a lost connection is."""
    import sqlalchemy

    with pytest.raises(sqlalchemy.exc.DBAPIError) as refused:
        with store.db.write() as conn:
            conn.exec_driver_sql("CREATE TEMP TABLE wide (t text)")
            conn.exec_driver_sql("CREATE INDEX ON wide (t)")
            conn.exec_driver_sql("INSERT INTO wide SELECT string_agg(md5(g::text), '') "
                                 "FROM generate_series(1, 400) g")  # fmt: skip
    assert isinstance(refused.value, sqlalchemy.exc.OperationalError)
    assert is_outage(refused.value) is False


def test_a_second_hand_publish_fills_a_job_and_never_replaces_the_first(store):
    """A load known second-hand (the engine's bus event) fills a job that has no publish yet
    (its minions were added first), in the same batch as a first-hand one of another job; it never
    replaces a publish, which replaces it (PostgreSQL: the loads of a batch are staged)."""
    from halite_core.store.ops import LoadItem

    early, known = "20261128120000000101", "20261128120000000102"
    store.apply_items([MinionsItem(early, ["m1"])])
    first_hand = {"fun": "test.arg", "arg": ["a", {"__kwarg__": True, "k": 1}], "tgt": "m1",
                  "tgt_type": "glob", "user": "alice"}  # fmt: skip
    heard = {"fun": "test.arg", "arg": ["bus"], "tgt": "m1", "tgt_type": "list", "user": "bus"}
    store.apply_items(
        [LoadItem(known, first_hand, ["m1"]), LoadItem(early, heard, ["m1"], only_new=True)]
    )
    store.apply_items([LoadItem(known, heard, ["m1"], only_new=True)])

    def job(jid):
        with store.db.read() as conn:
            return conn.execute(
                select(jobs_index.c.user, jobs_index.c.arguments, jobs_index.c.kwargs,
                       jobs_index.c.target_type, jobs_index.c.load["user"].as_string())
                .where(jobs_index.c.jid == jid)
            ).one()  # fmt: skip

    assert tuple(job(known)) == ("alice", ["a"], {"k": 1}, "glob", "alice")
    assert tuple(job(early)) == ("bus", ["bus"], {}, "list", "bus")
    store.apply_items([LoadItem(early, first_hand, ["m1"])])  # the publish itself, later
    assert tuple(job(early)) == ("alice", ["a"], {"k": 1}, "glob", "alice")
    assert job_row(store, early)["minions_targeted"] == 1


def test_a_numeric_master_id_is_stored_as_its_text(opts):
    """YAML reads ``id: 1234`` as a number: the master's id is stored as its text (on
    PostgreSQL the batch's loads are copied as text, which refuses a number)."""
    from halite_core.config import Settings

    store = JobStore(Settings.from_opts({**opts, "id": 1234}))
    store.db.ensure_schema()
    try:
        publish(store, JID)
        store.flush()
        assert job_row(store, JID)["master_id"] == "1234"
        assert not store.spool.rejected.exists() or not any(store.spool.rejected.iterdir())
    finally:
        store.db.dispose()


def test_text_neither_database_can_hold_is_escaped_and_nothing_is_set_aside(store):
    """What PostgreSQL refuses (a NUL in text, a lone surrogate anywhere: a file name read
    from bytes that are not UTF-8), and a minion id longer than the column, through Salt's
    calls: every publish and return is stored, the returns come back as sent, the index's
    text columns show the odd character escaped."""
    odd = {
        "20261128120000000011": ({"fun": "test.\x00ping"}, {}, "m1", "file-\udcff.txt"),
        "20261128120000000012": ({}, {"out": "nes\x00ted"}, "m1", {"files": ["x\udcff", "ok"]}),
        "20261128120000000013": ({"user": "ro\x00ot", "tgt": "web\x00*"}, {}, "m1", True),
        "20261128120000000014": ({"tgt": "web\udcff"}, {}, "m1", {"k\udcff": 1}),
        "20261128120000000015": ({}, {}, "m\x00x", True),
        "20261128120000000016": ({}, {}, "m" * 300, True),
    }
    for jid, (extra, more, minion, value) in odd.items():
        load = {"jid": jid, "fun": "test.ping", "arg": [], "tgt": [minion], "tgt_type": "list",
                "user": "root", **extra}  # fmt: skip
        assert store.record("save_load", jid, load, [minion]) is True
        returned = {**ret(jid, minion, value, fun=load["fun"]), **more}
        assert store.record("save_return", returned) is True
    store.flush()
    assert not store.spool.rejected.exists() or not any(store.spool.rejected.iterdir())
    for jid, (*_, value) in odd.items():
        row = job_row(store, jid)
        assert (row["status"], row["minions_targeted"], row["minions_returned"]) == (
            "complete", 1, 1
        ), jid  # fmt: skip
        (stored,) = store.get_jid(jid).values()
        assert stored["return"] == value, jid
    assert job_row(store, "20261128120000000011")["function"] == "test.\\u0000ping"
    assert job_row(store, "20261128120000000013")["user"] == "ro\\u0000ot"
    assert job_row(store, "20261128120000000013")["target"] == "web\\u0000*"
    assert job_row(store, "20261128120000000014")["target"] == "web\\udcff"
    assert list(store.get_jid("20261128120000000015")) == ["m\\u0000x"]
    assert list(store.get_jid("20261128120000000016")) == ["m" * 255]
