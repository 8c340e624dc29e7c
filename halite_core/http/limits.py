"""Limits of the HTTP API: the login throttle, bounded slots of threads, and the
refusals they answer (429 :class:`Busy`, 503 :class:`Unavailable`).
"""

from __future__ import annotations

import ipaddress
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

# Logins wait for Salt's external auth, which makes every failure as slow as the slowest
# one yet (PAM: about 2 s). They get threads of their own, so that failing logins cannot
# hold up the API, in two lanes. A login whose user name and address did not fail within
# the throttle's window, and have no other login waiting, waits on everyone's lane
# (LOGIN_THREADS, LOGINS_WAITING in all); any other (a failure behind it, or a second at
# once: its first may be failing) waits on the suspect lane (SUSPECT_*), so that a flood,
# from however many addresses, fills that lane only. A name or an address has at most
# LOGINS_PER_KEY logins waiting (one on everyone's lane, the rest on the suspect one);
# past these bounds a login is answered 429 at once.
LOGIN_THREADS = 4
LOGINS_WAITING = 16
LOGINS_PER_KEY = 2
SUSPECT_THREADS = 2
SUSPECT_WAITING = 8
# Live listings ask every minion and wait for the slowest (gather_job_timeout for one that
# is down): their own threads, one per user at a time, LIVE_CALLS in all (running or
# waiting for a thread); past that, 429. Kills wait for the minions they signal: their
# own threads too, KILLS_PER_USER per user, KILL_CALLS in all.
LIVE_THREADS = 2
LIVE_CALLS = 4
LIVE_PER_USER = 1
KILL_THREADS = 4
KILL_CALLS = 8
KILLS_PER_USER = 4
# Re-runs publish to the minions and wait for the master to take the publish (the master
# answers the new jid and the minions it published to; the returns are not waited for).
# Threads of their own again: a user with re-runs waiting for a master that does not
# answer must still be able to kill (and the other way round), and neither kind can take
# the other's threads. Fewer per user than kills: each one starts a job on minions.
RERUN_THREADS = 2
RERUN_CALLS = 4
RERUNS_PER_USER = 2
API_THREADS = 4
SESSION_THREADS = 4  # looking tokens up in Salt's token store
# A request waits http:request_timeout (config.REQUEST_TIMEOUT) for the database before it
# is answered 503; kills, re-runs and live listings also wait for Salt (salt_timeout).
SALT_TIMEOUT = 10.0
RETRY_AFTER = 5  # seconds, in a 503's Retry-After


class Unavailable(Exception):
    """The database (or the minions) did not answer within the request's bound: 503.
    ``started``: whether the call had a thread by then (one that had not was dropped: it
    is not carried out)."""

    def __init__(self, message: str, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


class Busy(Exception):
    """Too many calls of this kind (in all, or of this user) are running: 429."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Failures:
    count: int  # failed logins (an address: of distinct names, then all), each within the window
    last: float  # when the last one failed
    locked_until: float = 0.0
    # An address's: the user names that failed there, as hashes (a collision only makes
    # the lock come one name later), so that 10,000 addresses remembered stay small.
    names: set[int] = field(default_factory=set)


class LoginThrottle:
    """Failed logins, per user name and per client address, with exponential back-off.

    A user name (``user:<name>``) that failed ``failures`` times, each within ``window``
    seconds of the one before, from anywhere, is locked for ``base_delay`` seconds, and
    each further failure doubles that, up to ``max_delay``. An address (``address:<ip>``;
    an IPv6 address by its /64, which one host is given whole) is locked the same way once
    its failures spread over ``address_names`` user names: one user mistyping a password
    from 127.0.0.1, where an SSH tunnel or a local proxy puts everyone, locks that user
    only, while a guesser going through a list of names locks the address. A login for a
    locked name or from a locked address is refused without asking the external auth.

    The price: anyone can slow down a named user's logins by failing them on purpose (the
    lock is the user's whatever the address), as with any per-account lock-out; the
    back-off caps it at ``max_delay`` per failure. A right password clears its user name
    (not its address: one valid account must not reset a guesser's count). At most
    ``max_keys`` keys are remembered, the least recently failed forgotten first, so a
    flood of made-up names cannot fill the memory. Used from the event loop's thread
    only."""

    FAILURES = 5
    ADDRESS_NAMES = 20

    def __init__(
        self,
        failures: int = FAILURES,
        window: float = 900.0,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_keys: int = 10_000,
        address_names: int = ADDRESS_NAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_keys = max_keys
        self.address_names = address_names
        self.clock = clock
        self._failed: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def keys(user: str, address: str | None) -> tuple[str, str]:
        """``(user key, address key)``. The name normalised (NFKC, trimmed, casefolded): an
        external auth that ignores case or spacing (LDAP) must not give each spelling of
        a name its own count; cut short, so that a key's size is bounded."""
        name = unicodedata.normalize("NFKC", user).strip().casefold()[:256]
        return f"user:{name}", f"address:{_address_key(address)}"

    def __len__(self) -> int:
        return len(self._failed)

    def wait(self, keys: Iterable[str]) -> float:
        """Seconds until a login for these keys may ask the external auth (0: now)."""
        now = self.clock()
        found = (self._failed.get(key) for key in keys)
        return max([0.0, *(f.locked_until - now for f in found if f is not None)])

    def suspect(self, keys: Iterable[str]) -> bool:
        """Whether a login for these keys failed within the window (its name, or from its
        address): such a login waits on the suspect threads, not on everyone's."""
        now = self.clock()
        found = (self._failed.get(key) for key in keys)
        return any(f is not None and now - f.last <= self.window for f in found)

    def failed(self, keys: tuple[str, str]) -> float:
        """Count a failed login for ``keys`` (:meth:`keys`); returns the longest lock it
        started (0: none)."""
        user_key, address_key = keys
        now = self.clock()
        locked = max(self._fail(user_key, now, None), self._fail(address_key, now, user_key))
        while len(self._failed) > self.max_keys:
            self._failed.popitem(last=False)
        self.prune()
        return locked

    def _fail(self, key: str, now: float, name: str | None) -> float:
        """Count one failure of ``key`` (an address's: of the user name ``name``); returns
        the lock it started. An address counts each name once until ``address_names``
        names have failed there, then every failure: one name failing again and again
        locks that name alone."""
        entry = self._failed.pop(key, None)
        if entry is None or now - entry.last > self.window:
            entry = _Failures(count=0, last=now)
        threshold = self.failures
        if name is None:
            entry.count += 1
        else:
            threshold = self.address_names
            spread = len(entry.names) >= self.address_names
            if spread or hash(name) not in entry.names:
                entry.count += 1
                if not spread:  # bounded: the names up to the threshold, no more
                    entry.names.add(hash(name))
        entry.last = now
        self._failed[key] = entry  # now the most recent
        if entry.count < threshold:
            return 0.0
        doublings = min(entry.count - threshold, 32)
        delay = min(self.base_delay * 2**doublings, self.max_delay)
        entry.locked_until = now + delay
        return delay

    def succeeded(self, user_key: str) -> None:
        self._failed.pop(user_key, None)

    def prune(self) -> None:
        """Forget the keys that are neither locked nor failed within the window."""
        now = self.clock()
        while self._failed:
            key, entry = next(iter(self._failed.items()))
            if now - entry.last <= self.window or entry.locked_until > now:
                break
            del self._failed[key]


def _address_key(address: str | None) -> str | None:
    """An address as the throttle counts it: an IPv6 address by its /64 (a host is given
    a whole /64, and could otherwise fail from a new address each time)."""
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is 192.0.2.1
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class Slots:
    """Calls of one kind on a pool of threads of their own, bounded: at most ``total``
    running or waiting for a thread, and ``per_key`` for any one key (a user; a user name
    and an address). A slot is given back when its call's thread is done with it (or the
    call was dropped before it started), not when its request was answered 503: a call
    still waiting for a minion, or for the external auth, keeps its slot, so that asking
    again cannot pile calls up behind it. Counted on the event loop's thread only."""

    def __init__(
        self, name: str, threads: int, total: int, per_key: int, busy: str, full: str
    ) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=f"halite-{name}")
        self.total = total
        self.per_key = per_key
        self.busy_message = busy  # a key has per_key calls running
        self.full_message = full  # total calls are running
        self.in_use = 0
        self._by_key: dict[str, int] = {}

    def busy(self, keys: Iterable[str]) -> bool:
        """Whether one of ``keys`` has ``per_key`` calls running or waiting."""
        return any(self._by_key.get(key, 0) >= self.per_key for key in keys)

    def refusal(self, keys: Iterable[str]) -> str | None:
        """Why a call for ``keys`` cannot have a slot now, or None."""
        if self.busy(keys):
            return self.busy_message
        if self.in_use >= self.total:
            return self.full_message
        return None

    def take(self, keys: Iterable[str]) -> Callable[[], None]:
        """Take a slot; returns what gives it back (once, however often it is called)."""
        held = tuple(keys)
        self.in_use += 1
        for key in held:
            self._by_key[key] = self._by_key.get(key, 0) + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            self.in_use -= 1
            for key in held:
                left = self._by_key.get(key, 0) - 1
                if left > 0:
                    self._by_key[key] = left
                else:
                    self._by_key.pop(key, None)

        return give_back
