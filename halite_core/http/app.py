"""The application: :class:`WebApp` holds the service, the sessions, the event hub and
the thread pools, routes requests to the handlers, and serves them. ``/metrics`` serves
halite's Prometheus metrics (halite_core.http.metrics); ``metrics_only`` serves nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import tornado.httpserver
import tornado.web

from halite_core.api import MinionQuery, MinionsQuery, StateQuery, StatesQuery
from halite_core.config import REQUEST_TIMEOUT, ConfigError, proxy_header
from halite_core.http.handlers import (
    Activity,
    Audit,
    Fleet,
    Job,
    Jobs,
    Kill,
    Login,
    Logout,
    Me,
    NotFound,
    OpenAPI,
    Page,
    Rerun,
    Timeline,
    _log,
)
from halite_core.http.limits import (
    API_THREADS,
    KILL_CALLS,
    KILL_THREADS,
    KILLS_PER_USER,
    LIVE_CALLS,
    LIVE_PER_USER,
    LIVE_THREADS,
    LOGIN_THREADS,
    LOGINS_PER_KEY,
    LOGINS_WAITING,
    RERUN_CALLS,
    RERUN_THREADS,
    RERUNS_PER_USER,
    SALT_TIMEOUT,
    SESSION_THREADS,
    SUSPECT_THREADS,
    SUSPECT_WAITING,
    Busy,
    LoginThrottle,
    Slots,
    Unavailable,
)
from halite_core.http.metrics import MetricsHandler
from halite_core.http.sessions import Session, Sessions
from halite_core.http.stream import ENDED, Hub, Stream
from halite_core.metrics import Metrics, get_metrics
from halite_core.queries import QueryError
from halite_core.service import Service

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent.parent / "static"
MAX_BODY = 64 * 1024


LiveLister = Callable[[object, "tuple[str, ...] | None"], Mapping[str, Any]]
T = TypeVar("T")


class WebApp:
    """The application: a service, the sessions, the event hub.

    ``sessions`` makes the logins and looks up every request's token: on a master,
    :class:`~halite_core.http.sessions.SaltSessions`, Salt's own tokens (the engine builds
    it all from the master's opts: :func:`halite_core.http.salt_glue.serve`).
    ``request_timeout`` bounds how long a request waits for the database, ``salt_timeout``
    how much longer a kill, a re-run or a live listing waits for Salt; past the bound the
    request is answered 503. Work that had a thread by then carries on in it (a kill may
    still be carried out, a re-run still published, and either is audited); work still
    waiting for a thread is dropped, and the answer says so (a kill that was not carried
    out, a re-run that was not published).

    ``metrics`` (this process's by default) is served at ``/metrics``, to loopback clients
    or, with ``metrics_token``, to those who send it; ``metrics_only``: nothing else is
    served (no API, no page)."""

    def __init__(
        self,
        service: Service,
        sessions: Sessions,
        live_jobs: LiveLister | None = None,
        default_eauth: str = "pam",
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        salt_timeout: float = SALT_TIMEOUT,
        throttle: LoginThrottle | None = None,
        metrics: Metrics | None = None,
        metrics_only: bool = False,
        metrics_token: str | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics if metrics is not None else get_metrics()
        self.metrics_only = metrics_only
        self.metrics_token = metrics_token
        # A scrape renders on a thread of its own: never behind requests waiting for the
        # database, never on the event loop.
        self.metrics_pool = ThreadPoolExecutor(1, thread_name_prefix="halite-metrics")
        self.sessions = sessions
        self.live_lister = live_jobs
        self.default_eauth = default_eauth
        self.request_timeout = request_timeout
        self.salt_timeout = salt_timeout
        self.hub = Hub()
        # The open event streams of each token, so that a logout here ends them at once.
        self.streams: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self.proxy_header: str | None = None  # set by serve()
        self.pool = ThreadPoolExecutor(API_THREADS, thread_name_prefix="halite-web")
        # Every request looks its token up in Salt's token store, on threads of their own:
        # a database that hangs must not keep anyone from being told so (nor logging out).
        self.session_pool = ThreadPoolExecutor(SESSION_THREADS,
                                               thread_name_prefix="halite-session")  # fmt: skip
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
        self.rerun_slots = Slots(
            "rerun", RERUN_THREADS, RERUN_CALLS, RERUNS_PER_USER,
            f"{RERUNS_PER_USER} re-runs of yours are still waiting for the master to publish"
            " them: wait for an answer",
            "too many re-runs are waiting for the master to publish them: try again shortly",
        )  # fmt: skip

    async def session(self, token: str | None) -> Session | None:
        """The session of ``token`` (None: no token, unknown, expired or no longer
        granted), from Salt's token store within ``request_timeout``; Unavailable when the
        store did not answer, or failed (the log says why)."""
        if not token:
            return None
        late = f"Salt's token store did not answer within {self.request_timeout:g} s"
        try:
            return await self.bounded(
                self.session_pool, self.request_timeout, lambda: self.sessions.find(token), late
            )
        except Unavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a 503 that says where to look
            log.error("halite http: Salt's token store failed: %s: %s", type(exc).__name__, exc)
            raise Unavailable("Salt's token store failed; see the master's log") from None

    async def log_out(self, token: str | None) -> None:
        """End the token's event streams here, and remove it from Salt's token store
        (within ``request_timeout``, else Unavailable)."""
        if not token:
            return
        for queue in self.streams.pop(token, set()):
            queue.put_nowait(ENDED)
        await self.bounded(
            self.session_pool, self.request_timeout, lambda: self.sessions.close(token),
            f"Salt's token store did not answer within {self.request_timeout:g} s",
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
                "rerun": grants.may_any("run", "job"),
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
        """A service call on its pool, bounded; a kill, a re-run or a live listing takes
        one of its slots first (Busy, a 429, when there is none)."""
        slots: Slots | None = None
        if method == "live_jobs":
            slots, timeout = self.live_slots, self.request_timeout + self.salt_timeout
            late = f"the minions or the master's job cache did not answer within {timeout:g} s"
        elif method == "kill":
            slots, timeout = self.kill_slots, self.request_timeout + self.salt_timeout
            late = (f"no answer within {timeout:g} s from halite's database or the minions; "
                    "the kill may still be carried out: see the audit log")  # fmt: skip
        elif method == "rerun":
            slots, timeout = self.rerun_slots, self.request_timeout + self.salt_timeout
            late = (f"no answer within {timeout:g} s from halite's database or the master; "
                    "the re-run may still be published: see the audit log and the job list"
                    )  # fmt: skip
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
            if exc.started or method not in ("kill", "rerun"):
                raise
            what = {
                "kill": ("kill", "carried out", "kills, waiting for their minions"),
                "rerun": ("re-run", "published", "re-runs, waiting for the master"),
            }
            name, done_word, others = what[method]
            raise Unavailable(
                f"the {name} was not {done_word}: it waited {timeout:g} s for one of halite's"
                f" {name} threads (all were busy with other {others} or the database) and"
                " nothing was sent; try again shortly", started=False,
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
        scrape = {
            "metrics": self.metrics, "token": self.metrics_token,
            "proxy_header": self.proxy_header, "pool": self.metrics_pool,
        }  # fmt: skip
        if self.metrics_only:
            only: list[Any] = [
                (r"/metrics", MetricsHandler, scrape),
                (r".*", NotFound, {"app": self}),
            ]
            return tornado.web.Application(only, log_function=_log)
        page = {"path": str(STATIC), "proxy_header": self.proxy_header}
        routes: list[Any] = [
            (r"/metrics", MetricsHandler, scrape),
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
            (r"/api/jobs/([^/]+)/rerun", Rerun, {"app": self}),
            (r"/api/audit", Audit, {"app": self}),
            (r"/api/minions", Fleet, {"app": self, "method": "minions", "model": MinionsQuery}),
            (
                r"/api/minions/([^/]+)",
                Fleet,
                {"app": self, "method": "minion", "model": MinionQuery},
            ),
            (r"/api/states", Fleet, {"app": self, "method": "states", "model": StatesQuery}),
            (r"/api/states/([^/]+)", Fleet, {"app": self, "method": "state", "model": StateQuery}),
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
        self.proxy_header = proxy_header(proxy_headers)
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
        what = "metrics" if self.metrics_only else "Jobs page and API"
        log.info("halite: %s on %s://%s:%d/", what, "https" if ssl else "http", host,
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
