import logging

import pytest

from halite_core.config import Settings
from halite_core.jobcache import JobStore


@pytest.fixture
def opts(tmp_path):
    return {"cachedir": str(tmp_path / "cache"), "id": "master1_master", "keep_jobs_seconds": 3600}


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
