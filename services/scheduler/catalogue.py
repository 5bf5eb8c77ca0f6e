"""The scheduler's view of the catalogue: parameter validation and script
defaults over gRPC, with catalogue errors mapped back to domain errors so a
caller sees NOT_FOUND / INVALID_ARGUMENT (with field details) unchanged."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from shared.errors import InvalidArgument, Unavailable
from shared.status import from_rpc_error

_PASS_THROUGH = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
}


class CatalogueClient:
    """Calls the catalogue with this service's own token."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)

    async def validate(
        self, ref: common_pb2.ScriptRef, values: struct_pb2.Struct
    ) -> catalogue_pb2.ValidateParametersResponse:
        try:
            return await self._stub.ValidateParameters(
                catalogue_pb2.ValidateParametersRequest(ref=ref, values=values)
            )
        except grpc.aio.AioRpcError as exc:
            raise self._map(exc) from None

    async def get_script(self, name: str) -> catalogue_pb2.Script:
        try:
            return await self._stub.GetScript(catalogue_pb2.GetScriptRequest(name=name))
        except grpc.aio.AioRpcError as exc:
            raise self._map(exc) from None

    @staticmethod
    def _map(exc: grpc.aio.AioRpcError) -> Exception:
        error = from_rpc_error(exc)
        if exc.code() in _PASS_THROUGH:
            if isinstance(error, InvalidArgument):
                # Field paths are relative to the SubmitRun request.
                for v in error.violations:
                    v_field = v.field.replace("values.", "parameters.", 1).replace(
                        "ref.", "script.", 1
                    )
                    object.__setattr__(v, "field", v_field)
            return error
        return Unavailable(f"catalogue unavailable: {exc.code().name}: {error.message}")
