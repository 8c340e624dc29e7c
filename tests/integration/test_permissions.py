"""Permissions, halite.kill and the audit log on a real master and minion."""

import shutil

import pytest
import yaml
from sqlalchemy import select

from halite_core.store.schema import audit_log, job_returns, jobs_index
from tests.integration.conftest import as_user, wait_for
from tests.integration.test_master_job_cache import finished_job, returns_of, run_job


def running_on_minion(master, minion, jid):
    ret = master.salt_cli().run("saltutil.running", minion_tgt=minion.id, _timeout=60)
    assert ret.returncode == 0, ret
    return [job for job in ret.data if job.get("jid") == jid]


def audit_rows(index, **where):
    with index.db.read() as conn:
        query = select(audit_log).order_by(audit_log.c.id)
        for column, value in where.items():
            query = query.where(audit_log.c[column] == value)
        return [row._asdict() for row in conn.execute(query)]


def kill_jobs_of(index, jid):
    """The users of the saltutil.kill_job jobs sent for ``jid``."""
    j = jobs_index.c
    with index.db.read() as conn:
        rows = conn.execute(
            select(j.user, j.arguments).where(j.function == "saltutil.kill_job")
        ).all()
    return [row.user for row in rows if row.arguments == [jid]]


def test_operator_kills_a_running_job_and_a_viewer_cannot(master, minion, index):
    jid = run_job(master, minion, "test.sleep", "60")
    wait_for(lambda: running_on_minion(master, minion, jid), timeout=30)
    run = master.salt_run_cli()

    # A viewer may look but not kill: refused, audited, nothing changes.
    refused = run.run("halite.kill", jid, env=as_user("bob"))
    assert refused.returncode == 1, refused
    assert refused.data["error"] == "permission denied: 'sudo_bob' lacks kill:job:test.sleep"
    assert running_on_minion(master, minion, jid)
    assert returns_of(index, jid)[minion.id]["state"] == "pending"
    (denied,) = audit_rows(index, jid=jid, decision="deny")
    assert (denied["user"], denied["action"], denied["resource"]) == (
        "sudo_bob", "kill", "job:test.sleep"
    )  # fmt: skip

    # An operator's kill signals the minion, which no longer runs the job.
    killed = run.run("halite.kill", jid, env=as_user("alice"), _timeout=60)
    assert killed.returncode == 0, killed
    assert killed.data["signalled"] == [minion.id]
    assert killed.data["minions"][minion.id]["outcome"] == "signalled"
    assert killed.data["minions"][minion.id]["reply"].startswith("Signal 9 sent to job")
    assert killed.data["status"] == "complete"
    wait_for(lambda: not running_on_minion(master, minion, jid), timeout=30)
    job = finished_job(index, jid)
    assert job["minions_failed"] == 1
    assert returns_of(index, jid)[minion.id]["state"] == "killed"
    detail = run.run("halite.job", jid)
    assert detail.data["minion_results"][0]["state"] == "killed"
    (allowed,) = audit_rows(index, jid=jid, decision="allow")
    assert allowed["user"] == "sudo_alice" and allowed["outcome"]["signalled"] == [minion.id]
    # The saltutil.kill_job job is published as the operator who killed, not as root.
    assert kill_jobs_of(index, jid) == ["sudo_alice"]

    # Killing it again, an unknown jid and a malformed one: clear answers, non-zero exits.
    again = run.run("halite.kill", jid, env=as_user("alice"))
    assert again.returncode == 1 and "already complete: nothing to kill" in again.data["error"]
    unknown = run.run("halite.kill", "20000101000000000000", env=as_user("alice"))
    assert unknown.data["error"] == "no job with jid 20000101000000000000 in the index"
    malformed = run.run("halite.kill", "'1; DROP TABLE jobs_index'", env=as_user("alice"))
    assert malformed.returncode == 1 and "is not a Salt job id" in malformed.data["error"]


def test_scoped_viewer_sees_only_its_functions(master, minion, index):
    ping = run_job(master, minion, "test.ping")
    grains = run_job(master, minion, "grains.item", "id")
    finished_job(index, ping)
    finished_job(index, grains)
    run = master.salt_run_cli()
    listing = run.run("halite.jobs", "limit=500", env=as_user("dave"))
    assert listing.returncode == 0, listing
    functions = {job["function"] for job in listing.data["jobs"]}
    assert functions and all(fun.startswith("test.") for fun in functions)
    assert ping in {job["jid"] for job in listing.data["jobs"]}
    # Pagination stays exact under the scope: limit=1 pages walk the same jobs.
    walked, cursor = [], None
    for _ in range(3):
        args = ["halite.jobs", "limit=1"] + ([f"cursor={cursor}"] if cursor else [])
        page = run.run(*args, env=as_user("dave"))
        walked += [job["jid"] for job in page.data["jobs"]]
        cursor = page.data["next"]
        if not cursor:
            break
    assert walked == [job["jid"] for job in listing.data["jobs"]][: len(walked)]
    assert run.run("halite.job", ping, env=as_user("dave")).returncode == 0


def test_jobs_outside_the_scope_answer_as_unknown_ones(master, minion, index):
    """Dave (view:job:test.* only) is told of an existing grains.item job exactly what he
    is told of a jid nobody used, for a read and for a kill; both refusals are audited."""
    grains = run_job(master, minion, "grains.item", "id")
    finished_job(index, grains)
    unknown = "20000101000000000000"
    run = master.salt_run_cli()
    for function in ("halite.job", "halite.kill"):
        hidden = run.run(function, grains, env=as_user("dave"))
        nothing = run.run(function, unknown, env=as_user("dave"))
        assert hidden.returncode == nothing.returncode == 1, (hidden, nothing)
        assert hidden.data == {
            key: value.replace(unknown, grains) if isinstance(value, str) else value
            for key, value in nothing.data.items()
        }
        assert "grains" not in hidden.stdout
    assert nothing.data["error"] == "permission denied: 'sudo_dave' lacks kill:job:*"
    read, kill = audit_rows(index, jid=grains, user="sudo_dave")
    assert (read["action"], read["decision"]) == ("job", "deny")
    assert (kill["action"], kill["decision"]) == ("kill", "deny")
    assert read["resource"] == kill["resource"] == "job:grains.item"  # the auditor sees it
    assert read["outcome"]["error"] == f"no job with jid {grains} in the index"


@pytest.mark.once
def test_a_bad_halite_option_is_a_clear_error_of_every_runner(master, tmp_path):
    """flush_interval: -1 is refused by the configuration's own ConfigError: every
    halite runner answers it with an error and exit 1, never a traceback."""
    config_dir = tmp_path / "conf"
    shutil.copytree(master.config_dir, config_dir)
    config = yaml.safe_load((config_dir / "master").read_text())
    config["halite"] = {**config.get("halite", {}), "flush_interval": -1}
    (config_dir / "master").write_text(yaml.safe_dump(config))
    run = master.salt_run_cli()
    unknown = "20000101000000000000"
    for args in (["halite.jobs"], ["halite.jobs", "live=True"], ["halite.job", unknown],
                 ["halite.activity"], ["halite.timeline"], ["halite.audit"],
                 ["halite.kill", unknown]):  # fmt: skip
        ret = run.run(f"--config-dir={config_dir}", *args)
        assert ret.returncode == 1, (args, ret)
        assert ret.data["error"] == "halite:flush_interval must be >= 0, not -1", (args, ret)
        assert "Traceback" not in ret.stdout + ret.stderr, (args, ret)


def test_each_runner_checks_first(master, minion, index):
    run = master.salt_run_cli()
    # Nobody: an unknown user gets nothing, and the refusal is audited.
    for args in (["halite.jobs"], ["halite.activity"], ["halite.timeline"], ["halite.audit"]):
        ret = run.run(*args, env=as_user("mallory"))
        assert ret.returncode == 1, (args, ret)
        assert ret.data["error"].startswith("permission denied: 'sudo_mallory' lacks view:")
    # A viewer reads jobs but not the audit log; an auditor reads both.
    assert run.run("halite.activity", env=as_user("bob")).returncode == 0
    assert run.run("halite.audit", env=as_user("bob")).returncode == 1
    log = run.run("halite.audit", "user=sudo_mallory", "decision=deny", env=as_user("carol"))
    assert log.returncode == 0, log
    actions = {entry["action"] for entry in log.data["entries"]}
    assert {"jobs", "activity", "timeline", "audit"} <= actions
    # Hostile arguments: a clear error or an empty answer, never a trace or more rows.
    for args in (
        ["halite.jobs", "fun='; DELETE FROM jobs_index; --"],
        ["halite.jobs", "user=' OR '1'='1"],
        ["halite.jobs", "search=%"],
        ["halite.jobs", "minion=*"],
    ):
        ret = run.run(*args)
        assert ret.returncode == 0 and ret.data["jobs"] == [], (args, ret)
    for args, message in (
        (["halite.jobs", "fun=[ab]*"], "only the * and ? wildcards"),
        (["halite.jobs", "limit=1;2"], "limit must be a number"),
        (["halite.jobs", "user=[1, 2]"], "user must be text"),
        (["halite.jobs", "search=" + "x" * 5000], "at most 1024 characters"),
        (["halite.jobs", "include_system=maybe"], "include_system must be True or False"),
        (["halite.audit", "decision=perhaps"], "decision must be allow or deny"),
        (["halite.jobs", "start=9999-12-31T23:59:59-23:59"], "is out of range"),
        (["halite.jobs", "end=0001-01-01T00:00:00+14:00"], "is out of range"),
        (["halite.audit", "start=9999-12-31T23:59:59-23:59"], "is out of range"),
        (["halite.activity", "hours=.inf"], "hours must be a number from 1 to 168"),
        (["halite.jobs", "limit=.inf"], "limit must be a number from 1 to 500"),
    ):
        ret = run.run(*args)
        assert ret.returncode == 1 and message in ret.data["error"], (args, ret)
    with index.db.read() as conn:  # the index is untouched by all of the above
        assert conn.execute(select(job_returns.c.jid).limit(1)).first() is not None
