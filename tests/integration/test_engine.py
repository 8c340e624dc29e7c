"""The halite engine in a real master: running status from the event bus, minions that
never answer, runner jobs, and a master restart in the middle of a job."""

import re
import threading
import time

import pytest
from saltfactories.utils import random_string
from sqlalchemy import select

from halite_core.store.schema import job_returns, jobs_index
from tests.integration.conftest import store_for, wait_for

ENGINE = {"timeout": 2, "timeout_grace": 3, "flush_interval": 0.2, "events": {"interval": 0.2}}
# The README's reactor, with a file for a webhook: the failed minion appends the failed
# job's jid to NOTIFIED (its own file.append job passes, and is announced as such).
REACTOR = """
{% if data.get('result') == 'failed' and data.get('function') == 'cmd.run' %}
notify-{{ data['jid'] }}:
  local.file.append:
    - tgt: {{ data['failed_minions'][0] }}
    - args:
      - path: NOTIFIED
      - args: "{{ data['jid'] }} {{ data['minions']['failed'] }}"
{% endif %}
"""


@pytest.fixture(scope="module")
def notified(tmp_path_factory):
    found = tmp_path_factory.mktemp("reactor") / "notified.txt"
    found.touch()  # file.append appends to a file that is there
    return found


@pytest.fixture(scope="module")
def engine_master(salt_factories, state_tree, new_database, notified):
    database = new_database()
    reactor = notified.parent / "notify.sls"
    reactor.write_text(REACTOR.replace("NOTIFIED", str(notified)))
    factory = salt_factories.salt_master_daemon(
        random_string("halite-engine-master-"),
        overrides={
            "master_job_cache": "halite",
            **({"halite": database} if database else {}),
            "engines": [{"halite": ENGINE}],
            "file_roots": {"base": [str(state_tree)]},
            "reactor": [{"halite/job/*/complete": [str(reactor)]}],
        },
    )
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def busy_minion(engine_master):
    factory = engine_master.salt_minion_daemon(random_string("halite-busy-"))
    with factory.started():
        yield factory


@pytest.fixture(scope="module")
def silent_minion(engine_master):
    """A minion whose key the master accepted, and that is down."""
    factory = engine_master.salt_minion_daemon(random_string("halite-silent-"))
    with factory.started():
        pass
    return factory


@pytest.fixture(scope="module")
def index(engine_master):
    store = store_for(engine_master)
    yield store
    store.db.dispose()


def publish(master, target, *args, list_target=False):
    cli_args = ["--async", *(["-L"] if list_target else []), *args]
    ret = master.salt_cli().run(*cli_args, minion_tgt=target, _timeout=60)
    assert ret.returncode == 0, ret
    match = re.search(r"job ID: (\d{20})", ret.stdout)
    assert match, ret.stdout
    return match.group(1)


def job(index, jid):
    with index.db.read() as conn:
        row = conn.execute(select(jobs_index).where(jobs_index.c.jid == jid)).first()
    return None if row is None else row._asdict()


def minion_states(index, jid):
    with index.db.read() as conn:
        rows = conn.execute(
            select(job_returns.c.minion, job_returns.c.state).where(job_returns.c.jid == jid)
        ).all()
    return dict(rows)


def test_job_shows_running_while_it_runs_and_complete_after(engine_master, busy_minion, index):
    jid = publish(engine_master, busy_minion.id, "test.sleep", "4")

    def running():
        """the sleep job is indexed as running"""
        row = job(index, jid)
        return row if row and row["status"] == "running" else None

    wait_for(running, timeout=10)
    assert minion_states(index, jid) == {busy_minion.id: "pending"}

    def complete():
        """the sleep job is complete"""
        row = job(index, jid)
        return row if row and row["status"] == "complete" else None

    row = wait_for(complete, timeout=60)
    assert (row["end_time"] - row["start_time"]).total_seconds() >= 4
    assert minion_states(index, jid) == {busy_minion.id: "returned"}


def test_minion_that_is_down_is_settled_no_return(engine_master, silent_minion, index):
    started = time.monotonic()
    jid = publish(engine_master, silent_minion.id, "test.ping", list_target=True)

    def settled():
        """the silent minion is settled and the job complete"""
        row = job(index, jid)
        return row if row and row["status"] == "complete" else None

    row = wait_for(settled, timeout=60)
    assert time.monotonic() - started < 60
    assert minion_states(index, jid) == {silent_minion.id: "no_return"}
    assert row["minions_failed"] == 1 and row["end_time"] is not None
    # Only the pending minion was asked, with a list target: no broadcast.
    with index.db.read() as conn:
        probes = conn.execute(
            select(jobs_index.c.target, jobs_index.c.target_type, jobs_index.c.system)
            .where(jobs_index.c.function == "saltutil.find_job")
            .where(jobs_index.c.jid > jid)
        ).all()
    assert probes and all(p == (silent_minion.id, "list", True) for p in probes)


def test_runner_job_is_running_until_it_returns(engine_master, index):
    results = []
    runner = threading.Thread(
        target=lambda: results.append(
            engine_master.salt_run_cli().run("test.sleep", "4", _timeout=60)
        )
    )
    runner.start()

    def running():
        """a runner.test.sleep job is indexed as running"""
        with index.db.read() as conn:
            return conn.execute(
                select(jobs_index.c.jid)
                .where(jobs_index.c.function == "runner.test.sleep")
                .where(jobs_index.c.status == "running")
            ).scalar()

    jid = wait_for(running, timeout=20)
    runner.join(60)
    assert results and results[0].returncode == 0

    def complete():
        """the runner job is complete"""
        row = job(index, jid)
        return row if row and row["status"] == "complete" else None

    wait_for(complete, timeout=30)


def test_restart_in_the_middle_of_a_job_recovers(engine_master, silent_minion, index):
    before = index.engine_state(engine_master.config["id"])
    jid = publish(engine_master, silent_minion.id, "test.ping", list_target=True)
    engine_master.terminate()  # before the engine could settle the silent minion
    engine_master.start()

    def restarted():
        """the engine of the restarted master wrote its state"""
        state = index.engine_state(engine_master.config["id"])
        return state if state and state["started_at"] > before["started_at"] else None

    wait_for(restarted, timeout=60)

    def settled():
        """the job that was running is settled after the restart"""
        row = job(index, jid)
        return row if row and row["status"] == "complete" else None

    wait_for(settled, timeout=60)
    assert minion_states(index, jid) == {silent_minion.id: "no_return"}

    def reconciled():
        """the engine has reconciled"""
        state = index.engine_state(engine_master.config["id"])
        return state if state["reconciled_at"] is not None else None

    state = wait_for(reconciled, timeout=30)
    assert state["reconciled_at"] >= state["started_at"]


def _lock_holders(directory):
    """``{lock file name: pid}`` of the flock locks held on the files of ``directory``,
    from the kernel's own table (/proc/locks)."""
    import os
    from pathlib import Path

    inodes = {}
    for name in (".committer.lock", ".engine.lock"):
        path = Path(directory, name)
        if path.exists():
            stat = path.stat()
            inodes[(os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino)] = name
    holders = {}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" not in fields or "->" in fields:
            continue  # a waiter, not a holder
        pid, device = fields[4], fields[5]
        major, minor, inode = device.split(":")
        key = (int(major, 16), int(minor, 16), int(inode))
        if key in inodes:
            holders[inodes[key]] = int(pid)
    return holders


def test_the_engines_process_is_the_one_committer(engine_master, busy_minion, index):
    """With the engine configured, Salt's workers only append to their journals: the
    process that holds the committer's lock is the engine's, and the returns of a job
    the workers journalled reach the index through it."""
    from tests.helpers import untaken

    jid = publish(engine_master, busy_minion.id, "test.ping")
    wait_for(lambda: (job(index, jid) or {}).get("status") == "complete")
    holders = _lock_holders(index.settings.journal_dir)
    assert set(holders) == {".committer.lock", ".engine.lock"}
    assert holders[".committer.lock"] == holders[".engine.lock"]
    assert holders[".committer.lock"] != engine_master.pid  # not the master's main process
    wait_for(lambda: untaken(index.settings) == [])


def test_a_failed_job_triggers_the_reactor_once(engine_master, busy_minion, index, notified):
    """The completion event of a failed job reaches Salt's reactor, once; the reactor's
    own job (which passes) and passing jobs trigger nothing."""
    passed = publish(engine_master, busy_minion.id, "test.ping")
    failed = publish(engine_master, busy_minion.id, "cmd.run", "exit 3")

    def announced():
        row = job(index, failed) or {}
        return row.get("announced_at") is not None and row

    assert wait_for(announced, timeout=60)["result"] == "failed"

    def reacted():
        return failed in notified.read_text()

    wait_for(reacted, timeout=60)
    # Long enough for a repeat to arrive (events every 0.2 s, the reactor's job seconds).
    time.sleep(5)
    lines = notified.read_text().split()
    assert lines.count(failed) == 1, lines
    assert passed not in lines
    assert (job(index, passed) or {}).get("announced_at") is not None


def test_the_bus_reader_hands_on_every_event_in_order_and_waits_when_full(engine_master):
    """The engine's reader of the bus (salt_adapter.BusReader, Salt's asynchronous
    subscriber in a thread of its own): subscribed once wait_listening() answers, every
    event handed on in the order it was fired, none lost while its queue is full (the
    reader waits), and its thread ends on close(); get_event then answers None, not
    ReaderStopped (the engine closed it)."""
    import salt.utils.event

    from halite_core.salt_adapter import BusReader

    opts = engine_master.config
    reader = BusReader(opts, backlog=1)  # bytes: one event at a time
    try:
        assert reader.wait_listening(timeout=30)
        prefix = f"halite/test/{random_string('order-')}"
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as bus:
            for n in range(200):
                assert bus.fire_event({"n": n}, f"{prefix}/{n}")
        time.sleep(1)  # the queue holds one event: the reader waits with the rest
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < 200 and time.monotonic() < deadline:
            event = reader.get_event(wait=1)
            if event is not None and event["tag"].startswith(prefix + "/"):
                seen.append(event["data"]["n"])
        assert seen == list(range(200))
    finally:
        reader.close()
    assert not reader.running
    assert reader.get_event(wait=0.1) is None
