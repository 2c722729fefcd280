"""The one error vocabulary of ketch.

Every domain error subclasses exactly one of the classes below. Transports map
these classes to their own codes in one place each (HTTP: ``ketch.api.httpstatus``;
the runtime CLI: one line on stderr and exit status 1). Messages are written for
the user and, where a client parses them, in Docker's wording.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "FailedPrecondition",
    "Forbidden",
    "Internal",
    "InvalidArgument",
    "KetchError",
    "NotFound",
    "NotImplementedYet",
    "NotModified",
    "Unauthorized",
    "Unavailable",
]


class KetchError(Exception):
    """Base of every error ketch raises on purpose."""


class NotFound(KetchError):
    """The named object does not exist."""


class InvalidArgument(KetchError):
    """The request or configuration is malformed; the message names the field."""


class Conflict(KetchError):
    """The object exists already, or is in use."""


class FailedPrecondition(KetchError):
    """The object is in the wrong state for the operation (e.g. not running)."""


class NotModified(KetchError):
    """The operation had nothing to do (e.g. starting a running container)."""


class Unauthorized(KetchError):
    """No or wrong credentials."""


class Forbidden(KetchError):
    """Credentials are fine but the action is not allowed."""


class Unavailable(KetchError):
    """A needed service or kernel feature is not available right now."""


class NotImplementedYet(KetchError):
    """The request is valid but ketch does not do it (yet)."""


class Internal(KetchError):
    """Something ketch did not expect; a bug or a broken host."""
