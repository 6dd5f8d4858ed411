"""Domain errors of the fake runtime, named after the gRPC status a real runtime returns.

The runtime's state layer raises these without knowing about gRPC; the servicer
turns each into its status code in one place (``servicer.abort_with``). Each
message says what went wrong and what to do, for a learner reading it in a
notebook or in crictl's output.
"""

from __future__ import annotations


class CRIError(Exception):
    """Base class: ``code`` is the name of a ``grpc.StatusCode`` member."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CRIError):
    code = "INVALID_ARGUMENT"


class NotFound(CRIError):
    code = "NOT_FOUND"


class AlreadyExists(CRIError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(CRIError):
    code = "FAILED_PRECONDITION"


class DeadlineExceeded(CRIError):
    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(CRIError):
    code = "RESOURCE_EXHAUSTED"


class Unimplemented(CRIError):
    code = "UNIMPLEMENTED"


class Unavailable(CRIError):
    code = "UNAVAILABLE"
