"""Faults of the write pipeline (the journal and the committer) that lost accepted returns,
broke reads of a job, or kept the engine from committing: a forked child holding the commit
lock, a full disk, a write cut short, a worker killed mid-write, two copies of one return,
huge lines, journals of an earlier version, a committer that died before it marked its
progress.

The Salt workers are real processes (tests/servant.py), killed with SIGKILL.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from halite_core import audit
from halite_core.config import Settings
from halite_core.durability import journal
from halite_core.durability.journal import raw_return_line, read_committed
from halite_core.jobcache import JobStore
from halite_core.store.schema import audit_log, job_returns, jobs_index
from tests.helpers import publish, ret, save_return, untaken
from tests.servant import Worker, now

JID = "20261128120000000001"


def _slow(settings: Settings) -> Settings:
    """A Salt worker whose own committer does not commit during the test."""
    return dataclasses.replace(settings, flush_interval=3600)


def _partial_raw_line(jid: str, minion: str) -> bytes:
    """What a write of a big return line leaves when it is interrupted half way: a whole
    head, a cut JSON value, no newline."""
    stub = {"jid": jid, "id": minion, "fun": "test.arg", "retcode": 0, "success": True}
    line = raw_return_line(stub, '{"data":"' + "y" * 5000 + '"}', False, now().timestamp())
    return line[: len(line) - 1000].encode()


# ---------------------------------------------------------------- the commit lock
@pytest.mark.parametrize("worker", ["lives", "killed"])
def test_the_engine_gets_the_commit_lock_after_a_worker_forked(store, settings, worker):
    """A Salt worker that holds the commit lock forks a child (Salt forks a runner job from
    its worker). The child must not keep the lock: else, when the worker lets go (the
    engine came back) or dies, no engine can take it, and nothing journalled is committed
    for as long as the child lives."""
    deferring = dataclasses.replace(_slow(settings), engine_commits=True)
    publish(store, JID, minions=["m0", "m1"])
    salt_worker = Worker(deferring)
    engine = None
    child = None
    try:
        assert salt_worker("record", "save_return", ret(JID, "m0"), now())
        assert salt_worker("committer_pass", False), "no engine yet: the worker commits"
        child = salt_worker("fork")
        engine = Worker(deferring)
        if worker == "killed":
            salt_worker.kill()
        else:
            engine("committer_pass", True)  # announces the engine; the worker holds the lock
            assert not salt_worker("committer_pass", False), "the worker lets go"
        assert engine("committer_pass", True), "the forked child holds the commit lock"
    finally:
        if child is not None:
            os.kill(child, signal.SIGKILL)
        salt_worker.kill()
        if engine is not None:
            engine.kill()


# ---------------------------------------------------------------- a full disk
def test_writes_held_in_memory_are_not_dropped_when_the_spool_recovers(store, settings, tmp_path):
    """The journal's and the spool's directories both unusable (a full disk): a return is
    accepted and held in memory. When the spool works again, the next return is spooled
    and the one held in memory must be spooled with it, not forgotten."""
    publish(store, JID, minions=["m1", "m2"])
    journal_dir, spool_dir = tmp_path / "journal", tmp_path / "spool"
    journal_dir.write_text("not a directory")
    spool_dir.write_text("not a directory")
    s = dataclasses.replace(settings, journal_dir=str(journal_dir), spool_dir=str(spool_dir))
    worker = JobStore(s)
    assert worker.record("save_return", ret(JID, "m1", "one"), now()) is True  # accepted
    spool_dir.unlink()  # the spool's disk has room again
    assert worker.record("save_return", ret(JID, "m2", "two"), now()) is True
    journal_dir.unlink()  # and the journal's
    worker.record("save_return", ret("20261128120000000002", "m9"), now())
    worker.recover()
    worker.flush()
    found = store.get_jid(JID)
    worker.close()
    assert sorted(found) == ["m1", "m2"]


def test_a_write_the_disk_cut_short_loses_nothing_accepted(store, settings):
    """On a nearly full disk a write may write part of a line and return its count. The
    rest must not be lost, nor the next accepted line glued onto the cut one (both would
    end in rejected/ instead of the database)."""
    publish(store, JID, minions=["m1", "m2", "m3"])
    s = _slow(settings)
    w = Worker(s)
    assert w("record", "save_return", ret(JID, "m1", "one"), now())
    _, size = w("position")
    w("file_size_limit", size + 60)
    assert w("record", "save_return", ret(JID, "m2", "x" * 2000), now()) is True
    w("file_size_limit", -1)  # the disk has room again
    assert w("record", "save_return", ret(JID, "m3", "three"), now()) is True
    w.kill()
    survivor = JobStore(s)
    survivor.recover()
    found = store.get_jid(JID)
    survivor.close()
    assert sorted(found) == ["m1", "m2", "m3"]


# ---------------------------------------------------------------- a line cut short
def test_a_reader_during_a_big_write_still_answers(store, settings):
    """A reader may see a big line of another worker's journal while its write is under
    way (the kernel shows a write to a file page by page). The unfinished line must be
    left out, not read as a return with cut JSON: else reading the job fails and Salt's
    returner answers nothing for the whole job."""
    publish(store, JID, minions=["m1", "m2"])
    save_return(store, ret(JID, "m1", "one"))
    w = Worker(_slow(settings))
    try:
        w("record", "save_return", ret(JID, "m0", "zero"), now())  # opens its journal
        w("raw", _partial_raw_line(JID, "m2"))  # the big write, half done
        found = store.get_jid(JID)
    finally:
        w.kill()
    assert "m1" in found
    assert "m0" in found


def test_a_line_cut_by_a_kill_mid_write_does_not_corrupt_the_job(store, settings):
    """A worker killed in the middle of writing a line (its call never returned, so the
    return was never accepted): the committer must not store the cut line as a return,
    which would make every later read of the job fail."""
    publish(store, JID, minions=["m1", "m2"])
    s = _slow(settings)
    w = Worker(s)
    assert w("record", "save_return", ret(JID, "m1", "one"), now())
    w("raw", _partial_raw_line(JID, "m2"))
    w.kill()
    survivor = JobStore(s)
    survivor.recover()
    survivor.close()
    found = store.get_jid(JID)
    assert found["m1"]["return"] == "one"


# ---------------------------------------------------------------- two copies of a return
def test_the_first_accepted_return_wins_across_workers(store, settings):
    """Two workers accept a return of the same minion for the same job (a minion retrying,
    two syndics). The first accepted must win, in reads and in the database, not the copy
    of whichever worker's journal name sorts first."""
    publish(store, JID, minions=["m1"])
    s = _slow(settings)
    a, b = Worker(s), Worker(s)
    early, late = (a, b) if str(a.pid) > str(b.pid) else (b, a)  # late's journal sorts first
    try:
        assert early("record", "save_return", ret(JID, "m1", "first"), now())
        seen_before = store.get_jid(JID)["m1"]["return"]
        assert late("record", "save_return", ret(JID, "m1", "second"), now())
        seen_after = store.get_jid(JID)["m1"]["return"]
    finally:
        early.kill()
        late.kill()
    survivor = JobStore(s)
    survivor.recover()
    survivor.close()
    stored = store.get_jid(JID)["m1"]["return"]
    assert (seen_before, seen_after, stored) == ("first", "first", "first")


# ---------------------------------------------------------------- big lines, rotation
def test_huge_lines_across_journal_files_are_read_and_committed(store, settings):
    """Returns bigger than what the committer reads at once, and one over max_return_bytes,
    between small ones: all are seen by reads and committed, and every journal is removed
    once taken."""
    publish(store, JID, minions=[f"m{i}" for i in range(6)])
    s = _slow(settings)
    w = Worker(s)
    w("record", "save_return", ret(JID, "m0", "small"), now())
    w("record", "save_return", ret(JID, "m1", "x" * (6 << 20)), now())  # > READ_BYTES
    w("record", "save_return", ret(JID, "m2", "small"), now())
    w("record", "save_return", ret(JID, "m3", ["y" * 100] * 50000), now())  # ~5 MB, truncated
    w("record", "save_return", ret(JID, "m4", "small"), now())
    seen = store.get_jid(JID)
    assert sorted(seen) == ["m0", "m1", "m2", "m3", "m4"]
    w.kill()
    survivor = JobStore(s)
    survivor.recover()
    found = store.get_jid(JID)
    survivor.close()
    assert sorted(found) == ["m0", "m1", "m2", "m3", "m4"]
    assert found["m0"]["return"] == "small"
    assert untaken(s) == []
    assert os.listdir(s.journal_dir)
    assert [n for n in os.listdir(s.journal_dir) if n.endswith(".jsonl")] == []


# ---------------------------------------------------------------- an earlier version's journals
def _dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_an_old_versions_journal_is_committed_and_removed(store, settings):
    """A journal an earlier version wrote (a plain JSON line, a name without the writer's
    start time), left by a master that stopped before committing it: its return is read,
    committed, and the journal removed."""
    publish(store, JID, minions=["m1"])
    os.makedirs(settings.journal_dir, exist_ok=True)
    fields = {
        "op": "ret", "jid": JID, "minion": "m1", "function": "test.arg",
        "start_time": "2026-11-28T12:00:00+00:00", "returned_at": "2026-11-28T12:00:01+00:00",
        "truncated": False, "retcode": 0, "success": True, "out": None, "summary": None,
        "stub": {"fun": "test.arg", "id": "m1"}, "value": {"a": [1, 2]},
    }  # fmt: skip
    path = os.path.join(settings.journal_dir, f"{_dead_pid()}-00000003.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps(fields, separators=(",", ":")) + "\n")
    assert store.get_jid(JID)["m1"]["return"] == {"a": [1, 2]}
    JobStore(settings).recover()
    assert store.get_jid(JID)["m1"]["return"] == {"a": [1, 2]}
    assert not os.path.exists(path)
    assert read_committed(settings.journal_dir) == {}


def test_an_old_journal_whose_pid_is_now_a_live_process_is_removed(store, settings):
    """An earlier version's journal name carries its writer's pid but no start time: once
    that pid belongs to another, long-lived process, the journal must still be committed
    and removed, not taken for that process's open journal and kept forever."""
    publish(store, JID, minions=["m1"])
    os.makedirs(settings.journal_dir, exist_ok=True)
    path = os.path.join(settings.journal_dir, "1-00000003.jsonl")  # pid 1 lives forever
    stub = {"jid": JID, "id": "m1", "fun": "test.arg"}
    item = journal.item_from_line(raw_return_line(stub, '"v"', False, now().timestamp()))
    with open(path, "w") as f:
        f.write(journal.item_to_line(item) + "\n")
    s = JobStore(settings)
    s.recover()
    s.close()
    assert store.get_jid(JID)["m1"]["return"] == "v"
    assert not os.path.exists(path), "never removed"


# ---------------------------------------------------------------- a committer's replay
def test_a_replayed_batch_counts_each_return_and_audit_entry_once(store, settings):
    """A committer killed after its commit but before it marked the journal taken: the
    next committer commits the same lines again. The job must still count each minion
    once, and the audit log hold each entry once."""
    publish(store, JID, minions=["m1", "m2"])
    s = _slow(settings)
    w = Worker(s)
    w("record", "save_return", ret(JID, "m1", "one"), now())
    w("record", "save_return", ret(JID, "m2", "two"), now())
    w("audit", audit.entry(user="root", action="kill", decision="allow", jid=JID))
    w.kill()
    journals = {p: p.read_bytes() for p in Path(s.journal_dir).glob("*.jsonl")}
    first = JobStore(s)
    first.recover()
    first.close()
    # As the first committer left things had it died between its commit and its marks.
    for path, data in journals.items():
        path.write_bytes(data)
    journal.write_committed(s.journal_dir, {})
    second = JobStore(s)
    replayed = second.recover()
    second.close()
    assert replayed == 3, "the second committer did not take the lines again"
    with store.db.read() as conn:
        row = conn.execute(
            select(jobs_index.c.minions_returned, jobs_index.c.status).where(
                jobs_index.c.jid == JID
            )
        ).one()
        returns = conn.scalar(select(func.count()).where(job_returns.c.jid == JID))
        entries = conn.scalar(select(func.count()).select_from(audit_log))
    assert tuple(row) == (2, "complete")
    assert returns == 2
    assert entries == 1
