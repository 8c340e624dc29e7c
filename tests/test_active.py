"""The active-job engine driven by synthetic event sequences, on a real SQLite index."""

import datetime as dt

import pytest
from sqlalchemy import select

from halite_core.active import ActiveJobs, effective_status
from halite_core.config import EngineOptions
from halite_core.store.schema import job_returns, jobs_index
from tests.conftest import postgresql_only, sqlite_only
from tests.helpers import save_load, save_return

JID = "20261128120000000001"
UTC = dt.timezone.utc


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class FindJob:
    """Records the saltutil.find_job calls the engine makes (the Salt side is in the
    integration tests) and hands out their jids."""

    def __init__(self):
        self.calls = []

    def __call__(self, jid, minions):
        self.calls.append((jid, minions))
        return f"2026112813000000{len(self.calls):04d}"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def find_job():
    return FindJob()


def make_engine(store, clock, find_job, **options):
    options = {"timeout": 5, "timeout_grace": 10, "write_returns": True, **options}
    return ActiveJobs(store, EngineOptions(**options), find_job, clock)


@pytest.fixture
def engine(store, clock, find_job):
    return make_engine(store, clock, find_job)


def new(jid, minions, fun="test.sleep"):
    return f"salt/job/{jid}/new", {
        "jid": jid, "fun": fun, "arg": [30], "tgt": list(minions), "tgt_type": "list",
        "user": "root", "minions": list(minions), "missing": [],
    }  # fmt: skip


def ret(jid, minion, value=True, fun="test.sleep"):
    return f"salt/job/{jid}/ret/{minion}", {
        "jid": jid, "id": minion, "fun": fun, "fun_args": [], "return": value, "retcode": 0,
        "success": True, "_stamp": "2026-11-28T12:00:01.000000",
    }  # fmt: skip


def feed(engine, *events):
    for tag, data in events:
        engine.handle(tag, data)
    engine.flush()


def job(store, jid=JID):
    store.flush()  # the committer's next pass: what a reader sees within flush_interval
    with store.db.read() as conn:
        return conn.execute(select(jobs_index).where(jobs_index.c.jid == jid)).one()._asdict()


def states(store, jid=JID):
    store.flush()
    with store.db.read() as conn:
        rows = conn.execute(
            select(job_returns.c.minion, job_returns.c.state).where(job_returns.c.jid == jid)
        ).all()
    return dict(rows)


def test_job_runs_from_new_until_every_minion_returned(engine, store):
    feed(engine, new(JID, ["m1", "m2"]))
    assert job(store)["status"] == "running" and set(engine.running()) == {JID}
    assert states(store) == {"m1": "pending", "m2": "pending"}
    feed(engine, ret(JID, "m1"))
    assert job(store)["status"] == "running"
    feed(engine, ret(JID, "m2"))
    row = job(store)
    assert row["status"] == "complete" and row["end_time"] is not None
    assert list(engine.running()) == []


def test_return_before_new_and_duplicates(engine, store):
    feed(engine, ret(JID, "m1"), ret(JID, "m1"), new(JID, ["m1", "m2"]))
    assert set(engine.jobs[JID].pending) == {"m2"}
    feed(engine, ret(JID, "m2"), ret(JID, "m2", value="again"))
    assert job(store)["status"] == "complete"
    assert store.get_jid(JID)["m2"]["return"] is True  # the first return stays


def test_repeated_announcement_changes_nothing(engine, store):
    feed(engine, new(JID, ["m1", "m2"]), ret(JID, "m1"), new(JID, ["m1", "m2"]))
    assert engine.jobs[JID].pending == {"m2"}
    feed(engine, ret(JID, "m2"), new(JID, ["m1", "m2"]))
    assert list(engine.running()) == [] and job(store)["status"] == "complete"


def test_return_for_a_job_never_announced_is_indexed(engine, store):
    feed(engine, ret(JID, "m7", fun="test.ping"))
    row = job(store)
    assert (row["function"], row["status"], row["minions_returned"]) == ("test.ping", "complete", 1)
    assert list(engine.running()) == []


def test_silent_minion_is_asked_then_settled_no_return(engine, store, clock, find_job):
    feed(engine, new(JID, ["m1", "m2"]), ret(JID, "m1"))
    engine.tick()
    assert find_job.calls == []  # not yet past the timeout
    clock.now += 6
    engine.tick()
    assert find_job.calls == [(JID, ["m2"])]  # only the pending minion, list target
    clock.now += 5
    engine.tick()
    assert states(store)["m2"] == "pending"  # still waiting for an answer
    clock.now += 6
    engine.tick()
    engine.flush()
    assert states(store) == {"m1": "returned", "m2": "no_return"}
    row = job(store)
    assert (row["status"], row["minions_failed"]) == ("complete", 1)
    assert row["end_time"] is not None
    assert list(engine.running()) == []


def test_minion_still_running_is_asked_again_later(engine, store, clock, find_job):
    feed(engine, new(JID, ["m1"]))
    clock.now += 6
    engine.tick()
    probe = engine.jobs[JID].probe
    feed(engine, ret(probe, "m1", value={"jid": JID, "fun": "test.sleep", "pid": 42}))
    clock.now += 11
    engine.tick()
    assert states(store)["m1"] == "pending" and JID in engine.jobs
    clock.now += 11
    engine.tick()
    assert len(find_job.calls) == 2
    feed(engine, ret(engine.jobs[JID].probe, "m1", value={}))  # no longer running it
    engine.tick()
    engine.flush()
    assert states(store)["m1"] == "no_return" and job(store)["status"] == "complete"


def test_late_return_after_settling_wins(engine, store, clock):
    feed(engine, new(JID, ["m1"]))
    clock.now += 6
    engine.tick()
    clock.now += 11
    engine.tick()
    engine.flush()
    assert states(store)["m1"] == "no_return"
    feed(engine, ret(JID, "m1", value="late"))
    assert states(store)["m1"] == "returned"
    row = job(store)
    assert (row["status"], row["minions_failed"], row["minions_returned"]) == ("complete", 0, 1)


def test_returner_and_engine_in_either_order(store, clock, find_job):
    # With halite as the job cache the engine leaves returns to the returner.
    engine = make_engine(store, clock, find_job, write_returns=False)
    feed(engine, new(JID, ["m1", "m2"]))
    save_return(store, ret(JID, "m1")[1])  # the returner, before the engine's event
    feed(engine, ret(JID, "m1"), ret(JID, "m2"))
    assert JID not in engine.jobs
    assert states(store) == {"m1": "returned", "m2": "pending"}  # m2's return not yet cached
    save_return(store, ret(JID, "m2")[1])
    assert job(store)["status"] == "complete"


def test_restart_in_the_middle_of_a_job_recovers_and_reconciles(store, clock, find_job):
    first = make_engine(store, clock, find_job)
    first.recover()
    feed(first, new(JID, ["m1", "m2"]), ret(JID, "m1"))
    first.tick()
    assert store.engine_state("master1_master")["reconciled_at"] is not None
    # The master restarts; a new engine starts from the index.
    clock.now += 60
    second = make_engine(store, clock, find_job)
    assert second.recover() == 1
    assert second.jobs[JID].pending == {"m2"}
    now = dt.datetime.fromtimestamp(clock.now, UTC)
    state = store.engine_state("master1_master")
    assert state["reconciled_at"] is None
    assert effective_status("running", state, now) == "unknown"
    second.tick()
    assert find_job.calls == [(JID, ["m2"])]  # asked at once
    clock.now += 11
    second.tick()  # settles m2
    clock.now += 1
    second.tick()  # writes it, then the engine has reconciled
    state = store.engine_state("master1_master")
    assert state["reconciled_at"] is not None
    assert effective_status("running", state, now) == "running"
    assert states(store)["m2"] == "no_return" and job(store)["status"] == "complete"


def test_runner_jobs_are_tracked(engine, store):
    run_jid = "20261128120000000050"
    engine.handle(f"salt/run/{run_jid}/new", {"fun": "runner.jobs.list_jobs", "jid": run_jid,
                                               "user": "root", "fun_args": []})  # fmt: skip
    engine.flush()
    assert job(store, run_jid)["status"] == "running"
    assert job(store, run_jid)["function"] == "runner.jobs.list_jobs"
    engine.handle(f"salt/run/{run_jid}/ret", {"fun": "runner.jobs.list_jobs", "jid": run_jid,
                                               "return": {}, "success": True})  # fmt: skip
    engine.flush()
    assert job(store, run_jid)["status"] == "complete"
    assert list(engine.running()) == []


def test_a_runners_publish_wins_over_its_store_job_load_in_either_order(engine, store):
    """salt-run hands the job cache only the runner's return (Salt's store_job, as a load
    without arguments); the engine's salt/run/<jid>/new is the publish, whichever of the
    two is written first."""
    for n, engine_first in enumerate((True, False)):
        jid = f"2026112812000000006{n}"
        event = (f"salt/run/{jid}/new", {"fun": "runner.state.orchestrate", "jid": jid,
                 "user": "root", "fun_args": ["orch.deploy", {"pillar": {"v": 1}}]})  # fmt: skip
        second_hand = {"id": "master1_master", "tgt": "master1_master", "jid": jid,
                       "fun": "runner.state.orchestrate", "user": "root",
                       "return": {"fun": "runner.state.orchestrate", "return": {}}}  # fmt: skip
        if engine_first:
            feed(engine, event)
        save_load(store, jid, second_hand)
        if not engine_first:
            feed(engine, event)
        row = job(store, jid)
        # Salt's runner event lists kwargs as a trailing dict (fun_args = args + [kwargs]).
        assert row["arguments"] == ["orch.deploy", {"pillar": {"v": 1}}]
        assert (row["target"], row["target_type"]) == ("master1_master", "list")


def test_find_job_jobs_are_system_jobs_and_never_asked_about(engine, store, clock, find_job):
    probe_jid = "20261128120000000060"
    feed(engine, new(probe_jid, ["m9"], fun="saltutil.find_job"))
    assert job(store, probe_jid)["system"] is True
    clock.now += 6
    engine.tick()
    engine.flush()
    assert find_job.calls == []
    assert states(store, probe_jid) == {"m9": "no_return"}


def test_changes_are_written_in_batches(store, clock, find_job):
    engine = make_engine(store, clock, find_job, batch_size=50, flush_interval=1)
    engine.handle(*new(JID, [f"m{i}" for i in range(200)]))
    for i in range(199):
        engine.handle(*ret(JID, f"m{i}"))
    engine.tick()  # 200 changes waiting: written now, in one transaction
    assert job(store)["minions_returned"] == 199
    engine.handle(*ret(JID, "m199"))
    engine.tick()
    assert job(store)["minions_returned"] == 199  # one change: waits for flush_interval
    clock.now += 1
    engine.tick()
    assert job(store)["status"] == "complete"


def test_options_have_defaults_and_clear_errors():
    assert EngineOptions.from_config({}, {"timeout": 7}).timeout == 7
    assert EngineOptions.from_config({"batch_size": "20"}, {}).batch_size == 20
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        EngineOptions.from_config({"batch_size": 0}, {})
    with pytest.raises(ValueError, match="timeout must be a number, not 'soon'"):
        EngineOptions.from_config({"timeout": "soon"}, {})


@postgresql_only("stops the PostgreSQL server")
def test_engine_follows_the_bus_while_the_database_is_down(store, settings, clock, find_job,
                                                          pg_server):  # fmt: skip
    import dataclasses

    from halite_core.jobcache import JobStore

    patient = JobStore(dataclasses.replace(settings, spool_replay_interval=0))
    engine = make_engine(patient, clock, find_job)
    feed(engine, new(JID, ["m1", "m2", "m3"]))
    pg_server.stop()
    try:
        feed(engine, ret(JID, "m1"), new("20261128120000000002", ["m1"]))
        clock.now += 1
        engine.tick()  # no exception: the changes wait in the spool
        assert patient.spool.waiting()
    finally:
        pg_server.start()
        pg_server.wait_ready()
    feed(engine, ret(JID, "m2"), ret(JID, "m3"))  # written, then the spool replayed
    assert patient.spool.waiting() == []
    assert states(store) == dict.fromkeys(("m1", "m2", "m3"), "returned")
    assert job(store)["status"] == "complete"
    assert job(store, "20261128120000000002")["status"] == "running"
    patient.db.dispose()


@sqlite_only("SQLite reports a full disk as SQLITE_FULL")
def test_full_disk_spools_and_replays(store, settings):
    """A database that cannot grow (the disk is full: here its page count is capped, which
    SQLite reports exactly like a full disk) spools the writes; they land once it can."""
    import dataclasses

    from sqlalchemy import event

    from halite_core.jobcache import JobStore

    full = {"on": False}
    patient = JobStore(dataclasses.replace(settings, spool_replay_interval=0))
    patient.db.ensure_schema()

    @event.listens_for(patient.db.engine, "begin")
    def cap(conn):
        if full["on"]:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
        else:
            conn.exec_driver_sql("PRAGMA max_page_count = 1073741823")

    save_load(patient, JID, {"jid": JID, "fun": "test.arg", "tgt": ["m1", "m2"],
                            "tgt_type": "list"}, ["m1", "m2"])  # fmt: skip
    full["on"] = True
    big = {"data": "x" * 200_000}
    assert patient.record("save_return", ret(JID, "m1", value=big)[1]) is True
    patient.flush()
    assert len(patient.spool.waiting()) == 1  # "database or disk is full": spooled
    full["on"] = False
    patient.record("save_return", ret(JID, "m2")[1])
    patient.flush()
    assert patient.spool.waiting() == []
    assert states(store) == {"m1": "returned", "m2": "returned"}
    assert store.get_jid(JID)["m1"]["return"] == big
    patient.db.dispose()


def test_a_syndics_repeated_new_adds_its_minions(engine, store, clock, find_job):
    """A syndic forwards its own salt/job/<jid>/new with its own minions."""
    feed(engine, new(JID, ["m1"]), new(JID, ["s1"]))
    assert engine.jobs[JID].pending == {"m1", "s1"}
    assert states(store) == {"m1": "pending", "s1": "pending"}
    feed(engine, ret(JID, "m1"), new(JID, ["m1", "s1"]))  # m1 returned: not followed again
    assert engine.jobs[JID].pending == {"s1"}
    clock.now += 6
    engine.tick()
    assert find_job.calls == [(JID, ["s1"])]
    clock.now += 11
    engine.tick()
    engine.flush()
    assert states(store) == {"m1": "returned", "s1": "no_return"}
    assert job(store)["status"] == "complete"


def test_a_repeated_new_after_completion_takes_the_job_up_again(engine, store):
    feed(engine, new(JID, ["m1"]), ret(JID, "m1"))
    assert job(store)["status"] == "complete" and list(engine.running()) == []
    feed(engine, new(JID, ["m1", "s1"]))
    assert engine.jobs[JID].pending == {"s1"}
    assert job(store)["status"] == "running"
    feed(engine, ret(JID, "s1"))
    assert states(store) == {"m1": "returned", "s1": "returned"}
    assert job(store)["status"] == "complete" and list(engine.running()) == []


class Nobody(FindJob):
    """Salt publishes to nobody: the minions' keys were deleted (cmd_async answers 0)."""

    def __call__(self, jid, minions):
        super().__call__(jid, minions)
        return None


def test_minions_that_cannot_be_asked_are_settled(store, clock):
    nobody = Nobody()
    engine = make_engine(store, clock, nobody)
    feed(engine, new(JID, ["gone"]))
    for _ in range(3):
        clock.now += 11
        engine.tick()
    engine.flush()
    assert nobody.calls == [(JID, ["gone"])] * 3
    assert states(store) == {"gone": "no_return"} and job(store)["status"] == "complete"
    assert list(engine.running()) == []


def test_reconciled_is_written_again_after_a_failed_write(store, clock, find_job, monkeypatch):
    # A failed write of the engine's state (a database hiccup) cannot be caused on demand.
    engine = make_engine(store, clock, find_job)
    engine.recover()
    real, failed = store.save_engine_state, []

    def flaky(master_id, values):
        if values.get("reconciled_at") is not None and not failed:
            failed.append(values)
            raise OSError("database hiccup")
        return real(master_id, values)

    monkeypatch.setattr(store, "save_engine_state", flaky)
    engine.tick()
    assert failed and store.engine_state("master1_master")["reconciled_at"] is None
    clock.now += 1
    engine.tick()
    assert store.engine_state("master1_master")["reconciled_at"] is not None


def test_engine_started_while_the_database_is_down(settings, clock, find_job, tmp_path):
    import dataclasses

    from halite_core.jobcache import JobStore

    blocker = tmp_path / "db"
    blocker.write_text("")  # the database's directory cannot be made: it cannot be opened
    down = JobStore(dataclasses.replace(
        settings, db_url=f"sqlite:///{blocker}/halite.db", spool_replay_interval=0))  # fmt: skip
    engine = make_engine(down, clock, find_job)
    assert engine.recover() == 0  # no exception: the engine follows the bus all the same
    feed(engine, new(JID, ["m1", "m2"]), ret(JID, "m1"))  # spooled
    assert down.spool.waiting()
    blocker.unlink()
    blocker.mkdir()  # the database is back
    clock.now += 11
    engine.tick()  # recovers, writes its state, replays the spool
    assert down.spool.waiting() == []
    assert states(down) == {"m1": "returned", "m2": "pending"}
    assert down.engine_state("master1_master")["started_at"] is not None
    down.db.dispose()


def test_odd_announcements_are_ignored(engine, store):
    feed(engine, ("salt/job/req/new", {"jid": "req", "fun": "test.ping", "minions": ["m1"]}))
    tag, data = new(JID, ["x"])
    data["minions"] = "web1"  # not a list: no minions w, e, b, 1
    feed(engine, (tag, data))
    assert list(engine.running()) == []
    assert states(store) == {}
