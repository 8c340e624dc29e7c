"""Running a job again: on which minions, with which arguments, and when it cannot be.

``salt-run halite.rerun <jid>`` asks :func:`find` for the job and :func:`plan` for what to
publish: the job's function, its arguments and keyword arguments as the index holds them,
and the minions chosen (:class:`~halite_core.api.RerunArguments`) among those the job
targeted: ``failed`` (the minions whose return failed or that never returned, by the rule
of the job's ``minions.failed`` count, except those an operator killed), ``no_return``
(those settled as not returning), ``all`` (every targeted minion), or ids of targeted
minions. The publish keeps the job's returner (``ret``) and publish options (``ret_config``,
``ret_kwargs``, ``module_executors``, ``executor_opts``, its ``metadata``, with
``halite_rerun_of`` added) as the index holds its publish load; a publish known from the
bus alone (``event_return``) has none of them, as Salt's event does not carry them.
:class:`NotRerunnable` says why a job cannot be run again: it still runs; it is a runner or
wheel job, or one of several functions; the index holds no publish of it (only returns);
its arguments are not what was published (cut at the size cap, stored as a text form, or
a redaction placeholder); or no minion is left to run it on. The publish itself is the
caller's (a list target, as the caller, never ``*``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from halite_core import audit, encoding, jids
from halite_core.api import RERUN_SELECTIONS, QueryError, UnknownJob
from halite_core.errors import HaliteError
from halite_core.queries import RESERVED
from halite_core.states import JobStatus, MinionState, minion_failed
from halite_core.store.schema import job_returns, jobs_index

FAILED, NO_RETURN, ALL = RERUN_SELECTIONS
NAMED = "minions"  # the selection of a list of minion ids
MASTER_FUNCTIONS = ("runner.", "wheel.")
# Markers encoding.restore cannot turn back into what was published.
LOSSY_MARKERS = ("truncated", "object")


class NotRerunnable(QueryError):
    """The job exists, and cannot be run again; the message says why."""


class PublishFailed(HaliteError):
    """The master refused the re-run's publish, or did not answer it (the HTTP API's 502)."""


@dataclass(frozen=True)
class Job:
    """What the index holds of a job that a re-run needs."""

    jid: str
    function: str | None
    status: str
    arguments: Any
    kwargs: Any
    load: Any
    minions: Mapping[str, bool]  # targeted minion -> whether it failed the job
    states: Mapping[str, str]  # targeted minion -> its state in the job


@dataclass(frozen=True)
class Plan:
    """What to publish: ``function`` with ``arguments`` and ``kwargs`` to ``minions``."""

    jid: str
    function: str
    arguments: list[Any]
    kwargs: dict[str, Any]
    ret: str
    selection: str
    minions: list[str]
    # The publish's own options the job had (Salt's clear load ``kwargs``: ret_config,
    # ret_kwargs, module_executors, executor_opts), and its metadata with the link added.
    options: Mapping[str, Any] = field(default_factory=dict)


def on_minions(function: str | None) -> bool:
    """Whether a job of ``function`` ran on minions (not a runner or wheel job, nor one of
    several functions): only those can be re-run."""
    return bool(function) and not str(function).startswith((*MASTER_FUNCTIONS, "["))


def find(conn: Connection, jid: object) -> Job:
    """The job ``jid``; raises QueryError for a jid that is not one, UnknownJob for one the
    index does not hold."""
    if not isinstance(jid, str) or not jids.is_jid(jid):
        raise QueryError(f"{jid!r} is not a Salt job id (20 digits, optional _pid)")
    j = jobs_index.c
    row = conn.execute(
        select(j.function, j.status, j.arguments, j.kwargs, j.load).where(j.jid == jid)
    ).first()
    if row is None or row.status == RESERVED:
        raise UnknownJob(f"no job with jid {jid} in the index")
    r = job_returns.c
    # Targeted minions only: Salt takes a return for any jid from any minion, and one that
    # was never targeted must not receive the job (and its arguments) through a re-run.
    returns = conn.execute(
        select(r.minion, r.state, r.success, r.retcode, r.states_failed).where(
            r.jid == jid, r.expected.is_(True)
        )
    ).all()
    return Job(
        jid=jid,
        function=row.function,
        status=row.status,
        arguments=row.arguments,
        kwargs=row.kwargs,
        load=row.load,
        minions={
            ret.minion: minion_failed(ret.state, ret.success, ret.retcode, ret.states_failed)
            for ret in returns
        },
        states={ret.minion: ret.state for ret in returns},
    )


def plan(job: Job, minions: str | list[str] = FAILED) -> Plan:
    """What re-running ``job`` on ``minions`` publishes; raises NotRerunnable (or a
    QueryError naming minions that are not the job's)."""
    function = job.function or ""
    published = job.load.get("fun") if isinstance(job.load, Mapping) else None
    if not function or isinstance(published, (list, tuple)):
        what = "several functions" if function else "no function the index knows"
        raise NotRerunnable(f"job {job.jid} runs {what}: it cannot be re-run")
    if function.startswith(MASTER_FUNCTIONS):
        raise NotRerunnable(
            f"job {job.jid} ({function}) ran on the master, not on minions: a runner or wheel"
            " job cannot be re-run"
        )
    if not isinstance(job.load, Mapping) or "tgt" not in job.load:
        # Known from its minions' returns only: the function and arguments are a
        # minion's word, not what was published.
        raise NotRerunnable(
            f"the index holds no publish of job {job.jid}, only returns: its arguments are"
            " not known, it cannot be re-run"
        )
    if job.status != JobStatus.COMPLETE.value:
        pending = sorted(m for m, state in job.states.items() if state == MinionState.PENDING)
        waiting = f" ({len(pending)} of {len(job.states)} minions have not returned)"
        raise NotRerunnable(
            f"job {job.jid} ({function}) is still running{waiting if job.states else ''}:"
            " wait for it to complete, or kill it"
        )
    arguments = _published(job.jid, "arguments", job.arguments, list)
    kwargs = _published(job.jid, "keyword arguments", job.kwargs, dict)
    selection, chosen = _chosen(job, minions)
    ret = job.load.get("ret")
    return Plan(
        jid=job.jid,
        function=function,
        arguments=arguments,
        kwargs=kwargs,
        ret=ret if isinstance(ret, str) else "",
        selection=selection,
        minions=chosen,
        options=_options(job.jid, job.load),
    )


# What a publish passes on to its minions from Salt's clear load ``kwargs`` (master.py
# _prep_pub), besides the metadata: kept for the re-run.
PUBLISH_OPTIONS = ("ret_config", "ret_kwargs", "module_executors", "executor_opts")
LINK = "halite_rerun_of"  # the re-run's metadata key naming the job it re-runs


def _options(jid: str, load: Mapping[str, Any]) -> dict[str, Any]:
    given = load.get("kwargs")
    given = given if isinstance(given, Mapping) else {}
    options = {name: encoding.restore(given[name]) for name in PUBLISH_OPTIONS if name in given}
    metadata = given.get("metadata", load.get("metadata"))
    metadata = encoding.restore(metadata) if isinstance(metadata, Mapping) else {}
    options["metadata"] = {**metadata, LINK: jid}
    return options


def _chosen(job: Job, minions: str | list[str]) -> tuple[str, list[str]]:
    if isinstance(minions, list):
        unknown = [m for m in minions if m not in job.minions]
        if unknown:
            raise QueryError(
                f"{_names(unknown)} did not take part in job {job.jid}: a re-run runs on"
                " minions the job targeted (see halite.job)"
            )
        return NAMED, list(minions)
    if minions == ALL:
        chosen = sorted(job.minions)
    elif minions == NO_RETURN:
        chosen = sorted(m for m, state in job.states.items() if state == MinionState.NO_RETURN)
    elif minions == FAILED:
        # Not the killed ones: an operator stopped them on purpose (name them, or all).
        chosen = sorted(
            m
            for m, failed in job.minions.items()
            if failed and job.states.get(m) != MinionState.KILLED
        )
    else:
        raise QueryError(f"minions must be one of {', '.join(RERUN_SELECTIONS)} or minion ids")
    if not chosen:
        said = {FAILED: "failed it or never returned", NO_RETURN: "never returned"}
        raise NotRerunnable(
            f"no minion of job {job.jid} {said.get(minions, 'took part in it')}: nothing to"
            f" re-run (minions=all runs it again on all {len(job.minions)})"
            if job.minions
            else f"job {job.jid} has no minion to re-run it on"
        )
    return minions, chosen


def _names(minions: Iterable[str], shown: int = 5) -> str:
    names = list(minions)
    listed = ", ".join(names[:shown]) + (
        f" and {len(names) - shown} more" if len(names) > shown else ""
    )
    return f"minion{'s' if len(names) > 1 else ''} {listed}"


def _published(jid: str, what: str, value: Any, kind: type) -> Any:
    """The stored ``value`` as it was published, restored from halite's markers; refuses
    one that is not what was published."""
    if value is None:
        return kind()
    why = _lossy(value)
    if why is not None:
        raise NotRerunnable(
            f"the {what} of job {jid} are not stored as they were published ({why}): re-run"
            " it by hand"
        )
    restored = encoding.restore(value)
    if not isinstance(restored, kind):
        raise NotRerunnable(f"the {what} of job {jid} are not stored as a {kind.__name__}")
    return restored


def _lossy(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` does not hold what was published: a marker that cannot be undone, or
    the audit log's redaction placeholder (a copy from a redacted record); None if it does."""
    if depth > encoding.MAX_DEPTH:
        return "nested too deep"
    if isinstance(value, str):
        return "a value is redacted" if value == audit.REDACTED else None
    if isinstance(value, list):
        items: Iterable[Any] = value
    elif isinstance(value, dict):
        kind = value.get(encoding.MARKER)
        if kind in LOSSY_MARKERS:
            return "cut at the size limit" if kind == "truncated" else "a value kept as text"
        items = value.values()
    else:
        return None
    for item in items:
        why = _lossy(item, depth + 1)
        if why is not None:
            return why
    return None
