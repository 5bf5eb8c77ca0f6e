"""The catalogue as alerting needs it: the tags of a script (for `script_tags`
selectors), asked over gRPC with the service token."""

from __future__ import annotations

import grpc

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc


class CatalogueTags:
    """engine.TagFetcher over the catalogue's GetScript. A script the catalogue does not
    know (deleted for good, or never registered) has no tags."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        self._stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        self._timeout_s = timeout_s

    async def __call__(self, script_name: str) -> frozenset[str]:
        try:
            script = await self._stub.GetScript(
                catalogue_pb2.GetScriptRequest(name=script_name, include_deleted=True),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return frozenset()
            raise
        return frozenset(script.tags)
