"""The fleet views of a real master with two minions: a state that fails on one of them
only, as ``halite.minions``, ``halite.minion``, ``halite.states``, ``halite.state`` and
``halite.jobs result=failed`` report it, and a dry run afterwards that changes nothing.

One state run and one dry run, made once for the module; every test reads what they left,
through the runners and, once, through halite's HTTP API over the same index.
"""

import re
from typing import NamedTuple

import pytest
from saltfactories.utils import random_string

from halite_core.api import MinionHistory, MinionsPage, StateHistory, StatesPage
from halite_core.http.app import WebApp
from halite_core.http.sessions import SaltSessions
from halite_core.permissions import policy_from_opts
from halite_core.service import Service
from tests.helpers import free_port
from tests.integration.conftest import as_user, store_for
from tests.integration.test_master_job_cache import finished_job, returns_of
from tests.test_fleet import check_against
from tests.test_web import call, login

SLS = "halite_fleet"
FAILING_STATE = "fleet-check"
# The same state (one state key) on every minion; only its exit code differs, so it fails
# on one minion and changes something on the others. FAILING is the failing minion's id.
STATE_TEXT = """
fleet-ready:
  test.succeed_without_changes

fleet-check:
  cmd.run:
    - name: exit $FLEET_CODE
    - env:
        FLEET_CODE: "{{ 3 if grains['id'] == 'FAILING' else 0 }}"
"""
# What Salt's cmd.run says of a command that ran (and failed), and of one a dry run skipped.
RAN = 'Command "exit $FLEET_CODE" run'
WOULD_RUN = 'Command "exit $FLEET_CODE" would have been executed'


class FleetRun(NamedTuple):
    failing: str  # the minion the state fails on
    passing: str  # the package's minion, where it changes something
    real: str  # the jid of the state run
    dry: str  # the jid of the same run with test=True, made after it


@pytest.fixture(scope="module")
def other_minion(master, minion):
    """A second minion of the package's master, for this module only. Its key goes with
    it: later modules target '*' and would wait for a minion that no longer answers."""
    factory = master.salt_minion_daemon(random_string("halite-fleet-"))
    with factory.started():
        yield factory
    deleted = master.salt_key_cli().run("-d", factory.id, "-y")
    assert deleted.returncode == 0, deleted


def publish_to_all(master, *args):
    """``salt '*' <args> --async``; the job's jid."""
    ret = master.salt_cli().run("--async", *args, minion_tgt="*", _timeout=120)
    assert ret.returncode == 0, ret
    match = re.search(r"job ID: (\d{20})", ret.stdout)
    assert match, ret.stdout
    return match.group(1)


@pytest.fixture(scope="module")
def fleet(master, minion, other_minion, index, state_tree):
    (state_tree / f"{SLS}.sls").write_text(STATE_TEXT.replace("FAILING", other_minion.id))
    real = publish_to_all(master, "state.apply", SLS)
    job = finished_job(index, real)
    assert (job["minions_returned"], job["minions_failed"]) == (2, 1), job
    dry = publish_to_all(master, "state.apply", SLS, "test=True")
    assert finished_job(index, dry)["minions_returned"] == 2
    return FleetRun(failing=other_minion.id, passing=minion.id, real=real, dry=dry)


def salt_run(master, *args, user=None):
    """salt-run with --out=json (the salt-factories default), as root or as ``user``."""
    env = as_user(user) if user else {}
    return master.salt_run_cli().run(*args, env=env, _timeout=120)


def answer(master, model, *args):
    """A runner's answer, checked against its typed model (the HTTP API's schema)."""
    ret = salt_run(master, *args)
    assert ret.returncode == 0, ret
    return check_against(model, ret.data)


def by_minion(page):
    return {row["minion"]: row for row in page["minions"]}


def test_the_failing_minion_is_listed_first_with_its_failing_state(master, fleet):
    page = answer(master, MinionsPage, "halite.minions")
    listed = [row["minion"] for row in page["minions"]]
    # Other minions of the package may have returned (the master's own runner jobs):
    # of this module's two, the failing one comes first ...
    assert [name for name in listed if name in (fleet.failing, fleet.passing)] == [
        fleet.failing,
        fleet.passing,
    ]
    # ... and every failing minion comes before every healthy one.
    failing = [row["failing"] for row in page["minions"]]
    assert failing == sorted(failing, reverse=True)
    rows = by_minion(page)
    assert rows[fleet.failing]["failing"] is True
    run = rows[fleet.failing]["state_run"]
    assert (run["jid"], run["function"], run["result"]) == (fleet.real, "state.apply", "failed")
    assert run["failing_states"] == [FAILING_STATE]
    # The cmd.run that failed reports its output as changes too.
    assert run["counts"] == {"states": 2, "passed": 1, "failed": 1, "changed": 1}
    assert rows[fleet.passing]["failing"] is False
    passed = rows[fleet.passing]["state_run"]
    assert (passed["jid"], passed["result"]) == (fleet.real, "changed")
    assert passed["failing_states"] == []


def test_only_failing_minions_are_listed_with_failing_true(master, fleet):
    every = answer(master, MinionsPage, "halite.minions")
    page = answer(master, MinionsPage, "halite.minions", "failing=True")
    listed = [row["minion"] for row in page["minions"]]
    assert fleet.failing in listed
    assert fleet.passing not in listed
    assert listed == [row["minion"] for row in every["minions"] if row["failing"]]
    ours = answer(master, MinionsPage, "halite.minions", "failing=True", "minion=halite-fleet-*")
    assert [row["minion"] for row in ours["minions"]] == [fleet.failing]


def test_the_failing_minions_history_shows_the_failed_run(master, fleet):
    history = answer(master, MinionHistory, "halite.minion", fleet.failing)
    assert history["minion"] == fleet.failing
    jobs = {job["jid"]: job for job in history["jobs"]}
    run = jobs[fleet.real]
    assert (run["function"], run["state"], run["result"]) == ("state.apply", "returned", "failed")
    assert (run["success"], run["retcode"]) == (False, 2)
    assert run["failing_states"] == [FAILING_STATE]
    assert run["test_run"] is False
    # Newest first: the dry run made after it is listed above it, marked as a dry run.
    assert [job["jid"] for job in history["jobs"]][:2] == [fleet.dry, fleet.real]
    assert jobs[fleet.dry]["test_run"] is True
    only = answer(master, MinionHistory, "halite.minion", fleet.failing, "result=failed")
    assert fleet.real in [job["jid"] for job in only["jobs"]]
    assert fleet.dry not in [job["jid"] for job in only["jobs"]]
    passing = answer(master, MinionHistory, "halite.minion", fleet.passing)
    assert {job["jid"]: job["result"] for job in passing["jobs"]}[fleet.real] == "changed"


def test_the_failing_state_is_listed_on_one_minion(master, fleet):
    page = answer(master, StatesPage, "halite.states")
    assert (page["window"], page["result"]) == ("24h", "failed")
    (state,) = [row for row in page["states"] if row["state_id"] == FAILING_STATE]
    assert (state["minions"], state["runs"]) == (1, 1)
    assert (state["function"], state["name"], state["sls"]) == (
        "cmd.run",
        "exit $FLEET_CODE",
        SLS,
    )
    assert state["comment"] == RAN
    # On the other minion the same state changed something; the dry run is left out.
    changed = answer(master, StatesPage, "halite.states", "result=changed", f"sls={SLS}")
    (state,) = [row for row in changed["states"] if row["state_id"] == FAILING_STATE]
    assert (state["minions"], state["runs"], state["comment"]) == (1, 1, RAN)
    ours = answer(master, StatesPage, "halite.states", f"minion={fleet.passing}", f"sls={SLS}")
    assert ours["states"] == []


def test_the_states_history_shows_the_run_the_minion_and_the_comment(master, fleet):
    history = answer(master, StateHistory, "halite.state", FAILING_STATE)
    assert history["state_id"] == FAILING_STATE
    assert (history["failed"]["runs"], history["failed"]["minions"]) == (1, 1)
    runs = {(row["jid"], row["minion"]): row for row in history["runs"]}
    failed = runs[(fleet.real, fleet.failing)]
    assert (failed["result"], failed["comment"], failed["test_run"]) == ("failed", RAN, False)
    assert failed["function"] == "cmd.run" and failed["sls"] == SLS
    assert runs[(fleet.real, fleet.passing)]["result"] == "changed"
    # The dry run reports the command as a change it would make, on both minions.
    dry = runs[(fleet.dry, fleet.failing)]
    assert (dry["result"], dry["comment"], dry["test_run"]) == ("changed", WOULD_RUN, True)
    ours = (fleet.failing, fleet.passing)
    assert set(runs) == {(jid, name) for jid in (fleet.real, fleet.dry) for name in ours}
    assert [row["jid"] for row in history["runs"]][:2] == [fleet.dry, fleet.dry]
    only = answer(master, StateHistory, "halite.state", FAILING_STATE, "result=failed")
    assert [(row["jid"], row["minion"]) for row in only["runs"]] == [(fleet.real, fleet.failing)]


def test_the_job_is_listed_as_failed(master, fleet):
    ret = salt_run(master, "halite.jobs", "result=failed", "fun=state.apply")
    assert ret.returncode == 0, ret
    jobs = {job["jid"]: job for job in ret.data["jobs"]}
    assert fleet.real in jobs
    assert jobs[fleet.real]["result"] == "failed"
    # A dry run whose states would all run is no failure.
    assert fleet.dry not in jobs


def test_a_dry_run_afterwards_does_not_change_the_latest_state_run(master, fleet):
    rows = by_minion(answer(master, MinionsPage, "halite.minions"))
    for name in (fleet.failing, fleet.passing):
        # The dry run was indexed (it is the minion's latest job) ...
        assert rows[name]["last_job"]["jid"] == fleet.dry, name
        # ... but the latest state run is still the real one.
        assert rows[name]["state_run"]["jid"] == fleet.real, name
    assert rows[fleet.failing]["failing"] is True


def test_a_user_who_may_not_view_state_jobs_is_denied_the_states(master, fleet):
    denied = salt_run(master, "halite.states", user="dave")
    assert denied.returncode != 0, denied
    assert denied.data["error"] == "permission denied: 'sudo_dave' lacks view:job:state.*"


@pytest.fixture
def api(master):
    """halite's HTTP API served in this process over the master's own index, with the
    master's policy, and sessions as Salt's tokens in the master's own token store (its
    `auto` eauth takes any password; external_auth decides who may log in)."""
    import salt.config

    # The opts salt-master reads from its config file (the factory's own copy is immutable).
    opts = salt.config.master_config(master.config_file)
    store = store_for(master)
    service = Service(store, policy_from_opts(opts), master.id)
    app = WebApp(service, SaltSessions(opts), None, "auto")
    port = free_port()
    app.serve_in_thread("127.0.0.1", port)
    app.base = f"http://127.0.0.1:{port}"
    yield app
    app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)
    service.close()
    store.db.dispose()


def ours(page, fleet):
    """The rows of this module's two minions, in the page's order (the master's own runner
    jobs add and update a row of its own between two reads)."""
    return [row for row in page["minions"] if row["minion"] in (fleet.failing, fleet.passing)]


def test_the_http_api_answers_as_the_runners(master, fleet, api):
    token = login(api, "sudo_bob")
    status, page = call(api, "GET", "/api/minions", token)
    assert status == 200, page
    runner = answer(master, MinionsPage, "halite.minions")
    assert [row["minion"] for row in ours(page, fleet)] == [fleet.failing, fleet.passing]
    assert ours(page, fleet) == ours(runner, fleet)
    status, history = call(api, "GET", f"/api/minions/{fleet.failing}", token)
    assert status == 200, history
    assert history == answer(master, MinionHistory, "halite.minion", fleet.failing)
    assert history["jobs"][1]["failing_states"] == [FAILING_STATE]
    status, body = call(api, "GET", "/api/minions/halite-nobody", token)
    assert (status, body) == (404, {"error": "no minion 'halite-nobody' in the index"})
    status, states = call(api, "GET", "/api/states", token)
    assert status == 200, states
    assert states == answer(master, StatesPage, "halite.states")
    assert FAILING_STATE in [row["state_id"] for row in states["states"]]
    status, state = call(api, "GET", f"/api/states/{FAILING_STATE}", token)
    assert status == 200, state
    assert state == answer(master, StateHistory, "halite.state", FAILING_STATE)
    assert {row["jid"] for row in state["runs"]} == {fleet.real, fleet.dry}
    status, body = call(api, "GET", "/api/states", login(api, "sudo_dave"))
    assert (status, body["missing"]) == (403, "view:job:state.*")


# Last of the module: the re-run is a new state run on the failing minion, which the tests
# above would see as its latest.
def test_a_rerun_runs_the_state_again_on_the_failing_minion_only(master, fleet, index):
    denied = salt_run(master, "halite.rerun", fleet.real, user="bob")
    assert denied.returncode != 0, denied
    assert denied.data["error"] == "permission denied: 'sudo_bob' lacks run:job:*"
    typo = salt_run(master, "halite.rerun", fleet.real, "minion=x", user="erin")
    assert typo.returncode != 0, typo  # not taken for Salt's usage hint
    assert typo.data["error"].startswith("unknown argument 'minion'")
    ret = salt_run(master, "halite.rerun", fleet.real, user="erin")
    assert ret.returncode == 0, ret
    new = ret.data["jid"]
    assert ret.data["rerun_of"] == fleet.real
    assert (ret.data["selection"], ret.data["minions"]) == ("failed", [fleet.failing])
    # Published as the caller, to the failing minion alone; it fails there again.
    job = finished_job(index, new)
    assert (job["function"], job["target"], job["target_type"]) == (
        "state.apply", fleet.failing, "list"
    )  # fmt: skip
    assert job["user"] == "sudo_erin"
    assert set(returns_of(index, new)) == {fleet.failing}
    assert (job["minions_targeted"], job["minions_failed"]) == (1, 1)
    # Both jobs show the link.
    rerun = salt_run(master, "halite.job", new)
    assert rerun.returncode == 0, rerun
    assert rerun.data["rerun_of"] == fleet.real
    first = salt_run(master, "halite.job", fleet.real)
    assert first.data["reruns"] == [new]
    assert first.data["rerun_of"] is None
    # Salt's own jobs runner shows the link too, from the publish's metadata.
    listed = salt_run(master, "jobs.list_job", new)
    assert listed.returncode == 0, listed
    assert listed.data["Metadata"] == {"halite_rerun_of": fleet.real}
    assert listed.data["User"] == "sudo_erin"
    # Both requests are in the audit log: the denial, and the re-run with its new job.
    entries = salt_run(master, "halite.audit", "action=rerun").data["entries"]
    ours = [entry for entry in entries if entry["jid"] == fleet.real][::-1]  # oldest first
    assert [(e["user"], e["decision"]) for e in ours] == [
        ("sudo_bob", "deny"), ("sudo_erin", "allow"), ("sudo_erin", "allow")
    ]  # fmt: skip
    assert "unknown argument 'minion'" in ours[1]["outcome"]["error"]
    assert ours[2]["outcome"]["new_jid"] == new
    # A re-run on the passing minion alone passes; re-running its failures is refused.
    passing = salt_run(master, "halite.rerun", fleet.real, f"minions={fleet.passing}", user="erin")
    assert passing.returncode == 0, passing
    assert passing.data["minions"] == [fleet.passing]
    finished_job(index, passing.data["jid"])
    refused = salt_run(master, "halite.rerun", passing.data["jid"], user="erin")
    assert refused.returncode != 0, refused
    assert "nothing to re-run" in refused.data["error"]
