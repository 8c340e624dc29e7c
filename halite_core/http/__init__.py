"""The HTTP API and the Jobs page, served by the halite engine (Tornado, which Salt ships).

Every request is answered by :class:`~halite_core.service.Service`, the same checked and
audited logic as the runners. The rooms: ``app`` (:class:`~.app.WebApp`: the pools, the
routes, the server), ``handlers`` (one per route), ``stream`` (the event hub and the
Server-Sent Events), ``sessions`` (Salt's tokens), ``limits`` (the login throttle and the
bounded slots), ``contract`` (the OpenAPI
document, generated from the typed models) and ``salt_glue`` (:func:`~.salt_glue.serve`:
all of the above built from the master's opts, which is what the engine calls).

**Sessions are Salt's own eauth tokens**, the ones salt-api hands out
(:mod:`~halite_core.http.sessions`). ``POST /api/login`` with ``{"username",
"password", "eauth"}`` (``eauth`` defaults to ``http:eauth``) asks Salt's external auth
and answers a token stored in the master's token store (``eauth_tokens``, by default files
under ``cachedir``). Who may log in is Salt's ``external_auth``, as for salt-api: a right
password is not enough, the user or one of their groups must be granted something under
``external_auth:<eauth>``; what they may then see and do is halite's own ``halite:``
permissions. A session lasts the master's ``token_expire`` (default 43200 s, 12 hours)
from the login, whatever the engine does meanwhile: it outlives a restart of the engine
or of the master, and ends at its expiry, at ``POST /api/logout`` (which removes the token
from Salt's store, ending a salt-api session of the same token too), or when the user is
no longer granted anything under ``external_auth``. A token made by salt-api's ``/login``
(or ``salt -T``) on this master is a halite session as well, for the token's user.

Requests carry the token in the ``X-Auth-Token`` header (or ``Authorization: Bearer``),
never in a cookie, so a page on another site cannot make a browser send it (a kill or a
re-run cannot be forged); the event stream, which a browser's EventSource opens without headers,
also takes it as ``?token=`` (the access log leaves query strings out). Errors are JSON:
400 for a bad argument, 401 without a session, 403 naming the missing permission, 404 for
an unknown job, 429 (with ``Retry-After``) for a login that must wait (:class:`~.limits.
LoginThrottle`) or a kill, re-run or live listing past its limits, 502 for a re-run's
publish the master refused, and 503 when the database, Salt's token store (or, for a kill
or a live listing, the minions; for a re-run, the master) did not answer within the
request's bound. A request body over 64 KiB is refused: the server closes the
connection.

Work that waits happens on thread pools, never on the event loop: logins on their own
(Salt's external auth; those whose user name or address failed lately on others again),
token lookups on theirs, kills and live listings on theirs (they wait for the minions),
re-runs on theirs (they wait for the master to take the publish),
and everything else on the main pool, so none of them can hold up a plain read. Each
pool's calls are bounded (:class:`~.limits.Slots`), in all and per user (or per user name
and address), and a call keeps its slot until its thread is done with it, not only until
its request was answered 503.

``GET /api/jobs/stream`` is Server-Sent Events: ``new``, ``return`` and ``complete`` as the
engine sees them on the bus, filtered by what the user may view. A stream ends with its
session: at once on a logout through this API, at the token's expiry, and within a
keep-alive (15 s) once the token is gone from Salt's store otherwise.
"""
