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
"""

import datetime

import salt.client
import salt.config
import salt.minion

try:
    from halite_core import jids
    from halite_core.config import Settings, jid_utc_for
    from halite_core.jobcache import JobStore
    from halite_core.queries import (
        JobFilter,
        QueryError,
        job_detail,
        list_jobs,
    )
    from halite_core.queries import activity as jobs_per_hour
    from halite_core.queries import timeline as job_bars

    HAS_HALITE = True
    _IMPORT_ERROR = ""
except ImportError as exc:
    HAS_HALITE = False
    _IMPORT_ERROR = str(exc)

__virtualname__ = "halite"


def __virtual__():
    if not HAS_HALITE:
        return False, f"halite runners: cannot import halite_core ({_IMPORT_ERROR})"
    return __virtualname__


def _store():
    settings = Settings.from_opts(
        __opts__, jid_utc=jid_utc_for(__opts__, salt.config.DEFAULT_MASTER_OPTS)
    )
    return JobStore(settings)


def _failed(message):
    """What a runner returns for a request it cannot serve. Salt treats a raised
    SaltInvocationError (a TypeError) as a usage hint and exits 0; scripts need the error
    and a non-zero exit, which salt-run takes from ``retcode``."""
    __context__["retcode"] = 1
    return {"error": message, "retcode": 1}


def _time(name, value):
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(
            f"{name}: {value!r} is not an ISO 8601 date and time (e.g. 2026-11-28T12:00:00Z)"
        ) from exc
    # A time without an offset is read as UTC, as the index stores times.
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def jobs(
    limit=50,
    fun=None,
    target=None,
    user=None,
    status=None,
    minion=None,
    search=None,
    start=None,
    end=None,
    include_system=False,
    cursor=None,
    live=False,
):
    """
    List jobs, newest first: ``{"jobs": [...], "next": <cursor or None>}``. Bad arguments
    give ``{"error": "<what is wrong>", "retcode": 1}`` and a non-zero exit.

    limit
        Jobs per page, 1 to 500 (default 50).
    fun, target
        Shell globs (``*``, ``?``) on the function and on the target.
    user
        The Salt user who published the job, exactly.
    status
        ``running`` or ``complete``.
    minion
        Jobs that targeted, or returned from, this minion.
    search
        Text found in the jid, function, target or user.
    start, end
        ISO 8601 times (UTC when no offset is given): jobs started at or after
        ``start`` and before ``end``.
    include_system
        Also list Salt's own bookkeeping jobs (``saltutil.find_job``, ...).
    cursor
        The ``next`` value of the previous page.
    live
        Bypass the index: read the newest ``limit`` jobs (at most 500) from the master's
        job cache and ask every minion which jobs it is running (``saltutil.running``).
        For the rare case where the index is suspect; the other filters do not apply.

    CLI Example:

    .. code-block:: bash

        salt-run halite.jobs fun='state.*' user=sudo_alice
        salt-run halite.jobs cursor=MjAyNi0xMS0yOFQxMjowMDowMCswMDowMHwyMDI2MTEyODEyMDAwMDAwMDAwMA
    """
    if live:
        return _live_jobs(limit)
    try:
        filters = JobFilter(
            fun=fun,
            target=target,
            user=user,
            status=status,
            minion=minion,
            search=None if search is None else str(search),
            start=_time("start", start),
            end=_time("end", end),
            include_system=bool(include_system),
        )
    except QueryError as exc:
        return _failed(str(exc))
    return _read(list_jobs, filters, limit, cursor, outputter="halite_jobs")


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
    return _read(job_detail, str(jid), outputter="halite_job")


def _read(query, *args, outputter=None):
    """Run a halite_core query on the index; its QueryError becomes the runner's error."""
    store = _store()
    try:
        with store.db.read() as conn:
            data = query(conn, *args)
    except QueryError as exc:
        return _failed(str(exc))
    finally:
        store.db.dispose()
    return data if outputter is None else {"outputter": outputter, "data": data}


def activity(hours=24):
    """
    Jobs started per hour over the last ``hours`` hours (1 to 168; the current, partial
    hour included, oldest first), and how many jobs are running now. Salt's bookkeeping
    jobs are left out.

    CLI Example:

    .. code-block:: bash

        salt-run halite.activity hours=48 --out=json
    """
    return _read(jobs_per_hour, hours)


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
    return _read(job_bars, window, group_by)


def _live_jobs(limit):
    try:
        size = int(limit)
    except (TypeError, ValueError):
        size = 0
    if not 1 <= size <= 500:
        return _failed(f"limit must be a number from 1 to 500, not {limit!r}")
    cache = __opts__["master_job_cache"]
    with salt.minion.MasterMinion(__opts__) as mminion:
        found = mminion.returners[f"{cache}.get_jids_filter"](size, True)
    client = salt.client.get_local_client(mopts=__opts__)
    answers = client.cmd("*", "saltutil.running", timeout=__opts__.get("gather_job_timeout", 10))
    running = {
        job.get("jid")
        for jobs_of_minion in (answers or {}).values()
        if isinstance(jobs_of_minion, list)
        for job in jobs_of_minion
        if isinstance(job, dict)
    }
    utc = jid_utc_for(__opts__, salt.config.DEFAULT_MASTER_OPTS)
    listed = []
    for job in sorted(found, key=lambda j: j["JID"], reverse=True):
        target = job.get("Target")
        listed.append(
            {
                "jid": job["JID"],
                "function": job.get("Function"),
                "target": ",".join(target) if isinstance(target, list) else target,
                "target_type": job.get("Target-type"),
                "user": job.get("User"),
                "start_time": jids.start_time(job["JID"], utc).isoformat(),
                "end_time": None,
                "status": "running" if job["JID"] in running else "complete",
                "minions": {"targeted": None, "returned": None, "failed": None},
                "system": False,
                "master_id": __opts__.get("id"),
            }
        )
    return {"outputter": "halite_jobs", "data": {"jobs": listed, "next": None, "live": True}}
