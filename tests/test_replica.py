"""Reads from a streaming replica (halite: read_db_url), with a real primary and a real
replica started on loopback: the runners' reads go to the replica while it is close
enough, to the primary (said in the log) when it falls behind or does not answer; Salt's
job cache reads stay on the primary."""

import dataclasses
import logging
import math
import os
import signal
import threading
import time

import pytest
import sqlalchemy as sa

from halite_core.config import ConfigError, Settings
from halite_core.jobcache import JobStore
from halite_core.metrics import Metrics, render
from halite_core.service import Service
from tests.conftest import postgresql_only
from tests.helpers import free_port, publish, ret, save_return
from tests.test_fleet import POLICY

pg = postgresql_only("a PostgreSQL primary and its streaming replica")


@pytest.fixture(scope="module")
def replica(pg_server):
    server = pg_server.replica()
    server.wait_ready()
    yield server
    server.destroy()


def wait_until(check, timeout=30, what=""):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def on(url, statement):
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(statement).all()
    except sa.exc.DBAPIError:  # not there yet (the database, or its tables)
        return None
    finally:
        engine.dispose()


def replicated(replica, database_url, jid):
    """Whether the replica has replayed job ``jid``."""
    url = replica.url(sa.make_url(database_url).database)
    found = on(url, f"SELECT 1 FROM jobs_index WHERE jid = '{jid}'")
    return bool(found)


@pytest.fixture
def replicated_store(settings, replica):
    url = replica.url(sa.make_url(settings.db_url).database)
    store = JobStore(dataclasses.replace(settings, read_db_url=url, read_max_lag=60))
    store.views.check_every = 0  # measure the lag at each read
    yield store
    on(replica.url(), "SELECT pg_wal_replay_resume()")
    store.close()


def listed(service):
    return {job["jid"] for job in service.jobs("root")["jobs"]}


@pg
def test_reads_leave_a_replica_that_falls_behind_and_come_back_to_it(
    replicated_store, settings, replica, caplog
):
    store, first, second = replicated_store, "20261202100000000001", "20261202100000000002"
    service = Service(store, POLICY)
    publish(store, first, fun="test.ping", minions=("m1",))
    save_return(store, ret(first, "m1", fun="test.ping"))
    store.flush()
    wait_until(lambda: replicated(replica, settings.db_url, first), what="the replica has it")
    assert listed(service) == {first}
    assert store.views.source == "replica"
    on(replica.url(), "SELECT pg_wal_replay_pause()")
    publish(store, second, fun="test.ping", minions=("m1",))
    store.flush()
    # Salt's job cache reads the primary: the job just published is there at once.
    assert store.get_load(second)["fun"] == "test.ping"
    # The runners read the replica, behind but within read_max_lag: not yet there.
    assert listed(service) == {first}
    assert store.views.source == "replica"
    # What this process just committed (a kill, a re-run) is read back from the primary.
    store.read_own_writes()
    assert listed(service) == {first, second}
    store.views._primary_until = 0  # as once read_max_lag has passed
    assert listed(service) == {first}
    caplog.set_level(logging.WARNING)
    store.views.max_lag = 0.5
    time.sleep(1)
    assert listed(service) == {first, second}  # from the primary
    assert store.views.source == "primary"
    assert "reads from the primary, not the replica" in caplog.text
    assert "behind by" in caplog.text and "read_max_lag 0.5 s" in caplog.text
    metrics = Metrics()
    metrics.watch_replica(lambda: (store.views.source, store.views.lag))
    assert "halite_reads_on_replica 0.0" in render(metrics).decode()
    on(replica.url(), "SELECT pg_wal_replay_resume()")
    wait_until(lambda: listed(service) == {first, second} and store.views.source == "replica",
               what="the reads back on the replica")  # fmt: skip
    assert "reads from the replica" in caplog.text and "again" in caplog.text
    assert "halite_reads_on_replica 1.0" in render(metrics).decode()


@pg
def test_a_replica_that_does_not_answer_sends_the_reads_to_the_primary(settings, caplog):
    nowhere = f"postgresql+psycopg://halite@127.0.0.1:{free_port()}/halite?connect_timeout=2"
    store = JobStore(dataclasses.replace(settings, read_db_url=nowhere))
    try:
        caplog.set_level(logging.WARNING)
        publish(store, "20261202100000000003", minions=("m1",))
        store.flush()
        assert listed(Service(store, POLICY)) == {"20261202100000000003"}
        assert store.views.source == "primary"
        assert "not the replica" in caplog.text and "does not answer" in caplog.text
    finally:
        store.close()


@pytest.mark.parametrize(
    ("db_url", "read_db_url", "message"),
    [
        ("sqlite:////tmp/h.db", "postgresql+psycopg://h@replica/h", "for a PostgreSQL db_url"),
        ("postgresql+psycopg://h@p/h", "sqlite:////tmp/r.db", "a PostgreSQL streaming replica"),
        ("postgresql+psycopg://h@p/h", 42, "is not a database URL"),
    ],
)
def test_a_read_db_url_that_cannot_be_a_replica_is_refused(db_url, read_db_url, message):
    opts = {"cachedir": "/tmp", "halite": {"db_url": db_url, "read_db_url": read_db_url}}
    with pytest.raises(ConfigError, match=message):
        Settings.from_opts(opts)


def test_the_replica_options_are_read():
    opts = {"cachedir": "/tmp", "halite": {
        "db_url": "postgresql+psycopg://h@p/h", "read_db_url": "postgresql+psycopg://h@r/h",
        "read_max_lag": 3, "partition_interval": "week", "partitions_ahead": 4}}  # fmt: skip
    settings = Settings.from_opts(opts)
    assert (settings.read_db_url, settings.read_max_lag) == ("postgresql+psycopg://h@r/h", 3.0)
    assert (settings.partition_interval, settings.partitions_ahead) == ("week", 4)
    with pytest.raises(ConfigError, match="partition_interval must be one of day, week, month"):
        Settings.from_opts({"halite": {"partition_interval": "hour"}})


@pg
def test_a_replica_whose_primary_stopped_sending_is_left_once_behind(
    replicated_store, settings, replica, pg_server, caplog
):
    """The primary's WAL sender stops (a hung link): the replica has replayed all it got,
    but not what the primary has written since; once that is older than read_max_lag the
    reads go to the primary."""
    store, first, second = replicated_store, "20261202100000000011", "20261202100000000012"
    service = Service(store, POLICY)
    publish(store, first, minions=("m1",))
    store.flush()
    wait_until(lambda: replicated(replica, settings.db_url, first), what="the replica has it")
    assert listed(service) == {first} and store.views.source == "replica"
    (sender,) = on(pg_server.url(), "SELECT pid FROM pg_stat_replication")[0]
    os.kill(sender, signal.SIGSTOP)
    try:
        store.views.max_lag = 0.5
        time.sleep(1)
        publish(store, second, minions=("m1",))
        store.flush()
        caplog.set_level(logging.WARNING)
        assert listed(service) == {first, second}
        assert store.views.source == "primary"
        assert "behind by" in caplog.text
    finally:
        os.kill(sender, signal.SIGCONT)


@pg
def test_a_hung_replica_sends_the_reads_to_the_primary_within_read_timeout(
    replicated_store, settings, replica, caplog
):
    """The replica's host hangs after reads have used it (every server process stopped:
    connections are accepted, nothing answers): reads go to the primary once the replica
    has had read_timeout to answer, and come back to it when it answers again."""
    store, first, second = replicated_store, "20261202100000000021", "20261202100000000022"
    service = Service(store, POLICY)
    publish(store, first, minions=("m1",))
    store.flush()
    wait_until(lambda: replicated(replica, settings.db_url, first), what="the replica has it")
    assert listed(service) == {first} and store.views.source == "replica"
    caplog.set_level(logging.WARNING)
    replica.freeze()
    try:
        publish(store, second, minions=("m1",))
        store.flush()
        done = []
        reader = threading.Thread(target=lambda: done.append(listed(service)), daemon=True)
        reader.start()
        reader.join(120)  # hung for good without a bound: the test fails, it does not hang
        assert done == [{first, second}]  # from the primary
        assert store.views.source == "primary"
        assert "does not answer" in caplog.text and "did not answer within" in caplog.text
        assert listed(service) == {first, second}  # the next read does not wait for it
    finally:
        replica.thaw()
    store.views._checked_at = -math.inf  # as once AWAY_RECHECK has passed
    wait_until(lambda: listed(service) == {first, second} and store.views.source == "replica",
               what="the reads back on the replica")  # fmt: skip
