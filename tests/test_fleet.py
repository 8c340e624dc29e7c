"""The fleet's tables (state_results, minion_status) and each job's result, as the
committer keeps them, and the fleet queries over them."""

import datetime as dt

from sqlalchemy import select

from halite_core.store.schema import jobs_index, minion_status, state_results
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
