"""The HTTP API and the Jobs page, served by the halite engine (Tornado, which Salt ships).

Every request is answered by :class:`~halite_core.service.Service`, the same checked and
audited logic as the runners. A person logs in with Salt's external auth (the engine
passes an ``authenticate(username, password, eauth)`` that asks Salt) and gets a session
token; requests carry it in the ``X-Auth-Token`` header, never in a cookie, so a page on
another site cannot make a browser send it (a kill cannot be forged). Errors are JSON:
400 for a bad argument, 401 without a session, 403 naming the missing permission, 404 for
an unknown job, 429 (with ``Retry-After``) for a login that must wait (:class:`LoginThrottle`)
or a kill or live listing past its limits, and 503 when the database (or, for a kill or a
live listing, the minions) did not answer within the request's bound. A request body over
64 KiB is refused: the server closes the connection.

Work that waits happens on thread pools, never on the event loop: logins on their own
(Salt's external auth; those whose user name or address failed lately on others again),
kills and live listings on theirs (they wait for the minions), and everything else on the
main pool, so none of them can hold up a plain read. Each pool's calls are bounded
(:class:`Slots`), in all and per user (or per user name and address), and a call keeps its
slot until its thread is done with it, not only until its request was answered 503.

``GET /api/jobs/stream`` is Server-Sent Events: ``new``, ``return`` and ``complete`` as the
engine sees them on the bus, filtered by what the user may view.
"""
