"""What the index keeps of halite's own runner jobs, and when the runners say nothing feeds it."""

import pytest
from sqlalchemy import select

from halite_core.config import Settings
from halite_core.models import job_returns
from halite_core.own_runners import WITHHELD, feed_warning

JID = "20261128120000000001"
MASTER = "master1_master"
ENTRIES = {"entries": [{"id": 1, "user": "sudo_bob", "action": "kill"}], "next": None}


def payload(fun, answer, success=True):
    """Salt's runner payload, as its RunnerClient hands it to store_job."""
    return {"fun": fun, "jid": JID, "user": "root", "fun_args": [{"limit": 1}],
            "return": answer, "success": success}  # fmt: skip


def row(store, minion=MASTER):
    """The job_returns row: success and retcode as the index keeps them."""
    with store.db.read() as conn:
        r = job_returns.c
        return conn.execute(select(job_returns).where(r.jid == JID, r.minion == minion)).one()


def store_job(store, fun, answer, success=True):
    """What Salt's store_job does with a runner's return: a load, then the return."""
    ret = payload(fun, answer, success)
    load = {"id": MASTER, "tgt": MASTER, "jid": JID, "return": ret, "fun": fun, "user": "root"}
    store.save_load(JID, load)
    store.save_return(load)


def test_a_halite_runner_answer_is_withheld_and_its_outcome_kept(store):
    store_job(store, "runner.halite.audit", ENTRIES)
    stored = store.get_jid(JID)[MASTER]
    assert stored["return"]["return"] == WITHHELD
    assert stored["return"]["fun"] == "runner.halite.audit"
    assert stored["return"]["success"] is True
    assert row(store).success is True
    assert "entries" not in str(store.get_load(JID))
    assert store.get_load(JID)["fun"] == "runner.halite.audit"


def test_a_failed_halite_runner_keeps_its_retcode(store):
    answer = {"error": "permission denied: 'sudo_bob' lacks view:audit:*", "retcode": 1}
    store_job(store, "runner.halite.audit", answer, success=False)
    assert (row(store).success, row(store).retcode) == (False, 1)
    assert "permission denied" not in str(store.get_jid(JID))


def test_a_return_without_its_function_is_judged_by_its_payload(store):
    load = {"id": MASTER, "jid": JID, "return": payload("runner.halite.audit", ENTRIES)}
    store.save_load(JID, load)
    store.save_return(load)
    assert "entries" not in str(store.get_jid(JID)) and "entries" not in str(store.get_load(JID))


def test_the_engines_bare_answer_is_withheld_too(store):
    """The engine (write_returns) indexes salt/run/<jid>/ret: the answer itself is the
    return, the success beside it."""
    event = {"fun": "runner.halite.jobs", "jid": JID, "id": MASTER, "user": "root",
             "return": {"jobs": [{"jid": "x"}], "next": None}, "success": True}  # fmt: skip
    store.save_return(event)
    stored = store.get_jid(JID)[MASTER]
    assert stored["return"] == WITHHELD
    assert row(store).success is True


@pytest.mark.parametrize("fun", ["runner.state.orchestrate", "runner.jobs.list_jobs", "test.ping"])
def test_other_jobs_keep_their_returns(store, fun):
    store_job(store, fun, ENTRIES)
    assert store.get_jid(JID)[MASTER]["return"]["return"] == ENTRIES


def test_a_minions_own_marker_lookalike_is_not_taken_for_withheld(store):
    store.save_return({"fun": "test.echo", "jid": JID, "id": "m1", "return": dict(WITHHELD)})
    assert store.get_jid(JID)["m1"]["return"] == WITHHELD  # given back as the minion sent it


@pytest.mark.parametrize(
    "function",
    ["runner.halite.jobs", "runner.halite.audit", "runner.jobs.list_jobs", "runner.jobs.active",
     "wheel.key.list_all", "wheel.config.values", "saltutil.find_job", "runner.manage.versions"],
)  # fmt: skip
def test_reads_of_the_history_are_bookkeeping_by_default(function):
    assert Settings(db_url="sqlite://", spool_dir="").is_system(function)


@pytest.mark.parametrize(
    "function",
    ["runner.halite.kill", "state.apply", "test.version", "grains.items",
     "runner.state.orchestrate", "wheel.key.accept", "runner.jobsx.list"],
)  # fmt: skip
def test_acts_and_minion_jobs_are_not_bookkeeping(function):
    assert not Settings(db_url="sqlite://", spool_dir="").is_system(function)


def test_system_functions_replace_the_defaults():
    settings = Settings.from_opts({"cachedir": "/c", "halite": {"system_functions": ["x.*"]}})
    assert settings.is_system("x.y") and not settings.is_system("runner.halite.jobs")


@pytest.mark.parametrize(
    "opts",
    [
        {"master_job_cache": "halite"},
        {"master_job_cache": "local_cache", "event_return": "halite"},
        {"event_return": ["mysql", "halite"]},
        {"engines": [{"halite": {"timeout": 5}}]},
        {"engines": ["halite"]},
        {"engines": [{"jobs": {"engine_module": "halite"}}]},
    ],
)
def test_something_feeds_the_index(opts):
    assert feed_warning(opts) is None


@pytest.mark.parametrize(
    ("opts", "says"),
    [
        ({"master_job_cache": "local_cache"}, "nothing on this master feeds halite's index"),
        ({"event_return": ["mysql"], "engines": [{"other": {}}]}, "nothing on this master"),
        ({"engines": [{"halite": {"write_returns": False}}]}, "indexes publishes only"),
    ],
)
def test_nothing_feeds_the_index(opts, says):
    assert says in feed_warning(opts)
