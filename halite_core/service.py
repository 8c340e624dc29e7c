"""What a caller may ask of halite, checked and audited: the one logic behind the runners
(``salt-run halite.*``) and the HTTP API.

Every method takes the caller's user name first, checks the permission it needs, records
what the audit log must hold (every kill, every refusal), and answers with plain data or
raises :class:`~halite_core.queries.QueryError` (a bad argument, an unknown job) or
:class:`~halite_core.permissions.Denied` (a missing permission). Arguments arrive as a
command line or a query string gives them: text, numbers, booleans; they are checked here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from halite_core import audit
from halite_core import kill as killing
from halite_core.bounded import DatabaseTimeout, call_within
from halite_core.jobcache import JobStore
from halite_core.permissions import Denied, Grants, Policy
from halite_core.queries import (
    JobFilter,
    QueryError,
    UnknownJob,
    activity,
    job_detail,
    list_jobs,
    timeline,
)

# Sends saltutil.kill_job <jid> to a list of minions; answers {minion: reply}.
KillSender = Callable[[str, list[str]], Mapping[str, Any]]


def parse_time(name: str, value: object) -> dt.datetime | None:
    """An ISO 8601 time, in UTC; without an offset it is read as UTC, as the index stores
    times. One whose UTC falls outside the years 1 to 9999 (``9999-12-31T23:59:59-23:59``)
    is refused here: the database drivers cannot bind it."""
    if value is None or value == "":
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(
            f"{name}: {value!r} is not an ISO 8601 date and time (e.g. 2026-11-28T12:00:00Z)"
        ) from exc
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    try:
        return moment.astimezone(dt.timezone.utc)
    except OverflowError as exc:
        raise QueryError(
            f"{name}: {value!r} is out of range: in UTC it is not within the years 1 to 9999"
        ) from exc


def text_arg(name: str, value: object) -> str | None:
    """Text as a command line or query string gives it: numbers (``user=1001``) are taken
    as text; lists, mappings and booleans are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QueryError(f"{name} must be text, not {type(value).__name__}")
    text = str(value)
    if "\x00" in text:
        # SQLite ends the text at the NUL (search=%00 matched every job); PostgreSQL
        # refuses it. No function, target, user or jid holds one.
        raise QueryError(f"{name} must not contain a NUL character")
    return text


def flag_arg(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise QueryError(f"{name} must be True or False, not {value!r}")


def _unknown(jid: str) -> UnknownJob:
    """What an unknown jid answers (as :func:`~halite_core.queries.job_detail` and
    :func:`~halite_core.kill.plan` word it); a job outside the caller's view answers it too."""
    return UnknownJob(f"no job with jid {jid} in the index")


def _given(**arguments: Any) -> dict[str, Any]:
    """The arguments a caller gave, for the audit log."""
    return {name: value for name, value in arguments.items() if value is not None}


class Service:
    def __init__(
        self,
        store: JobStore,
        policy: Policy,
        master_id: str | None = None,
        send_kill: KillSender | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.master_id = master_id
        self.send_kill = send_kill

    def close(self) -> None:
        """Commit what this service journalled (audit entries, kill marks), waiting a
        bounded time, and release the database."""
        self.store.close()

    # ------------------------------------------------------------------ checks and audit
    def grants(self, user: str | None) -> Grants:
        return self.policy.for_user(user)

    def _record(self, user: str | None, action: str, decision: str, **fields: Any) -> None:
        """Append to the audit log through the journal: never waits for the database, and
        survives one that is locked or away (spooled and replayed in order)."""
        self.store.record_audit(
            audit.entry(user=user, action=action, decision=decision, master_id=self.master_id,
                        **fields)
        )  # fmt: skip

    def _commit_own_writes(self) -> None:
        """Commit the audit entries this process journalled a moment ago, so that the log
        shows them, waiting at most ``read_timeout`` (a locked database: they show later)."""
        try:
            call_within(self.store.settings.read_timeout, self.store.flush)
        except DatabaseTimeout:
            pass

    def _deny(
        self, user: str | None, action: str, needed: str, arguments: Any, jid: str | None = None
    ) -> Denied:
        """Record a refused request; returns the exception to raise."""
        exc = Denied(user, needed)
        self._record(
            user, action, "deny", resource=needed.split(":", 1)[1], jid=jid,
            arguments=arguments, outcome={"error": str(exc)},
        )  # fmt: skip
        return exc

    def _deny_unseen(
        self,
        user: str | None,
        action: str,
        needed: str,
        arguments: Any,
        jid: str,
        told: QueryError | Denied,
    ) -> QueryError | Denied:
        """Record the refusal of a job ``user`` may not view; returns ``told``, what the
        same request for an unknown jid answers, so that the answer does not tell that the
        job exists nor what it runs (the audit log, behind view:audit:*, names it)."""
        self._record(
            user, action, "deny", resource=needed.split(":", 1)[1], jid=jid,
            arguments=arguments, outcome={"error": str(told), "lacks": needed},
        )  # fmt: skip
        return told

    def _deny_unseen_kill(
        self, user: str | None, grants: Grants, function: str, arguments: Any, jid: str
    ) -> QueryError | Denied:
        """A kill of a job ``user`` may not view: the answer an unknown jid gets (a
        denial of kill:job:* for a user who may kill nothing), audited as a denial."""
        told: QueryError | Denied = (
            _unknown(jid) if grants.may_any("kill", "job") else Denied(user, "kill:job:*")
        )
        return self._deny_unseen(user, "kill", f"view:job:{function}", arguments, jid, told)

    def login_failed(self, user: str, address: str | None, reason: str) -> None:
        """Record a refused login of the HTTP API: who, from where, why; never the
        password."""
        self._record(
            user, "login", "deny", arguments={"address": address}, outcome={"error": reason}
        )

    def view_scope(self, user: str | None, action: str, arguments: Any) -> tuple[str, ...] | None:
        """The function globs ``user`` may view (None: all); raises Denied for none."""
        scope = self.grants(user).job_scope("view")
        if scope == ():
            raise self._deny(user, action, "view:job:*", arguments)
        return scope

    # ------------------------------------------------------------------ reads
    def jobs(
        self,
        user: str | None,
        limit: object = 50,
        fun: object = None,
        target: object = None,
        user_filter: object = None,
        status: object = None,
        minion: object = None,
        search: object = None,
        start: object = None,
        end: object = None,
        include_system: object = False,
        cursor: object = None,
        master: object = None,
    ) -> dict[str, Any]:
        arguments = _given(
            limit=limit, fun=fun, target=target, user=user_filter, status=status,
            minion=minion, search=search, start=start, end=end,
            include_system=include_system, cursor=cursor, master=master,
        )  # fmt: skip
        scope = self.view_scope(user, "jobs", arguments)
        filters = JobFilter(
            fun=text_arg("fun", fun),
            target=text_arg("target", target),
            user=text_arg("user", user_filter),
            status=text_arg("status", status),
            minion=text_arg("minion", minion),
            search=text_arg("search", search),
            start=parse_time("start", start),
            end=parse_time("end", end),
            include_system=flag_arg("include_system", include_system),
            functions=scope,
            master=text_arg("master", master),
        )
        with self.store.db.read() as conn:
            return list_jobs(conn, filters, limit, text_arg("cursor", cursor))

    def job(self, user: str | None, jid: object) -> dict[str, Any]:
        arguments = {"jid": jid}
        grants = self.grants(user)
        if grants.job_scope("view") == ():
            raise self._deny(user, "job", "view:job:*", arguments)
        with self.store.db.read() as conn:
            detail = job_detail(conn, text_arg("jid", jid) or "")
        function = detail["function"] or ""
        if not grants.allows("view", "job", function):
            raise self._deny_unseen(
                user, "job", f"view:job:{function}", arguments, detail["jid"],
                _unknown(detail["jid"]),
            )  # fmt: skip
        detail["may_kill"] = grants.allows("kill", "job", function)
        return detail

    def activity(self, user: str | None, hours: object = 24) -> dict[str, Any]:
        scope = self.view_scope(user, "activity", {"hours": hours})
        with self.store.db.read() as conn:
            return activity(conn, hours, functions=scope)

    def timeline(
        self, user: str | None, window: object = "24h", group_by: object = "function"
    ) -> dict[str, Any]:
        scope = self.view_scope(user, "timeline", {"window": window, "group_by": group_by})
        with self.store.db.read() as conn:
            return timeline(conn, window, group_by, functions=scope)

    def audit(
        self,
        user: str | None,
        user_filter: object = None,
        action: object = None,
        decision: object = None,
        start: object = None,
        end: object = None,
        limit: object = 50,
        cursor: object = None,
    ) -> dict[str, Any]:
        arguments = _given(
            user=user_filter, action=action, decision=decision, start=start, end=end,
            limit=limit, cursor=cursor,
        )  # fmt: skip
        if not self.grants(user).allows("view", "audit", "*"):
            raise self._deny(user, "audit", "view:audit:*", arguments)
        self._commit_own_writes()
        with self.store.db.read() as conn:
            return audit.list_entries(
                conn, user=text_arg("user", user_filter), action=text_arg("action", action),
                decision=text_arg("decision", decision), start=parse_time("start", start),
                end=parse_time("end", end), limit=limit, cursor=text_arg("cursor", cursor),
            )  # fmt: skip

    # ------------------------------------------------------------------ kill
    def kill(self, user: str | None, jid: object) -> dict[str, Any]:
        """Signal the minions still running ``jid``; see :mod:`halite_core.kill`. The
        answer carries ``retcode: 1`` when no minion could be signalled."""
        arguments = {"jid": jid}
        grants = self.grants(user)
        try:
            with self.store.db.read() as conn:
                target = killing.plan(
                    conn, jid if isinstance(jid, str) else str(jid), self.store.journalled
                )
        except QueryError as exc:
            if isinstance(exc, killing.NothingToKill):
                # Said only to those who may kill that job: the message names its function.
                function = exc.function or ""
                if not grants.allows("view", "job", function):
                    raise self._deny_unseen_kill(
                        user, grants, function, arguments, str(jid)
                    ) from None
                if not grants.allows("kill", "job", function):
                    raise self._deny(
                        user, "kill", f"kill:job:{function}", arguments, jid=str(jid)
                    ) from exc
            elif not grants.may_any("kill", "job"):
                raise self._deny(user, "kill", "kill:job:*", arguments) from exc
            self._record(user, "kill", "allow", resource="job", jid=str(jid)[:64],
                         arguments=arguments, outcome={"error": str(exc)})  # fmt: skip
            raise
        function = target["function"] or ""
        if not grants.allows("view", "job", function):
            # A job one may not view cannot be killed: its answer would name it.
            raise self._deny_unseen_kill(user, grants, function, arguments, target["jid"])
        if not grants.allows("kill", "job", function):
            raise self._deny(user, "kill", f"kill:job:{function}", arguments, jid=target["jid"])
        if self.send_kill is None:
            raise QueryError("this halite cannot reach the minions to kill a job")
        outcome: dict[str, Any] = {}
        try:
            replies = self.send_kill(target["jid"], target["minions"])
            results = killing.outcomes(target["minions"], replies or {})
            signalled = [m for m, r in results.items() if r["outcome"] == killing.SIGNALLED]
            # A list, not a mapping by minion: the audit log's redaction of secret-looking
            # keys must not hide minions named, say, token-db.
            outcome = {
                "signalled": signalled,
                "minions": [{"minion": m, **r} for m, r in results.items()],
            }
            self.store.mark_killed(target["jid"], signalled)
            # The marks are committed with the next batch: the job is complete once every
            # minion still running it has confirmed the signal.
            status = "complete" if set(signalled) == set(target["minions"]) else "running"
        except Exception as exc:
            # Every kill is audited, also one that failed half-way (the signal may be out).
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._record(user, "kill", "allow", resource=f"job:{function}", jid=target["jid"],
                         arguments=arguments, outcome=outcome)  # fmt: skip
        # The marks and the entry are journalled: commit them now if the database takes
        # them within read_timeout, so that the job read right after shows the kill.
        self._commit_own_writes()
        answer: dict[str, Any] = {
            "jid": target["jid"],
            "function": function,
            "signalled": signalled,
            "minions": results,
            "status": status,
        }
        if not signalled:
            answer["retcode"] = 1
        return answer
