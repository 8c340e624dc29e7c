"""The API's request handlers (one per route) and the page's static files."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
import tornado.httputil
import tornado.iostream
import tornado.web

from halite_core import export, permissions
from halite_core.api import ActivityQuery, Arguments, AuditFilter, JobsQuery, TimelineQuery
from halite_core.config import ConfigError
from halite_core.fleet import UnknownMinion
from halite_core.http.contract import SPEC
from halite_core.http.limits import RETRY_AFTER, Busy, Unavailable
from halite_core.http.sessions import Session
from halite_core.permissions import Denied
from halite_core.queries import QueryError, UnknownJob
from halite_core.rerun import PublishFailed
from halite_core.service import flag_arg

if TYPE_CHECKING:
    from halite_core.http.app import WebApp

log = logging.getLogger(__name__)

# The most rows a CSV export writes (a test makes it small).
EXPORT_MAX_ROWS = export.MAX_ROWS


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

    async def session(self, token: str | None = None) -> Session | None:
        """The session of ``token`` (by default the request's), or None after answering
        401 (no token, or not a session: unknown, expired, logged out) or 503 (Salt's
        token store did not answer)."""
        try:
            session = await self.web.session(token or self.token())
        except Unavailable as exc:
            self.refuse(503, str(exc), RETRY_AFTER)
            return None
        if session is None:
            self.write_json(401, {"error": "log in first: POST /api/login"})
        return session

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
        session = await self.session()
        if session is None:
            return
        answered, data = await self.attempt(session.user, method, *args, **(kwargs or {}))
        if answered:
            self.write_json(status, data)

    async def attempt(self, user: str, method: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """``(True, answer)`` of a service call, or ``(False, None)`` after answering its
        refusal or failure (400, 403, 404, 429, 503)."""
        try:
            return True, await self.web.run(method, user, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - what failure() does not know is raised
            status, body, retry_after = self.failure(exc)
            if retry_after is None:
                self.write_json(status, body)
            else:
                self.refuse(status, body["error"], retry_after)
            return False, None

    def failure(self, exc: Exception) -> tuple[int, dict[str, Any], float | None]:
        """How a service call's exception is answered: the status, the body and, for a
        429 or 503, the seconds to wait. Any other exception is raised again."""
        if isinstance(exc, Busy):
            return 429, {"error": str(exc)}, exc.retry_after
        if isinstance(exc, (UnknownJob, UnknownMinion)):
            return 404, {"error": str(exc)}, None
        if isinstance(exc, Denied):
            return 403, {"error": str(exc), "missing": exc.needed}, None
        if isinstance(exc, (QueryError, ConfigError, permissions.ConfigError)):
            return 400, {"error": str(exc)}, None
        if isinstance(exc, Unavailable):
            return 503, {"error": str(exc)}, RETRY_AFTER
        if isinstance(exc, DATABASE_DOWN):
            # The driver's message may name the server and the statement: the log has it.
            log.warning("halite http: %s %s: the database failed: %s", self.request.method,
                        self.request.path, exc)  # fmt: skip
            return 503, {"error": "halite's database is unavailable; try again shortly "
                                  "(the master's log says why)"}, RETRY_AFTER  # fmt: skip
        raise exc

    def answer_format(self, args: dict[str, str]) -> str | None:
        """``csv`` or ``json``: the ``format`` parameter (taken out of ``args``), else what
        the Accept header prefers (:func:`halite_core.export.chosen`); None after
        answering 400 for a bad ``format``."""
        self.set_header("Vary", "Accept")
        try:
            return export.chosen(args.pop("format", None), self.request.headers.get("Accept"))
        except QueryError as exc:
            self.write_json(400, {"error": str(exc)})
            return None

    async def export(
        self,
        method: str,
        *path: str,
        args: Mapping[str, str] | None = None,
        fixed: tuple[Any, ...] | None = None,
    ) -> None:
        """Answer the service's ``method`` as CSV, streamed a page at a time
        (:func:`halite_core.export.stream`, at most :data:`EXPORT_MAX_ROWS` rows). The
        service is called with the ``path``'s ids and ``args`` (a listing: it pages with
        its cursors, unless ``args`` has a ``limit``, which asks for one page), or with
        ``fixed`` (one answer). A refusal or failure of the first page is answered as the
        JSON's is; one of a later page (the answer has begun) ends the CSV with a note
        saying why."""
        session = await self.session()
        if session is None:
            return
        user = session.user
        paged = fixed is None and args is not None and "limit" not in args

        def arguments(cursor: str | None, rows: int) -> tuple[Any, ...]:
            if fixed is not None:
                return fixed
            asked = dict(args or {})
            if paged:
                asked["limit"] = str(rows)
            if cursor is not None:
                asked["cursor"] = cursor
            return (*path, asked)

        first_rows = min(export.PAGE_ROWS, EXPORT_MAX_ROWS)
        answered, first = await self.attempt(user, method, *arguments(None, first_rows))
        if not answered:
            return
        table = export.TABLES[method]
        self.set_header("Content-Type", export.MEDIA_TYPE)
        name = table.filename(path[0] if path else None)
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')

        async def send(text: str) -> None:
            self.write(text)
            await self.flush()

        async def more(cursor: str, rows: int) -> Any:
            try:
                return await self.web.run(method, user, *arguments(cursor, rows))
            except Exception as exc:  # noqa: BLE001 - the CSV's last row says why
                try:
                    _, body, _ = self.failure(exc)
                except Exception:  # noqa: BLE001 - a defect: logged, and said in the CSV
                    log.exception("halite http: %s %s: the export failed", self.request.method,
                                  self.request.path)  # fmt: skip
                    body = {"error": "internal error; see the master's log"}
                raise export.Stopped(body["error"]) from None

        try:
            await export.stream(
                table, first, send, more if paged else None, max_rows=EXPORT_MAX_ROWS,
                page_rows=export.PAGE_ROWS,
            )  # fmt: skip
        except tornado.iostream.StreamClosedError:
            return  # the client went away
        self.finish()


# A database that refuses or drops connections, is locked, or has no connection to spare.
DATABASE_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError)


class Login(Base):
    def get(self) -> None:
        # Before a session: what the login form offers (no secret: the eauth's name).
        self.write_json(200, {"eauth": self.web.default_eauth})

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
            session = await web.bounded(
                slots.pool, web.request_timeout,
                lambda: web.sessions.login(username, password, eauth),
                f"the external auth did not answer within {web.request_timeout:g} s",
                done=slots.take(keys),
            )  # fmt: skip
        except Unavailable as exc:
            self.refuse(503, str(exc), RETRY_AFTER)
            return
        if session is None:
            locked = web.throttle.failed(keys)
            reason = "authentication failed"
            if locked:
                reason += f"; logins for this user or from this address wait {locked:g} s"
            await web.audit_failed_login(username, address, reason)
            self.write_json(401, {"error": "authentication failed"})
            return
        web.throttle.succeeded(keys[0])
        self.write_json(200, {"token": session.token, **web.me(session.user)})


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
    async def post(self) -> None:
        try:
            await self.web.log_out(self.token())
        except Unavailable as exc:
            self.refuse(503, str(exc), RETRY_AFTER)
            return
        self.write_json(200, {"ok": True})


class Me(Base):
    async def get(self) -> None:
        session = await self.session()
        if session is not None:
            self.write_json(200, self.web.me(session.user))


JOB_PARAMS = tuple(JobsQuery.model_fields)  # the query parameters are the models' fields
FORMAT = "format"  # and, where a route also answers CSV, format=json|csv


class Jobs(Base):
    async def get(self) -> None:
        args = self.args((*JOB_PARAMS, FORMAT))
        if args is None:
            return
        answer = self.answer_format(args)
        if answer is None:
            return
        try:
            live = flag_arg("live", args.pop("live", False))
        except QueryError as exc:
            self.write_json(400, {"error": str(exc)})
            return
        if live:
            limit = args.get("limit", 50)
            if answer == "csv":
                await self.export("live_jobs", fixed=(limit,))
            else:
                await self.call("live_jobs", limit)
        elif answer == "csv":
            await self.export("jobs", args=args)
        else:
            await self.call("jobs", args)


class Job(Base):
    async def get(self, jid: str) -> None:
        args = self.args((FORMAT,))
        if args is None:
            return
        answer = self.answer_format(args)
        if answer == "csv":
            await self.export("job", jid, fixed=(jid,))
        elif answer is not None:
            await self.call("job", jid)


class Acting(Base):
    """A request that acts on minions (a kill, a re-run): one answered 503 after it had
    started may still be carried out, so that 503 carries no Retry-After inviting an
    automatic second try; one that never started carries it."""

    def failure(self, exc: Exception) -> tuple[int, dict[str, Any], float | None]:
        if isinstance(exc, Unavailable) and exc.started:
            return 503, {"error": str(exc)}, None
        return super().failure(exc)


class Kill(Acting):
    async def post(self, jid: str) -> None:
        await self.call("kill", jid, status=202)


# What a re-run's body looks like, for the refusals of one that is not (the fields are
# RerunArguments').
EXAMPLE_BODY = '{"minions": "failed"}'


class Rerun(Acting):
    """``POST /api/jobs/{jid}/rerun``: the service's rerun, with the JSON body's fields
    (:class:`~halite_core.api.RerunArguments`; an empty body asks for the defaults). The
    body's fields are checked by the service, after the permission, so that a refusal of
    either kind is audited as the runner's are."""

    async def post(self, jid: str) -> None:
        if self.request.query_arguments:
            # Never taken from the query string: a ?minions=all that was silently ignored
            # would re-run the job on other minions than the caller asked for.
            self.write_json(400, {"error": "a re-run takes no query parameters: send"
                                           f" {EXAMPLE_BODY} as the JSON body"})  # fmt: skip
            return
        given = _json_object(self.request.body)
        if given is None:
            self.write_json(400, {"error": "the body must be a JSON object (or empty, for"
                                           f" the defaults), such as {EXAMPLE_BODY}"})  # fmt: skip
            return
        await self.call("rerun", jid, given, status=202)

    def failure(self, exc: Exception) -> tuple[int, dict[str, Any], float | None]:
        # The master refused the publish, or did not answer it (Salt's client errors): a
        # 502 saying what the master said, rather than an internal error. The attempt is
        # in the audit log, with Salt's words.
        if isinstance(exc, PublishFailed):
            return 502, {"error": str(exc)}, None
        return super().failure(exc)


def _json_object(body: bytes | None) -> dict[str, Any] | None:
    """The JSON object of a request body (``{}`` for an empty one), or None for a body
    that is not one: not JSON, not UTF-8, or JSON other than an object."""
    if not body or not body.strip():
        return {}
    try:
        given = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        # ValueError: not JSON, or not UTF-8. RecursionError: arrays nested some thousands
        # deep exhaust the decoder's stack.
        return None
    return given if isinstance(given, dict) else None


def _no_constant(name: str) -> Any:
    # NaN, Infinity: Python's json takes them; JSON has no such values.
    raise ValueError(f"{name} is not JSON")


class Activity(Base):
    async def get(self) -> None:
        args = self.args(tuple(ActivityQuery.model_fields))
        if args is not None:
            await self.call("activity", kwargs=args)


class Timeline(Base):
    async def get(self) -> None:
        args = self.args(tuple(TimelineQuery.model_fields))
        if args is not None:
            await self.call("timeline", kwargs=args)


class Audit(Base):
    async def get(self) -> None:
        args = self.args(tuple(AuditFilter.model_fields))
        if args is not None:
            await self.call("audit", args)


class Fleet(Base):
    """``GET /api/minions``, ``/api/minions/{id}``, ``/api/states``, ``/api/states/{id}``: the
    fleet runners' ``method`` of the service, with the path's id and the query parameters
    of ``model``."""

    def initialize(self, app: WebApp, method: str, model: type[Arguments]) -> None:  # type: ignore[override]
        super().initialize(app)
        self.method = method
        self.params = tuple(model.model_fields)

    async def get(self, *path: str) -> None:
        args = self.args((*self.params, FORMAT))
        if args is None:
            return
        answer = self.answer_format(args)
        if answer == "csv":
            await self.export(self.method, *path, args=args)
        elif answer is not None:
            await self.call(self.method, *path, args)


class OpenAPI(Base):
    def get(self) -> None:
        self.write_json(200, SPEC)


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
