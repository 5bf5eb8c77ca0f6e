"""Script change notes: read-your-writes for what caches catalogue answers, without asking
the catalogue on every read.

The catalogue's ScriptEvents go out through its outbox, after the commit and possibly after
the RPC that made the change has answered; a cache dropped by them alone may still serve the
old answer to a caller who has just seen the write succeed. So, besides its ScriptEvent, every
committed catalogue write publishes a *note* (the script's name) on core NATS and flushes it
(PING/PONG) before it answers (`Announcer`). When the PONG comes back, the nats-server has
processed the note, that is queued it on the connection of every subscriber.

A reader (`Barrier`) that must see every write answered before a request of its own arrived
flushes its own connection after the request arrived: one nats-server writes to a
connection in order, so the reader reads any such note before its PONG. One flush serves
every request waiting when it starts (`settled`). It answers False, and the caller asks the
catalogue instead, when it cannot tell: not connected, not subscribed, or the flush failed;
and always when `mode` is "rpc", or "auto" on a server that is part of a cluster or with
several servers configured: through routes, a note published on another server may reach the
reader after its PONG (docs/scheduler.md, "Read-your-writes without a catalogue call").

Notes are on `<prefix>-notes.script.<name>`, outside the event stream's subjects
(`<prefix>.>`): they are hints, never stored; the ScriptEvents stay the durable record."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

Mode = Literal["auto", "nats", "rpc"]


def notes_subject(prefix: str, name: str = ">") -> str:
    """The subject of a script's notes (`>`: all of them)."""
    return f"{prefix}-notes.script.{name}"


class Announcer:
    """The catalogue's side: publish a note and flush it before answering a write."""

    def __init__(self, nc: NATS | None, prefix: str, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._prefix = prefix
        self._timeout_s = timeout_s
        self.failures = 0

    async def announce(self, name: str) -> bool:
        """Publish the note of a committed change of `name` and wait until the server has
        processed it (up to `timeout_s`, e.g. while reconnecting); False if it could not,
        logged: readers relying on notes may then serve the previous answer until the
        change's ScriptEvent reaches them."""
        nc = self._nc
        if nc is None:
            return False
        try:
            await nc.publish(notes_subject(self._prefix, name), name.encode())
            await nc.flush(timeout=self._timeout_s)  # type: ignore[arg-type]
        except Exception as exc:
            self.failures += 1
            log.warning(
                "catalogue: the change note of script %r was not flushed to NATS (%s); "
                "schedulers may resolve its previous versions until its ScriptEvent arrives",
                name,
                exc,
            )
            return False
        return True


async def follow_notes(nc: NATS, prefix: str, forget: Callable[[str | None], None]) -> None:
    """Call `forget(script name)` for every change note from now on (a catalogue replica
    drops its own cache on other replicas' notes as on their ScriptEvents, only sooner)."""

    async def on_note(msg: Msg) -> None:
        try:
            forget(msg.data.decode())
        except UnicodeDecodeError:
            forget(None)

    await nc.subscribe(notes_subject(prefix), cb=on_note)


def clustered(nc: NATS) -> bool:
    """Whether this connection may reach other servers: the server is in a cluster (its
    INFO names one or announces other URLs), or several servers are configured."""
    info: dict[str, Any] = getattr(nc, "_server_info", {}) or {}
    return bool(info.get("cluster") or info.get("connect_urls") or len(nc.servers) > 1)


class Barrier:
    """The reader's side: `forget(name)` for every note, and `settled()` for a request
    that must see every write answered before it arrived."""

    def __init__(self, forget: Callable[[str | None], None], *, mode: Mode = "auto") -> None:
        self._forget = forget
        self._mode = mode
        self._nc: NATS | None = None
        self._sub: Subscription | None = None
        self._live = False
        self._reconnects = 0
        # The flush in progress, and the one that starts when it ends (shared by all who
        # arrive meanwhile: the one in progress may have pinged before they arrived).
        self._current: asyncio.Future[bool] | None = None
        self._next: asyncio.Future[bool] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.flushes = 0

    async def follow(self, nc: NATS, prefix: str) -> None:
        """Subscribe to the notes; live once the server has the subscription."""

        async def on_note(msg: Msg) -> None:
            # No await in here: a note is handled in the step that takes it off the
            # subscription's queue (settled() relies on it).
            try:
                self._forget(msg.data.decode())
            except UnicodeDecodeError:
                self._forget(None)

        self._nc = nc
        self._sub = await nc.subscribe(notes_subject(prefix), cb=on_note)
        await nc.flush()
        self._reconnects = nc.stats["reconnects"]
        use = self._mode == "nats" or (self._mode == "auto" and not clustered(nc))
        self._live = use
        if self._mode == "auto" and not use:
            log.info("NATS is clustered: submits resolve non-exact versions by the catalogue")

    @property
    def live(self) -> bool:
        """Whether `settled` can answer True now."""
        return self._live and self._nc is not None and self._nc.is_connected

    async def settled(self) -> bool:
        """True once every note published (and flushed) before this call is handled;
        False when that cannot be told (the caller asks the source instead)."""
        if not self.live:
            return False
        loop = asyncio.get_running_loop()
        if self._current is None:
            self._current = loop.create_future()
            self._flushing = asyncio.create_task(self._flush(self._current), name="notes-flush")
            return await asyncio.shield(self._current)
        if self._next is None:
            self._next = loop.create_future()
        return await asyncio.shield(self._next)

    async def _flush(self, done: asyncio.Future[bool]) -> None:
        while True:
            ok = await self._round()
            if not done.done():
                done.set_result(ok)
            self._current, self._next = self._next, None
            if self._current is None:
                return
            done = self._current

    async def _round(self) -> bool:
        nc, sub = self._nc, self._sub
        if nc is None or sub is None:
            return False
        try:
            await nc.flush(timeout=2)
        except Exception:
            return False
        self.flushes += 1
        # Notes read before the PONG are on the subscription's queue until its task takes
        # them (and handles each at once): let it.
        for _ in range(1000):
            if not sub.pending_msgs:
                break
            await asyncio.sleep(0)
        else:
            return False
        reconnects = nc.stats["reconnects"]
        if reconnects != self._reconnects:
            # Notes published while disconnected are lost: forget everything, now that the
            # server has our subscription again (it did before this PONG).
            self._reconnects = reconnects
            self._forget(None)
        return nc.is_connected
