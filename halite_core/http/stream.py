"""The event stream: the engine's job events fanned out to Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import tornado.iostream

from halite_core.http.handlers import Base
from halite_core.http.limits import RETRY_AFTER, Unavailable
from halite_core.http.sessions import Session
from halite_core.permissions import Denied
from halite_core.store.writes import function_name

KEEPALIVE_SECONDS = 15.0
# Put into a stream's queue when its session is logged out: the stream ends.
ENDED: dict[str, Any] = {"type": "ended"}


class Hub:
    """Fans the engine's job events out to the open streams. ``publish`` may be called from
    any thread; each stream filters by what its user may view."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, event: Mapping[str, Any]) -> None:
        loop = self.loop
        if loop is None or not self._queues:
            return
        loop.call_soon_threadsafe(self._deliver, dict(event))

    def _deliver(self, event: dict[str, Any]) -> None:
        for queue in list(self._queues):
            if queue.qsize() < 1000:  # a stalled reader loses events, not the engine
                queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(queue)


def bus_event(tag: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stream's view of a bus event: ``new`` and ``return`` of jobs, else None."""
    parts = tag.split("/") if isinstance(tag, str) else []
    if len(parts) < 4 or parts[0] != "salt" or parts[1] != "job" or not isinstance(data, Mapping):
        return None
    jid, what = parts[2], parts[3]
    if what == "new" and len(parts) == 4:
        tgt = data.get("tgt")
        return {
            "type": "new", "jid": jid, "function": data.get("fun"), "user": data.get("user"),
            "target": ",".join(map(str, tgt)) if isinstance(tgt, list) else tgt,
            "target_type": data.get("tgt_type"), "minions": len(data.get("minions") or []),
        }  # fmt: skip
    if what == "ret" and len(parts) == 5:
        return {
            "type": "return", "jid": jid, "minion": parts[4], "function": data.get("fun"),
            "success": data.get("success"), "retcode": data.get("retcode"),
        }  # fmt: skip
    return None


class Stream(Base):
    """Server-Sent Events for one session. It ends with its session: at once on a logout
    here, at the token's expiry, and at the next keep-alive once the token is gone from
    Salt's store (logged out through salt-api, or on another master sharing the store)."""

    async def get(self) -> None:
        # EventSource cannot send headers: the page passes its token in the query string
        # (which the access log leaves out).
        token = self.token() or self.get_argument("token", None)
        session = await self.session(token)
        if session is None:
            return
        try:  # the same check as the listings, audited when it refuses
            await self.web.run("view_scope", session.user, "stream", {})
        except Denied as denied:
            self.write_json(403, {"error": str(denied), "missing": denied.needed})
            return
        except Unavailable as exc:
            self.refuse(503, str(exc), RETRY_AFTER)
            return
        grants = self.web.service.grants(session.user)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        queue = self.web.hub.subscribe()
        streams = self.web.streams.setdefault(session.token, set())
        streams.add(queue)
        try:
            self.write(": halite job events\n\n")
            await self.flush()
            while True:
                left = session.expire - time.time()
                try:
                    event = await asyncio.wait_for(queue.get(), min(KEEPALIVE_SECONDS, left))
                except asyncio.TimeoutError:
                    event = None
                if event is ENDED or time.time() >= session.expire:
                    break  # logged out here, or expired: the stream ends with the session
                if event is None:
                    if not await self._still_valid(session):
                        break
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    continue
                if not grants.allows("view", "job", function_name(event.get("function")) or ""):
                    continue  # not this user's to see, nor to know of
                self.write(f"event: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n")
                await self.flush()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self.web.hub.unsubscribe(queue)
            streams.discard(queue)
            if not streams and self.web.streams.get(session.token) is streams:
                del self.web.streams[session.token]

    async def _still_valid(self, session: Session) -> bool:
        """Whether the token is still in Salt's store. A store that does not answer keeps
        the stream until the next keep-alive (the token's expiry ends it regardless)."""
        try:
            return await self.web.session(session.token) is not None
        except Unavailable:
            return True
