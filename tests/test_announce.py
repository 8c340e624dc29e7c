"""Completion events (halite_core.announce): a job is announced once it is complete, once,
with its summary; bookkeeping jobs and other masters' jobs are not; a restarted engine
announces what completed meanwhile and nothing twice."""

import datetime as dt

import pytest
from sqlalchemy import select, update

from halite_core.announce import Announcer, EventOptions
from halite_core.errors import ConfigError
from halite_core.jobcache import NoReturnItem
from halite_core.store.schema import jobs_index
from tests.helpers import publish, ret, save_return
from tests.test_fleet import state_ret

JID = "20261201100000000001"


class Bus:
    """What the engine's bus was asked to fire."""

    def __init__(self):
        self.fired = []

    def __call__(self, data, tag):
        self.fired.append((tag, data))


def announcer(store, bus, **options):
    return Announcer(store, EventOptions(**{"interval": 0.05, **options}), bus)


def test_a_complete_job_is_announced_once_with_its_summary(store):
    bus = Bus()
    events = announcer(store, bus)
    publish(store, JID, fun="state.apply", minions=("web1", "web2", "web3"))
    assert save_return(store, state_ret(JID, "web1", failing=[1, 3], changing=[2]))
    assert save_return(store, state_ret(JID, "web2", changing=[0]))
    assert events.tick(now=1.0) == 0  # web3 is pending: the job runs
    store.apply_items([NoReturnItem(JID, ["web3"], dt.datetime.now(dt.timezone.utc))])
    assert events.tick(now=2.0) == 1
    assert events.tick(now=3.0) == 0  # once
    [(tag, data)] = bus.fired
    assert tag == f"halite/job/{JID}/complete"
    assert data["result"] == "failed"
    assert (data["function"], data["user"], data["target_type"]) == ("state.apply", "root", "list")
    assert data["minions"] == {"targeted": 3, "returned": 2, "failed": 2, "no_return": 1,
                               "killed": 0}  # fmt: skip
    assert data["failed_minions"] == ["web1", "web3"]
    assert data["failed_minions_more"] == 0
    assert data["failing_states"] == {"web1": ["conf1", "conf3"]}
    assert data["start_time"].startswith("2026-12-01T10:00:00")
    assert data["end_time"] is not None


def test_a_restarted_engine_announces_what_completed_meanwhile_and_nothing_twice(store):
    bus = Bus()
    publish(store, JID, minions=("m1",))
    assert announcer(store, bus).tick(now=1.0) == 0
    assert save_return(store, ret(JID, "m1"))  # completed while no engine looked
    assert announcer(store, bus).tick(now=1.0) == 1
    assert announcer(store, bus).tick(now=1.0) == 0
    assert [data["result"] for _, data in bus.fired] == ["pass"]


def test_only_failed_and_the_tag_prefix(store):
    bus = Bus()
    events = announcer(store, bus, only_failed=True, tag_prefix="site/jobs")
    publish(store, JID, minions=("m1",))
    publish(store, "20261201100000000002", minions=("m1",))
    assert save_return(store, ret(JID, "m1", retcode=1, success=False))
    assert save_return(store, ret("20261201100000000002", "m1"))
    assert events.tick(now=1.0) == 1
    assert [tag for tag, _ in bus.fired] == [f"site/jobs/{JID}/complete"]
    with store.db.read() as conn:
        unmarked = conn.execute(select(jobs_index.c.jid).where(jobs_index.c.announced_at.is_(None)))
        assert unmarked.all() == []  # the passing job is marked too: never announced later


def test_bookkeeping_old_and_other_masters_jobs_are_marked_not_announced(store):
    bus = Bus()
    publish(store, JID, fun="saltutil.find_job", minions=("m1",))
    assert save_return(store, ret(JID, "m1", fun="saltutil.find_job"))
    old = "20261201100000000003"
    publish(store, old, minions=("m1",))
    assert save_return(store, ret(old, "m1"))
    theirs = "20261201100000000004"
    publish(store, theirs, minions=("m1",))
    assert save_return(store, ret(theirs, "m1"))
    with store.db.write() as conn:
        long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
        conn.execute(update(jobs_index).where(jobs_index.c.jid == old).values(end_time=long_ago))
        conn.execute(
            update(jobs_index).where(jobs_index.c.jid == theirs).values(master_id="another")
        )
    assert announcer(store, bus, max_age=3600).tick(now=1.0) == 0
    with store.db.read() as conn:
        marked = conn.execute(select(jobs_index.c.jid, jobs_index.c.announced_at)).all()
    assert {jid for jid, at in marked if at is not None} == {JID, old}  # not another's


def test_the_failed_minions_are_capped_and_counted(store):
    bus = Bus()
    minions = [f"m{i}" for i in range(5)]
    publish(store, JID, minions=minions)
    for name in minions:
        assert save_return(store, ret(JID, name, retcode=1, success=False))
    assert announcer(store, bus, cap=2).tick(now=1.0) == 1
    [(_, data)] = bus.fired
    assert (data["failed_minions"], data["failed_minions_more"]) == (["m0", "m1"], 3)


def test_a_bus_that_refuses_an_event_loses_that_one_only(store):
    fired = []

    def fire(data, tag):
        if data["jid"] == JID:
            raise OSError("the bus is gone")
        fired.append(tag)

    events = Announcer(store, EventOptions(interval=0.05), fire)
    for jid in (JID, "20261201100000000002"):
        publish(store, jid, minions=("m1",))
        assert save_return(store, ret(jid, "m1"))
    assert events.tick(now=1.0) == 1
    assert fired == ["halite/job/20261201100000000002/complete"]
    assert events.tick(now=2.0) == 0  # at most once: the refused one is not repeated


def test_events_run_at_most_every_interval(store):
    bus = Bus()
    events = announcer(store, bus, interval=10)
    assert events.tick(now=100.0) == 0
    publish(store, JID, minions=("m1",))
    assert save_return(store, ret(JID, "m1"))
    assert events.tick(now=105.0) == 0  # not looked yet
    assert events.tick(now=110.0) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yes", "events must be a mapping or false"),
        ({"tag": "x"}, "unknown events option(s): tag"),
        ({"only_failed": "no"}, "events.only_failed must be true or false"),
        ({"tag_prefix": "/"}, "events.tag_prefix must be a non-empty tag"),
        ({"interval": 0}, "events.interval must be at least 0.05"),
        ({"max_age": "1h"}, "events.max_age must be a number of seconds"),
        ({"cap": -1}, "events.cap must be a whole number"),
    ],
)
def test_bad_events_options_are_clear_errors(value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EventOptions.from_config(value)


def test_events_options_defaults_and_off():
    assert EventOptions.from_config(None) == EventOptions()
    assert EventOptions.from_config(False).enabled is False
    assert EventOptions.from_config({"tag_prefix": "site/jobs/", "cap": 5}).tag_prefix == (
        "site/jobs"
    )
