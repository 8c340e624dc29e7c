"""halite's runners as Salt's loader gives them to salt-run: what they say about the index."""

import logging

import pytest
import salt.loader

from halite_core.config import Settings
from halite_core.jobcache import JobStore
from tests.helpers import free_port, ret, save_load, save_return
from tests.test_returner_loader import master_opts

JID = "20261128120000000001"


def runners_of(opts):
    runners = salt.loader.runner(opts)
    for name in ("halite.jobs", "halite.job", "halite.activity", "halite.timeline",
                 "halite.minions", "halite.minion", "halite.states", "halite.state"):  # fmt: skip
        # What Salt's runner client injects at call time: the caller (the master's own
        # user, an admin).
        runners[name].__globals__["__user__"] = opts["user"]
    return runners


def with_one_job(opts):
    store = JobStore(Settings.from_opts(opts))
    save_load(store, JID, {"fun": "test.ping", "tgt": "m1", "user": "root", "arg": []}, ["m1"])
    save_return(store, ret(JID, "m1", fun="test.ping"))
    store.db.dispose()


def calls(runners):
    return {
        "jobs": runners["halite.jobs"](),
        "job": runners["halite.job"](JID),
        "activity": runners["halite.activity"](),
        "timeline": runners["halite.timeline"](),
        "minions": runners["halite.minions"](),
        "minion": runners["halite.minion"]("m1"),
        "states": runners["halite.states"](),
        "state": runners["halite.state"]("conf1"),
    }


def test_the_readers_say_when_nothing_feeds_the_index(tmp_path, caplog):
    opts = master_opts(tmp_path, "local_cache")  # Salt's own cache and no event_return
    with_one_job(opts)  # an old index: what an earlier configuration left
    with caplog.at_level(logging.WARNING):
        answers = calls(runners_of(opts))
    for name, answer in answers.items():
        assert "nothing on this master feeds halite's index" in answer["warning"], name
    assert answers["jobs"]["jobs"][0]["jid"] == JID  # the answer itself is still given
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in logged if "feeds halite's index" in m]) == len(answers)


@pytest.mark.parametrize(
    "feed",
    [{"master_job_cache": "halite"}, {"event_return": "halite"}, {"engines": [{"halite": {}}]}],
)
def test_no_warning_when_something_feeds_it(tmp_path, feed):
    opts = master_opts(tmp_path, "local_cache")
    opts.update(feed)
    with_one_job(opts)
    for name, answer in calls(runners_of(opts)).items():
        assert "warning" not in answer, name


def test_the_terminal_view_says_it_first(tmp_path):
    opts = master_opts(tmp_path, "local_cache")
    outputters = salt.loader.outputters(opts)
    table = outputters["halite_jobs"]({"jobs": [], "next": None, "warning": "nothing feeds"})
    assert table.splitlines()[0] == "WARNING: nothing feeds"


# ------------------------------------------------ a configuration or a database it cannot use
EVERY_RUNNER = [
    ("halite.jobs", (), {}),
    ("halite.jobs", (), {"live": True}),
    ("halite.job", (JID,), {}),
    ("halite.activity", (), {}),
    ("halite.timeline", (), {}),
    ("halite.kill", (JID,), {}),
    ("halite.audit", (), {}),
    ("halite.minions", (), {}),
    ("halite.minion", ("m1",), {}),
    ("halite.states", (), {}),
    ("halite.state", ("conf1",), {}),
]


def every_runner_answers(opts):
    """Each runner's answer and the retcode salt-run would exit with."""
    runners = salt.loader.runner(opts)
    context = runners.pack["__context__"]  # what salt-run reads the exit code from
    answers = {}
    for name, args, kwargs in EVERY_RUNNER:
        runners[name].__globals__["__user__"] = opts["user"]
        context.pop("retcode", None)
        answer = runners[name](*args, **kwargs)
        answers[(name, tuple(kwargs))] = (answer, dict(context))
    return answers


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"request_timeout": float("inf")}, "halite:request_timeout must be a finite number"),
        ({"request_timeout": float("nan")}, "halite:request_timeout must be a finite number"),
        ({"read_timeout": float("nan")}, "halite:read_timeout must be a finite number"),
        ({"system_functions": 5}, "halite:system_functions must be a list"),
        ({"system_functions": None}, "halite:system_functions must be a list"),
        ({"db_url": "not a url"}, "halite:db_url is not a database URL"),
        ({"db_url": "mysql://x/y"}, "halite:db_url uses mysql"),
        ({"flush_interval": -1}, "halite:flush_interval must be >= 0"),
    ],
)
def test_a_bad_option_is_an_error_of_every_runner_never_a_traceback(tmp_path, section, says):
    opts = master_opts(tmp_path, "halite")
    opts["halite"] = section
    for call, (answer, context) in every_runner_answers(opts).items():
        assert says in answer["error"], call
        assert answer["retcode"] == 1 and context["retcode"] == 1, call


def test_an_unreachable_postgresql_is_a_clear_error_of_every_runner(tmp_path):
    opts = master_opts(tmp_path, "halite")
    # Nothing listens there: the connection is refused at once.
    opts["halite"] = {"db_url": f"postgresql+psycopg://halite@127.0.0.1:{free_port()}/halite"}
    answers = every_runner_answers(opts)
    for call, (answer, context) in answers.items():
        assert answer["retcode"] == 1 and context["retcode"] == 1, call
    readers = {call: answer for call, (answer, _) in answers.items() if call[1] != ("live",)}
    for call, answer in readers.items():
        assert answer["error"].startswith("halite's database cannot be used: "), call
        assert "Connection refused" in answer["error"], call
        assert "[SQL:" not in answer["error"], call
    # live=True reads no database; here no master answers either, which it says.
    live, _ = answers[("halite.jobs", ("live",))]
    assert "the salt master could not be contacted" in live["error"].lower()


def test_a_database_path_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    opts = master_opts(tmp_path, "halite")
    opts["halite"] = {"db_url": f"sqlite:///{tmp_path}/a_file/halite.db"}
    for call, (answer, _) in every_runner_answers(opts).items():
        if call[1] != ("live",):
            assert "a_file" in answer["error"] and answer["retcode"] == 1, call


# ------------------------------------------------ the arguments are the filter's
def test_the_jobs_runner_takes_the_filters_arguments(tmp_path):
    """halite.jobs takes the fields of halite_core.api.JobsQuery (the HTTP API's query
    parameters), as salt-run gives them (text), with Salt's __pub_* keys left out."""
    opts = master_opts(tmp_path, "halite")
    with_one_job(opts)
    runners = runners_of(opts)
    context = runners.pack["__context__"]
    page = runners["halite.jobs"](fun="test.*", limit="1", include_system="false",
                                  __pub_user="root", __pub_jid=JID)  # fmt: skip
    assert [job["jid"] for job in page["jobs"]] == [JID]
    assert "retcode" not in context
    for kwargs, says in (
        ({"colour": "red"}, "unknown argument 'colour'; known: limit, fun, target"),
        ({"limit": "1;2"}, "limit must be a number from 1 to 500"),
        ({"user": [1, 2]}, "user must be text, not list"),
    ):
        context.pop("retcode", None)
        answer = runners["halite.jobs"](**kwargs)
        assert says in answer["error"], kwargs
        assert answer["retcode"] == 1 and context["retcode"] == 1, kwargs


@pytest.mark.parametrize(("runner", "model"), [("halite.jobs", "JobsQuery"),
                                                ("halite.audit", "AuditFilter"),
                                                ("halite.minions", "MinionsQuery"),
                                                ("halite.minion", "MinionQuery"),
                                                ("halite.states", "StatesQuery"),
                                                ("halite.state", "StateQuery")])  # fmt: skip
def test_each_argument_is_documented_where_salt_shows_the_runner(tmp_path, runner, model):
    from halite_core import api

    documented = salt.loader.runner(master_opts(tmp_path, "halite"))[runner].__doc__
    assert "CLI Example:" in documented and "ARGUMENTS" not in documented
    for name, field in getattr(api, model).model_fields.items():
        assert f"\n    {name}\n        " in documented, name
        assert field.description.split()[0] in documented, name


def test_a_denial_is_said_as_one_not_as_an_unusable_database(tmp_path):
    """A denial is a PermissionError (an OSError) too: it must not read as a database
    that cannot be used."""
    opts = master_opts(tmp_path, "halite")
    opts["halite"] = {"users": {"vic": ["viewer"]}}
    with_one_job(opts)
    runners = salt.loader.runner(opts)
    runners["halite.audit"].__globals__["__user__"] = "vic"
    answer = runners["halite.audit"]()
    assert answer["error"] == "permission denied: 'vic' lacks view:audit:*"
    assert answer["retcode"] == 1


def test_the_fleet_runners_answer_through_the_loader(tmp_path):
    opts = master_opts(tmp_path, "halite")
    with_one_job(opts)
    runners = runners_of(opts)
    context = runners.pack["__context__"]
    page = runners["halite.minions"](failing="false", __pub_user="root")
    assert [m["minion"] for m in page["minions"]] == ["m1"]
    history = runners["halite.minion"]("m1", fun="test.*")
    assert [j["jid"] for j in history["jobs"]] == [JID]
    assert runners["halite.minion"](id="m1")["minion"] == "m1"
    assert runners["halite.states"](window="7d")["states"] == []
    assert runners["halite.state"]("conf1")["runs"] == []
    assert "retcode" not in context
    answer = runners["halite.minion"]("nobody")
    assert answer == {"error": "no minion 'nobody' in the index", "retcode": 1}
    assert context["retcode"] == 1
    answer = runners["halite.states"](window="2d")
    assert "window must be one of 1h, 4h, 24h, 7d" in answer["error"]
