"""What the index keeps of halite's own runner jobs, and when the runners say nothing feeds it."""

import dataclasses

import pytest
from sqlalchemy import select

from halite_core.config import Settings
from halite_core.own_runners import WITHHELD, feed_warning
from halite_core.store.schema import job_returns
from tests.helpers import save_load, save_return

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
    save_load(store, JID, load)
    save_return(store, load)


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
    save_load(store, JID, load)
    save_return(store, load)
    assert "entries" not in str(store.get_jid(JID)) and "entries" not in str(store.get_load(JID))


def test_the_engines_bare_answer_is_withheld_too(store):
    """The engine (write_returns) indexes salt/run/<jid>/ret: the answer itself is the
    return, the success beside it."""
    event = {"fun": "runner.halite.jobs", "jid": JID, "id": MASTER, "user": "root",
             "return": {"jobs": [{"jid": "x"}], "next": None}, "success": True}  # fmt: skip
    save_return(store, event)
    stored = store.get_jid(JID)[MASTER]
    assert stored["return"] == WITHHELD
    assert row(store).success is True


@pytest.mark.parametrize(
    "fun", ["runner.state.orchestrate", "runner.manage.up", "runner.jobsx.list", "test.ping"]
)
def test_other_jobs_keep_their_returns(store, fun):
    store_job(store, fun, ENTRIES)
    assert store.get_jid(JID)[MASTER]["return"]["return"] == ENTRIES


def test_a_minions_own_marker_lookalike_is_not_taken_for_withheld(store):
    save_return(store, {"fun": "test.echo", "jid": JID, "id": "m1", "return": dict(WITHHELD)})
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


# ------------------------------------------- the jobs runner, and copies inside other jobs
LOOKED_UP = {MASTER: {"return": {"secret_state": "the other job's whole return"}}}


@pytest.mark.parametrize(
    "fun",
    ["runner.jobs.lookup_jid", "runner.jobs.list_job", "runner.jobs.print_job",
     "runner.jobs.list_jobs", "runner.jobs.active", "runner.jobs.exit_success"],
)  # fmt: skip
def test_the_jobs_runners_answers_are_withheld(store, fun):
    """They copy other jobs' returns to anyone who may view runner.jobs.* jobs."""
    store_job(store, fun, LOOKED_UP)
    stored = store.get_jid(JID)[MASTER]["return"]
    assert stored["return"] == WITHHELD
    assert stored["fun"] == fun and stored["success"] is True
    assert "the other job's whole return" not in str(store.get_jid(JID))


def minion_return(fun, fun_args, answer, minion="master1"):
    """A minion's return, as the master's returner gets it (``fun_args`` as published:
    a keyword argument is a mapping with ``__kwarg__``)."""
    return {"fun": fun, "fun_args": fun_args, "jid": JID, "id": minion, "return": answer,
            "retcode": 0, "success": True}  # fmt: skip


@pytest.mark.parametrize(
    ("fun", "fun_args"),
    [
        ("saltutil.runner", ["halite.audit"]),
        ("saltutil.runner", ["jobs.lookup_jid", "20261128110000000001"]),
        ("saltutil.runner", [{"name": "halite.audit", "__kwarg__": True}]),
        ("saltutil.runner", ["name=runner.halite.audit"]),
        ("publish.runner", ["halite.jobs"]),
    ],
)
def test_a_minion_running_a_withheld_runner_has_its_return_withheld(store, fun, fun_args):
    save_load(store, JID, {"fun": fun, "arg": fun_args, "tgt": "master1", "user": "root"})
    save_return(store, minion_return(fun, fun_args, ENTRIES))
    assert store.get_jid(JID)["master1"]["return"] == WITHHELD
    assert "sudo_bob" not in str(store.get_jid(JID))


@pytest.mark.parametrize(
    ("fun", "fun_args"),
    [("saltutil.runner", ["manage.up"]), ("saltutil.runner", []), ("test.arg", ["halite.audit"])],
)
def test_a_minion_running_another_runner_keeps_its_return(store, fun, fun_args):
    save_return(store, minion_return(fun, fun_args, ENTRIES))
    assert store.get_jid(JID)["master1"]["return"] == ENTRIES


def runner_state(name, answer, sid="audit"):
    """A salt.runner state's entry in a state run (salt/states/saltmod.py runner())."""
    return {f"salt_|-{sid}_|-{name}_|-runner": {
        "name": name, "result": True, "comment": f"Runner function '{name}' executed.",
        "changes": {"return": answer}, "__run_num__": 0, "__id__": sid}}  # fmt: skip


def orchestration(states):
    """What state.orchestrate answers: the states run on the master's minion."""
    return {"data": {MASTER: states}, "outputter": "highstate", "retcode": 0}


def test_an_orchestration_keeps_its_states_but_not_a_runners_copied_answer(store):
    states = {**runner_state("halite.audit", ENTRIES),
              **runner_state("manage.up", ["web1"], sid="up"),
              **runner_state("jobs.lookup_jid", LOOKED_UP, sid="look")}  # fmt: skip
    store_job(store, "runner.state.orchestrate", orchestration(states))
    stored = store.get_jid(JID)[MASTER]["return"]
    ran = stored["return"]["data"][MASTER]
    audit_state = ran["salt_|-audit_|-halite.audit_|-runner"]
    assert audit_state["changes"] == {"return": WITHHELD}
    assert audit_state["result"] is True and audit_state["name"] == "halite.audit"
    assert ran["salt_|-look_|-jobs.lookup_jid_|-runner"]["changes"] == {"return": WITHHELD}
    assert ran["salt_|-up_|-manage.up_|-runner"]["changes"] == {"return": ["web1"]}
    assert stored["fun"] == "runner.state.orchestrate" and stored["success"] is True
    assert "sudo_bob" not in str(store.get_jid(JID))
    assert "the other job's whole return" not in str(store.get_jid(JID))
    assert row(store).states_total == 3  # the run is still counted as a state run


def test_a_nested_orchestration_is_looked_into(store):
    inner = orchestration(runner_state("halite.audit", ENTRIES))
    outer = orchestration(runner_state("state.orchestrate", inner, sid="inner"))
    store_job(store, "runner.state.orch", outer)
    ran = store.get_jid(JID)[MASTER]["return"]["return"]["data"][MASTER]
    nested = ran["salt_|-inner_|-state.orchestrate_|-runner"]["changes"]["return"]
    assert nested["data"][MASTER]["salt_|-audit_|-halite.audit_|-runner"]["changes"] == {
        "return": WITHHELD
    }
    assert "sudo_bob" not in str(store.get_jid(JID))


def test_orchestrate_single_and_high_answers_are_looked_into(store):
    """They answer {master id: states}, without state.orchestrate's "data" wrapper."""
    store_job(store, "runner.state.orchestrate_single", {MASTER: runner_state("halite.audit",
              ENTRIES)})  # fmt: skip
    ran = store.get_jid(JID)[MASTER]["return"]["return"][MASTER]
    assert ran["salt_|-audit_|-halite.audit_|-runner"]["changes"] == {"return": WITHHELD}


def test_a_minions_state_run_with_a_runner_state_is_withheld_there(store):
    """The master's own minion can run salt.runner states with state.apply."""
    states = runner_state("halite.audit", ENTRIES)
    save_return(store, minion_return("state.apply", ["export"], states))
    ran = store.get_jid(JID)["master1"]["return"]
    assert ran["salt_|-audit_|-halite.audit_|-runner"]["changes"] == {"return": WITHHELD}


def test_the_engines_bare_orchestration_answer_is_withheld_there(store):
    event = {"fun": "runner.state.orchestrate", "jid": JID, "id": MASTER, "user": "root",
             "return": orchestration(runner_state("halite.audit", ENTRIES)),
             "success": True}  # fmt: skip
    save_return(store, event)
    ran = store.get_jid(JID)[MASTER]["return"]["data"][MASTER]
    assert ran["salt_|-audit_|-halite.audit_|-runner"]["changes"] == {"return": WITHHELD}


def test_a_withheld_state_run_keeps_odd_values_and_is_truncated_as_any(settings):
    from halite_core.jobcache import JobStore

    odd = {"bytes": b"\x00\x01", "nul\x00key": 1}
    states = {**runner_state("halite.audit", ENTRIES), **runner_state("manage.up", odd, sid="up")}
    store = JobStore(settings)
    try:
        store_job(store, "runner.state.orchestrate", orchestration(states))
        ran = store.get_jid(JID)[MASTER]["return"]["return"]["data"][MASTER]
        assert ran["salt_|-up_|-manage.up_|-runner"]["changes"]["return"] == odd
    finally:
        store.db.dispose()
    small = dataclasses.replace(settings, max_return_bytes=200)
    store = JobStore(small)
    try:
        save_return(store, minion_return("state.apply", [], states, minion="m2"))
        stored = store.get_jid(JID)["m2"]["return"]
        assert stored["__halite_type__"] == "truncated"
        assert "sudo_bob" not in stored["preview"]
    finally:
        store.db.dispose()


# --------------------------------------- Salt's store_job skips the job cache for returns
@pytest.mark.parametrize(
    ("opts", "says"),
    [
        ({"master_job_cache": "halite", "job_cache": False},
         "job_cache: False keeps Salt from storing returns"),
        ({"master_job_cache": "halite", "ext_job_cache": "mysql"},
         "ext_job_cache: mysql keeps Salt from storing returns"),
        ({"master_job_cache": "halite", "job_cache": False, "engines": [{"halite": {}}]},
         "its halite engine has write_returns: auto, which is off"),
        ({"master_job_cache": "halite", "job_cache": False,
          "engines": [{"halite": {"write_returns": "auto"}}]}, "write_returns: auto"),
        ({"master_job_cache": "halite", "job_cache": False,
          "engines": [{"halite": {"write_returns": "false"}}]}, "write_returns: false"),
        ({"engines": [{"halite": {"write_returns": "false"}}]}, "indexes publishes only"),
        ({"engines": [{"halite": {"write_returns": "no"}}]}, "indexes publishes only"),
        ({"engines": [{"halite": {"write_returns": "sometimes"}}]}, "write_returns must be"),
    ],
)  # fmt: skip
def test_the_warning_says_when_no_return_reaches_the_index(opts, says):
    warning = feed_warning(opts)
    assert warning is not None and says in warning
    assert "publishes" in warning


@pytest.mark.parametrize(
    "opts",
    [
        {"master_job_cache": "halite", "job_cache": True, "ext_job_cache": ""},
        {"master_job_cache": "halite", "job_cache": False, "event_return": "halite"},
        {"master_job_cache": "halite", "ext_job_cache": "halite"},  # the minions' returner
        {"master_job_cache": "halite", "job_cache": False,
         "engines": [{"halite": {"write_returns": True}}]},
        {"master_job_cache": "local_cache", "engines": [{"halite": {"write_returns": "auto"}}]},
    ],
)  # fmt: skip
def test_no_warning_when_returns_reach_the_index(opts):
    assert feed_warning(opts) is None
