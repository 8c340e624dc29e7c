"""The OpenAPI document of halite's HTTP API, served at ``/api/openapi.json``.

A test runs schemathesis against the running server with this document, so the two
cannot drift apart.
"""

from __future__ import annotations

from typing import Any


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}  # fmt: skip # noqa: E501


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string", "maxLength": 1024},
    }


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
        "halite's database (for a kill or a live listing: or the minions) did not answer"
        " within the request's bound."
    ),
}

JOB_FILTERS = [
    _query("limit", "Jobs per page, 1-500.", {"type": "integer", "minimum": 1, "maximum": 500}),
    _query("fun", "Shell glob on the function (`*`, `?`)."),
    _query("target", "Shell glob on the target."),
    _query("user", "The publishing user, exactly."),
    _query("status", "running or complete.", {"type": "string", "enum": ["running", "complete"]}),
    _query("minion", "Jobs that targeted or returned from this minion."),
    _query("search", "Start of the jid, or text in the function, target or user."),
    _query(
        "start", "ISO 8601; jobs started at or after.", {"type": "string", "format": "date-time"}
    ),  # noqa: E501
    _query("end", "ISO 8601; jobs started before.", {"type": "string", "format": "date-time"}),
    _query("include_system", "Also bookkeeping jobs (system_functions).", {"type": "boolean"}),
    _query("master", "Jobs published by this master id."),
    _query("cursor", "The `next` of the previous page."),
    _query(
        "live",
        "Bypass the index: ask the master and the minions (at most 500 jobs).",
        {"type": "boolean"},
    ),  # fmt: skip
]

JID = {
    "name": "jid",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
    "description": "A Salt job id (20 digits, optional _pid).",
}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "halite",
        "version": "1",
        "description": (
            "Salt's job history from halite's index. Log in with Salt's external auth, then "
            "send the token in the X-Auth-Token header. Field meanings: docs/runners.md."
        ),
    },
    "components": {
        "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "missing": {"type": "string"}},
            },
            "Me": {
                "type": "object",
                "required": ["user", "roles", "may"],
                "properties": {
                    "user": {"type": "string"},
                    "token": {"type": "string"},
                    "roles": {"type": "array", "items": {"type": "string"}},
                    "may": {
                        "type": "object",
                        "properties": {
                            "view": {"type": "boolean"},
                            "kill": {"type": "boolean"},
                            "audit": {"type": "boolean"},
                        },
                    },
                },
            },
            "Job": {
                "type": "object",
                "required": ["jid", "function", "status", "start_time", "minions"],
                "properties": {
                    "jid": {"type": "string"},
                    "function": {"type": "string", "nullable": True},
                    "target": {"type": "string", "nullable": True},
                    "target_type": {"type": "string", "nullable": True},
                    "user": {"type": "string", "nullable": True},
                    "start_time": {"type": "string"},
                    "end_time": {"type": "string", "nullable": True},
                    "status": {"type": "string", "enum": ["running", "complete", "unknown"]},
                    "minions": {"type": "object"},
                    "system": {"type": "boolean"},
                    "master_id": {"type": "string", "nullable": True},
                },
            },
            "JobPage": {
                "type": "object",
                "required": ["jobs", "next"],
                "properties": {
                    "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                    "next": {"type": "string", "nullable": True},
                    "live": {"type": "boolean"},
                },
            },
            "JobDetail": {
                "allOf": [
                    {"$ref": "#/components/schemas/Job"},
                    {
                        "type": "object",
                        "required": ["minion_results", "arguments", "kwargs"],
                        "properties": {
                            "arguments": {"type": "array", "nullable": True},
                            "kwargs": {"type": "object", "nullable": True},
                            "minion_results": {"type": "array", "items": {"type": "object"}},
                            "states": {"type": "object"},
                            "may_kill": {"type": "boolean"},
                        },
                    },
                ]
            },
            "KillResult": {
                "type": "object",
                "required": ["jid", "signalled", "minions", "status"],
                "properties": {
                    "jid": {"type": "string"},
                    "function": {"type": "string", "nullable": True},
                    "signalled": {"type": "array", "items": {"type": "string"}},
                    "minions": {"type": "object"},
                    "status": {"type": "string"},
                    "retcode": {"type": "integer"},
                },
            },
            "Activity": {
                "type": "object",
                "required": ["hours", "total", "running"],
                "properties": {
                    "hours": {"type": "array", "items": {"type": "object"}},
                    "total": {"type": "integer"},
                    "running": {"type": "integer"},
                },
            },
            "Timeline": {
                "type": "object",
                "required": ["window", "group_by", "rows", "truncated"],
                "properties": {
                    "window": {"type": "string"},
                    "group_by": {"type": "string"},
                    "rows": {"type": "array", "items": {"type": "object"}},
                    "truncated": {"type": "boolean"},
                },
            },
            "AuditPage": {
                "type": "object",
                "required": ["entries", "next"],
                "properties": {
                    "entries": {"type": "array", "items": {"type": "object"}},
                    "next": {"type": "string", "nullable": True},
                },
            },
        },
    },
    "security": [{"token": []}],
    "paths": {
        "/api/login": {
            "post": {
                "summary": "Log in with Salt's external auth; answers a session token.",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["username", "password"],
                                "properties": {
                                    "username": {"type": "string"},
                                    "password": {"type": "string"},
                                    "eauth": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _ok("Logged in.", "Me"),
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
            }
        },
        "/api/logout": {
            "post": {
                "summary": "End the session.",
                "responses": {
                    "200": {
                        "description": "Logged out.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },  # noqa: E501
            }
        },
        "/api/me": {
            "get": {
                "summary": "Who the session is, and what they may do.",
                "responses": {"200": _ok("The user.", "Me"), "401": AUTHED["401"]},
            }
        },
        "/api/jobs": {
            "get": {
                "summary": "Jobs newest first, filtered and paged (as salt-run halite.jobs).",
                "parameters": JOB_FILTERS,
                "responses": {
                    "200": _ok("One page.", "JobPage"),
                    "429": _retry(
                        "live=true: a live listing of this user's is still running, or too"
                        " many are."
                    ),
                    **AUTHED,
                },
            }
        },
        "/api/jobs/activity": {
            "get": {
                "summary": "Jobs per hour and running now.",
                "parameters": [
                    _query("hours", "1-168.", {"type": "integer", "minimum": 1, "maximum": 168})
                ],  # noqa: E501
                "responses": {"200": _ok("Counts.", "Activity"), **AUTHED},
            }
        },
        "/api/jobs/timeline": {
            "get": {
                "summary": "Jobs as bars, grouped by function or user.",
                "parameters": [
                    _query(
                        "window",
                        "1h, 4h, 24h or 7d.",
                        {"type": "string", "enum": ["1h", "4h", "24h", "7d"]},
                    ),  # noqa: E501
                    _query(
                        "group_by",
                        "function or user.",
                        {"type": "string", "enum": ["function", "user"]},
                    ),  # noqa: E501
                ],
                "responses": {"200": _ok("Rows of bars.", "Timeline"), **AUTHED},
            }
        },
        "/api/jobs/stream": {
            "get": {
                "summary": "Server-Sent Events: new, return and complete, as they happen.",
                "responses": {
                    "200": {
                        "description": "An event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },  # noqa: E501
                    "401": AUTHED["401"],
                    "403": AUTHED["403"],
                },
            }
        },
        "/api/jobs/{jid}": {
            "get": {
                "summary": "One job minion by minion, highstates parsed (as halite.job).",
                "parameters": [JID],
                "responses": {
                    "200": _ok("The job.", "JobDetail"),
                    "404": _error("No such job."),
                    **AUTHED,
                },
            }
        },
        "/api/jobs/{jid}/kill": {
            "post": {
                "summary": "Kill a running job on the minions still running it.",
                "parameters": [JID],
                "responses": {
                    "202": _ok("The minions were asked; the outcome per minion.", "KillResult"),
                    "404": _error("No such job."),
                    "429": _retry(
                        "Kills of this user's are still waiting for their minions, or too many are."
                    ),
                    **AUTHED,
                    "503": _retry(
                        "No answer in time. A kill that had started may still be carried out"
                        " (see the audit log); one that never got a thread was not carried"
                        " out, and `error` says so."
                    ),
                },
            }
        },
        "/api/audit": {
            "get": {
                "summary": "The audit log, newest first.",
                "parameters": [
                    _query("user", "Who asked."),
                    _query("action", "kill, login, jobs, job, activity, timeline, stream, audit."),
                    _query(
                        "decision", "allow or deny.", {"type": "string", "enum": ["allow", "deny"]}
                    ),  # noqa: E501
                    _query("start", "ISO 8601.", {"type": "string", "format": "date-time"}),
                    _query("end", "ISO 8601.", {"type": "string", "format": "date-time"}),
                    _query("limit", "1-500.", {"type": "integer", "minimum": 1, "maximum": 500}),
                    _query("cursor", "The `next` of the previous page."),
                ],
                "responses": {"200": _ok("One page.", "AuditPage"), **AUTHED},
            }
        },
    },
}
