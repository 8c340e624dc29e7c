"""The terminal views of the runners, and Salt loading them as outputters."""

import copy
import datetime as dt

import pytest
import salt.config
import salt.loader

from halite_core.api import Job, MinionHistory, MinionsPage, StateHistory, StatesPage
from halite_core.report import (
    job_report,
    jobs_table,
    minion_table,
    minions_table,
    state_report,
    states_table,
)
from halite_core.service import Service
from tests.helpers import publish, ret, save_return
from tests.test_fleet import POLICY, check_against

UTC = dt.timezone.utc

JOB = {
    "jid": "20261128120000000001",
    "function": "state.apply",
    "target": "web1,web2",
    "target_type": "list",
    "user": "sudo_alice",
    "start_time": "2026-11-28T12:00:00.000001+00:00",
    "end_time": "2026-11-28T12:00:09.000000+00:00",
    "status": "complete",
    "result": "failed",
    "minions": {"targeted": 2, "returned": 2, "failed": 1, "changed": 0},
    "system": False,
    "master_id": "m_master",
    "arguments_preview": "app",
}


def test_jobs_table_has_a_row_per_job_and_the_next_page():
    check_against(Job, JOB)
    text = jobs_table({"jobs": [JOB], "next": "CURSOR"})
    header, row, more = text.splitlines()
    assert header.split()[:3] == ["JID", "FUNCTION", "TARGET"]
    # The job's result stands between its status and its minion counts.
    assert row.split() == [
        "20261128120000000001", "state.apply", "web1,web2", "list", "sudo_alice",
        "2026-11-28", "12:00:00", "complete", "FAILED", "2/2", "1",
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
    assert not any("re-run" in line for line in lines)


def test_job_report_shows_the_links_between_reruns():
    detail = {**JOB, "arguments": [], "kwargs": {}, "minion_results": [],
              "rerun_of": "20261128110000000001",
              "reruns": ["20261128130000000002", "20261128125000000001"]}  # fmt: skip
    lines = job_report(detail).splitlines()
    assert "  re-runs job 20261128110000000001" in lines
    assert "  re-run as 20261128130000000002, 20261128125000000001 (newest first)" in lines


def test_salt_loads_the_outputters(tmp_path):
    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(cachedir=str(tmp_path), extension_modules=str(tmp_path / "ext"))
    outputters = salt.loader.outputters(opts)
    assert outputters["halite_jobs"]({"jobs": [JOB], "next": None}).startswith("JID")
    assert outputters["halite_job"]({"not": "a job"}) == "{'not': 'a job'}"


# ---------------------------------------------------------------------- the fleet's tables
# A comment as Salt's cmd.run gives it: several lines, longer than a column.
LONG_COMMENT = 'Command "/usr/local/bin/check --all" run\nretcode: 1\nstderr: ' + "x" * 80
CHECK_NAME = "/usr/local/bin/check --all\n--verbose"  # a multi-line command as its name
OTHERS = ("nginx_conf", "nginx_service", "php_fpm_pool", "php_fpm_service", "app_release")


def state(state_id, result=True, changes=None, comment="ok", function="file.managed",
          name=None, run_num=0):  # fmt: skip
    """One state of a state return, keyed as Salt keys it."""
    module, fun = function.split(".")
    key = f"{module}_|-{state_id}_|-{name or state_id}_|-{fun}"
    return key, {
        "result": result, "comment": comment, "changes": changes or {}, "duration": 1.0,
        "__run_num__": run_num, "__sls__": "app", "__id__": state_id, "name": name or state_id,
    }  # fmt: skip


def check(result=True, changes=None, comment="ok"):
    return state("conf1", result, changes, comment, function="cmd.run", name=CHECK_NAME)


def state_run(store, jid, minion, *states, test=False):
    value = dict(states)
    failed = any(s["result"] is False for s in value.values())
    assert save_return(store, ret(jid, minion, value, fun="state.apply",
                                  retcode=2 if failed else 0, success=not failed,
                                  fun_args=["test=True"] if test else []))  # fmt: skip


@pytest.fixture
def fleet(store):
    """Relative to now: db1 failed conf1 30 hours ago; 2 hours ago web1 failed conf1 and
    five states more, web2 changed conf0, db1 passed; a dry run 90 minutes ago would have
    changed conf1 on web2; an hour ago test.ping failed on web1 and passed on db2."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    times = {}

    def jid(name, minutes_ago, fun, minions):
        times[name] = now - dt.timedelta(minutes=minutes_ago)
        publish(store, times[name].strftime("%Y%m%d%H%M%S%f"), fun=fun, minions=minions)
        return times[name].strftime("%Y%m%d%H%M%S%f")

    earlier = jid("earlier", 30 * 60, "state.apply", ("db1",))
    state_run(store, earlier, "db1", check(False, comment=LONG_COMMENT))
    latest = jid("latest", 120, "state.apply", ("web1", "web2", "db1"))
    failing = [state(s, False, comment=f"{s} failed", run_num=i + 1) for i, s in enumerate(OTHERS)]
    state_run(store, latest, "web1", check(False, comment=LONG_COMMENT), *failing,
              state("motd", run_num=9))  # fmt: skip
    state_run(store, latest, "web2", state("conf0", changes={"diff": "+x"}), check())
    state_run(store, latest, "db1", check())
    dry = jid("dry", 90, "state.apply", ("web2",))
    state_run(store, dry, "web2", check(None, {"diff": "would run"}), test=True)
    ping = jid("ping", 60, "test.ping", ("db2", "web1"))
    assert save_return(store, ret(ping, "db2", fun="test.ping"))
    assert save_return(store, ret(ping, "web1", fun="test.ping", success=False, retcode=1))
    service = Service(store, POLICY, "m1")
    service.jids = {"earlier": earlier, "latest": latest, "dry": dry, "ping": ping}
    # How the tables show each job's start: to the second, UTC.
    service.shown = {name: t.strftime("%Y-%m-%d %H:%M:%S") for name, t in times.items()}
    return service


def cells(lines, titles):
    """The rows of a table as dicts, cut at the columns where the header puts its titles."""
    header = lines[0]
    starts = [header.index(title) for title in titles]
    assert header.split("  ")[0] == titles[0] and header.endswith(titles[-1])
    ends = [*starts[1:], None]
    return [
        {
            title: line[start:end].strip()
            for title, start, end in zip(titles, starts, ends, strict=True)
        }
        for line in lines[1:]
    ]


MINIONS = ("MINION", "RESULT", "STATE RUN (UTC)", "STATES F/C/T", "FAILING STATES",
           "LAST JOB (UTC)")  # fmt: skip


def test_minions_table_failing_first_with_the_latest_real_run_and_the_latest_job(fleet):
    page = check_against(MinionsPage, fleet.minions("root"))
    rows = cells(minions_table(page).splitlines(), MINIONS)
    assert [row["MINION"] for row in rows] == ["web1", "db1", "db2", "web2"]
    web1, db1, db2, web2 = rows
    assert web1["RESULT"] == "FAILED"
    assert web1["STATE RUN (UTC)"] == f"state.apply {fleet.shown['latest']}"
    assert web1["STATES F/C/T"] == "6/0/7"
    # As many failing ids as fit in 30 characters, then how many more.
    assert web1["FAILING STATES"] == "conf1, nginx_conf +4 more"
    assert web1["LAST JOB (UTC)"] == f"test.ping {fleet.shown['ping']}"
    assert (db1["RESULT"], db1["STATES F/C/T"], db1["FAILING STATES"]) == ("pass", "0/0/1", "-")
    assert db2 == {
        "MINION": "db2",
        "RESULT": "-",
        "STATE RUN (UTC)": "-",
        "STATES F/C/T": "-",
        "FAILING STATES": "-",
        "LAST JOB (UTC)": f"test.ping {fleet.shown['ping']}",
    }
    # The dry run is web2's latest job, never its latest state run.
    assert web2["RESULT"] == "changed"
    assert web2["STATE RUN (UTC)"] == f"state.apply {fleet.shown['latest']}"
    assert web2["LAST JOB (UTC)"] == f"state.apply {fleet.shown['dry']}"


def test_minions_table_says_how_to_get_the_next_page(fleet):
    page = check_against(MinionsPage, fleet.minions("root", limit=2))
    lines = minions_table(page).splitlines()
    assert lines[-1] == f"More: salt-run halite.minions ... cursor={page['next']}"
    rest = fleet.minions("root", limit=2, cursor=page["next"])
    assert [row["MINION"] for row in cells(minions_table(rest).splitlines(), MINIONS)] == [
        "db2", "web2"]  # fmt: skip
    assert minions_table({"minions": [], "next": None}) == "No minions."


def test_minions_table_says_why_it_shows_no_state_runs(fleet):
    page = check_against(MinionsPage, fleet.minions("tess"))  # may view test.* jobs only
    lines = minions_table(page).splitlines()
    assert lines[-1] == "State runs are not shown: they need view:job:state.*."
    rows = cells(lines[:-1], MINIONS)
    assert [(row["MINION"], row["RESULT"]) for row in rows] == [("db2", "-"), ("web1", "-")]
    assert minions_table(fleet.minions("root")).splitlines()[-1].startswith("web2 ")


HISTORY = ("JID", "FUNCTION", "STARTED (UTC)", "STATE", "RESULT", "RETCODE", "STATES F/C/T",
           "FAILING STATES")  # fmt: skip


def test_minion_table_is_its_history_with_the_result_of_each_job(fleet):
    history = check_against(MinionHistory, fleet.minion("root", "web1"))
    lines = minion_table(history).splitlines()
    assert lines[0] == "Jobs of web1, newest first:"
    ping, run = cells(lines[1:], HISTORY)
    assert ping == {"JID": fleet.jids["ping"], "FUNCTION": "test.ping",
                    "STARTED (UTC)": fleet.shown["ping"], "STATE": "returned",
                    "RESULT": "FAILED", "RETCODE": "1", "STATES F/C/T": "-",
                    "FAILING STATES": "-"}  # fmt: skip
    assert (run["JID"], run["RETCODE"], run["STATES F/C/T"]) == (fleet.jids["latest"], "2", "6/0/7")
    assert run["FAILING STATES"] == "conf1, nginx_conf +4 more"


def test_minion_table_marks_a_dry_run_and_pages(fleet):
    history = check_against(MinionHistory, fleet.minion("root", "web2", limit=1))
    lines = minion_table(history).splitlines()
    (dry,) = cells(lines[1:-1], HISTORY)
    assert (dry["JID"], dry["RESULT"]) == (fleet.jids["dry"], "changed (test)")
    assert lines[-1] == f"More: salt-run halite.minion web2 ... cursor={history['next']}"
    assert minion_table(fleet.minion("root", "web1", result="pass")) == "No jobs of web1."


def test_minion_table_quotes_an_id_the_shell_would_split():
    running = {
        "jid": "20261128120000000001",
        "function": "test.ping",
        "start_time": "2026-11-28T12:00:00+00:00",
        "state": "running",
        "success": None,
        "retcode": None,
        "result": "running",
        "returned_at": None,
        "test_run": None,
    }
    answer = check_against(MinionHistory, {"minion": "odd one", "next": "C", "jobs": [running]})
    lines = minion_table(answer).splitlines()
    assert lines[-1] == "More: salt-run halite.minion 'odd one' ... cursor=C"
    (row,) = cells(lines[1:-1], HISTORY)
    assert (row["STATE"], row["RESULT"], row["RETCODE"]) == ("running", "running", "-")


STATES = ("STATE ID", "FUNCTION", "NAME", "SLS", "MINIONS", "RUNS", "FIRST (UTC)", "LAST (UTC)",
          "COMMENT")  # fmt: skip


def test_states_table_busiest_first_on_one_line_each(fleet):
    page = check_against(StatesPage, fleet.states("root", window="7d"))
    lines = states_table(page).splitlines()
    assert lines[0] == (
        "States that failed in the last 7d, on the most minions first (dry runs left out):"
    )
    rows = cells(lines[1:], STATES)
    assert [row["STATE ID"] for row in rows] == ["conf1", *sorted(OTHERS)]
    conf1 = rows[0]
    assert (conf1["FUNCTION"], conf1["SLS"], conf1["MINIONS"], conf1["RUNS"]) == (
        "cmd.run", "app", "2", "2")  # fmt: skip
    assert (conf1["FIRST (UTC)"], conf1["LAST (UTC)"]) == (
        fleet.shown["earlier"], fleet.shown["latest"])  # fmt: skip
    # The multi-line name and comment: on one line, cut to their columns.
    assert conf1["NAME"] == "/usr/local/bin/check --all..."
    assert conf1["COMMENT"] == 'Command "/usr/local/bin/check --all" run retcod...'
    assert len(lines) == 1 + 1 + 1 + len(OTHERS)  # the heading, the header, a line a state


def test_states_table_pages_within_its_window(fleet):
    page = check_against(StatesPage, fleet.states("root", window="7d", limit=4))
    lines = states_table(page).splitlines()
    assert lines[-1] == f"More: salt-run halite.states ... cursor={page['next']}"
    rest = fleet.states("root", window="7d", limit=4, cursor=page["next"])
    assert [row["STATE ID"] for row in cells(states_table(rest).splitlines()[1:], STATES)] == [
        "php_fpm_pool", "php_fpm_service"]  # fmt: skip


def test_states_table_of_changes_leaves_the_dry_run_out(fleet):
    page = check_against(StatesPage, fleet.states("root", result="changed"))
    lines = states_table(page).splitlines()
    assert lines[0].startswith("States that changed something in the last 24h")
    assert [row["STATE ID"] for row in cells(lines[1:], STATES)] == ["conf0"]
    assert states_table(fleet.states("root", window="1h")) == "No state failed in the last 1h."


RUNS = ("STARTED (UTC)", "MINION", "RESULT", "FUNCTION", "NAME", "SLS", "JID", "COMMENT")


def test_state_report_says_when_it_failed_then_its_runs(fleet):
    history = check_against(StateHistory, fleet.state("root", "conf1"))
    lines = state_report(history).splitlines()
    assert lines[0] == (
        f"conf1: failed in 2 runs on 2 minions, first {fleet.shown['earlier']},"
        f" last {fleet.shown['latest']} (UTC)"
    )
    rows = cells(lines[1:], RUNS)
    assert [(row["MINION"], row["RESULT"]) for row in rows] == [
        ("web2", "changed (test)"), ("web1", "FAILED"), ("db1", "FAILED")]  # fmt: skip
    assert [row["STARTED (UTC)"] for row in rows] == [
        fleet.shown["dry"], fleet.shown["latest"], fleet.shown["earlier"]]  # fmt: skip
    assert rows[1]["JID"] == fleet.jids["latest"]
    assert rows[1]["COMMENT"] == 'Command "/usr/local/bin/check --all" run retcod...'


def test_state_report_pages_and_says_when_it_never_failed(fleet):
    history = check_against(StateHistory, fleet.state("root", "conf1", limit=1))
    assert state_report(history).splitlines()[-1] == (
        f"More: salt-run halite.state conf1 ... cursor={history['next']}"
    )
    conf0 = check_against(StateHistory, fleet.state("root", "conf0"))
    lines = state_report(conf0).splitlines()
    assert lines[0] == "conf0: never failed (dry runs left out)"
    assert [row["RESULT"] for row in cells(lines[1:], RUNS)] == ["changed"]
    assert state_report(fleet.state("root", "motd")) == (
        "motd: never failed (dry runs left out)\nNo failed or changed runs."
    )


def test_the_jobs_table_shows_each_jobs_result(fleet):
    lines = jobs_table(fleet.jobs("root")).splitlines()
    results = [line.split()[line.split().index("complete") + 1] for line in lines[1:]]
    assert results == ["FAILED", "changed", "FAILED", "FAILED"]  # ping, dry, latest, earlier
    live = {
        **JOB,
        "result": None,
        "end_time": None,
        "status": "running",
        "minions": {"targeted": None, "returned": None, "failed": None, "changed": None},
    }
    check_against(Job, live)
    # A live listing reads no returns: no result, no counts.
    row = jobs_table({"jobs": [live], "next": None, "live": True}).splitlines()[1]
    assert row.split()[-4:] == ["running", "-", "-", "-"]


def a_minion(failing_states):
    return {"minion": "web1", "failing": True, "last_job": None, "state_run": {
        "jid": "20261128120000000001", "function": "state.apply",
        "start_time": "2026-11-28T12:00:00+00:00", "result": "failed",
        "counts": {"states": None, "passed": None, "failed": 2, "changed": None},
        "failing_states": failing_states}}  # fmt: skip


@pytest.mark.parametrize(
    ("ids", "shown"),
    [
        (["a" * 40], "a" * 27 + "..."),
        (["a" * 40, "b"], "a" * 19 + "... +1 more"),
        (["conf\nsplit", "b"], "conf split, b"),
    ],
)
def test_a_minions_failing_states_fit_their_column(ids, shown):
    page = check_against(MinionsPage, {"minions": [a_minion(ids)], "next": None})
    (row,) = cells(minions_table(page).splitlines(), MINIONS)
    assert row["FAILING STATES"] == shown
    assert row["STATES F/C/T"] == "2/-/-"  # counts the index does not hold
    assert row["LAST JOB (UTC)"] == "-"


def test_states_table_cuts_a_very_long_id_and_shows_what_is_missing():
    page = check_against(StatesPage, {"window": "24h", "result": "failed", "next": None,
        "states": [{"state_key": "cmd_|-x_|-x_|-run", "state_id": "/srv/" + "d" * 60,
                    "function": "cmd.run", "name": None, "sls": None, "minions": 1, "runs": 3,
                    "first": "2026-11-28T12:00:00+00:00", "last": "2026-11-28T13:00:00+00:00",
                    "comment": None}]})  # fmt: skip
    (row,) = cells(states_table(page).splitlines()[1:], STATES)
    assert row["STATE ID"] == "/srv/" + "d" * 40 + "..."
    assert (row["NAME"], row["SLS"], row["COMMENT"]) == ("-", "-", "-")


def test_state_report_quotes_an_id_the_shell_would_split():
    history = check_against(StateHistory, {"state_id": "install nginx", "next": "C", "runs": [],
        "failed": {"runs": 1, "minions": 1, "first": "2026-11-28T12:00:00+00:00",
                   "last": "2026-11-28T12:00:00+00:00"}})  # fmt: skip
    lines = state_report(history).splitlines()
    assert lines[0] == (
        "install nginx: failed in 1 run on 1 minion, first 2026-11-28 12:00:00,"
        " last 2026-11-28 12:00:00 (UTC)"
    )
    assert lines[1] == "No failed or changed runs."


# ---------------------------------------------------------------------- through Salt's loader
def loaded_outputters(tmp_path):
    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(cachedir=str(tmp_path), extension_modules=str(tmp_path / "ext"))
    return salt.loader.outputters(opts)


def test_salt_loads_the_fleet_outputters_and_they_render_the_answers(fleet, tmp_path):
    outputters = loaded_outputters(tmp_path)
    answers = {
        "halite_minions": (fleet.minions("root"), minions_table),
        "halite_minion": (fleet.minion("root", "web1"), minion_table),
        "halite_states": (fleet.states("root"), states_table),
        "halite_state": (fleet.state("root", "conf1"), state_report),
    }
    for name, (answer, table) in answers.items():
        # salt-run hands the outputter the answer with the key it picked it by.
        shown = outputters[name]({**answer, "outputter": name})
        assert shown == table(answer), name
        assert "conf1" in shown or "web1" in shown, name
        warned = outputters[name]({**answer, "warning": "nothing feeds"})
        assert warned == f"WARNING: nothing feeds\n{table(answer)}", name


@pytest.mark.parametrize(
    "name", ["halite_jobs", "halite_minions", "halite_minion", "halite_states", "halite_state"]
)
def test_an_error_answer_is_shown_as_it_is(tmp_path, name):
    error = {"error": "permission denied: 'tess' lacks view:job:state.*", "retcode": 1}
    assert loaded_outputters(tmp_path)[name](error) == str(error)


def test_another_runners_answer_is_shown_as_it_is(fleet, tmp_path):
    """--out names the wrong outputter: a job's detail also has ``states``, a listing of
    jobs also has ``jobs``; neither is taken for a fleet view."""
    outputters = loaded_outputters(tmp_path)
    detail = fleet.job("root", fleet.jids["latest"])
    assert "states" in detail
    assert outputters["halite_states"](detail) == str(detail)
    listing = fleet.jobs("root")
    assert outputters["halite_minion"](listing) == str(listing)
    history = fleet.minion("root", "web1")
    assert outputters["halite_state"](history) == str(history)
