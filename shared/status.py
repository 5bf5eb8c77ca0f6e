"""Translate between domain errors and rich gRPC status (google.rpc.Status
with BadRequest / PreconditionFailure / QuotaFailure + RetryInfo details), both directions."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from shared.errors import (
    ERRORS_BY_CODE,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
)

DETAILS_KEY = "grpc-status-details-bin"


M = TypeVar("M", bound=Message)


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
    elif isinstance(error, ResourceExhausted):
        _pack_exhausted(status, error)
    return status


def _pack_exhausted(status: status_pb2.Status, error: ResourceExhausted) -> None:
    """Which limit was hit (QuotaFailure) and when to come back (RetryInfo)."""
    if error.violations:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=v.subject, description=v.description
                )
                for v in error.violations
            ]
        )
        _pack(status, quota)
    if error.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        _pack(status, retry)


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
    details: list[any_pb2.Any] = []
    trailing: Any = exc.trailing_metadata() or ()
    for key, value in trailing:
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            message = status.message or message
            details.extend(status.details)
    cls = ERRORS_BY_CODE.get(name)
    if cls is None:
        return DomainError(message)
    if cls is InvalidArgument:
        return InvalidArgument(message, _field_violations(details))
    if cls is FailedPrecondition:
        return FailedPrecondition(message, _precondition_violations(details))
    if cls is ResourceExhausted:
        return _exhausted(message, details)
    if cls is NotFound:
        err = NotFound("resource", message)
        err.message = message
        err.args = (message,)
        return err
    return cls(message)


def _unpacked(details: list[any_pb2.Any], kind: type[M]) -> list[M]:
    """The details of one message type."""
    found: list[M] = []
    for detail in details:
        message = kind()
        if detail.Unpack(message):
            found.append(message)
    return found


def _field_violations(details: list[any_pb2.Any]) -> list[FieldViolation]:
    """BadRequest field violations (INVALID_ARGUMENT)."""
    return [
        FieldViolation(v.field, v.description)
        for m in _unpacked(details, error_details_pb2.BadRequest)
        for v in m.field_violations
    ]


def _precondition_violations(details: list[any_pb2.Any]) -> list[FieldViolation]:
    """PreconditionFailure violations (FAILED_PRECONDITION): the subject is the field."""
    return [
        FieldViolation(v.subject, v.description)
        for m in _unpacked(details, error_details_pb2.PreconditionFailure)
        for v in m.violations
    ]


def _exhausted(message: str, details: list[any_pb2.Any]) -> ResourceExhausted:
    retry_after_s: float | None = None
    violations: list[QuotaViolation] = []
    for detail in details:
        quota, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
        if detail.Unpack(quota):
            violations.extend(QuotaViolation(v.subject, v.description) for v in quota.violations)
        elif detail.Unpack(retry):
            retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
    return ResourceExhausted(message, retry_after_s=retry_after_s, violations=violations)
