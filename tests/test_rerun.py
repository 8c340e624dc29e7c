"""halite.rerun's core: which minions, which arguments, when a job cannot be re-run, who may,
and what the index and the audit log hold afterwards."""

import pytest

from halite_core import audit, rerun
from halite_core.api import QueryError, RerunArguments, UnknownJob
from halite_core.durability.journal import item_from_line, item_to_line
from halite_core.permissions import Denied, Policy
from halite_core.queries import job_detail
from halite_core.service import Service
from halite_core.store.ops import RerunItem
from tests.helpers import publish, ret, save_return

JID = "20261201100000000001"
NEW = "20261201100500000001"


def _failing_job(store, jid=JID, fun="state.apply", arg=("web",), **extra):
    """A job on four minions: ok passed, bad failed, gone never answered, cut was killed."""
    publish(store, jid, fun=fun, minions=["ok", "bad", "gone", "cut"], arg=arg, **extra)
    save_return(store, ret(jid, "ok", fun=fun))
    save_return(store, ret(jid, "bad", fun=fun, retcode=1, success=False))
    store.mark_killed(jid, ["cut"])
    from halite_core.store.ops import NoReturnItem, utcnow

    store.apply_items([NoReturnItem(jid, ["gone"], utcnow())])
    store.flush()


def _job(store, jid=JID):
    with store.db.read() as conn:
        return rerun.find(conn, jid)


# ---------------------------------------------------------------------- the plan
@pytest.mark.parametrize(
    "minions, selection, chosen",
    [
        ("failed", "failed", ["bad", "gone"]),  # not the killed one
        ("cut", "minions", ["cut"]),
        ("no_return", "no_return", ["gone"]),
        ("all", "all", ["bad", "cut", "gone", "ok"]),
        ("ok,bad", "minions", ["ok", "bad"]),
        (["gone"], "minions", ["gone"]),
        ("ok", "minions", ["ok"]),
    ],
)
def test_the_minions_a_rerun_publishes_to(store, minions, selection, chosen):
    _failing_job(store)
    choice = RerunArguments.parse({"minions": minions}).minions
    plan = rerun.plan(_job(store), choice)
    assert (plan.selection, plan.minions) == (selection, chosen)


def test_the_default_is_the_failed_minions_and_the_arguments_are_as_published(store):
    _failing_job(store, arg=("web", {"pillar": {"x": 1}, "test": True, "__kwarg__": True}))
    plan = rerun.plan(_job(store), RerunArguments.parse({}).minions)
    assert plan.function == "state.apply"
    assert plan.arguments == ["web"]
    assert plan.kwargs == {"pillar": {"x": 1}, "test": True}
    assert plan.minions == ["bad", "gone"]


def test_arguments_of_types_json_lacks_are_published_as_they_were(store):
    _failing_job(store, fun="test.arg", arg=(b"\x00raw", {"n": 2**70, "__kwarg__": True}))
    plan = rerun.plan(_job(store))
    assert plan.arguments == [b"\x00raw"]
    assert plan.kwargs == {"n": 2**70}


@pytest.mark.parametrize(
    "minions, message",
    [
        ("nosuch", "minion nosuch did not take part in job"),
        ("ok,nosuch,other", "minions nosuch, other did not take part"),
    ],
)
def test_minions_not_of_the_job_are_refused(store, minions, message):
    _failing_job(store)
    with pytest.raises(QueryError, match=message):
        rerun.plan(_job(store), RerunArguments.parse({"minions": minions}).minions)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"a": 1}, "must be one of failed, no_return, all or minion ids"),
        ("a,,b", "an empty minion id"),
        ([], "an empty minion id"),
        ([True], "a minion id must be text"),
        ("x" * 256, "at most 255 characters"),
    ],
)
def test_a_bad_minions_argument_is_a_clear_error(value, message):
    with pytest.raises(QueryError, match=message):
        RerunArguments.parse({"minions": value})


def test_unknown_and_malformed_jobs(store):
    with store.db.read() as conn:
        with pytest.raises(UnknownJob, match="no job with jid 20000101000000000000"):
            rerun.find(conn, "20000101000000000000")
        with pytest.raises(QueryError, match="is not a Salt job id"):
            rerun.find(conn, "2026; drop table")


def test_a_job_still_running_is_refused(store):
    publish(store, JID, fun="test.sleep", minions=["a", "b"])
    save_return(store, ret(JID, "a", fun="test.sleep", retcode=1))
    with pytest.raises(rerun.NotRerunnable, match=r"still running \(1 of 2 minions"):
        rerun.plan(_job(store))


def test_a_job_without_failures_has_nothing_to_rerun_on_failed(store):
    publish(store, JID, fun="test.ping", minions=["a"])
    save_return(store, ret(JID, "a", fun="test.ping"))
    with pytest.raises(rerun.NotRerunnable, match="nothing to re-run .minions=all runs it"):
        rerun.plan(_job(store))
    assert rerun.plan(_job(store), "all").minions == ["a"]


@pytest.mark.parametrize("fun", ["runner.jobs.list_jobs", "wheel.key.list_all"])
def test_runner_and_wheel_jobs_are_refused(store, fun):
    publish(store, JID, fun=fun, minions=["master"])
    save_return(store, ret(JID, "master", fun=fun, retcode=1))
    with pytest.raises(rerun.NotRerunnable, match="a runner or wheel job cannot be re-run"):
        rerun.plan(_job(store))


def test_a_job_of_several_functions_is_refused(store):
    publish(store, JID, fun=["test.ping", "test.echo"], minions=["a"], arg=[[], ["x"]])
    save_return(store, ret(JID, "a", fun=["test.ping", "test.echo"], retcode=1))
    with pytest.raises(rerun.NotRerunnable, match="runs several functions"):
        rerun.plan(_job(store))


@pytest.mark.parametrize(
    "stored, why",
    [
        ({"__halite_type__": "truncated", "size": 9, "limit": 1, "preview": "[]"}, "size limit"),
        (["a", {"__halite_type__": "object", "repr": "<x>"}], "kept as text"),
        (["a", {"password": audit.REDACTED}], "redacted"),
    ],
)
def test_arguments_not_stored_as_published_are_refused(store, stored, why):
    from sqlalchemy import update

    from halite_core.store.schema import jobs_index

    _failing_job(store)
    with store.db.write() as conn:
        conn.execute(update(jobs_index).where(jobs_index.c.jid == JID).values(arguments=stored))
    with pytest.raises(rerun.NotRerunnable, match=why):
        rerun.plan(_job(store))


# ---------------------------------------------------------------------- the service
class Publisher:
    """Stands in for Salt's publish (the integration tests use the real one): records the
    plans, and indexes the new job's publish load as the master's returner would."""

    def __init__(self, store, jid=NEW, minions=None, error=None):
        self.store, self.jid, self.minions, self.error = store, jid, minions, error
        self.plans = []

    def __call__(self, plan, user):
        self.plans.append((plan, user))
        if self.error is not None:
            raise self.error
        minions = plan.minions if self.minions is None else self.minions
        publish(self.store, self.jid, fun=plan.function, minions=minions, user=user)
        return {"jid": self.jid, "minions": minions}


POLICY = Policy.from_config(
    {"stater": ["view:job:*", "run:job:state.*"]},
    {"sam": ["stater"], "vic": ["viewer"], "opal": ["operator"]},
    master_user="salt",
)


def _service(store, publisher):
    return Service(store, POLICY, "m1", send_rerun=publisher)


def _audited(store):
    store.flush()
    with store.db.read() as conn:
        return audit.list_entries(conn, action="rerun")["entries"]


def test_a_rerun_publishes_as_the_caller_links_both_jobs_and_is_audited(store):
    _failing_job(store)
    publisher = Publisher(store)
    answer = _service(store, publisher).rerun("sam", JID)
    assert answer == {
        "jid": NEW, "rerun_of": JID, "function": "state.apply", "selection": "failed",
        "requested": ["bad", "gone"], "minions": ["bad", "gone"], "missing": [],
    }  # fmt: skip
    ((plan, user),) = publisher.plans
    assert user == "sam"
    assert plan.arguments == ["web"]
    with store.db.read() as conn:
        assert job_detail(conn, NEW)["rerun_of"] == JID
        assert job_detail(conn, JID)["reruns"] == [NEW]
        assert job_detail(conn, JID)["rerun_of"] is None
    (entry,) = _audited(store)
    assert (entry["user"], entry["decision"], entry["jid"]) == ("sam", "allow", JID)
    assert entry["outcome"]["new_jid"] == NEW
    assert entry["outcome"]["minions"] == ["bad", "gone"]


def test_the_link_waits_for_a_publish_committed_after_it(store):
    """The re-run's publish load is journalled by Salt's worker, the link by the caller:
    the link may reach the database first."""
    _failing_job(store)
    store.mark_rerun(NEW, JID)
    store.flush()
    publish(store, NEW, fun="state.apply", minions=["bad"])
    with store.db.read() as conn:
        detail = job_detail(conn, NEW)
    assert (detail["rerun_of"], detail["function"], detail["status"]) == (
        JID, "state.apply", "running"
    )  # fmt: skip


def test_minions_the_master_has_no_key_for_are_missing(store):
    _failing_job(store)
    answer = _service(store, Publisher(store, minions=["bad"])).rerun("sam", JID, minions="all")
    assert (answer["minions"], answer["missing"]) == (["bad"], ["cut", "gone", "ok"])


@pytest.mark.parametrize(
    "user, fun, needed",
    [
        ("vic", "state.apply", "run:job:*"),  # a viewer may re-run nothing
        ("opal", "state.apply", "run:job:*"),  # nor an operator, who may kill
        ("sam", "cmd.run", "run:job:cmd.run"),  # run:job:state.* is not cmd.run
        (None, "state.apply", "run:job:*"),
    ],
)
def test_who_may_not_rerun_is_denied_and_audited(store, user, fun, needed):
    _failing_job(store, fun=fun)
    publisher = Publisher(store)
    with pytest.raises(Denied, match=f"lacks {needed}"):
        _service(store, publisher).rerun(user, JID)
    assert publisher.plans == []
    (entry,) = _audited(store)
    assert (entry["user"], entry["decision"], entry["jid"]) == (user, "deny", JID)


def test_a_job_out_of_view_answers_as_an_unknown_one(store):
    policy = Policy.from_config({"tests": ["view:job:test.*", "run:job:*"]}, {"tess": ["tests"]})
    _failing_job(store)
    service = Service(store, policy, "m1", send_rerun=Publisher(store))
    with pytest.raises(UnknownJob, match=f"no job with jid {JID}"):
        service.rerun("tess", JID)
    (entry,) = _audited(store)
    assert entry["decision"] == "deny" and entry["outcome"]["lacks"] == "view:job:state.apply"


def test_refusals_and_failed_publishes_are_audited(store):
    publish(store, JID, fun="state.apply", minions=["a"])  # still running
    service = _service(store, Publisher(store, error=RuntimeError("publish refused")))
    with pytest.raises(rerun.NotRerunnable):
        service.rerun("sam", JID)
    save_return(store, ret(JID, "a", fun="state.apply", retcode=2))
    with pytest.raises(rerun.PublishFailed, match=f"did not take the re-run of job {JID}: publish"):
        service.rerun("sam", JID)
    with pytest.raises(QueryError, match="unknown argument 'target'"):
        service.rerun("sam", JID, target="*")
    still, failed, bad = _audited(store)[::-1]
    assert "still running" in still["outcome"]["error"]
    assert failed["outcome"]["error"] == "RuntimeError: publish refused"  # Salt's, unwrapped
    assert failed["outcome"]["requested"] == ["a"]
    assert "unknown argument" in bad["outcome"]["error"]
    assert {still["decision"], failed["decision"], bad["decision"]} == {"allow"}


def test_the_detail_says_who_may_rerun(store):
    _failing_job(store)
    service = _service(store, Publisher(store))
    assert service.job("sam", JID)["may_rerun"] is True
    assert service.job("vic", JID)["may_rerun"] is False
    assert service.job("salt", JID)["may_rerun"] is True  # the master's user is admin


def test_the_link_is_journalled_like_any_write():
    item = RerunItem(NEW, JID)
    assert item_from_line(item_to_line(item)) == item


def test_the_detail_offers_no_rerun_of_a_runner_job(store):
    publish(store, JID, fun="runner.jobs.list_jobs", minions=["master"])
    save_return(store, ret(JID, "master", fun="runner.jobs.list_jobs"))
    assert _service(store, Publisher(store)).job("salt", JID)["may_rerun"] is False


def test_a_job_published_whose_link_fails_is_answered_as_published(store, monkeypatch):
    """The publish is out: a failure to journal the link must not say the re-run failed
    (a retry would publish it twice); the audit entry says what was lost."""
    _failing_job(store)

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "mark_rerun", full)
    answer = _service(store, Publisher(store)).rerun("sam", JID)
    assert answer["jid"] == NEW
    (entry,) = _audited(store)
    assert entry["outcome"]["new_jid"] == NEW
    assert "No space left" in entry["outcome"]["link_error"]


def test_a_body_field_named_jid_does_not_stand_for_the_job(store):
    _failing_job(store)
    with pytest.raises(QueryError, match="unknown argument 'jid'"):
        _service(store, Publisher(store)).rerun("sam", JID, {"jid": "20000101000000000000"})
    (entry,) = _audited(store)
    assert entry["arguments"]["jid"] == JID


def test_a_minion_the_job_never_targeted_is_never_published_to(store):
    """Salt takes a return for any jid from any minion: one that was not targeted must not
    receive the job, and its arguments, through a re-run."""
    _failing_job(store)
    save_return(store, ret(JID, "intruder", fun="state.apply", retcode=1))
    assert "intruder" not in rerun.plan(_job(store), "all").minions
    assert "intruder" not in rerun.plan(_job(store)).minions
    with pytest.raises(QueryError, match="minion intruder did not take part"):
        rerun.plan(_job(store), ["intruder"])


def test_a_job_known_from_its_returns_only_is_refused(store):
    save_return(store, ret(JID, "m1", fun="cmd.run", fun_args=["curl x | sh"], retcode=1))
    with pytest.raises(rerun.NotRerunnable, match="holds no publish of job"):
        rerun.plan(_job(store), "all")


def test_the_returner_and_publish_options_are_kept(store):
    kwargs = {"ret_config": "alt", "ret_kwargs": {"a": 1}, "module_executors": ["sudo"],
              "metadata": {"ticket": "OPS-1"}, "show_jid": True}  # fmt: skip
    _failing_job(store, ret="mysql", kwargs=kwargs)
    plan = rerun.plan(_job(store))
    assert plan.ret == "mysql"
    assert plan.options == {
        "ret_config": "alt", "ret_kwargs": {"a": 1}, "module_executors": ["sudo"],
        "metadata": {"ticket": "OPS-1", "halite_rerun_of": JID},
    }  # fmt: skip


def test_a_link_replayed_after_retention_brings_no_job_back(store):
    import datetime as dt

    from halite_core.store.schema import jobs_index

    _failing_job(store)
    assert store.clean_old_jobs(60, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    store.apply_items([RerunItem(JID, "20261201090000000001")])
    with store.db.read() as conn:
        assert conn.execute(jobs_index.select().where(jobs_index.c.jid == JID)).first() is None
