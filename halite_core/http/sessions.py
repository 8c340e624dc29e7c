"""Sessions of the HTTP API: the token a login hands out, and whose it is."""

from __future__ import annotations

import secrets
import threading
import time

SESSION_SECONDS = 12 * 3600


class Sessions:
    """Tokens handed out at login, in the engine's memory (a restart logs everyone out)."""

    def __init__(self, ttl: float = SESSION_SECONDS) -> None:
        self.ttl = ttl
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (user, time.monotonic() + self.ttl)
        return token

    def user(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            found = self._tokens.get(token)
            if found is None:
                return None
            if found[1] < time.monotonic():
                del self._tokens[token]
                return None
            return found[0]

    def close(self, token: str | None) -> None:
        with self._lock:
            self._tokens.pop(token or "", None)
