"""The exceptions statekeeper raises.

Every exception shares one root, :class:`StatekeeperError`, whose docstring is the default message, and carries
the process exit code the CLI should use when it ends a command.
"""

from __future__ import annotations


class StatekeeperError(Exception):
    """statekeeper failed."""

    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(StatekeeperError):
    """The configuration is invalid."""

    exit_code = 2


class DatabaseError(StatekeeperError):
    """The database could not be reached or used."""

    exit_code = 2


class EmbeddedDatabaseError(DatabaseError):
    """The embedded PostgreSQL server could not be started."""


class MigrationError(DatabaseError):
    """The database schema is not what this version of statekeeper expects."""


class UnknownAccount(StatekeeperError):
    """The account has no events in the log."""

    exit_code = 2


class InvalidEvent(StatekeeperError):
    """The event cannot be stored."""
