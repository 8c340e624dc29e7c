"""Time partitions on PostgreSQL (halite_core/store/partitions.py): created ahead by several
masters at once, retention by dropping whole partitions with the boundary cleaned exactly,
the migration of a populated unpartitioned database, and reads of one job pruned to one
partition. The interval arithmetic runs on either database."""

import contextlib
import dataclasses
import datetime as dt
import importlib.util
import json
import logging
import threading
from pathlib import Path

from alembic import command
from sqlalchemy import event, func, inspect, select, text

from halite_core import queries
from halite_core.jobcache import JobStore
from halite_core.service import Service
from halite_core.store import db as dbmod
from halite_core.store import partitions
from halite_core.store.partitions import Range
from halite_core.store.schema import (
    cleaned_jobs,
    job_returns,
    jobs_index,
    minion_status,
    state_results,
)
from tests.conftest import postgresql_only
from tests.helpers import publish, ret, save_return
from tests.test_fleet import POLICY, state_ret

UTC = dt.timezone.utc
D1, D2, D3 = dt.date(2026, 11, 20), dt.date(2026, 11, 21), dt.date(2026, 11, 22)


def jid_at(day, hour, n=0):
    return f"{day:%Y%m%d}{hour:02d}0000{n:06d}"


def started(jid):
    return dt.datetime.strptime(jid[:20], "%Y%m%d%H%M%S%f").replace(tzinfo=UTC)


# ------------------------------------------------------------------ intervals (any database)
def test_intervals_start_on_their_day_monday_or_first_and_follow_on():
    day = dt.date(2026, 12, 31)  # a Thursday
    assert partitions.wanted(day, "day", 2) == [
        Range(dt.date(2026, 12, 31), dt.date(2027, 1, 1)),
        Range(dt.date(2027, 1, 1), dt.date(2027, 1, 2)),
        Range(dt.date(2027, 1, 2), dt.date(2027, 1, 3)),
    ]
    assert partitions.wanted(day, "week", 1) == [
        Range(dt.date(2026, 12, 28), dt.date(2027, 1, 4)),
        Range(dt.date(2027, 1, 4), dt.date(2027, 1, 11)),
    ]
    assert partitions.wanted(dt.date(2027, 1, 31), "month", 1) == [
        Range(dt.date(2027, 1, 1), dt.date(2027, 2, 1)),
        Range(dt.date(2027, 2, 1), dt.date(2027, 3, 1)),
    ]
    assert Range(D1, D2).bounds() == ("20261120", "20261121")
    assert Range(D1, D2).suffix == "p20261120"


def test_a_changed_interval_starts_after_the_partitions_already_made():
    """Weekly partitions asked for where daily ones exist: only the days not covered are
    made, so no range overlaps another (PostgreSQL would refuse it)."""
    daily = [Range(D1, D2), Range(D2, D3)]
    week = Range(dt.date(2026, 11, 16), dt.date(2026, 11, 23))
    assert partitions.uncovered([week], daily) == [
        Range(dt.date(2026, 11, 16), D1),
        Range(D3, dt.date(2026, 11, 23)),
    ]
    assert partitions.uncovered([Range(D1, D2)], daily) == []


# ------------------------------------------------------------------ PostgreSQL
pytestmark_pg = postgresql_only("partitions are PostgreSQL's; SQLite keeps plain tables")


def partition_of(store, table, jid):
    with store.db.read() as conn:
        return conn.execute(
            text(f"SELECT tableoid::regclass::text FROM {table} WHERE jid = :jid"), {"jid": jid}
        ).scalar()


def names(store, table="jobs_index"):
    with store.db.read() as conn:
        return set(partitions.existing(conn, table))


@pytestmark_pg
def test_two_masters_create_the_partitions_ahead_at_once_each_one_once(store, settings, caplog):
    """Two masters' stores on one database (two engines, two connection pools) write their
    first publishes at the same moment: each one's write checks the partitions ahead
    (current day and two more) and creates what is missing, under one lock; the other finds
    them made. No creation fails (none is retried later), no write fails, each partition
    is there once, and each job is in its day's partition."""
    other = JobStore(dataclasses.replace(settings, master_id="master2"),
                     dbmod.Database(settings.db_url))  # fmt: skip
    stores = (store, other)
    for each in stores:
        each.db.partitions.today = lambda: D1
        each.db.ensure_schema()
    assert names(store) == {"jobs_index_default"}
    caplog.set_level(logging.INFO)
    failures, ready = [], threading.Barrier(2)

    def first_write(each, n):
        ready.wait()
        try:  # Database.write makes the partitions ahead first (Partitions.maybe_create)
            publish(each, jid_at(D2, 10, n), minions=("m1",))
            save_return(each, ret(jid_at(D2, 10, n), "m1"))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=first_write, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert failures == []
        assert "could not create the partitions ahead" not in caplog.text
        expected = {"jobs_index_p20261120", "jobs_index_p20261121", "jobs_index_p20261122"}
        created = [r.getMessage() for r in caplog.records if "created partitions" in r.getMessage()]
        assert len(created) in (1, 2)  # by one master, or some by each
        for table in ("jobs_index", "job_returns", "state_results"):
            assert names(store, table) == {
                name.replace("jobs_index", table) for name in expected | {"jobs_index_default"}
            }
        for n in range(2):
            assert partition_of(store, "jobs_index", jid_at(D2, 10, n)) == "jobs_index_p20261121"
            assert partition_of(store, "job_returns", jid_at(D2, 10, n)) == (
                "job_returns_p20261121"
            )
    finally:
        other.close()
        other.db.dispose()


@pytestmark_pg
def test_the_writer_keeps_partitions_ahead_and_a_future_jid_moves_to_its_partition(store, caplog):
    """The store's own writes create the partitions ahead. A job published under a clock
    days ahead goes to the default partition; when its day comes, its partitions are made
    with the job's rows (its return, its changed states) moved in from the default ones,
    which it then leaves: retention can drop that day whole. That is said, nothing is lost,
    and later writes of the job go to its partition. A move that cannot have its locks
    holds up neither the other partitions nor the tables' other partitions."""
    store.db.partitions.today = lambda: D1
    ahead = jid_at(D3 + dt.timedelta(days=3), 8)
    publish(store, jid_at(D1, 9), minions=("m1",))
    publish(store, ahead, fun="state.apply", minions=("m1", "m2"))
    save_return(store, state_ret(ahead, "m1", failing=[0]))
    store.flush()
    assert partition_of(store, "jobs_index", jid_at(D1, 9)) == "jobs_index_p20261120"
    for table in ("jobs_index", "job_returns", "state_results"):
        assert partition_of(store, table, ahead) == f"{table}_default"
    before = store.get_jid(ahead)
    caplog.set_level(logging.WARNING)
    due = D3 + dt.timedelta(days=2)
    # A move that fails (here a table of another's in the way, with the name of the new
    # partition) is undone whole; the other partitions are made all the same, and the job
    # stays where it is.
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE job_returns_p20261125 (x integer)")
    with store.db.engine.begin() as conn:
        created = partitions.create_ahead(conn, due, "day", 2)
    assert created == ["jobs_index_p20261124", "jobs_index_p20261126"]
    assert "no partition yet for jids 20261125 to 20261126" in caplog.text
    assert "already exists" in caplog.text
    assert "jobs_index_p20261125" not in names(store)
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE job_returns_p20261125")
    assert partition_of(store, "jobs_index", ahead) == "jobs_index_default"
    assert store.get_jid(ahead) == before
    # At the next check, with a VACUUM on an old partition (which the move does not need).
    with store.db.engine.connect() as vacuum:
        vacuum.exec_driver_sql("LOCK TABLE job_returns_p20261120 IN SHARE UPDATE EXCLUSIVE MODE")
        with store.db.engine.begin() as conn:
            created = partitions.create_ahead(conn, due, "day", 2)
        vacuum.rollback()
    assert created == ["jobs_index_p20261125"]
    assert "held 1 jobs of jids 20261125 to 20261126" in caplog.text
    for table in ("jobs_index", "job_returns", "state_results"):
        assert partition_of(store, table, ahead) == f"{table}_p20261125"
        assert f"{table}_default" in names(store, table)
        with store.db.read() as conn:
            left = conn.execute(text(f"SELECT count(*) FROM {table}_default")).scalar()
            assert left == 0, table
    assert store.get_jid(ahead) == before
    job = store.get_load(ahead)
    assert job["Minions"] == ["m1", "m2"]
    save_return(store, ret(ahead, "m2", fun="state.apply"))
    store.flush()
    assert set(store.get_jid(ahead)) == {"m1", "m2"}
    with store.db.read() as conn:
        counts = conn.execute(
            select(jobs_index.c.minions_returned, jobs_index.c.status).where(
                jobs_index.c.jid == ahead
            )
        ).one()
    assert tuple(counts) == (2, "complete")


def age(store, jid, at, running=False):
    """Make ``jid`` written, answered and (unless running) ended at ``at``."""
    with store.db.write() as conn:
        conn.execute(
            jobs_index.update()
            .where(jobs_index.c.jid == jid)
            .values(created_at=at, last_return_at=at, end_time=None if running else at)
        )


@pytestmark_pg
def test_retention_drops_whole_partitions_and_cleans_the_boundary_exactly(store, caplog):
    """keep_jobs_seconds of 6 h at noon on D3: the partition of D1 (every job to go) is
    dropped whole; D2's holds a running job, so only its idle job goes, row by row; in
    D3's (the boundary) the job before the cut-off goes and the later one stays; an old
    job in the default partition goes too. Each removed jid is remembered, a late return
    for one is dropped, and the minions' latest runs come from what is left."""
    store.db.partitions.today = lambda: D1
    a1, a2 = jid_at(D1, 10, 1), jid_at(D1, 11, 2)
    b1, b2 = jid_at(D2, 10, 1), jid_at(D2, 11, 2)
    c1, c2 = jid_at(D3, 3, 1), jid_at(D3, 9, 2)
    old = jid_at(dt.date(2026, 11, 10), 10)  # no partition of its own: the default's
    publish(store, a1, fun="state.apply", minions=("web1", "web3"))
    save_return(store, state_ret(a1, "web1", failing=[1]))
    save_return(store, state_ret(a1, "web3", failing=[2]))
    publish(store, a2, minions=("web1",))
    save_return(store, ret(a2, "web1"))
    for jid in (b1, b2, c1, c2, old):
        publish(store, jid, fun="state.apply", minions=("web1", "web2"))
        save_return(store, state_ret(jid, "web1", changing=[0]))
        if jid != b2:
            save_return(store, state_ret(jid, "web2"))
    store.flush()
    for jid in (a1, a2, b1, c1, c2, old):
        age(store, jid, started(jid))
    age(store, b2, started(b2), running=True)
    assert partition_of(store, "state_results", a1) == "state_results_p20261120"
    assert partition_of(store, "jobs_index", old) == "jobs_index_default"
    caplog.set_level(logging.INFO)
    noon = dt.datetime(2026, 11, 22, 12, tzinfo=UTC)
    assert store.clean_old_jobs(keep_seconds=6 * 3600, now=noon) == 5
    assert "dropped partitions jobs_index_p20261120 (2 jobs" in caplog.text
    for table in ("jobs_index", "job_returns", "state_results"):
        assert names(store, table) == {
            f"{table}_default",
            f"{table}_p20261121",
            f"{table}_p20261122",
        }
    with store.db.read() as conn:
        kept = set(conn.scalars(select(jobs_index.c.jid)))
        kept_returns = set(conn.execute(select(job_returns.c.jid, job_returns.c.minion)))
        kept_states = set(conn.scalars(select(state_results.c.jid)))
        cleaned = set(conn.scalars(select(cleaned_jobs.c.jid)))
        latest = {row.minion: row for row in conn.execute(select(minion_status))}
    assert kept == {b2, c2}
    assert kept_returns == {(b2, "web1"), (b2, "web2"), (c2, "web1"), (c2, "web2")}
    assert kept_states == {b2, c2}
    assert cleaned == {a1, a2, b1, c1, old}
    assert set(latest) == {"web1", "web2"}  # web3 returned only in D1's partition
    assert latest["web1"].last_jid == c2 and latest["web1"].state_jid == c2
    save_return(store, ret(a1, "web1"))  # late, for a job whose partition was dropped
    store.flush()
    assert store.get_jid(a1) == {}
    assert store.clean_old_jobs(keep_seconds=6 * 3600, now=noon) == 0  # nothing left to go


@pytestmark_pg
def test_a_populated_unpartitioned_database_is_migrated_row_for_row(store, settings):
    """A history written by halite, taken back to revision 0009's plain tables (a reading
    role granted SELECT on them), then upgraded: every row of the three tables is the
    same, each in the partition made for its month (days before this month go by month),
    the keys, the role's privileges and the search hold, and writes go on."""
    store.db.partitions.today = lambda: D1
    jobs = [jid_at(day, hour, n) for n, (day, hour) in enumerate(
        [(D1, 10), (D2, 10), (D2, 11), (D3, 9), (dt.date(2026, 11, 5), 12)])]  # fmt: skip
    for jid in jobs:
        publish(store, jid, fun="state.apply", minions=("web1", "web2"))
        save_return(store, state_ret(jid, "web1", failing=[0], changing=[1]))
    store.flush()
    cfg = dbmod.alembic_config(store.db)

    def dump():
        with store.db.engine.connect() as conn:
            return {
                table.name: sorted(
                    json.dumps(dict(row._mapping), default=str, sort_keys=True)
                    for row in conn.execute(select(table))
                )
                for table in (jobs_index, job_returns, state_results)
            }

    before = dump()
    assert sum(len(rows) for rows in before.values()) == 5 + 10 + 10
    command.downgrade(cfg, "0009")
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reader')"
            " THEN CREATE ROLE reader; END IF; END $$"
        )
        conn.exec_driver_sql("GRANT SELECT ON jobs_index, job_returns, state_results TO reader")
    with store.db.engine.connect() as conn:
        assert not partitions.is_partitioned(conn)
        assert not partitions.is_partitioned(conn, "job_returns")
    assert dump() == before
    command.upgrade(cfg, "head")
    assert dump() == before
    parts = migration_0010().ranges({started(jid).date() for jid in jobs}, utc_today())
    for jid in jobs:
        (start,) = [lo for lo, hi in parts if lo <= started(jid).date() < hi]
        for table in ("jobs_index", "job_returns", "state_results"):
            assert partition_of(store, table, jid) == f"{table}_p{start:%Y%m%d}"
    with store.db.engine.connect() as conn:
        # The keys, the other roles' privileges and no foreign key (schema.job_of).
        assert inspect(conn).get_pk_constraint("job_returns")["constrained_columns"] == [
            "jid", "minion"
        ]  # fmt: skip
        assert inspect(conn).get_foreign_keys("state_results") == []
        assert conn.exec_driver_sql(
            "SELECT has_table_privilege('reader', 'job_returns', 'SELECT')"
        ).scalar()  # fmt: skip
        found = conn.execute(
            text("SELECT count(*) FROM jobs_index WHERE function ILIKE '%apply%'")
        ).scalar()
    assert found == 5
    save_return(store, state_ret(jobs[1], "web2"))
    store.flush()
    assert set(store.get_jid(jobs[1])) == {"web1", "web2"}


def migration_0010():
    """Revision 0010's module, as Alembic loads it."""
    path = Path(dbmod.__file__).parent / "migrations" / "versions" / "0010_partitions.py"
    spec = importlib.util.spec_from_file_location("halite_revision_0010", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def utc_today():
    return dt.datetime.now(UTC).date()


def test_revision_0010_partitions_the_history_by_month_and_the_days_about_now_by_day():
    ranges = migration_0010().ranges
    today = dt.date(2026, 12, 30)
    days = {dt.date(2024, 1, 5), dt.date(2024, 1, 20), dt.date(2026, 11, 30),
            dt.date(2026, 12, 2), dt.date(2027, 1, 10), dt.date(2027, 3, 1),
            dt.date(9999, 12, 31)}  # fmt: skip
    by_day = [(dt.date(2026, 12, n), dt.date(2026, 12, n + 1)) for n in range(1, 31)]
    assert ranges(days, today) == [
        (dt.date(2024, 1, 1), dt.date(2024, 2, 1)),
        (dt.date(2026, 11, 1), dt.date(2026, 12, 1)),
        *by_day,
        (dt.date(2026, 12, 31), dt.date(2027, 1, 1)),
        (dt.date(2027, 1, 1), dt.date(2027, 1, 2)),
        (dt.date(2027, 1, 2), dt.date(2027, 2, 1)),  # the rest of a month ahead
        (dt.date(2027, 3, 1), dt.date(2027, 4, 1)),
    ]  # 9999-12-31: no range ends past the calendar; the default partition takes it


@pytestmark_pg
def test_four_years_of_history_and_a_jid_of_the_year_9999_are_migrated(store):
    """A job a day for four years and one published under the jid 99991231235959999999:
    the upgrade makes a partition per month of history (a partition per day, each with
    its indexes, asks for more locks than the server allows one transaction: "out of
    shared memory"), and the last jid's job goes to the default partition."""
    today = utc_today()
    jobs = [jid_at(today - dt.timedelta(days=n), 10) for n in range(1, 1501)]
    jobs.append("99991231235959999999")
    for jid in jobs:
        publish(store, jid, fun="test.ping", minions=("m1",))
    store.flush()
    cfg = dbmod.alembic_config(store.db)
    command.downgrade(cfg, "0009")
    command.upgrade(cfg, "head")
    assert partition_of(store, "jobs_index", jobs[-1]) == "jobs_index_default"
    assert partition_of(store, "job_returns", jobs[-1]) == "job_returns_default"
    months = {jid[:6] for jid in jobs[:-1] if jid[:6] < f"{today:%Y%m}"}
    made = names(store) - {"jobs_index_default"}
    assert len(made) == len(months) + (today + dt.timedelta(days=3) - today.replace(day=1)).days
    for jid in jobs[:-1]:
        assert partition_of(store, "jobs_index", jid) != "jobs_index_default"
    with store.db.read() as conn:
        assert conn.scalar(select(func.count()).select_from(jobs_index)) == len(jobs)


@pytestmark_pg
def test_writes_wait_in_the_spool_while_the_upgrade_fails_on_the_database(store, caplog):
    """Another tool made a view on the plain jobs_index of revision 0009: the upgrade
    cannot drop the table, and the writes of a master upgraded meanwhile wait in its
    spool (none set aside); once the view is gone, the next attempt upgrades and
    replays them."""
    publish(store, jid_at(D1, 10), minions=("m1",))
    store.flush()
    command.downgrade(dbmod.alembic_config(store.db), "0009")
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW report_jobs AS SELECT jid, function FROM jobs_index")
    store.db._schema_ready = False  # as in a master that starts on this halite
    caplog.set_level(logging.WARNING)
    later = jid_at(D1, 11)
    load = {"jid": later, "fun": "test.ping", "arg": [], "tgt": ["m1"], "tgt_type": "list",
            "user": "root"}  # fmt: skip
    assert store.record("save_load", later, load, ["m1"]) is True  # as Salt's worker does
    store.flush()
    assert store.spool.waiting() and not list(store.spool.rejected.glob("*"))
    assert "could not upgrade the database" in caplog.text
    assert "report_jobs" in caplog.text or "depend" in caplog.text
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("DROP VIEW report_jobs")
    store.replay_spool()
    assert store.spool.waiting() == []
    assert store.get_load(later)["fun"] == "test.ping"
    with store.db.read() as conn:
        assert partitions.is_partitioned(conn)


# ------------------------------------------------------------------ plans
def relations(plan):
    """The tables a JSON plan reads."""
    found = set()
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            found.add(plan["Relation Name"])
        for value in plan.values():
            found |= relations(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= relations(value)
    return found


@contextlib.contextmanager
def selects_sent(store, needle):
    """The SELECT statements (with their parameters) sent within the block that hold
    ``needle``."""
    sent = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and needle in statement:
            sent.append((statement, parameters))

    event.listen(store.db.engine, "before_cursor_execute", capture)
    try:
        yield sent
    finally:
        event.remove(store.db.engine, "before_cursor_execute", capture)


def read_by(store, statement, parameters):
    """The relations PostgreSQL's plan of ``statement`` reads."""
    with store.db.engine.connect() as conn:
        (plan,) = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
    return relations(plan)


@pytestmark_pg
def test_the_reads_of_one_job_are_pruned_to_its_partition(store, settings):
    """Every statement the runners' and Salt's reads of one job send (its detail, its
    returns, Salt's get_jid and get_load) reads one partition of each partitioned table:
    EXPLAIN of each, with its own parameters, names no partition of another day (but the
    lookup of the job's re-runs, which may be of any day)."""
    store.db.partitions.today = lambda: D1
    for day in (D1, D2, D3):
        publish(store, jid_at(day, 10), fun="state.apply", minions=("web1",))
        save_return(store, state_ret(jid_at(day, 10), "web1", failing=[0]))
    store.flush()
    target = jid_at(D2, 10)
    with selects_sent(store, "jid") as sent:
        Service(store, POLICY).job("root", target)
        store.get_jid(target)
        store.get_load(target)
    assert sent
    # A job's re-runs are other jobs, of any day: that lookup probes the partial index of
    # re-runs in each partition (ix_jobs_index_rerun_of), and is the one read left whole.
    reruns = [statement for statement, _ in sent if "rerun_of =" in statement]
    assert len(reruns) == 1
    seen = set()
    for statement, parameters in sent:
        if statement in reruns:
            continue
        read = read_by(store, statement, parameters)
        others = {name for name in read if "_p2026" in name and "_p20261121" not in name}
        assert not others, (statement, read)
        assert not {"jobs_index_default", "job_returns_default"} & read, (statement, read)
        seen |= read
    assert {"jobs_index_p20261121", "job_returns_p20261121"} <= seen


@pytestmark_pg
def test_reads_bounded_in_time_leave_out_the_partitions_of_earlier_days(store, settings):
    """A job's start time is its jid's, so a listing from a start time (its later pages, a
    minion's jobs), the activity chart and the timeline bound the jid too, and PostgreSQL
    reads no partition more than a day before the bound: EXPLAIN of each names none of
    D1's, and the answers are those of the start times alone."""
    store.db.partitions.today = lambda: D1
    for day in (D1, D2, D3):
        for hour in (9, 23):
            publish(store, jid_at(day, hour), fun="test.ping", minions=("web1", "web2"))
            save_return(store, ret(jid_at(day, hour), "web1", fun="test.ping"))
    store.flush()
    service = Service(store, POLICY)
    since = dt.datetime.combine(D3, dt.time(10), UTC)
    # The reads with a start-time bound (the count of running jobs has none: those are of
    # any day).
    with selects_sent(store, "start_time >=") as sent:
        page = service.jobs("root", start=since.isoformat())
        midnight = dt.datetime.combine(D3, dt.time(0), UTC).isoformat()
        first = service.jobs("root", start=midnight, limit=1)
        second = service.jobs("root", start=midnight, cursor=first["next"])
        theirs = service.jobs("root", minion="web1", start=since.isoformat())
        with store.db.read() as conn:
            late = dt.datetime.combine(D3, dt.time(23, 30), UTC)
            chart = queries.activity(conn, 12, now=late)
            bars = queries.timeline(conn, "1h", now=late)
    assert [job["jid"] for job in page["jobs"]] == [jid_at(D3, 23)]
    assert [job["jid"] for job in first["jobs"] + second["jobs"]] == [
        jid_at(D3, 23),
        jid_at(D3, 9),
    ]
    assert [job["jid"] for job in theirs["jobs"]] == [jid_at(D3, 23)]
    assert chart["total"] == 1
    assert [bar["jid"] for row in bars["rows"] for bar in row["bars"]] == [jid_at(D3, 23)]
    assert len(sent) == 6
    for statement, parameters in sent:
        read = read_by(store, statement, parameters)
        assert not {name for name in read if name.endswith("_p20261120")}, (statement, read)


@pytestmark_pg
def test_a_partition_written_to_during_retention_is_not_dropped(store):
    """A late write to an old job, in a transaction still open when retention starts and
    committed while it waits: the drop locks the partition before it looks at its jobs,
    so it sees the write, and the job (active again) is kept, partition and all."""
    store.db.partitions.today = lambda: D1
    old = jid_at(D1, 10)
    publish(store, old, minions=("web1",))
    save_return(store, ret(old, "web1"))
    store.flush()
    age(store, old, started(old))
    noon = dt.datetime(2026, 11, 22, 12, tzinfo=UTC)
    with store.db.engine.connect() as late:
        late.execute(
            jobs_index.update().where(jobs_index.c.jid == old).values(last_return_at=noon)
        )  # not committed yet: committed half a second into retention's wait
        timer = threading.Timer(0.5, late.commit)
        timer.start()
        try:
            assert store.clean_old_jobs(keep_seconds=6 * 3600, now=noon) == 0
        finally:
            timer.join()
    assert "jobs_index_p20261120" in names(store)
    assert set(store.get_jid(old)) == {"web1"}
