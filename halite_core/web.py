"""The HTTP API and the Jobs page, served by the halite engine (Tornado, which Salt ships).

Every request is answered by :class:`~halite_core.service.Service`, the same checked and
audited logic as the runners. A person logs in with Salt's external auth (the engine
passes an ``authenticate(username, password, eauth)`` that asks Salt) and gets a session
token; requests carry it in the ``X-Auth-Token`` header, never in a cookie, so a page on
another site cannot make a browser send it (a kill cannot be forged). Errors are JSON:
400 for a bad argument, 401 without a session, 403 naming the missing permission, 404 for
an unknown job, 429 (with ``Retry-After``) for a login that must wait (:class:`LoginThrottle`)
or a kill or live listing past its limits, and 503 when the database (or, for a kill or a
live listing, the minions) did not answer within the request's bound. A request body over
64 KiB is refused: the server closes the connection.

Work that waits happens on thread pools, never on the event loop: logins on their own
(Salt's external auth; those whose user name or address failed lately on others again),
kills and live listings on theirs (they wait for the minions), and everything else on the
main pool, so none of them can hold up a plain read. Each pool's calls are bounded
(:class:`Slots`), in all and per user (or per user name and address), and a call keeps its
slot until its thread is done with it, not only until its request was answered 503.

``GET /api/jobs/stream`` is Server-Sent Events: ``new``, ``return`` and ``complete`` as the
engine sees them on the bus, filtered by what the user may view.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import secrets
import ssl as ssl_module
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy.exc
import tornado.httpserver
import tornado.httputil
import tornado.iostream
import tornado.web

from halite_core import permissions
from halite_core.config import ConfigError
from halite_core.jobcache import function_name
from halite_core.openapi import SPEC
from halite_core.permissions import Denied
from halite_core.queries import QueryError, UnknownJob
from halite_core.service import Service, flag_arg

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
SESSION_SECONDS = 12 * 3600
KEEPALIVE_SECONDS = 15.0
# Logins wait for Salt's external auth, which makes every failure as slow as the slowest
# one yet (PAM: about 2 s). They get threads of their own, so that failing logins cannot
# hold up the API, in two lanes. A login whose user name and address did not fail within
# the throttle's window, and have no other login waiting, waits on everyone's lane
# (LOGIN_THREADS, LOGINS_WAITING in all); any other (a failure behind it, or a second at
# once: its first may be failing) waits on the suspect lane (SUSPECT_*), so that a flood,
# from however many addresses, fills that lane only. A name or an address has at most
# LOGINS_PER_KEY logins waiting (one on everyone's lane, the rest on the suspect one);
# past these bounds a login is answered 429 at once.
LOGIN_THREADS = 4
LOGINS_WAITING = 16
LOGINS_PER_KEY = 2
SUSPECT_THREADS = 2
SUSPECT_WAITING = 8
# Live listings ask every minion and wait for the slowest (gather_job_timeout for one that
# is down): their own threads, one per user at a time, LIVE_CALLS in all (running or
# waiting for a thread); past that, 429. Kills wait for the minions they signal: their
# own threads too, KILLS_PER_USER per user, KILL_CALLS in all.
LIVE_THREADS = 2
LIVE_CALLS = 4
LIVE_PER_USER = 1
KILL_THREADS = 4
KILL_CALLS = 8
KILLS_PER_USER = 4
API_THREADS = 4
# How long a request waits for the database before it is answered 503; kills and live
# listings also wait for the minions (salt_timeout) on top of it.
REQUEST_TIMEOUT = 30.0
SALT_TIMEOUT = 10.0
RETRY_AFTER = 5  # seconds, in a 503's Retry-After

Authenticate = Callable[[str, str, str], bool]
LiveLister = Callable[[object, "tuple[str, ...] | None"], Mapping[str, Any]]
T = TypeVar("T")

HTTP_OPTIONS = ("host", "port", "eauth", "certfile", "keyfile", "request_timeout",
                "proxy_headers")  # fmt: skip
# The headers a reverse proxy may be trusted to set, as proxy_headers names them.
PROXY_HEADERS = ("x-forwarded-for", "x-real-ip")


class Unavailable(Exception):
    """The database (or the minions) did not answer within the request's bound: 503.
    ``started``: whether the call had a thread by then (one that had not was dropped: it
    is not carried out)."""

    def __init__(self, message: str, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


class Busy(Exception):
    """Too many calls of this kind (in all, or of this user) are running: 429."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
            proxy_headers=_proxy_header(config.get("proxy_headers")),
        )


def _text_option(config: Mapping[str, Any], key: str, default: str, what: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"http:{key} must be {what}, not {value!r}")
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


def _proxy_header(value: object) -> str | None:
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


def client_address(
    remote_ip: str | None, headers: tornado.httputil.HTTPHeaders, header: str | None
) -> str | None:
    """The client's address: the connection's, or behind a reverse proxy the one the
    proxy put in ``header``. X-Forwarded-For: the right-most address (the one the proxy
    appended; what is left of it came from the client, who may write anything there);
    X-Real-Ip: its value (the proxy replaces the client's). A header missing or not an IP
    address leaves the connection's (the proxy's) address."""
    if header is None:
        return remote_ip
    values = headers.get_list(header)
    if header == "x-forwarded-for":
        given = [part.strip() for value in values for part in value.split(",")]
    else:
        given = [value.strip() for value in values]
    try:
        return str(ipaddress.ip_address(given[-1])) if given else remote_ip
    except ValueError:
        return remote_ip


@dataclass
class _Failures:
    count: int  # failed logins (an address: of distinct names, then all), each within the window
    last: float  # when the last one failed
    locked_until: float = 0.0
    # An address's: the user names that failed there, as hashes (a collision only makes
    # the lock come one name later), so that 10,000 addresses remembered stay small.
    names: set[int] = field(default_factory=set)


class LoginThrottle:
    """Failed logins, per user name and per client address, with exponential back-off.

    A user name (``user:<name>``) that failed ``failures`` times, each within ``window``
    seconds of the one before, from anywhere, is locked for ``base_delay`` seconds, and
    each further failure doubles that, up to ``max_delay``. An address (``address:<ip>``;
    an IPv6 address by its /64, which one host is given whole) is locked the same way once
    its failures spread over ``address_names`` user names: one user mistyping a password
    from 127.0.0.1, where an SSH tunnel or a local proxy puts everyone, locks that user
    only, while a guesser going through a list of names locks the address. A login for a
    locked name or from a locked address is refused without asking the external auth.

    The price: anyone can slow down a named user's logins by failing them on purpose (the
    lock is the user's whatever the address), as with any per-account lock-out; the
    back-off caps it at ``max_delay`` per failure. A right password clears its user name
    (not its address: one valid account must not reset a guesser's count). At most
    ``max_keys`` keys are remembered, the least recently failed forgotten first, so a
    flood of made-up names cannot fill the memory. Used from the event loop's thread
    only."""

    FAILURES = 5
    ADDRESS_NAMES = 20

    def __init__(
        self,
        failures: int = FAILURES,
        window: float = 900.0,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_keys: int = 10_000,
        address_names: int = ADDRESS_NAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_keys = max_keys
        self.address_names = address_names
        self.clock = clock
        self._failed: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def keys(user: str, address: str | None) -> tuple[str, str]:
        """``(user key, address key)``. The name normalised (NFKC, trimmed, casefolded): an
        external auth that ignores case or spacing (LDAP) must not give each spelling of
        a name its own count; cut short, so that a key's size is bounded."""
        name = unicodedata.normalize("NFKC", user).strip().casefold()[:256]
        return f"user:{name}", f"address:{_address_key(address)}"

    def __len__(self) -> int:
        return len(self._failed)

    def wait(self, keys: Iterable[str]) -> float:
        """Seconds until a login for these keys may ask the external auth (0: now)."""
        now = self.clock()
        found = (self._failed.get(key) for key in keys)
        return max([0.0, *(f.locked_until - now for f in found if f is not None)])

    def suspect(self, keys: Iterable[str]) -> bool:
        """Whether a login for these keys failed within the window (its name, or from its
        address): such a login waits on the suspect threads, not on everyone's."""
        now = self.clock()
        found = (self._failed.get(key) for key in keys)
        return any(f is not None and now - f.last <= self.window for f in found)

    def failed(self, keys: tuple[str, str]) -> float:
        """Count a failed login for ``keys`` (:meth:`keys`); returns the longest lock it
        started (0: none)."""
        user_key, address_key = keys
        now = self.clock()
        locked = max(self._fail(user_key, now, None), self._fail(address_key, now, user_key))
        while len(self._failed) > self.max_keys:
            self._failed.popitem(last=False)
        self.prune()
        return locked

    def _fail(self, key: str, now: float, name: str | None) -> float:
        """Count one failure of ``key`` (an address's: of the user name ``name``); returns
        the lock it started. An address counts each name once until ``address_names``
        names have failed there, then every failure: one name failing again and again
        locks that name alone."""
        entry = self._failed.pop(key, None)
        if entry is None or now - entry.last > self.window:
            entry = _Failures(count=0, last=now)
        threshold = self.failures
        if name is None:
            entry.count += 1
        else:
            threshold = self.address_names
            spread = len(entry.names) >= self.address_names
            if spread or hash(name) not in entry.names:
                entry.count += 1
                if not spread:  # bounded: the names up to the threshold, no more
                    entry.names.add(hash(name))
        entry.last = now
        self._failed[key] = entry  # now the most recent
        if entry.count < threshold:
            return 0.0
        doublings = min(entry.count - threshold, 32)
        delay = min(self.base_delay * 2**doublings, self.max_delay)
        entry.locked_until = now + delay
        return delay

    def succeeded(self, user_key: str) -> None:
        self._failed.pop(user_key, None)

    def prune(self) -> None:
        """Forget the keys that are neither locked nor failed within the window."""
        now = self.clock()
        while self._failed:
            key, entry = next(iter(self._failed.items()))
            if now - entry.last <= self.window or entry.locked_until > now:
                break
            del self._failed[key]


def _address_key(address: str | None) -> str | None:
    """An address as the throttle counts it: an IPv6 address by its /64 (a host is given
    a whole /64, and could otherwise fail from a new address each time)."""
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is 192.0.2.1
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class Slots:
    """Calls of one kind on a pool of threads of their own, bounded: at most ``total``
    running or waiting for a thread, and ``per_key`` for any one key (a user; a user name
    and an address). A slot is given back when its call's thread is done with it (or the
    call was dropped before it started), not when its request was answered 503: a call
    still waiting for a minion, or for the external auth, keeps its slot, so that asking
    again cannot pile calls up behind it. Counted on the event loop's thread only."""

    def __init__(
        self, name: str, threads: int, total: int, per_key: int, busy: str, full: str
    ) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=f"halite-{name}")
        self.total = total
        self.per_key = per_key
        self.busy_message = busy  # a key has per_key calls running
        self.full_message = full  # total calls are running
        self.in_use = 0
        self._by_key: dict[str, int] = {}

    def busy(self, keys: Iterable[str]) -> bool:
        """Whether one of ``keys`` has ``per_key`` calls running or waiting."""
        return any(self._by_key.get(key, 0) >= self.per_key for key in keys)

    def refusal(self, keys: Iterable[str]) -> str | None:
        """Why a call for ``keys`` cannot have a slot now, or None."""
        if self.busy(keys):
            return self.busy_message
        if self.in_use >= self.total:
            return self.full_message
        return None

    def take(self, keys: Iterable[str]) -> Callable[[], None]:
        """Take a slot; returns what gives it back (once, however often it is called)."""
        held = tuple(keys)
        self.in_use += 1
        for key in held:
            self._by_key[key] = self._by_key.get(key, 0) + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            self.in_use -= 1
            for key in held:
                left = self._by_key.get(key, 0) - 1
                if left > 0:
                    self._by_key[key] = left
                else:
                    self._by_key.pop(key, None)

        return give_back


class Sessions:
    """Tokens handed out at login, in the engine's memory (a restart logs everyone out)."""

    def __init__(self, ttl: float = SESSION_SECONDS) -> None:
        self.ttl = ttl
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (user, time.monotonic() + self.ttl)
        return token

    def user(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            found = self._tokens.get(token)
            if found is None:
                return None
            if found[1] < time.monotonic():
                del self._tokens[token]
                return None
            return found[0]

    def close(self, token: str | None) -> None:
        with self._lock:
            self._tokens.pop(token or "", None)


class Hub:
    """Fans the engine's job events out to the open streams. ``publish`` may be called from
    any thread; each stream filters by what its user may view."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, event: Mapping[str, Any]) -> None:
        loop = self.loop
        if loop is None or not self._queues:
            return
        loop.call_soon_threadsafe(self._deliver, dict(event))

    def _deliver(self, event: dict[str, Any]) -> None:
        for queue in list(self._queues):
            if queue.qsize() < 1000:  # a stalled reader loses events, not the engine
                queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(queue)


def bus_event(tag: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stream's view of a bus event: ``new`` and ``return`` of jobs, else None."""
    parts = tag.split("/") if isinstance(tag, str) else []
    if len(parts) < 4 or parts[0] != "salt" or parts[1] != "job" or not isinstance(data, Mapping):
        return None
    jid, what = parts[2], parts[3]
    if what == "new" and len(parts) == 4:
        tgt = data.get("tgt")
        return {
            "type": "new", "jid": jid, "function": data.get("fun"), "user": data.get("user"),
            "target": ",".join(map(str, tgt)) if isinstance(tgt, list) else tgt,
            "target_type": data.get("tgt_type"), "minions": len(data.get("minions") or []),
        }  # fmt: skip
    if what == "ret" and len(parts) == 5:
        return {
            "type": "return", "jid": jid, "minion": parts[4], "function": data.get("fun"),
            "success": data.get("success"), "retcode": data.get("retcode"),
        }  # fmt: skip
    return None


class Base(tornado.web.RequestHandler):
    def initialize(self, app: WebApp) -> None:
        self.web = app

    def prepare(self) -> None:
        _use_client_address(self.request, self.web.proxy_header)

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def write_json(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a stack trace: the reason only.
        reason = self._reason if status_code != 500 else "internal error; see the master's log"
        self.finish(json.dumps({"error": reason}))

    def token(self) -> str | None:
        header = self.request.headers.get("X-Auth-Token")
        if header:
            return header
        auth = self.request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def user(self) -> str | None:
        return self.web.sessions.user(self.token())

    def args(self, allowed: tuple[str, ...]) -> dict[str, str] | None:
        """The query parameters as sent, or None (after answering 400) for one not in
        ``allowed`` or given more than once. Not get_argument: it strips spaces and
        control characters, so ``search=%00`` reached the service as an empty search
        (every job) instead of the NUL the service refuses."""
        given = self.request.query_arguments
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            self.write_json(400, {"error": f"unknown parameter {unknown[0]!r}; known: "
                                           f"{', '.join(allowed)}"})  # fmt: skip
            return None
        repeated = sorted(name for name, values in given.items() if len(values) > 1)
        if repeated:
            self.write_json(400, {"error": f"parameter {repeated[0]!r} is given more than "
                                           "once: give it once"})  # fmt: skip
            return None
        # decode_argument answers 400 for bytes that are not UTF-8. Spaces around a value
        # (a filter typed into the page) are trimmed, nothing else.
        return {
            name: self.decode_argument(values[-1], name).strip(" ")
            for name, values in given.items()
        }

    def refuse(self, status: int, error: str, retry_after: float) -> None:
        """Answer ``status`` (429, 503) with a Retry-After: the caller may try again."""
        self.set_header("Retry-After", str(max(1, math.ceil(retry_after))))
        self.write_json(status, {"error": error})

    async def call(
        self, method: str, *args: Any, status: int = 200, kwargs: Mapping[str, Any] | None = None
    ) -> None:
        user = self.user()
        if user is None:
            self.write_json(401, {"error": "log in first: POST /api/login"})
            return
        try:
            data = await self.web.run(method, user, *args, **(kwargs or {}))
        except Busy as exc:
            self.refuse(429, str(exc), exc.retry_after)
        except UnknownJob as exc:
            self.write_json(404, {"error": str(exc)})
        except Denied as exc:
            self.write_json(403, {"error": str(exc), "missing": exc.needed})
        except (QueryError, ConfigError, permissions.ConfigError) as exc:
            self.write_json(400, {"error": str(exc)})
        except Unavailable as exc:
            self.refuse(503, str(exc), RETRY_AFTER)
        except DATABASE_DOWN as exc:
            # The driver's message may name the server and the statement: the log has it.
            log.warning("halite http: %s %s: the database failed: %s", self.request.method,
                        self.request.path, exc)  # fmt: skip
            self.refuse(503, "halite's database is unavailable; try again shortly "
                             "(the master's log says why)", RETRY_AFTER)  # fmt: skip
        else:
            self.write_json(status, data)


# A database that refuses or drops connections, is locked, or has no connection to spare.
DATABASE_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError)


class Login(Base):
    async def post(self) -> None:
        fields = _login_fields(self.request.body, self.web.default_eauth)
        if fields is None:
            self.write_json(400, {"error": 'send {"username", "password", "eauth"} as JSON '
                                           "text, without NUL characters"})  # fmt: skip
            return
        username, password, eauth = fields
        web, address = self.web, self.request.remote_ip
        keys = web.throttle.keys(username, address)
        wait = web.throttle.wait(keys)
        if wait > 0:
            self.refuse(429, f"too many failed logins: try again in {math.ceil(wait)} s", wait)
            return
        # Failures are counted before a login may wait: one whose name or address failed
        # lately, or has a login waiting already (which may be failing), waits on the
        # suspect lane, and a flood fills that lane only.
        slots = web.login_slots
        if web.throttle.suspect(keys) or slots.busy(keys):
            slots = web.suspect_login_slots
        refusal = slots.refusal(keys)
        if refusal is not None:
            self.refuse(429, refusal, 1)
            return
        try:
            ok = await web.bounded(
                slots.pool, web.request_timeout,
                lambda: web.authenticate(username, password, eauth),
                f"the external auth did not answer within {web.request_timeout:g} s",
                done=slots.take(keys),
            )  # fmt: skip
        except Unavailable as exc:
            self.refuse(503, str(exc), RETRY_AFTER)
            return
        if not ok:
            locked = web.throttle.failed(keys)
            reason = "authentication failed"
            if locked:
                reason += f"; logins for this user or from this address wait {locked:g} s"
            await web.audit_failed_login(username, address, reason)
            self.write_json(401, {"error": "authentication failed"})
            return
        web.throttle.succeeded(keys[0])
        self.write_json(200, {"token": web.sessions.open(username), **web.me(username)})


def _login_fields(body: bytes | None, default_eauth: str) -> tuple[str, str, str] | None:
    """``(username, password, eauth)`` from a login's JSON body, or None. Text only and
    without NUL: C libraries (PAM) would end a password there, and no user name holds one
    (PostgreSQL could not even store it in the audit log)."""
    try:
        given = json.loads(body or b"{}")
        fields = (given["username"], given["password"], given.get("eauth") or default_eauth)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        # RecursionError: arrays nested some thousands deep exhaust the decoder's stack.
        return None
    if not all(isinstance(field, str) and "\x00" not in field for field in fields):
        return None
    return fields


class Logout(Base):
    def post(self) -> None:
        self.web.sessions.close(self.token())
        self.write_json(200, {"ok": True})


class Me(Base):
    def get(self) -> None:
        user = self.user()
        if user is None:
            self.write_json(401, {"error": "log in first: POST /api/login"})
            return
        self.write_json(200, self.web.me(user))


JOB_PARAMS = ("limit", "fun", "target", "user", "status", "minion", "search", "start", "end",
              "include_system", "master", "cursor", "live")  # fmt: skip


class Jobs(Base):
    async def get(self) -> None:
        args = self.args(JOB_PARAMS)
        if args is None:
            return
        try:
            live = flag_arg("live", args.pop("live", False))
        except QueryError as exc:
            self.write_json(400, {"error": str(exc)})
            return
        if "user" in args:
            args["user_filter"] = args.pop("user")
        if live:
            await self.call("live_jobs", args.get("limit", 50))
        else:
            await self.call("jobs", kwargs=args)


class Job(Base):
    async def get(self, jid: str) -> None:
        await self.call("job", jid)


class Kill(Base):
    async def post(self, jid: str) -> None:
        await self.call("kill", jid, status=202)


class Activity(Base):
    async def get(self) -> None:
        args = self.args(("hours",))
        if args is not None:
            await self.call("activity", kwargs=args)


class Timeline(Base):
    async def get(self) -> None:
        args = self.args(("window", "group_by"))
        if args is not None:
            await self.call("timeline", kwargs=args)


class Audit(Base):
    async def get(self) -> None:
        args = self.args(("user", "action", "decision", "start", "end", "limit", "cursor"))
        if args is None:
            return
        if "user" in args:
            args["user_filter"] = args.pop("user")
        await self.call("audit", kwargs=args)


class OpenAPI(Base):
    def get(self) -> None:
        self.write_json(200, SPEC)


class Stream(Base):
    async def get(self) -> None:
        token = self.token() or self.get_argument("token", None)
        user = self.web.sessions.user(token)
        if user is None:
            self.write_json(401, {"error": "log in first: POST /api/login"})
            return
        try:  # the same check as the listings, audited when it refuses
            await self.web.run("view_scope", user, "stream", {})
        except Denied as denied:
            self.write_json(403, {"error": str(denied), "missing": denied.needed})
            return
        except Unavailable as exc:
            self.refuse(503, str(exc), RETRY_AFTER)
            return
        grants = self.web.service.grants(user)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        queue = self.web.hub.subscribe()
        try:
            self.write(": halite job events\n\n")
            await self.flush()
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    event = None
                if self.web.sessions.user(token) != user:
                    break  # logged out or expired: the stream ends with the session
                if event is None:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    continue
                if not grants.allows("view", "job", function_name(event.get("function")) or ""):
                    continue  # not this user's to see, nor to know of
                self.write(f"event: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n")
                await self.flush()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self.web.hub.unsubscribe(queue)


class Page(tornado.web.StaticFileHandler):
    def initialize(  # type: ignore[override]
        self, path: str, default_filename: str | None = None, proxy_header: str | None = None
    ) -> None:
        super().initialize(path, default_filename)
        self.proxy_header = proxy_header

    def prepare(self) -> None:
        _use_client_address(self.request, self.proxy_header)

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")

    def parse_url_path(self, url_path: str) -> str:
        # No file name holds a NUL; the file system refuses one (ValueError, a 500).
        if "\x00" in url_path:
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)


class NotFound(Base):
    def prepare(self) -> None:
        super().prepare()
        self.write_json(404, {"error": f"no such resource: {self.request.path}"})


def _use_client_address(request: tornado.httputil.HTTPServerRequest, header: str | None) -> None:
    """Behind a proxy, the request's address is the client's (:func:`client_address`), for
    the login throttle, the audit log and the access log alike."""
    if header is not None:
        request.remote_ip = client_address(request.remote_ip, request.headers, header)


def _log(handler: tornado.web.RequestHandler) -> None:
    """Access log without query strings: the event stream's token may travel in one."""
    request = handler.request
    log.info(
        "halite http: %d %s %s (%s) %.1f ms", handler.get_status(), request.method,
        request.path, request.remote_ip, 1000.0 * request.request_time(),
    )  # fmt: skip


class WebApp:
    """The application: a service, sessions, the event hub and Salt's authentication.

    ``request_timeout`` bounds how long a request waits for the database, ``salt_timeout``
    how much longer a kill or a live listing waits for the minions; past the bound the
    request is answered 503. Work that had a thread by then carries on in it (a kill may
    still be carried out, and is audited); work still waiting for a thread is dropped, and
    the answer says so (a kill that was not carried out)."""

    def __init__(
        self,
        service: Service,
        authenticate: Authenticate,
        live_jobs: LiveLister | None = None,
        default_eauth: str = "pam",
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        salt_timeout: float = SALT_TIMEOUT,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.service = service
        self.authenticate = authenticate
        self.live_lister = live_jobs
        self.default_eauth = default_eauth
        self.request_timeout = request_timeout
        self.salt_timeout = salt_timeout
        self.sessions = Sessions()
        self.hub = Hub()
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self.proxy_header: str | None = None  # set by serve()
        self.pool = ThreadPoolExecutor(API_THREADS, thread_name_prefix="halite-web")
        waiting = "a login for this user or from this address is already waiting for the" \
                  " external auth: try again shortly"  # fmt: skip
        self.login_slots = Slots(
            "login", LOGIN_THREADS, LOGINS_WAITING, 1, waiting,
            "too many logins in progress: try again shortly",
        )  # fmt: skip
        self.suspect_login_slots = Slots(
            "login-failed", SUSPECT_THREADS, SUSPECT_WAITING, LOGINS_PER_KEY - 1, waiting,
            "too many logins from addresses or for names that failed lately are in"
            " progress: try again shortly",
        )  # fmt: skip
        self.live_slots = Slots(
            "live", LIVE_THREADS, LIVE_CALLS, LIVE_PER_USER,
            "a live listing of yours is already running: wait for its answer",
            "too many live listings are running: try again shortly",
        )  # fmt: skip
        self.kill_slots = Slots(
            "kill", KILL_THREADS, KILL_CALLS, KILLS_PER_USER,
            f"{KILLS_PER_USER} kills of yours are still waiting for their minions: wait for"
            " an answer",
            "too many kills are waiting for their minions: try again shortly",
        )  # fmt: skip

    @property
    def logins_waiting(self) -> int:
        """Logins waiting for the external auth (running or queued), of every kind."""
        return self.login_slots.in_use + self.suspect_login_slots.in_use

    def me(self, user: str) -> dict[str, Any]:
        grants = self.service.grants(user)
        return {
            "user": user,
            "roles": list(grants.roles),
            "may": {
                "view": grants.job_scope("view") != (),
                "kill": grants.may_any("kill", "job"),
                "audit": grants.allows("view", "audit", "*"),
            },
        }

    @staticmethod
    async def bounded(
        pool: Executor,
        timeout: float,
        work: Callable[[], T],
        late: str,
        done: Callable[[], None] | None = None,
    ) -> T:
        """``work()`` on ``pool``; raises Unavailable(``late``) past ``timeout`` seconds.
        Work still queued then is dropped (``started`` False); work already running
        finishes in its thread. ``done`` is called on this event loop once the thread is
        done with the work (or it was dropped), not at the 503: a slot is held as long as
        its thread is."""
        loop = asyncio.get_running_loop()
        try:
            future = pool.submit(work)
        except BaseException:
            if done is not None:
                done()
            raise
        if done is not None:
            future.add_done_callback(lambda _: _call_soon(loop, done))
        answer = asyncio.wrap_future(future, loop=loop)
        try:
            # shield: past the timeout ``answer`` still gets the work's outcome (a late
            # failure is logged); ``future`` is cancelled below only if it never started.
            return await asyncio.wait_for(asyncio.shield(answer), timeout)
        except asyncio.TimeoutError:
            started = not future.cancel()
            answer.add_done_callback(_log_late_failure)
            raise Unavailable(late, started) from None

    async def run(self, method: str, user: str, *args: Any, **kwargs: Any) -> Any:
        """A service call on its pool, bounded; a kill or a live listing takes one of its
        slots first (Busy, a 429, when there is none)."""
        slots: Slots | None = None
        if method == "live_jobs":
            slots, timeout = self.live_slots, self.request_timeout + self.salt_timeout
            late = f"the minions or the master's job cache did not answer within {timeout:g} s"
        elif method == "kill":
            slots, timeout = self.kill_slots, self.request_timeout + self.salt_timeout
            late = (f"no answer within {timeout:g} s from halite's database or the minions; "
                    "the kill may still be carried out: see the audit log")  # fmt: skip
        else:
            timeout = self.request_timeout
            late = f"halite's database did not answer within {timeout:g} s; try again shortly"
        done = None
        if slots is not None:
            refusal = slots.refusal((user,))
            if refusal is not None:
                raise Busy(refusal, self.salt_timeout)
            done = slots.take((user,))
        try:
            return await self.bounded(
                slots.pool if slots is not None else self.pool, timeout,
                lambda: self._dispatch(method, user, *args, **kwargs), late, done,
            )  # fmt: skip
        except Unavailable as exc:
            if method != "kill" or exc.started:
                raise
            raise Unavailable(
                f"the kill was not carried out: it waited {timeout:g} s for one of halite's"
                " kill threads (all were busy with other kills, waiting for their minions or"
                " the database) and nothing was sent; try again shortly", started=False,
            ) from None  # fmt: skip

    def _dispatch(self, method: str, user: str, *args: Any, **kwargs: Any) -> Any:
        if method == "live_jobs":
            if self.live_lister is None:
                raise QueryError("live listing is not available here")
            scope = self.service.view_scope(user, "jobs", {"live": True})
            return self.live_lister(args[0], scope)
        return getattr(self.service, method)(user, *args, **kwargs)

    async def audit_failed_login(self, user: str, address: str | None, reason: str) -> None:
        """Record a failed login, bounded; a failure to record is logged, never raised:
        the caller is answered 401 all the same."""
        try:
            await self.bounded(
                self.pool, self.request_timeout,
                lambda: self.service.login_failed(user, address, reason),
                f"the audit log did not answer within {self.request_timeout:g} s",
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - logged; the login is refused anyway
            log.error("halite http: could not audit the failed login of %r from %s: %s",
                      user[:256], address, exc)  # fmt: skip

    def application(self) -> tornado.web.Application:
        page = {"path": str(STATIC), "proxy_header": self.proxy_header}
        routes: list[Any] = [
            (r"/api/login", Login, {"app": self}),
            (r"/api/logout", Logout, {"app": self}),
            (r"/api/me", Me, {"app": self}),
            (r"/api/openapi\.json", OpenAPI, {"app": self}),
            (r"/api/jobs", Jobs, {"app": self}),
            (r"/api/jobs/activity", Activity, {"app": self}),
            (r"/api/jobs/timeline", Timeline, {"app": self}),
            (r"/api/jobs/stream", Stream, {"app": self}),
            (r"/api/jobs/([^/]+)", Job, {"app": self}),
            (r"/api/jobs/([^/]+)/kill", Kill, {"app": self}),
            (r"/api/audit", Audit, {"app": self}),
            (r"/api/.*", NotFound, {"app": self}),
            (r"/()", Page, {**page, "default_filename": "index.html"}),
            (r"/(.+)", Page, page),
        ]
        return tornado.web.Application(routes, compress_response=True, log_function=_log)

    def serve(
        self,
        host: str,
        port: int,
        ssl: Mapping[str, str] | None = None,
        proxy_headers: str | None = None,
    ) -> tornado.httpserver.HTTPServer:
        """Listen on ``host:port`` (TLS with ``certfile``/``keyfile``) in this thread's
        event loop, which must be running or run afterwards. ``proxy_headers``: the header
        a reverse proxy sets, x-forwarded-for or x-real-ip (:func:`client_address`); the
        client address it gives is what logins are throttled by. Not Tornado's xheaders:
        it prefers X-Real-Ip, which a proxy that appends X-Forwarded-For passes on from
        the client. Raises ConfigError when it cannot."""
        self.proxy_header = _proxy_header(proxy_headers)
        server = tornado.httpserver.HTTPServer(
            self.application(), ssl_options=_tls(ssl) if ssl else None,
            max_body_size=MAX_BODY, max_buffer_size=MAX_BODY * 4,
        )  # fmt: skip
        try:
            server.listen(port, address=host)
        except OSError as exc:
            raise ConfigError(
                f"http: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self.hub.loop = asyncio.get_event_loop()
        return server

    def serve_in_thread(
        self,
        host: str,
        port: int,
        ssl: Mapping[str, str] | None = None,
        proxy_headers: str | None = None,
    ) -> threading.Thread:
        """Run the server in a thread of its own (the engine's loop stays synchronous);
        raises, in the calling thread, what kept it from listening."""
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self.serve(host, port, ssl, proxy_headers)
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=main, name="halite-http", daemon=True)
        thread.start()
        started.wait(30)
        if failure:
            raise failure[0]
        log.info("halite: Jobs page and API on %s://%s:%d/", "https" if ssl else "http", host,
                 port)  # fmt: skip
        return thread


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """``callback`` on ``loop``'s thread, from any thread; nothing once the loop is closed
    (the server is gone, and its counters with it)."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass


def _log_late_failure(answer: asyncio.Future[Any]) -> None:
    """The outcome of work answered 503 before it ended: its failure goes to the log (and
    is retrieved, so asyncio does not warn of it at exit)."""
    if answer.cancelled():
        return
    exc = answer.exception()
    if exc is not None:
        log.warning("halite http: a call answered 503 failed later: %s: %s",
                    type(exc).__name__, exc)  # fmt: skip


def _tls(ssl: Mapping[str, str]) -> ssl_module.SSLContext:
    """A server TLS context from ``certfile`` and ``keyfile``; ConfigError saying which
    file cannot be read, or that the two are not a certificate and its key."""
    for name in ("certfile", "keyfile"):
        try:
            with open(ssl[name], "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"http: cannot read {name} {ssl[name]}: {exc.strerror}") from exc
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(ssl["certfile"], ssl["keyfile"])
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(
            f"http: cannot load certfile {ssl['certfile']} and keyfile {ssl['keyfile']} as a"
            f" PEM certificate and its private key: {exc}"
        ) from exc
    return context
