"""Sessions of the HTTP API: Salt's own eauth tokens, the ones salt-api hands out.

A login asks Salt (:meth:`SaltSessions.login`): ``LoadAuth.mk_token`` checks the password
with the external auth and stores a token in the master's token store (``eauth_tokens``;
by default files under ``cachedir``), valid for the master's ``token_expire`` (12 hours by
default). As for the runners and today's salt-api, a right password is not enough: the
user, or a group of theirs, must be granted something under ``external_auth:<eauth>``,
or the token is removed again and the login refused.

Every request's token is looked up in that store (:meth:`SaltSessions.find`), so a
session outlives a restart of the engine, ends at its expiry whoever made it, and a token
that salt-api (or ``salt -T``) made on this master is a halite session too: the token's
user is the halite user. Logging out removes the token from Salt's store: it ends the
salt-api session of the same token as well.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Salt's tokens are hex digests (of hash_type: 32 to 128 characters). Anything else is
# refused before it reaches the store: the file cache builds a path from the token, so
# "../minions/..." would read (and, as an expired token, remove) another cache file.
_TOKEN = re.compile(r"[0-9A-Za-z_-]{16,256}")


@dataclass(frozen=True)
class Session:
    """A valid token: whose it is (``user``), its eauth, and when it expires (seconds
    since the epoch)."""

    token: str
    user: str
    eauth: str
    expire: float


class Sessions(Protocol):
    """What the application needs of a session store; every call may block (it is made
    on a thread of its own) and may be made from several threads at once."""

    def login(self, username: str, password: str, eauth: str) -> Session | None:
        """A new session, or None: a wrong password, or the user may do nothing."""
        ...

    def find(self, token: str) -> Session | None:
        """The session of ``token``, or None: unknown, expired, or no longer granted."""
        ...

    def close(self, token: str) -> None:
        """Log out: ``token`` is no session any more."""
        ...


class SaltSessions:
    """Sessions as Salt's eauth tokens, in the store of the master whose ``opts`` these
    are. Salt's ``LoadAuth`` is not thread-safe (its loaders): one per thread."""

    def __init__(self, opts: Mapping[str, Any]) -> None:
        self.opts = opts
        self._local = threading.local()

    def _load_auth(self) -> Any:
        load_auth = getattr(self._local, "load_auth", None)
        if load_auth is None:
            import salt.auth

            load_auth = self._local.load_auth = salt.auth.LoadAuth(self.opts)
        return load_auth

    def login(self, username: str, password: str, eauth: str) -> Session | None:
        load = {"eauth": eauth, "username": username, "password": password}
        auth = self._load_auth()
        try:
            # Salt's eauth check (every failure as slow as the slowest yet), then the token.
            token = auth.mk_token(load)
        except Exception:  # noqa: BLE001 - an external auth that fails refuses the login
            log.warning("halite http: external auth %s failed for %r", eauth, username[:256],
                        exc_info=True)  # fmt: skip
            return None
        if not token or "token" not in token:
            return None
        # As for the runners and salt-api's publishes: the user, or a group of theirs (the
        # token holds them), must be granted something under external_auth:<eauth>.
        granted = None
        try:
            granted = auth.get_auth_list(load, token)
        except Exception:  # noqa: BLE001 - an ACL that cannot be read grants nothing
            log.warning("halite http: the grants of %r under external_auth:%s could not be"
                        " read", username[:256], eauth, exc_info=True)  # fmt: skip
        session = _session(token, str(token["token"])) if granted else None
        if session is None:
            auth.rm_token(token["token"])  # no token left behind for a refused login
        return session

    def find(self, token: str) -> Session | None:
        if not _TOKEN.fullmatch(token):
            return None
        auth = self._load_auth()
        # authenticate_token: the token (None once expired, which Salt then removes), and
        # its eauth still enabled under external_auth; then, as the master does for a
        # token's publish, what it is granted, from the token's name and groups.
        found = auth.authenticate_token({"token": token})
        if not found or not auth.get_auth_list({"token": token}, found):
            return None
        return _session(found, token)

    def close(self, token: str) -> None:
        if _TOKEN.fullmatch(token):
            self._load_auth().rm_token(token)


def _session(data: Mapping[str, Any], token: str) -> Session | None:
    """The session of Salt's token data; None for data that is not a token's."""
    user, eauth, expire = data.get("name"), data.get("eauth"), data.get("expire")
    if not isinstance(user, str) or not user or not isinstance(expire, (int, float)):
        return None
    return Session(token, user, str(eauth), float(expire))
