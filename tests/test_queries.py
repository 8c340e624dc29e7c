"""Listing semantics on a synthetic index: filters, combinations, pagination, time zones."""

import base64
import datetime as dt
import re

import pytest

from halite_core.config import Settings
from halite_core.jobcache import JobStore
from halite_core.queries import (
    JobFilter,
    QueryError,
    decode_cursor,
    encode_cursor,
    list_jobs,
    listing_query,
)
from tests.conftest import BACKEND, postgresql_only, sqlite_only
from tests.helpers import publish, restricted_role, ret, save_return

UTC = dt.timezone.utc


@pytest.fixture
def index(store):
    """Twelve jobs a minute apart (12:00 .. 12:11 UTC), of varied kinds."""
    kinds = [
        ("test.ping", ["web1", "web2"], "root"),
        ("state.apply", ["web1"], "sudo_alice"),
        ("cmd.run", ["db1"], "root"),
        ("saltutil.find_job", ["web2"], "root"),
        ("state.highstate", ["web1", "db1"], "bob"),
        ("test.arg", ["db1"], "sudo_alice"),
    ]
    for minute in range(12):
        fun, minions, user = kinds[minute % len(kinds)]
        jid = f"2026112812{minute:02d}00000000"
        publish(store, jid, fun=fun, minions=minions, user=user)
        if minute % 3 != 2:  # some jobs stay running
            for minion in minions:
                save_return(store, ret(jid, minion, fun=fun))
    return store


def listing(store, **kwargs):
    limit = kwargs.pop("limit", 50)
    cursor = kwargs.pop("cursor", None)
    with store.db.read() as conn:
        return list_jobs(conn, JobFilter.parse(kwargs), limit=limit, cursor=cursor)


def jids(page):
    return [job["jid"] for job in page["jobs"]]


def test_newest_first_and_system_jobs_hidden(index):
    page = listing(index)
    assert [job["start_time"][11:16] for job in page["jobs"]] == [
        f"12:{m:02d}" for m in (11, 10, 8, 7, 6, 5, 4, 2, 1, 0)
    ]  # 12:03 and 12:09 are saltutil.find_job
    assert page["next"] is None
    assert len(listing(index, include_system=True)["jobs"]) == 12
    job = page["jobs"][0]
    assert set(job) >= {"jid", "function", "target", "target_type", "user", "start_time",
                        "end_time", "status", "minions"}  # fmt: skip
    assert job["start_time"].endswith("+00:00")


def test_each_filter(index):
    assert {j["function"] for j in listing(index, fun="state.*")["jobs"]} == {
        "state.apply", "state.highstate"
    }  # fmt: skip
    assert {j["function"] for j in listing(index, fun="test.ping")["jobs"]} == {"test.ping"}
    assert {j["function"] for j in listing(index, fun="test.?rg")["jobs"]} == {"test.arg"}
    assert all("db1" in j["target"] for j in listing(index, target="*db1*")["jobs"])
    assert {j["user"] for j in listing(index, user="sudo_alice")["jobs"]} == {"sudo_alice"}
    running = listing(index, status="running")["jobs"]
    assert running and all(j["status"] == "running" for j in running)
    assert all(j["status"] == "complete" for j in listing(index, status="complete")["jobs"])
    web2 = listing(index, minion="web2", include_system=True)["jobs"]
    assert {j["function"] for j in web2} == {"test.ping", "saltutil.find_job"}
    assert jids(listing(index, search="highstate")) == [
        j["jid"] for j in listing(index, fun="state.highstate")["jobs"]
    ]
    window = listing(
        index,
        start=dt.datetime(2026, 11, 28, 13, 4, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        end=dt.datetime(2026, 11, 28, 12, 7, tzinfo=UTC),
    )["jobs"]
    assert [j["start_time"][11:16] for j in window] == ["12:06", "12:05", "12:04"]


def test_time_bounds_at_the_ends_of_the_calendar_leave_every_job_in(index):
    """Start and end times from year 1 to 9999 are accepted; on PostgreSQL they also bound
    the jid (partition pruning), which must not leave out a job they let in: strftime
    writes the year 999 without its leading zero."""
    everything = jids(listing(index, include_system=True))
    assert len(everything) == 12
    for start in ("0001-01-01T00:00:00Z", "0050-06-01T00:00:00Z", "0999-12-31T00:00:00Z"):
        assert jids(listing(index, include_system=True, start=start)) == everything, start
        assert jids(listing(index, include_system=True, minion="web1", start=start))
    assert jids(listing(index, include_system=True, end="9999-12-31T23:59:59Z")) == everything
    assert jids(listing(index, include_system=True, end="0999-12-31T00:00:00Z")) == []


def test_filters_combine(index):
    page = listing(index, fun="state.*", user="bob", minion="db1")
    assert [j["function"] for j in page["jobs"]] == ["state.highstate", "state.highstate"]
    assert listing(index, fun="state.*", user="root")["jobs"] == []


def test_pages_continue_exactly_while_jobs_arrive(index):
    seen = []
    page = listing(index, include_system=True, limit=5)
    while True:
        seen += jids(page)
        # A job published between two page loads never shifts what the next page holds.
        publish(index, f"2026112813{len(seen):02d}00000000", fun="test.ping", minions=["web1"])
        if page["next"] is None:
            break
        page = listing(index, include_system=True, limit=5, cursor=page["next"])
    assert len(seen) == 12 and len(set(seen)) == 12
    assert seen == sorted(seen, reverse=True)


def test_same_second_jobs_page_by_jid(store):
    for n in range(7):
        publish(store, f"20261128120000000{n:03d}_{n}", minions=["m1"])
    first = listing(store, limit=4)
    second = listing(store, limit=4, cursor=first["next"])
    assert len(jids(first)) == 4 and len(jids(second)) == 3
    assert not set(jids(first)) & set(jids(second))


def test_bad_arguments_are_clear_errors(index):
    for limit in (0, 501, "many"):
        with pytest.raises(QueryError, match="limit must be a number from 1 to 500"):
            listing(index, limit=limit)
    with pytest.raises(QueryError, match="not one this listing handed out"):
        listing(index, cursor="garbage!")
    with pytest.raises(QueryError, match="status must be one of running, complete"):
        listing(index, status="finished")
    with pytest.raises(QueryError, match="only the \\* and \\? wildcards"):
        listing(index, fun="test.[ab]*")
    with pytest.raises(QueryError, match="timezone"):
        listing(index, start=dt.datetime(2026, 11, 28, 12, 0))


def test_cursor_round_trips():
    moment = dt.datetime(2026, 11, 28, 12, 0, 0, 1, tzinfo=UTC)
    assert decode_cursor(encode_cursor(moment, "20261128120000000001_7")) == (
        moment, "20261128120000000001_7"
    )  # fmt: skip


@sqlite_only("reads SQLite's EXPLAIN QUERY PLAN")
def test_filtered_listings_use_indexes(index):
    with index.db.engine.connect() as conn:
        for filters in (
            JobFilter(),
            JobFilter(fun="state.*"),
            JobFilter(fun="test.ping"),
            JobFilter(user="root"),
            JobFilter(status="running"),
            JobFilter(minion="web1"),
        ):
            query = listing_query(filters, 51)
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "INDEX" in plan, (filters, plan)
            if filters.fun != "state.*":
                # Exact filters read their index in order: no sort, however many jobs match.
                assert "TEMP B-TREE" not in plan, (filters, plan)


def test_job_detail_puts_failures_first_and_parses_states(store):
    from halite_core.queries import job_detail

    jid = "20261128120000000077"
    states = {
        "cmd_|-broken_|-false_|-run": {"result": False, "comment": "boom", "changes": {},
                                       "duration": 2, "__run_num__": 1, "__id__": "broken"},
        "file_|-conf_|-/etc/app_|-managed": {"result": True, "comment": "ok", "changes": {},
                                             "duration": 1, "__run_num__": 0},
    }  # fmt: skip
    publish(store, jid, fun="state.apply", minions=["a-ok", "b-bad", "c-late", "d-busy"],
            arg=["app", {"__kwarg__": True, "test": True}])  # fmt: skip
    ok = {k: {**v, "result": True} for k, v in states.items()}
    save_return(store, ret(jid, "a-ok", ok, fun="state.apply"))
    save_return(store, ret(jid, "b-bad", states, fun="state.apply", retcode=2, success=False))
    busy = ['The function "state.apply" is running as PID 7 and was started at x with jid y']
    save_return(store, ret(jid, "d-busy", busy, fun="state.apply", retcode=1, success=False))
    with store.db.read() as conn:
        detail = job_detail(conn, jid)
    assert detail["arguments"] == ["app"] and detail["kwargs"] == {"test": True}
    order = [(m["minion"], m["state"], m["failed"]) for m in detail["minion_results"]]
    assert order == [("b-bad", "returned", True), ("d-busy", "returned", True),
                     ("a-ok", "returned", False), ("c-late", "running", False)]  # fmt: skip
    bad = detail["minion_results"][0]
    assert bad["highstate"]["failing"] == [{"id": "broken", "comment": "boom"}]
    assert detail["minion_results"][1]["highstate"]["kind"] == "already_running"
    assert detail["states"] == {"states": 4, "passed": 3, "failed": 1, "changed": 0,
                                "duration_ms": 6.0}  # fmt: skip
    with store.db.read() as conn:
        with pytest.raises(QueryError, match="no job with jid 20000101000000000000"):
            job_detail(conn, "20000101000000000000")
        with pytest.raises(QueryError, match="is not a Salt job id"):
            job_detail(conn, "last")


def test_activity_counts_jobs_per_hour_including_the_current_one(index):
    from halite_core.queries import activity

    publish(index, "20261128094500000000", minions=["web1"])  # outside a 3-hour window
    with index.db.read() as conn:
        result = activity(conn, hours=3, now=dt.datetime(2026, 11, 28, 12, 30, tzinfo=UTC))
    assert [b["hour_start"] for b in result["hours"]] == [
        "2026-11-28T10:00:00+00:00", "2026-11-28T11:00:00+00:00", "2026-11-28T12:00:00+00:00",
    ]  # fmt: skip
    assert [b["count"] for b in result["hours"]] == [0, 0, 10]  # the 12:xx jobs, not system
    assert result["total"] == 10
    assert result["running"] == len(listing(index, status="running")["jobs"]) == 5
    # The hour's running jobs; the running total also counts the 09:45 one.
    assert result["hours"][-1]["results"] == {"running": 4, "failed": 0, "changed": 0, "pass": 6}
    with index.db.read() as conn, pytest.raises(QueryError, match="hours must be"):
        activity(conn, hours=0)


def test_activity_counts_each_hour_by_the_listings_result(store):
    """Per hour the jobs by result (the chart's stacks): the same jobs the listing gives
    for that result, and the results of an hour add up to its count."""
    from halite_core.queries import activity
    from tests.test_fleet import state_ret

    def job(jid, minions, *returns, fun="state.apply"):
        publish(store, jid, fun=fun, minions=minions)
        for value in returns:
            save_return(store, value)

    job("20261128100100000000", ["web1"], state_ret("20261128100100000000", "web1", failing=[1]))
    job("20261128100200000000", ["web1"], state_ret("20261128100200000000", "web1", changing=[0]))
    job("20261128100300000000", ["web1"], state_ret("20261128100300000000", "web1"))
    job("20261128110100000000", ["web1", "web2"], state_ret("20261128110100000000", "web1"))
    job("20261128110200000000", ["web2"], state_ret("20261128110200000000", "web2", changing=[0]))
    job("20261128110300000000", ["db1"], ret("20261128110300000000", "db1", fun="test.ping"),
        fun="test.ping")  # fmt: skip
    job("20261128110400000000", ["db1"], fun="saltutil.find_job")  # bookkeeping: left out
    with store.db.read() as conn:
        hours = activity(conn, hours=3, now=dt.datetime(2026, 11, 28, 12, 5, tzinfo=UTC))["hours"]
    assert [(b["hour_start"][11:13], b["count"], b["results"]) for b in hours] == [
        ("10", 3, {"running": 0, "failed": 1, "changed": 1, "pass": 1}),
        ("11", 3, {"running": 1, "failed": 0, "changed": 1, "pass": 1}),
        ("12", 0, {"running": 0, "failed": 0, "changed": 0, "pass": 0}),
    ]  # fmt: skip
    for b in hours[:2]:
        start = dt.datetime.fromisoformat(b["hour_start"])
        end = (start + dt.timedelta(hours=1)).isoformat()  # jobs started before it
        for result, count in b["results"].items():
            found = listing(store, result=result, start=b["hour_start"], end=end)["jobs"]
            assert len(found) == count, (b["hour_start"], result)


def test_timeline_groups_bars_busiest_first(index):
    from halite_core.queries import timeline

    now = dt.datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
    with index.db.read() as conn:
        by_function = timeline(conn, window="4h", group_by="function", now=now)
        by_user = timeline(conn, window="24h", group_by="user", now=now)
    keys = [row["key"] for row in by_function["rows"]]
    assert "saltutil.find_job" not in keys
    counts = [len(row["bars"]) for row in by_function["rows"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) == 10
    bars = [bar for row in by_function["rows"] for bar in row["bars"]]
    assert {bar["status"] for bar in bars} <= {"running", "failed", "changed", "pass"}
    assert any(bar["status"] == "running" for bar in bars)
    assert all(bar["end"] >= bar["start"] for bar in bars)
    assert {row["key"] for row in by_user["rows"]} == {"root", "sudo_alice", "bob"}
    with index.db.read() as conn, pytest.raises(QueryError, match="window must be one of"):
        timeline(conn, window="2d")


@pytest.fixture(scope="module")
def random_index(request, tmp_path_factory):
    """240 jobs with random functions, targets and users (some sharing a start second),
    and the same facts kept in Python to check listings against. Built once for the
    module: its tests only read it (66 listings, each paged to the end)."""
    import random

    opts = {"cachedir": str(tmp_path_factory.mktemp("random_index") / "cache"),
            "id": "master1_master", "keep_jobs_seconds": 3600}  # fmt: skip
    if BACKEND == "postgresql":
        server = request.getfixturevalue("pg_server")
        template = request.getfixturevalue("pg_template")
        opts["halite"] = {"db_url": server.create_database(template=template)}
    store = JobStore(Settings.from_opts(opts))

    rnd = random.Random(5)
    funs = ["test.ping", "test.arg", "state.apply", "state.sls", "state.highstate",
            "cmd.run", "pkg.install", "saltutil.find_job", "grains.items"]  # fmt: skip
    users = ["root", "sudo_alice", "Bob_1", "salt%api"]
    facts = []
    for n in range(240):
        moment = dt.datetime(2026, 11, 28, 10, tzinfo=UTC) + dt.timedelta(seconds=n)
        jid = moment.strftime("%Y%m%d%H%M%S%f")
        if n % 7 == 0 and facts:  # unique_jid style: the same start time, another jid
            jid = f"{facts[-1]['jid'][:20]}_{n}"
        fun = rnd.choice(funs)
        minions = rnd.sample(["web1", "web2", "db1", "db2", "mail"], rnd.randint(1, 3))
        user = rnd.choice(users)
        publish(store, jid, fun=fun, minions=minions, user=user)
        target = ",".join(minions)
        facts.append({"jid": jid, "function": fun, "target": target, "user": user,
                      "minions": minions, "system": fun == "saltutil.find_job"})  # fmt: skip
    yield store, facts
    store.db.dispose()


def expected(facts, fun=None, target=None, search=None, user=None, include_system=False,
             minion=None):  # fmt: skip
    import fnmatch

    out = []
    for f in facts:
        if f["system"] and not include_system:
            continue
        if fun and not fnmatch.fnmatchcase(f["function"], fun):
            continue
        if target and not fnmatch.fnmatchcase(f["target"], target):
            continue
        if user and f["user"] != user:
            continue
        if minion and minion not in f["minions"]:
            continue
        if search and not (
            f["jid"].startswith(search)
            or any(search.lower() in (f[k] or "").lower() for k in ("function", "target", "user"))
        ):
            continue
        out.append(f)
    # Newest first: start time (the jid's first 20 digits here), then jid.
    return [f["jid"] for f in sorted(out, key=lambda f: (f["jid"][:20], f["jid"]), reverse=True)]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"fun": "state.*"},
        {"fun": "test.*"},
        {"fun": "*.ping"},
        {"fun": "s*"},
        {"fun": "nosuch.*"},
        {"fun": "state.*", "user": "root"},
        {"target": "web*"},
        {"target": "*db1*"},
        {"search": "state"},
        {"search": "STATE.AP"},
        {"search": "1_"},
        {"search": "%api"},
        {"search": "ali"},
        {"search": "2026112810"},
        {"search": "1128100"},  # inside jids, not at their start: no jid matches
        {"search": "zz"},
        {"search": "app", "fun": "state.*"},
        {"search": "web", "target": "web*"},
        {"fun": "state.*", "minion": "db1"},
        {"search": "ping", "minion": "web2"},
        {"include_system": True, "fun": "saltutil.*"},
    ],
)
@pytest.mark.parametrize(
    "tuning",
    [
        # (SEARCH_SCAN, GLOB_VALUES, GLOB_SMALL_RANGE)
        (5000, 32, 2000),  # as shipped: this small index is one small range per prefix
        (5000, 32, 0),  # globs merged per matching value
        (3, 2, 0),  # the scan rarely suffices (trigram index); too many values (filter)
    ],
)
def test_every_plan_pages_exactly_like_brute_force(random_index, filters, tuning, monkeypatch):
    """Globs merged per matching value, text search through the newest-jobs scan and through
    the trigram index: page by page, the same jobs in the same order as checking every job."""
    import halite_core.queries as queries

    for name, value in zip(("SEARCH_SCAN", "GLOB_VALUES", "GLOB_SMALL_RANGE"), tuning, strict=True):
        monkeypatch.setattr(queries, name, value)
    store, facts = random_index
    seen, page = [], listing(store, limit=7, **filters)
    while True:
        seen += jids(page)
        if page["next"] is None:
            break
        page = listing(store, limit=7, cursor=page["next"], **filters)
    assert seen == expected(facts, **filters)


@postgresql_only("the pg_trgm search index")
def test_search_on_postgresql_reads_the_trigram_index(random_index):
    """The candidates' expression is the indexed one, so PostgreSQL can answer a rare text
    from the GIN index instead of reading every job."""
    from halite_core.queries import Plan

    store, _ = random_index
    query = listing_query(JobFilter(search="refresh"), 51, None, "postgresql", Plan(search="fts"))
    with store.db.engine.connect() as conn:
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        # 240 jobs: a scan would be cheaper. LOCAL: the pooled connection is shared.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))
        # The index of each partition (PostgreSQL names them) is the search index's own.
        own = set(conn.exec_driver_sql(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'ix_jobs_index_search_trgm'::regclass"
        ).scalars())  # fmt: skip
    scanned = set(re.findall(r"Index Scan on (\S+)", plan))
    assert scanned & own, plan


@postgresql_only("a PostgreSQL role that may not create extensions")
def test_search_without_pg_trgm_is_still_exact(pg_server, tmp_path, caplog):
    """A role without CREATE on its database gets the schema without the search index, a
    warning that says how to add it, and the same search results (by scanning)."""
    with restricted_role(pg_server, "halite_plain", "CREATE") as (plain, _, _):
        opts = {"cachedir": str(tmp_path / "cache"), "id": "master1_master",
                "halite": {"db_url": plain}}  # fmt: skip
        store = JobStore(Settings.from_opts(opts))
        try:
            with caplog.at_level("WARNING"):
                publish(store, "20261128120000000001", fun="pkg.refresh_db", minions=["web1"])
                publish(store, "20261128120000000002", fun="test.ping", minions=["web1"])
            assert "no search index on PostgreSQL" in caplog.text
            assert "CREATE EXTENSION IF NOT EXISTS pg_trgm" in caplog.text
            with store.db.read() as conn:
                indexes = conn.exec_driver_sql(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'jobs_index'"
                ).scalars().all()  # fmt: skip
            assert indexes and "ix_jobs_index_search_trgm" not in indexes
            assert jids(listing(store, search="refresh")) == ["20261128120000000001"]
        finally:
            store.db.dispose()


@sqlite_only("the FTS5 search index and its triggers")
def test_search_index_follows_updates_and_deletes(store):
    """The trigram index is kept by triggers: a job first known from a return (no
    function yet) is found by function once its publish arrives; deleted jobs are gone."""
    jid = "20261128120000000001"
    save_return(store, ret(jid, "web1", fun="pkg.refresh_db"))
    publish(store, jid, fun="pkg.refresh_db", minions=["web1"], user="carol")
    assert jids(listing(store, search="carol")) == [jid]
    assert jids(listing(store, search="refresh_d")) == [jid]
    with store.db.write() as conn:
        conn.exec_driver_sql(f"DELETE FROM jobs_index WHERE jid = '{jid}'")
    with store.db.read() as conn:
        left = conn.exec_driver_sql("SELECT count(*) FROM job_search").scalar()
        keys = conn.exec_driver_sql("SELECT count(*) FROM job_search_keys").scalar()
    assert (left, keys) == (0, 0)


def test_a_successful_list_of_strings_is_not_a_render_error(store):
    """state.show_states answers a list of strings and succeeds: no failure, kind other;
    the same list from a failed state.apply is a render error."""
    from halite_core.queries import job_detail

    publish(store, "20261128120000000001", fun="state.show_states", minions=["m1"])
    save_return(store, ret("20261128120000000001", "m1", ["core", "edit.vim"],
                          fun="state.show_states"))  # fmt: skip
    publish(store, "20261128120000000002", fun="state.apply", minions=["m1"])
    save_return(store, ret("20261128120000000002", "m1", ["Rendering SLS 'base:x' failed"],
                          fun="state.apply", retcode=1, success=False))  # fmt: skip
    with store.db.read() as conn:
        shown = job_detail(conn, "20261128120000000001")["minion_results"][0]
        failed = job_detail(conn, "20261128120000000002")["minion_results"][0]
    assert (shown["failed"], shown["highstate"]["kind"]) == (False, "other")
    assert (failed["failed"], failed["highstate"]["kind"]) == (True, "render_error")


def test_job_detail_restores_the_garbage_collector(store):
    import gc

    from halite_core.queries import job_detail

    publish(store, "20261128120000000002", minions=["web1"])
    with store.db.read() as conn:
        assert gc.isenabled()
        job_detail(conn, "20261128120000000002")
        assert gc.isenabled()
        gc.disable()
        try:
            job_detail(conn, "20261128120000000002")
            assert not gc.isenabled()
        finally:
            gc.enable()


def test_master_filter_on_a_shared_database(store, settings):
    import dataclasses

    from halite_core.jobcache import JobStore

    other = JobStore(dataclasses.replace(settings, master_id="master2"))
    publish(store, "20261128120000000001", minions=["web1"])
    publish(other, "20261128120000000002", minions=["web9"])
    assert jids(listing(store)) == ["20261128120000000002", "20261128120000000001"]
    assert jids(listing(store, master="master2")) == ["20261128120000000002"]
    assert jids(listing(store, master=settings.master_id)) == ["20261128120000000001"]
    assert listing(store, master="master2")["jobs"][0]["master_id"] == "master2"
    other.db.dispose()


def _service(store):
    from halite_core.permissions import Policy
    from halite_core.service import Service

    return Service(store, Policy.from_config({}, {}, master_user="root"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"start": "9999-12-31T23:59:59-23:59"}, "start: '9999-12-31T23:59:59-23:59' is out of"),
        ({"start": "0001-01-01T00:00:00+14:00"}, "not within the years 1 to 9999"),
        ({"end": "9999-12-31T23:59:59.999999-00:01"}, "end: .* is out of range"),
        ({"end": "0001-01-01T00:00:00.000001+00:01"}, "end: .* is out of range"),
        ({"search": "\x00"}, "search must not contain a NUL character"),
        ({"search": "ping\x00"}, "search must not contain a NUL character"),
        ({"fun": "test.*\x00"}, "fun must not contain a NUL character"),
        ({"user": "\x00"}, "user must not contain a NUL character"),
        ({"target": "\x00", "minion": "m1"}, "target must not contain a NUL"),
        ({"minion": "m1\x00"}, "minion must not contain a NUL character"),
        ({"master": "\x00"}, "master must not contain a NUL character"),
        ({"cursor": "\x00"}, "cursor must not contain a NUL character"),
        ({"limit": float("inf")}, "limit must be a number from 1 to 500"),
        ({"limit": 1e300}, "limit must be a number from 1 to 500"),
    ],
)
def test_extreme_times_and_nul_characters_are_clear_errors(index, arguments, message):
    with pytest.raises(QueryError, match=message):
        _service(index).jobs("root", arguments)


def test_extreme_times_within_range_are_answered(index):
    service = _service(index)
    assert len(service.jobs("root", {"end": "9999-12-31T23:59:59.999999"})["jobs"]) == 10
    assert len(service.jobs("root", {"end": "9999-12-31T23:59:59+14:00"})["jobs"]) == 10
    assert service.jobs("root", {"start": "9999-12-31T23:59:59.999999"})["jobs"] == []
    assert len(service.jobs("root", {"start": "0001-01-01T00:00:00"})["jobs"]) == 10
    assert len(service.jobs("root", {"start": "0001-01-01T23:59:59+14:00"})["jobs"]) == 10
    assert service.jobs("root", {"end": "0001-01-01T00:00:00-23:59"})["jobs"] == []


def test_a_forged_cursor_with_an_extreme_time_is_refused(index):
    for moment in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"):
        forged = base64.urlsafe_b64encode(f"{moment}|20261128120000000000".encode()).decode()
        with pytest.raises(QueryError, match="not one this listing handed out"):
            listing(index, cursor=forged)
        with pytest.raises(QueryError, match="not one this listing handed out"):
            _service(index).audit("root", {"cursor": forged})


def test_the_audit_log_refuses_extreme_times_and_nul_characters(index):
    service = _service(index)
    with pytest.raises(QueryError, match="start: .* is out of range"):
        service.audit("root", {"start": "9999-12-31T23:59:59-23:59"})
    with pytest.raises(QueryError, match="user must not contain a NUL character"):
        service.audit("root", {"user": "root\x00"})


def test_activity_refuses_an_infinite_number_of_hours(index):
    with pytest.raises(QueryError, match="hours must be a number from 1 to 168"):
        _service(index).activity("root", float("inf"))


def test_the_listing_itself_refuses_a_nul_character(index):
    for name in ("search", "fun", "target", "user", "minion", "master"):
        with pytest.raises(QueryError, match=f"{name} must not contain a NUL character"):
            listing(index, **{name: "a\x00"})


@pytest.mark.parametrize("window", [["24h"], {"24h": 1}, None, 24])
def test_a_window_that_is_not_text_is_a_clear_error(index, window):
    with pytest.raises(QueryError, match="window must be one of 1h, 4h, 24h, 7d"):
        _service(index).timeline("root", window)


@pytest.mark.parametrize("hours", [True, False])
def test_hours_must_be_a_number_not_true_or_false(index, hours):
    with pytest.raises(QueryError, match="hours must be a number from 1 to 168"):
        _service(index).activity("root", hours)


@pytest.mark.parametrize("limit", [float("inf"), float("-inf"), float("nan"), 1e300, True, "x"])
def test_a_live_limit_that_is_not_a_count_is_a_clear_error(limit):
    from halite_core.live import live_limit

    with pytest.raises(QueryError, match="limit must be a number from 1 to 500"):
        live_limit(limit)


@pytest.mark.parametrize(
    "key",
    ["\x00", "2026\x00", "x", "", "20261128120000000000 OR 1=1", "\ud800"],
    ids=["nul", "digits-nul", "letter", "empty", "sql", "surrogate"],
)
def test_a_cursor_whose_jid_is_not_a_salt_jid_is_refused(index, key):
    """A NUL reached PostgreSQL, which refused it with a 500 (DataError)."""
    text = f"2026-11-28T12:00:00+00:00|{key}".encode("utf-8", "surrogatepass")
    forged = base64.urlsafe_b64encode(text).decode().rstrip("=")
    with pytest.raises(QueryError, match="not one this listing handed out"):
        listing(index, cursor=forged)
    with pytest.raises(QueryError, match="not one this listing handed out"):
        _service(index).jobs("root", {"cursor": forged})


def test_a_cursor_with_a_jid_and_pid_pages_on(index):
    text = "2026-11-28T12:05:00+00:00|20261128120500000000_12"
    forged = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    jids = [job["jid"] for job in listing(index, include_system=True, cursor=forged)["jobs"]]
    assert jids[0] == "20261128120500000000"  # "_12" sorts after it: the same start, older


def test_a_limit_of_true_is_not_one(index):
    with pytest.raises(QueryError, match="limit must be a number from 1 to 500"):
        _service(index).jobs("root", {"limit": True})
    with pytest.raises(QueryError, match="limit must be a number from 1 to 500"):
        _service(index).audit("root", {"limit": True})


def test_a_minion_whose_states_failed_has_failed_as_the_recount_says(settings):
    """A return too large to keep is stored truncated, but its states were counted as it
    came in: the job's failed count counted the minion (states.minion_failed, in SQL),
    and the detail now says so too (it read only the truncated return before)."""
    import dataclasses

    from halite_core.jobcache import JobStore
    from halite_core.queries import job_detail

    store = JobStore(dataclasses.replace(settings, max_return_bytes=100))
    jid = "20261128120000000078"
    states = {f"cmd_|-s{n}_|-false_|-run": {"result": n != 3, "comment": "x" * 50,
                                           "changes": {}, "__run_num__": n}
              for n in range(5)}  # fmt: skip
    publish(store, jid, fun="state.apply", minions=["m1"])
    save_return(store, ret(jid, "m1", states, fun="state.apply", retcode=0, success=True))
    store.flush()
    with store.db.read() as conn:
        detail = job_detail(conn, jid)
    store.db.dispose()
    assert detail["minion_results"][0]["truncated"] is True
    assert detail["minions"]["failed"] == 1
    assert detail["minion_results"][0]["failed"] is True


def test_the_answers_are_what_their_typed_models_say(index):
    """The answers are built as typed dicts (no validation on the way out): here each
    is checked against its model, strictly and with no key the model does not name."""
    from pydantic import TypeAdapter

    from halite_core.api import Activity, AuditPage, JobDetail, Page, Timeline

    service = _service(index)
    page = service.jobs("root", {"limit": 3, "include_system": "true"})
    assert TypeAdapter(Page).validate_python(page, strict=True) == page
    detail = service.job("root", page["jobs"][0]["jid"])
    assert TypeAdapter(JobDetail).validate_python(detail, strict=True) == detail
    hours = service.activity("root", 2)
    assert TypeAdapter(Activity).validate_python(hours, strict=True) == hours
    bars = service.timeline("root", "24h", "user")
    assert TypeAdapter(Timeline).validate_python(bars, strict=True) == bars
    log = service.audit("root")
    assert TypeAdapter(AuditPage).validate_python(log, strict=True) == log


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"colour": "red"}, "unknown argument 'colour'; known: limit, fun, target"),
        ({"user_filter": "bob"}, "unknown argument 'user_filter'"),
        ({"include_system": "maybe"}, "include_system must be True or False, not 'maybe'"),
        ({"fun": ["a", "b"]}, "fun must be text, not list"),
        ({"status": ""}, "status must be one of running, complete, not ''"),
        ({"fun": "x" * 1025}, "fun must be text of at most 1024 characters"),
    ],
)
def test_the_filter_names_the_argument_it_refuses(index, arguments, message):
    with pytest.raises(QueryError, match=message):
        _service(index).jobs("root", arguments)


def test_a_filter_given_as_text_or_as_values_is_the_same(index):
    as_text = JobFilter.parse({"limit": "2", "include_system": "yes", "user": 1001,
                               "start": "2026-11-28T12:00:00"})  # fmt: skip
    as_values = JobFilter(limit=2, include_system=True, user="1001",
                          start=dt.datetime(2026, 11, 28, 12, tzinfo=UTC))  # fmt: skip
    assert as_text == as_values
    assert _service(index).jobs("root", as_text) == _service(index).jobs("root", as_values)


def test_a_listing_row_previews_the_arguments(store):
    publish(store, "20261128120000000001", fun="state.apply",
            arg=["web", {"test": True, "pillar": {"a": 1}, "__kwarg__": True}])  # fmt: skip
    publish(store, "20261128120000000002", fun="cmd.run", arg=["x" * 200])
    rows = {job["jid"]: job for job in listing(store)["jobs"]}
    assert rows["20261128120000000001"]["arguments_preview"] == 'web test=true pillar={"a":1}'
    long = rows["20261128120000000002"]["arguments_preview"]
    assert len(long) == 80 and long.endswith("…")
