"""halite's runners as Salt's loader gives them to salt-run: what they say about the index."""

import logging

import pytest
import salt.loader

from halite_core.config import Settings
from halite_core.jobcache import JobStore
from tests.test_returner_loader import master_opts

JID = "20261128120000000001"


def runners_of(opts):
    runners = salt.loader.runner(opts)
    for name in ("halite.jobs", "halite.job", "halite.activity", "halite.timeline"):
        # What Salt's runner client injects at call time: the caller (the master's own
        # user, an admin).
        runners[name].__globals__["__user__"] = opts["user"]
    return runners


def with_one_job(opts):
    store = JobStore(Settings.from_opts(opts))
    store.save_load(JID, {"fun": "test.ping", "tgt": "m1", "user": "root", "arg": []}, ["m1"])
    store.db.dispose()


def calls(runners):
    return {
        "jobs": runners["halite.jobs"](),
        "job": runners["halite.job"](JID),
        "activity": runners["halite.activity"](),
        "timeline": runners["halite.timeline"](),
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
