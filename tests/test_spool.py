"""The spool: bounded, with log lines as it grows; each write replayed once."""

import logging

from halite_core.durability import spool as spoolmod
from halite_core.durability.spool import Spool


def test_spool_is_bounded_and_says_so(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(spoolmod, "GROWTH_LOG_FROM", 2000)
    spool = Spool(tmp_path / "spool", max_bytes=10_000)
    spool._logged_at = 1000
    caplog.set_level(logging.WARNING, logger="halite_core.durability.spool")
    kept = [spool.put("save_return", {"jid": str(n), "return": "x" * 900}) for n in range(15)]
    stored = [path for path in kept if path is not None]
    assert 8 <= len(stored) <= 10 and spool.dropped == 15 - len(stored)
    assert spool.size() <= 10_000
    assert [p.name for p in spool.pending()] == sorted(p.name for p in stored)  # in order
    messages = [r.getMessage() for r in caplog.records]
    assert any("MB of writes waiting for the database" in m for m in messages)
    assert sum("is full" in m for m in messages) == spool.dropped
    # Replaying makes room again.
    for path in spool.pending()[:5]:
        path.unlink()
    spool._size = None  # as the next measurement does
    assert spool.put("save_return", {"jid": "late"}) is not None


def test_a_spool_without_bound_keeps_everything(tmp_path):
    spool = Spool(tmp_path / "spool")
    assert all(spool.put("save_load", "x" * 5000) for _ in range(20))
    assert len(spool.pending()) == 20


def test_a_stale_claim_is_replayed_once(tmp_path):
    """A claim left by a process that died is taken up again after STALE_CLAIM_SECONDS;
    two processes that both listed it cannot both replay it."""
    import os
    import time

    spool = Spool(tmp_path / "spool")
    path = spool.put("save_return", {"jid": "20261128120000000001"})
    stale = path.with_name(path.name.removesuffix(".json") + ".claimed")
    os.rename(path, stale)
    os.utime(stale, (time.time() - 1000, time.time() - 1000))
    other = Spool(tmp_path / "spool")
    listed = other.pending()
    assert listed == [stale]
    other.pending = lambda: listed  # the other process listed it before this one claimed it
    applied = []

    def apply(op, args):
        applied.append(op)
        other.replay(lambda op, args: applied.append("again"), lambda exc: False)

    assert spool.replay(apply, lambda exc: False) == 1
    assert applied == ["save_return"]
    assert spool.pending() == []


def test_a_claim_of_a_process_that_died_is_replayed_at_once(tmp_path):
    """A replaying process killed after claiming a file: its claim is taken up by the next
    replay, without waiting STALE_CLAIM_SECONDS; a live process's claim is left alone."""
    import os
    import subprocess
    import sys

    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    spool = Spool(tmp_path / "spool")
    orphan = spool.put("save_return", {"jid": "20261128120000000001"})
    mine = spool.put("save_return", {"jid": "20261128120000000002"})
    base = orphan.name.removesuffix(".json")
    os.rename(orphan, orphan.with_name(f"{base}.{dead}-0.claimed"))
    busy = mine.with_name(f"{mine.name.removesuffix('.json')}.{os.getppid()}-0.claimed")
    os.rename(mine, busy)  # claimed by a live process (this test's parent)
    applied = []
    assert spool.replay(lambda op, args: applied.append(args[0]["jid"]), lambda e: False) == 1
    assert applied == ["20261128120000000001"]
    assert spool.pending() == []
    assert busy.exists()


def test_a_write_being_replayed_is_still_waiting(tmp_path):
    """While a live process replays a spooled write (its claim), the write is not one to
    replay (pending) but is not applied either (waiting): a count of what the database
    has still to take includes it."""
    import os

    spool = Spool(tmp_path / "spool")
    first, second = (spool.put("save_load", str(n)) for n in range(2))
    claimed = first.with_name(f"{first.stem}.{os.getpid()}-0{spoolmod.CLAIMED}")
    first.rename(claimed)
    assert spool.pending() == [second]
    assert spool.waiting() == sorted([claimed, second], key=lambda p: p.name)
    assert Spool(tmp_path / "nowhere").waiting() == []
