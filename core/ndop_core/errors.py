"""One exception hierarchy for everything ndop raises to a person: SDK, CLI and operator tools.

Every message is one sentence meant for a person, and never carries an NHS number, a digest or
a group element: callers may log or print it as it is.
"""

from __future__ import annotations


class NdopError(Exception):
    """Base class of every ndop error."""

    exit_code = 1


class UsageError(NdopError):
    """The caller asked for something that cannot be done as asked (bad option, bad file)."""

    exit_code = 2


class InputError(UsageError):
    """An input file cannot be read at all (missing, unreadable, unknown format)."""


class ServiceError(NdopError):
    """The server could not be used: unreachable, refused, or answered something unexpected."""

    exit_code = 3


class ServerUnavailable(ServiceError):
    """The server cannot be reached."""


class AuthenticationFailed(ServiceError):
    """The server did not accept the organisation's credentials."""


class PermissionDenied(ServiceError):
    """The organisation is known but may not do what it asked."""


class QuotaExceeded(ServiceError):
    """The organisation's quota would be crossed by this check."""


class RequestRejected(ServiceError):
    """The server refused a request as malformed or out of step (a protocol error)."""


class UnsupportedServer(ServiceError):
    """The server speaks a scheme, suite or size this implementation does not implement."""


class FilterOutdated(RequestRejected):
    """The server no longer holds the register version whose filter the client tests against."""


class IntegrityError(ServiceError):
    """Data from the server failed an integrity check (filter digest, receipt signature)."""


class ReceiptInvalid(NdopError):
    """A receipt does not verify against the given public key, or is malformed."""

    exit_code = 1
