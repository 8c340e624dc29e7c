"""What a caller may ask of halite, checked and audited: the one logic behind the runners
(``salt-run halite.*``) and the HTTP API.

Every method takes the caller's user name first, checks the permission it needs, records
what the audit log must hold (every kill, every refusal), and answers with the typed
answers of :mod:`halite_core.api` (plain dicts and lists) or raises
:class:`~halite_core.queries.QueryError` (a bad argument, an unknown job) or
:class:`~halite_core.permissions.Denied` (a missing permission). Arguments arrive as a
command line or a query string gives them: text, numbers, booleans; the models of
:mod:`halite_core.api` check them, after the permission.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, cast

from halite_core import audit, fleet, jids
from halite_core import kill as killing
from halite_core import rerun as rerunning
from halite_core.api import (
    Activity,
    Arguments,
    AuditFilter,
    AuditPage,
    JobDetail,
    JobFilter,
    KillOutcome,
    MinionHistory,
    MinionKill,
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
    flag_arg,
    parse_time,
    text_arg,
)
from halite_core.bounded import DatabaseTimeout, call_within
from halite_core.jobcache import JobStore
from halite_core.permissions import Denied, Grants, Policy
from halite_core.queries import (
    QueryError,
    UnknownJob,
    activity,
    job_detail,
    list_jobs,
    timeline,
)
from halite_core.states import JobStatus

# The argument checks live with the models; these names stay importable from here.
__all__ = ["KillSender", "RerunSender", "Service", "flag_arg", "parse_time", "text_arg"]

# Sends saltutil.kill_job <jid> to a list of minions as the user; answers {minion: reply}.
KillSender = Callable[[str, list[str], str], Mapping[str, Any]]
# Publishes a re-run's plan as the user; answers the new job's {"jid", "minions"} as the
# master took it, or raises what the master said.
RerunSender = Callable[[rerunning.Plan, str], Mapping[str, Any]]
log = logging.getLogger(__name__)
A = TypeVar("A", bound=Arguments)
NOTHING: Mapping[str, object] = MappingProxyType({})  # no arguments given
# The fleet's state views need the right to view every state job (see halite_core.fleet).
STATE_JOBS = "state.*"


def _unknown(jid: str) -> UnknownJob:
    """What an unknown jid answers (as :func:`~halite_core.queries.job_detail` and
    :func:`~halite_core.kill.plan` word it); a job outside the caller's view answers it too."""
    return UnknownJob(f"no job with jid {jid} in the index")


def _given(asked: Arguments | Mapping[str, object]) -> dict[str, Any]:
    """The arguments a caller gave, for the audit log."""
    if isinstance(asked, Arguments):
        return asked.given()
    return {name: value for name, value in asked.items() if value is not None}


def _merged(
    asked: A | Mapping[str, object], given: Mapping[str, object]
) -> A | Mapping[str, object]:
    if not given:
        return asked
    if isinstance(asked, Arguments):
        raise TypeError("give a filter or arguments, not both")
    return {**asked, **given}


def _checked(model: type[A], asked: A | Mapping[str, object]) -> A:
    return asked if isinstance(asked, model) else model.parse(cast(Mapping[str, object], asked))


class Service:
    def __init__(
        self,
        store: JobStore,
        policy: Policy,
        master_id: str | None = None,
        send_kill: KillSender | None = None,
        send_rerun: RerunSender | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.master_id = master_id
        self.send_kill = send_kill
        self.send_rerun = send_rerun

    def close(self) -> None:
        """Commit what this service journalled (audit entries, kill marks), waiting at
        most ``read_timeout`` (what is left stays journalled for recovery). The database
        is not disposed: its engine is shared by every store of the process."""
        self._commit_own_writes()

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
        jid: str | None,
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
        asked: JobFilter | Mapping[str, object] = NOTHING,
        /,
        **given: object,
    ) -> Page:
        """A page of jobs. ``asked`` is a filter, or the arguments as a caller gave them
        (a mapping, or keywords: ``jobs("root", user="bob")``), checked after the
        permission (a refusal is audited with what was asked)."""
        asked = _merged(asked, given)
        scope = self.view_scope(user, "jobs", _given(asked))
        filters = _checked(JobFilter, asked)
        with self.store.views.read() as conn:
            return list_jobs(conn, filters, functions=scope)

    def job(self, user: str | None, jid: object) -> JobDetail:
        arguments = {"jid": jid}
        grants = self.grants(user)
        if grants.job_scope("view") == ():
            raise self._deny(user, "job", "view:job:*", arguments)
        with self.store.views.read() as conn:
            detail = job_detail(conn, text_arg("jid", jid) or "")
        function = detail["function"] or ""
        if not grants.allows("view", "job", function):
            raise self._deny_unseen(
                user, "job", f"view:job:{function}", arguments, detail["jid"],
                _unknown(detail["jid"]),
            )  # fmt: skip
        detail["may_kill"] = grants.allows("kill", "job", function)
        # A runner or wheel job ran on the master: there is nothing to re-run on minions.
        detail["may_rerun"] = grants.allows("run", "job", function) and rerunning.on_minions(
            function
        )
        return detail

    # ------------------------------------------------------------------ the fleet
    def _state_runs_visible(self, user: str | None) -> bool:
        """Whether ``user`` may view every state job: the fleet's state views need it."""
        return self.grants(user).allows("view", "job", STATE_JOBS)

    def _need_state_runs(self, user: str | None, action: str, arguments: Any) -> None:
        self.view_scope(user, action, arguments)
        if not self._state_runs_visible(user):
            raise self._deny(user, action, f"view:job:{STATE_JOBS}", arguments)

    def minions(
        self,
        user: str | None,
        asked: MinionsQuery | Mapping[str, object] = NOTHING,
        /,
        **given: object,
    ) -> MinionsPage:
        """A page of minions, failing first; see :func:`halite_core.fleet.minions`."""
        asked = _merged(asked, given)
        arguments = _given(asked)
        scope = self.view_scope(user, "minions", arguments)
        query = _checked(MinionsQuery, asked)
        visible = self._state_runs_visible(user)
        if query.failing and not visible:
            raise self._deny(user, "minions", f"view:job:{STATE_JOBS}", arguments)
        with self.store.views.read() as conn:
            return fleet.minions(conn, query, functions=scope, states_visible=visible)

    def minion(
        self,
        user: str | None,
        minion: object,
        asked: MinionQuery | Mapping[str, object] = NOTHING,
        /,
        **given: object,
    ) -> MinionHistory:
        """One minion's jobs, newest first; see :func:`halite_core.fleet.minion_history`."""
        asked = _merged(asked, given)
        arguments = {"minion": minion, **_given(asked)}
        scope = self.view_scope(user, "minion", arguments)
        query = _checked(MinionQuery, asked)
        with self.store.views.read() as conn:
            try:
                return fleet.minion_history(
                    conn, minion, query, functions=scope,
                    states_visible=self._state_runs_visible(user),
                )  # fmt: skip
            except fleet.UnknownMinion as exc:
                if scope is None or not fleet.known_minion(conn, str(minion), None):
                    raise
                # A minion that returned only for jobs out of the caller's view: answered
                # as an unknown one, the refusal audited (as a job out of view is).
                raise self._deny_unseen(
                    user, "minion", "view:job:*", arguments, None, exc
                ) from None

    def states(
        self,
        user: str | None,
        asked: StatesQuery | Mapping[str, object] = NOTHING,
        /,
        **given: object,
    ) -> StatesPage:
        """The states failing (or changing) across the fleet; see
        :func:`halite_core.fleet.failing_states`."""
        asked = _merged(asked, given)
        self._need_state_runs(user, "states", _given(asked))
        query = _checked(StatesQuery, asked)
        with self.store.views.read() as conn:
            return fleet.failing_states(conn, query)

    def state(
        self,
        user: str | None,
        state_id: object,
        asked: StateQuery | Mapping[str, object] = NOTHING,
        /,
        **given: object,
    ) -> StateHistory:
        """One state's failed and changed runs; see :func:`halite_core.fleet.state_history`."""
        asked = _merged(asked, given)
        self._need_state_runs(user, "state", {"state_id": state_id, **_given(asked)})
        query = _checked(StateQuery, asked)
        with self.store.views.read() as conn:
            return fleet.state_history(conn, state_id, query)

    def activity(self, user: str | None, hours: object = 24) -> Activity:
        scope = self.view_scope(user, "activity", {"hours": hours})
        with self.store.views.read() as conn:
            return activity(conn, hours, functions=scope)

    def timeline(
        self, user: str | None, window: object = "24h", group_by: object = "function"
    ) -> Timeline:
        scope = self.view_scope(user, "timeline", {"window": window, "group_by": group_by})
        with self.store.views.read() as conn:
            return timeline(conn, window, group_by, functions=scope)

    def audit(
        self,
        user: str | None,
        asked: AuditFilter | Mapping[str, object] = NOTHING,
        /,
        **given: object,
    ) -> AuditPage:
        """A page of the audit log; ``asked`` and ``given`` as for :meth:`jobs`."""
        asked = _merged(asked, given)
        if not self.grants(user).allows("view", "audit", "*"):
            raise self._deny(user, "audit", "view:audit:*", _given(asked))
        filters = _checked(AuditFilter, asked)
        self._commit_own_writes()
        with self.store.db.read() as conn:
            entries = audit.list_entries(
                conn, user=filters.user, action=filters.action, decision=filters.decision,
                start=filters.start, end=filters.end, limit=filters.limit, cursor=filters.cursor,
            )  # fmt: skip
        return cast(AuditPage, entries)

    # ------------------------------------------------------------------ kill
    def kill(self, user: str | None, jid: object) -> KillOutcome:
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
            replies = self.send_kill(target["jid"], target["minions"], user or "")
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
            done = set(signalled) == set(target["minions"])
            status = JobStatus.COMPLETE.value if done else JobStatus.RUNNING.value
        except Exception as exc:
            # Every kill is audited, also one that failed half-way (the signal may be out).
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._record(user, "kill", "allow", resource=f"job:{function}", jid=target["jid"],
                         arguments=arguments, outcome=outcome)  # fmt: skip
        # The marks and the entry are journalled: commit them now if the database takes
        # them within read_timeout, so that the job read right after shows the kill (from
        # the primary: a replica may not have it yet).
        self._commit_own_writes()
        self.store.read_own_writes()
        answer: KillOutcome = {
            "jid": target["jid"],
            "function": function,
            "signalled": signalled,
            "minions": cast(dict[str, MinionKill], results),
            "status": cast(Any, status),
        }
        if not signalled:
            answer["retcode"] = 1
        return answer

    # ------------------------------------------------------------------ rerun
    def rerun(
        self,
        user: str | None,
        jid: object,
        asked: RerunArguments | Mapping[str, object] = NOTHING,
        /,
        **given: object,
    ) -> RerunOutcome:
        """Publish job ``jid`` again, as ``user``, to the minions ``asked`` names (by
        default those that failed it or never returned); see :mod:`halite_core.rerun`.
        Needs ``view:job:`` and ``run:job:`` of the job's function; every rerun, allowed
        or refused, is audited. The new job records the one it runs again."""
        asked = _merged(asked, given)
        # The jid last: a body's own "jid" field must not stand for the job asked for.
        arguments = {**_given(asked), "jid": jid}
        grants = self.grants(user)
        jid_text = str(jid)[:64]
        if not grants.may_any("run", "job"):
            # The jid asked for is recorded: the log tells who tried to re-run which job.
            raise self._deny(user, "rerun", "run:job:*", arguments, jid=jid_text)
        try:
            choice = _checked(RerunArguments, asked)
            with self.store.db.read() as conn:
                job = rerunning.find(conn, jid if isinstance(jid, str) else str(jid))
        except QueryError as exc:
            self._record(user, "rerun", "allow", resource="job", jid=jid_text,
                         arguments=arguments, outcome={"error": str(exc)})  # fmt: skip
            raise
        function = job.function or ""
        if not grants.allows("view", "job", function):
            # A job one may not view cannot be re-run: the answer would tell it exists.
            raise self._deny_unseen(
                user, "rerun", f"view:job:{function}", arguments, job.jid, _unknown(job.jid)
            )
        if not grants.allows("run", "job", function):
            raise self._deny(user, "rerun", f"run:job:{function}", arguments, jid=job.jid)
        resource = f"job:{function}"
        try:
            plan = rerunning.plan(job, choice.minions)
            if self.send_rerun is None:
                raise QueryError("this halite cannot reach the minions to re-run a job")
        except QueryError as exc:
            self._record(user, "rerun", "allow", resource=resource, jid=job.jid,
                         arguments=arguments, outcome={"error": str(exc)})  # fmt: skip
            raise
        outcome: dict[str, Any] = {"selection": plan.selection, "requested": plan.minions}
        try:
            new_jid, minions = self._publish(plan, user or "")
            outcome.update(new_jid=new_jid, minions=minions)
        except Exception as exc:
            # Salt's own words and error, not the wrapper's.
            cause = exc.__cause__ if isinstance(exc, rerunning.PublishFailed) else None
            said = cause or exc
            outcome["error"] = f"{type(said).__name__}: {said}"
            self._record(user, "rerun", "allow", resource=resource, jid=job.jid,
                         arguments=arguments, outcome=outcome)  # fmt: skip
            raise
        try:
            self.store.mark_rerun(new_jid, job.jid)
        except Exception as exc:  # noqa: BLE001 - the job is out: say so, never "failed"
            # A failure here (a journal disk that is full) must not answer "failed" for a
            # job that was published: a retry would publish it twice.
            log.warning("halite: re-run %s of %s is published, its link is not recorded: %s",
                        new_jid, job.jid, exc)  # fmt: skip
            outcome["link_error"] = f"{type(exc).__name__}: {exc}"
        self._record(user, "rerun", "allow", resource=resource, jid=job.jid,
                     arguments=arguments, outcome=outcome)  # fmt: skip
        # The link and the entry are journalled: commit them now if the database takes
        # them within read_timeout, so that the jobs read right after show the link (from
        # the primary: a replica may not have it yet).
        self._commit_own_writes()
        self.store.read_own_writes()
        return {
            "jid": new_jid,
            "rerun_of": job.jid,
            "function": plan.function,
            "selection": cast(Any, plan.selection),
            "requested": plan.minions,
            "minions": minions,
            "missing": sorted(set(plan.minions) - set(minions)),
        }

    def _publish(self, plan: rerunning.Plan, user: str) -> tuple[str, list[str]]:
        """Publish ``plan`` as ``user``: the new jid and the minions published to. Any
        failure of the publish is a PublishFailed saying what the master said."""
        assert self.send_rerun is not None
        try:
            published = self.send_rerun(plan, user)
        except Exception as exc:  # noqa: BLE001 - Salt's client raises many kinds
            raise rerunning.PublishFailed(
                f"the master did not take the re-run of job {plan.jid}: {exc or type(exc).__name__}"
            ) from exc
        new_jid = str(published.get("jid") or "") if isinstance(published, Mapping) else ""
        if not jids.is_jid(new_jid):
            raise rerunning.PublishFailed(
                f"the master did not take the re-run of job {plan.jid}: it answered no job id"
            )
        return new_jid, sorted({str(m) for m in published.get("minions") or ()})
