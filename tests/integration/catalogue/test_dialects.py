"""What differs between SQLite, PostgreSQL and MariaDB and must not show through
the API: case and trailing spaces in identifiers, LIKE wildcards and case in
prefixes, timestamp precision and zone, and racing writers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from tests.integration.catalogue.support import PY, publish

Stub = catalogue_pb2_grpc.CatalogueServiceStub


async def _create(stub: Stub, name: str, *, owner: str = "", key: str = "") -> catalogue_pb2.Script:
    return await stub.CreateScript(
        catalogue_pb2.CreateScriptRequest(
            script=catalogue_pb2.Script(name=name, execution_type=PY, owner=owner),
            idempotency_key=key,
        )
    )


async def _names(stub: Stub, **filters: object) -> list[str]:
    """Every page of ListScripts with these filters, in order."""
    names: list[str] = []
    token = ""
    while True:
        page = await stub.ListScripts(
            catalogue_pb2.ListScriptsRequest(page_size=2, page_token=token, **filters)  # type: ignore[arg-type]
        )
        names += [s.name for s in page.scripts]
        token = page.next_page_token
        if not token:
            return names


async def test_lookups_match_names_exactly_not_by_case_or_trailing_spaces(stub: Stub) -> None:
    """GetScript and the audit filter find only the exact name."""
    await _create(stub, "exact")
    for near in ("EXACT", "Exact", "exact "):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetScript(catalogue_pb2.GetScriptRequest(name=near))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, near
        audit = await stub.ListAuditRecords(catalogue_pb2.ListAuditRecordsRequest(script_name=near))
        assert list(audit.records) == [], near
    assert (await stub.GetScript(catalogue_pb2.GetScriptRequest(name="exact"))).name == "exact"


async def test_versions_owners_and_keys_differing_in_case_are_distinct(stub: Stub) -> None:
    """1.0.0-rc.1 and 1.0.0-RC.1 are two versions; owners and idempotency keys keep their case."""
    lower = await publish(stub, "cased", "1.0.0-rc.1", content=b"print('lower')\n")
    upper = await publish(stub, "cased", "1.0.0-RC.1", content=b"print('upper')\n")
    for version, sha in (("1.0.0-rc.1", lower.sha256), ("1.0.0-RC.1", upper.sha256)):
        got = await stub.GetVersion(
            catalogue_pb2.GetVersionRequest(script_name="cased", version=version)
        )
        assert (got.version, got.sha256) == (version, sha)

    await _create(stub, "by-alice", owner="alice")
    await _create(stub, "by-alice-cap", owner="Alice")
    assert await _names(stub, owner="alice") == ["by-alice"]
    assert await _names(stub, owner="Alice") == ["by-alice-cap"]

    first = await _create(stub, "key-lower", key="Key-1")
    second = await _create(stub, "key-upper", key="key-1")
    assert (first.name, second.name) == ("key-lower", "key-upper")


async def test_name_prefix_is_case_sensitive_and_wildcards_are_literal(stub: Stub) -> None:
    """name_prefix 'a_' does not match 'axb'; an upper-case prefix matches no lower-case name."""
    for name in ("a_b", "axb", "a.b", "ab"):
        await _create(stub, name)
    assert await _names(stub, name_prefix="a_") == ["a_b"]
    assert await _names(stub, name_prefix="a") == ["a.b", "a_b", "ab", "axb"]
    assert await _names(stub, name_prefix="A") == []
    assert await _names(stub, name_prefix="a%") == []


async def test_names_sort_byte_wise_on_every_dialect(stub: Stub) -> None:
    """Punctuation and digits order as in ASCII, whatever the server's locale."""
    names = ["z", "a-b", "a.b", "a0", "a_b", "ab", "b"]
    for name in names:
        await _create(stub, name)
    assert await _names(stub) == sorted(names)


async def test_timestamps_round_trip_in_utc_with_microseconds(stub: Stub) -> None:
    """What CreateScript answers is what a later read returns, to the microsecond."""
    created = await _create(stub, "stamped")
    got = await stub.GetScript(catalogue_pb2.GetScriptRequest(name="stamped"))
    assert got.create_time == created.create_time
    assert got.update_time == created.update_time
    assert created.create_time.nanos % 1000 == 0  # microseconds, stored exactly


async def test_update_time_pages_follow_the_order_of_updates(stub: Stub) -> None:
    """Newest update first across pages, even for updates within one second."""
    names = [f"u{i}" for i in range(6)]
    for name in names:
        await _create(stub, name)
    touched = ["u3", "u0", "u5", "u1", "u4", "u2"]
    for i, name in enumerate(touched):
        await stub.UpdateScript(
            catalogue_pb2.UpdateScriptRequest(
                script=catalogue_pb2.Script(name=name, description=f"touch {i}"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            )
        )
    order = catalogue_pb2.SCRIPT_ORDER_UPDATE_TIME_DESC
    assert await _names(stub, order_by=order) == list(reversed(touched))


async def test_racing_creates_with_one_idempotency_key_make_one_script(stub: Stub) -> None:
    """Concurrent retries of one CreateScript all answer the same script."""
    answers = await asyncio.gather(*(_create(stub, "raced", key="race-1") for _ in range(6)))
    assert all(a == answers[0] for a in answers)
    assert await _names(stub, name_prefix="raced") == ["raced"]


async def test_racing_publishes_keep_the_latest_version_right(stub: Stub) -> None:
    """Publishes of one script serialise on its row: latest_version ends at the highest."""
    await publish(stub, "busy", "1.0.0")
    versions = [f"1.{minor}.0" for minor in range(1, 7)]
    await asyncio.gather(*(publish(stub, "busy", v, content=v.encode()) for v in versions))
    page = await stub.ListScripts(catalogue_pb2.ListScriptsRequest(name_prefix="busy"))
    assert [(s.name, s.latest_version) for s in page.scripts] == [("busy", "1.6.0")]


async def test_racing_publishes_of_one_version_store_it_once(stub: Stub) -> None:
    """One racer wins; the others get ALREADY_EXISTS, never INTERNAL."""
    await _create(stub, "dup-race")
    outcomes = await asyncio.gather(
        *(publish(stub, "dup-race", "1.0.0", content=f"v{i}".encode()) for i in range(5)),
        return_exceptions=True,
    )
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(outcomes) - len(failures) == 1
    assert all(
        isinstance(f, grpc.aio.AioRpcError) and f.code() == grpc.StatusCode.ALREADY_EXISTS
        for f in failures
    )


async def test_four_byte_utf8_round_trips(stub: Stub) -> None:
    """Descriptions keep characters outside the BMP (utf8mb4 on MariaDB)."""
    text = "deploys 🚀, tests 🦀 and 𝄞"
    await stub.CreateScript(
        catalogue_pb2.CreateScriptRequest(
            script=catalogue_pb2.Script(name="emoji", execution_type=PY, description=text)
        )
    )
    got = await stub.GetScript(catalogue_pb2.GetScriptRequest(name="emoji"))
    assert got.description == text
    assert await _names(stub, text="🚀") == ["emoji"]
