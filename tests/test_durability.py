"""What halite accepts is never lost and never waits for the database: reads see writes
still journalled by another process, audit entries and kill marks are journalled like
returns, recoveries that died half-way are taken up again, and a process's exit is not
held up by a locked database."""

import dataclasses
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from halite_core import audit
from halite_core.durability.journal import writer_for
from halite_core.jobcache import JobStore
from halite_core.permissions import Denied, Policy
from halite_core.service import Service
from halite_core.store.ops import KilledItem, MinionsItem, NoReturnItem
from halite_core.store.schema import audit_log
from tests.conftest import postgresql_only, sqlite_only
from tests.helpers import publish, ret, save_load, save_return

UTC = dt.timezone.utc
JID = "20261128120000000001"


def _worker(settings):
    """Another process's store whose writer never commits on its own."""
    return JobStore(dataclasses.replace(settings, flush_interval=3600))


def _audit_rows(store):
    with store.db.read() as conn:
        return [
            dict(row._mapping) for row in conn.execute(select(audit_log).order_by(audit_log.c.id))
        ]


def test_reads_see_what_another_process_accepted_but_did_not_commit(store, settings):
    """Salt's local_cache tests: store_job in one loaded copy of the returner, then every
    read of Salt's job cache interface from another copy sees it at once."""
    worker = _worker(settings)
    load = {"jid": JID, "fun": "test.arg", "arg": ["a"], "tgt": ["m1", "m2"], "tgt_type": "list",
            "user": "root"}  # fmt: skip
    assert worker.record("save_load", JID, load, ["m1", "m2"]) is True
    arrived = dt.datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC)
    assert worker.record("save_return", ret(JID, "m1", "one"), arrived) is True
    assert worker.record("update_endtime", JID, arrived) is True
    reader = store  # another JobStore: another loaded copy, here in the same process
    assert reader.get_load(JID) == {**load, "Minions": ["m1", "m2"]}
    assert reader.get_jid(JID) == {"m1": {"return": "one", "retcode": 0, "success": True}}
    (listed,) = [job for job in reader.iter_loads() if job[0] == JID]
    assert listed == (JID, load, arrived)
    assert reader.newest_loads(5) == [(JID, load)]
    assert reader.minions_seen() == ["m1"]
    assert reader.last_jid_per_minion("test.arg") == {"m1": JID}
    assert reader.last_return_at(JID) == arrived
    worker.flush()  # once committed, the same answers from the database
    assert reader.get_jid(JID) == {"m1": {"return": "one", "retcode": 0, "success": True}}
    assert reader.get_load(JID) == {**load, "Minions": ["m1", "m2"]}
    assert reader.last_return_at(JID) == arrived


def test_the_first_return_still_wins_while_journalled(store, settings):
    publish(store, JID, minions=("m1",))
    save_return(store, ret(JID, "m1", "first"))
    worker = _worker(settings)
    worker.record("save_return", ret(JID, "m1", "repeat"), dt.datetime.now(UTC))
    assert store.get_jid(JID)["m1"]["return"] == "first"


def test_a_recovery_that_died_half_way_is_taken_up_again(store, settings):
    """A process renamed a dead journal to its claim and was killed before spooling it:
    the next recovery takes the claim over instead of stranding its writes."""
    publish(store, JID, minions=("m1", "m2"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    worker = _worker(settings)
    worker.record("save_return", ret(JID, "m1"), dt.datetime.now(UTC))
    worker.record("save_return", ret(JID, "m2"), dt.datetime.now(UTC))
    (journal,) = Path(settings.journal_dir).glob("*.jsonl")
    claim = journal.with_name(f".{pid}-00000000.jsonl.recovering-{pid}")
    os.rename(journal, claim)  # as left by a recovering process killed at that moment
    writer_for(settings.journal_dir).close()  # this process "died" too: only the claim holds them
    assert set(store.get_jid(JID)) == {"m1", "m2"}  # readers look into claims as well
    assert JobStore(dataclasses.replace(settings, spool_replay_interval=0)).recover() == 2
    assert list(Path(settings.journal_dir).glob("*.jsonl*")) == []
    job = store.get_jid(JID)
    assert set(job) == {"m1", "m2"}
    with store.db.read() as conn:
        from halite_core.store.schema import jobs_index

        assert conn.scalar(select(jobs_index.c.status).where(jobs_index.c.jid == JID)) == (
            "complete"
        )


def _service(store, send_kill=None):
    policy = Policy.from_config({}, {"olga": ["operator"], "vic": ["viewer"]}, "root")
    return Service(store, policy, "m1", send_kill)


@pytest.fixture
def locked(store):
    """Write-locks the SQLite file from another connection, as a backup tool or a stuck
    client would hold it (call it to take the lock; ``.rollback()`` releases it)."""
    store.db.ensure_schema()
    blocker = sqlite3.connect(store.db.url.database)

    def lock():
        blocker.execute("BEGIN EXCLUSIVE")
        return blocker

    yield lock
    blocker.rollback()
    blocker.close()


@sqlite_only("another program holds the SQLite file's write lock")
def test_refusals_and_kills_are_audited_while_the_database_is_locked(store, settings, locked):
    publish(store, JID, fun="test.sleep", minions=("m1", "m2"))
    locked = locked()  # the job is in; now nothing more can be written
    impatient = JobStore(dataclasses.replace(settings, sqlite_busy_timeout=0.05))

    def signal(jid, minions, user):
        return {m: f"Signal 9 sent to job {jid} at pid 7" for m in minions}

    service = _service(impatient, signal)
    with pytest.raises(Denied):
        service.audit("vic")
    answer = service.kill("olga", JID)
    assert answer["signalled"] == ["m1", "m2"] and answer["status"] == "complete"
    impatient.flush()  # meets the lock: the entries go to the spool, in order
    assert impatient.spool.waiting() != []
    assert _audit_rows(store) == []
    locked.rollback()
    impatient.replay_spool()
    rows = _audit_rows(store)
    assert [(r["user"], r["action"], r["decision"]) for r in rows] == [
        ("vic", "audit", "deny"), ("olga", "kill", "allow")
    ]  # fmt: skip
    assert rows[1]["outcome"]["signalled"] == ["m1", "m2"]
    with store.db.read() as conn:
        listed = audit.list_entries(conn, action="kill")["entries"]
    assert [e["user"] for e in listed] == ["olga"]
    detail = store.get_jid(JID)
    assert detail == {}  # killed, not returned
    with store.db.read() as conn:
        from halite_core.queries import job_detail

        states = {m["minion"]: m["state"] for m in job_detail(conn, JID)["minion_results"]}
    assert states == {"m1": "killed", "m2": "killed"}


@sqlite_only("another program holds the SQLite file's write lock")
def test_a_process_exit_is_not_held_up_by_a_locked_database(store, settings, locked):
    """A salt-run process ends within a bound even when its last batch cannot be
    committed; the batch stays in its journal, and is recovered once the process is gone."""
    locked = locked()
    publish_settings = dataclasses.replace(settings, sqlite_busy_timeout=30)
    code = f"""
import dataclasses, datetime as dt, json, sys, time
from halite_core.config import Settings
from halite_core.jobcache import JobStore
settings = Settings(**json.loads(sys.argv[1]))
store = JobStore(settings)
store.record_audit({{"at": dt.datetime.now(dt.timezone.utc), "user": "olga", "action": "kill",
                    "resource": "job", "jid": "{JID}", "decision": "allow", "outcome": None,
                    "arguments": None, "master_id": "m1"}})
time.sleep(0.3)  # the writer thread is now waiting for the lock
started = time.monotonic()
done = store.close(wait=0.5)
print(json.dumps({{"done": done, "waited": time.monotonic() - started}}))
"""
    fields = {
        f.name: getattr(publish_settings, f.name) for f in dataclasses.fields(publish_settings)
    }
    fields["system_functions"] = list(fields["system_functions"])
    import json

    child = subprocess.run(
        [sys.executable, "-c", code, json.dumps(fields)],
        capture_output=True, text=True, timeout=20, cwd=str(Path(__file__).parent.parent),
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["done"] is False  # left for recovery, not waited for
    assert len(list(Path(settings.journal_dir).glob("*.jsonl"))) == 1
    locked.rollback()
    store.recover()
    assert [r["user"] for r in _audit_rows(store)] == ["olga"]


def test_a_kill_mark_committed_before_its_publish_is_kept(store, settings):
    """The mark (from salt-run's journal) and the publish (from a master worker's) are
    replayed in the order they were spooled, which may be the wrong one."""
    store.mark_killed(JID, ["m1"])
    store.flush()
    publish(store, JID, fun="test.sleep", minions=("m1", "m2"))
    with store.db.read() as conn:
        from halite_core.queries import job_detail

        detail = job_detail(conn, JID)
    assert {m["minion"]: m["state"] for m in detail["minion_results"]} == {
        "m1": "killed", "m2": "running"
    }  # fmt: skip
    assert detail["function"] == "test.sleep"


def test_old_reservations_are_set_aside_on_the_publish_path_and_deleted_off_it(store, settings):
    """The first jid of a new hour moves the old hours' reservation folders aside (one
    rename each) instead of deleting hundreds of thousands of files on Salt's publish
    path; clean_old_jobs, in Salt's maintenance process, deletes them."""
    root = Path(settings.jid_dir)
    for hour in ("2026112801", "2026112802", "2026112803"):
        (root / hour).mkdir(parents=True)
        for n in range(50):
            (root / hour / f"{hour}0000000000{n:02d}").touch()
    assert store.reserve_jid("20261128040000000001")
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == [
        "2026112803",
        "2026112804",
    ]
    aside = [p for p in root.iterdir() if p.name.startswith(".trash-")]
    assert len(aside) == 2 and all(len(list(p.iterdir())) == 50 for p in aside)
    store.clean_old_jobs(keep_seconds=0)
    assert [p for p in root.iterdir() if p.name.startswith(".trash-")] == []
    assert not store.reserve_jid("20261128040000000001")  # the current hour is kept


def test_a_running_job_is_cleaned_once_idle_for_keep_running_seconds(store, settings):
    """Without the engine nothing settles a minion that never answers: its job is kept
    while it may still run, but not forever."""
    bounded = JobStore(dataclasses.replace(settings, keep_running_seconds=86400), store.db)
    publish(bounded, JID, minions=("m1", "down"))
    save_return(bounded, ret(JID, "m1"))
    now = dt.datetime.now(UTC)
    assert bounded.clean_old_jobs(keep_seconds=60, now=now + dt.timedelta(hours=1)) == 0
    assert bounded.clean_old_jobs(keep_seconds=60, now=now + dt.timedelta(days=2)) == 1
    forever = JobStore(dataclasses.replace(settings, keep_running_seconds=0), store.db)
    publish(forever, "20261128120000000002", minions=("down",))
    assert forever.clean_old_jobs(keep_seconds=60, now=now + dt.timedelta(days=400)) == 0


def test_a_no_return_settle_committed_before_its_publish_is_kept(store):
    from halite_core.jobcache import NoReturnItem

    store.apply_items([NoReturnItem(JID, ["m1"], dt.datetime.now(UTC))])
    publish(store, JID, minions=("m1",))
    with store.db.read() as conn:
        from halite_core.queries import job_detail

        detail = job_detail(conn, JID)
    assert [(m["minion"], m["state"]) for m in detail["minion_results"]] == [("m1", "no_return")]
    assert detail["status"] == "complete"


def test_an_audit_entry_replayed_after_its_commit_is_appended_once(store):
    """A process killed between committing its batch and removing its journal: the
    journal is replayed, and every entry in it is already in the log."""
    from halite_core.durability.journal import item_from_line, item_to_line
    from halite_core.store.ops import AuditItem

    item = AuditItem(audit.entry(user="olga", action="kill", decision="allow", jid=JID))
    store.apply_items([item])
    store.apply_items([item_from_line(item_to_line(item))])
    assert [row["user"] for row in _audit_rows(store)] == ["olga"]


def test_a_journal_renamed_while_a_reader_looks_is_still_seen(store, settings, monkeypatch):
    """Between listing the journals and reading one, a recovery renames it to its claim:
    the reader looks again instead of missing the write."""
    from halite_core.durability import journal as jobcache

    worker = _worker(settings)
    load = {"jid": JID, "fun": "test.ping", "arg": [], "tgt": "m1", "tgt_type": "glob"}
    worker.record("save_load", JID, load, ["m1"])
    (journal,) = Path(settings.journal_dir).glob("*.jsonl")
    listing = jobcache._listing
    moved = []

    def listing_then_rename(directory, keep):
        names = listing(directory, keep)
        if directory == settings.journal_dir and not moved:
            moved.append(journal.rename(journal.with_name(f".{journal.name}.recovering-1")))
        return names

    monkeypatch.setattr(jobcache, "_listing", listing_then_rename)
    assert store.get_load(JID) == {**load, "Minions": ["m1"]}


def test_a_journalled_publish_wins_over_a_placeholder_committed_first(store, settings):
    """One worker journalled the publish; another committed a return first, which made a
    placeholder row: Salt's CLI gets the publish, not the placeholder."""
    worker = _worker(settings)
    load = {"jid": JID, "fun": "test.arg", "arg": ["x"], "tgt": "m1", "tgt_type": "glob",
            "user": "alice"}  # fmt: skip
    worker.record("save_load", JID, load, ["m1"])
    save_return(store, ret(JID, "m1"))
    assert store.get_load(JID) == {**load, "Minions": ["m1"]}
    assert store.newest_loads(1) == [(JID, load)]


def test_a_store_writes_again_after_it_was_closed(store, settings):
    """A long-lived process (an orchestration calling halite's runners in a master
    worker) closes one service and opens the next on the same store."""
    publish(store, JID, minions=("m1",))
    service_store = JobStore(settings, store.db)
    service_store.record("save_return", ret(JID, "m1"), dt.datetime.now(UTC))
    assert service_store.close() is True
    service_store.record_audit(audit.entry(user="olga", action="kill", decision="allow"))
    deadline = time.monotonic() + 30  # committed by a writer thread, as after any write
    while not _audit_rows(store) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [row["user"] for row in _audit_rows(store)] == ["olga"]


def test_a_runners_load_keeps_no_copy_of_its_return(store, settings):
    """Salt's store_job hands the job cache the runner's whole return as a load: the
    return goes to job_returns (within max_return_bytes), not into jobs_index.load."""
    small = JobStore(dataclasses.replace(settings, max_return_bytes=1000), store.db)
    data = {"fun": "runner.test.arg", "fun_args": [], "jid": JID, "user": "root",
            "return": "x" * 10_000, "success": True}  # fmt: skip
    save_load(small, JID, {"id": "master", "tgt": "master", "jid": JID, "return": data,
                          "fun": "runner.test.arg", "user": "root"})  # fmt: skip
    with store.db.read() as conn:
        from halite_core.store.schema import jobs_index

        stored = conn.scalar(select(jobs_index.c.load).where(jobs_index.c.jid == JID))
    assert "return" not in stored and stored["fun"] == "runner.test.arg"


def test_a_return_long_after_its_job_was_cleaned_is_still_dropped(store):
    publish(store, JID, minions=("m1",))
    save_return(store, ret(JID, "m1"))
    now = dt.datetime.now(UTC)
    assert store.clean_old_jobs(keep_seconds=60, now=now + dt.timedelta(minutes=5)) == 1
    store.clean_old_jobs(keep_seconds=60, now=now + dt.timedelta(days=3))
    save_return(store, ret(JID, "m2", "very late"))
    assert store.get_jid(JID) == {}


def test_minions_settled_or_added_after_their_job_was_cleaned_do_not_bring_it_back(store):
    """The engine settles minions that never answered, a kill marks minions killed and a
    syndic adds minions, possibly long after the publish: once retention removed the job,
    these are dropped like its late returns, and no job row comes back."""
    publish(store, JID, minions=("m1", "m2"))
    save_return(store, ret(JID, "m1"))
    now = dt.datetime.now(UTC)
    store.apply_items([NoReturnItem(JID, ["m2"], now)])
    assert store.clean_old_jobs(keep_seconds=60, now=now + dt.timedelta(days=3)) == 1
    late = now + dt.timedelta(days=3, minutes=1)
    store.apply_items(
        [NoReturnItem(JID, ["m2"], late), KilledItem(JID, ["m3"], late), MinionsItem(JID, ["m4"])]
    )
    with store.db.read() as conn:
        from halite_core.store.schema import job_returns, jobs_index

        assert conn.scalar(select(func.count()).where(jobs_index.c.jid == JID)) == 0
        assert conn.scalar(select(func.count()).where(job_returns.c.jid == JID)) == 0
    assert store.get_jid(JID) == {} and store.get_load(JID) == {}


def test_a_journal_whose_pid_now_belongs_to_another_process_is_recovered(store, settings):
    """A salt-run ended with its writes journalled; its pid was then given to another
    process. The journal names the process by pid and start time, so it is recovered."""
    publish(store, JID, minions=("m1",))
    worker = _worker(settings)
    worker.record("save_return", ret(JID, "m1"), dt.datetime.now(UTC))
    (journal,) = Path(settings.journal_dir).glob("*.jsonl")
    live = os.getppid()  # a live process that did not write it
    journal.rename(journal.with_name(f"{live}-00000000-{live}.1{journal.name[-6:]}"))
    writer_for(settings.journal_dir).close()
    assert JobStore(dataclasses.replace(settings, spool_replay_interval=0)).recover() == 1
    assert set(store.get_jid(JID)) == {"m1"}
    assert list(Path(settings.journal_dir).glob("*.jsonl*")) == []


def _count_transactions(store, monkeypatch):
    """The number of writes of each transaction ``store`` commits, as they commit."""
    counts = []
    apply_items = store.writes.apply_items
    monkeypatch.setattr(store.writes, "apply_items", lambda items: (
        counts.append(len(items)), apply_items(items))[1])  # fmt: skip
    return counts


def _hold_commit_lock(settings):
    """Hold the committer's lock of ``settings``' journals, as another process would;
    closing the file returned lets go."""
    import fcntl

    from halite_core.durability import committer as committing

    Path(settings.journal_dir).mkdir(parents=True, exist_ok=True)
    held = open(Path(settings.journal_dir, committing.LOCK), "a")  # noqa: SIM115
    fcntl.flock(held, fcntl.LOCK_EX)
    return held


def test_a_batch_of_large_writes_is_committed_in_parts(settings, monkeypatch):
    """A batch ends at batch_size writes or at BATCH_BYTES of lines, whichever comes first:
    a backlog of large returns is committed a few tens of MB at a time, all of it."""
    from halite_core.durability import committer as committing

    monkeypatch.setattr(committing, "BATCH_BYTES", 64 * 1024)
    store = JobStore(dataclasses.replace(settings, batch_size=10_000, flush_interval=3600))
    batches = _count_transactions(store, monkeypatch)
    jid = "20261128120000000001"
    minions = [f"m{n}" for n in range(40)]
    load = {"jid": jid, "fun": "test.arg", "arg": [], "tgt": minions, "tgt_type": "list"}
    assert store.record("save_load", jid, load, minions) is True  # journalled, as Salt's
    for minion in minions:
        assert store.record("save_return", ret(jid, minion, "x" * 8000)) is True
    store.flush()
    assert sum(batches) == 41 and len(batches) >= 4  # 320 kB of lines, 64 kB a batch
    assert len(store.get_jid(jid)) == 40
    store.close()


def test_a_batch_read_from_another_process_journal_is_bounded_in_bytes(settings, monkeypatch):
    """The same bound for the lines the committer reads back from a journal (another
    process's, as the engine's committer reads every worker's): a batch ends at
    BATCH_BYTES, across the journals and the chunks it reads them in."""

    from halite_core.durability import committer as committing
    from halite_core.durability import journal

    monkeypatch.setattr(committing, "BATCH_BYTES", 64 * 1024)
    monkeypatch.setattr(journal, "ROTATE_BYTES", 20 * 1024)  # a journal every 3 returns
    store = JobStore(dataclasses.replace(settings, batch_size=10_000, flush_interval=3600))
    batches = _count_transactions(store, monkeypatch)
    held = _hold_commit_lock(settings)  # someone else commits: the lines are only on disk
    jid = "20261128120000000001"
    minions = [f"m{n}" for n in range(40)]
    load = {"jid": jid, "fun": "test.arg", "arg": [], "tgt": minions, "tgt_type": "list"}
    assert store.record("save_load", jid, load, minions) is True
    for minion in minions:
        assert store.record("save_return", ret(jid, minion, "x" * 8000)) is True
    assert batches == []
    held.close()
    store.flush()
    # 320 kB of lines in about 14 journals, 64 kB a batch: neither one batch for all (the bytes
    # counted from the start of each journal) nor a batch a line.
    assert sum(batches) == 41 and 4 <= len(batches) <= 7
    assert max(batches) <= 9  # 64 kB: at most 8 returns of 8 kB and the publish
    assert len(store.get_jid(jid)) == 40
    store.close()


def test_split_by_job_keeps_each_job_in_one_part_in_the_order_read():
    from halite_core.durability.committer import split_by_job
    from halite_core.store.ops import AuditItem

    batch = []
    for n in range(200):
        jid = f"2026112812000000{n % 37:04d}"
        batch.append((f"line {n}", MinionsItem(jid, [f"m{n}"])))
        if n % 50 == 0:
            batch.append((f"audit {n}", AuditItem({"entry_id": str(n)})))
    parts = split_by_job(batch, 2)
    assert len(parts) == 2
    assert sorted(e[0] for part in parts for e in part) == sorted(e[0] for e in batch)
    where = {}
    for index, part in enumerate(parts):
        assert part == [e for e in batch if e in part]  # the order read, within a part
        for _line, item in part:
            jid = getattr(item, "jid", None)
            assert where.setdefault(jid, index) == index  # a job in one part only
    assert where[None] == 0  # writes of no job in the first
    assert split_by_job(batch, 1) == [batch]


def _states(n, failed=False):
    return {
        f"file_|-conf{i}_|-/etc/conf{i}_|-managed": {
            "result": not (failed and i == 0), "comment": f"conf{i}", "__run_num__": i,
            "changes": {"diff": "+x"} if i % 2 else {}, "__id__": f"conf{i}",
            "name": f"/etc/conf{i}",
        }
        for i in range(n)
    }  # fmt: skip


def _dump(store):
    from halite_core.store.schema import job_returns, jobs_index, minion_status, state_results

    tables = {}
    with store.db.read() as conn:
        for table in (jobs_index, job_returns, state_results, minion_status, audit_log):
            skip = {"created_at", "id"}  # when each store committed; audit_log's serial
            columns = [c for c in table.c if c.name not in skip]
            rows = conn.execute(select(*columns)).all()
            tables[table.name] = sorted(tuple(map(repr, row)) for row in rows)
    return tables


@postgresql_only("SQLite commits a batch in one transaction")
def test_a_batch_committed_in_lanes_stores_what_one_transaction_stores(
    settings, monkeypatch, tmp_path, request
):
    """On PostgreSQL a large batch is split by job and committed in two transactions at
    once. The same journal lines committed in one transaction give the same rows: every
    table, every counter, the minions' latest jobs and runs (both lanes write returns of
    the same minions), the first return of a minion kept, settles and kills."""
    import shutil

    from halite_core.config import Settings
    from halite_core.durability import committer as committing
    from halite_core.durability.journal import item_to_line

    quiet = dataclasses.replace(settings, flush_interval=3600)
    store = JobStore(quiet)
    transactions = _count_transactions(store, monkeypatch)
    held = _hold_commit_lock(settings)  # nobody commits while the lines are journalled
    minions = [f"m{n}" for n in range(6)]
    base = dt.datetime(2026, 11, 28, 12, tzinfo=UTC)
    for n in range(40):
        jid = (base + dt.timedelta(seconds=n)).strftime("%Y%m%d%H%M%S%f")
        fun = "state.apply" if n % 4 == 0 else "test.arg"
        targets = minions[n % 3 : n % 3 + 4]
        load = {"jid": jid, "fun": fun, "arg": [], "tgt": targets, "tgt_type": "list"}
        assert store.record("save_load", jid, load, targets) is True
        for m, minion in enumerate(targets[:3]):
            value = _states(4, failed=m == 1) if fun == "state.apply" else {"n": n}
            assert store.record("save_return", ret(jid, minion, value, fun=fun)) is True
        again = ret(jid, targets[0], "a later copy", fun=fun)
        assert store.record("save_return", again) is True  # the first one wins
        late = base + dt.timedelta(minutes=1)
        item = (
            NoReturnItem(jid, [targets[3]], late) if n % 5 else KilledItem(jid, [targets[3]], late)
        )
        store.submit([(item_to_line(item), item)])
        if n % 10 == 0:
            entry = audit.entry(user="alice", action="kill", decision="allow", jid=jid)
            store.record_audit(entry)
    assert transactions == []
    # The same lines, for a second database committed in one transaction.
    other_url = request.getfixturevalue("pg_server").create_database(
        template=request.getfixturevalue("pg_template")
    )
    other_opts = {"cachedir": str(tmp_path / "other"), "id": "master1_master",
                  "keep_jobs_seconds": 3600, "halite": {"db_url": other_url}}  # fmt: skip
    other_settings = dataclasses.replace(
        Settings.from_opts(other_opts), flush_interval=3600, commit_lanes=1
    )
    shutil.copytree(settings.journal_dir, other_settings.journal_dir)
    Path(other_settings.journal_dir, committing.LOCK).unlink()
    one = JobStore(other_settings)
    committer = one.committer()  # another process's lines: flush() waits for this one's
    while committer.run_once():
        pass
    assert committer.committed > 64
    held.close()
    store.flush()
    assert len(transactions) == 2  # one batch, in two lanes
    assert _dump(store) == _dump(one)
    assert _dump(store)["state_results"]  # the changed and failed states were kept
    from halite_core.store.schema import jobs_index

    with store.db.read() as conn:
        counts = conn.execute(
            select(jobs_index.c.status, jobs_index.c.minions_returned, func.count()).group_by(
                jobs_index.c.status, jobs_index.c.minions_returned
            )
        ).all()
    assert counts == [("complete", 3, 40)]  # each settled or killed minion closed its job
    store.close()
    one.close()


@postgresql_only("a publish is written with its counters on PostgreSQL only")
def test_a_publish_written_with_its_counters_stores_what_the_recount_stores(
    settings, tmp_path, request, monkeypatch
):
    """On PostgreSQL a batch's publish loads are written at its end with their counters,
    counted from the batch's rows, instead of being written first and recounted. Every
    kind of job in one batch, and in a second database the same batches recounted, give
    the same rows: returned, running, failed, changed, no targets, settled, killed,
    minions added, a return before its publish, a publish replayed, a second-hand load."""
    from halite_core.config import Settings
    from halite_core.store import writes as writing
    from halite_core.store.ops import EndtimeItem, LoadItem

    other_url = request.getfixturevalue("pg_server").create_database(
        template=request.getfixturevalue("pg_template")
    )
    other_opts = {"cachedir": str(tmp_path / "other"), "id": "master1_master",
                  "keep_jobs_seconds": 3600, "halite": {"db_url": other_url}}  # fmt: skip
    folding, recounting = JobStore(settings), JobStore(Settings.from_opts(other_opts))
    recounting.writes.fold_counts = False
    folds = []
    staged = writing.run_staged

    def run_staged(conn, stage, rows, sql, params=None):
        folds.append(sql == writing.FOLDED_LOADS_POSTGRESQL)
        return staged(conn, stage, rows, sql, params)

    monkeypatch.setattr(writing, "run_staged", run_staged)
    base = dt.datetime(2026, 11, 28, 12, tzinfo=UTC)
    late = base + dt.timedelta(minutes=1)
    jid = [(base + dt.timedelta(seconds=n)).strftime("%Y%m%d%H%M%S%f") for n in range(10)]

    def batches(w):
        def published(n, minions, fun="test.arg"):
            load = {"jid": jid[n], "fun": fun, "arg": [], "tgt": minions, "tgt_type": "list"}
            return w.items_for("save_load", jid[n], load, minions)

        def returned(n, minion, value=True, fun="test.arg", **extra):
            return w.return_item(ret(jid[n], minion, value, fun=fun, **extra), late)

        first = [returned(0, "m1"), *published(1, ["m1", "m2"])]
        second = [
            *published(0, ["m1", "m2"]), returned(0, "m2"),  # complete, m1 returned before
            *published(1, ["m1", "m2"]), returned(1, "m1"),  # replayed, m2 still pending
            *published(2, ["m1", "m2", "m3"]), returned(2, "m1"),
            returned(2, "m2", False, retcode=1, success=False), returned(2, "m3"),
            *published(3, ["m1"], "state.apply"),
            returned(3, "m1", _states(2), "state.apply"),  # changed
            *published(4, []),  # no targets
            *published(5, ["m1", "m2"]), returned(5, "m1"), NoReturnItem(jid[5], ["m2"], late),
            *published(6, ["m1", "m2"]), KilledItem(jid[6], ["m1", "m2"], late),
            *published(7, ["m1"]), MinionsItem(jid[7], ["m2"]),
            returned(7, "m1"), returned(7, "m2"),
            LoadItem(jid[8], {"jid": jid[8], "fun": "test.arg"}, ["m1"], True),
            returned(8, "m1"),
            *published(9, ["m1"]), returned(9, "m1"), EndtimeItem(jid[9], late),
        ]  # fmt: skip
        return first, second

    used = []
    for store in (folding, recounting):
        folds.clear()
        for batch in batches(store.writes):
            store.writes.apply_items(batch)
        used.append(folds.count(True))
    assert used == [2, 0]  # a fold for each batch, and none in the recounted database
    assert _dump(folding) == _dump(recounting)
    from halite_core.store.schema import jobs_index

    with folding.db.read() as conn:
        jobs = conn.execute(
            select(jobs_index.c.status, jobs_index.c.result, jobs_index.c.minions_targeted,
                   jobs_index.c.minions_returned, jobs_index.c.minions_failed)
            .order_by(jobs_index.c.jid)
        ).all()  # fmt: skip
    assert [tuple(job) for job in jobs] == [
        ("complete", "pass", 2, 2, 0), ("running", "running", 2, 1, 0),
        ("complete", "failed", 3, 3, 1), ("complete", "changed", 1, 1, 0),
        ("complete", "pass", 0, 0, 0), ("complete", "failed", 2, 1, 1),
        ("complete", "failed", 2, 0, 2), ("complete", "pass", 2, 2, 0),
        ("complete", "pass", 1, 1, 0), ("complete", "pass", 1, 1, 0),
    ]  # fmt: skip
    folding.close()
    recounting.close()


def _jobs_in_two_lanes():
    """30 jobs, and those of them the second of two commit lanes takes."""
    from halite_core.durability.committer import split_by_job

    base = dt.datetime(2026, 11, 28, 12, tzinfo=UTC)
    jobs = [(base + dt.timedelta(seconds=n)).strftime("%Y%m%d%H%M%S%f") for n in range(30)]
    lanes = split_by_job([(jid, MinionsItem(jid, [])) for jid in jobs], 2)
    return jobs, {item.jid for _, item in lanes[1]}


def _journal_jobs_failing_while(store, monkeypatch, jobs, away, value=lambda jid: True):
    """Journal a publish and two returns for each job; a transaction that holds a write of
    a job ``away(jid)`` says is away fails as if the database were."""
    from halite_core.store.ops import item_jid

    apply_items = store.writes.apply_items

    def apply_or_fail(items):
        if any(away(item_jid(item)) for item in items):
            raise OSError("the database went away")
        return apply_items(items)

    monkeypatch.setattr(store.writes, "apply_items", apply_or_fail)
    for jid in jobs:
        load = {"jid": jid, "fun": "test.arg", "arg": [], "tgt": ["m1", "m2"], "tgt_type": "list"}
        assert store.record("save_load", jid, load, ["m1", "m2"]) is True
        for minion in ("m1", "m2"):
            assert store.record("save_return", ret(jid, minion, value(jid))) is True


@postgresql_only("SQLite commits a batch in one transaction")
def test_a_lane_that_cannot_commit_leaves_the_whole_batch_to_be_taken_again(settings, monkeypatch):
    """One lane's part reaches the database, the other's finds it away and the spool full:
    the journals' progress stays before the batch, and the next pass commits it all again,
    the part already committed counted once (every write is idempotent)."""
    from halite_core.store.schema import job_returns, jobs_index

    store = JobStore(dataclasses.replace(settings, flush_interval=3600, spool_max_bytes=1))
    jobs, away = _jobs_in_two_lanes()  # an outage for the second lane alone
    _journal_jobs_failing_while(store, monkeypatch, jobs, lambda jid: jid in away)
    committer = store.committer()
    committer.run_once()
    assert store.spool.waiting() == []  # nothing could be spooled
    with store.db.read() as conn:
        some = conn.scalar(select(func.count()).select_from(job_returns))
    assert some == 2 * (30 - len(away))  # the first lane's part is in, the other's is not
    away.clear()
    committer.run_once()
    with store.db.read() as conn:
        returned = conn.execute(
            select(jobs_index.c.minions_returned, func.count()).group_by(
                jobs_index.c.minions_returned
            )
        ).all()
        rows = conn.scalar(select(func.count()).select_from(job_returns))
    assert returned == [(2, 30)] and rows == 60
    assert committer.run_once() == 0  # all taken: nothing is committed a third time
    store.close()


@postgresql_only("SQLite commits a batch in one transaction")
def test_a_batch_whose_lanes_find_the_database_away_is_spooled_once_or_not_at_all(
    settings, monkeypatch
):
    """The database away for both lanes: what neither part could commit is spooled in one
    file if the spool has room for all of it, else not at all (the batch stays in the
    journals). A part that fits is never spooled on its own, pass after pass, while the
    other does not."""
    from halite_core.store.schema import job_returns

    bound = 64 * 1024  # room for the small part, not for the large one
    store = JobStore(dataclasses.replace(settings, flush_interval=3600, spool_max_bytes=bound))
    jobs, large = _jobs_in_two_lanes()
    down = [True]
    _journal_jobs_failing_while(
        store,
        monkeypatch,
        jobs,
        lambda jid: down[0],
        lambda jid: "x" * 8000 if jid in large else True,
    )
    committer = store.committer()
    for _ in range(3):
        committer.run_once()
        assert store.spool.waiting() == []  # not the small part alone, again and again
    store.spool.max_bytes = 10 * bound  # room for the batch now
    committer.run_once()
    assert len(store.spool.waiting()) == 1  # one file for both parts
    committer.run_once()
    assert len(store.spool.waiting()) == 1  # and the batch taken: not spooled again
    down[0] = False
    assert store.replay_spool() == 1
    with store.db.read() as conn:
        rows = conn.scalar(select(func.count()).select_from(job_returns))
    assert rows == 60 and store.spool.waiting() == []
    store.close()
