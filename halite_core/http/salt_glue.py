"""The HTTP API on a Salt master: everything it needs of Salt, built from the master's opts.

:func:`serve` is what the engine calls with its ``__opts__`` and its ``http:`` options:
Salt's token store for the sessions (:class:`~halite_core.http.sessions.SaltSessions`),
and, from halite_core.salt_adapter, the service (the engine's store, the policy, kills
and re-runs through a LocalClient per call) and the live listing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from halite_core import salt_adapter
from halite_core.config import HttpOptions
from halite_core.http.app import WebApp
from halite_core.http.sessions import SaltSessions
from halite_core.live import live_limit

log = logging.getLogger(__name__)

Publish = Callable[[Mapping[str, Any]], None]


def serve(opts: dict[str, Any], config: object) -> Publish | None:
    """Start the HTTP API and the Jobs page in a thread of their own; returns the hub's
    publish (the engine hands it the bus's job events), or None when ``config`` is None
    or false (the page is off). An empty mapping serves it with the defaults. Bad
    ``http:`` options, unreadable TLS files or a port in use raise ConfigError, which
    names the option, before anything is served."""
    if config is None or config is False:
        return None
    options = HttpOptions.from_config(config)
    # The process's one store for these settings: the engine's own, not a second one.
    service = salt_adapter.service_for(opts, shared_store=True)

    def live_jobs(limit: object, scope: tuple[str, ...] | None) -> Mapping[str, Any]:
        return salt_adapter.live_listing(opts, live_limit(limit), scope)

    app = WebApp(
        service, SaltSessions(opts), live_jobs, default_eauth=options.eauth,
        request_timeout=options.request_timeout, salt_timeout=salt_adapter.gather_timeout(opts),
        metrics_only=options.metrics_only, metrics_token=options.metrics_token,
    )  # fmt: skip
    app.serve_in_thread(options.host, options.port, options.ssl, options.proxy_headers)
    return app.hub.publish
