"""Version listing, yanked versions and content digests over gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from shared.errors import InvalidArgument, NotFound
from shared.status import from_rpc_error
from tests.integration.catalogue.support import publish

Stub = catalogue_pb2_grpc.CatalogueServiceStub


async def _resolve(stub: Stub, name: str, selector: str) -> str:
    ref = common_pb2.ScriptRef(name=name, version=selector)
    return (await stub.ResolveVersion(catalogue_pb2.ResolveVersionRequest(ref=ref))).version


async def test_resolve_skips_yanked_versions(stub: Stub, tmp_path: Path) -> None:
    """A yanked version is never resolved, even when named exactly, yet stays readable."""
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        await publish(stub, "yanky", v)
    await stub.YankVersion(catalogue_pb2.YankVersionRequest(script_name="yanky", version="1.2.0"))
    assert await _resolve(stub, "yanky", "latest") == "1.1.0"
    assert await _resolve(stub, "yanky", "^1") == "1.1.0"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _resolve(stub, "yanky", "1.2.0")
    error = from_rpc_error(err.value)
    assert isinstance(error, NotFound) and "yanky@1.2.0" in error.message
    kept = await stub.GetVersion(
        catalogue_pb2.GetVersionRequest(script_name="yanky", version="1.2.0")
    )
    assert kept.state == catalogue_pb2.VERSION_STATE_YANKED
    script = await stub.GetScript(catalogue_pb2.GetScriptRequest(name="yanky"))
    assert script.latest_version == "1.1.0"


async def test_resolve_rejects_malformed_selector_as_invalid_argument(stub: Stub) -> None:
    """A selector that is neither a version, latest nor a range names ref.version."""
    await publish(stub, "sel", "1.0.0")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _resolve(stub, "sel", "one-point-oh")
    error = from_rpc_error(err.value)
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["ref.version"]


async def test_list_versions_pages_newest_first(stub: Stub, tmp_path: Path) -> None:
    """Versions list in semver order, newest first, across pages; yanked only on request."""
    for v in ("1.9.0", "1.10.0", "2.0.0-rc.1", "2.0.0", "0.1.0"):
        await publish(stub, "many", v)
    await stub.YankVersion(catalogue_pb2.YankVersionRequest(script_name="many", version="1.9.0"))
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListVersions(
            catalogue_pb2.ListVersionsRequest(script_name="many", page_size=2, page_token=token)
        )
        seen += [v.version for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["2.0.0", "2.0.0-rc.1", "1.10.0", "0.1.0"]
    everything = await stub.ListVersions(
        catalogue_pb2.ListVersionsRequest(script_name="many", include_yanked=True)
    )
    assert [v.version for v in everything.versions] == [
        "2.0.0",
        "2.0.0-rc.1",
        "1.10.0",
        "1.9.0",
        "0.1.0",
    ]


async def test_get_content_fails_precondition_when_expected_digest_differs(stub: Stub) -> None:
    """A caller's expected sha256 that does not match the version is FAILED_PRECONDITION."""
    await publish(stub, "pinned", "1.0.0")
    request = catalogue_pb2.GetContentRequest(
        script_name="pinned", version="1.0.0", sha256="f" * 64
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [m async for m in stub.GetContent(request)]
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_get_content_requires_an_exact_version(stub: Stub) -> None:
    """GetContent takes an exact version; a range is INVALID_ARGUMENT on version."""
    await publish(stub, "exact", "1.0.0")
    request = catalogue_pb2.GetContentRequest(script_name="exact", version="^1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [m async for m in stub.GetContent(request)]
    assert [v.field for v in from_rpc_error(err.value).violations] == ["version"]  # type: ignore[attr-defined]
