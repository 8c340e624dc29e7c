"""The terminal views of the runners, and Salt loading them as outputters."""

import copy

import salt.config
import salt.loader

from halite_core.report import job_report, jobs_table

JOB = {
    "jid": "20261128120000000001",
    "function": "state.apply",
    "target": "web1,web2",
    "target_type": "list",
    "user": "sudo_alice",
    "start_time": "2026-11-28T12:00:00.000001+00:00",
    "end_time": "2026-11-28T12:00:09.000000+00:00",
    "status": "complete",
    "minions": {"targeted": 2, "returned": 2, "failed": 1},
    "system": False,
    "master_id": "m_master",
}


def test_jobs_table_has_a_row_per_job_and_the_next_page():
    text = jobs_table({"jobs": [JOB], "next": "CURSOR"})
    header, row, more = text.splitlines()
    assert header.split()[:3] == ["JID", "FUNCTION", "TARGET"]
    assert row.split() == [
        "20261128120000000001", "state.apply", "web1,web2", "list", "sudo_alice",
        "2026-11-28", "12:00:00", "complete", "2/2", "1",
    ]  # fmt: skip
    assert more == "More: salt-run halite.jobs ... cursor=CURSOR"
    assert jobs_table({"jobs": [], "next": None}) == "No jobs."


def test_job_report_shows_failing_states_first():
    states = [
        {"id": "conf", "function": "file.managed", "result": "passed", "comment": "ok",
         "changes": {"diff": "+"}},
        {"id": "broken", "function": "cmd.run", "result": "failed", "comment": "boom",
         "changes": {}},
    ]  # fmt: skip
    detail = {
        **JOB,
        "arguments": ["app"],
        "kwargs": {},
        "states": {"states": 4, "passed": 3, "failed": 1, "changed": 1, "duration_ms": 12.0},
        "minion_results": [
            {"minion": "web2", "state": "returned", "failed": True, "retcode": 2,
             "success": False, "highstate": {"kind": "states", "states": states,
             "failing": [{"id": "broken", "comment": "boom"}],
             "counts": {"total": 2, "passed": 1, "failed": 1, "changed": 1, "duration_ms": 3}}},
            {"minion": "web1", "state": "returned", "failed": False, "retcode": 0,
             "success": True, "highstate": {"kind": "render_error", "errors": ["bad sls"]}},
            {"minion": "web3", "state": "no_return", "failed": True, "retcode": None,
             "success": None},
        ],
    }  # fmt: skip
    text = job_report(detail)
    assert text.startswith("Job 20261128120000000001: state.apply on web1,web2 (list)")
    assert "states: 4 run, 3 passed, 1 failed, 1 changed, 12 ms" in text
    lines = text.splitlines()
    web2 = lines.index("web2: returned, FAILED (retcode 2, success False)")
    assert lines[web2 + 2].split()[:2] == ["FAILED", "broken"]  # failing state first
    assert lines[web2 + 3].split()[:2] == ["PASSED", "conf"]
    assert "    bad sls" in lines
    assert "web3: no_return, FAILED (retcode None, success None)" in lines


def test_salt_loads_the_outputters(tmp_path):
    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(cachedir=str(tmp_path), extension_modules=str(tmp_path / "ext"))
    outputters = salt.loader.outputters(opts)
    assert outputters["halite_jobs"]({"jobs": [JOB], "next": None}).startswith("JID")
    assert outputters["halite_job"]({"not": "a job"}) == "{'not': 'a job'}"
