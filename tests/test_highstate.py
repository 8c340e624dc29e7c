import pytest

from halite_core import highstate

# The same over either database: run once, in the SQLite pass.
pytestmark = pytest.mark.once


def state(result, changes=None, duration=1.5):
    return {"result": result, "comment": "c", "changes": changes or {}, "duration": duration}


def test_summary_counts_passed_failed_changed_and_duration():
    ret = {
        "file_|-a_|-/tmp/a_|-managed": state(True, {"diff": "new"}, 2.0),
        "cmd_|-b_|-false_|-run": state(False, duration="3.5 ms"),
        "test_|-c_|-c_|-nop": state(None),
    }
    summary = highstate.summarize(ret)
    assert summary == highstate.StateSummary(3, 1, 1, 1, 7.0)


def test_render_errors_and_non_dicts_are_not_state_runs():
    assert highstate.summarize(["Rendering SLS 'base:x' failed"]) is None
    assert highstate.summarize('The function "state.apply" is running as PID 1') is None
    assert highstate.summarize({}) is None
    assert highstate.summarize({"not a state key": state(True)}) is None


def test_parse_lists_states_in_run_order_with_failures_ready():
    ret = {
        "cmd_|-broken_|-false_|-run": {**state(False), "__run_num__": 1, "comment": "boom",
                                       "__sls__": "app", "__id__": "broken"},
        "file_|-conf_|-/etc/app_|-managed": {**state(True, {"diff": "+x"}), "__run_num__": 0,
                                             "__sls__": "app"},
        "test_|-dry_|-dry_|-nop": {**state(None), "__run_num__": 2},
    }  # fmt: skip
    parsed = highstate.parse(ret)
    assert parsed["kind"] == "states"
    assert [s["id"] for s in parsed["states"]] == ["conf", "broken", "dry"]
    assert [s["result"] for s in parsed["states"]] == ["passed", "failed", "not_run"]
    assert parsed["states"][0]["function"] == "file.managed"
    assert parsed["states"][0]["name"] == "/etc/app" and parsed["states"][0]["sls"] == "app"
    assert parsed["failing"] == [{"id": "broken", "comment": "boom"}]
    assert parsed["counts"] == {"total": 3, "passed": 1, "failed": 1, "changed": 1,
                                "duration_ms": 4.5}  # fmt: skip


def test_parse_recognises_render_errors_busy_minions_and_others():
    assert highstate.parse(["Rendering SLS 'base:web' failed: mapping values"]) == {
        "kind": "render_error", "errors": ["Rendering SLS 'base:web' failed: mapping values"],
    }  # fmt: skip
    busy = ['The function "state.apply" is running as PID 4242 and was started at 2026, '
            'Nov 28 12:00:00.000000 with jid 20261128120000000000']  # fmt: skip
    assert highstate.parse(busy)["kind"] == "already_running"
    assert highstate.parse("just text") == {"kind": "other"}
    assert highstate.parse({}) == {"kind": "other"}
    # A list of strings that succeeded is no error: state.show_states, state.running.
    assert highstate.parse(["core", "edit.vim"], succeeded=True) == {"kind": "other"}
    assert highstate.parse(busy, succeeded=True) == {"kind": "other"}


def test_orchestration_payload_is_unwrapped():
    """A runner job is stored as Salt's whole salt/run/<jid>/ret payload; an orchestration's
    states sit under return.data.<master id>."""
    states = {
        "salt_|-deploy_|-deploy_|-state": {"result": False, "comment": "Run failed on minions: w1",
                                           "changes": {}, "__run_num__": 0, "__id__": "deploy"},
    }  # fmt: skip
    payload = {
        "fun": "runner.state.orchestrate",
        "jid": "20261128120000000000",
        "return": {"data": {"m_master": states}, "outputter": "highstate", "retcode": 1},
        "success": False,
    }
    value, success, retcode = highstate.runner_payload("runner.state.orchestrate", payload)
    assert (success, retcode) == (False, 1)
    assert highstate.summarize(value) == highstate.StateSummary(1, 0, 1, 0, 0.0)
    assert highstate.parse(value)["failing"] == [
        {"id": "deploy", "comment": "Run failed on minions: w1"}
    ]
    # An orchestration whose SLS did not render: its errors sit in the same place.
    payload["return"]["data"] = {"m_master": ["Rendering SLS 'base:orch' failed: bad"]}
    value, _, _ = highstate.runner_payload("runner.state.orchestrate", payload)
    assert highstate.parse(value) == {
        "kind": "render_error", "errors": ["Rendering SLS 'base:orch' failed: bad"]
    }  # fmt: skip
    # Minion returns and other runners' plain values pass through untouched.
    assert highstate.runner_payload("state.apply", payload) == (payload, None, None)
    assert highstate.runner_payload("runner.test.arg", [1]) == ([1], None, None)
    assert highstate.is_state_function("runner.state.orch")
    assert not highstate.is_state_function("runner.jobs.list_jobs")


def test_odd_run_numbers_and_ids_still_parse_in_an_order():
    """A minion's return may hold a __run_num__ that is text, or ids that are numbers: the
    job still shows (it was an internal error), such states last."""
    ret = {
        "cmd_|-a_|-a_|-run": {**state(False), "__run_num__": "1", "__id__": "a"},
        "cmd_|-b_|-b_|-run": {**state(True), "__run_num__": 0, "__id__": 7},
        "cmd_|-c_|-c_|-run": {**state(True), "__run_num__": 0, "__id__": "c"},
    }
    parsed = highstate.parse(ret)
    assert [s["id"] for s in parsed["states"]] == [7, "c", "a"]
