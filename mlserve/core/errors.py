"""Domain errors.

The domain raises these; ``mlserve.api.errors`` is the one place that maps
them to gRPC status codes. Messages are written for the person calling: say
what is wrong and what to do about it.
"""

from __future__ import annotations


class MLServeError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MLServeError):
    """The request is malformed whatever the state of the system."""


class NotFound(MLServeError):
    """A named resource does not exist."""


class AlreadyExists(MLServeError):
    """A resource with that name exists already."""


class FailedPrecondition(MLServeError):
    """The system is not in a state that allows the operation."""


class OutOfRange(MLServeError):
    """An offset or size lies outside what is allowed (e.g. a gap in an upload)."""


class Aborted(MLServeError):
    """A concurrent operation holds the resource; retry later."""


class PermissionDenied(MLServeError):
    """The caller is known but may not do this."""


class Unauthenticated(MLServeError):
    """The caller did not present a valid key."""


class ResourceExhausted(MLServeError):
    """A size or quota limit was reached."""


class Unavailable(MLServeError):
    """A dependency (a Triton server, the database) cannot be reached."""


class DataLoss(MLServeError):
    """Bytes arrived that do not match their declared checksum."""
