"""halite's own runner calls as jobs of a real master: how Salt records them, what a salt-api
client receives, what the index keeps of them, and what the listing hides by default."""

import subprocess

import pytest
import salt.config
import salt.netapi
from sqlalchemy import func, select

from halite_core.store.schema import job_returns, jobs_index
from tests.helpers import untaken
from tests.integration.conftest import as_user, wait_for
from tests.integration.test_master_job_cache import finished_job, returns_of, run_job

# What the index keeps in place of a halite runner's answer (docs/runners.md).
WITHHELD = "withheld"


def newest_jid(index, function):
    with index.db.read() as conn:
        return conn.scalar(
            select(func.max(jobs_index.c.jid)).where(jobs_index.c.function == function)
        )


def indexed_call(index, function, call):
    """Make one runner call; returns what it answered and the jid of the job it made, once
    that job and its return are in the index."""
    # Earlier calls' jobs first: one committed after ``before`` was read would pass for
    # this call's job.
    wait_for(lambda: untaken(index.settings) == [])
    before = newest_jid(index, function)
    answer = call()

    def check():
        """the runner call's job and its return are indexed"""
        jid = newest_jid(index, function)
        if jid is None or jid == before:
            return None
        returned = [row for row in returns_of(index, jid).values() if row["state"] == "returned"]
        return jid if returned else None

    return answer, wait_for(check)


def salt_run(master, *args, user=None):
    """salt-run as a user would type it (saltfactories always adds --out=json otherwise)."""
    run = master.salt_run_cli()
    cmdline = [arg for arg in run.cmdline(*args) if not arg.startswith("--out")]
    env = {**run.environ, **(as_user(user) if user else {})}
    return subprocess.run(cmdline, env=env, capture_output=True, text=True, timeout=120)


def salt_api(master, client="runner", **low):
    """A call as salt-api's rest_cherrypy makes it once a user has logged in with external
    auth: Salt's NetapiClient.run with the lowstate the client posted."""
    opts = salt.config.api_config(master.config_file)  # as salt-api reads its config
    opts["netapi_enable_clients"] = ["runner", "wheel"]
    low = {"client": client, "eauth": "auto", "password": "any", **low}
    with salt.netapi.NetapiClient(opts) as api:
        return api.run(low)


def the_return(index, jid):
    (row,) = returns_of(index, jid).values()
    return row


# ---------------------------------------------------------------------------------- item 5
@pytest.mark.parametrize(
    ("function", "args"),
    [
        ("halite.jobs", ["limit=1"]),
        ("halite.activity", ["hours=1"]),
        ("halite.timeline", ["window=1h"]),
        ("halite.audit", ["limit=1"]),
    ],
)
def test_a_successful_runner_call_is_a_successful_job(master, minion, index, function, args):
    run = master.salt_run_cli()
    ret, jid = indexed_call(index, f"runner.{function}", lambda: run.run(function, *args))
    assert ret.returncode == 0, ret
    assert "outputter" not in ret.data and "data" not in ret.data  # the answer itself
    assert the_return(index, jid)["success"] is True
    assert finished_job(index, jid)["minions_failed"] == 0


def test_halite_job_of_a_job_is_a_successful_job(master, minion, index):
    target = run_job(master, minion, "test.echo", "detail")
    finished_job(index, target)
    run = master.salt_run_cli()
    ret, jid = indexed_call(index, "runner.halite.job", lambda: run.run("halite.job", target))
    assert ret.returncode == 0, ret
    assert ret.data["jid"] == target
    assert the_return(index, jid)["success"] is True
    assert finished_job(index, jid)["minions_failed"] == 0


def test_errors_and_denials_are_failed_jobs_and_exit_non_zero(master, minion, index):
    run = master.salt_run_cli()
    bad, jid = indexed_call(index, "runner.halite.jobs", lambda: run.run("halite.jobs", "limit=0"))
    assert bad.returncode == 1
    assert (the_return(index, jid)["success"], the_return(index, jid)["retcode"]) == (False, 1)
    denied, jid = indexed_call(
        index, "runner.halite.audit", lambda: run.run("halite.audit", env=as_user("bob"))
    )
    assert denied.returncode == 1
    assert the_return(index, jid)["success"] is False
    assert finished_job(index, jid)["minions_failed"] == 1


def test_salt_run_prints_the_table_by_default(master, minion, index):
    jid = run_job(master, minion, "test.echo", "table")
    finished_job(index, jid)
    done = salt_run(master, "halite.jobs", "fun=test.echo", "limit=1")
    assert done.returncode == 0, done
    header, row, *_ = done.stdout.strip().splitlines()
    assert header.startswith("JID") and row.startswith(jid)
    report = salt_run(master, "halite.job", jid)
    assert report.returncode == 0, report
    assert report.stdout.startswith(f"Job {jid}: test.echo")
    refused = salt_run(master, "halite.audit", user="bob")
    assert refused.returncode == 1
    assert "permission denied: 'sudo_bob' lacks view:audit:*" in refused.stdout


def test_what_a_salt_api_client_receives(master, minion, index):
    """The shapes docs/runners.md shows: the answer as the runner gave it, and with
    full_return the runner job's event, whose success is the job's."""
    success = salt_api(master, fun="halite.jobs", username="sudo_bob", limit=1)
    assert set(success) == {"jobs", "next"}
    full = salt_api(master, fun="halite.jobs", username="sudo_bob", limit=1, full_return=True)
    assert set(full) == {"tag", "data"} and full["tag"].startswith("salt/run/")
    assert set(full["data"]) == {"fun", "jid", "user", "fun_args", "return", "success", "_stamp"}
    assert full["data"]["fun"] == "runner.halite.jobs" and full["data"]["user"] == "sudo_bob"
    assert full["data"]["fun_args"] == [{"limit": 1}]
    assert full["data"]["success"] is True
    assert set(full["data"]["return"]) == {"jobs", "next"}
    error = salt_api(master, fun="halite.jobs", username="sudo_bob", limit=0, full_return=True)
    assert error["data"]["return"] == {
        "error": "limit must be a number from 1 to 500, not 0",
        "retcode": 1,
    }
    assert error["data"]["success"] is False
    denial = salt_api(master, fun="halite.audit", username="sudo_bob", full_return=True)
    assert denial["data"]["return"] == {
        "error": "permission denied: 'sudo_bob' lacks view:audit:*",
        "retcode": 1,
    }
    assert denial["data"]["success"] is False
    jid = denial["data"]["jid"]
    wait_for(lambda: returns_of(index, jid))
    assert the_return(index, jid)["success"] is False


# ---------------------------------------------------------------------------------- item 4
def test_a_viewer_cannot_read_the_audit_log_through_its_runner_jobs(master, minion, index):
    run = master.salt_run_cli()
    # Something to audit: a refused read, then the log read by root (admin).
    assert run.run("halite.audit", env=as_user("bob")).returncode == 1
    log, jid = indexed_call(index, "runner.halite.audit", lambda: run.run("halite.audit"))
    assert log.returncode == 0 and log.data["entries"], log
    # The viewer finds the job (who ran what, when, and that it succeeded) ...
    listing = run.run(
        "halite.jobs", "fun=runner.halite.audit", "include_system=True", env=as_user("bob")
    )
    assert listing.returncode == 0, listing
    assert jid in [job["jid"] for job in listing.data["jobs"]]
    detail = run.run("halite.job", jid, env=as_user("bob"))
    assert detail.returncode == 0, detail
    (result,) = detail.data["minion_results"]
    assert result["success"] is True and result["failed"] is False
    # ... but not the entries: the index never held them.
    assert result["return"]["return"]["__halite_type__"] == WITHHELD
    assert "entries" not in str(result["return"])
    with index.db.read() as conn:
        stored = conn.execute(
            select(jobs_index.c.load, job_returns.c.return_value)
            .join(job_returns, job_returns.c.jid == jobs_index.c.jid)
            .where(jobs_index.c.jid == jid)
        ).one()
    assert "entries" not in str(stored.load) and "entries" not in str(stored.return_value)
    # Salt's own reader of the job cache gets the marker too.
    looked_up = run.run("jobs.lookup_jid", jid)
    assert looked_up.returncode == 0, looked_up
    assert "entries" not in str(looked_up.data)


@pytest.mark.parametrize(
    ("function", "args"),
    [
        ("halite.jobs", ["limit=1"]),
        ("halite.job", ["20000101000000000000"]),
        ("halite.activity", []),
        ("halite.timeline", []),
        ("halite.kill", ["20000101000000000000"]),
        ("halite.audit", ["limit=1"]),
    ],
)
def test_no_halite_runner_answer_is_kept_in_the_index(master, minion, index, function, args):
    run = master.salt_run_cli()
    _, jid = indexed_call(index, f"runner.{function}", lambda: run.run(function, *args))
    stored = the_return(index, jid)["return_value"]
    assert stored["return"]["__halite_type__"] == WITHHELD, stored
    assert stored["fun"] == f"runner.{function}"


# ---------------------------------------------------------------------------------- item 6
def test_a_failed_state_run_stays_on_the_first_page_after_bookkeeping(master, minion, index):
    failed = run_job(master, minion, "state.apply", "halite_demo")
    assert finished_job(index, failed)["minions_failed"] == 1
    run = master.salt_run_cli()
    # What people and consoles such as SaltGUI ask while reading the history.
    calls = [
        lambda: run.run("halite.jobs"),
        lambda: run.run("halite.job", failed),
        lambda: run.run("halite.activity"),
        lambda: run.run("halite.timeline"),
        lambda: run.run("halite.audit"),
        lambda: run.run("jobs.list_jobs"),
        lambda: run.run("jobs.lookup_jid", failed),
        lambda: salt_api(master, fun="jobs.list_job", jid=failed, username="sudo_bob"),
        lambda: salt_api(master, fun="jobs.active", username="sudo_bob"),
        lambda: salt_api(master, "wheel", fun="key.list_all", username="sudo_bob"),
        lambda: salt_api(master, "wheel", fun="config.values", username="sudo_bob"),
    ]
    for call in calls:
        call()

    def bookkeeping():
        """every bookkeeping call is indexed"""
        j = jobs_index.c
        with index.db.read() as conn:
            count = conn.scalar(
                select(func.count())
                .select_from(jobs_index)
                .where(j.jid > failed, j.function.like("runner.%") | j.function.like("wheel.%"))
            )
        return count >= len(calls)

    wait_for(bookkeeping)
    page = run.run("halite.jobs", "limit=5")
    assert page.returncode == 0, page
    assert failed in [job["jid"] for job in page.data["jobs"]]
    every = run.run("halite.jobs", "include_system=True", "limit=100")
    shown = {job["function"]: job["system"] for job in every.data["jobs"]}
    for function in (
        "runner.halite.jobs",
        "runner.halite.audit",
        "runner.jobs.list_jobs",
        "runner.jobs.active",
        "wheel.key.list_all",
        "wheel.config.values",
    ):
        assert shown.get(function) is True, function
    assert shown["state.apply"] is False


# ------------------------------------------- item 4: the jobs runner and orchestrations
def test_the_jobs_runner_copies_no_return_into_the_index(master, minion, index):
    """jobs.lookup_jid copies another job's return: a user who may view runner.* jobs but
    not cmd.run must not read a cmd.run return through it."""
    target = run_job(master, minion, "test.echo", "only-for-test-viewers")
    finished_job(index, target)
    run = master.salt_run_cli()
    looked, jid = indexed_call(
        index, "runner.jobs.lookup_jid", lambda: run.run("jobs.lookup_jid", target)
    )
    assert looked.returncode == 0 and "only-for-test-viewers" in str(looked.data), looked
    stored = the_return(index, jid)
    assert stored["return_value"]["return"]["__halite_type__"] == WITHHELD
    assert stored["success"] is True
    assert "only-for-test-viewers" not in str(stored)


def test_an_orchestration_keeps_no_copy_of_the_audit_log(master, minion, index, state_tree):
    (state_tree / "halite_export_audit.sls").write_text(
        "export:\n  salt.runner:\n    - name: halite.audit\n"
    )
    run = master.salt_run_cli()
    assert run.run("halite.audit", env=as_user("bob")).returncode == 1  # an entry to copy
    orch, jid = indexed_call(
        index,
        "runner.state.orchestrate",
        lambda: run.run("state.orchestrate", "halite_export_audit", _timeout=120),
    )
    assert orch.returncode == 0, orch
    assert "sudo_bob" in str(orch.data)  # the caller got the entries ...
    stored = the_return(index, jid)
    assert "sudo_bob" not in str(stored["return_value"])  # ... the index does not keep them
    (states,) = stored["return_value"]["return"]["data"].values()
    (state,) = states.values()
    assert state["name"] == "halite.audit" and state["result"] is True
    assert state["changes"]["return"]["__halite_type__"] == WITHHELD
    assert stored["success"] is True
    # Salt's own reader and halite's detail give the same, to a viewer too.
    assert "sudo_bob" not in str(run.run("jobs.lookup_jid", jid).data)
    detail = run.run("halite.job", jid, env=as_user("bob"))
    assert detail.returncode == 0 and "sudo_bob" not in str(detail.data["minion_results"])
