"""All that halite needs of Salt, built from a master's options, in one place: the loader
modules (returner, engine, runners) and the HTTP API call these instead of each building
its own settings and clients.

- :func:`settings_from` -- halite's :class:`~halite_core.config.Settings` of a master, with
  the JID clock of this Salt version;
- :func:`service_for` -- the checked, audited operations for the runners and the API;
- :func:`kill_sender`, :func:`find_job_sender`, :func:`rerun_sender` -- what the kill, the
  engine and a re-run send to minions, through a LocalClient per call (Salt's clients are
  not thread-safe, and shared ones hand one call's replies to another);
- :func:`live_listing` -- the live listing: the master's job cache and
  ``saltutil.running`` on every minion;
- :class:`BusReader` -- the master's event bus, read for the engine as salt-api reads it.

Salt is imported inside the functions: halite_core stays importable (and its tests run)
where only the returner's dependencies are.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from halite_core.announce import rerun_tag
from halite_core.api import Page
from halite_core.config import Settings, jid_utc_for
from halite_core.jobcache import JobStore, get_store
from halite_core.live import live_page, running_jids
from halite_core.permissions import policy_from_opts
from halite_core.rerun import Plan
from halite_core.service import Service

log = logging.getLogger(__name__)

SendKill = Callable[[str, list[str], str], Mapping[str, Any]]
SendFindJob = Callable[[str, list[str]], "str | None"]
SendRerun = Callable[[Plan, str], Mapping[str, Any]]


def jid_utc(opts: Mapping[str, Any]) -> bool:
    """Whether this Salt writes JIDs in UTC (see :func:`halite_core.config.jid_utc_for`)."""
    import salt.config

    return jid_utc_for(opts, salt.config.DEFAULT_MASTER_OPTS)


def settings_from(opts: Mapping[str, Any]) -> Settings:
    """halite's settings of the master whose options are ``opts``."""
    return Settings.from_opts(opts, jid_utc=jid_utc(opts))


def gather_timeout(opts: Mapping[str, Any]) -> float:
    return float(opts.get("gather_job_timeout", 10))


def service_for(opts: Mapping[str, Any], shared_store: bool = False) -> Service:
    """The service of this master. ``shared_store``: the process's one store for these
    settings (the engine's process); else a store of its own (a runner's call)."""
    settings = settings_from(opts)
    store = get_store(settings) if shared_store else JobStore(settings)
    return Service(
        store, policy_from_opts(opts), opts.get("id"), kill_sender(opts), rerun_sender(opts)
    )


def kill_sender(opts: Mapping[str, Any]) -> SendKill:
    """``saltutil.kill_job`` to the minions still running a job: a list target, never ``*``,
    published as ``user`` (the kill job is listed under who killed; see
    :func:`rerun_sender` for when Salt accepts that name)."""
    timeout = gather_timeout(opts)

    def send_kill(jid: str, minions: list[str], user: str = "") -> Mapping[str, Any]:
        import salt.client

        with salt.client.get_local_client(mopts=opts) as client:
            if user:
                client.salt_user = user
            return client.cmd(minions, "saltutil.kill_job", [jid], tgt_type="list", timeout=timeout)

    return send_kill


def rerun_sender(opts: Mapping[str, Any]) -> SendRerun:
    """Publish a re-run's plan as ``user``: the job's function, arguments and keyword
    arguments to a list of minions (never ``*``), with the job's returner and publish
    options, and the job it re-runs in the publish's ``metadata`` (``halite_rerun_of``,
    which Salt's own ``jobs.list_job`` shows), without waiting for the returns. Then
    ``<tag_prefix>/<jid>/rerun`` on the master's bus (the engine counts it for Prometheus;
    a reactor may act on it).

    The publish names the caller as its user, as Salt's own clients do: Salt's
    ``publisher_acl_blacklist`` applies to that name, and the job's ``user`` is the
    caller's. Salt accepts that name with the master's key when the master runs as root or
    ``salt``; a ``sudo_<user>`` name too, unless ``sudo_acl`` is on, when ``publisher_acl``
    must grant the user the function. Other names' ``publisher_acl`` entries do not apply
    to a publish with the master's key: halite's ``run:job:`` permission is the check."""
    timeout = gather_timeout(opts)
    tag_for = rerun_tag(opts)

    def send_rerun(plan: Plan, user: str) -> Mapping[str, Any]:
        import salt.client
        import salt.utils.args

        arg = salt.utils.args.condition_input(plan.arguments, plan.kwargs)
        with salt.client.get_local_client(mopts=opts) as client:
            if user:
                client.salt_user = user
            published = client.pub(
                plan.minions, plan.function, arg, tgt_type="list", ret=plan.ret,
                timeout=timeout, **plan.options,
            )  # fmt: skip
        if not isinstance(published, Mapping) or not published.get("jid"):
            raise PublishRefused(
                f"the master refused the publish of {plan.function}"
                if not isinstance(published, Mapping) or published.get("minions") != []
                else "none of the minions has an accepted key"
            )
        jid = str(published["jid"])
        minions = list(published.get("minions") or [])
        notice = {"jid": jid, "rerun_of": plan.jid, "function": plan.function, "user": user,
                  "selection": plan.selection, "minions": minions}  # fmt: skip
        _fire(opts, tag_for(jid), notice)
        return published

    return send_rerun


class PublishRefused(RuntimeError):
    """The master answered a publish without a job id."""


def _fire(opts: Mapping[str, Any], tag: str, data: Mapping[str, Any]) -> None:
    import salt.utils.event

    try:
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as bus:
            bus.fire_event(dict(data), tag)
    except Exception:  # noqa: BLE001 - the re-run is out; the event is a notice
        log.warning("halite: could not fire %s on the master's bus", tag, exc_info=True)


def find_job_sender(opts: Mapping[str, Any]) -> SendFindJob:
    """``saltutil.find_job`` to the minions the engine asks about a job, without waiting
    for the answers (they arrive on the bus); the find_job's jid, or None."""
    import salt.client

    # The engine's main loop is its one thread that asks: one client for it.
    client = salt.client.get_local_client(mopts=opts)

    def send_find_job(jid: str, minions: list[str]) -> str | None:
        log.info("halite engine: asking %s whether they still run %s", ", ".join(minions), jid)
        return client.cmd_async(minions, "saltutil.find_job", [jid], tgt_type="list") or None

    return send_find_job


def live_listing(opts: Mapping[str, Any], size: int, scope: tuple[str, ...] | None) -> Page:
    """The ``size`` newest jobs of the master's job cache, with those that some minion
    still runs (``saltutil.running``) marked running, within the caller's ``scope``.
    Raises Salt's SaltClientError when the minions cannot be asked."""
    import salt.client
    import salt.minion

    cache = opts["master_job_cache"]
    with salt.minion.MasterMinion(opts) as mminion:
        found = mminion.returners[f"{cache}.get_jids_filter"](size, True)
    with salt.client.get_local_client(mopts=opts) as client:
        answers = client.cmd("*", "saltutil.running", timeout=gather_timeout(opts))
    return live_page(found, running_jids(answers), scope, jid_utc(opts), opts.get("id"))


BUS_BACKLOG_BYTES = 256 * 2**20  # events (as the bus carries them) held for the engine
LISTENING = "halite/engine/listening"  # fired until the reader has seen it: subscribed
BAD_FRAME_PAUSE = 1.0  # seconds before the reader connects again after a frame it could not read


class ReaderStopped(RuntimeError):
    """The bus reader's thread ended: the engine stops, and Salt starts it again."""


class BusReader:
    """The master's event bus, read for the engine by Salt's asynchronous subscriber (the
    master's IPC publish client, as salt-api's event listener reads it) on an event loop
    that runs for good in a thread of its own, handing each event on through a queue.

    Salt's synchronous ``get_event`` runs an event loop once per call, some 0.2 ms of CPU
    an event: three quarters of what a 10,000-minion fan-in cost the engine's main thread.

    The queue holds at most ``backlog`` bytes of events as the bus carries them (unpacked
    by the engine's thread as it takes them). When the engine falls behind, the reader
    waits with the next event and the rest wait in the bus's socket, as they would for a
    synchronous reader. A frame that cannot be read is logged and the reader connects
    again. If the reader's thread ends, :meth:`get_event` raises :class:`ReaderStopped`,
    so that the engine's process ends and Salt starts it again.

    ``get_event`` takes the arguments of Salt's, so the engine's loop reads either.
    """

    def __init__(self, opts: Mapping[str, Any], backlog: int = BUS_BACKLOG_BYTES) -> None:
        import salt.utils.event

        self._opts = opts
        self._unpack = salt.utils.event.SaltEvent.unpack
        self._events: collections.deque[bytes] = collections.deque()
        self._held = 0
        self._backlog = backlog
        self._room = threading.Condition()
        self._closed = threading.Event()
        self._listening = threading.Event()
        marker = f"{LISTENING}/{uuid.uuid4().hex}"
        self._marker = marker
        self._marker_frame = (marker + salt.utils.event.TAGEND).encode()
        self._loop = asyncio.new_event_loop()
        self._pump = self._loop.create_task(self._read())  # runs once the thread runs the loop
        self._thread = threading.Thread(target=self._run, name="halite-bus", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._pump)
        except asyncio.CancelledError:
            pass
        except BaseException:  # noqa: BLE001 - the engine's thread learns of it
            log.exception("halite engine: the bus reader stopped")
        finally:
            self._loop.close()
            with self._room:
                self._room.notify_all()

    async def _read(self) -> None:
        import salt.transport

        while not self._closed.is_set():
            client = salt.transport.ipc_publish_client("master", self._opts, io_loop=self._loop)
            try:
                while not self._closed.is_set():
                    raw = await client.recv()  # connects, and again after a disconnect
                    if raw is not None:
                        self._take(raw)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a frame it cannot read: connect again
                log.warning(
                    "halite engine: a frame on the bus could not be read; connecting again",
                    exc_info=True,
                )
                await asyncio.sleep(BAD_FRAME_PAUSE)
            finally:
                client.close()

    def _take(self, raw: bytes) -> None:
        if raw.startswith(self._marker_frame):
            self._listening.set()
            return
        size = len(raw)
        warned = False
        with self._room:
            while self._held and self._held + size > self._backlog:
                if self._closed.is_set():
                    return
                if not warned:
                    warned = True
                    log.warning(
                        "halite engine: %d events (%d MB) wait for the engine; reading paused",
                        len(self._events),
                        self._held // 2**20,
                    )
                self._room.wait(0.5)
            self._events.append(raw)
            self._held += size
            self._room.notify_all()

    def wait_listening(self, timeout: float = 30.0) -> bool:
        """Until the subscriber is connected: fire a marker event (``halite/engine/
        listening/<id>``, which the engine does not hand on) until it comes back, so that
        no event after this call is missed. False, and a warning, if it did not in time."""
        import salt.utils.event

        deadline = time.monotonic() + timeout
        with salt.utils.event.get_master_event(
            self._opts, self._opts["sock_dir"], listen=False
        ) as bus:
            while not self._listening.is_set() and time.monotonic() < deadline:
                if not self.running:
                    raise ReaderStopped("the bus reader stopped before it was subscribed")
                bus.fire_event({}, self._marker)
                self._listening.wait(0.1)
        if not self._listening.is_set():
            log.warning("halite engine: not yet subscribed to the bus after %.0f s", timeout)
        return self._listening.is_set()

    def get_event(
        self, wait: float = 5, full: bool = True, no_block: bool = False, **_: Any
    ) -> dict[str, Any] | None:
        """The next event as Salt's ``get_event(full=True)`` gives it, or None: at once
        with ``no_block``, else after at most ``wait`` seconds. Raises
        :class:`ReaderStopped` once the reader's thread has ended and nothing is left."""
        with self._room:
            if not self._events and not no_block:
                self._room.wait_for(lambda: self._events or not self.running, timeout=wait)
            if not self._events:
                if not self.running and not self._closed.is_set():
                    raise ReaderStopped("the bus reader stopped")
                return None
            raw = self._events.popleft()
            self._held -= len(raw)
            self._room.notify_all()
        try:
            tag, data = self._unpack(raw)
        except Exception:  # noqa: BLE001 - one bad event must not stop the engine
            log.warning("halite engine: an event on the bus could not be read", exc_info=True)
            return None
        return {"tag": tag, "data": data}

    @property
    def running(self) -> bool:
        """Whether the reader's thread still runs (until :meth:`close`)."""
        return self._thread.is_alive()

    def close(self) -> None:
        self._closed.set()
        with self._room:
            self._room.notify_all()
        try:
            self._loop.call_soon_threadsafe(self._pump.cancel)
        except RuntimeError:  # the loop has closed: the thread has ended already
            pass
        self._thread.join(5)
