"""
halite runners: Salt's job history from halite's index.

``halite.jobs`` lists jobs newest first, filtered and paged in SQL; ``halite.job`` shows
one job minion by minion, failures first, with ``state.*`` returns parsed into states.
The index is written by halite's returner (``master_job_cache: halite`` or
``event_return: halite``) and kept exact by its engine; see their documentation.

CLI Example:

.. code-block:: bash

    salt-run halite.jobs
    salt-run halite.jobs fun='state.*' status=running
    salt-run halite.jobs minion=web1 limit=20 --out=json
    salt-run halite.job 20261128115138123456
    salt-run halite.activity hours=24
    salt-run halite.timeline window=24h group_by=user
    salt-run halite.kill 20261128115138123456
    salt-run halite.rerun 20261128115138123456 minions=failed
    salt-run halite.audit action=kill decision=deny
    salt-run halite.minions failing=True
    salt-run halite.minion web1 fun='state.*'
    salt-run halite.states window=24h
    salt-run halite.state nginx_conf

Every function checks the caller's permissions first (``halite:roles`` and
``halite:users`` in the master config; see the README): ``view:job:<function>`` to read
jobs (a scoped permission such as ``view:job:test.*`` narrows every listing),
``kill:job:<function>`` to kill, ``run:job:<function>`` to re-run, ``view:audit:*`` for
the audit log. A denial names the missing permission, exits non-zero and is written to the
audit log, as is every kill and every re-run.

.. code-block:: yaml

    halite:
      roles:
        auditor: ["view:job:*", "view:audit:*"]
      users:
        alice: [operator]
        sudo_bob: [viewer]
      system_functions:     # bookkeeping, left out of listings unless include_system=True;
        - saltutil.find_job # replaces the default list (Salt's and halite's reads of the
        - runner.jobs.*     # history, what SaltGUI polls; see docs/runners.md)

Each call is itself a Salt runner job. A successful one is recorded as a success (the
answer is returned as it is: salt-api clients get the documented object), an error or a
denial as a failure with a non-zero exit. The index keeps these jobs without their
answers (a ``withheld`` marker): they copy data guarded by its own permissions; so it
keeps Salt's ``jobs.*`` runner jobs, ``saltutil.runner`` jobs and ``salt.runner`` states
naming one of these runners (docs/runners.md). An unusable ``halite:`` option or a
database that cannot be used is an error with a non-zero exit, as a bad argument. The
readers (``jobs``, ``job``, ``activity``, ``timeline``) add a ``warning`` to their answer,
and log it, when nothing on the master feeds the index (neither ``master_job_cache:
halite`` nor ``event_return: halite``, and no halite engine).
"""

import logging
import re
import textwrap

import salt.exceptions
import salt.utils.args

try:
    from sqlalchemy.exc import DBAPIError

    from halite_core import salt_adapter
    from halite_core.api import (
        AuditFilter,
        JobsQuery,
        MinionQuery,
        MinionsQuery,
        StateQuery,
        StatesQuery,
    )
    from halite_core.bounded import call_within
    from halite_core.errors import HaliteError
    from halite_core.own_runners import feed_warning
    from halite_core.service import flag_arg
    from halite_core.store.db import SchemaError

    HAS_HALITE = True
    _IMPORT_ERROR = ""
except ImportError as exc:
    HAS_HALITE = False
    _IMPORT_ERROR = str(exc)

log = logging.getLogger(__name__)

__virtualname__ = "halite"
__func_alias__ = {"audit_log": "audit"}
# The runners that read the index, and so must say when nothing feeds it.
READERS = ("jobs", "job", "activity", "timeline", "minions", "minion", "states", "state")


def __virtual__():
    if not HAS_HALITE:
        return False, f"halite runners: cannot import halite_core ({_IMPORT_ERROR})"
    return __virtualname__


def _service():
    return salt_adapter.service_for(__opts__)


def _failed(message):
    """What a runner returns for a request it cannot serve. Salt treats a raised
    SaltInvocationError (a TypeError) as a usage hint and exits 0; scripts need the error
    and a non-zero exit, which salt-run takes from ``retcode``."""
    __context__["retcode"] = 1
    return {"error": message, "retcode": 1}


def _caller():
    """The user Salt hands to runners: the eauth name through salt-api, the local user
    for salt-run (``sudo_<name>`` under sudo)."""
    try:
        return __user__  # noqa: F821 - injected by Salt's loader at call time
    except NameError:
        return None


def _call(method, *args, outputter=None, **kwargs):
    """Run one service method as the caller; its errors become the runner's error."""
    try:
        data = _serve(method, args, kwargs)
    except (HaliteError, DBAPIError, OSError) as exc:
        return _refused(exc)
    if isinstance(data, dict) and data.get("retcode"):
        __context__["retcode"] = data["retcode"]
    if method in READERS:
        data = _with_feed_warning(data)
    return _for_terminal(method, data, outputter)


def _serve(method, args, kwargs):
    service = _service()
    caller = _caller()
    try:
        # Bounded: a database that is locked or frozen gets a clear error, not a hang. A
        # kill also waits for the minions' replies (gather_job_timeout), so that one sent
        # is always marked and audited before salt-run ends.
        bound = service.store.settings.request_timeout
        if method in ("kill", "rerun"):
            bound += float(__opts__.get("gather_job_timeout", 10))
        if method == "rerun":
            # The publish (up to gather_job_timeout) follows reads of the index: room for
            # both, so that a slow read does not give up on a publish that then goes out.
            bound += float(__opts__.get("gather_job_timeout", 10))
        return call_within(bound, lambda: getattr(service, method)(caller, *args, **kwargs))
    finally:
        service.close()


def _refused(exc):
    """The runner's error for a request halite refused (a bad argument or option, a
    denial, a timeout) or could not serve (a database that cannot be used)."""
    # A denial is a HaliteError and a PermissionError (an OSError): it is a refusal.
    unusable = isinstance(exc, SchemaError) or (
        not isinstance(exc, HaliteError) and isinstance(exc, (DBAPIError, OSError))
    )
    return _failed(_unusable_database(exc) if unusable else str(exc))


def _unusable_database(exc):
    """A database that refuses the connection, is down or has a schema this halite cannot
    use, as one line: the driver's message, without the SQL statement and parameters
    SQLAlchemy adds."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = " ".join(str(cause).split("\n")[0].split()) or type(cause).__name__
    log.warning("halite: the database cannot be used: %s", text)
    return f"halite's database cannot be used: {text}"


def _with_feed_warning(data):
    """An answer from an index nothing feeds says so (and the master's log too): it
    would otherwise look like a quiet master."""
    warning = feed_warning(__opts__)
    if warning is None or not isinstance(data, dict):
        return data
    log.warning("halite: %s", warning)
    return {**data, "warning": warning}


def _for_terminal(method, data, outputter):
    """The answer, plus the outputter salt-run shows it with by default.

    salt-run prints a runner's answer with the outputter named by its ``outputter`` key
    when no ``--out`` is given (``print_async_event`` in salt/client/mixins.py). Salt's
    other form, ``{"outputter": ..., "data": ...}``, makes its runner client judge
    ``data`` as a state run, so every call would be recorded as a failed job. The key is
    added only in salt-run's own process, whose options name the function it runs:
    salt-api clients, ``--out=json`` and runners calling runners get the answer alone.
    """
    if (
        outputter is None
        or not isinstance(data, dict)
        or "error" in data
        or __opts__.get("fun") != f"{__virtualname__}.{method}"
        or "output" in __opts__
    ):
        return data
    return {**data, "outputter": outputter}


def jobs(**kwargs):
    """
    List jobs, newest first: ``{"jobs": [...], "next": <cursor or None>}``. Bad arguments
    give ``{"error": "<what is wrong>", "retcode": 1}`` and a non-zero exit.

    The arguments are halite's job filter, the same as the query parameters of the HTTP
    API's ``GET /api/jobs`` (both are read from one definition, ``halite_core.api``):

    ARGUMENTS

    CLI Example:

    .. code-block:: bash

        salt-run halite.jobs fun='state.*' user=sudo_alice
        salt-run halite.jobs minion=web1 status=running limit=20 --out=json
        salt-run halite.jobs cursor=MjAyNi0xMS0yOFQxMjowMDowMCswMDowMHwyMDI2MTEyODEyMDAwMDAwMDAwMA
        salt-run halite.jobs live=True limit=20
    """
    asked = salt.utils.args.clean_kwargs(**kwargs)  # without Salt's __pub_* keys
    try:
        live = flag_arg("live", asked.pop("live", False))
    except HaliteError as exc:
        return _failed(str(exc))
    if live:
        return _live_jobs(asked)
    return _call("jobs", asked, outputter="halite_jobs")


def job(jid):
    """
    One job: its metadata (arguments and keyword arguments apart) and one entry per
    targeted minion (state ``returned`` / ``running`` / ``no_return``, success, retcode,
    raw return), minions that failed first. For ``state.*`` jobs each return is parsed
    into its states in run order, with the failing states ready to show, and the job gets
    state counts. An unknown or malformed jid gives an error and a non-zero exit.

    CLI Example:

    .. code-block:: bash

        salt-run halite.job 20261128115138123456 --out=json
    """
    return _call("job", jid, outputter="halite_job")


def activity(hours=24):
    """
    Jobs started per hour over the last ``hours`` hours (1 to 168; the current, partial
    hour included, oldest first), and how many jobs are running now. Salt's bookkeeping
    jobs are left out.

    CLI Example:

    .. code-block:: bash

        salt-run halite.activity hours=48 --out=json
    """
    return _call("activity", hours)


def timeline(window="24h", group_by="function"):
    """
    The jobs of the last ``window`` (``1h``, ``4h``, ``24h`` or ``7d``) grouped into rows
    by ``function`` or ``user``, busiest row first; each job a bar with its start and end
    (or now) and a status: ``running``, ``failed``, ``changed`` or ``pass``. At most 2,000
    bars (``truncated`` says when more were left out).

    CLI Example:

    .. code-block:: bash

        salt-run halite.timeline window=4h group_by=user --out=json
    """
    return _call("timeline", window, group_by)


def kill(jid):
    """
    Kill a running job: send ``saltutil.kill_job <jid>`` to the minions still running it
    (a list target, never ``*``), collect each reply, mark the minions that confirmed the
    signal ``killed`` so the job shows complete at once, and answer which minions were
    signalled. Needs ``kill:job:<the job's function>``. Allowed or denied, every kill is
    written to the audit log. An unknown, finished or malformed jid is a clear error.

    Answer: ``{"jid", "function", "signalled": [...], "minions": {minion: {"outcome":
    "signalled" | "not_running" | "no_answer", "reply"}}, "status"}``; the exit is
    non-zero when no minion could be signalled.

    CLI Example:

    .. code-block:: bash

        salt-run halite.kill 20261128115138123456
    """
    return _call("kill", jid)


def rerun(jid=None, **kwargs):
    """
    Run a complete job again: publish its function with the same arguments and keyword
    arguments, as the caller, to a list of its minions (never ``*``), and answer the new
    job's jid without waiting for the returns (follow it with ``halite.job <new jid>``).
    ``minions``: ``failed`` (the default: the minions whose return failed or that never
    returned; not those killed), ``no_return`` (those settled as not returning), ``all``
    (every minion the job targeted), or ids of targeted minions separated by commas. The
    job's returner and publish options (``--return``, ``--return_config``,
    ``--module-executors``, its metadata) are kept. Needs ``run:job:<the job's
    function>`` (admin has it; grant it to a role: ``run:job:state.*``). The new job
    records the one it re-runs (``rerun_of``; ``halite.job`` shows both directions).
    Allowed or denied, every re-run is written to the audit log.

    Refused with a clear error: an unknown jid, a job still running, a runner or wheel
    job, a job of several functions, one known from its returns only, one whose arguments
    the index does not hold as they were published (cut at the size limit, or kept as
    text), or no minion to re-run on.

    Answer: ``{"jid": <new jid>, "rerun_of", "function", "selection", "requested":
    [...], "minions": [... the master published to], "missing": [... requested, with no
    accepted key]}``.

    CLI Example:

    .. code-block:: bash

        salt-run halite.rerun 20261128115138123456
        salt-run halite.rerun 20261128115138123456 minions=all
        salt-run halite.rerun 20261128115138123456 minions=web1,web2
    """
    # Unknown keywords (a typo such as minion=web1) are refused by the service, with a
    # non-zero exit and an audit entry, not taken for Salt's usage hint.
    return _call("rerun", jid, salt.utils.args.clean_kwargs(**kwargs))


def audit_log(**kwargs):
    """
    The audit log, newest first: ``{"entries": [...], "next": <cursor or None>}``. Each
    entry: ``id``, ``at``, ``user``, ``action`` (``kill``, ``jobs``, ``job``, ...),
    ``resource``, ``jid``, ``decision`` (``allow``/``deny``), ``outcome`` and the
    ``arguments`` with secrets redacted. Needs ``view:audit:*``. The arguments, as the
    query parameters of ``GET /api/audit``:

    ARGUMENTS

    CLI Example:

    .. code-block:: bash

        salt-run halite.audit user=sudo_bob decision=deny --out=json
    """
    return _call("audit", salt.utils.args.clean_kwargs(**kwargs))


def minions(**kwargs):
    """
    Every minion that has returned, those whose latest state run failed first, then by
    id: ``{"minions": [...], "next": <cursor or None>}``. Each minion: ``failing``, its
    latest real state run (``state_run``: jid, function, start time, result ``failed`` /
    ``changed`` / ``pass``, counts, the ids of its failing states) and its latest job of
    any kind (``last_job``). A state run is any ``state.*`` job whose return parses as
    state results; a dry run (``test=True``) changes nothing and is never the latest
    result. Showing state runs needs ``view:job:state.*``; without it minions are listed
    by id with their latest job the caller may view. The arguments, as the query
    parameters of ``GET /api/minions``:

    ARGUMENTS

    CLI Example:

    .. code-block:: bash

        salt-run halite.minions
        salt-run halite.minions failing=True minion='web*' --out=json
    """
    return _call("minions", salt.utils.args.clean_kwargs(**kwargs), outputter="halite_minions")


def minion(id_=None, **kwargs):
    """
    One minion's job history, newest first: ``{"minion", "jobs": [...], "next"}``. Each
    job: function, start time, the minion's state in it (``returned`` / ``running`` /
    ``no_return`` / ``killed``), success, retcode, its result (``running`` / ``failed`` /
    ``changed`` / ``pass``) and, for a state run, its counts and failing states. Only the
    jobs the caller may view. The arguments, as the query parameters of
    ``GET /api/minions/{id}``:

    ARGUMENTS

    CLI Example:

    .. code-block:: bash

        salt-run halite.minion web1
        salt-run halite.minion web1 fun='state.*' result=failed --out=json
    """
    asked = salt.utils.args.clean_kwargs(**kwargs)
    name = asked.pop("id", id_)
    return _call("minion", name, asked, outputter="halite_minion")


def states(**kwargs):
    """
    The states that failed (``result=failed``, the default) or changed something
    (``result=changed``) across the fleet in the last ``window``, busiest first:
    ``{"window", "result", "states": [...], "next"}``. Each state: its id, key,
    module.function, name, sls, on how many minions and in how many runs, first and last
    time in the window, and the latest comment. Dry runs (``test=True``) are left out.
    Needs ``view:job:state.*``. The arguments, as the query parameters of
    ``GET /api/states``:

    ARGUMENTS

    CLI Example:

    .. code-block:: bash

        salt-run halite.states
        salt-run halite.states window=7d sls='nginx*' --out=json
    """
    return _call("states", salt.utils.args.clean_kwargs(**kwargs), outputter="halite_states")


def state(state_id=None, **kwargs):
    """
    One state's failed and changed runs across runs and minions, newest first: when it
    started failing (``failed``: runs, minions, first, last), on which minions, what the
    comment said: ``{"state_id", "failed", "runs": [...], "next"}``. Needs
    ``view:job:state.*``. The arguments, as the query parameters of
    ``GET /api/states/{state_id}``:

    ARGUMENTS

    CLI Example:

    .. code-block:: bash

        salt-run halite.state nginx_conf
        salt-run halite.state nginx_conf result=failed minion='web*' --out=json
    """
    asked = salt.utils.args.clean_kwargs(**kwargs)
    name = asked.pop("id", state_id)
    return _call("state", name, asked, outputter="halite_state")


def _live_jobs(asked):
    """The live listing: every argument is checked (after the permission, as for a
    listing from the index); only ``limit`` applies."""
    try:
        service = _service()
        try:
            scope = service.view_scope(_caller(), "jobs", {"live": True, **asked})
        finally:
            service.close()
        size = JobsQuery.parse({**asked, "live": True}).limit
    except (HaliteError, DBAPIError, OSError) as exc:
        return _refused(exc)
    try:
        page = salt_adapter.live_listing(__opts__, size, scope)
    except salt.exceptions.SaltClientError as exc:
        return _failed(f"live: cannot ask the minions: {exc}")
    return _for_terminal("jobs", page, "halite_jobs")


def _documented(function, model):
    """The function's docstring with ``ARGUMENTS`` replaced by the model's fields, each
    with its description and default, as Salt's runner documentation shows them."""
    lines = []
    for name, field in model.model_fields.items():
        text = re.sub(r"`([^`]+)`", r"``\1``", field.description or "")
        if field.default not in (None, False):
            text += f" Default: ``{field.default}``."
        lines.append(f"    {name}")
        lines.extend(textwrap.wrap(text, 84, initial_indent=" " * 8, subsequent_indent=" " * 8))
    function.__doc__ = function.__doc__.replace("    ARGUMENTS\n", "\n".join(lines) + "\n")


if HAS_HALITE:
    _documented(jobs, JobsQuery)
    _documented(audit_log, AuditFilter)
    _documented(minions, MinionsQuery)
    _documented(minion, MinionQuery)
    _documented(states, StatesQuery)
    _documented(state, StateQuery)
