"""The audit log: who asked for what, whether it was allowed, and what came of it.

Every kill, allowed or denied, and every denied read is recorded by the runners through
:func:`record`; nothing in halite updates or deletes a record. :func:`list_entries` is
``salt-run halite.audit``: newest first, filtered and paged in SQL like ``halite.jobs``.
Arguments are stored with secrets redacted (:func:`redact`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select

from halite_core import encoding
from halite_core.queries import QueryError, _aware, _limit, decode_cursor, encode_cursor
from halite_core.store.schema import audit_log

# Which keys name a secret, by the words of the key: ``db_password``, ``X-Auth-Token`` and
# ``clientSecret`` are split on ``_ - .``, spaces and case changes into lower-case words
# (``db password``, ``x auth token``, ``client secret``). A key that only measures or
# describes a secret (``token_count``, ``password_length``, ``max_tokens``: its last word
# in MEASURE_WORDS or its first in COUNT_WORDS) is not one. Otherwise a key is secret when
# one of its words is in SECRET_WORDS, when two of its words in a row are one of
# SECRET_PAIRS (``db_url``, ``connection_string``, ``private_key_data``), when it ends in
# the word ``key``/``keys`` after another word (``db_key``, ``apiKey``, ``private_key``) that
# is not one of PLAIN_KEY_KINDS (``primary_key``, ``sort_key``, ``public_key``: names of
# columns and public halves; a lone ``key`` is a lookup name), or when it holds one of
# SECRET_TEXTS anywhere (``dbpassword``: run-together words). Whole words, so ``passive``,
# ``compass``, ``bypass``, ``tokenize``, ``author`` and ``secretary`` stay readable.
SECRET_WORDS = frozenset({
    "password", "passwords", "passwd", "pwd", "pw", "pass", "passphrase", "passcode",
    "secret", "secrets", "token", "tokens", "credential", "credentials", "creds",
    "authorization", "auth", "cookie", "cookies", "apikey", "privatekey", "secretkey",
    "accesskey", "authtoken", "otp", "jwt", "bearer", "session", "sessionid", "dsn",
    "dburl", "databaseurl", "connectionstring", "connstr", "keydata",
})  # fmt: skip
SECRET_PAIRS = frozenset({
    ("db", "url"), ("db", "uri"), ("database", "url"), ("database", "uri"),
    ("connection", "string"), ("connection", "url"), ("connection", "uri"),
    ("conn", "str"), ("conn", "string"), ("key", "data"),
})  # fmt: skip
SECRET_TEXTS = ("password", "passwd", "passphrase")
KEY_WORDS = ("key", "keys")
PLAIN_KEY_KINDS = frozenset({
    "primary", "foreign", "sort", "partition", "hash", "range", "public", "unique",
    "composite", "natural", "index", "cache", "lookup", "dict", "group", "shard",
})  # fmt: skip
MEASURE_WORDS = frozenset({
    "count", "counts", "length", "len", "size", "limit", "limits", "type", "kind",
    "ttl", "timeout", "expiry", "expires", "lifetime",
})  # fmt: skip
COUNT_WORDS = frozenset({"max", "min", "num", "total"})
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
REDACTED = "***redacted***"
DECISIONS = ("allow", "deny")
MAX_TEXT = 1024


def is_secret(key: object) -> bool:
    """Whether a mapping key names a secret (see SECRET_WORDS for the rule)."""
    text = str(key)
    words = [word.lower() for word in _WORD.findall(text)]
    if len(words) > 1 and (words[-1] in MEASURE_WORDS or words[0] in COUNT_WORDS):
        return False
    if any(word in SECRET_WORDS for word in words):
        return True
    if any(pair in SECRET_PAIRS for pair in itertools.pairwise(words)):
        return True
    if len(words) > 1 and words[-1] in KEY_WORDS and words[-2] not in PLAIN_KEY_KINDS:
        return True
    lowered = text.lower()
    return any(secret in lowered for secret in SECRET_TEXTS)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with the value of every key that names a secret (password,
    token, api_key, ... by the words of the key, see SECRET_WORDS; anywhere in nested
    mappings and lists) replaced."""
    if _depth > 50:
        return REDACTED
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if is_secret(key):
                out[storable(str(key))] = REDACTED
            else:
                out[storable(str(key))] = redact(item, _depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(item, _depth + 1) for item in value]
    if isinstance(value, str):
        value = storable(value)
        if len(value) > MAX_TEXT:
            return value[:MAX_TEXT] + f"... ({len(value)} characters)"
    return value


def storable(text: str) -> str:
    """``text`` as both databases can store it, in a text column or a JSON one: a NUL
    (which PostgreSQL refuses) as ``\\x00`` and a lone surrogate (not UTF-8: neither
    database takes it) as ``\\udXXX``. An entry is about what someone sent, so what
    cannot be kept is shown, not dropped, and the entry is never lost for it. Backslashes
    are kept as they are (``DOMAIN\\user``), so a NUL and the four characters ``\\x00``
    read alike: the log shows what was asked; it is not a means to replay it."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def entry(
    *,
    user: str | None,
    action: str,
    decision: str,
    resource: str | None = None,
    jid: str | None = None,
    outcome: Any = None,
    arguments: Any = None,
    master_id: str | None = None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """One entry's columns, checked, shortened and redacted, ready to be journalled and
    inserted (:meth:`JobStore.record_audit`)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be allow or deny, not {decision!r}")
    return {
        "at": at or dt.datetime.now(dt.timezone.utc),
        "user": _short(user, 255),
        "action": storable(str(action))[:32],
        "resource": _short(resource, 255),
        "jid": _short(jid, 64),
        "decision": decision,
        "outcome": encoding.to_jsonable(redact(outcome)) if outcome is not None else None,
        "arguments": encoding.to_jsonable(redact(arguments)) if arguments is not None else None,
        "master_id": _short(master_id, 255),
        "entry_id": uuid.uuid4().hex,
    }


def record(conn: Connection, **fields: Any) -> int:
    """Append one entry at once; returns its id. (The runners and the API journal their
    entries instead, through :meth:`JobStore.record_audit`, so that they survive a
    database that is locked or away.)"""
    result = conn.execute(insert(audit_log).values(entry(**fields)).returning(audit_log.c.id))
    return int(result.scalar_one())


def _short(value: object, size: int) -> str | None:
    if value is None:
        return None
    return storable(str(value))[:size]


def _decode(cursor: str) -> tuple[dt.datetime, int]:
    moment, key = decode_cursor(cursor)
    try:
        return moment, int(key)
    except ValueError as exc:
        raise QueryError(f"cursor {cursor!r} is not one this listing handed out") from exc


def list_entries(
    conn: Connection,
    *,
    user: str | None = None,
    action: str | None = None,
    decision: str | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    limit: object = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """``{"entries": [...], "next": cursor or None}``, newest first."""
    size = _limit(limit)
    a = audit_log.c
    query = select(audit_log)
    if user is not None:
        query = query.where(a.user == _text("user", user))
    if action is not None:
        query = query.where(a.action == _text("action", action))
    if decision is not None:
        if decision not in DECISIONS:
            raise QueryError(f"decision must be allow or deny, not {decision!r}")
        query = query.where(a.decision == decision)
    if start is not None:
        query = query.where(a.at >= _aware(start, "start"))
    if end is not None:
        query = query.where(a.at < _aware(end, "end"))
    if cursor:
        after_at, after_id = _decode(cursor)
        query = query.where(or_(a.at < after_at, and_(a.at == after_at, a.id < after_id)))
    rows = conn.execute(query.order_by(a.at.desc(), a.id.desc()).limit(size + 1)).all()
    entries = [
        {
            "id": row.id,
            "at": row.at.isoformat(),
            "user": row.user,
            "action": row.action,
            "resource": row.resource,
            "jid": row.jid,
            "decision": row.decision,
            "outcome": row.outcome,
            "arguments": row.arguments,
            "master_id": row.master_id,
        }
        for row in rows[:size]
    ]
    last = rows[size - 1] if len(rows) > size else None
    return {"entries": entries, "next": encode_cursor(last.at, str(last.id)) if last else None}


def _text(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise QueryError(f"{name} must be text, not {value!r}")
    text = str(value)
    if len(text) > MAX_TEXT:
        raise QueryError(f"{name} is {len(text)} characters long; at most {MAX_TEXT}")
    return text
