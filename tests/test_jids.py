import datetime as dt
import os
import time

import pytest

from halite_core import jids

# The same over either database: run once, in the SQLite pass.
pytestmark = pytest.mark.once

UTC = dt.timezone.utc


@pytest.fixture
def paris_tz():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Paris"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_utc_jid_is_read_as_utc():
    assert jids.start_time("20261128115138123456", utc=True) == dt.datetime(
        2026, 11, 28, 11, 51, 38, 123456, tzinfo=UTC
    )


def test_unique_jid_suffix_is_accepted():
    assert jids.start_time("20261128115138123456_4242", utc=True).second == 38
    assert jids.is_jid("20261128115138123456_4242")
    assert not jids.is_jid("20261128115138123456_")
    assert not jids.is_jid("req")


def test_jid_check_agrees_with_its_pattern():
    # is_jid has a fast path for the plain 20-digit form; the pattern decides the rest.
    for text in [
        "20261128115138123456",
        "2026112811513812345",
        "202611281151381234567",
        "2026112811513812345x",
        "\u0661" * 20,
        "20261128115138123456\n",
        " " * 20,
    ]:
        assert jids.is_jid(text) is (jids._JID_RE.match(text) is not None), repr(text)
    assert not jids.is_jid(20261128115138123456)


def test_local_jid_uses_the_masters_zone_with_daylight_saving(paris_tz):
    # Winter: Paris is UTC+1; summer: UTC+2.
    assert jids.start_time("20260115120000000000", utc=False) == dt.datetime(
        2026, 1, 15, 11, 0, tzinfo=UTC
    )
    assert jids.start_time("20260715120000000000", utc=False) == dt.datetime(
        2026, 7, 15, 10, 0, tzinfo=UTC
    )


def test_generated_local_jid_reads_back_as_now(paris_tz):
    now = dt.datetime.now(UTC)
    jid = jids.gen_jid(utc=False, now=now)
    assert abs(jids.start_time(jid, utc=False) - now) < dt.timedelta(seconds=1)
    assert jid[8:10] == f"{now.astimezone():%H}"


def test_gen_jid_is_monotonic_and_unique_suffix():
    now = dt.datetime(2030, 1, 1, tzinfo=UTC)
    first, second = jids.gen_jid(True, now=now), jids.gen_jid(True, now=now)
    assert second > first
    assert jids.gen_jid(True, unique=True).endswith(f"_{os.getpid()}")
    assert jids.next_jid("20261128115138123456_7") == "20261128115138123457_7"


def test_bad_jid_is_a_clear_error():
    with pytest.raises(jids.InvalidJid, match="not a Salt job id"):
        jids.start_time("2026-11-28", utc=True)
    with pytest.raises(jids.InvalidJid):
        jids.start_time("20261399999999999999", utc=True)


def test_salt_time_text_round_trips(paris_tz):
    moment = dt.datetime(2026, 7, 1, 8, 30, 5, 120000, tzinfo=UTC)
    assert jids.salt_time_text(moment, utc=True) == "2026, Jul 01 08:30:05.120000"
    assert jids.salt_time_text(moment, utc=False) == "2026, Jul 01 10:30:05.120000"
    for utc in (True, False):
        assert jids.parse_salt_time_text(jids.salt_time_text(moment, utc), utc) == moment
