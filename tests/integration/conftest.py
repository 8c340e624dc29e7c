"""A real salt-master and salt-minion on loopback, started once for the integration tests.

``master`` uses halite as its master job cache. ``event_master`` keeps Salt's default
local_cache and indexes through ``event_return: halite`` instead.
"""

import textwrap
import time

import pytest
from saltfactories.utils import random_string

from halite_core.config import Settings
from halite_core.jobcache import JobStore
from tests.conftest import BACKEND

STATES = {
    "halite_demo.sls": """
        motd:
          file.managed:
            - name: {root}/motd
            - contents: halite was here

        always-fails:
          cmd.run:
            - name: exit 3

        after-failure:
          test.succeed_without_changes:
            - require:
              - cmd: always-fails
    """,
    "halite_ok.sls": """
        calm:
          test.succeed_without_changes

        touch:
          test.succeed_with_changes
    """,
    "halite_orch.sls": """
        apply-ok:
          salt.state:
            - tgt: '*'
            - sls: halite_ok

        apply-broken:
          salt.state:
            - tgt: '*'
            - sls: halite_demo
            - require:
              - salt: apply-ok
    """,
    "halite_broken.sls": """
        broken: [this is not
    """,
}


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="package")
def state_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("state-tree")
    for name, text in STATES.items():
        (root / name).write_text(textwrap.dedent(text).format(root=root))
    return root


# Who may do what on the `master` fixture. The tests run salt-run as root (the master's own
# user: admin) or as another user through sudo's SUDO_USER (salt names them sudo_<name>).
PERMISSIONS = {
    "roles": {
        "auditor": ["view:job:*", "view:audit:*"],
        "tester": ["view:job:test.*"],
        "stater": ["view:job:*", "run:job:state.*"],
    },
    "users": {
        "sudo_alice": ["operator"],
        "sudo_bob": ["viewer"],
        "sudo_carol": ["auditor"],
        "sudo_dave": ["tester"],
        "sudo_erin": ["stater"],
    },
}


def as_user(name):
    """The environment of a salt-run started by ``name`` through sudo."""
    return {"SUDO_USER": name}


@pytest.fixture(scope="session")
def new_database(request):
    """Makes a database for one master: {} (SQLite in its cachedir, the default) or, in the
    PostgreSQL run, ``{"db_url": <a new database on the session's server>}``."""
    if BACKEND != "postgresql":
        return dict
    server = request.getfixturevalue("pg_server")
    return lambda: {"db_url": server.create_database()}


def _start_master(salt_factories, state_tree, prefix, database=None, **overrides):
    halite = {**(overrides.pop("halite", None) or {}), **(database or {})}
    config = {
        "file_roots": {"base": [str(state_tree)]},
        "job_cache_store_endtime": True,
        **({"halite": halite} if halite else {}),
        **overrides,
    }
    return salt_factories.salt_master_daemon(random_string(prefix), overrides=config)


@pytest.fixture(scope="package")
def master(salt_factories, state_tree, new_database):
    factory = _start_master(
        salt_factories,
        state_tree,
        "halite-master-",
        new_database(),
        master_job_cache="halite",
        halite=PERMISSIONS,
        # salt-api's way in (tests/integration/test_runner_jobs.py): Salt's test eauth.
        external_auth={"auto": {user: ["@runner", "@wheel"] for user in PERMISSIONS["users"]}},
    )
    with factory.started():
        yield factory


@pytest.fixture(scope="package")
def minion(master):
    factory = master.salt_minion_daemon(random_string("halite-minion-"))
    with factory.started():
        yield factory


@pytest.fixture(scope="package")
def event_master(salt_factories, state_tree, new_database):
    factory = _start_master(
        salt_factories, state_tree, "halite-evmaster-", new_database(), event_return="halite"
    )
    with factory.started():
        yield factory


@pytest.fixture(scope="package")
def event_minion(event_master):
    factory = event_master.salt_minion_daemon(random_string("halite-evminion-"))
    with factory.started():
        yield factory


def store_for(master):
    return JobStore(Settings.from_opts(master.config))


@pytest.fixture(scope="package")
def index(master):
    store = store_for(master)
    yield store
    store.db.dispose()


def wait_for(check, timeout=60, interval=0.25):
    """Salt writes the job cache just after the CLI sees the return: poll, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check.__doc__ or check}")
        time.sleep(interval)
