"""An embedded PostgreSQL server (the ``pgserver`` wheel), so a new user needs nothing else installed.

The server keeps its data in a local directory and listens only on a Unix socket. statekeeper starts it when no
database URL is configured and stops it when the last statekeeper process using it exits.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any, Self

from statekeeper.errors import EmbeddedDatabaseError

logger = logging.getLogger(__name__)

DATABASE_NAME = "statekeeper"


def _pgserver() -> Any:
    # pgserver asks platformdirs for XDG_RUNTIME_DIR at import; containers and CI rarely set it and the
    # fallback it then uses is fine, so the warning is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # noqa: PLC0415 - imported late to silence its import-time warning

    return pgserver


def bin_dir() -> Path:
    """The directory of the embedded server's binaries (``pg_dump``, ``psql``, ...)."""
    return Path(_pgserver()._commands.POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir/pgdata``, started by :meth:`start` and stopped by :meth:`stop`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self.pgdata = self.data_dir / "pgdata"
        self._server: Any = None

    def start(self) -> str:
        """Start the server (or join one already running on the same data) and return its admin URL."""
        if self._server is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            logger.info(
                "starting embedded PostgreSQL in %s",
                self.pgdata,
                extra={"action": "embedded_start", "pgdata": str(self.pgdata)},
            )
            try:
                self._server = _pgserver().get_server(self.pgdata, cleanup_mode="stop")
            except (subprocess.SubprocessError, OSError, AssertionError, RuntimeError) as exc:
                log = self.pgdata / "log"
                hint = f"; see {log}" if log.exists() else ""
                raise EmbeddedDatabaseError(
                    f"the embedded PostgreSQL server in {self.pgdata} did not start: {exc}{hint}"
                ) from exc
        return str(self._server.get_uri())

    def url(self, database: str = DATABASE_NAME) -> str:
        if self._server is None:
            raise EmbeddedDatabaseError("the embedded PostgreSQL server is not started")
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        """Release this process's handle; the server stops when no statekeeper process uses it any more."""
        if self._server is not None:
            server, self._server = self._server, None
            server.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
