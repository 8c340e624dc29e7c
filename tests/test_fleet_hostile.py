"""Hostile tests of the fleet's tables and views: returns, duplicates, settles and kills in
every order and batching, odd ids and states, forged cursors, scoped users, retention and
the HTTP routes. A test marked xfail (strict) pins a bug found: it fails until it is fixed."""

import datetime as dt
import itertools
import random

import pytest
from sqlalchemy import select

from halite_core.api import QueryError
from halite_core.jobcache import KilledItem, NoReturnItem
from halite_core.permissions import Denied, Policy
from halite_core.service import Service
from halite_core.store.schema import job_returns, jobs_index, minion_status, state_results
from tests.conftest import postgresql_only
from tests.helpers import free_port, publish, ret, save_return
from tests.test_fleet import state_ret, states

UTC = dt.timezone.utc
JID = "20261201100000000000"
T0 = dt.datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC)


def at(seconds):
    return T0 + dt.timedelta(seconds=seconds)


# ---------------------------------------------------------------------- orders and batches
def job_snapshot(store, jid, prefix):
    """What the fleet keeps of ``jid`` and of the minions named ``prefix*``, with the
    prefix taken off: comparable between two jobs played in different orders."""
    with store.db.read() as conn:
        job = conn.execute(
            select(jobs_index.c.status, jobs_index.c.result, jobs_index.c.minions_targeted,
                   jobs_index.c.minions_returned, jobs_index.c.minions_failed,
                   jobs_index.c.minions_changed).where(jobs_index.c.jid == jid)
        ).one()  # fmt: skip
        returns = conn.execute(
            select(job_returns.c.minion, job_returns.c.state, job_returns.c.returned_at,
                   job_returns.c.states_failed, job_returns.c.states_changed)
            .where(job_returns.c.jid == jid).order_by(job_returns.c.minion)
        ).all()  # fmt: skip
        states = conn.execute(
            select(state_results.c.minion, state_results.c.state_id, state_results.c.result,
                   state_results.c.returned_at)
            .where(state_results.c.jid == jid)
            .order_by(state_results.c.minion, state_results.c.state_key)
        ).all()  # fmt: skip
        minions = conn.execute(
            select(minion_status.c.minion, minion_status.c.state_result,
                   minion_status.c.states_failed, minion_status.c.states_changed,
                   minion_status.c.healthy, minion_status.c.state_jid == jid,
                   minion_status.c.last_jid == jid)
            .where(minion_status.c.minion.like(prefix + "%"))
            .order_by(minion_status.c.minion)
        ).all()  # fmt: skip
    cut = len(prefix)
    return (
        tuple(job),
        [(r[0][cut:], *r[1:]) for r in returns],
        [(s[0][cut:], *s[1:]) for s in states],
        [(m[0][cut:], *m[1:]) for m in minions],
    )


def scenario(jid, prefix, replacement):
    """A job's writes: web1 answers twice (the return accepted first wins, whichever is
    committed first), web2 answers and is also confirmed killed, web3 is settled no_return
    and answers after. ``replacement``: web1's return accepted first."""
    web1, web2, web3 = (prefix + name for name in ("web1", "web2", "web3"))
    return [
        ("ret", state_ret(jid, web1, failing=[1], changing=[2]), at(20)),
        ("ret", replacement(jid, web1), at(10)),
        ("ret", state_ret(jid, web2, changing=[3]), at(12)),
        (KilledItem, (web2,), at(11)),
        (NoReturnItem, (web3,), at(30)),
        ("ret", state_ret(jid, web3, failing=[0]), at(40)),
    ]


def items(store, jid, op):
    kind, what, when = op
    if kind == "ret":
        return store.items_for("save_return", what, when)
    return [kind(jid, list(what), when)]


def play(store, jid, prefix, ops, batches):
    """Publish ``jid`` to the three minions, then commit ``ops`` in ``batches`` (lists of
    indexes into ``ops``, each list one batch)."""
    publish(store, jid, fun="state.apply", minions=[prefix + m for m in ("web1", "web2", "web3")])
    for batch in batches:
        store.apply_items([item for i in batch for item in items(store, jid, ops[i])])
    return job_snapshot(store, jid, prefix)


def orders(n, count, seed):
    """``count`` ways to commit ``n`` writes: some orders one write a batch, some all in
    one batch, some in two batches."""
    rng = random.Random(seed)
    found = [[[i] for i in range(n)], [list(range(n))], [list(range(n))[::-1]]]
    for perm in itertools.islice(itertools.permutations(range(n)), 0, None, 37):
        found.append([[i] for i in perm])
    while len(found) < count:
        perm = list(range(n))
        rng.shuffle(perm)
        cut = rng.randrange(1, n)
        found.append([perm[:cut], perm[cut:]])
    return found[:count]


def changed_only(jid, minion):
    return state_ret(jid, minion, changing=[0])


def check_every_order(store, replacement, count=40):
    reference = None
    for n, batches in enumerate(orders(6, count, seed=7)):
        jid = f"2026120110{n:02d}00000000"
        prefix = f"o{n:02d}-"
        seen = play(store, jid, prefix, scenario(jid, prefix, replacement), batches)
        if reference is None:
            reference = seen
        assert seen == reference, f"order {batches} differs"
    return reference


def test_a_job_ends_the_same_whatever_order_and_batches_its_writes_come_in(store):
    final = check_every_order(store, changed_only)
    job, returns, states, minions = final
    # web1's first accepted return (changed conf0) won; web2 returned (the kill mark came
    # for a minion that had answered); web3 answered after it was settled.
    assert job == ("complete", "failed", 3, 3, 1, 2)
    assert [r[:2] for r in returns] == [("web1", "returned"), ("web2", "returned"),
                                        ("web3", "returned")]  # fmt: skip
    assert [(s[0], s[1], s[2]) for s in states] == [
        ("web1", "conf0", "changed"),
        ("web2", "conf3", "changed"),
        ("web3", "conf0", "failed"),
    ]
    assert [m[:5] for m in minions] == [
        ("web1", "changed", 0, 1, 1),
        ("web2", "changed", 0, 1, 1),
        ("web3", "failed", 1, 0, 0),
    ]


def render_error(jid, minion):
    """A failed state run that is no state run: Salt's answer when the SLS did not render."""
    return ret(jid, minion, ["Rendering SLS 'base:app' failed: mapping values are not allowed"],
               fun="state.apply", retcode=1, success=False)  # fmt: skip


def replaced_by_render_error(store):
    publish(store, JID, fun="state.apply", minions=("web1",))
    assert save_return(store, state_ret(JID, "web1", failing=[1], changing=[2]), at(20))
    assert save_return(store, render_error(JID, "web1"), at(10))
    with store.db.read() as conn:
        kept = conn.execute(select(job_returns.c.states_total, job_returns.c.success)).one()
    assert tuple(kept) == (None, False)  # job_returns holds the render error


def test_a_state_run_replaced_by_an_earlier_render_error_leaves_no_states_behind(store):
    replaced_by_render_error(store)
    with store.db.read() as conn:
        states = conn.execute(select(state_results.c.state_id)).scalars().all()
    assert states == []


def test_a_state_run_replaced_by_an_earlier_render_error_is_no_latest_run(store):
    replaced_by_render_error(store)
    with store.db.read() as conn:
        row = conn.execute(select(minion_status)).one()
    # The minion's only return is no state run: it has no latest state run.
    assert (row.state_jid, row.states_failed, row.healthy) == (None, None, 1)


def test_a_state_run_replaced_by_an_earlier_one_that_passed_leaves_nothing_failed(store):
    publish(store, JID, fun="state.apply", minions=("web1",))
    assert save_return(store, state_ret(JID, "web1", failing=[1], changing=[2]), at(20))
    assert save_return(store, state_ret(JID, "web1"), at(10))
    with store.db.read() as conn:
        states = conn.execute(select(state_results.c.state_id)).scalars().all()
        row = conn.execute(select(minion_status)).one()
    assert states == []
    assert (row.state_result, row.states_failed, row.healthy) == ("pass", 0, 1)


# ---------------------------------------------------------------------- odd states and ids
def one_state(key, **fields):
    state = {"result": False, "comment": "it failed", "changes": {}, "__run_num__": 0}
    state.update(fields)
    return {key: state}


def stored_states(store):
    with store.db.read() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                select(state_results.c.minion, state_results.c.state_key,
                       state_results.c.state_id, state_results.c.name, state_results.c.sls,
                       state_results.c.comment, state_results.c.run_num)
                .order_by(state_results.c.state_key)
            )
        ]  # fmt: skip


def run_of(store, minion, value, jid=JID, **extra):
    publish(store, jid, fun="state.apply", minions=(minion,))
    load = ret(jid, minion, value, fun="state.apply", retcode=2, success=False, **extra)
    return save_return(store, load)


ODD = 'we\'ird %_*?\\ "quoted" ünï — 🚀'


def test_odd_characters_in_minion_and_state_ids_are_kept_and_found_exactly(store):
    minion = "m" + ODD
    key = f"file_|-{ODD}_|-/etc/{ODD}_|-managed"
    # Published now: the states' listing looks at the last 24 hours by default.
    now = dt.datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    assert run_of(store, minion, one_state(key, __sls__=ODD), jid=now)
    assert stored_states(store) == [(minion, key, ODD, f"/etc/{ODD}", ODD, "it failed", 0)]
    service = Service(store, Policy.from_config({}, {}, master_user="root"), "m1")
    assert [m["minion"] for m in service.minions("root", minion="m*")["minions"]] == [minion]
    # The glob characters of the id are characters when asked for exactly.
    assert [m["minion"] for m in service.minions("root", minion=minion)["minions"]] == [minion]
    assert service.minions("root", minion="m" + ODD.replace("%", "x"))["minions"] == []
    assert [r["minion"] for r in service.state("root", ODD)["runs"]] == [minion]
    assert service.minion("root", minion)["jobs"][0]["failing_states"] == [ODD]
    assert [s["state_id"] for s in service.states("root", sls=ODD)["states"]] == [ODD]
    assert [s["state_id"] for s in service.states("root", sls="we'ird*")["states"]] == [ODD]


def test_states_whose_id_name_and_sls_are_no_text_are_kept_as_text(store):
    value = {
        "cmd_|-a_|-b_|-run": {"result": False, "comment": ["line 1", 2], "changes": {},
                              "__id__": 42, "name": ["x", "y"], "__sls__": None,
                              "__run_num__": True},
        "cmd_|-c_|-d_|-run": {"result": "no", "comment": {"why": 1}, "changes": "yes",
                              "__id__": "", "name": None, "__sls__": 7, "__run_num__": 2**40},
    }  # fmt: skip
    assert run_of(store, "web1", value)
    assert stored_states(store) == [
        ("web1", "cmd_|-a_|-b_|-run", "42", "['x', 'y']", None, "line 1\n2", None),
        ("web1", "cmd_|-c_|-d_|-run", "c", None, "7", "{'why': 1}", None),
    ]


def test_a_huge_comment_is_cut_and_the_return_kept(store):
    assert run_of(store, "web1", one_state("cmd_|-a_|-b_|-run", comment="x" * 5_000_000))
    (row,) = stored_states(store)
    assert len(row[5]) == 2000


@pytest.mark.parametrize("field", ["comment", "__id__", "name", "__sls__"])
def test_a_nul_in_a_failed_state_loses_nothing(store, field):
    value = one_state("cmd_|-a_|-b_|-run", **{field: "before\x00after"})
    assert run_of(store, "web1", value)
    (row,) = stored_states(store)
    assert "before" in " ".join(str(v) for v in row)
    with store.db.read() as conn:
        assert conn.execute(select(job_returns.c.states_failed)).scalar() == 1


def test_a_nul_in_a_state_key_loses_nothing(store):
    assert run_of(store, "web1", one_state("cmd_|-a\x00_|-b_|-run"))
    assert len(stored_states(store)) == 1


def test_two_state_keys_one_once_escaped_are_kept_as_one_row(store, caplog):
    """A NUL is kept as its escape in state_key: the two keys become one, a row once (on
    PostgreSQL in the copy, which no row there already sent to the staged insert)."""
    value = {**one_state("cmd_|-a\x00_|-b_|-run"), **one_state("cmd_|-a\\u0000_|-b_|-run")}
    assert run_of(store, "web1", value)
    assert [row[1] for row in stored_states(store)] == ["cmd_|-a\\u0000_|-b_|-run"]
    with store.db.read() as conn:
        assert conn.execute(select(job_returns.c.states_failed)).scalar() == 2
    assert "already stored" not in caplog.text


@postgresql_only("the state rows of a run kept are copied straight in there")
def test_a_state_row_there_already_leaves_the_others_to_the_staged_insert(store, caplog):
    """Should a run kept find a row of its own already (written by hand, say), the copy
    writes nothing and the staged insert adds the others, the row there left alone."""
    publish(store, JID, fun="state.apply", minions=("web1",))
    with store.db.write() as conn:
        conn.execute(
            state_results.insert().values(
                jid=JID, minion="web1", state_key="cmd_|-a_|-b_|-run", state_id="a",
                function="cmd.run", result="failed", comment="by hand",
                start_time=T0, returned_at=T0,
            )
        )  # fmt: skip
    value = {**one_state("cmd_|-a_|-b_|-run"), **one_state("cmd_|-c_|-d_|-run")}
    load = ret(JID, "web1", value, fun="state.apply", retcode=2, success=False)
    assert save_return(store, load)
    assert [(row[1], row[5]) for row in stored_states(store)] == [
        ("cmd_|-a_|-b_|-run", "by hand"),
        ("cmd_|-c_|-d_|-run", "it failed"),
    ]
    assert "state results already stored for a run kept" in caplog.text


def test_a_lone_surrogate_in_a_failed_state_loses_nothing(store):
    """The return keeps it (a text marker: PostgreSQL's jsonb refuses a lone surrogate);
    the state's comment shows its escape."""
    value = one_state("cmd_|-a_|-b_|-run", comment="bad \udcff byte")
    assert run_of(store, "web1", value)
    (state,) = stored_states(store)
    assert "bad \\udcff byte" in state
    assert store.get_jid(JID)["web1"]["return"] == value


def random_text(n, seed):
    """``n`` characters no compression shortens: random CJK ideographs (3 bytes each)."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(n))


def test_a_long_state_key_of_many_byte_characters_is_kept(store):
    key = f"cmd_|-{random_text(300, 1)}_|-{random_text(1000, 2)}_|-run"
    minion = random_text(255, 3)
    assert run_of(store, minion, one_state(key))
    (row,) = stored_states(store)
    # Cut to 900 bytes of UTF-8 with a digest of the whole key (highstate._state_key).
    assert len(row[1].encode()) <= 900 and key.startswith(row[1].split("...#")[0])
    assert row[2] == key.split("_|-")[1][:255]


def test_two_failed_states_with_long_keys_alike_are_both_kept(store):
    long_name = "echo " + "x" * 1100
    value = {
        **one_state(f"cmd_|-job_|-{long_name} one_|-run"),
        **one_state(f"cmd_|-job_|-{long_name} two_|-run", __run_num__=1),
    }
    assert run_of(store, "web1", value)
    with store.db.read() as conn:
        assert conn.execute(select(job_returns.c.states_failed)).scalar() == 2
    assert len(stored_states(store)) == 2


# ---------------------------------------------------------------------- cursors and paging
def encoded(values):
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.fixture
def root(store):
    """Two failing and two passing minions, each with two state runs; a root Service."""
    for n, jid in enumerate(("20261201100000000000", "20261201110000000000")):
        minions = ("a1", "a2", "b1", "b2")
        publish(store, jid, fun="state.apply", minions=minions)
        for minion in minions:
            failing = [n] if minion.startswith("a") else []
            save_return(store, state_ret(jid, minion, failing=failing))
    return Service(store, Policy.from_config({}, {}, master_user="root"), "m1")


FORGED = {
    "minions": [[10**30, "a"], [-(10**30), "a"], [2**63, "a"], [1, "a" * 100_000]],
    "minion": [["9999-12-31T23:59:59+00:00", "x" * 100_000], ["0001-01-01T00:00:00+00:00", ""]],
    "states": [["0001-01-01T00:00:00+00:00", 0], ["2026-12-01T12:00:00+00:00", 10**30],
               ["2026-12-01T12:00:00+00:00", 2**63]],
    "state": [["0001-01-01T00:00:00+00:00", "j", "m", "k"]],
}  # fmt: skip
CALLS = {
    "minions": lambda service, cursor: service.minions("root", cursor=cursor, limit=1),
    "minion": lambda service, cursor: service.minion("root", "a1", cursor=cursor, limit=1),
    "states": lambda service, cursor: service.states("root", cursor=cursor, limit=1),
    "state": lambda service, cursor: service.state("root", "conf0", cursor=cursor, limit=1),
}
CASES = [(view, values) for view, forged in FORGED.items() for values in forged]


def forged_answer(root, view, values):
    try:
        CALLS[view](root, encoded(values))
    except QueryError:
        return "refused"
    return "answered"


@pytest.mark.parametrize(("view", "values"), CASES)
def test_a_forged_cursor_is_answered_or_refused_never_an_error(root, view, values):
    assert forged_answer(root, view, values) in ("refused", "answered")


@pytest.mark.parametrize("cursor", ["=", "bnVsbA", encoded([None, "a"]), encoded([True, "a"]),
                                    encoded([1.0, "a"]), encoded([0, "a\x00"]), encoded({}),
                                    "%%%", "a" * 10_001, encoded([0, "a", "extra"])])  # fmt: skip
def test_cursors_that_are_not_the_listings_are_refused(root, cursor):
    with pytest.raises(QueryError, match="cursor"):
        root.minions("root", cursor=cursor)


def walk(call):
    seen, cursor = [], None
    while True:
        page = call(cursor)
        seen.append(page)
        cursor = page["next"]
        if cursor is None:
            return seen


def test_minion_pages_are_exact_across_ties_and_inserts_between_pages(root, store):
    pages = walk(lambda c: root.minions("root", limit=1, cursor=c))
    assert [p["minions"][0]["minion"] for p in pages] == ["a1", "a2", "b1", "b2"]
    # Minions whose health changes between two pages move in the order (a1 is met again,
    # b2 now among the failing after the cursor); those that stayed put are met once.
    first = root.minions("root", limit=2)
    later = "20261201120000000000"
    publish(store, later, fun="state.apply", minions=("a1", "b2"))
    save_return(store, state_ret(later, "a1"))  # a1 passes now: it moves behind the cursor
    save_return(store, state_ret(later, "b2", failing=[3]))  # b2 fails: it moves before it
    rest = walk(lambda c: root.minions("root", limit=1, cursor=c or first["next"]))
    assert [m["minion"] for p in rest for m in p["minions"]] == ["b2", "a1", "b1"]


def test_history_pages_are_exact_with_jobs_of_one_start_time(store):
    # Salt's jids with a suffix (unique_jid) share their start time.
    jids = [f"20261201100000000000_{n}" for n in range(5)]
    for jid in jids:
        publish(store, jid, fun="state.apply", minions=("web1",))
        save_return(store, state_ret(jid, "web1", failing=[1]))
    service = Service(store, Policy.from_config({}, {}, master_user="root"), "m1")
    pages = walk(lambda c: service.minion("root", "web1", limit=2, cursor=c))
    assert [j["jid"] for p in pages for j in p["jobs"]] == sorted(jids, reverse=True)
    runs = walk(lambda c: service.state("root", "conf1", limit=2, cursor=c))
    assert [r["jid"] for p in runs for r in p["runs"]] == sorted(jids, reverse=True)
    row = {m["minion"]: m for m in service.minions("root")["minions"]}["web1"]
    assert row["state_run"]["jid"] == max(jids) and row["last_job"]["jid"] == max(jids)


def test_state_pages_neither_repeat_nor_skip_when_returns_arrive_between_pages(store):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    jid = (now - dt.timedelta(hours=1)).strftime("%Y%m%d%H%M%S%f")
    publish(store, jid, fun="state.apply", minions=("w1", "w2", "w3", "w4", "w5"))
    save_return(store, state_ret(jid, "w1", failing=[0, 1]))  # conf0, conf1 on w1
    save_return(store, state_ret(jid, "w2", failing=[0]))  # conf0 on two minions
    service = Service(store, Policy.from_config({}, {}, master_user="root"), "m1")
    first = service.states("root", limit=1)
    assert [s["state_id"] for s in first["states"]] == ["conf0"]
    # w3, w4 and w5 answer: conf2 now fails on the most minions.
    for minion in ("w3", "w4", "w5"):
        save_return(store, state_ret(jid, minion, failing=[2]))
    rest = walk(lambda c: service.states("root", limit=1, cursor=c or first["next"]))
    seen = ["conf0"] + [s["state_id"] for p in rest for s in p["states"]]
    # The pages are of what had returned at the first one: conf2 arrived after it, and a
    # new listing shows it first.
    assert seen == ["conf0", "conf1"]
    assert service.states("root")["states"][0]["state_id"] == "conf2"


# ---------------------------------------------------------------------- scoped users
SCOPED = Policy.from_config(
    {"tester": ["view:job:test.*"], "applier": ["view:job:state.apply"],
     "stater": ["view:job:state.*"], "killer": ["kill:job:*"]},
    {"ann": ["viewer"], "tess": ["tester"], "sam": ["applier"], "stan": ["stater"],
     "kim": ["killer"]},
    master_user="root",
)  # fmt: skip
RUN, PING, PROBE = "20261201100000000000", "20261201110000000000", "20261201120000000000"


@pytest.fixture
def scoped(store):
    """web1: a failed state run, then a failed test.ping; web2: a state run that changed
    something, then a bookkeeping probe; db2: test.ping only."""
    publish(store, RUN, fun="state.apply", minions=("web1", "web2"))
    save_return(store, state_ret(RUN, "web1", failing=[1]))
    save_return(store, state_ret(RUN, "web2", changing=[0]))
    publish(store, PING, fun="test.ping", minions=("web1", "db2"))
    save_return(store, ret(PING, "web1", fun="test.ping", success=False, retcode=1))
    save_return(store, ret(PING, "db2", fun="test.ping"))
    publish(store, PROBE, fun="saltutil.find_job", minions=("web2",))
    save_return(store, ret(PROBE, "web2", fun="saltutil.find_job"))
    return Service(store, SCOPED, "m1")


def denials(service, store):
    store.flush(timeout=10)
    return [(e["user"], e["action"]) for e in service.audit("root", decision="deny")["entries"]]


def test_a_tester_sees_test_jobs_only_in_every_fleet_view(scoped):
    page = scoped.minions("tess")
    assert [m["minion"] for m in page["minions"]] == ["db2", "web1"]
    assert [m["last_job"]["jid"] for m in page["minions"]] == [PING, PING]
    assert all(m["failing"] is None and m["state_run"] is None for m in page["minions"])
    # Paging by id alone, one minion a page: the same minions, in id order.
    pages = walk(lambda c: scoped.minions("tess", limit=1, cursor=c))
    assert [m["minion"] for p in pages for m in p["minions"]] == ["db2", "web1"]
    # A root cursor (healthy, minion) tells nothing to the tester's listing.
    with pytest.raises(QueryError, match="cursor"):
        scoped.minions("tess", cursor=scoped.minions("root", limit=1)["next"])
    history = scoped.minion("tess", "web1")
    assert [(j["jid"], j["result"]) for j in history["jobs"]] == [(PING, "failed")]
    assert "counts" not in history["jobs"][0]
    assert scoped.minion("tess", "web1", fun="state.*")["jobs"] == []
    assert scoped.minion("tess", "web1", result="changed")["jobs"] == []


def test_a_minion_out_of_scope_is_answered_as_an_unknown_one(scoped):
    with pytest.raises(QueryError) as unseen:
        scoped.minion("tess", "web2")
    with pytest.raises(QueryError) as unknown:
        scoped.minion("tess", "nobody-at-all")
    assert str(unseen.value) == str(unknown.value).replace("nobody-at-all", "web2")
    assert type(unseen.value) is type(unknown.value)


def test_a_minion_out_of_scope_is_audited_as_a_denial(scoped, store):
    with pytest.raises(QueryError):
        scoped.minion("tess", "web2")
    assert ("tess", "minion") in denials(scoped, store)


def test_state_views_need_every_state_job_and_each_refusal_is_audited(scoped, store):
    # view:job:state.apply is not view:job:state.*: the fleet's state views are refused.
    for user in ("tess", "sam"):
        with pytest.raises(Denied, match=r"view:job:state\.\*"):
            scoped.states(user)
        with pytest.raises(Denied, match=r"view:job:state\.\*"):
            scoped.state(user, "conf1")
        with pytest.raises(Denied, match=r"view:job:state\.\*"):
            scoped.minions(user, failing=True)
    for user in ("kim", "nobody"):  # no view of any job
        for call in (lambda u: scoped.minions(u), lambda u: scoped.minion(u, "web1"),
                     lambda u: scoped.states(u), lambda u: scoped.state(u, "conf1")):  # fmt: skip
            with pytest.raises(Denied):
                call(user)
    seen = denials(scoped, store)
    for user in ("tess", "sam"):
        assert seen.count((user, "states")) == 1
        assert seen.count((user, "state")) == 1
        assert seen.count((user, "minions")) == 1
    for user in ("kim", "nobody"):
        for action in ("minions", "minion", "states", "state"):
            assert seen.count((user, action)) == 1, (user, action)


def test_state_apply_alone_shows_its_jobs_but_no_state_runs(scoped):
    page = scoped.minions("sam")
    assert [m["minion"] for m in page["minions"]] == ["web1", "web2"]
    assert all(m["failing"] is None and m["state_run"] is None for m in page["minions"])
    assert [m["last_job"]["jid"] for m in page["minions"]] == [RUN, RUN]
    history = scoped.minion("sam", "web1")
    assert [j["jid"] for j in history["jobs"]] == [RUN]
    assert "counts" not in history["jobs"][0] and "failing_states" not in history["jobs"][0]


def test_every_state_job_shows_the_runs_but_not_the_later_ping(scoped):
    page = scoped.minions("stan")
    assert [(m["minion"], m["failing"]) for m in page["minions"]] == [
        ("web1", True), ("web2", False)]  # fmt: skip
    assert page["minions"][0]["last_job"]["jid"] == RUN  # not the test.ping after it
    assert scoped.minion("stan", "web1")["jobs"][0]["failing_states"] == ["conf1"]
    # Bookkeeping is no one's latest job, root's included.
    root = {m["minion"]: m for m in scoped.minions("root")["minions"]}
    assert root["web2"]["last_job"]["jid"] == RUN


# ---------------------------------------------------------------------- dry runs
def latest_run_after_a_dry_run(store, fun_args):
    publish(store, RUN, fun="state.apply", minions=("web1",))
    save_return(store, state_ret(RUN, "web1", failing=[1]))
    publish(store, PING, fun="state.apply", minions=("web1",))
    save_return(store, ret(PING, "web1", states(changing=[0]), fun="state.apply",
                           fun_args=fun_args))  # fmt: skip
    with store.db.read() as conn:
        return conn.execute(select(minion_status.c.state_jid)).scalar()


@pytest.mark.parametrize(
    "fun_args",
    [["test=True"], ["test=true"], [{"test": True, "__kwarg__": True}],
     [{"test": "True", "__kwarg__": True}], ["x", {"test": True, "__kwarg__": True}]],
)  # fmt: skip
def test_a_dry_run_is_never_the_latest_real_run(store, fun_args):
    assert latest_run_after_a_dry_run(store, fun_args) == RUN


def test_test_1_is_a_dry_run_as_salt_and_the_backfill_take_it(store):
    assert latest_run_after_a_dry_run(store, [{"test": 1, "__kwarg__": True}]) == RUN


# ---------------------------------------------------------------------- the backfill
from tests.test_migration_0007 import (  # noqa: E402
    STATE_RUN,
    database,  # noqa: F401 (a fixture: an empty database at revision 0006)
    insert_job,
    returned,
    upgraded,
)


def backfilled_dry_run(database, arguments=(), kwargs=None):  # noqa: F811
    """The latest real state run revision 0007 gives web1 after a real run and a later
    run with these arguments."""

    def fill(conn):
        insert_job(conn, RUN, "state.apply", [returned("web1", STATE_RUN, retcode=2,
                                                        states=(4, 3, 1, 0))])  # fmt: skip
        insert_job(conn, PING, "state.apply", [returned("web1", STATE_RUN, states=(4, 4, 0, 1))],
                   arguments=arguments, kwargs=kwargs)  # fmt: skip

    _, minions, _ = upgraded(database, fill)
    return minions["web1"].state_jid


@pytest.mark.parametrize(
    ("arguments", "kwargs"),
    [(["test=True"], None), (["test=true"], None), ((), {"test": True}), ((), {"test": "True"}),
     (["a", "test=True"], None), ((), {"test": 1})],
)  # fmt: skip
def test_the_backfill_leaves_dry_runs_out_of_the_latest_real_run(database, arguments, kwargs):  # noqa: F811
    assert backfilled_dry_run(database, arguments, kwargs) == RUN


def test_the_backfill_takes_test_in_any_case_on_both_backends(database):  # noqa: F811
    assert backfilled_dry_run(database, ["test=TRUE"]) == RUN


# ---------------------------------------------------------------------- retention
def age(store, jid, when):
    with store.db.write() as conn:
        conn.execute(
            jobs_index.update()
            .where(jobs_index.c.jid == jid)
            .values(created_at=when, last_return_at=when, end_time=when)
        )


def test_retention_while_a_job_runs_keeps_its_minions_and_drops_late_returns(store):
    old, running = "20261120100000000000", "20261201100000000000"
    publish(store, old, fun="state.apply", minions=("web1", "web2"))
    save_return(store, state_ret(old, "web1", failing=[1]))
    save_return(store, state_ret(old, "web2", failing=[2]))
    publish(store, running, fun="state.apply", minions=("web1", "web2"))
    save_return(store, state_ret(running, "web1", changing=[0]))  # web2 still pending
    now = dt.datetime(2026, 12, 1, 12, tzinfo=UTC)
    age(store, old, now - dt.timedelta(days=20))
    assert store.clean_old_jobs(keep_seconds=7 * 86400, now=now) == 1
    rows = {row.minion: row for row in _minions(store)}
    # web1's latest run is the running job's; web2 has no return left: no row.
    assert set(rows) == {"web1"}
    assert (rows["web1"].state_jid, rows["web1"].state_result) == (running, "changed")
    # A late return for the removed job is dropped and moves no minion back.
    assert not save_return(store, state_ret(old, "web2", failing=[2]))
    assert {row.minion for row in _minions(store)} == {"web1"}
    # web2 answers the running job: it is back, from that job.
    assert save_return(store, state_ret(running, "web2"))
    rows = {row.minion: row for row in _minions(store)}
    assert (rows["web2"].state_jid, rows["web2"].healthy) == (running, 1)
    with store.db.read() as conn:
        jids = set(conn.execute(select(state_results.c.jid)).scalars())
    assert jids == {running}


def _minions(store):
    with store.db.read() as conn:
        return conn.execute(select(minion_status)).all()


# ---------------------------------------------------------------------- HTTP
@pytest.fixture
def web(store, tmp_path):
    from halite_core.http.app import WebApp
    from tests.test_web import PasswordSessions, master_opts, right_password

    publish(store, RUN, fun="state.apply", minions=("web1",))
    save_return(store, state_ret(RUN, "web1", failing=[1]))
    service = Service(store, SCOPED, "m1")
    app = WebApp(service, PasswordSessions(master_opts(tmp_path / "master"), right_password),
                 None, "auto")  # fmt: skip
    port = free_port()
    app.serve_in_thread("127.0.0.1", port)
    app.base = f"http://127.0.0.1:{port}"
    yield app
    app.hub.loop.call_soon_threadsafe(app.hub.loop.stop)


def http_get(app, path, user="ann"):
    from tests.test_web import call, login

    return call(app, "GET", path, login(app, user))


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/minions/%00", 400), ("/api/minions/web1%00", 400), ("/api/minions/%ff", 400),
     ("/api/minions/" + "w" * 5000, 404), ("/api/minions/%2e%2e", 404),
     ("/api/minions/web%2A", 404), ("/api/minions/web1?fun=%00", 400),
     ("/api/minions/web1?result=%00", 400), ("/api/minions/web1?limit=-1", 400),
     ("/api/minions/web1?cursor=%00", 400), ("/api/minions?minion=web%5B1%5D", 400),
     ("/api/states/%00", 400), ("/api/states/" + "s" * 5000, 200),
     ("/api/states/conf1?minion=%00", 400), ("/api/states?sls=%00", 400),
     ("/api/states?window=%00", 400), ("/api/minions?failing=maybe", 400),
     ("/api/minions?limit=99999999999999999999999", 400)],
)  # fmt: skip
def test_odd_path_and_query_parameters_get_a_clear_answer(web, path, status):
    got, body = http_get(web, path)
    assert got == status, body
    if status == 400:
        assert body["error"]


FORGED_HTTP = [
    pytest.param(f"/api/minions?cursor={encoded([10**30, 'a'])}", id="minions-huge-number"),
    pytest.param(
        f"/api/states?cursor={encoded(['0001-01-01T00:00:00+00:00', 0])}", id="states-year-1"
    ),
    pytest.param(
        f"/api/states?cursor={encoded(['2026-12-01T12:00:00+00:00', 2**63])}",
        id="states-huge-offset",
    ),
]


@pytest.mark.parametrize("path", FORGED_HTTP)
def test_a_forged_cursor_is_a_400_on_http(web, path):
    got, body = http_get(web, path)
    assert got == 400, body


# ---------------------------------------------------------------------- the driver
@pytest.mark.parametrize("driver", ["psycopg2", "pg8000", "psycopg_async"])
def test_a_postgresql_driver_other_than_psycopg_is_refused_where_the_url_is_taken(driver):
    """The ingest path talks psycopg's dialect to the driver (a binary COPY of a batch's
    rows, executemany's row counts): with another driver, which the URL check
    lets through, every batch holding a failed or changed state was refused, far from the
    configuration. Nothing is connected to here."""
    from halite_core.store.db import Database, SchemaError

    with pytest.raises(SchemaError, match="through psycopg 3") as refused:
        Database(f"postgresql+{driver}://halite:hunter2@127.0.0.1:1/halite")
    assert "postgresql+psycopg://" in str(refused.value)
    assert "hunter2" not in str(refused.value)
