import datetime as dt
import decimal
import json

from halite_core import encoding


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
