"""The fleet's tables (state_results, minion_status) and each job's result, as the
committer keeps them, and the fleet queries over them."""

import datetime as dt
import re

from sqlalchemy import select

from halite_core.store.schema import jobs_index, minion_status, state_results
from tests.conftest import postgresql_only
from tests.helpers import publish, ret, save_return

UTC = dt.timezone.utc


def states(failing=(), changing=(), total=4):
    """A state return of ``total`` file states; those numbered in ``failing`` failed and
    those in ``changing`` changed something."""
    found = {}
    for i in range(total):
        found[f"file_|-conf{i}_|-/etc/conf{i}_|-managed"] = {
            "result": i not in failing,
            "comment": f"conf{i} {'failed' if i in failing else 'ok'}",
            "changes": {"diff": "+x"} if i in changing else {},
            "duration": 1.0,
            "__run_num__": i,
            "__sls__": "app",
            "__id__": f"conf{i}",
            "name": f"/etc/conf{i}",
        }
    return found


def state_ret(jid, minion, failing=(), changing=(), test=False, **extra):
    value = states(failing, changing)
    failed = bool(failing)
    return ret(jid, minion, value, fun="state.apply", retcode=2 if failed else 0,
               success=not failed, fun_args=["test=True"] if test else [], **extra)  # fmt: skip


def minion_rows(store):
    with store.db.read() as conn:
        rows = conn.execute(select(minion_status).order_by(minion_status.c.minion)).all()
    return {row.minion: row for row in rows}


def job_result(store, jid):
    with store.db.read() as conn:
        return conn.execute(select(jobs_index.c.result).where(jobs_index.c.jid == jid)).scalar()


def test_a_state_run_keeps_its_failed_and_changed_states_and_the_minions_latest_run(store):
    jid = "20261201100000000000"
    publish(store, jid, fun="state.apply", minions=("web1", "web2"))
    assert job_result(store, jid) == "running"
    assert save_return(store, state_ret(jid, "web1", failing=[1], changing=[2]))
    assert save_return(store, state_ret(jid, "web2", changing=[0]))
    assert job_result(store, jid) == "failed"
    with store.db.read() as conn:
        kept = conn.execute(
            select(state_results.c.minion, state_results.c.state_id, state_results.c.result,
                   state_results.c.comment, state_results.c.function)
            .order_by(state_results.c.minion, state_results.c.state_id)
        ).all()  # fmt: skip
    assert [tuple(row) for row in kept] == [
        ("web1", "conf1", "failed", "conf1 failed", "file.managed"),
        ("web1", "conf2", "changed", "conf2 ok", "file.managed"),
        ("web2", "conf0", "changed", "conf0 ok", "file.managed"),
    ]
    rows = minion_rows(store)
    assert rows["web1"].state_result == "failed" and rows["web1"].healthy == 0
    assert rows["web1"].states_failed == 1 and rows["web1"].state_jid == jid
    assert rows["web2"].state_result == "changed" and rows["web2"].healthy == 1
    assert rows["web2"].last_jid == jid and rows["web2"].last_function == "state.apply"


def test_a_later_job_moves_a_minion_on_and_test_runs_do_not_hide_the_real_result(store):
    run, ping, dry = "20261201100000000000", "20261201110000000000", "20261201120000000000"
    publish(store, run, fun="state.apply", minions=("web1",))
    save_return(store, state_ret(run, "web1", failing=[1]))
    publish(store, ping, fun="test.ping", minions=("web1",))
    save_return(store, ret(ping, "web1", fun="test.ping"))
    publish(store, dry, fun="state.apply", minions=("web1",))
    save_return(store, state_ret(dry, "web1", test=True))
    row = minion_rows(store)["web1"]
    assert (row.last_jid, row.last_function) == (dry, "state.apply")
    assert (row.state_jid, row.state_result, row.healthy) == (run, "failed", 0)
    assert job_result(store, ping) == "pass"


def test_an_older_job_arriving_late_does_not_move_a_minion_back(store):
    old, new = "20261201100000000000", "20261201110000000000"
    publish(store, new, fun="state.apply", minions=("web1",))
    save_return(store, state_ret(new, "web1"))
    publish(store, old, fun="state.apply", minions=("web1",))
    save_return(store, state_ret(old, "web1", failing=[0]))
    row = minion_rows(store)["web1"]
    assert (row.state_jid, row.state_result, row.healthy) == (new, "pass", 1)
    assert row.last_jid == new


def test_the_state_rows_are_those_of_the_return_that_won(store):
    jid = "20261201100000000000"
    publish(store, jid, fun="state.apply", minions=("web1",))
    late = dt.datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
    early = dt.datetime(2026, 12, 1, 10, 1, tzinfo=UTC)
    assert save_return(store, state_ret(jid, "web1", failing=[3]), returned_at=late)
    # A return of the same minion accepted earlier (another worker's journal, committed
    # second) wins: its states replace those of the first one committed.
    assert save_return(store, state_ret(jid, "web1", changing=[0]), returned_at=early)
    # And one accepted later still loses.
    assert not save_return(store, state_ret(jid, "web1", failing=[2]), returned_at=late)
    with store.db.read() as conn:
        kept = conn.execute(select(state_results.c.state_id, state_results.c.result)).all()
    assert [tuple(row) for row in kept] == [("conf0", "changed")]
    row = minion_rows(store)["web1"]
    assert (row.state_result, row.states_changed, row.states_failed) == ("changed", 1, 0)
    assert job_result(store, jid) == "changed"


def test_retention_takes_the_state_rows_and_moves_minions_back_to_what_is_left(store):
    # Retention ages a job by when it was written, not by its jid: the job with the newer
    # jid, written long ago, goes; the minion's latest run is then the older jid's.
    older, newer = "20261130100000000000", "20261201100000000000"
    publish(store, older, fun="state.apply", minions=("web1",))
    save_return(store, state_ret(older, "web1", failing=[1]))
    publish(store, newer, fun="state.apply", minions=("web1", "web2"))
    save_return(store, state_ret(newer, "web1", changing=[0]))
    save_return(store, state_ret(newer, "web2", failing=[0]))
    assert minion_rows(store)["web1"].state_jid == newer
    long_ago = dt.datetime(2026, 11, 1, 10, tzinfo=UTC)
    with store.db.write() as conn:
        conn.execute(
            jobs_index.update()
            .where(jobs_index.c.jid == newer)
            .values(created_at=long_ago, last_return_at=long_ago, end_time=long_ago)
        )
        conn.execute(
            jobs_index.update()
            .where(jobs_index.c.jid == older)
            .values(created_at=long_ago + dt.timedelta(days=29))
        )
    now = dt.datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert store.clean_old_jobs(keep_seconds=7 * 86400, now=now) == 1
    rows = minion_rows(store)
    assert set(rows) == {"web1"}  # web2 returned only for the job removed
    web1 = rows["web1"]
    assert (web1.state_jid, web1.state_result, web1.healthy, web1.last_jid) == (
        older, "failed", 0, older)  # fmt: skip
    with store.db.read() as conn:
        kept = conn.execute(select(state_results.c.jid, state_results.c.state_id)).all()
    assert [tuple(row) for row in kept] == [(older, "conf1")]


# ---------------------------------------------------------------------- the queries
import pytest  # noqa: E402

from halite_core.api import MinionHistory, MinionsPage, QueryError, StateHistory, StatesPage  # noqa: E402
from halite_core.permissions import Denied, Policy  # noqa: E402
from halite_core.service import Service  # noqa: E402


def check_against(model, answer):
    """``answer`` as its typed model reads it, strictly: the API's schemas are generated
    from these models."""
    from pydantic import TypeAdapter

    assert TypeAdapter(model).validate_python(answer, strict=True) == answer
    return answer


POLICY = Policy.from_config(
    {"tester": ["view:job:test.*"], "stater": ["view:job:state.*"]},
    {"ann": ["viewer"], "tess": ["tester"], "stan": ["stater"]},
    master_user="root",
)


@pytest.fixture
def fleet(store):
    """web1 fails conf1 in the latest run (and conf1 failed on db1 the day before, db1 has
    passed since), web2 changed conf0, db2 only ran test.ping; times relative to now."""
    now = dt.datetime.now(UTC).replace(microsecond=0)

    def jid(hours_ago):
        return (now - dt.timedelta(hours=hours_ago)).strftime("%Y%m%d%H%M%S%f")

    day_before, latest, ping = jid(30), jid(2), jid(1)
    publish(store, day_before, fun="state.apply", minions=("db1",))
    save_return(store, state_ret(day_before, "db1", failing=[1]))
    publish(store, latest, fun="state.apply", minions=("web1", "web2", "db1"))
    save_return(store, state_ret(latest, "web1", failing=[1], changing=[2]))
    save_return(store, state_ret(latest, "web2", changing=[0]))
    save_return(store, state_ret(latest, "db1"))
    publish(store, ping, fun="test.ping", minions=("db2", "web1"))
    save_return(store, ret(ping, "db2", fun="test.ping"))
    save_return(store, ret(ping, "web1", fun="test.ping", success=False, retcode=1))
    service = Service(store, POLICY, "m1")
    service.jids = {"day_before": day_before, "latest": latest, "ping": ping}
    return service


def test_minions_are_listed_failing_first_with_their_latest_run(fleet):
    page = check_against(MinionsPage, fleet.minions("root"))
    assert [m["minion"] for m in page["minions"]] == ["web1", "db1", "db2", "web2"]
    web1 = page["minions"][0]
    assert web1["failing"] is True
    assert web1["state_run"]["jid"] == fleet.jids["latest"]
    assert web1["state_run"]["failing_states"] == ["conf1"]
    assert web1["state_run"]["counts"] == {"states": 4, "passed": 3, "failed": 1, "changed": 1}
    assert web1["last_job"]["jid"] == fleet.jids["ping"]
    db2 = page["minions"][2]
    assert db2["state_run"] is None and db2["failing"] is False
    failing = fleet.minions("root", failing=True)
    assert [m["minion"] for m in failing["minions"]] == ["web1"]
    assert [m["minion"] for m in fleet.minions("root", minion="db*")["minions"]] == ["db1", "db2"]


def test_minions_page_by_cursor_exactly(fleet):
    seen, cursor = [], None
    while True:
        page = fleet.minions("root", limit=1, cursor=cursor)
        seen += [m["minion"] for m in page["minions"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ["web1", "db1", "db2", "web2"]
    with pytest.raises(QueryError, match="cursor"):
        fleet.minions("root", cursor="bm9wZQ")


def test_a_user_who_may_not_view_state_jobs_sees_neither_runs_nor_order(fleet, store):
    page = fleet.minions("tess")
    # Only minions that returned for a test.* job, by id, their latest test.* job.
    assert [m["minion"] for m in page["minions"]] == ["db2", "web1"]
    assert all(m["failing"] is None and m["state_run"] is None for m in page["minions"])
    assert page["minions"][1]["last_job"]["function"] == "test.ping"
    with pytest.raises(Denied, match="view:job:state"):
        fleet.minions("tess", failing=True)
    with pytest.raises(Denied, match="view:job:state"):
        fleet.states("tess")
    with pytest.raises(Denied, match="view:job:state"):
        fleet.state("tess", "conf1")
    history = fleet.minion("tess", "web1")
    assert [j["function"] for j in history["jobs"]] == ["test.ping"]
    store.flush(timeout=10)
    denied = fleet.audit("root", decision="deny")["entries"]
    assert {e["action"] for e in denied} >= {"minions", "states", "state"}


def test_a_minions_history_newest_first_with_its_result_in_each_job(fleet):
    history = check_against(MinionHistory, fleet.minion("root", "web1"))
    assert [(j["function"], j["result"]) for j in history["jobs"]] == [
        ("test.ping", "failed"),
        ("state.apply", "failed"),
    ]
    run = history["jobs"][1]
    assert run["failing_states"] == ["conf1"] and run["counts"]["changed"] == 1
    assert [j["result"] for j in fleet.minion("root", "web2")["jobs"]] == ["changed"]
    only = fleet.minion("root", "web1", fun="state.*", result="failed")
    assert [j["jid"] for j in only["jobs"]] == [fleet.jids["latest"]]
    assert fleet.minion("root", "web1", result="pass")["jobs"] == []
    with pytest.raises(QueryError, match="no minion 'nobody'"):
        fleet.minion("root", "nobody")
    with pytest.raises(QueryError, match="result must be one of"):
        fleet.minion("root", "web1", result="bad")


def test_failing_states_across_the_fleet_in_a_window(fleet):
    page = check_against(StatesPage, fleet.states("root", window="7d"))
    assert [(s["state_id"], s["minions"], s["runs"]) for s in page["states"]] == [("conf1", 2, 2)]
    # The run on db1 the day before is out of the default window (24h).
    assert [(s["minions"], s["runs"]) for s in fleet.states("root")["states"]] == [(1, 1)]
    conf1 = page["states"][0]
    assert conf1["comment"] == "conf1 failed" and conf1["function"] == "file.managed"
    assert conf1["sls"] == "app"
    assert [s["runs"] for s in fleet.states("root", window="4h")["states"]] == [1]
    changed = fleet.states("root", result="changed")["states"]
    assert sorted(s["state_id"] for s in changed) == ["conf0", "conf2"]
    assert fleet.states("root", window="7d", minion="db*")["states"][0]["minions"] == 1
    assert fleet.states("root", sls="nope")["states"] == []


def test_one_states_history_across_runs_and_minions(fleet):
    history = check_against(StateHistory, fleet.state("root", "conf1"))
    assert [(r["minion"], r["result"]) for r in history["runs"]] == [
        ("web1", "failed"), ("db1", "failed")]  # fmt: skip
    assert history["failed"]["runs"] == 2 and history["failed"]["minions"] == 2
    assert history["failed"]["first"] < history["failed"]["last"]
    seen, cursor = [], None
    while True:
        page = fleet.state("root", "conf1", limit=1, cursor=cursor)
        seen += [r["minion"] for r in page["runs"]]
        if not (cursor := page["next"]):
            break
    assert seen == ["web1", "db1"]
    assert fleet.state("root", "conf3")["runs"] == []


def test_the_job_listing_carries_and_filters_the_result(fleet):
    jobs = fleet.jobs("root")["jobs"]
    assert {j["jid"]: j["result"] for j in jobs} == {
        fleet.jids["ping"]: "failed", fleet.jids["latest"]: "failed",
        fleet.jids["day_before"]: "failed"}  # fmt: skip
    publish(fleet.store, "20261201000000000001", fun="test.ping", minions=("web2",))
    save_return(fleet.store, ret("20261201000000000001", "web2", fun="test.ping"))
    assert [j["jid"] for j in fleet.jobs("root", result="pass")["jobs"]] == ["20261201000000000001"]
    assert fleet.jobs("root", result="changed")["jobs"] == []
    with pytest.raises(QueryError, match="result must be one of"):
        fleet.jobs("root", result="good")


def test_the_master_is_no_minion_and_bookkeeping_is_no_latest_job(store):
    run, probe, orch = "20261201100000000000", "20261201110000000000", "20261201120000000000"
    publish(store, run, fun="test.ping", minions=("web1",))
    save_return(store, ret(run, "web1", fun="test.ping"))
    publish(store, probe, fun="saltutil.find_job", minions=("web1",))
    save_return(store, ret(probe, "web1", fun="saltutil.find_job"))
    # A runner's return is stored under the master's id.
    save_return(store, ret(orch, "master_id", fun="runner.state.orchestrate"))
    rows = minion_rows(store)
    assert set(rows) == {"web1"}
    assert rows["web1"].last_jid == run


def test_a_states_failure_totals_read_the_index_of_failed_states_alone(store):
    """halite.state's totals (runs, minions, first, last failure) are read from an index
    alone: on PostgreSQL the partial index of the failed states (revision 0012), on SQLite
    the index of (state_id, result, minion, ...)."""
    from sqlalchemy import event

    from halite_core.api import StateQuery
    from halite_core.fleet import state_history

    for n in range(3):
        jid = f"2026120110000000000{n}"
        publish(store, jid, fun="state.apply", minions=("web1", "web2"))
        save_return(store, state_ret(jid, "web1", failing=[1], changing=[2]))
        save_return(store, state_ret(jid, "web2", changing=[1]))
    seen = []
    with store.db.read() as conn:

        def capture(_conn, _cursor, statement, parameters, _context, _many):
            seen.append((statement, parameters))

        event.listen(conn, "before_cursor_execute", capture)
        history = state_history(conn, "conf1", StateQuery())
        event.remove(conn, "before_cursor_execute", capture)
        ((statement, parameters),) = [(s, p) for s, p in seen if "count(" in s]
        assert "'failed'" in statement  # written in, so that the partial index applies
        if store.db.is_sqlite:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = " ".join(row[-1] for row in rows)
            assert "COVERING INDEX ix_state_results_state_id_result_minion" in plan, plan
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a few rows: no scan
            lines = conn.exec_driver_sql("EXPLAIN " + statement, parameters).scalars()
            plan = "\n".join(lines)
            own = set(conn.exec_driver_sql(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'ix_state_results_failed'::regclass"
            ).scalars())  # fmt: skip
            assert set(re.findall(r"Index Only Scan using (\S+)", plan)) & own, plan
    assert (history["failed"]["runs"], history["failed"]["minions"]) == (3, 1)


@postgresql_only("PostgreSQL's JIT compiler")
def test_the_minions_refresh_is_not_compiled_by_postgresqls_jit(store):
    """Retention's refresh of the minions' rows runs with JIT off: on a partition without
    statistics each 400-minion statement was compiled, 0.7 s for a statement of 0.04 s."""
    from halite_core.store import fleet

    publish(store, "20261201100000000000", fun="test.ping", minions=("web1",))
    save_return(store, ret("20261201100000000000", "web1", True, fun="test.ping"))
    with store.db.write() as conn:
        assert conn.exec_driver_sql("SHOW jit").scalar() == "on"
        fleet.refresh_listed(conn, ["web1"])
        assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
    with store.db.read() as conn:
        assert conn.exec_driver_sql("SHOW jit").scalar() == "on"  # for that transaction only
    assert minion_rows(store)["web1"].last_jid == "20261201100000000000"
