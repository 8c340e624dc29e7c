"""The HTTP API and the Jobs page, served by the halite engine (Tornado, which Salt ships).

Every request is answered by :class:`~halite_core.service.Service`, the same checked and
audited logic as the runners. A person logs in with Salt's external auth (the engine
passes an ``authenticate(username, password, eauth)`` that asks Salt) and gets a session
token; requests carry it in the ``X-Auth-Token`` header, never in a cookie, so a page on
another site cannot make a browser send it (a kill cannot be forged). Errors are JSON:
400 for a bad argument, 401 without a session, 403 naming the missing permission, 404 for
an unknown job, 429 (with ``Retry-After``) for a login that must wait (:class:`LoginThrottle`)
or a live listing past its limits, and 503 when the database (or, for a kill or a live
listing, the minions) did not answer within the request's bound. A request body over
64 KiB is refused: the server closes the connection.

Work that waits happens on thread pools, never on the event loop: logins on their own
(Salt's external auth), live listings on their own (they wait for every minion), and
everything else on the main pool, so neither can hold up a plain read.

``GET /api/jobs/stream`` is Server-Sent Events: ``new``, ``return`` and ``complete`` as the
engine sees them on the bus, filtered by what the user may view.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import ssl as ssl_module
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy.exc
import tornado.httpserver
import tornado.iostream
import tornado.web

from halite_core import permissions
from halite_core.config import ConfigError
from halite_core.jobcache import function_name
from halite_core.openapi import SPEC
from halite_core.permissions import Denied
from halite_core.queries import QueryError, UnknownJob
from halite_core.service import Service

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
SESSION_SECONDS = 12 * 3600
KEEPALIVE_SECONDS = 15.0
# Logins wait for Salt's external auth, which makes every failure as slow as the slowest
# one yet (PAM: about 2 s). They get their own threads, so that failing logins cannot hold
# up the API; one user name or one address has at most LOGINS_PER_KEY of them waiting, so
# that a flood leaves threads to everyone else; past LOGINS_WAITING in all, a login is
# answered 429 at once.
LOGIN_THREADS = 4
LOGINS_PER_KEY = 2
LOGINS_WAITING = 16
# Live listings ask every minion and wait for the slowest (gather_job_timeout for one that
# is down): their own threads, one per user at a time, LIVE_CALLS in all (running or
# waiting for a thread); past that, 429.
LIVE_THREADS = 2
LIVE_CALLS = 4
LIVE_PER_USER = 1
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


class Unavailable(Exception):
    """The database (or the minions) did not answer within the request's bound: 503."""


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
    proxy_headers: bool = False

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
            proxy_headers=_flag(config, "proxy_headers"),
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


def _flag(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"http:{key} must be true or false, not {value!r}")
    return value


@dataclass
class _Failures:
    count: int  # failed logins, each within the window of the one before
    last: float  # when the last one failed
    locked_until: float = 0.0


class LoginThrottle:
    """Failed logins, per user name and per client address, with exponential back-off.

    A key (``user:<name>``, ``address:<ip>``) that failed ``failures`` times, each within
    ``window`` seconds of the one before, is locked for ``base_delay`` seconds, and each
    further failure doubles that, up to ``max_delay``; a login for a locked user name or
    from a locked address is refused without asking the external auth. A right password
    clears its user name (not its address: one valid account must not reset a guesser's
    count). At most ``max_keys`` keys are remembered, the least recently failed forgotten
    first, so a flood of made-up names cannot fill the memory. Used from the event loop's
    thread only."""

    FAILURES = 5

    def __init__(
        self,
        failures: int = FAILURES,
        window: float = 900.0,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_keys: int = 10_000,
        per_key: int = LOGINS_PER_KEY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_keys = max_keys
        self.per_key = per_key
        self.clock = clock
        self._failed: OrderedDict[str, _Failures] = OrderedDict()
        self._waiting: dict[str, int] = {}  # logins waiting for the external auth, by key

    @staticmethod
    def keys(user: str, address: str | None) -> tuple[str, str]:
        # Casefolded: an external auth that ignores case (LDAP) must not give each spelling
        # of a name its own count. Cut short: a key's size is bounded.
        return f"user:{user.casefold()[:256]}", f"address:{address}"

    def __len__(self) -> int:
        return len(self._failed)

    def wait(self, keys: Iterable[str]) -> float:
        """Seconds until a login for these keys may ask the external auth (0: now)."""
        now = self.clock()
        found = (self._failed.get(key) for key in keys)
        return max([0.0, *(f.locked_until - now for f in found if f is not None)])

    def busy(self, keys: Iterable[str]) -> bool:
        return any(self._waiting.get(key, 0) >= self.per_key for key in keys)

    def begin(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._waiting[key] = self._waiting.get(key, 0) + 1

    def end(self, keys: Iterable[str]) -> None:
        for key in keys:
            left = self._waiting.get(key, 0) - 1
            if left > 0:
                self._waiting[key] = left
            else:
                self._waiting.pop(key, None)

    def failed(self, keys: Iterable[str]) -> float:
        """Count a failed login; returns the longest lock it started (0: none)."""
        now = self.clock()
        locked = 0.0
        for key in keys:
            entry = self._failed.pop(key, None)
            if entry is None or now - entry.last > self.window:
                entry = _Failures(count=0, last=now)
            entry.count += 1
            entry.last = now
            if entry.count >= self.failures:
                doublings = min(entry.count - self.failures, 32)
                delay = min(self.base_delay * 2**doublings, self.max_delay)
                entry.locked_until = now + delay
                locked = max(locked, delay)
            self._failed[key] = entry  # now the most recent
        while len(self._failed) > self.max_keys:
            self._failed.popitem(last=False)
        self.prune()
        return locked

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
        """The query parameters, or None (after answering 400) for one not in ``allowed``."""
        unknown = sorted(set(self.request.arguments) - set(allowed))
        if unknown:
            self.write_json(400, {"error": f"unknown parameter {unknown[0]!r}; known: "
                                           f"{', '.join(allowed)}"})  # fmt: skip
            return None
        return {k: self.get_argument(k) for k in self.request.arguments}

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
        if web.throttle.busy(keys):
            self.refuse(429, "a login for this user or from this address is already waiting "
                             "for the external auth: try again shortly", 1)  # fmt: skip
            return
        if web.logins_waiting >= LOGINS_WAITING:
            self.refuse(429, "too many logins in progress: try again shortly", 1)
            return
        web.throttle.begin(keys)  # these counters are only touched on the event loop's thread
        web.logins_waiting += 1
        try:
            ok = await web.bounded(
                web.login_pool, web.request_timeout,
                lambda: web.authenticate(username, password, eauth),
                f"the external auth did not answer within {web.request_timeout:g} s",
            )  # fmt: skip
        except Unavailable as exc:
            self.refuse(503, str(exc), RETRY_AFTER)
            return
        finally:
            web.throttle.end(keys)
            web.logins_waiting -= 1
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
    except (ValueError, KeyError, TypeError, AttributeError):
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
        live = args.pop("live", "false").lower() in ("1", "true", "yes")
        if "user" in args:
            args["user_filter"] = args.pop("user")
        if live:
            await self.live(args.get("limit", 50))
        else:
            await self.call("jobs", kwargs=args)

    async def live(self, limit: object) -> None:
        """One live listing per user at a time, LIVE_CALLS in all: each may wait for a
        minion that is down, and they must not pile up (they have their own threads)."""
        web, user = self.web, self.user()
        if user is None:
            self.write_json(401, {"error": "log in first: POST /api/login"})
            return
        if web.live_by_user.get(user, 0) >= LIVE_PER_USER:
            self.refuse(429, "a live listing of yours is already running: wait for its answer",
                        web.salt_timeout)  # fmt: skip
            return
        if web.live_calls >= LIVE_CALLS:
            self.refuse(429, "too many live listings are running: try again shortly",
                        web.salt_timeout)  # fmt: skip
            return
        web.live_calls += 1  # only touched on the event loop's thread
        web.live_by_user[user] = web.live_by_user.get(user, 0) + 1
        try:
            await self.call("live_jobs", limit)
        finally:
            web.live_calls -= 1
            web.live_by_user[user] -= 1
            if not web.live_by_user[user]:
                del web.live_by_user[user]


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
        self.write_json(404, {"error": f"no such resource: {self.request.path}"})


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
    request is answered 503 (the work itself carries on in its thread: a kill may still be
    carried out, and is audited)."""

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
        self.pool = ThreadPoolExecutor(API_THREADS, thread_name_prefix="halite-web")
        self.login_pool = ThreadPoolExecutor(LOGIN_THREADS, thread_name_prefix="halite-login")
        self.live_pool = ThreadPoolExecutor(LIVE_THREADS, thread_name_prefix="halite-live")
        # Counted on the event loop's thread only.
        self.logins_waiting = 0
        self.live_calls = 0
        self.live_by_user: dict[str, int] = {}

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
    async def bounded(pool: Executor, timeout: float, work: Callable[[], T], late: str) -> T:
        """``work()`` on ``pool``; raises Unavailable(``late``) past ``timeout`` seconds.
        Work still queued then is dropped; work already running finishes in its thread."""
        future = asyncio.get_running_loop().run_in_executor(pool, work)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise Unavailable(late) from None

    async def run(self, method: str, user: str, *args: Any, **kwargs: Any) -> Any:
        if method == "live_jobs":
            pool, timeout = self.live_pool, self.request_timeout + self.salt_timeout
            late = f"the minions or the master's job cache did not answer within {timeout:g} s"
        elif method == "kill":
            pool, timeout = self.pool, self.request_timeout + self.salt_timeout
            late = (f"no answer within {timeout:g} s from halite's database or the minions; "
                    "the kill may still be carried out: see the audit log")  # fmt: skip
        else:
            pool, timeout = self.pool, self.request_timeout
            late = f"halite's database did not answer within {timeout:g} s; try again shortly"
        return await self.bounded(
            pool, timeout, lambda: self._dispatch(method, user, *args, **kwargs), late
        )

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
            (r"/()", Page, {"path": str(STATIC), "default_filename": "index.html"}),
            (r"/(.+)", Page, {"path": str(STATIC)}),
        ]
        return tornado.web.Application(routes, compress_response=True, log_function=_log)

    def serve(
        self,
        host: str,
        port: int,
        ssl: Mapping[str, str] | None = None,
        proxy_headers: bool = False,
    ) -> tornado.httpserver.HTTPServer:
        """Listen on ``host:port`` (TLS with ``certfile``/``keyfile``) in this thread's
        event loop, which must be running or run afterwards. ``proxy_headers``: the client
        address is the one a reverse proxy puts in X-Real-Ip / X-Forwarded-For (it is what
        logins are throttled by). Raises ConfigError when it cannot."""
        server = tornado.httpserver.HTTPServer(
            self.application(), ssl_options=_tls(ssl) if ssl else None,
            max_body_size=MAX_BODY, max_buffer_size=MAX_BODY * 4, xheaders=proxy_headers,
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
        proxy_headers: bool = False,
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
