"""Script lifecycle over real gRPC: update, search, soft delete/restore,
deprecate/yank, audit records and the events they publish, bad names."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import nats
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.catalogue import scripts
from services.catalogue.server import build
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.integration.catalogue.support import PY, catalogue_settings, publish

Stub = catalogue_pb2_grpc.CatalogueServiceStub
SHELL = common_pb2.EXECUTION_TYPE_SHELL


def _violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> description from the google.rpc.BadRequest detail."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)  # type: ignore[arg-type]
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return {v.field: v.description for v in bad.field_violations}
    return {}


async def _create(stub: Stub, name: str, **fields: object) -> catalogue_pb2.Script:
    return await stub.CreateScript(
        catalogue_pb2.CreateScriptRequest(
            script=catalogue_pb2.Script(name=name, execution_type=fields.pop("kind", PY), **fields)  # type: ignore[arg-type]
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


async def test_update_script_applies_the_mask_and_refuses_immutable_fields(stub: Stub) -> None:
    await _create(stub, "upd", description="old", tags=["a"])
    updated = await stub.UpdateScript(
        catalogue_pb2.UpdateScriptRequest(
            script=catalogue_pb2.Script(name="upd", description="new", tags=["b", "c", "b"]),
            update_mask=field_mask_pb2.FieldMask(paths=["description", "tags"]),
        )
    )
    assert (updated.description, list(updated.tags)) == ("new", ["b", "c"])
    assert await _names(stub, tags_all=["b"]) == ["upd"]
    assert await _names(stub, tags_all=["a"]) == []

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateScript(
            catalogue_pb2.UpdateScriptRequest(
                script=catalogue_pb2.Script(name="upd", execution_type=SHELL),
                update_mask=field_mask_pb2.FieldMask(paths=["description", "execution_type", "x"]),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(err.value)) == {"update_mask.paths[1]", "update_mask.paths[2]"}
    got = await stub.GetScript(catalogue_pb2.GetScriptRequest(name="upd"))
    assert got.description == "new" and got.execution_type == PY


@pytest.mark.parametrize("threshold", [2000, 1], ids=["rare-tag-shape", "common-tag-shape"])
async def test_list_scripts_filters_by_tags_type_owner_text_and_templates(
    stub: Stub, threshold: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both query shapes for tag filters (see scripts._filtered) give the same pages."""
    monkeypatch.setattr(scripts, "TAG_SHAPE_THRESHOLD", threshold)
    await _create(stub, "net-scan", tags=["net", "ops"], description="Scan the LAN", owner="ops")
    await _create(stub, "net-backup", tags=["net", "backup"], kind=SHELL, owner="ops")
    await _create(stub, "report", tags=["ops"], description="weekly numbers", owner="bi")
    await _create(stub, "tmpl", is_template=True, description="a template")

    assert await _names(stub, tags_all=["net", "ops"]) == ["net-scan"]
    assert await _names(stub, tags_any=["backup", "ops"]) == ["net-backup", "net-scan", "report"]
    assert await _names(stub, execution_type=SHELL) == ["net-backup"]
    assert await _names(stub, owner="ops") == ["net-backup", "net-scan"]
    assert await _names(stub, text="lan") == ["net-scan"]
    assert await _names(stub, text="WEEKLY") == ["report"]
    assert await _names(stub, name_prefix="net-") == ["net-backup", "net-scan"]
    assert await _names(stub, templates_only=True) == ["tmpl"]
    assert await _names(stub, text="%") == []  # LIKE wildcards are literal
    newest = await _names(stub, order_by=catalogue_pb2.SCRIPT_ORDER_CREATE_TIME_DESC)
    assert newest == ["tmpl", "report", "net-backup", "net-scan"]


async def test_page_tokens_are_stable_under_concurrent_inserts(stub: Stub) -> None:
    """Every script that existed when paging began is seen exactly once."""
    original = [f"s{i:02d}" for i in range(0, 20, 2)]
    for name in original:
        await _create(stub, name)
    for order in (catalogue_pb2.SCRIPT_ORDER_NAME, catalogue_pb2.SCRIPT_ORDER_CREATE_TIME_DESC):
        seen: list[str] = []
        token = ""
        inserted = 0
        while True:
            page = await stub.ListScripts(
                catalogue_pb2.ListScriptsRequest(page_size=3, page_token=token, order_by=order)
            )
            seen += [s.name for s in page.scripts]
            # Insert before and after the cursor between pages.
            await _create(stub, f"s{inserted * 2 + 1:02d}-{order}")
            await _create(stub, f"a-{order}-{inserted}")
            inserted += 1
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen))
        assert set(original) <= set(seen)


async def test_page_token_of_another_query_is_invalid_argument(stub: Stub) -> None:
    for name in ("p1", "p2", "p3"):
        await _create(stub, name, tags=["x"])
    page = await stub.ListScripts(catalogue_pb2.ListScriptsRequest(page_size=1, tags_all=["x"]))
    assert page.next_page_token
    for request in (
        catalogue_pb2.ListScriptsRequest(page_token=page.next_page_token),
        catalogue_pb2.ListScriptsRequest(page_token="not-a-token"),
        catalogue_pb2.ListScriptsRequest(order_by=99),  # type: ignore[arg-type]
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListScripts(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(_violations(err.value)) <= {"page_token", "order_by"}


async def test_soft_delete_hides_then_restore_brings_back(
    stub: Stub, catalogue: Running, tokens
) -> None:  # type: ignore[no-untyped-def]
    await publish(stub, "gone", "1.0.0")
    deleted = await stub.DeleteScript(catalogue_pb2.DeleteScriptRequest(name="gone"))
    assert deleted.HasField("delete_time")
    assert "gone" not in await _names(stub)
    for call in (
        stub.GetScript(catalogue_pb2.GetScriptRequest(name="gone")),
        stub.ResolveVersion(
            catalogue_pb2.ResolveVersionRequest(ref=common_pb2.ScriptRef(name="gone"))
        ),
        stub.PublishVersion(
            catalogue_pb2.PublishVersionRequest(script_name="gone", version="2.0.0", content=b"x")
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The name stays taken while the script can be restored.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(stub, "gone")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    shown = await stub.GetScript(catalogue_pb2.GetScriptRequest(name="gone", include_deleted=True))
    assert shown.HasField("delete_time")

    async with open_channel(catalogue.address, token=tokens.editor) as channel:
        editor = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        for call in (
            editor.RestoreScript(catalogue_pb2.RestoreScriptRequest(name="gone")),
            editor.GetScript(catalogue_pb2.GetScriptRequest(name="gone", include_deleted=True)),
            editor.DeleteScript(catalogue_pb2.DeleteScriptRequest(name="gone", force=True)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    restored = await stub.RestoreScript(catalogue_pb2.RestoreScriptRequest(name="gone"))
    assert not restored.HasField("delete_time") and restored.latest_version == "1.0.0"
    resolved = await stub.ResolveVersion(
        catalogue_pb2.ResolveVersionRequest(ref=common_pb2.ScriptRef(name="gone"))
    )
    assert resolved.version == "1.0.0"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RestoreScript(catalogue_pb2.RestoreScriptRequest(name="gone"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_deprecate_keeps_resolving_yank_stops_it_and_is_final(stub: Stub) -> None:
    await publish(stub, "lib", "1.0.0")
    await publish(stub, "lib", "1.1.0")

    def ref(version: str = "") -> catalogue_pb2.ResolveVersionRequest:
        return catalogue_pb2.ResolveVersionRequest(
            ref=common_pb2.ScriptRef(name="lib", version=version)
        )

    dep = await stub.DeprecateVersion(
        catalogue_pb2.DeprecateVersionRequest(script_name="lib", version="1.1.0", reason="slow")
    )
    assert dep.state == catalogue_pb2.VERSION_STATE_DEPRECATED
    assert (await stub.ResolveVersion(ref())).version == "1.1.0"

    yanked = await stub.YankVersion(
        catalogue_pb2.YankVersionRequest(script_name="lib", version="1.1.0", reason="CVE")
    )
    assert yanked.state == catalogue_pb2.VERSION_STATE_YANKED
    assert (await stub.ResolveVersion(ref())).version == "1.0.0"
    assert (await stub.ResolveVersion(ref("^1.0"))).version == "1.0.0"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveVersion(ref("1.1.0"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Existing runs keep a yanked version: an exact GetVersion still answers.
    kept = await stub.GetVersion(
        catalogue_pb2.GetVersionRequest(script_name="lib", version="1.1.0")
    )
    assert kept.state == catalogue_pb2.VERSION_STATE_YANKED
    # Yanking again is a no-op; un-yanking by deprecating is refused.
    await stub.YankVersion(catalogue_pb2.YankVersionRequest(script_name="lib", version="1.1.0"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeprecateVersion(
            catalogue_pb2.DeprecateVersionRequest(script_name="lib", version="1.1.0")
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.YankVersion(catalogue_pb2.YankVersionRequest(script_name="lib", version="9.9.9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    versions = await stub.ListVersions(catalogue_pb2.ListVersionsRequest(script_name="lib"))
    assert [v.version for v in versions.versions] == ["1.0.0"]


async def test_yank_publishes_version_yanked_event(stub: Stub, nats_server) -> None:  # type: ignore[no-untyped-def]
    await publish(stub, "evt", "1.0.0")
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.jetstream().subscribe("runbox.events.script.evt", ordered_consumer=True)
        await stub.YankVersion(catalogue_pb2.YankVersionRequest(script_name="evt", version="1.0.0"))
        types = []
        while events_pb2.SCRIPT_EVENT_TYPE_VERSION_YANKED not in types:
            msg = await asyncio.wait_for(sub.next_msg(timeout=10), 15)
            types.append(events_pb2.ScriptEvent.FromString(msg.data).type)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == "evt:1.0.0:yank"
        event = events_pb2.ScriptEvent.FromString(msg.data)
        assert (event.version, event.actor, len(event.sha256)) == ("1.0.0", "admin", 64)
    finally:
        await nc.close()


async def test_every_change_leaves_an_audit_record_with_chained_digests(stub: Stub) -> None:
    await publish(stub, "aud", "1.0.0")
    await stub.UpdateScript(
        catalogue_pb2.UpdateScriptRequest(
            script=catalogue_pb2.Script(name="aud", description="changed"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    await stub.DeleteScript(catalogue_pb2.DeleteScriptRequest(name="aud"))
    await stub.RestoreScript(catalogue_pb2.RestoreScriptRequest(name="aud"))
    await stub.YankVersion(catalogue_pb2.YankVersionRequest(script_name="aud", version="1.0.0"))
    page = await stub.ListAuditRecords(catalogue_pb2.ListAuditRecordsRequest(script_name="aud"))
    records = list(reversed(page.records))
    assert [r.action for r in records] == [
        "script.create",
        "version.publish",
        "script.update",
        "script.delete",
        "script.restore",
        "version.yank",
    ]
    assert {r.actor for r in records} == {"admin"}
    script_changes = [r for r in records if r.action.startswith("script.")]
    for earlier, later in itertools.pairwise(script_changes):
        assert later.before_digest == earlier.after_digest
        assert later.before_digest != later.after_digest
    # Deleting and restoring returns to the same canonical state.
    assert script_changes[3].after_digest == script_changes[1].after_digest
    # Paging newest first.
    first = await stub.ListAuditRecords(
        catalogue_pb2.ListAuditRecordsRequest(script_name="aud", page_size=4)
    )
    rest = await stub.ListAuditRecords(
        catalogue_pb2.ListAuditRecordsRequest(
            script_name="aud", page_size=4, page_token=first.next_page_token
        )
    )
    assert [r.id for r in first.records] + [r.id for r in rest.records] == [
        r.id for r in page.records
    ]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("bad\x00name", "NUL"),
        ("etc/passwd", "path separators"),
        ("..", "dot"),
        ("evil\u202egnp", "U+202E"),
        ("zero\u200bwidth", "U+200B"),
        ("Caps", "must match"),
        ("x" * 64, "at most 63"),
        ("caf\u00e9", "ASCII"),
    ],
)
async def test_bad_names_are_invalid_argument_with_the_reason(
    stub: Stub, name: str, why: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(stub, name)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in _violations(err.value)["script.name"]
    assert await _names(stub) == []


async def test_bad_tags_and_duplicate_version_are_refused(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(stub, "tagged", tags=["ok", "Not OK"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(err.value)) == {"script.tags[1]"}
    await publish(stub, "dup", "1.0.0")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await publish(stub, "dup", "1.0.0", content=b"print('other')\n")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await publish(stub, "dup", "1.0")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "version" in _violations(err.value)


async def test_a_yank_on_one_replica_stops_resolution_on_another(
    stub: Stub, tmp_path, database_url: str, nats_server, tokens
) -> None:  # type: ignore[no-untyped-def]
    """Replicas share the database; each caches resolutions and drops them on
    the ScriptEvents other replicas publish."""
    await publish(stub, "shared", "1.0.0")
    await publish(stub, "shared", "1.1.0")
    settings = catalogue_settings(tmp_path, database_url, nats_server.url, tokens.principals_file)
    other = await launch(build_runtime("catalogue", settings), build)
    latest = catalogue_pb2.ResolveVersionRequest(ref=common_pb2.ScriptRef(name="shared"))
    try:
        async with open_channel(other.address, token=tokens.admin) as channel:
            replica = catalogue_pb2_grpc.CatalogueServiceStub(channel)
            assert (await replica.ResolveVersion(latest)).version == "1.1.0"  # now cached there
            await stub.YankVersion(
                catalogue_pb2.YankVersionRequest(script_name="shared", version="1.1.0")
            )
            for _ in range(100):
                if (await replica.ResolveVersion(latest)).version == "1.0.0":
                    break
                await asyncio.sleep(0.1)
            assert (await replica.ResolveVersion(latest)).version == "1.0.0"
    finally:
        await other.stop()
