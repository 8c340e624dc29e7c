"""``GET /metrics``: halite's Prometheus metrics (halite_core.metrics), in the text format.

Who may scrape: with ``http:metrics_token`` set, a client that sends it as
``Authorization: Bearer <token>`` (any other answer is 401, from any address); without
one, loopback clients only (any other is 403). Behind a reverse proxy named in
``proxy_headers``, the client is the address the proxy reports, not the proxy's own.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from concurrent.futures import Executor

import tornado.web

from halite_core.http.handlers import client_address
from halite_core.metrics import CONTENT_TYPE, Metrics, render


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` is a loopback address (127.0.0.0/8, ::1, or ::ffff:127.x)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant
    time)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(
        self,
        metrics: Metrics,
        token: str | None,
        proxy_header: str | None,
        pool: Executor,
    ) -> None:
        self.metrics = metrics
        self.metrics_token = token
        self.proxy_header = proxy_header
        self.pool = pool

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        request = self.request
        request.remote_ip = client_address(request.remote_ip, request.headers, self.proxy_header)

    async def get(self) -> None:
        refusal = self.refusal()
        if refusal is not None:
            status, reason = refusal
            if status == 401:
                self.set_header("WWW-Authenticate", 'Bearer realm="halite metrics"')
            self.set_status(status)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(reason + "\n")
            return
        # Off the event loop: the spool's gauge reads its directory, which holds many files
        # while the database is away.
        body = await asyncio.get_running_loop().run_in_executor(self.pool, render, self.metrics)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(body)

    def refusal(self) -> tuple[int, str] | None:
        if self.metrics_token is not None:
            if token_matches(self.request.headers.get("Authorization"), self.metrics_token):
                return None
            return 401, "send the metrics token: Authorization: Bearer <http:metrics_token>"
        if is_loopback(self.request.remote_ip):
            return None
        return 403, "metrics are served to loopback clients only unless http:metrics_token is set"
