"""The returner as Salt loads and calls it, side by side with Salt's own local_cache."""

import copy
import datetime as dt
import gc
import json
import time
import types

import pytest
import salt.config
import salt.loader
import salt.utils.job
from sqlalchemy import select

from halite_core.config import Settings
from halite_core.jobcache import flush_all, get_store
from halite_core.store.schema import jobs_index
from tests.helpers import save_load

STATES = {
    "file_|-motd_|-/etc/motd_|-managed": {
        "result": True,
        "comment": "File updated",
        "changes": {"diff": "New file"},
        "duration": 4.2,
        "__run_num__": 0,
        "__sls__": "motd",
    },
    "cmd_|-broken_|-false_|-run": {
        "result": False,
        "comment": "Command false run",
        "changes": {},
        "duration": 8.1,
        "__run_num__": 1,
        "__sls__": "broken",
    },
}


def master_opts(root, job_cache):
    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(
        root_dir=str(root),
        cachedir=str(root / "cache"),
        pki_dir=str(root / "pki"),
        sock_dir=str(root / "sock"),
        extension_modules=str(root / "extmods"),
        master_job_cache=job_cache,
        id="loadertest_master",
        job_cache_store_endtime=True,
        __role="master",  # as a master's own options say (Salt's key store reads it)
    )
    (root / "pki" / "minions").mkdir(parents=True)
    return opts


class Master:
    """Just enough of a master to drive Salt's job-cache code paths the way the master does."""

    def __init__(self, root, job_cache):
        self.opts = master_opts(root, job_cache)
        self.returners = salt.loader.returners(self.opts, {})
        self.mminion = types.SimpleNamespace(returners=self.returners)
        self.cache = job_cache

    def call(self, name, *args, **kwargs):
        return self.returners[f"{self.cache}.{name}"](*args, **kwargs)

    def publish(self, jid, fun, arg, minions, user="root"):
        load = {
            "jid": jid,
            "fun": fun,
            "arg": arg,
            "tgt": minions if len(minions) > 1 else minions[0],
            "tgt_type": "list" if len(minions) > 1 else "glob",
            "user": user,
            "ret": "",
            "kwargs": {"show_jid": False, "delimiter": ":"},
        }
        assert self.call("prep_jid", nocache=False, passed_jid=jid) == jid
        self.call("save_load", jid, load, minions)

    def minion_return(self, jid, minion, value, fun, retcode=0, **extra):
        load = {
            "cmd": "_return",
            "id": minion,
            "jid": jid,
            "fun": fun,
            "fun_args": [],
            "return": value,
            "retcode": retcode,
            "success": retcode == 0,
            **extra,
        }
        salt.utils.job.store_job(self.opts, load, mminion=self.mminion)

    def runner_job(self, jid, fun, kwargs):
        """A runner job as Salt's runner client stores it (salt/client/mixins.py), after
        the publish halite's engine writes first from ``salt/run/<jid>/new``."""
        data = {
            "fun": f"runner.{fun}",
            "fun_args": [kwargs],
            "jid": jid,
            "user": "root",
            "_stamp": "2026-11-28T12:00:00.000005",
            "return": {"answer": 42},
            "success": True,
        }
        if self.cache == "halite":
            publish = {"fun": data["fun"], "arg": [kwargs], "user": "root",
                       "tgt": self.opts["id"], "tgt_type": "list"}  # fmt: skip
            save_load(get_store(Settings.from_opts(self.opts)), jid, publish, [self.opts["id"]])
        load = {"id": self.opts["id"], "tgt": self.opts["id"], "jid": jid, "return": data}
        salt.utils.job.store_job(self.opts, load, event=None, mminion=self.mminion)


def run_jobs(master):
    base = "202611281200000000"
    master.publish(f"{base}01", "test.ping", [], ["m1", "m2"])
    master.minion_return(f"{base}01", "m1", True, "test.ping")
    master.minion_return(f"{base}01", "m2", True, "test.ping")
    master.publish(f"{base}02", "test.arg", ["a", {"__kwarg__": True, "k": "v"}], ["m1"])
    master.minion_return(f"{base}02", "m1", {"args": ["a"], "raw": b"\x00\x01"}, "test.arg")
    master.publish(f"{base}03", "state.apply", ["motd,broken"], ["m1", "m2"], user="sudo_alice")
    master.minion_return(f"{base}03", "m1", STATES, "state.apply", retcode=2, out="highstate")
    master.publish(f"{base}04", "saltutil.find_job", [f"{base}03"], ["m2"])
    master.minion_return(f"{base}04", "m2", {}, "saltutil.find_job")
    master.minion_return(f"{base}04", "m2", {"again": 1}, "saltutil.find_job")  # duplicate
    master.runner_job(f"{base}05", "test.arg", {"limit": 50})
    return [f"{base}0{n}" for n in range(1, 6)]


def without_endtime(jobs):
    return {jid: {k: v for k, v in job.items() if k != "EndTime"} for jid, job in jobs.items()}


@pytest.fixture
def masters(tmp_path):
    halite = Master(tmp_path / "halite", "halite")
    local = Master(tmp_path / "local", "local_cache")
    yield halite, local
    # Salt's jobs runner leaves MasterMinions behind; collected during a later test they
    # reset the shared loader context under that test's feet.
    gc.collect()


def test_salt_loads_the_returner_from_the_entry_point(masters):
    halite, _ = masters
    assert "halite.returner" in halite.returners
    assert "halite.event_return" in halite.returners


def test_same_answers_as_local_cache(masters):
    halite, local = masters
    jids = run_jobs(halite)
    assert run_jobs(local) == jids
    ours, theirs = halite.call("get_jids"), local.call("get_jids")
    # EndTime is when the last return was stored: the two caches ran moments apart.
    assert {jid: "EndTime" in job for jid, job in ours.items()} == {
        jid: "EndTime" in job for jid, job in theirs.items()
    }
    assert without_endtime(ours) == without_endtime(theirs)
    for count in (1, 2, 10):
        assert halite.call("get_jids_filter", count) == local.call("get_jids_filter", count)
    assert halite.call("get_jids_filter", 10, False) == local.call("get_jids_filter", 10, False)
    for jid in jids:
        if jid != jids[-1]:
            # A runner job's load: local_cache holds Salt's copy of the whole return, halite
            # its publish; jobs.list_job shows the same of both (test_salt_jobs_runner_agrees).
            assert halite.call("get_load", jid) == local.call("get_load", jid), jid
        assert halite.call("get_jid", jid) == local.call("get_jid", jid), jid
    assert halite.call("get_load", "20000101000000000000") == {}
    assert halite.call("get_jid", "20000101000000000000") == {}


def test_salt_jobs_runner_agrees(masters):
    halite, local = masters
    jids = run_jobs(halite)
    run_jobs(local)
    answers = {}
    for master in masters:
        runner = salt.loader.runner(master.opts)
        answers[master.cache] = {
            "list_jobs": runner["jobs.list_jobs"](),
            "list_jobs_user": runner["jobs.list_jobs"](search_function="state.*"),
            "list_jobs_filter": runner["jobs.list_jobs_filter"](count=2),
            "lookups": [runner["jobs.lookup_jid"](jid, missing=True) for jid in jids],
            "list_job": [runner["jobs.list_job"](jid) for jid in jids],
        }
    halite_answers, local_answers = answers["halite"], answers["local_cache"]
    for key in ("list_jobs", "list_jobs_user"):
        assert without_endtime(halite_answers[key]) == without_endtime(local_answers[key]), key
    for key in ("list_jobs_filter", "lookups"):
        assert halite_answers[key] == local_answers[key], key
    for ours, theirs in zip(halite_answers["list_job"], local_answers["list_job"], strict=True):
        assert set(ours) == set(theirs)
        assert without_endtime({0: ours}) == without_endtime({0: theirs})
    assert halite_answers["lookups"][2]["data"]["m2"] == "Minion did not return"


def test_endtime_and_retention(masters):
    halite, _ = masters
    jids = run_jobs(halite)
    assert halite.call("get_endtime", jids[0]).startswith("2026, ")
    assert halite.call("get_endtime", "20000101000000000000") is False
    flush_all()
    halite.opts["keep_jobs_seconds"] = 1
    time.sleep(1.5)  # jobs age by when they were written, as in local_cache
    halite.call("clean_old_jobs")  # in a thread of its own: never holds up Salt's maintenance
    deadline = time.monotonic() + 30
    while set(halite.call("get_jids")) != {jids[2]} and time.monotonic() < deadline:
        time.sleep(0.1)
    # The state.apply still waits for m2: a running job is never deleted.
    assert set(halite.call("get_jids")) == {jids[2]}


def test_standalone_return_with_jid_req_gets_a_job(masters):
    halite, _ = masters
    halite.call(
        "returner",
        {"id": "m9", "jid": "req", "fun": "test.echo", "fun_args": ["hi"], "return": "hi"},
    )
    jobs = halite.call("get_jids")
    assert len(jobs) == 1
    ((jid, job),) = jobs.items()
    assert job["Function"] == "test.echo" and job["Target"] == "m9"
    assert halite.call("get_jid", jid) == {"m9": {"return": "hi"}}


def test_req_job_through_store_job_gets_its_load(masters):
    """salt-call's standalone return (jid req) through Salt's own store_job: a jid is
    reserved, then the return's load fills that row. (local_cache cannot list such a job:
    its get_jids fails on the missing .minions.p.)"""
    halite, _ = masters
    load = {"id": "m9", "jid": "req", "fun": "test.echo", "fun_args": ["hi"], "return": "hi",
            "retcode": 0}  # fmt: skip
    salt.utils.job.store_job(halite.opts, load, mminion=halite.mminion)
    ((jid, job),) = halite.call("get_jids").items()
    assert (job["Function"], job["Target"], job["Arguments"]) == ("test.echo", "m9", ["hi"])
    assert halite.call("get_load", jid)["fun"] == "test.echo"
    assert halite.call("get_jid", jid) == {"m9": {"return": "hi", "retcode": 0}}


def test_a_runners_store_job_keeps_the_engines_publish(masters):
    """Salt's RunnerClient hands the runner's return to store_job as a load with a target;
    the publish the engine indexed from salt/run/<jid>/new (arguments) stays."""
    from halite_core.jobcache import LoadItem

    halite, _ = masters
    jid = "20261128120000000077"
    store = get_store(Settings.from_opts(halite.opts))
    args = ["orch.deploy", {"__kwarg__": True, "pillar": {"v": 1}}]
    publish = {"fun": "runner.state.orchestrate", "user": "sudo_alice", "tgt": "m_master",
               "tgt_type": "list", "arg": args}  # fmt: skip
    store.apply_items([LoadItem(jid, publish, ["m_master"], only_new=True)])
    data = {"fun": "runner.state.orchestrate", "jid": jid, "user": "sudo_alice",
            "fun_args": ["orch.deploy", {"pillar": {"v": 1}}], "success": True,
            "return": {"data": {"m_master": {}}, "outputter": "highstate",
                       "retcode": 0}}  # fmt: skip
    salt.utils.job.store_job(
        halite.opts, {"id": "m_master", "tgt": "m_master", "jid": jid, "return": data},
        mminion=halite.mminion,
    )  # fmt: skip
    store.flush()
    with store.db.read() as conn:
        row = conn.execute(
            select(jobs_index.c.arguments, jobs_index.c.kwargs, jobs_index.c.target_type)
            .where(jobs_index.c.jid == jid)
        ).one()  # fmt: skip
    assert tuple(row) == (["orch.deploy"], {"pillar": {"v": 1}}, "list")
    assert halite.call("get_jid", jid)["m_master"]["return"]["fun"] == "runner.state.orchestrate"


def test_an_index_that_cannot_be_opened_spools_where_replay_looks(tmp_path):
    """A halite: section the returner cannot use (here an unsupported database) must not
    break Salt's job path: the write goes to the configured spool_dir."""
    from halite_core.durability.spool import Spool

    master = Master(tmp_path / "broken", "halite")
    spool_dir = tmp_path / "my-spool"
    master.opts["halite"] = {"db_url": "mysql://salt@localhost/salt", "spool_dir": str(spool_dir)}
    master.call("returner", {"id": "m1", "jid": "20261128120000000001", "fun": "test.ping",
                             "return": True})  # fmt: skip
    assert len(Spool(str(spool_dir)).pending()) == 1


def test_event_return_indexes_a_batch(masters):
    halite, _ = masters
    jid = "20261128120000000042"
    halite.call(
        "event_return",
        [
            {
                "tag": f"salt/job/{jid}/new",
                "data": {
                    "jid": jid,
                    "fun": "test.ping",
                    "arg": [],
                    "tgt": "*",
                    "tgt_type": "glob",
                    "user": "root",
                    "minions": ["m1"],
                },
            },
            {
                "tag": f"salt/job/{jid}/ret/m1",
                "data": {
                    "jid": jid,
                    "id": "m1",
                    "return": True,
                    "retcode": 0,
                    "success": True,
                    "fun": "test.ping",
                    "fun_args": [],
                    "_stamp": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(),
                },
            },
        ],
    )
    assert halite.call("get_jid", jid) == {"m1": {"return": True, "retcode": 0, "success": True}}
    assert halite.call("get_load", jid)["Minions"] == ["m1"]


def test_returner_never_raises_when_the_database_is_unusable(tmp_path):
    master = Master(tmp_path / "broken", "halite")
    (tmp_path / "blocker").write_text("a file where the database directory should be")
    master.opts["halite"] = {"db_url": f"sqlite:///{tmp_path}/blocker/halite.db"}
    master.publish("20261128120000000077", "test.ping", [], ["m1"])
    master.minion_return("20261128120000000077", "m1", True, "test.ping")
    spool = tmp_path / "broken" / "cache" / "halite" / "spool"
    # Accepted writes read back at once, from the journal, whatever the database's state.
    assert master.call("get_jid", "20261128120000000077") == {
        "m1": {"return": True, "retcode": 0, "success": True}
    }
    flush_all()  # the writer thread meets the unusable database: the batch is spooled
    spooled = [json.loads(path.read_text())["args"][0] for path in spool.glob("*.json")]
    assert [len(lines) for lines in spooled] == [3]  # load, return and end time
    # The database comes back (here: configured where it can live); the spool replays.
    master.opts["halite"] = {"db_url": f"sqlite:///{tmp_path}/good/halite.db"}
    master.publish("20261128120000000078", "test.ping", [], ["m1"])
    flush_all()  # commits the new batch, then replays the spool
    # The first database's store is still in this process (a master restarts to change its
    # database), and its own replay may hold the spool's file a moment: try again then.
    deadline = time.monotonic() + 20
    while list(spool.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
        flush_all()
    assert list(spool.glob("*.json")) == []
    assert master.call("get_jid", "20261128120000000077") == {
        "m1": {"return": True, "retcode": 0, "success": True}
    }
    from halite_core.store.db import get_database

    def stored():
        with get_database(f"sqlite:///{tmp_path}/good/halite.db").read() as conn:
            return len(conn.execute(select(jobs_index.c.jid)).all())

    # A replay takes the spool's file before it commits what it held: wait for the commit.
    while stored() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        flush_all()
    assert stored() == 2


def test_local_time_jids_of_older_salt_are_read_in_the_masters_zone(tmp_path, monkeypatch):
    # Salt before 3008 knows utc_jid and writes JIDs in the master's local time unless it is
    # set; this Salt is newer, so stand in for the older one through its defaults.
    older_defaults = {**salt.config.DEFAULT_MASTER_OPTS, "utc_jid": False}
    monkeypatch.setattr(salt.config, "DEFAULT_MASTER_OPTS", older_defaults)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        local = Master(tmp_path / "local", "halite")
        local.publish("20260115120000000000", "test.ping", [], ["m1"])  # winter: UTC-5
        utc = Master(tmp_path / "utc", "halite")
        utc.opts["utc_jid"] = True
        utc.publish("20260115120000000001", "test.ping", [], ["m1"])
        flush_all()
        starts = {}
        for master in (local, utc):
            store = get_store(Settings.from_opts(master.opts))
            with store.db.read() as conn:
                starts.update(conn.execute(select(jobs_index.c.jid, jobs_index.c.start_time)).all())
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert starts["20260115120000000000"] == dt.datetime(2026, 1, 15, 17, 0, tzinfo=dt.timezone.utc)
    assert starts["20260115120000000001"] == dt.datetime(
        2026, 1, 15, 12, 0, 0, 1, tzinfo=dt.timezone.utc
    )
