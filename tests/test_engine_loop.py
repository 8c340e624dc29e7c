"""The engine module's loop (salt/_engines/halite.py run_once) with a bus that never goes
quiet, as during a fan-in: the changes are handed over every flush_interval all the same."""

import importlib.util
import itertools
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.once  # no database: the same in either pass

ENGINE = Path(__file__).resolve().parent.parent / "salt" / "_engines" / "halite.py"


def engine_module():
    spec = importlib.util.spec_from_file_location("halite_engine_under_test", ENGINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BusyBus:
    """A return event every 2 ms, for ever (Salt's no_block read waits for the next)."""

    def __init__(self):
        self.count = itertools.count()

    def get_event(self, **_):
        time.sleep(0.002)
        n = next(self.count)
        return {"tag": f"salt/job/20261202100000000001/ret/m{n}", "data": {"id": f"m{n}"}}


class Recorder:
    def __init__(self, flush_interval):
        self.options = SimpleNamespace(flush_interval=flush_interval)
        self.jobs = {}
        self.handled = 0
        self.ticks = 0

    def handle(self, tag, data):
        self.handled += 1

    def tick(self):
        self.ticks += 1


def test_a_bus_that_never_goes_quiet_is_handed_over_every_flush_interval():
    module = engine_module()
    engine = Recorder(flush_interval=0.1)
    for _ in range(3):
        module.run_once(engine, BusyBus())
    assert engine.ticks == 3
    # Each pass handed over after about flush_interval (some 50 events), not after the
    # 10,000 events of max_events.
    assert 0 < engine.handled < 10000
