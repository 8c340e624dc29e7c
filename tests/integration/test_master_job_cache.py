"""halite as the master job cache of a real master, checked against what Salt itself reports."""

import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from halite_core.store.schema import job_returns, jobs_index
from tests.integration.conftest import store_for, wait_for


def run_job(master, minion, *args):
    """Publish a job with the salt CLI and return its jid."""
    ret = master.salt_cli().run("--async", *args, minion_tgt=minion.id, _timeout=120)
    assert ret.returncode == 0, ret
    match = re.search(r"job ID: (\d{20})", ret.stdout)
    assert match, ret.stdout
    return match.group(1)


def finished_job(index, jid):
    def check():
        """the job is indexed as complete"""
        with index.db.read() as conn:
            row = conn.execute(select(jobs_index).where(jobs_index.c.jid == jid)).first()
        return row if row is not None and row.status == "complete" else None

    return wait_for(check)._asdict()


def returns_of(index, jid):
    with index.db.read() as conn:
        rows = conn.execute(select(job_returns).where(job_returns.c.jid == jid)).all()
    return {row.minion: row._asdict() for row in rows}


def test_salt_cli_waits_for_returns_as_usual(master, minion, index):
    # The salt CLI checks the job cache for the load right after publishing: a publish
    # that was not yet committed would make it give up on the job.
    ret = master.salt_cli().run("test.ping", minion_tgt=minion.id, _timeout=120)
    assert ret.returncode == 0 and ret.data is True
    ret = master.salt_cli().run("test.echo", "cli", minion_tgt=minion.id, _timeout=120)
    assert ret.returncode == 0 and ret.data == "cli"


def test_ping_is_indexed_and_salt_runner_agrees(master, minion, index):
    jid = run_job(master, minion, "test.ping")
    job = finished_job(index, jid)
    assert job["function"] == "test.ping"
    assert job["target"] == minion.id and job["target_type"] == "glob"
    assert (job["minions_targeted"], job["minions_returned"], job["minions_failed"]) == (1, 1, 0)
    assert job["start_time"].tzinfo is not None and job["end_time"] >= job["start_time"]
    assert job["master_id"] == master.config["id"]
    assert returns_of(index, jid)[minion.id]["return_value"] is True

    run = master.salt_run_cli()
    listed = run.run("jobs.list_jobs", "search_function=test.ping")
    assert listed.returncode == 0
    assert listed.data[jid]["Function"] == "test.ping"
    assert listed.data[jid]["Target"] == minion.id
    assert listed.data[jid]["User"] == job["user"]
    looked_up = run.run("jobs.lookup_jid", jid)
    assert looked_up.returncode == 0 and looked_up.data == {minion.id: True}


def test_arguments_and_keyword_arguments_are_separated(master, minion, index):
    jid = run_job(master, minion, "test.arg", "one", "2", "colour=blue")
    job = finished_job(index, jid)
    assert job["arguments"] == ["one", 2]
    assert job["kwargs"] == {"colour": "blue"}
    listed = master.salt_run_cli().run("jobs.list_job", jid)
    assert listed.returncode == 0
    assert listed.data["Arguments"][:2] == ["one", 2]
    assert listed.data["Result"][minion.id]["return"]["args"] == ["one", 2]
    assert listed.data["Minions"] == [minion.id]


def test_failing_state_run_is_summarised(master, minion, index, state_tree):
    (state_tree / "motd").unlink(missing_ok=True)  # other tests apply halite_demo too
    jid = run_job(master, minion, "state.apply", "halite_demo")
    job = finished_job(index, jid)
    assert job["function"] == "state.apply" and job["minions_failed"] == 1
    row = returns_of(index, jid)[minion.id]
    assert row["retcode"] == 2 and row["out"] == "highstate"
    assert (row["states_total"], row["states_passed"], row["states_failed"]) == (3, 1, 2)
    assert row["states_changed"] == 2  # the file, and cmd.run reports its pid as a change
    looked_up = master.salt_run_cli().run("jobs.lookup_jid", jid)
    assert looked_up.returncode == 0
    states = looked_up.data[minion.id]
    assert any(key.startswith("cmd_|-always-fails") for key in states)


def test_list_jobs_filter_matches_the_index(master, minion, index):
    for _ in range(3):
        finished_job(index, run_job(master, minion, "test.echo", "hello"))
    ret = master.salt_run_cli().run("jobs.list_jobs_filter", "count=2")
    assert ret.returncode == 0
    # Salt stores runner calls in the job cache too, this one only after it answered.
    newest = [jid for jid, load in index.newest_loads(10) if not load["fun"].startswith("runner.")]
    assert [job["JID"] for job in ret.data] == newest[-2:]


def test_standalone_salt_call_return_gets_a_job(master, minion, index):
    ret = minion.salt_call_cli().run("test.echo", "standalone", "--return", "halite")
    # salt-call --return sends the return to the master as a jid "req" job.
    assert ret.returncode == 0

    def check():
        """a test.echo job for the standalone call is indexed"""
        with index.db.read() as conn:
            return conn.execute(
                select(job_returns.c.jid).where(
                    job_returns.c.function == "test.echo",
                    job_returns.c.return_value.is_not(None),
                )
            ).all()

    assert wait_for(check)


def test_event_return_indexes_beside_the_default_cache(event_master, event_minion):
    jid = run_job(event_master, event_minion, "test.ping")
    store = store_for(event_master)
    try:
        job = finished_job(store, jid)
        assert job["function"] == "test.ping" and job["minions_returned"] == 1
        # Salt's own cache still answers for the same job.
        looked_up = event_master.salt_run_cli().run("jobs.lookup_jid", jid)
        assert looked_up.data == {event_minion.id: True}
    finally:
        store.db.dispose()


def test_sync_all_from_file_roots_installs_the_loader_modules(master, state_tree):
    # The other way to install: copy salt/_* into the master's file_roots and sync.
    source = Path(__file__).resolve().parents[2] / "salt"
    for kind in source.glob("_*"):
        shutil.copytree(kind, state_tree / kind.name, dirs_exist_ok=True)
    ret = master.salt_run_cli().run("saltutil.sync_all")
    assert ret.returncode == 0, ret
    assert "returners.halite" in ret.data["returners"]
    synced = Path(master.config["extension_modules"]) / "returners" / "halite.py"
    assert synced.read_text() == (source / "_returners" / "halite.py").read_text()


def test_halite_jobs_runner_lists_the_index(master, minion, index):
    jid = run_job(master, minion, "test.echo", "listed")
    finished_job(index, jid)
    run = master.salt_run_cli()
    ret = run.run("halite.jobs", "fun=test.echo", "limit=2")
    assert ret.returncode == 0, ret
    (first, *_) = ret.data["jobs"]
    assert first["jid"] == jid and first["function"] == "test.echo"
    assert first["target"] == minion.id and first["status"] == "complete"
    assert first["minions"] == {"targeted": 1, "returned": 1, "failed": 0, "changed": 0}
    assert first["result"] == "pass"
    assert first["start_time"].endswith("+00:00")
    if ret.data["next"]:
        more = run.run("halite.jobs", "fun=test.echo", "limit=2", f"cursor={ret.data['next']}")
        assert more.returncode == 0 and jid not in [j["jid"] for j in more.data["jobs"]]
    bad = run.run("halite.jobs", "limit=0")
    assert bad.returncode == 1
    assert bad.data["error"] == "limit must be a number from 1 to 500, not 0"
    bad = run.run("halite.jobs", "start=yesterday")
    assert bad.returncode == 1 and "not an ISO 8601 date and time" in bad.data["error"]


def test_halite_job_runner_reports_the_failing_highstate_first(master, minion, index):
    jid = run_job(master, minion, "state.apply", "halite_demo")
    finished_job(index, jid)
    run = master.salt_run_cli()
    ret = run.run("halite.job", jid)
    assert ret.returncode == 0, ret
    detail = ret.data
    assert detail["jid"] == jid and detail["function"] == "state.apply"
    assert detail["arguments"] == ["halite_demo"]
    (result,) = detail["minion_results"]
    assert (result["minion"], result["state"], result["failed"]) == (minion.id, "returned", True)
    parsed = result["highstate"]
    assert parsed["kind"] == "states"
    assert [s["id"] for s in parsed["states"]] == ["motd", "always-fails", "after-failure"]
    assert [s["result"] for s in parsed["states"]] == ["passed", "failed", "failed"]
    assert [f["id"] for f in parsed["failing"]] == ["always-fails", "after-failure"]
    assert detail["states"]["failed"] == 2 and detail["states"]["states"] == 3
    missing = run.run("halite.job", "20000101000000000000")
    assert missing.returncode == 1
    assert missing.data["error"] == "no job with jid 20000101000000000000 in the index"


def test_runners_print_readable_views_by_default(master, minion, index):
    jid = run_job(master, minion, "state.apply", "halite_demo")
    finished_job(index, jid)
    run = master.salt_run_cli()
    table = run.run("--out=halite_jobs", "halite.jobs", "fun=state.apply", "limit=1")
    assert table.returncode == 0
    header, row, *_ = table.stdout.strip().splitlines()
    assert header.startswith("JID") and row.startswith(jid)
    report = run.run("--out=halite_job", "halite.job", jid)
    assert report.returncode == 0
    assert f"{minion.id}: returned, FAILED" in report.stdout
    assert "FAILED   always-fails (cmd.run)" in report.stdout


def test_activity_and_timeline_runners(master, minion, index):
    finished_job(index, run_job(master, minion, "test.echo", "busy"))
    run = master.salt_run_cli()
    ret = run.run("halite.activity", "hours=2")
    assert ret.returncode == 0, ret
    assert len(ret.data["hours"]) == 2 and ret.data["hours"][-1]["count"] >= 1
    assert ret.data["total"] == sum(hour["count"] for hour in ret.data["hours"])
    ret = run.run("halite.timeline", "window=1h", "group_by=function")
    assert ret.returncode == 0, ret
    rows = {row["key"]: row["bars"] for row in ret.data["rows"]}
    assert any(bar["status"] == "pass" for bar in rows["test.echo"])
    bad = run.run("halite.timeline", "window=3d")
    assert bad.returncode == 1 and "window must be one of" in bad.data["error"]


@pytest.mark.parametrize(
    ("args", "kind", "results"),
    [
        (("state.apply", "halite_ok", "test=True"), "states", ["passed", "not_run"]),
        (("state.sls", "halite_ok"), "states", ["passed", "passed"]),
        (("state.single", "test.fail_without_changes", "name=nope"), "states", ["failed"]),
        (("state.apply", "halite_broken"), "render_error", None),
    ],
)
def test_real_state_returns_are_parsed(master, minion, index, args, kind, results):
    jid = run_job(master, minion, *args)
    finished_job(index, jid)
    ret = master.salt_run_cli().run("halite.job", jid)
    assert ret.returncode == 0, ret
    (result,) = ret.data["minion_results"]
    parsed = result["highstate"]
    assert parsed["kind"] == kind, parsed
    if results is not None:
        assert [state["result"] for state in parsed["states"]] == results
        assert result["failed"] == ("failed" in results)
    else:
        assert parsed["errors"] and result["failed"] is True


def test_orchestration_returns_are_parsed(master, minion, index):
    run = master.salt_run_cli()
    orch = run.run("state.orchestrate", "halite_orch", _timeout=120)
    assert orch.returncode != 0  # halite_demo fails on the minion
    listing = run.run("halite.jobs", "fun=runner.state.orch*", "limit=1")
    assert listing.returncode == 0, listing
    (job,) = listing.data["jobs"]
    ret = run.run("halite.job", job["jid"])
    assert ret.returncode == 0, ret
    (result,) = ret.data["minion_results"]  # the orchestration ran on the master
    assert result["minion"] == master.id
    assert (result["success"], result["retcode"], result["failed"]) == (False, 1, True)
    parsed = result["highstate"]
    assert parsed["kind"] == "states", parsed
    assert [(s["id"], s["function"], s["result"]) for s in parsed["states"]] == [
        ("apply-ok", "salt.state", "passed"),
        ("apply-broken", "salt.state", "failed"),
    ]
    assert parsed["failing"] == [
        {"id": "apply-broken", "comment": f"Run failed on minions: {minion.id}"}
    ]
    assert ret.data["minions"]["failed"] == 1 and ret.data["states"]["failed"] == 1


def test_live_listing_asks_the_master_and_the_minions(master, minion, index):
    sleeping = run_job(master, minion, "test.sleep", "8")
    ret = master.salt_run_cli().run("halite.jobs", "live=True", "limit=5", _timeout=60)
    assert ret.returncode == 0, ret
    assert ret.data["live"] is True and len(ret.data["jobs"]) <= 5
    listed = {job["jid"]: job for job in ret.data["jobs"]}
    assert listed[sleeping]["status"] == "running"  # the minion said it runs it
    assert listed[sleeping]["function"] == "test.sleep"
    bad = master.salt_run_cli().run("halite.jobs", "live=True", "limit=501")
    assert bad.returncode == 1
    bad = master.salt_run_cli().run("halite.jobs", "live=maybe")
    assert bad.returncode == 1 and "live must be True or False" in bad.stdout
