"""Errors from talking to a venue, classed by what the caller should do about them.

* :class:`RetryableVenueError`: try again later (5xx, 429, timeouts, connection failures);
* :class:`NonRetryableVenueError`: this request will not work as it is (an unexpected 4xx, an answer that
  cannot be understood); do not retry it blindly;
* :class:`FatalVenueError`: the credentials are refused (401/403, a rejected token): stop the account.

A failed call is always one of these, never an empty answer (invariant 8).
"""

from __future__ import annotations

from statekeeper.errors import StatekeeperError


class VenueError(StatekeeperError):
    """The venue could not be used."""

    retryable: bool = False

    def __init__(self, message: str | None = None, *, venue: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.venue = venue
        self.status = status


class RetryableVenueError(VenueError):
    """The venue did not answer usefully this time; the same request may work later."""

    retryable = True


class NonRetryableVenueError(VenueError):
    """The venue refused the request or answered something statekeeper cannot understand."""


class VenueResponseError(NonRetryableVenueError):
    """The venue's answer could not be understood (not JSON, an error envelope, missing fields)."""


class FatalVenueError(VenueError):
    """The venue refused the credentials: the account cannot be used until they are fixed."""
