"""The HTTP API on a Salt master: everything it needs of Salt, built from the master's opts.

:func:`serve` is what the engine calls with its ``__opts__`` and its ``http:`` options:
Salt's token store for the sessions (:class:`~halite_core.http.sessions.SaltSessions`),
Salt's LocalClient for kills and live listings (one per call: Salt's clients are not
thread-safe, and the API answers from several threads), the master's job cache for the
live listing, and halite's store and policy from the ``halite:`` options.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from halite_core.config import Settings, jid_utc_for
from halite_core.http.app import WebApp
from halite_core.http.options import HttpOptions
from halite_core.http.sessions import SaltSessions
from halite_core.jobcache import get_store
from halite_core.permissions import policy_from_opts
from halite_core.service import Service

log = logging.getLogger(__name__)

Publish = Callable[[Mapping[str, Any]], None]


def serve(opts: dict[str, Any], config: object) -> Publish | None:
    """Start the HTTP API and the Jobs page in a thread of their own; returns the hub's
    publish (the engine hands it the bus's job events), or None when ``config`` is None
    or false (the page is off). An empty mapping serves it with the defaults. Bad
    ``http:`` options, unreadable TLS files or a port in use raise ConfigError, which
    names the option, before anything is served."""
    import salt.config

    if config is None or config is False:
        return None
    options = HttpOptions.from_config(config)
    settings = Settings.from_opts(opts, jid_utc=jid_utc_for(opts, salt.config.DEFAULT_MASTER_OPTS))
    gather_timeout = float(opts.get("gather_job_timeout", 10))
    send_kill = _kill_sender(opts, gather_timeout)
    # The process's one store for these settings: the engine's own, not a second one.
    service = Service(get_store(settings), policy_from_opts(opts), opts.get("id"), send_kill)
    app = WebApp(
        service, SaltSessions(opts), _live_lister(opts, settings, gather_timeout),
        default_eauth=options.eauth, request_timeout=options.request_timeout,
        salt_timeout=gather_timeout,
    )  # fmt: skip
    app.serve_in_thread(options.host, options.port, options.ssl, options.proxy_headers)
    return app.hub.publish


def _kill_sender(
    opts: dict[str, Any], timeout: float
) -> Callable[[str, list[str]], Mapping[str, Any]]:
    def send_kill(jid: str, minions: list[str]) -> Mapping[str, Any]:
        import salt.client

        # A LocalClient per call: shared, one call's replies reach another (a kill
        # answered not_running while its minion was signalled).
        with salt.client.get_local_client(mopts=opts) as client:
            return client.cmd(minions, "saltutil.kill_job", [jid], tgt_type="list", timeout=timeout)

    return send_kill


def _live_lister(
    opts: dict[str, Any], settings: Settings, timeout: float
) -> Callable[[object, tuple[str, ...] | None], Mapping[str, Any]]:
    def live_jobs(limit: object, scope: tuple[str, ...] | None) -> Mapping[str, Any]:
        import salt.client
        import salt.minion

        from halite_core.live import live_limit, live_page, running_jids

        size = live_limit(limit)
        cache = opts["master_job_cache"]
        with salt.minion.MasterMinion(opts) as mminion:
            found = mminion.returners[f"{cache}.get_jids_filter"](size, True)
        with salt.client.get_local_client(mopts=opts) as client:
            answers = client.cmd("*", "saltutil.running", timeout=timeout)
        return live_page(found, running_jids(answers), scope, settings.jid_utc, opts.get("id"))

    return live_jobs
