from halite_core import highstate


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
