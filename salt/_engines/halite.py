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
          flush_interval: 0.25  # longest delay before a change is handed to the committer
          batch_size: 1000      # hand over sooner once this many changes are waiting
          write_returns: auto   # index returns too; auto: unless master_job_cache is halite
          http:                 # the HTTP API and the Jobs page; off unless given
                                # (`http: {}` serves it with these defaults)
            host: 127.0.0.1
            port: 8765
            eauth: pam          # the external auth the login form uses by default
            certfile: /etc/pki/halite.crt   # both for HTTPS, or neither
            keyfile: /etc/pki/halite.key
            request_timeout: 30 # seconds a request waits for the database, then 503
            proxy_headers: false  # behind a reverse proxy: the header it sets, whose
                                  # address logins are throttled by: x-forwarded-for
                                  # (the right-most address, which the proxy appends)
                                  # or x-real-ip (which the proxy sets, replacing the
                                  # client's)
            metrics_only: false # true: serve only /metrics (no API, no page)
            metrics_token: ...  # /metrics wants `Authorization: Bearer <token>` from
                                # every client; unset: loopback clients only
          events:               # halite/job/<jid>/complete on the master's bus, once per
                                # job (see README "Notifications"); `events: false`: none
            tag_prefix: halite/job  # also of <prefix>/<jid>/rerun, fired by halite.rerun
            only_failed: false  # true: only jobs whose result is failed
            interval: 1         # seconds between looks for newly complete jobs
            max_age: 3600       # seconds: a job that ended longer ago is not announced
                                # (an engine back after a long stop stays quiet)
            cap: 50             # failed minions listed in an event; the rest are counted

    external_auth:              # who may log in to the page: Salt's own external auth;
                                # a user (or group) must be listed here, as for salt-api
      pam:
        alice: ['@runner']

    token_expire: 43200         # Salt's own option: a session is a Salt eauth token and
                                # lasts this long from the login (across restarts); a
                                # salt-api token works too (X-Auth-Token)

    halite:
      system_functions:         # bookkeeping jobs (hidden by default); replaces the default
        - saltutil.find_job     # list: Salt's and halite's reads of the history and what
        - runner.jobs.*         # SaltGUI polls (see the runners' documentation)

The database and the other ``halite:`` options are the returner's (see its docstring).

CLI Example:

.. code-block:: bash

    salt-run saltutil.sync_engines   # only when installed through file_roots
"""

import logging
import time

import salt.utils.event

try:
    from halite_core import salt_adapter
    from halite_core.active import ActiveJobs
    from halite_core.announce import Announcer, EventOptions
    from halite_core.config import EngineOptions
    from halite_core.jobcache import get_store
    from halite_core.perprocess import freeze_long_lived

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
    return value  # EngineOptions.from_config reads it: a quoted "false" is false


def build(options):
    """The engine for these options, on this master (used by start() and by tests)."""
    settings = salt_adapter.settings_from(__opts__)
    defaults = {
        "timeout": __opts__.get("timeout", 5),
        "timeout_grace": __opts__.get("gather_job_timeout", 10),
    }
    options = dict(options, write_returns=_write_returns(options.get("write_returns")))
    send_find_job = salt_adapter.find_job_sender(__opts__)
    store = get_store(settings)
    store.committer(engine=True)  # this process commits every journal of the master
    return ActiveJobs(store, EngineOptions.from_config(options, defaults), send_find_job)


def announcer(engine, bus, events):
    """The completion events' announcer (halite_core.announce) for the ``events:`` option,
    firing on ``bus``; None when they are off."""
    options = EventOptions.from_config(events)
    engine.event_prefix = options.tag_prefix  # re-runs' events are counted under it
    if not options.enabled:
        return None
    try:
        from halite_core.metrics import get_metrics

        counted = get_metrics().job_completed
    except ImportError:  # prometheus_client is missing: events without metrics
        counted = None
    return Announcer(engine.store, options, bus.fire_event, on_complete=counted)


def run_once(engine, bus, wait=0.05, max_events=10000, publish=None, announce=None):
    """Handle the events on the bus (waiting up to ``wait`` seconds for the first, then
    taking what is already there, up to ``max_events`` or for at most the engine's
    ``flush_interval``), then do what is due. ``publish`` receives the job events the Jobs
    page streams (new, return, complete); ``announce`` (an Announcer) fires the completion
    events that are due."""
    running = {jid: job.function for jid, job in engine.jobs.items()} if publish else None
    event = bus.get_event(wait=wait, full=True, auto_reconnect=True)
    handled = 0
    # A fan-in keeps the bus busy (the reader's queue, or Salt's no_block read, which
    # waits some 10 ms, always has a next event): the changes are handed over at least
    # every flush_interval all the same.
    until = time.monotonic() + engine.options.flush_interval
    while event:
        _safely(engine.handle, event.get("tag"), event.get("data"))
        if publish:
            _safely(_publish_bus, publish, event.get("tag"), event.get("data"))
        handled += 1
        if handled >= max_events or time.monotonic() >= until:
            break
        # no_block: Salt's get_event blocks forever when wait is 0 (BusReader's takes both).
        event = bus.get_event(full=True, no_block=True, auto_reconnect=True)
    _safely(engine.tick)
    if announce is not None:
        _safely(announce.tick)
    if publish:
        for jid in running.keys() - engine.jobs.keys():
            publish({"type": "complete", "jid": jid, "function": running[jid]})


def _publish_bus(publish, tag, data):
    from halite_core.http.stream import bus_event

    streamed = bus_event(tag, data)
    if streamed is not None:
        publish(streamed)


def serve_http(config):
    """Start the HTTP API and the Jobs page (halite_core.http.salt_glue.serve); returns
    the hub's publish, or None when ``config`` is None or false (the page is off)."""
    from halite_core.http.salt_glue import serve

    return serve(__opts__, config)


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
    http = options.pop("http", None)
    events = options.pop("events", None)
    engine = build(options)
    # Read as salt-api reads it: Salt's synchronous get_event costs ~0.2 ms an event.
    reader = salt_adapter.BusReader(__opts__)
    bus = None
    try:
        bus = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False)
        announce = announcer(engine, bus, events)
        publish = serve_http(http)  # None: off; `http: {}` serves with the defaults
        reader.wait_listening()  # subscribed before the running set is rebuilt
        engine.recover()
        freeze_long_lived()  # what this process holds for its life, out of the full GC passes
        while True:
            run_once(engine, reader, publish=publish, announce=announce)
    finally:
        engine.flush()
        engine.store.close()
        reader.close()
        if bus is not None:
            bus.destroy()
