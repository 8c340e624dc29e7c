"""Property-based tests: arbitrary returns, loads and bus events never raise into Salt, and
what is stored reads back equal (or as its documented marker)."""

import datetime as dt
import decimal
import itertools
import math
import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from halite_core import encoding

FUZZ = settings(
    max_examples=int(os.environ.get("HALITE_FUZZ_EXAMPLES", "60")),  # more for a deep run
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_jids = itertools.count(1)

text = st.text(max_size=20)
# Mapping keys: any text, and the ones an encoding could confuse (a NUL and its escapes).
keys = text | st.sampled_from(["key\x00", "key\\x00", "key\\u0000", "\x00", "__halite_type__"])
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | text | st.binary(max_size=20)
    | st.decimals(allow_nan=False, places=3)
    | st.datetimes(timezones=st.none() | st.just(dt.timezone.utc))
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(keys, children, max_size=4)
        | st.frozensets(st.integers() | text, max_size=4)
    ),
    max_leaves=20,
)


def next_jid():
    return f"20261128{next(_jids):012d}"


def same(stored, original):
    """Equal as Salt would see it: NaN equals NaN, frozensets come back as sets, and numbers
    are equal in value (a float with an integral value, such as 1e16, may come back as an
    int: SQLite's numeric affinity and PostgreSQL's jsonb both keep the value, not the type;
    docs/schema.md says so)."""
    if isinstance(original, float) and math.isnan(original):
        return isinstance(stored, float) and math.isnan(stored)
    if isinstance(original, float) and not isinstance(original, bool):
        return (
            isinstance(stored, (int, float))
            and not isinstance(stored, bool)
            and float(stored) == original
        )
    if isinstance(original, (set, frozenset)):
        return isinstance(stored, (set, frozenset)) and set(stored) == set(original)
    if isinstance(original, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(original)
            and all(same(a, b) for a, b in zip(stored, original, strict=True))
        )
    if isinstance(original, dict):
        return (
            isinstance(stored, dict)
            and stored.keys() == original.keys()
            and all(same(stored[k], original[k]) for k in original)
        )
    if isinstance(original, decimal.Decimal):
        return stored == original
    return type(stored) is type(original) and stored == original


# Minion ids are file names on the master: no NUL, no slash.
minion_ids = st.text(
    st.characters(blacklist_characters="\x00/", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=30,
)


@FUZZ
@given(value=values, minion=minion_ids)
@example(value={"key\x00": 1, "key\\x00": 2}, minion="m1")  # two keys, not one
@example(value={"outer": [{"\x00": {"__halite_type__": b""}}]}, minion="m1")
def test_any_return_reads_back_as_it_was(store, value, minion):
    jid = next_jid()
    assert store.record("save_load", jid, {"jid": jid, "fun": "test.arg", "tgt": [minion],
                                           "tgt_type": "list"}, [minion]) is True  # fmt: skip
    ret = {"jid": jid, "id": minion, "fun": "test.arg", "return": value, "retcode": 0}
    assert store.record("save_return", ret) is True
    store.flush()
    got = store.get_jid(jid)[minion[:255]]["return"]
    assert same(got, value), (got, value)
    assert same(encoding.loads(encoding.dumps(value)[0]), value)


@FUZZ
@given(
    jid=st.one_of(st.none(), text, st.integers(), st.just("20261128120000000000")),
    load=st.one_of(values, st.dictionaries(text, values, max_size=6)),
    minions=st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=3), values),
    ret=st.one_of(values, st.dictionaries(st.sampled_from(
        ["jid", "id", "fun", "return", "retcode", "success", "out", "fun_args"]), values)),
)  # fmt: skip
def test_garbage_never_raises_into_salt(store, jid, load, minions, ret):
    calls = [("save_load", (jid, load, minions)), ("save_return", (ret,)),
             ("save_minions", (jid, minions)), ("update_endtime", (jid, load))]  # fmt: skip
    for op, args in calls:
        assert store.record(op, *args) in (True, None)
    store.flush()


@FUZZ
@given(
    tag=st.one_of(text, st.builds(lambda j, w, m: f"salt/job/{j}/{w}/{m}",
                                  st.sampled_from(["20261128120000000001", "x", ""]),
                                  st.sampled_from(["new", "ret", "prog"]), text),
                  st.builds(lambda j, w: f"salt/run/{j}/{w}",
                            st.sampled_from(["20261128120000000002", "1"]),
                            st.sampled_from(["new", "ret"]))),
    data=st.dictionaries(st.sampled_from(["jid", "fun", "minions", "id", "return", "tgt",
                                          "arg", "fun_args", "_stamp", "retcode", "success",
                                          "user"]), values, max_size=8),
)  # fmt: skip
def test_engine_survives_any_event(store, tag, data):
    from tests.test_active import Clock, FindJob, make_engine

    engine = make_engine(store, Clock(), FindJob())
    engine.handle(tag, data)
    engine.tick()
    engine.flush()


def test_hypothesis_keeps_its_files_out_of_the_checkout():
    """Its example database and caches (.hypothesis/) go to a temporary directory."""
    from pathlib import Path

    from hypothesis.configuration import storage_directory

    checkout = Path(__file__).resolve().parents[1]
    home = storage_directory("examples", intent_to_write=False).home_directory.resolve()
    assert not home.is_relative_to(checkout)
