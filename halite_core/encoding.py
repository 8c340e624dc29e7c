"""Turning whatever a minion returns into JSON without losing it.

Fast path: orjson, which writes the JSON of a return as Salt decodes it (dicts, lists,
strings, numbers, booleans, None) about ten times faster than the standard library's encoder;
its text is UTF-8 rather than ASCII with escapes, the same JSON value. Where it refuses a
value, or writes one its own way (nan and infinity as ``null``: any text holding ``null`` is
written once more by the standard library), the standard encoder and then the walk below
take over. When a value holds something JSON cannot carry, the value is walked and each
such part becomes a marker object ``{"__halite_type__": kind, ...}`` that
:func:`restore` turns back into the original Python type when Salt reads the job back:

==========  ====================================================  =====================
kind        marker                                                restored as
==========  ====================================================  =====================
bytes       ``{"__halite_type__": "bytes", "base64": "..."}``     ``bytes``
set         ``{"__halite_type__": "set", "items": [...]}``        ``set``
datetime    ``{"__halite_type__": "datetime", "iso": "..."}``     ``datetime``/``date``
decimal     ``{"__halite_type__": "decimal", "value": "1.10"}``   ``Decimal``
float       ``{"__halite_type__": "float", "value": "nan"}``      ``float`` (nan/inf)
object      ``{"__halite_type__": "object", "type": ..., "repr": ...}``  the marker itself
mapping     ``{"__halite_type__": "mapping", "items": {...}}``      ``dict``
mapping     ``{"__halite_type__": "mapping", "pairs": [[k, v]]}``   ``dict``
integer     ``{"__halite_type__": "integer", "value": "..."}``     ``int`` (``hex`` if huge)
text        ``{"__halite_type__": "text", "base64": "..."}``      ``str`` (a NUL, a surrogate)
==========  ====================================================  =====================

``mapping`` escapes a minion's own mapping that has a ``__halite_type__`` key, so that no
value a minion returns is ever mistaken for a marker. A mapping with a NUL character or a
lone surrogate in a key, which no jsonb key can hold, is written as ``pairs``, each key
encoded as any string is (a ``text`` marker when it holds one): the key ``key<NUL>`` and a
minion's own key ``key\\x00`` stay two keys. ``text`` holds a string with a NUL character
or a lone surrogate (a file name Python read from bytes that are not UTF-8: PostgreSQL's
jsonb refuses both), as UTF-8 in base64 (surrogates passed through). ``integer`` holds a
return that is a bare integer outside the 64-bit range, which SQLite's numeric column
affinity would turn into a float (inside a list or mapping it is
part of the JSON text and is kept as it is), and any integer too long for Python to write
in decimal, in hexadecimal.

A ``uuid.UUID`` is stored as its text and an ``enum.Enum`` member as its value (orjson's
way; a return Salt decoded from a minion holds neither). Reads use the standard library's
decoder, which keeps integers of any size (orjson's would turn one past 64 bits into a float).

Tuples become lists and non-string mapping keys become strings, as with any JSON store
(where two keys of one mapping become the same string, ``1`` and ``"1"``, the last wins).
A value whose JSON is larger than the configured cap is replaced by a ``truncated`` marker
holding its size and the first bytes of its JSON.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

MARKER = "__halite_type__"
_MARKER_BYTES = MARKER.encode()
# The fast encoder writes what json writes for the types of a return as Salt decodes it
# (dict, list, str, int, float, bool, None); anything else it would write its own way
# (a datetime as text, a dataclass as a mapping) goes to the walk with markers instead.
_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# In JSON text as json.dumps writes it (ASCII): a lone surrogate's escape, which jsonb
# refuses (a pair, an astral character's, it takes). An escaped backslash before "ud800"
# matches too: the value is then walked, and kept as it is.
LONE_SURROGATE = re.compile(
    r"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}"
)
SURROGATE = re.compile("[\ud800-\udfff]")
PREVIEW_CHARS = 4096
MAX_DEPTH = 200
MAX_INT_BITS = 14_000  # about 4,200 decimal digits, under Python's 4,300 for str(int)


class Encoded(NamedTuple):
    """JSON text ready to store, and what had to be changed to produce it."""

    text: str
    converted: bool = False
    truncated: bool = False
    size: int | None = None


def _marker(kind: str, **fields: Any) -> dict[str, Any]:
    return {MARKER: kind, **fields}


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` made only of JSON types, with markers for everything else."""
    if _depth > MAX_DEPTH:
        return _marker("object", type="nested", repr=f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        # PostgreSQL's jsonb holds neither a NUL character nor a lone surrogate.
        if "\x00" in value or SURROGATE.search(value):
            data = value.encode("utf-8", "surrogatepass")
            return _marker("text", base64=base64.b64encode(data).decode("ascii"))
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _integer(value) if value.bit_length() > MAX_INT_BITS else value
    if isinstance(value, float):
        return value if math.isfinite(value) else _marker("float", value=repr(value))
    if isinstance(value, Mapping):
        items = [(_key(k), v) for k, v in value.items()]
        if any("\x00" in k or SURROGATE.search(k) for k, _ in items):
            # No JSON object key can hold a NUL in jsonb, and any escape of it could be a
            # minion's own key: the mapping becomes pairs, each key encoded as text is.
            pairs = [[to_jsonable(k), to_jsonable(v, _depth + 1)] for k, v in items]
            return _marker("mapping", pairs=pairs)
        mapping = {k: to_jsonable(v, _depth + 1) for k, v in items}
        return _marker("mapping", items=mapping) if MARKER in mapping else mapping
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_jsonable(v, _depth + 1) for v in value]
        return _marker("set", items=sorted(items, key=repr))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _marker("bytes", base64=base64.b64encode(bytes(value)).decode("ascii"))
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _marker("datetime", iso=value.isoformat(), cls=type(value).__name__)
    if isinstance(value, decimal.Decimal):
        return _marker("decimal", value=str(value))
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not lose the return
        text = f"<unrepresentable: {exc!r}>"
    return _marker("object", type=f"{type(value).__module__}.{type(value).__qualname__}", repr=text)


def _integer(value: int) -> dict[str, Any]:
    if value.bit_length() > MAX_INT_BITS:  # past Python's limit on decimal digits
        return _marker("integer", hex=hex(value))
    return _marker("integer", value=str(value))


def _key(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


def dumps(value: Any) -> tuple[str, bool]:
    """JSON text for ``value`` and whether anything had to be converted to a marker."""
    if type(value) is int and not -(2**63) <= value < 2**63:
        return json.dumps(_integer(value), separators=(",", ":")), True
    try:
        data = orjson.dumps(value, option=_ORJSON)
    except (TypeError, ValueError):
        pass  # bytes, a set, a big integer, a lone surrogate: the markers below
    else:
        # orjson writes nan and inf as null: a value with a null is encoded once more by
        # json, which refuses them. A NUL and a marker key are checked as below. (rfind:
        # CPython's backward search reads a megabyte return in half the time of ``in``.)
        found = data.rfind
        if found(b"null") < 0 and found(b"\\u0000") < 0 and found(_MARKER_BYTES) < 0:
            return data.decode("utf-8"), False
    text = None
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        if (
            "\\u0000" not in text
            and MARKER not in text
            and ("\\ud" not in text or not LONE_SURROGATE.search(text))
        ):
            return text, False
    except (TypeError, ValueError, RecursionError):
        pass
    walked = json.dumps(to_jsonable(value), allow_nan=False, separators=(",", ":"))
    return walked, walked != text


def encode(value: Any, max_bytes: int | None = None) -> Encoded:
    """Encode ``value`` for storage, truncating it to ``max_bytes`` of JSON with a marker."""
    text, converted = dumps(value)
    return limited(text, converted, max_bytes)


def limited(text: str, converted: bool = False, max_bytes: int | None = None) -> Encoded:
    """JSON text from :func:`dumps`, truncated to ``max_bytes`` with a marker."""
    size = len(text.encode("utf-8")) if max_bytes is not None and len(text) * 4 > max_bytes else 0
    if max_bytes is not None and size > max_bytes:
        preview = text[:PREVIEW_CHARS]
        marker = _marker("truncated", size=size, limit=max_bytes, preview=preview)
        return Encoded(json.dumps(marker), converted, True, size)
    return Encoded(text, converted, False, size or None)


def restore(value: Any) -> Any:
    """Undo :func:`to_jsonable`'s markers so Salt gets back the types the minion sent."""
    if isinstance(value, list):
        return [restore(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(MARKER)
    if kind is None:
        return {k: restore(v) for k, v in value.items()}
    try:
        if kind == "mapping":
            if "pairs" in value:
                return {restore(k): restore(v) for k, v in value["pairs"]}
            return {k: restore(v) for k, v in value["items"].items()}
        if kind == "integer":
            return int(value["hex"], 16) if "hex" in value else int(value["value"])
        if kind == "bytes":
            return base64.b64decode(value["base64"])
        if kind == "text":
            return base64.b64decode(value["base64"]).decode("utf-8", "surrogatepass")
        if kind == "set":
            return {_hashable(restore(v)) for v in value["items"]}
        if kind == "decimal":
            return decimal.Decimal(value["value"])
        if kind == "float":
            return float(value["value"])
        if kind == "datetime":
            cls: Any = {"date": dt.date, "time": dt.time}.get(value.get("cls", ""), dt.datetime)
            return cls.fromisoformat(value["iso"])
    except (KeyError, TypeError, ValueError, AttributeError, decimal.InvalidOperation):
        pass
    return value


def loads(value: Any) -> Any:
    """A stored JSON value as Salt should get it back: ``value`` is the column's raw text
    (SQLite) or the driver's already-parsed object (PostgreSQL's jsonb). The walk that
    restores markers only runs when there can be one."""
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        parsed = json.loads(text)
        return restore(parsed) if MARKER in text else parsed
    return restore(value)


def column_text(text: str) -> str:
    """``text`` as a text column of either database takes it: a NUL (which PostgreSQL's
    text refuses) and a lone surrogate (which no UTF-8 holds) escaped as ``\\u0000`` and
    ``\\udcff``. The return, the load, keep the original (with markers)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    if text.isascii():
        return text  # no surrogate: the check below would make a copy for nothing
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value
