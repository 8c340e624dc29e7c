"""
halite: Salt's master job cache in a SQL job index (SQLite by default, or PostgreSQL).

Every publish and every minion return is written as it arrives into the ``jobs_index`` and
``job_returns`` tables (documented in halite's ``docs/schema.md``), so that listing and
inspecting jobs is an indexed query instead of a walk over the job cache directories.
Salt's own ``jobs`` runner keeps working on top of it.

Salt's job path never waits for the database: jids are reserved with files, writes are
appended to the worker's journal and committed in batches by the master's one committer
(the halite engine's process when it is listed under ``engines``, otherwise the first
Salt process that journals; at most ``flush_interval`` later), and reads also look into
the journals. A write the database
cannot take never breaks the job: it is kept in a spool under the master's cachedir and
replayed once the database answers again.

Configuration, in the master config:

.. code-block:: yaml

    master_job_cache: halite          # use halite as the job cache
    # or keep Salt's default cache and index alongside it, from the event bus:
    # event_return: halite

    keep_jobs_seconds: 86400          # Salt's own retention setting, honoured by clean_old_jobs

    halite:
      db_url: sqlite:////var/cache/salt/master/halite.db  # default: halite.db in cachedir
      # db_url: postgresql+psycopg://halite:secret@db.example.com/halite
      flush_interval: 0.1             # seconds writes wait to be committed together; 0: at once
      batch_size: 1000                # commit sooner once this many writes are waiting
      max_return_bytes: 4194304       # larger returns are stored truncated, with a marker
      journal_dir: /var/cache/salt/master/halite/journal  # default: halite/journal in cachedir
      jid_dir: /var/cache/salt/master/halite/jids         # jids handed out (files, not the db)
      spool_dir: /var/cache/salt/master/halite/spool      # default: halite/spool in cachedir
      spool_replay_interval: 5        # seconds between attempts to replay spooled writes
      spool_max_bytes: 1073741824     # the spool's bound; beyond it new writes are dropped, logged
      sqlite_busy_timeout: 30         # seconds a SQLite writer waits for the write lock
      read_timeout: 2                 # seconds Salt's reads wait before answering from journals
      request_timeout: 30             # seconds salt-run halite.* waits for the database
      keep_running_seconds: 604800    # a running job idle this long is cleaned all the same
      clean_batch_size: 500           # jobs deleted per transaction by clean_old_jobs
      system_functions:               # bookkeeping jobs, hidden from listings (a list replaces
        - saltutil.find_job           # the default one; see the runners' documentation)
        - runner.jobs.*
      roles: {}                       # who may do what: see the runners' documentation
      users: {}

An unknown option is refused, with an error that names it (halite_core/config.py).

CLI Example:

.. code-block:: bash

    salt '*' test.ping
    salt-run jobs.list_jobs
    salt-run jobs.lookup_jid 20261128115138123456
"""

import datetime
import logging
import os
import threading

import salt.utils.jid
import salt.utils.job
import salt.utils.minions

try:
    from halite_core import jids, salt_adapter
    from halite_core.durability.spool import Spool
    from halite_core.jobcache import get_store, is_return_load
    from halite_core.store.ops import SaltWrite

    HAS_HALITE = True
    _IMPORT_ERROR = ""
except ImportError as exc:  # SQLAlchemy, Alembic or halite_core itself is missing
    HAS_HALITE = False
    _IMPORT_ERROR = str(exc)

log = logging.getLogger(__name__)

__virtualname__ = "halite"


def __virtual__():
    if not HAS_HALITE:
        return False, f"halite returner: cannot import halite_core ({_IMPORT_ERROR})"
    return __virtualname__


def _jid_utc():
    return salt_adapter.jid_utc(__opts__)


_STORES = {}


def _store():
    # Reading options through the loader's opts proxy costs more than the write itself on
    # the return path: keep this process's store while the opts object and its halite
    # section are the same objects (Salt replaces, never edits, options it reloads).
    opts = __opts__.value() if hasattr(__opts__, "value") else __opts__
    section = opts.get("halite")
    cached = _STORES.get((os.getpid(), id(opts)))
    if cached is not None and cached[0] is opts and cached[1] is section:
        return cached[2]
    store = get_store(salt_adapter.settings_from(opts))
    _STORES.clear()
    _STORES[(os.getpid(), id(opts))] = (opts, section, store)
    return store


def _record(op, *args):
    """Hand a write to the job index; whatever goes wrong, the data lands in the spool."""
    try:
        store = _store()
    except Exception as exc:  # pylint: disable=broad-except
        log.critical("halite: cannot open the job index (%s); %s spooled", exc, op)
        Spool(_spool_dir()).put(op, *args, reason=str(exc))
        return None
    return store.record(op, *args)


def _spool_dir():
    """The configured spool (halite:spool_dir), where replay will look for it."""
    section = __opts__.get("halite")
    configured = section.get("spool_dir") if isinstance(section, dict) else None
    if isinstance(configured, str) and configured:
        return configured
    return os.path.join(__opts__["cachedir"], "halite", "spool")


def _read(what, jid, read, default):
    """A read for Salt's CLI and runners: an unreachable index answers like an unknown job
    (``{}``), as Salt's own cache does for a job it cannot read, and the cause is logged."""
    try:
        return read(_store())
    except Exception:  # pylint: disable=broad-except
        log.error("halite: cannot read %s of %s", what, jid, exc_info=True)
        return default


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def prep_jid(nocache=False, passed_jid=None):  # pylint: disable=unused-argument
    """
    Return a job id: ``passed_jid`` as given, or a new JID reserved for this master so that
    no other worker process can hand out the same one. The reservation is a file under
    ``halite:jid_dir``, as Salt's ``local_cache`` reserves a jid with its directory: the
    database is never asked on the publish path.

    CLI Example:

    .. code-block:: bash

        salt-run jobs.list_jobs   # prep_jid runs for every publish
    """
    if passed_jid:
        return passed_jid
    try:
        return _store().new_jid(unique=bool(__opts__.get("unique_jid")))
    except Exception:  # pylint: disable=broad-except
        log.error("halite: could not reserve a jid; using an unreserved one", exc_info=True)
        return salt.utils.jid.gen_jid(__opts__)


def save_load(jid, load, minions=None):
    """
    Index a job's publish load and the minions it targets. Minion returns that Salt also
    passes here are left to :func:`returner`, so a publish load is never overwritten.
    """
    if isinstance(load, dict) and minions is None and load.get("tgt") and not is_return_load(load):
        try:
            minions = salt.utils.minions.CkMinions(__opts__).check_minions(
                load["tgt"], load.get("tgt_type", "glob")
            )["minions"]
        except Exception:  # pylint: disable=broad-except
            log.warning("halite: could not expand target of %s", jid, exc_info=True)
    _record(SaltWrite.SAVE_LOAD, jid, load, minions)


def save_minions(jid, minions, syndic_id=None):
    """
    Add minions matched by a syndic to the job's target list.
    """
    _record(SaltWrite.SAVE_MINIONS, jid, list(minions or []), syndic_id)


def returner(load):
    """
    Index one minion return. The first return for a job and minion wins; a repeat (a
    minion retrying, or two syndics forwarding it) is logged and ignored, as Salt's
    local_cache does.
    """
    arrived = _now()
    if isinstance(load, dict) and load.get("jid") == "req":
        # A standalone job from a minion: give it a jid and a load, as Salt's store_job does.
        load = dict(load, jid=prep_jid(nocache=load.get("nocache", False)))
        load.setdefault("arg", load.get("fun_args", []))
        load.update(tgt_type="glob", tgt=load.get("id"))
        save_load(load["jid"], {k: v for k, v in load.items() if k != "return"})
    _record(SaltWrite.SAVE_RETURN, load, arrived)


def event_return(events):
    """
    Index a batch of ``salt/job/<jid>/new`` and ``salt/job/<jid>/ret/<minion>`` events,
    for masters that keep another job cache (``event_return: halite``).
    """
    _record(SaltWrite.SAVE_EVENTS, list(events))


def get_load(jid):
    """
    Return the load of a job, with ``Minions`` (its target list), or ``{}``.

    CLI Example:

    .. code-block:: bash

        salt-run jobs.list_job 20261128115138123456
    """
    return _read("the load", jid, lambda store: store.get_load(jid), {})


def get_jid(jid):
    """
    Return ``{minion: {"return": ..., "retcode": ..., "success": ..., "out": ...}}``.

    CLI Example:

    .. code-block:: bash

        salt-run jobs.lookup_jid 20261128115138123456
    """
    return _read("the returns", jid, lambda store: store.get_jid(jid), {})


def _with_endtime(job, last_return_at):
    if __opts__.get("job_cache_store_endtime") and last_return_at is not None:
        job["EndTime"] = jids.salt_time_text(last_return_at, _jid_utc())
    return job


def get_jids():
    """
    Return every job in the index as ``{jid: job}``, formatted as Salt's jobs runner expects.

    CLI Example:

    .. code-block:: bash

        salt-run jobs.list_jobs
    """
    return {
        jid: _with_endtime(salt.utils.jid.format_jid_instance(jid, load), last)
        for jid, load, last in _store().iter_loads()
    }


def get_jids_filter(count, filter_find_job=True):
    """
    Return the ``count`` most recent jobs, oldest first, leaving out ``saltutil.find_job``
    unless ``filter_find_job`` is False. The limit and the filter run in SQL.

    CLI Example:

    .. code-block:: bash

        salt-run jobs.list_jobs_filter 50
    """
    return [
        salt.utils.jid.format_jid_instance_ext(jid, load)
        for jid, load in _store().newest_loads(count, filter_find_job)
    ]


def get_fun(fun):
    """
    Return ``{minion: jid}``: the newest job of each minion that ran ``fun``.
    """
    return _store().last_jid_per_minion(fun)


def get_minions():
    """
    Return every minion that has a return in the index.
    """
    return _store().minions_seen()


_CLEANING = {}


def clean_old_jobs():
    """
    Delete jobs idle for more than ``keep_jobs_seconds`` (never a running one), with their
    returns, in batches. Salt's maintenance process calls this every ``loop_interval``; the
    work runs in a thread of its own, so that a slow or locked database never holds up the
    rest of Salt's maintenance, and a call while the last one still runs does nothing.
    """
    keep = salt.utils.job.get_keep_jobs_seconds(__opts__)
    running = _CLEANING.get(os.getpid())
    if running is not None and running.is_alive():
        log.info("halite: the previous clean_old_jobs is still running")
        return
    try:
        store = _store()
    except Exception:  # pylint: disable=broad-except
        log.error("halite: cannot open the job index to clean it", exc_info=True)
        return

    def clean():
        try:
            store.clean_old_jobs(keep)
        except Exception:  # pylint: disable=broad-except
            log.error("halite: clean_old_jobs failed; will retry next time", exc_info=True)

    thread = threading.Thread(target=clean, name="halite-clean", daemon=True)
    _CLEANING[os.getpid()] = thread
    thread.start()


def update_endtime(jid, time):
    """
    Record the time of a job's latest return (``job_cache_store_endtime: True``).
    """
    try:
        when = jids.parse_salt_time_text(str(time), _jid_utc())
    except ValueError:
        log.warning("halite: update_endtime got an unreadable time %r for %s", time, jid)
        return
    _record(SaltWrite.UPDATE_ENDTIME, jid, when)


def get_endtime(jid):
    """
    Return the time of the job's latest return in Salt's format, or False.
    """
    last = _read("the end time", jid, lambda store: store.last_return_at(jid), None)
    return jids.salt_time_text(last, _jid_utc()) if last else False
