"""The scheduler's catalogue cache against a fake catalogue on loopback gRPC and a fake NATS
connection: what is served from memory, what asks the catalogue, and when."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.scheduler.catalogue import CatalogueClient
from shared.errors import InvalidArgument
from shared.script_notes import Mode

PT = catalogue_pb2.ParameterType
N = catalogue_pb2.ParameterDefinition(name="n", type=PT.PARAMETER_TYPE_INTEGER, required=True)


class FakeCatalogue(catalogue_pb2_grpc.CatalogueServiceServicer):
    """Latest is the last version added; counts the RPCs it answers."""

    def __init__(self) -> None:
        self.versions: list[catalogue_pb2.ScriptVersion] = []
        self.calls: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    def add(self, version: str, *definitions: catalogue_pb2.ParameterDefinition) -> None:
        self.versions.append(
            catalogue_pb2.ScriptVersion(
                script_name="s", version=version, sha256=version * 8, parameters=definitions
            )
        )

    async def ResolveVersion(self, request: Any, context: Any) -> catalogue_pb2.ScriptVersion:
        self.calls["ResolveVersion"] += 1
        wanted = request.ref.version
        # Resolved now, answered when the gate opens (an answer on its way).
        answer = next(v for v in reversed(self.versions) if wanted in ("", v.version))
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        return answer

    async def GetScript(self, request: Any, context: Any) -> catalogue_pb2.Script:
        self.calls["GetScript"] += 1
        return catalogue_pb2.Script(name=request.name)

    async def ValidateParameters(
        self, request: Any, context: Any
    ) -> catalogue_pb2.ValidateParametersResponse:
        self.calls["ValidateParameters"] += 1
        return catalogue_pb2.ValidateParametersResponse(version=self.versions[-1])


@dataclass
class FakeNats:
    """What CatalogueClient.follow uses of a NATS client (one server, not clustered)."""

    is_connected: bool = True
    stats: dict[str, int] = field(default_factory=lambda: {"reconnects": 0})
    handlers: list[tuple[str, Callable[[Any], Awaitable[None]]]] = field(default_factory=list)
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    flushes: int = 0
    # While set, a flush waits for it (to hold one in progress).
    gate: asyncio.Event | None = None

    async def subscribe(self, subject: str, cb: Callable[[Any], Awaitable[None]]) -> Any:
        self.handlers.append((subject, cb))

        @dataclass
        class Sub:
            pending_msgs: int = 0

        return Sub()

    async def flush(self, **_: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.flushes += 1

    async def publish_event(self, name: str) -> None:
        """A ScriptEvent on the stream's subject."""
        event = events_pb2.ScriptEvent(script_name=name, type=events_pb2.SCRIPT_EVENT_TYPE_UPDATED)
        await self._deliver(".script.", event.SerializeToString())

    async def publish_note(self, name: str) -> None:
        """A change note (shared/script_notes.py)."""
        await self._deliver("-notes.script.", name.encode())

    async def _deliver(self, kind: str, data: bytes) -> None:
        @dataclass
        class Msg:
            data: bytes

        for subject, handler in self.handlers:
            if kind in subject and (kind != ".script." or "-notes." not in subject):
                await handler(Msg(data))


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeCatalogue, grpc.aio.Channel]]:
    catalogue = FakeCatalogue()
    catalogue.add("1.0.0", N)
    server = grpc.aio.server()
    catalogue_pb2_grpc.add_CatalogueServiceServicer_to_server(catalogue, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield catalogue, channel
    await channel.close()
    await server.stop(None)


async def following(
    channel: grpc.aio.Channel, nc: FakeNats, outage_ttl_s: float = 0.0, mode: Mode = "auto"
) -> CatalogueClient:
    client = CatalogueClient(
        channel, cache_ttl_s=60, outage_ttl_s=outage_ttl_s, read_your_writes=mode
    )
    await client.follow(nc, "runbox.events")  # type: ignore[arg-type]
    return client


def ref(version: str = "") -> common_pb2.ScriptRef:
    return common_pb2.ScriptRef(name="s", version=version)


def values(**items: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(items)
    return out


async def test_pinned_version_is_served_from_memory_until_an_event(fake: Any) -> None:
    """A pinned version asks the catalogue once; its ScriptEvent makes the next submit ask again."""
    catalogue, channel = fake
    nc = FakeNats()
    client = await following(channel, nc)
    for n in (1, 2, 3):
        checked = await client.check(ref("1.0.0"), values(n=n), fresh=True)
        assert checked.validated.values["n"] == n
    assert catalogue.calls == Counter({"ResolveVersion": 1, "GetScript": 1})
    await nc.publish_event("other")
    await client.check(ref("1.0.0"), values(n=1), fresh=True)
    assert catalogue.calls == Counter({"ResolveVersion": 1, "GetScript": 1})
    await nc.publish_event("s")
    await client.check(ref("1.0.0"), values(n=1), fresh=True)
    assert catalogue.calls == Counter({"ResolveVersion": 2, "GetScript": 2})


async def test_local_violations_name_the_submit_fields(fake: Any) -> None:
    """Bad values raise InvalidArgument on parameters.<name>, as the catalogue's do."""
    _, channel = fake
    client = await following(channel, FakeNats())
    with pytest.raises(InvalidArgument) as err:
        await client.check(ref("1.0.0"), values(n="x", extra=1), fresh=True)
    assert {v.field for v in err.value.violations} == {"parameters.n", "parameters.extra"}


async def test_submit_resolves_latest_and_fires_reuse_it(fake: Any) -> None:
    """In mode "rpc", an unpinned submit asks ResolveVersion each time (a new version is
    seen at once); an unpinned fire takes the cached answer."""
    catalogue, channel = fake
    client = await following(channel, FakeNats(), mode="rpc")
    await client.check(ref(), values(n=1), fresh=True)
    await client.check(ref(), values(n=1), fresh=True)
    assert catalogue.calls == Counter({"ResolveVersion": 2, "GetScript": 1})
    catalogue.add("2.0.0")  # no event delivered yet
    checked = await client.check(ref(), values(), fresh=True)
    assert checked.validated.version.version == "2.0.0"
    calls = catalogue.calls.copy()
    first = await client.check(ref(), values(), fresh=False)
    assert await client.check(ref(), values(), fresh=False) is first
    assert catalogue.calls - calls == Counter({"ResolveVersion": 1, "GetScript": 1})


async def test_latest_is_served_after_a_flush_and_dropped_by_a_note(fake: Any) -> None:
    """Mode "auto" on one server: an unpinned submit is answered from the cache after a
    NATS flush; a change note drops the entry, so the next submit sees the new version."""
    catalogue, channel = fake
    nc = FakeNats()
    client = await following(channel, nc)
    await client.check(ref(), values(n=1), fresh=True)
    await client.check(ref(), values(n=2), fresh=True)
    assert catalogue.calls == Counter({"ResolveVersion": 1, "GetScript": 1})
    flushes = nc.flushes
    catalogue.add("2.0.0", N)
    await nc.publish_note("s")
    checked = await client.check(ref(), values(n=3), fresh=True)
    assert checked.validated.version.version == "2.0.0"
    assert catalogue.calls == Counter({"ResolveVersion": 2, "GetScript": 2})
    assert nc.flushes == flushes + 1


async def test_submits_waiting_share_the_next_flush(fake: Any) -> None:
    """Submits arriving while a flush is in progress wait for one more flush, shared by
    them all (the one in progress may have pinged before they arrived)."""
    _, channel = fake
    nc = FakeNats()
    client = await following(channel, nc)
    await client.check(ref(), values(n=1), fresh=True)
    nc.gate, flushes = asyncio.Event(), nc.flushes
    first = asyncio.create_task(client.check(ref(), values(n=1), fresh=True))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(client.check(ref(), values(n=n), fresh=True)) for n in (2, 3)]
    await asyncio.sleep(0.01)
    nc.gate.set()
    await asyncio.gather(first, *later)
    assert nc.flushes == flushes + 2


async def test_clustered_nats_or_no_connection_asks_the_catalogue(fake: Any) -> None:
    """Mode "auto" with several servers, or NATS disconnected: ResolveVersion per submit."""
    catalogue, channel = fake
    clustered = FakeNats(servers=["nats://a:4222", "nats://b:4222"])
    client = await following(channel, clustered)
    await client.check(ref(), values(n=1), fresh=True)
    await client.check(ref(), values(n=1), fresh=True)
    assert catalogue.calls["ResolveVersion"] == 2
    nc = FakeNats()
    client = await following(channel, nc, outage_ttl_s=30.0)
    await client.check(ref(), values(n=1), fresh=True)
    nc.is_connected = False
    await client.check(ref(), values(n=1), fresh=True)
    assert catalogue.calls["ResolveVersion"] == 4


async def test_a_load_started_before_a_note_is_not_joined_after_it(fake: Any) -> None:
    """A submit after a note does not take the answer of a fetch that began before it."""
    catalogue, channel = fake
    nc = FakeNats()
    client = await following(channel, nc)
    catalogue.gate = asyncio.Event()
    before = asyncio.create_task(client.check(ref(), values(n=1), fresh=False))
    await catalogue.asked.wait()  # the old answer is on its way
    catalogue.add("2.0.0", N)
    await nc.publish_note("s")
    after = asyncio.create_task(client.check(ref(), values(n=1), fresh=True))
    await asyncio.sleep(0.01)
    catalogue.gate.set()
    assert (await after).validated.version.version == "2.0.0"
    assert (await before).validated.version.version == "1.0.0"


async def test_outage_limits_what_is_served_from_memory(fake: Any) -> None:
    """With NATS disconnected, entries older than outage_ttl_s are fetched again; after a
    reconnect everything is."""
    catalogue, channel = fake
    nc = FakeNats()
    client = await following(channel, nc, outage_ttl_s=0.0)
    await client.check(ref("1.0.0"), values(n=1))
    nc.is_connected = False
    await client.check(ref("1.0.0"), values(n=1))
    assert catalogue.calls["ResolveVersion"] == 2
    nc.is_connected = True
    await client.check(ref("1.0.0"), values(n=1))
    assert catalogue.calls["ResolveVersion"] == 2
    nc.stats["reconnects"] += 1
    await client.check(ref("1.0.0"), values(n=1))
    assert catalogue.calls["ResolveVersion"] == 3


async def test_young_entries_are_served_during_an_outage(fake: Any) -> None:
    """Within outage_ttl_s an entry is still served while NATS is down."""
    catalogue, channel = fake
    nc = FakeNats()
    client = await following(channel, nc, outage_ttl_s=30.0)
    await client.check(ref("1.0.0"), values(n=1))
    nc.is_connected = False
    await client.check(ref("1.0.0"), values(n=2))
    assert catalogue.calls["ResolveVersion"] == 1


async def test_concurrent_misses_share_one_fetch(fake: Any) -> None:
    """Submits that miss together wait for one ResolveVersion + GetScript."""
    catalogue, channel = fake
    catalogue.gate = asyncio.Event()
    client = await following(channel, FakeNats())
    tasks = [asyncio.create_task(client.check(ref("1.0.0"), values(n=n))) for n in (1, 2, 3)]
    await catalogue.asked.wait()
    catalogue.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r.validated.values["n"] for r in results] == [1, 2, 3]
    assert catalogue.calls == Counter({"ResolveVersion": 1, "GetScript": 1})


async def test_definitions_that_do_not_compile_here_ask_the_catalogue(fake: Any) -> None:
    """A version whose definitions this code refuses is validated by the catalogue."""
    catalogue, channel = fake
    catalogue.add("1.1.0", N, N)  # a duplicate name: refused by compile_definitions
    client = await following(channel, FakeNats())
    await client.check(ref("1.1.0"), values(n=1))
    assert catalogue.calls["ValidateParameters"] == 1


async def test_no_cache_asks_every_time(fake: Any) -> None:
    """cache_ttl_s=0: every check is ValidateParameters + GetScript, as before."""
    catalogue, channel = fake
    client = CatalogueClient(channel, cache_ttl_s=0)
    await client.check(ref("1.0.0"), values(n=1))
    await client.check(ref("1.0.0"), values(n=1))
    assert catalogue.calls == Counter({"ValidateParameters": 2, "GetScript": 2})
