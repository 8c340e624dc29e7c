"""halite's settings, read from the ``halite:`` key of the master config.

.. code-block:: yaml

    halite:
      db_url: sqlite:////var/cache/salt/master/halite.db  # default: halite.db in cachedir
      flush_interval: 0.1            # seconds writes wait to be committed together; 0: at once
      batch_size: 5000               # commit sooner once this many writes are waiting
      commit_lanes: 2                # PostgreSQL: transactions a batch is committed in at once
      journal_dir: /var/cache/salt/master/halite/journal  # default: halite/journal in cachedir
      jid_dir: /var/cache/salt/master/halite/jids   # jids handed out (files, as local_cache)
      max_return_bytes: 4194304      # larger returns are stored truncated, with a marker
      spool_dir: /var/cache/salt/master/halite/spool    # default: halite/spool in cachedir
      spool_replay_interval: 5       # seconds between attempts to replay spooled writes
      spool_max_bytes: 1073741824    # the spool's bound; beyond it new writes are dropped, logged
      sqlite_busy_timeout: 30        # seconds a SQLite writer waits for the write lock
      read_timeout: 2                # seconds Salt's job cache reads wait for the database
      request_timeout: 30            # seconds halite's runners and API wait for it
      keep_running_seconds: 604800   # a running job idle this long is cleaned all the same
      clean_batch_size: 500          # jobs deleted per transaction by clean_old_jobs
      partition_interval: day        # PostgreSQL: each partition holds a day, week or month
      partitions_ahead: 2            # PostgreSQL: partitions created beyond the current one
      read_db_url: postgresql+psycopg://halite@replica/halite  # default: none (reads primary)
      read_max_lag: 10               # seconds a replica may be behind before reads leave it
      system_functions:              # bookkeeping jobs, hidden from listings; replaces
        - saltutil.find_job          # the default, SYSTEM_FUNCTIONS below ([]: none)
        - runner.jobs.*

``db_url`` must be an SQLAlchemy URL of SQLite or PostgreSQL. Numbers must be finite
(``.inf`` and ``.nan`` are refused), seconds at most 1,000,000, counts and sizes whole
numbers; a wrong or unknown option is a :class:`ConfigError` that names it. The engine's options
(:class:`EngineOptions`) and its ``http:`` options (:class:`HttpOptions`) are checked here
too, with errors of the same form: ``<section>:<option> must be ..., not <value>``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from halite_core.errors import ConfigError

__all__ = [
    "ConfigError",
    "EngineOptions",
    "HttpOptions",
    "Settings",
    "flag_option",
    "number_option",
]

# Every option of the halite: section; roles and users are the permissions' (permissions.py).
HALITE_OPTIONS = (
    "db_url", "flush_interval", "batch_size", "journal_dir", "jid_dir", "max_return_bytes",
    "spool_dir", "spool_replay_interval", "spool_max_bytes", "sqlite_busy_timeout",
    "read_timeout", "request_timeout", "keep_running_seconds", "clean_batch_size",
    "partition_interval", "partitions_ahead", "read_db_url", "read_max_lag",
    "system_functions", "commit_lanes", "roles", "users",
)  # fmt: skip

DEFAULTS: dict[str, Any] = {
    "flush_interval": 0.1,
    "batch_size": 5000,
    "max_return_bytes": 4 * 1024 * 1024,
    "spool_replay_interval": 5.0,
    "sqlite_busy_timeout": 30.0,
    "clean_batch_size": 500,
    "spool_max_bytes": 1024 * 1024 * 1024,
    "read_timeout": 2.0,
    "request_timeout": 30.0,
    "keep_running_seconds": 7 * 86400,
    "partition_interval": "day",
    "partitions_ahead": 2,
    "commit_lanes": 2,
    "read_max_lag": 10.0,
}
PARTITION_INTERVALS = ("day", "week", "month")
# The databases halite's schema and queries are written for (db.py refuses others too).
DIALECTS = ("sqlite", "postgresql")
# Seconds are waited on with threading (whose bound is some 292 years) and SQLite's busy
# timeout (milliseconds in a C int): a million seconds is far beyond any sensible setting.
MAX_SECONDS = 1_000_000
MAX_COUNT = 2**63 - 1  # what PostgreSQL binds as a bigint (LIMIT, sizes)
FLAGS = {"true": True, "yes": True, "on": True, "1": True,
         "false": False, "no": False, "off": False, "0": False}  # fmt: skip
# Bookkeeping: jobs that only read what Salt or halite already know, made by people and
# consoles reading the history (SaltGUI polls jobs.*, manage.versions and the wheel's key
# and config reads through salt-api) and by Salt itself. Listed, they would bury the jobs
# they read about. Minion jobs such consoles publish (grains.items, the test.version of
# manage.versions, the test.ping of manage.status) stay listed: the same calls are also
# real work. halite.kill is an act, not a read.
SYSTEM_FUNCTIONS = (
    "saltutil.find_job",
    "saltutil.running",
    "saltutil.is_running",
    "runner.halite.jobs",
    "runner.halite.job",
    "runner.halite.activity",
    "runner.halite.timeline",
    "runner.halite.audit",
    "runner.halite.minions",
    "runner.halite.minion",
    "runner.halite.states",
    "runner.halite.state",
    "runner.jobs.*",
    "runner.manage.versions",
    "runner.manage.status",
    "runner.cache.grains",
    "runner.cache.pillar",
    "runner.state.orchestrate_show_sls",
    "wheel.key.list_all",
    "wheel.key.list",
    "wheel.key.finger",
    "wheel.config.values",
    "wheel.minions.connected",
)


@dataclass(frozen=True)
class Settings:
    db_url: str
    spool_dir: str
    master_id: str | None = None
    jid_utc: bool = True
    keep_jobs_seconds: int = 86400
    journal_dir: str = ""
    jid_dir: str = ""
    flush_interval: float = DEFAULTS["flush_interval"]
    batch_size: int = DEFAULTS["batch_size"]
    max_return_bytes: int = DEFAULTS["max_return_bytes"]
    spool_replay_interval: float = DEFAULTS["spool_replay_interval"]
    sqlite_busy_timeout: float = DEFAULTS["sqlite_busy_timeout"]
    clean_batch_size: int = DEFAULTS["clean_batch_size"]
    spool_max_bytes: int = DEFAULTS["spool_max_bytes"]
    read_timeout: float = DEFAULTS["read_timeout"]
    request_timeout: float = DEFAULTS["request_timeout"]
    keep_running_seconds: int = DEFAULTS["keep_running_seconds"]
    partition_interval: str = DEFAULTS["partition_interval"]
    partitions_ahead: int = DEFAULTS["partitions_ahead"]
    commit_lanes: int = DEFAULTS["commit_lanes"]
    # A streaming replica for the runners', the API's and the page's reads (not for Salt's
    # job cache reads), left while it is more than read_max_lag seconds behind.
    read_db_url: str | None = None
    read_max_lag: float = DEFAULTS["read_max_lag"]
    system_functions: tuple[str, ...] = SYSTEM_FUNCTIONS
    # The halite engine is configured: its process commits every journal of this master,
    # and Salt's worker processes only append (they commit themselves while it is down).
    engine_commits: bool = False

    @classmethod
    def from_opts(cls, opts: Mapping[str, Any], jid_utc: bool = True) -> Settings:
        """Build settings from a Salt master's options.

        ``jid_utc`` says whether this Salt writes JIDs in UTC (the loader module works
        that out from the Salt version and ``utc_jid``); otherwise they are in local time.
        """
        section = opts.get("halite") or {}
        if not isinstance(section, Mapping):
            raise ConfigError("the 'halite' option must be a mapping")
        unknown = sorted(str(key) for key in section if key not in HALITE_OPTIONS)
        if unknown:
            # A misspelt option would otherwise be ignored, and its default used silently.
            raise ConfigError(
                f"halite: unknown option {unknown[0]!r}; known: {', '.join(HALITE_OPTIONS)}"
            )
        cachedir = str(opts.get("cachedir") or os.getcwd())
        default_url = "sqlite:///" + os.path.join(cachedir, "halite.db")
        db_url = _db_url(section.get("db_url") or default_url)
        return cls(
            db_url=db_url,
            spool_dir=_directory(section, "spool_dir", cachedir, "spool"),
            journal_dir=_directory(section, "journal_dir", cachedir, "journal"),
            jid_dir=_directory(section, "jid_dir", cachedir, "jids"),
            master_id=None if opts.get("id") is None else str(opts["id"]),
            jid_utc=jid_utc,
            keep_jobs_seconds=_keep_jobs_seconds(opts),
            flush_interval=_positive(section, "flush_interval", float, zero=True),
            batch_size=_positive(section, "batch_size", int),
            max_return_bytes=_positive(section, "max_return_bytes", int),
            spool_replay_interval=_positive(section, "spool_replay_interval", float, zero=True),
            sqlite_busy_timeout=_positive(section, "sqlite_busy_timeout", float),
            clean_batch_size=_positive(section, "clean_batch_size", int),
            spool_max_bytes=_positive(section, "spool_max_bytes", int),
            read_timeout=_positive(section, "read_timeout", float),
            request_timeout=_positive(section, "request_timeout", float),
            keep_running_seconds=_positive(section, "keep_running_seconds", int, zero=True),
            partition_interval=_choice(section, "partition_interval", PARTITION_INTERVALS),
            partitions_ahead=_positive(section, "partitions_ahead", int),
            commit_lanes=_commit_lanes(section),
            read_db_url=_read_db_url(section, db_url),
            read_max_lag=_positive(section, "read_max_lag", float),
            system_functions=_patterns(section, "system_functions", SYSTEM_FUNCTIONS),
            engine_commits=engine_configured(opts),
        )

    def is_system(self, function: object) -> bool:
        """Whether a job running ``function`` is bookkeeping (``system_functions``, by default
        :data:`SYSTEM_FUNCTIONS`), which listings, activity and the timeline leave out."""
        return isinstance(function, str) and _matcher(self.system_functions)(function) is not None


@functools.lru_cache(maxsize=16)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """One compiled expression for all the globs (case-sensitive, as fnmatchcase): it runs
    for every publish, and the default list has some twenty."""
    if not patterns:
        return lambda _: None
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns)).match


def jid_utc_for(opts: Mapping[str, Any], salt_defaults: Mapping[str, Any]) -> bool:
    """Whether this Salt writes JIDs in UTC: Salt 3008 dropped ``utc_jid`` (and so from its
    default options) and always does; older Salt does only when ``utc_jid`` is set."""
    return bool(opts.get("utc_jid")) or "utc_jid" not in salt_defaults


def _keep_jobs_seconds(opts: Mapping[str, Any]) -> int:
    value = opts.get("keep_jobs_seconds", 86400)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"keep_jobs_seconds must be a number of seconds, not {value!r}") from exc


def _patterns(section: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = section.get(key, default)
    # A mapping or a string is iterable too, and would be taken key by key or letter by
    # letter; null is most likely a list left empty by mistake: [] says "none".
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            f"halite:{key} must be a list of function names or globs ([] for none), not {value!r}"
        )
    return tuple(value)


def _url(key: str, value: object, hint: str) -> URL:
    """``value`` parsed as a database URL, or a ConfigError naming ``halite:<key>``; the
    text itself is never shown: it may hold a password."""
    if not isinstance(value, str):
        raise ConfigError(f"halite:{key} is not a database URL ({hint})")
    try:
        return make_url(value)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"halite:{key} is not a database URL ({hint})") from exc


def _db_url(value: object) -> str:
    """The URL as given, once SQLAlchemy can parse it and it names a supported database;
    refused here, it would fail later, on the first write, as a traceback."""
    hint = "e.g. sqlite:////var/cache/salt/master/halite.db or postgresql+psycopg://user@host/db"
    backend = _url("db_url", value, hint).get_backend_name()
    if backend not in DIALECTS:
        raise ConfigError(
            f"halite:db_url uses {backend}; halite supports {' and '.join(DIALECTS)} ({hint})"
        )
    return str(value)


def _choice(section: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = section.get(key, DEFAULTS[key])
    if value not in choices:
        raise ConfigError(f"halite:{key} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _read_db_url(section: Mapping[str, Any], db_url: str) -> str | None:
    """A replica's URL: PostgreSQL, with a PostgreSQL primary (a replica of SQLite is no
    such thing); None when not set."""
    value = section.get("read_db_url")
    if value is None or value == "":
        return None
    hint = "e.g. postgresql+psycopg://halite@replica/halite"
    url = _url("read_db_url", value, hint)
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"halite:read_db_url uses {url.get_backend_name()}: a read replica is a PostgreSQL"
            f" streaming replica ({hint})"
        )
    if make_url(db_url).get_backend_name() != "postgresql":
        raise ConfigError(
            "halite:read_db_url is for a PostgreSQL db_url: its replica serves the reads"
        )
    return str(value)


def _directory(section: Mapping[str, Any], key: str, cachedir: str, name: str) -> str:
    value = section.get(key) or os.path.join(cachedir, "halite", name)
    if not isinstance(value, str):
        raise ConfigError(f"halite:{key} must be a directory path, not {value!r}")
    return value


MAX_COMMIT_LANES = 16


def _commit_lanes(section: Mapping[str, Any]) -> int:
    lanes: int = _positive(section, "commit_lanes", int)
    if lanes > MAX_COMMIT_LANES:
        # Each lane holds a connection and a transaction of its own for every batch.
        raise ConfigError(f"halite:commit_lanes must be at most {MAX_COMMIT_LANES}, not {lanes}")
    return lanes


def _positive(section: Mapping[str, Any], key: str, kind: type, zero: bool = False) -> Any:
    return number_option(f"halite:{key}", section.get(key, DEFAULTS[key]), kind, zero)


def number_option(name: str, value: object, kind: type, zero: bool = False) -> Any:
    """``value`` as a finite ``kind`` (float: seconds; int: a count or a size) that is > 0
    (>= 0 with ``zero``), or a :class:`ConfigError` naming the option ``name``. Numbers may
    be written as text (``"20"``); true/false may not stand for 1/0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError as exc:  # an int past float's range
        raise ConfigError(f"{name} must be a finite number, not {value!r}") from exc
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, not {value!r}") from exc
    if not math.isfinite(number):
        # inf would overflow every wait; nan passes every comparison below.
        raise ConfigError(f"{name} must be a finite number, not {value!r}")
    if number < 0 or (number == 0 and not zero):
        raise ConfigError(f"{name} must be {'>= 0' if zero else '> 0'}, not {value!r}")
    if kind is int:
        if not number.is_integer():
            raise ConfigError(f"{name} must be a whole number, not {value!r}")
        count = value if isinstance(value, int) else int(number)
        if count > MAX_COUNT:
            raise ConfigError(f"{name} must be at most {MAX_COUNT}, not {value!r}")
        return count
    if number > MAX_SECONDS:
        raise ConfigError(f"{name} must be at most {MAX_SECONDS} seconds, not {value!r}")
    return number


def flag_option(name: str, value: object) -> bool:
    """A yes/no option: a boolean, 0/1, or true/false, yes/no, on/off as text (any case).
    A quoted ``"false"`` in YAML is text, which bool() would take for True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in FLAGS:
        return FLAGS[value.strip().lower()]
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def engine_configured(opts: Mapping[str, Any]) -> bool:
    """Whether the master's ``engines`` list starts the halite engine."""
    return engine_config(opts) is not None


def engine_config(opts: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The halite engine's options in the master's ``engines`` list (``{}`` when it is
    listed without any), or None when the list does not start it."""
    engines = opts.get("engines") or []
    if not isinstance(engines, (list, tuple)):
        return None
    for engine in engines:
        if engine == "halite":
            return {}
        if not isinstance(engine, Mapping):
            continue
        if "halite" in engine:
            options = engine["halite"]
            return options if isinstance(options, Mapping) else {}
        for options in engine.values():
            if isinstance(options, Mapping) and options.get("engine_module") == "halite":
                return options
    return None


# ---------------------------------------------------------------------- the engine
# The engine's own options (engines: [{halite: {...}}]); ``http`` is the HTTP API's.
ENGINE_OPTIONS = ("timeout", "timeout_grace", "flush_interval", "batch_size", "write_returns",
                  "http")  # fmt: skip


@dataclass(frozen=True)
class EngineOptions:
    """The engine's options (``engines: [{halite: {...}}]``), with their defaults."""

    timeout: float = 5.0  # seconds a job runs before its pending minions are asked
    timeout_grace: float = 10.0  # seconds to wait for saltutil.find_job answers
    flush_interval: float = 0.25  # longest delay before a change is handed to the committer
    batch_size: int = 1000  # write sooner once this many changes are waiting
    write_returns: bool = False  # also index returns (when halite is not the job cache)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> EngineOptions:
        """``config`` from the engine's entry, ``defaults`` for keys it leaves out; a
        :class:`ConfigError` (a ``ValueError``) names an option that is not usable, or
        one the engine does not know."""
        unknown = sorted(str(key) for key in config if key not in ENGINE_OPTIONS)
        if unknown:
            raise ConfigError(
                f"halite engine: unknown option {unknown[0]!r}; known: {', '.join(ENGINE_OPTIONS)}"
            )
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            default: Any = spec.default
            raw = config.get(spec.name, defaults.get(spec.name, default))
            name = f"halite engine option {spec.name}"
            if spec.name == "write_returns":
                values[spec.name] = flag_option(name, raw)
                continue
            values[spec.name] = number_option(name, raw, type(default))
        return cls(**values)


# ---------------------------------------------------------------------- the HTTP API
REQUEST_TIMEOUT = 30.0
HTTP_OPTIONS = ("host", "port", "eauth", "certfile", "keyfile", "request_timeout",
                "proxy_headers", "metrics_only", "metrics_token")  # fmt: skip
# The headers a reverse proxy may be trusted to set, as proxy_headers names them.
PROXY_HEADERS = ("x-forwarded-for", "x-real-ip")


@dataclass(frozen=True)
class HttpOptions:
    """The engine's ``http:`` options, checked: :meth:`from_config` raises ConfigError
    naming the option, so that a bad one stops the engine at start with a clear error."""

    host: str = "127.0.0.1"
    port: int = 8765
    eauth: str = "pam"
    certfile: str | None = None
    keyfile: str | None = None
    request_timeout: float = REQUEST_TIMEOUT
    proxy_headers: str | None = None  # the header the proxy sets: one of PROXY_HEADERS
    metrics_only: bool = False  # serve /metrics alone: no API, no page
    # /metrics asks for this bearer token; without one it answers loopback clients only
    metrics_token: str | None = field(default=None, repr=False)

    @property
    def ssl(self) -> dict[str, str] | None:
        if self.certfile is None or self.keyfile is None:
            return None
        return {"certfile": self.certfile, "keyfile": self.keyfile}

    @classmethod
    def from_config(cls, config: object) -> HttpOptions:
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"the engine's http must be a mapping of options ({', '.join(HTTP_OPTIONS)}),"
                f" not {config!r}"
            )
        unknown = sorted(str(key) for key in config if key not in HTTP_OPTIONS)
        if unknown:
            raise ConfigError(
                f"http: unknown option {unknown[0]!r}; known: {', '.join(HTTP_OPTIONS)}"
            )
        certfile = _optional_text(config, "certfile")
        keyfile = _optional_text(config, "keyfile")
        if (certfile is None) != (keyfile is None):
            given, missing = ("certfile", "keyfile") if keyfile is None else ("keyfile", "certfile")
            raise ConfigError(f"http: {given} without {missing}: HTTPS needs both")
        return cls(
            host=_text_option(config, "host", cls.host, "a host name or an address"),
            port=_port(config.get("port", cls.port)),
            eauth=_text_option(config, "eauth", cls.eauth, "the name of an external auth"),
            certfile=certfile,
            keyfile=keyfile,
            request_timeout=_seconds(config, "request_timeout", cls.request_timeout),
            proxy_headers=proxy_header(config.get("proxy_headers")),
            metrics_only=flag_option("http:metrics_only", config.get("metrics_only", False)),
            metrics_token=_token(config.get("metrics_token")),
        )


def _text_option(config: Mapping[str, Any], key: str, default: str, what: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"http:{key} must be {what}, not {value!r}")
    return value


def _token(value: object) -> str | None:
    """``metrics_token``: printable text without spaces (it travels in a header), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
        # The value is a secret: the message never repeats it.
        raise ConfigError("http:metrics_token must be a text without spaces (a bearer token)")
    return value


def _optional_text(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"http:{key} must be the path of a PEM file, not {value!r}")
    return value


def _port(value: object) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not 1 <= number <= 65535:
        raise ConfigError(f"http:port must be a number from 1 to 65535, not {value!r}")
    return number


def _seconds(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not number > 0 or math.isinf(number):
        raise ConfigError(f"http:{key} must be a number of seconds > 0, not {value!r}")
    return number


def proxy_header(value: object) -> str | None:
    """The header a reverse proxy sets, or None (off). ``true`` is refused: which header
    the proxy sets decides which is safe to read (a proxy that appends X-Forwarded-For
    passes the client's own X-Real-Ip on)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in PROXY_HEADERS:
        return value.strip().lower()
    raise ConfigError(
        "http:proxy_headers must be false or the header the proxy sets, x-forwarded-for"
        " (the address it appends) or x-real-ip (the one it sets, replacing the"
        f" client's), not {value!r}"
    )
