"""The HTTP API and the Jobs page, served by the halite engine (Tornado, which Salt ships).

Every request is answered by :class:`~halite_core.service.Service`, the same checked and
audited logic as the runners. A person logs in with Salt's external auth (the engine
passes an ``authenticate(username, password, eauth)`` that asks Salt) and gets a session
token; requests carry it in the ``X-Auth-Token`` header, never in a cookie, so a page on
another site cannot make a browser send it (a kill cannot be forged). Errors are JSON:
400 for a bad argument, 401 without a session, 403 naming the missing permission, 404 for
an unknown job, 429 when too many logins are already waiting for Salt's external auth. A
request body over 64 KiB is refused: the server closes the connection.

``GET /api/jobs/stream`` is Server-Sent Events: ``new``, ``return`` and ``complete`` as the
engine sees them on the bus, filtered by what the user may view.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.web

from halite_core.jobcache import function_name
from halite_core.openapi import SPEC
from halite_core.permissions import ConfigError, Denied
from halite_core.queries import QueryError, UnknownJob
from halite_core.service import Service

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
SESSION_SECONDS = 12 * 3600
KEEPALIVE_SECONDS = 15.0
# Logins wait for Salt's external auth, which makes every failure as slow as the slowest
# one yet (PAM: about 2 s). They get their own threads, so that failing logins cannot hold
# up the API, and past this many waiting, a login is answered 429 at once.
LOGIN_THREADS = 2
LOGINS_WAITING = 8

Authenticate = Callable[[str, str, str], bool]
LiveLister = Callable[[object, "tuple[str, ...] | None"], Mapping[str, Any]]


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
        except (QueryError, ConfigError) as exc:
            self.write_json(400, {"error": str(exc)})
        else:
            self.write_json(status, data)


class Login(Base):
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            username, password = str(body["username"]), str(body["password"])
            eauth = str(body.get("eauth") or self.web.default_eauth)
        except (ValueError, KeyError, TypeError):
            self.write_json(400, {"error": 'send {"username", "password", "eauth"} as JSON'})
            return
        if self.web.logins_waiting >= LOGINS_WAITING:
            self.write_json(429, {"error": "too many logins in progress: try again shortly"})
            return
        loop = asyncio.get_running_loop()
        self.web.logins_waiting += 1  # only touched on the event loop's thread
        try:
            ok = await loop.run_in_executor(
                self.web.login_pool, self.web.authenticate, username, password, eauth
            )
        finally:
            self.web.logins_waiting -= 1
        if not ok:
            self.write_json(401, {"error": "authentication failed"})
            return
        self.write_json(200, {"token": self.web.sessions.open(username), **self.web.me(username)})


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
    """The application: a service, sessions, the event hub and Salt's authentication."""

    def __init__(
        self,
        service: Service,
        authenticate: Authenticate,
        live_jobs: LiveLister | None = None,
        default_eauth: str = "pam",
    ) -> None:
        self.service = service
        self.authenticate = authenticate
        self.live_lister = live_jobs
        self.default_eauth = default_eauth
        self.sessions = Sessions()
        self.hub = Hub()
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="halite-web")
        self.login_pool = ThreadPoolExecutor(LOGIN_THREADS, thread_name_prefix="halite-login")
        self.logins_waiting = 0

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

    async def run(self, method: str, user: str, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, lambda: self._dispatch(method, user, *args, **kwargs)
        )

    def _dispatch(self, method: str, user: str, *args: Any, **kwargs: Any) -> Any:
        if method == "live_jobs":
            if self.live_lister is None:
                raise QueryError("live listing is not available here")
            scope = self.service.view_scope(user, "jobs", {"live": True})
            return self.live_lister(args[0], scope)
        return getattr(self.service, method)(user, *args, **kwargs)

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
        self, host: str, port: int, ssl: Mapping[str, str] | None = None
    ) -> tornado.httpserver.HTTPServer:
        """Listen on ``host:port`` (TLS with ``certfile``/``keyfile``) in this thread's
        event loop, which must be running or run afterwards."""
        ssl_options = None
        if ssl:
            import ssl as ssl_module

            context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
            context.load_cert_chain(ssl["certfile"], ssl["keyfile"])
            ssl_options = context
        server = tornado.httpserver.HTTPServer(
            self.application(), ssl_options=ssl_options, max_body_size=MAX_BODY,
            max_buffer_size=MAX_BODY * 4,
        )  # fmt: skip
        server.listen(port, address=host)
        self.hub.loop = asyncio.get_event_loop()
        return server

    def serve_in_thread(
        self, host: str, port: int, ssl: Mapping[str, str] | None = None
    ) -> threading.Thread:
        """Run the server in a thread of its own (the engine's loop stays synchronous)."""
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self.serve(host, port, ssl)
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                started.set()
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
