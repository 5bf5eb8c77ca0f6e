"""Domain errors shared by every service. No gRPC import here: the error
interceptor (shared.interceptors) maps them to status codes with details."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: a dotted path and what is wrong with it."""

    field: str
    description: str


class DomainError(Exception):
    """Base of all errors a service reports to its callers on purpose."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request is malformed; violations name each bad field."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations: list[FieldViolation] = list(violations or [])

    @classmethod
    def field(cls, name: str, description: str) -> InvalidArgument:
        """Shorthand for a single bad field."""
        return cls(f"{name}: {description}", [FieldViolation(name, description)])


class NotFound(DomainError):
    code = "NOT_FOUND"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found")
        self.kind = kind
        self.name = name


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations: list[FieldViolation] = list(violations or [])


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"


class Unavailable(DomainError):
    code = "UNAVAILABLE"


@dataclass(frozen=True)
class QuotaViolation:
    """One limit that was hit: what it applies to, and which limit it is."""

    subject: str
    description: str


class ResourceExhausted(DomainError):
    """A limit was hit; retry_after_s tells callers when trying again makes sense."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        violations: list[QuotaViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.violations: list[QuotaViolation] = list(violations or [])


class DataLoss(DomainError):
    code = "DATA_LOSS"


class Aborted(DomainError):
    code = "ABORTED"


class DeadlineExceeded(DomainError):
    code = "DEADLINE_EXCEEDED"


class Unimplemented(DomainError):
    code = "UNIMPLEMENTED"


ERRORS_BY_CODE: dict[str, type[DomainError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        ResourceExhausted,
        DataLoss,
        Aborted,
        DeadlineExceeded,
        Unimplemented,
    )
}
