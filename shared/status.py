"""Translate between domain errors and rich gRPC status (google.rpc.Status
with BadRequest / PreconditionFailure details), both directions."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from shared.errors import (
    ERRORS_BY_CODE,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)

DETAILS_KEY = "grpc-status-details-bin"


def to_status(error: DomainError) -> status_pb2.Status:
    """A google.rpc.Status carrying the error's field details."""
    code = getattr(code_pb2, error.code, code_pb2.UNKNOWN)
    status = status_pb2.Status(code=code, message=error.message)
    violations = getattr(error, "violations", None)
    if isinstance(error, InvalidArgument) and violations:
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
        _pack(status, detail)
    elif isinstance(error, FailedPrecondition) and violations:
        detail_pf = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="FAILED_PRECONDITION", subject=v.field, description=v.description
                )
                for v in violations
            ]
        )
        _pack(status, detail_pf)
    elif isinstance(error, NotFound):
        _pack(
            status,
            error_details_pb2.ResourceInfo(resource_type=error.kind, resource_name=error.name),
        )
    return status


def _pack(status: status_pb2.Status, message: object) -> None:
    detail = any_pb2.Any()
    detail.Pack(message)  # type: ignore[arg-type]
    status.details.append(detail)


def grpc_code(error: DomainError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN)  # type: ignore[no-any-return]


def from_rpc_error(exc: grpc.aio.AioRpcError) -> DomainError:
    """Map a failed call back to the domain error it carried."""
    name = exc.code().name
    message = exc.details() or name
    violations: list[FieldViolation] = []
    trailing: Any = exc.trailing_metadata() or ()
    for key, value in trailing:
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            message = status.message or message
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    br = error_details_pb2.BadRequest()
                    detail.Unpack(br)
                    violations.extend(
                        FieldViolation(v.field, v.description) for v in br.field_violations
                    )
    cls = ERRORS_BY_CODE.get(name)
    if cls is None:
        return DomainError(message)
    if cls is InvalidArgument:
        return InvalidArgument(message, violations)
    if cls is NotFound:
        err = NotFound("resource", message)
        err.message = message
        err.args = (message,)
        return err
    return cls(message)
