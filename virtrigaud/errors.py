"""The one exceptions module of virtrigaud.

Every error the product raises on purpose is a ``VirtrigaudError``. Library errors
(libvirt, pyvmomi, boto3, httpx, grpc) are translated into these classes at the edge
that calls the library, never further in. The hierarchy::

    VirtrigaudError                      .code (ErrorCode), .retryable
    ├── PermanentError                   retrying the same request will not help
    │   ├── InvalidArgument              bad input; the message names the field
    │   │   └── ValidationError          a manifest/object failed validation (has .field)
    │   ├── NotFound                     VM, disk, snapshot, object, task, secret unknown
    │   ├── AlreadyExists                name collision on the hypervisor or storage
    │   ├── AuthenticationError          credentials rejected (hypervisor or storage)
    │   ├── PermissionDenied             authenticated, but not allowed
    │   ├── FailedPrecondition           the current state does not allow it
    │   ├── Unsupported                  the provider cannot do this
    │   ├── ChecksumMismatch             bytes corrupted or truncated in transit
    │   ├── Cancelled                    stopped on request
    │   └── InternalError                a bug or an unexpected failure
    └── TransientError                   the same request may succeed later
        ├── Unavailable                  endpoint down / unreachable / 5xx
        ├── Timeout                      deadline exceeded
        ├── Conflict                     concurrent change (e.g. optimistic-lock failure)
        └── OutOfSpace                   storage full; retry once space is freed

``ERROR_TABLE`` is the single mapping between these classes, the contract's
``ErrorCode`` and gRPC status codes. The provider server uses it to turn exceptions
into statuses (``to_grpc_status``) and the manager's client uses it to turn statuses
back into exceptions (``from_grpc_error``), so both sides always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from virtrigaud.provider.v1 import provider_pb2 as pb

# Trailing-metadata key carrying the exact ErrorCode name, so that two kinds sharing a
# gRPC status code family still round-trip exactly.
ERROR_METADATA_KEY = "virtrigaud-error"


class VirtrigaudError(Exception):
    """Base of every deliberate virtrigaud error."""

    code: int = pb.ERROR_CODE_INTERNAL
    retryable: bool = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message or type(self).__name__

    def __str__(self) -> str:
        return self.message


class PermanentError(VirtrigaudError):
    """Retrying the same request will not help; the user must change something."""

    retryable = False


class TransientError(VirtrigaudError):
    """The same request may succeed later (retry with backoff)."""

    retryable = True


class InvalidArgument(PermanentError):
    code = pb.ERROR_CODE_INVALID_ARGUMENT


class ValidationError(InvalidArgument):
    """An object failed validation. ``field`` is the JSON path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class NotFound(PermanentError):
    code = pb.ERROR_CODE_NOT_FOUND


class AlreadyExists(PermanentError):
    code = pb.ERROR_CODE_ALREADY_EXISTS


class AuthenticationError(PermanentError):
    code = pb.ERROR_CODE_UNAUTHENTICATED


class PermissionDenied(PermanentError):
    code = pb.ERROR_CODE_PERMISSION_DENIED


class FailedPrecondition(PermanentError):
    code = pb.ERROR_CODE_FAILED_PRECONDITION


class Unsupported(PermanentError):
    code = pb.ERROR_CODE_UNIMPLEMENTED


class ChecksumMismatch(PermanentError):
    code = pb.ERROR_CODE_CHECKSUM_MISMATCH


class Cancelled(PermanentError):
    code = pb.ERROR_CODE_CANCELLED


class InternalError(PermanentError):
    code = pb.ERROR_CODE_INTERNAL


class Unavailable(TransientError):
    code = pb.ERROR_CODE_UNAVAILABLE


class Timeout(TransientError):
    code = pb.ERROR_CODE_TIMEOUT


class Conflict(TransientError):
    code = pb.ERROR_CODE_CONFLICT


class OutOfSpace(TransientError):
    code = pb.ERROR_CODE_OUT_OF_SPACE


@dataclass(frozen=True)
class ErrorMapping:
    """One row of the error table."""

    error: type[VirtrigaudError]
    code: int  # pb.ErrorCode value
    status: grpc.StatusCode


# The single table. Each ErrorCode appears exactly once; the gRPC status is what a
# generic gRPC client (grpcurl) sees.
ERROR_TABLE: tuple[ErrorMapping, ...] = (
    ErrorMapping(InvalidArgument, pb.ERROR_CODE_INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorMapping(NotFound, pb.ERROR_CODE_NOT_FOUND, grpc.StatusCode.NOT_FOUND),
    ErrorMapping(AlreadyExists, pb.ERROR_CODE_ALREADY_EXISTS, grpc.StatusCode.ALREADY_EXISTS),
    ErrorMapping(
        AuthenticationError, pb.ERROR_CODE_UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED
    ),
    ErrorMapping(
        PermissionDenied, pb.ERROR_CODE_PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED
    ),
    ErrorMapping(
        FailedPrecondition, pb.ERROR_CODE_FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION
    ),
    ErrorMapping(Unsupported, pb.ERROR_CODE_UNIMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED),
    ErrorMapping(ChecksumMismatch, pb.ERROR_CODE_CHECKSUM_MISMATCH, grpc.StatusCode.DATA_LOSS),
    ErrorMapping(OutOfSpace, pb.ERROR_CODE_OUT_OF_SPACE, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorMapping(Unavailable, pb.ERROR_CODE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    ErrorMapping(Timeout, pb.ERROR_CODE_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
    ErrorMapping(Conflict, pb.ERROR_CODE_CONFLICT, grpc.StatusCode.ABORTED),
    ErrorMapping(Cancelled, pb.ERROR_CODE_CANCELLED, grpc.StatusCode.CANCELLED),
    ErrorMapping(InternalError, pb.ERROR_CODE_INTERNAL, grpc.StatusCode.INTERNAL),
)

_BY_CODE = {row.code: row for row in ERROR_TABLE}
_BY_STATUS = {row.status: row for row in ERROR_TABLE}
# gRPC statuses no row produces, as a generic server (or the transport) may send them.
_FOREIGN_STATUS = {
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
}


def mapping_for(error: VirtrigaudError) -> ErrorMapping:
    """The table row for an error instance (subclasses use their nearest mapped base)."""
    return _BY_CODE.get(error.code, _BY_CODE[pb.ERROR_CODE_INTERNAL])


def error_class(code: int) -> type[VirtrigaudError]:
    """The exception class for a contract ErrorCode value."""
    row = _BY_CODE.get(code)
    return row.error if row else InternalError


def error_code_name(code: int) -> str:
    """``ERROR_CODE_NOT_FOUND`` -> ``NOT_FOUND`` (used in messages and conditions)."""
    return pb.ErrorCode.Name(code).removeprefix("ERROR_CODE_")


def to_grpc_status(
    error: BaseException,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(status code, details, trailing metadata) for any exception raised by a handler.

    Unknown exceptions become INTERNAL with their type name but not their text, which
    might contain a secret from a library message.
    """
    if isinstance(error, VirtrigaudError):
        row = mapping_for(error)
        details = error.message
        code = error.code
    else:
        row = _BY_CODE[pb.ERROR_CODE_INTERNAL]
        details = f"internal error ({type(error).__name__})"
        code = pb.ERROR_CODE_INTERNAL
    return row.status, details, ((ERROR_METADATA_KEY, pb.ErrorCode.Name(code)),)


def from_grpc_error(error: grpc.RpcError) -> VirtrigaudError:
    """Rebuild the typed error from a failed call (status code + trailing metadata)."""
    status = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_METADATA_KEY and isinstance(value, str):
            try:
                code = pb.ErrorCode.Value(value)
            except ValueError:
                break
            return error_class(code)(details or value)
    row = _BY_STATUS.get(status)
    cls = row.error if row else _FOREIGN_STATUS.get(status, InternalError)
    return cls(details or status.name)


def to_task_error(error: BaseException) -> pb.TaskError:
    """The TaskError recorded on a failed or cancelled task."""
    if isinstance(error, VirtrigaudError):
        return pb.TaskError(
            code=error.code,  # type: ignore[arg-type]
            message=error.message,
            retryable=error.retryable,
        )
    return pb.TaskError(
        code=pb.ERROR_CODE_INTERNAL,
        message=f"internal error ({type(error).__name__})",
        retryable=False,
    )


def from_task_error(error: pb.TaskError) -> VirtrigaudError:
    """Rebuild the typed error recorded on a task."""
    return error_class(error.code)(error.message)
