"""The OpenAPI document of halite's HTTP API, served at ``/api/openapi.json``.

Generated, not written: the answers' schemas come from the typed answers of
:mod:`halite_core.api` and each route's query parameters from the fields of the model
its handler parses them with (the same models the runners take their arguments from).
A request body's schema comes from its model too (a re-run's: the fields of
:class:`~halite_core.api.RerunArguments`, as ``salt-run halite.rerun`` takes them).
Only the routes, their summaries, their status codes and the ``format`` parameter of
the routes that also answer CSV (:mod:`halite_core.export`) are written here. A test runs
schemathesis against the running server with this document, so the two cannot drift
apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter
from typing_extensions import NotRequired, TypedDict

from halite_core.api import (
    Activity,
    ActivityQuery,
    AuditFilter,
    AuditPage,
    JobDetail,
    JobsQuery,
    KillOutcome,
    MinionHistory,
    MinionQuery,
    MinionsPage,
    MinionsQuery,
    Page,
    RerunArguments,
    RerunOutcome,
    StateHistory,
    StateQuery,
    StatesPage,
    StatesQuery,
    Timeline,
    TimelineQuery,
)
from halite_core.export import MAX_ROWS

REF = "#/components/schemas/{model}"


class Error(TypedDict):
    """Every refusal and failure: what went wrong; ``missing`` names the permission a
    403 lacks."""

    error: str
    missing: NotRequired[str]


class May(TypedDict):
    """Whether the user may view some jobs, kill some, re-run some, and read the audit
    log (a job's own ``may_kill`` and ``may_rerun`` say it for that job)."""

    view: bool
    kill: bool
    rerun: bool
    audit: bool


class Me(TypedDict):
    """Who the session is and what they may do; a login answers it with the token."""

    user: str
    token: NotRequired[str]
    roles: list[str]
    may: May


class LoginInfo(TypedDict):
    """How to log in here: the external auth a login uses when it names none (the
    engine's ``http: eauth``); the login form offers it."""

    eauth: str


class Credentials(TypedDict):
    """A login's JSON body; ``eauth`` defaults to the engine's ``http: eauth``."""

    username: str
    password: str
    eauth: NotRequired[str]


# What the routes answer, and (generated with them) every schema they refer to.
ANSWERS = (Error, Me, LoginInfo, Credentials, Page, JobDetail, KillOutcome, RerunOutcome, Activity,
           Timeline, AuditPage, MinionsPage, MinionHistory, StatesPage,
           StateHistory)  # fmt: skip
# The request bodies that are the models the service parses them with: their schemas as
# they are taken (validation), not as they would be answered.
BODIES: tuple[type[BaseModel], ...] = (RerunArguments,)


def components() -> dict[str, Any]:
    """Every answer's and request body's schema, and the schemas they refer to, by class
    name."""
    _, definitions = TypeAdapter.json_schemas(
        [*((kind, "serialization", TypeAdapter(kind)) for kind in ANSWERS),
         *((kind, "validation", TypeAdapter(kind)) for kind in BODIES)],
        ref_template=REF,
    )  # fmt: skip
    return dict(definitions["$defs"])


def parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The model's fields as optional query parameters: a field that may be None is a
    parameter that may be left out."""
    properties = model.model_json_schema(ref_template=REF)["properties"]
    listed = []
    for name in model.model_fields:
        schema = dict(properties[name])
        schema.pop("title", None)
        description = schema.pop("description", "")
        branches = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
        if len(branches) == 1:
            schema.update(branches[0])
        elif branches:
            schema["anyOf"] = branches
        if schema.get("default") is None:
            schema.pop("default", None)
        listed.append(
            {"name": name, "in": "query", "required": False, "description": description,
             "schema": schema}
        )  # fmt: skip
    return listed


def _content(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {media: {"schema": schema}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=name)}


def _answer(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": _content(_ref(schema))}


def _error(description: str) -> dict[str, Any]:
    return _answer(description, "Error")


def _retry(description: str) -> dict[str, Any]:
    """An error the caller may retry after the ``Retry-After`` header's seconds."""
    return {
        **_error(description),
        "headers": {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
        },
    }


AUTHED = {
    "401": _error("No session: log in first."),
    "403": _error("The user lacks the permission named in `missing`."),
    "400": _error(
        "A bad argument (or a query parameter given more than once); `error` says which and why."
    ),
    "503": _retry(
        "halite's database (for a kill or a live listing: or the minions; for a re-run: or"
        " the master) did not answer within the request's bound."
    ),
}


def _path(name: str, longest: int, description: str) -> dict[str, Any]:
    """A parameter in the route's path."""
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "maxLength": longest}}  # fmt: skip


FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": (
        "`csv`: the rows as CSV (`text/csv`, a header row, an attachment), every row that"
        f" matches read page by page up to {MAX_ROWS:,} rows, or one page when `limit` is"
        " given; a last row whose one cell starts with `# halite: ` says when rows were"
        " left out, and the cursor to go on from. `json` (the default): the JSON answer."
        " Without it, `Accept: text/csv` (preferred to application/json) asks for CSV."
        " Columns: docs/http.md."
    ),
    "schema": {"type": "string", "enum": ["json", "csv"]},
}


def _exported(description: str, schema: str) -> dict[str, Any]:
    """A 200 of a route that also answers CSV (``format=csv``)."""
    return {
        "description": f"{description} As CSV with format=csv or Accept: text/csv.",
        "content": {**_content(_ref(schema)), **_content({"type": "string"}, "text/csv")},
        "headers": {
            "Content-Disposition": {
                "description": 'CSV only: `attachment; filename="halite-....csv"`.',
                "required": False,
                "schema": {"type": "string"},
            }
        },
    }


JID = _path("jid", 64, "A Salt job id (20 digits, optional _pid).")
MINION = _path("minion", 1024, "A minion id.")
STATE_ID = _path("state_id", 1024, "A state's id (its `__id__`, as `/api/states` shows it).")


def _get(summary: str, answers: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, **more, "responses": answers}}


def paths() -> dict[str, Any]:
    return {
        "/api/login": {
            "get": {
                "summary": "How to log in: the external auth a login uses by default.",
                "security": [],
                "responses": {"200": _answer("The default eauth.", "LoginInfo")},
            },
            "post": {
                "summary": "Log in with Salt's external auth; answers a session token.",
                "security": [],
                "requestBody": {"required": True, "content": _content(_ref("Credentials"))},
                "responses": {
                    "200": _answer("Logged in.", "Me"),
                    "400": _error("Not a login request."),
                    "401": _error(
                        "Authentication failed: a wrong password, or a user not listed under"
                        " external_auth for that eauth."
                    ),
                    "429": _retry(
                        "Too many failed logins for this user name, or for many names from"
                        " this address (it backs off), or too many logins waiting for the"
                        " external auth."
                    ),
                    "503": _retry("The external auth did not answer in time."),
                },
            },
        },
        "/api/logout": {
            "post": {
                "summary": "End the session.",
                "responses": {
                    "200": {"description": "Logged out.", "content": _content({"type": "object"})}
                },
            }
        },
        "/api/me": _get(
            "Who the session is, and what they may do.",
            {"200": _answer("The user.", "Me"), "401": AUTHED["401"]},
        ),
        "/api/jobs": _get(
            "Jobs newest first, filtered and paged (as salt-run halite.jobs).",
            {
                "200": _exported("One page.", "Page"),
                "429": _retry(
                    "live=true: a live listing of this user's is still running, or too many are."
                ),
                **AUTHED,
            },
            parameters=[*parameters(JobsQuery), FORMAT],
        ),
        "/api/jobs/activity": _get(
            "Jobs per hour and running now (as salt-run halite.activity).",
            {"200": _answer("Counts.", "Activity"), **AUTHED},
            parameters=parameters(ActivityQuery),
        ),
        "/api/jobs/timeline": _get(
            "Jobs as bars, grouped by function or user (as salt-run halite.timeline).",
            {"200": _answer("Rows of bars.", "Timeline"), **AUTHED},
            parameters=parameters(TimelineQuery),
        ),
        "/api/jobs/stream": _get(
            "Server-Sent Events: new, return and complete, as they happen.",
            {
                "200": {
                    "description": "An event stream.",
                    "content": _content({"type": "string"}, "text/event-stream"),
                },
                "401": AUTHED["401"],
                "403": AUTHED["403"],
            },
        ),
        "/api/jobs/{jid}": _get(
            "One job minion by minion, highstates parsed (as salt-run halite.job).",
            {"200": _exported("The job.", "JobDetail"), "404": _error("No such job."), **AUTHED},
            parameters=[JID, FORMAT],
        ),
        "/api/jobs/{jid}/kill": {
            "post": {
                "summary": "Kill a running job on the minions still running it.",
                "parameters": [JID],
                "responses": {
                    "202": _answer(
                        "The minions were asked; the outcome per minion.", "KillOutcome"
                    ),
                    "404": _error("No such job."),
                    "429": _retry(
                        "Kills of this user's are still waiting for their minions, or too many are."
                    ),
                    **AUTHED,
                    "503": _retry(
                        "No answer in time. A kill that had started may still be carried out"
                        " (see the audit log): that answer has no Retry-After. One that never"
                        " got a thread was not carried out, and `error` says so."
                    ),
                },
            }
        },
        "/api/jobs/{jid}/rerun": {
            "post": {
                "summary": (
                    "Run a complete job again, as the caller, on its failed minions (the"
                    " default), those that never returned, all of them or named ones (as"
                    " salt-run halite.rerun); needs run:job:<function>."
                ),
                "parameters": [JID],
                "requestBody": {
                    "required": False,
                    "description": "Which minions; an empty body asks for the defaults.",
                    "content": _content(_ref("RerunArguments")),
                },
                "responses": {
                    "202": _answer(
                        "Published: the new job's jid and the minions the master published"
                        " it to; it runs on. GET /api/jobs/{jid} of either job shows the"
                        " link (`rerun_of`, `reruns`).",
                        "RerunOutcome",
                    ),
                    "404": _error("No such job."),
                    "429": _retry(
                        "Re-runs of this user's are still waiting for the master, or too many are."
                    ),
                    "502": _error(
                        "The master refused the publish or did not answer it; `error` says"
                        " what Salt said."
                    ),
                    **AUTHED,
                    "400": _error(
                        "A body that is not a JSON object, an unknown field, minions that"
                        " are not the job's, a query parameter, or a job that cannot be"
                        " re-run (still running, a runner or wheel job, arguments not"
                        " stored as published, no minion left to run it on); `error` says"
                        " which."
                    ),
                    "503": _retry(
                        "No answer in time. A re-run that had started may still be published"
                        " (see the audit log and the job list): that answer has no"
                        " Retry-After. One that never got a thread was not, and `error` says"
                        " so."
                    ),
                },
            }
        },
        "/api/audit": _get(
            "The audit log, newest first (as salt-run halite.audit).",
            {"200": _answer("One page.", "AuditPage"), **AUTHED},
            parameters=parameters(AuditFilter),
        ),
        "/api/minions": _get(
            "Every minion that returned, failing first (as salt-run halite.minions).",
            {"200": _exported("One page.", "MinionsPage"), **AUTHED},
            parameters=[*parameters(MinionsQuery), FORMAT],
        ),
        "/api/minions/{minion}": _get(
            "One minion's jobs, newest first (as salt-run halite.minion).",
            {
                "200": _exported("One page.", "MinionHistory"),
                "404": _error("No such minion."),
                **AUTHED,
            },
            parameters=[MINION, *parameters(MinionQuery), FORMAT],
        ),  # fmt: skip
        "/api/states": _get(
            "The states failing (or changing) across the fleet (as salt-run halite.states).",
            {"200": _exported("One page.", "StatesPage"), **AUTHED},
            parameters=[*parameters(StatesQuery), FORMAT],
        ),
        "/api/states/{state_id}": _get(
            "One state's failed and changed runs (as salt-run halite.state).",
            {"200": _exported("One page.", "StateHistory"), **AUTHED},
            parameters=[STATE_ID, *parameters(StateQuery), FORMAT],
        ),
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "halite",
            "version": "1",
            "description": (
                "Salt's job history from halite's index. Log in with Salt's external auth,"
                " then send the token in the X-Auth-Token header. Field meanings:"
                " docs/runners.md."
            ),
        },
        "components": {
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}
            },
            "schemas": components(),
        },
        "security": [{"token": []}],
        "paths": paths(),
    }


# Built once, when the HTTP API is imported: it does not change while the process runs.
SPEC: dict[str, Any] = document()
