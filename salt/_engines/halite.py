"""
halite engine: keeps "running" exact in halite's job index, from the master's event bus.

It follows ``salt/job/<jid>/new``, ``salt/job/<jid>/ret/<minion>`` and ``salt/run/<jid>/...``
events and holds the set of running jobs in memory: a job runs from its ``new`` event until
every targeted minion has returned or has been settled as not returning. Once a job has
run ``timeout`` seconds, only its still-pending minions are asked (``saltutil.find_job``
with a list target, never ``*``) whether they still run it; those that do not answer within
``timeout_grace`` seconds, or no longer run it, are marked ``no_return`` and the job
completes. Changes are written to the index in batches. On start it rebuilds the running
set from the index and asks about every job that was running; until then its
``engine_state`` row tells readers that running jobs are ``unknown``.

Configuration, in the master config (every option may be left out):

.. code-block:: yaml

    engines:
      - halite:
          timeout: 5            # seconds before pending minions are asked; default: `timeout`
          timeout_grace: 10     # seconds to wait for their answers; default: `gather_job_timeout`
          flush_interval: 0.25  # longest delay before a change is in the database
          batch_size: 1000      # write sooner once this many changes are waiting
          write_returns: auto   # index returns too; auto: unless master_job_cache is halite

    halite:
      system_functions:         # jobs listed as Salt's own bookkeeping (hidden by default)
        - saltutil.find_job
        - saltutil.running
        - saltutil.is_running

The database and the other ``halite:`` options are the returner's (see its docstring).

CLI Example:

.. code-block:: bash

    salt-run saltutil.sync_engines   # only when installed through file_roots
"""

import logging

import salt.client
import salt.config
import salt.utils.event

try:
    from halite_core.active import ActiveJobs, EngineOptions
    from halite_core.config import Settings, jid_utc_for
    from halite_core.jobcache import JobStore

    HAS_HALITE = True
    _IMPORT_ERROR = ""
except ImportError as exc:
    HAS_HALITE = False
    _IMPORT_ERROR = str(exc)

log = logging.getLogger(__name__)

__virtualname__ = "halite"


def __virtual__():
    if not HAS_HALITE:
        return False, f"halite engine: cannot import halite_core ({_IMPORT_ERROR})"
    return __virtualname__


def _write_returns(value):
    if value in (None, "auto"):
        return __opts__.get("master_job_cache") != "halite"
    return bool(value)


def build(options):
    """The engine for these options, on this master (used by start() and by tests)."""
    settings = Settings.from_opts(
        __opts__, jid_utc=jid_utc_for(__opts__, salt.config.DEFAULT_MASTER_OPTS)
    )
    defaults = {
        "timeout": __opts__.get("timeout", 5),
        "timeout_grace": __opts__.get("gather_job_timeout", 10),
    }
    options = dict(options, write_returns=_write_returns(options.get("write_returns")))
    client = salt.client.get_local_client(mopts=__opts__)

    def send_find_job(jid, minions):
        log.info("halite engine: asking %s whether they still run %s", ", ".join(minions), jid)
        return client.cmd_async(minions, "saltutil.find_job", [jid], tgt_type="list") or None

    return ActiveJobs(
        JobStore(settings), EngineOptions.from_config(options, defaults), send_find_job
    )


def run_once(engine, bus, wait=0.05, max_events=10000):
    """Handle the events on the bus (waiting up to ``wait`` seconds for the first, then
    taking what is already there, up to ``max_events``), then do what is due."""
    event = bus.get_event(wait=wait, full=True, auto_reconnect=True)
    handled = 0
    while event:
        _safely(engine.handle, event.get("tag"), event.get("data"))
        handled += 1
        if handled >= max_events:
            break
        # no_block: Salt's get_event blocks forever when wait is 0.
        event = bus.get_event(full=True, no_block=True, auto_reconnect=True)
    _safely(engine.tick)


def _safely(call, *args):
    # One malformed event or a failed write must not stop the engine following the bus.
    try:
        call(*args)
    except Exception:  # pylint: disable=broad-except
        log.exception("halite engine: %s failed; carrying on", getattr(call, "__name__", call))


def start(**options):
    """
    Run the engine: Salt starts it in its own process when it is listed under ``engines``.
    """
    engine = build(options)
    bus = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True)
    try:
        engine.recover()
        while True:
            run_once(engine, bus)
    finally:
        engine.flush()
        bus.destroy()
