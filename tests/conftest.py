import logging
import os
import shutil
import tempfile

import pytest
from hypothesis import configuration as hypothesis_configuration

from halite_core.config import Settings
from halite_core.jobcache import JobStore

# `make test` runs the suite twice: on SQLite (the default) and with HALITE_TEST_DB=postgresql
# on a PostgreSQL server the session starts on loopback.
BACKEND = os.environ.get("HALITE_TEST_DB", "sqlite")

# Hypothesis keeps its example database and caches in .hypothesis/ of the current directory
# (the checkout): the suite writes only into temporary directories, so they go to one.
HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="halite-hypothesis-")
hypothesis_configuration.set_hypothesis_home_dir(HYPOTHESIS_HOME)


def sqlite_only(why):
    """For what only SQLite has (a file another program locks, FTS5, its query planner);
    the PostgreSQL run covers the same behaviour in its own tests where it applies."""
    return pytest.mark.skipif(BACKEND != "sqlite", reason=f"SQLite only: {why}")


def postgresql_only(why):
    return pytest.mark.skipif(BACKEND != "postgresql", reason=f"PostgreSQL only: {why}")


def pytest_report_header(config):
    return f"halite database backend: {BACKEND}"


@pytest.fixture(scope="session")
def pg_server():
    from tests.pgserver import PostgresServer

    server = PostgresServer().start()
    server.wait_ready()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def pg_template(pg_server):
    """A database with halite's schema (its tables and their default partitions; each
    test's first write makes the partitions ahead), which each test's database copies: a
    copy of its files costs less than building the schema again for every test."""
    from halite_core.store.db import Database

    url = pg_server.create_database("halite_template")
    database = Database(url)
    database.ensure_schema()
    database.dispose()
    return "halite_template"


@pytest.fixture
def db_url(request):
    """A fresh database for one test: None (SQLite in the cachedir) or a new PostgreSQL
    database with halite's schema (a copy of ``pg_template``: the schema a first use
    creates, as tested by test_schema on databases of their own)."""
    if BACKEND != "postgresql":
        yield None
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database(template=request.getfixturevalue("pg_template"))
    yield url
    server.drop_database(url)


@pytest.fixture
def opts(tmp_path, db_url):
    opts = {"cachedir": str(tmp_path / "cache"), "id": "master1_master", "keep_jobs_seconds": 3600}
    if db_url:
        opts["halite"] = {"db_url": db_url}
    return opts


@pytest.fixture
def settings(opts):
    return Settings.from_opts(opts)


@pytest.fixture
def store(settings):
    store = JobStore(settings)
    yield store
    store.db.dispose()


def pytest_unconfigure(config):
    # Salt queues early log records in a handler bound to the stderr of import time (here,
    # pytest's capture) and flushes it at exit, after pytest closed that stream: without
    # this, every run ends with pages of "--- Logging error ---".
    logging.raiseExceptions = False
    shutil.rmtree(HYPOTHESIS_HOME, ignore_errors=True)
