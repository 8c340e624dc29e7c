import collections
import dataclasses
import datetime as dt
import decimal
import json
import uuid

import pytest

from halite_core import encoding
from tests.helpers import save_return


class Opaque:
    def __repr__(self):
        return "<Opaque thing>"


def test_plain_json_takes_the_fast_path():
    text, converted = encoding.dumps({"a": [1, 2.5, None, "x"]})
    assert json.loads(text) == {"a": [1, 2.5, None, "x"]}
    assert not converted


def test_unencodable_values_round_trip_through_markers():
    value = {
        "bytes": b"\x00\xff",
        "set": {3, 1, 2},
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "day": dt.date(2026, 1, 2),
        "money": decimal.Decimal("10.10"),
        "nan": float("nan"),
        "inf": float("inf"),
        7: "int key",
    }
    encoded = encoding.encode(value)
    assert encoded.converted and not encoded.truncated
    back = encoding.restore(json.loads(encoded.text))
    assert back["bytes"] == b"\x00\xff"
    assert back["set"] == {1, 2, 3}
    assert back["when"] == value["when"]
    assert back["day"] == dt.date(2026, 1, 2)
    assert back["money"] == decimal.Decimal("10.10")
    assert back["inf"] == float("inf")
    assert back["nan"] != back["nan"]
    assert back["7"] == "int key"


@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")])
def test_a_lone_nan_or_infinity_among_plain_values_becomes_a_float_marker(special):
    # The fast encoder would write these as null, which reads back as None: the
    # marker must be written whether or not the value holds anything else JSON
    # cannot carry.
    value = {"result": True, "load": [0.5, special], "name": "cpu"}
    text, converted = encoding.dumps(value)
    assert converted
    back = encoding.restore(json.loads(text))["load"][1]
    assert isinstance(back, float) and str(back) == str(special)
    assert encoding.restore(json.loads(encoding.dumps(special)[0])) is not None


def test_the_fast_encoder_writes_what_json_writes():
    value = {
        "str": 'caf\u00e9 \U0001f600 "q" \\ \n\t\x01',
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "floats": [0.1, 1e16, -2.5e-300, 1.0],
        "nested": {"a": [{"b": []}, (1, 2)], "t": True, "f": False},
        "sub": collections.OrderedDict([("z", 1), ("a", 2)]),
    }
    text, converted = encoding.dumps(value)
    assert "café" in text  # orjson's UTF-8: the standard encoder would write \u00e9
    assert not converted
    assert json.loads(text) == json.loads(json.dumps(value))
    assert list(json.loads(text)["sub"]) == ["z", "a"]
    # A value holding None (written null, as nan would be) goes to the standard encoder.
    text, converted = encoding.dumps({**value, "none": None})
    assert "café" not in text and not converted
    assert json.loads(text) == json.loads(json.dumps({**value, "none": None}))


def test_datetimes_and_dataclasses_are_not_written_the_fast_encoder_s_way():
    @dataclasses.dataclass
    class Point:
        x: int

    text, converted = encoding.dumps({"when": dt.datetime(2026, 1, 2), "p": Point(1)})
    back = encoding.restore(json.loads(text))
    assert converted
    assert back["when"] == dt.datetime(2026, 1, 2)
    assert back["p"]["__halite_type__"] == "object"
    assert "Point(x=1)" in back["p"]["repr"]


def test_a_uuid_is_stored_as_its_text():
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    text, converted = encoding.dumps({"id": value})
    assert json.loads(text) == {"id": str(value)}


def test_arbitrary_objects_are_kept_as_a_visible_marker():
    back = json.loads(encoding.encode({"obj": Opaque()}).text)
    assert back["obj"] == {
        "__halite_type__": "object",
        "type": f"{__name__}.Opaque",
        "repr": "<Opaque thing>",
    }


def test_oversized_value_is_truncated_with_a_marker():
    encoded = encoding.encode({"blob": "x" * 10_000}, max_bytes=1000)
    assert encoded.truncated
    marker = json.loads(encoded.text)
    assert marker["__halite_type__"] == "truncated"
    assert marker["size"] > 10_000 and marker["limit"] == 1000
    assert marker["preview"].startswith('{"blob":"xxx')


def test_deep_nesting_does_not_crash():
    value: list = []
    for _ in range(5000):
        value = [value]
    encoded = encoding.encode({"deep": value, "b": b"x"})
    assert "nesting deeper than" in encoded.text


def test_a_returned_mapping_that_looks_like_a_marker_reads_back_as_it_was():
    # A minion may return a mapping with the marker's own key; it must not be taken for a
    # marker on the way back (hypothesis found {"__halite_type__": b""}).
    values = [
        {"__halite_type__": b""},
        {"__halite_type__": "bytes", "base64": "AA=="},
        {"__halite_type__": "mapping", "items": {"a": 1}},
        {"outer": [{"__halite_type__": {"__halite_type__": "set", "items": []}}]},
    ]
    for value in values:
        text, _ = encoding.dumps(value)
        assert encoding.loads(text) == value
        assert encoding.restore(json.loads(text)) == value


def test_a_malformed_mapping_marker_is_left_as_it_is():
    broken = {"__halite_type__": "mapping", "items": [1, 2]}
    assert encoding.restore(broken) == broken


def test_integers_of_any_size_read_back_as_they_were():
    for value in (2**63, -(2**63) - 1, 10**100, [2**70], {"n": 2**70}, 3**20_000, [-(7**9_000)]):
        text, _ = encoding.dumps(value)
        assert encoding.loads(text) == value
    # A bare integer past 64 bits is a marker (SQLite would round it to a float); one that
    # fits, or one inside a list, stays a JSON number.
    assert json.loads(encoding.dumps(2**63)[0]) == {
        "__halite_type__": "integer",
        "value": str(2**63),
    }
    assert encoding.dumps(2**63 - 1) == (str(2**63 - 1), False)
    assert encoding.dumps([2**70]) == (f"[{2**70}]", False)


NUL_KEYS = {
    "key\x00": 1,
    "key\\x00": 2,  # the four characters a NUL used to be written as: no collision now
    "key\\u0000": 3,
    "nested": [{"\x00": b"x", "a": {"b\x00c": None, "plain": "\x00 in a value"}}],
}


def test_mapping_keys_holding_nul_read_back_exactly():
    text, converted = encoding.dumps(NUL_KEYS)
    assert converted
    # PostgreSQL's jsonb cannot hold the escape of a NUL character at all.
    assert "\\u0000" not in text.replace("\\\\u0000", "")
    assert encoding.loads(text) == NUL_KEYS
    assert encoding.restore(json.loads(text)) == NUL_KEYS
    assert encoding.restore(encoding.to_jsonable(NUL_KEYS)) == NUL_KEYS


def test_returns_and_loads_with_nul_keys_are_stored_exactly(store):
    from tests.helpers import publish, ret

    jid = "20261128120000000001"
    publish(store, jid, fun="test.arg", minions=["m1"], kwargs={"opt\x00": 1, "opt\\x00": 2})
    save_return(store, ret(jid, "m1", value=NUL_KEYS))
    store.flush()
    assert store.get_jid(jid)["m1"]["return"] == NUL_KEYS
    assert store.get_load(jid)["kwargs"] == {"opt\x00": 1, "opt\\x00": 2}
