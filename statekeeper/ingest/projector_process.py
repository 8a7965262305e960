"""The projector workers of ``statekeeper run`` in a child process of their own.

Ingest and projectors in one process share one event loop, and each waits on the other: at 1,000 frames/s the
frame-to-row latency is about twice what it is with the projectors in a process of their own (docs/benchmarks.md).
So, with ``[projector] separate_process`` (the default), the daemon starts ``python -m
statekeeper.ingest.projector_process``: ``statekeeper project``'s daemon, woken by NOTIFY, supervised by the
daemon like any of its tasks (restarted when it dies, stopped with it).

The two talk over the child's standard streams, one JSON object per line (private to this module):

- daemon → child, stdin: the handoff, ``{"settings": ..., "database_url": ..., "log": ...}``. Then an account's
  name (a JSON string) each time the daemon's ingest commits events of it: the child's workers apply them at once,
  as :meth:`~statekeeper.projections.worker.ProjectorWorker.poke` does in one process (NOTIFY and polling remain
  the guarantee). The daemon keeps stdin open while it wants the child: end of file (the daemon stopping, or dying)
  stops the child, so a killed daemon leaves no projector behind.
- child → daemon, stdout: ``{"port": N}`` once the child serves /healthz and /metrics (on 127.0.0.1, a free port),
  then ``{"projectors": [...]}`` (its /healthz ``projectors`` entries) whenever they change.

The child's log goes to stderr, which it shares with the daemon. The daemon's /healthz shows the child's workers,
and its /metrics the child's ``statekeeper_projector_*`` families (fetched when scraped). The child gets its
settings from the handoff alone: the ``STATEKEEPER_*`` variables and the accounts' credentials are not in its
environment (it needs neither).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import orjson

from statekeeper.config import Settings
from statekeeper.errors import StatekeeperError
from statekeeper.logs import configure_logging, current_format, register_url_password

if TYPE_CHECKING:
    from statekeeper.ingest.daemon import Daemon

logger = logging.getLogger(__name__)

NAME = "projector process"
"""How the child is named in logs, errors and /healthz."""
FAMILY_PREFIX = "statekeeper_projector_"
"""The metric families the daemon serves from the child (the child's ingest families are empty, and the daemon
has its own)."""
REPORT_INTERVAL = 0.1
"""How often the child looks whether its workers' health changed."""
STOP_MARGIN = 5.0
"""Beyond the shutdown grace period: how long the daemon waits for the child to end, before SIGTERM, then SIGKILL."""
FETCH_TIMEOUT = 2.0
POKE_BUFFER_LIMIT = 64 * 1024
"""Pokes not yet taken by the child past which the daemon sends no more (the child is stuck: NOTIFY will do)."""


class ProjectorProcessDied(StatekeeperError):
    """The projector process ended while the daemon still wanted it."""


def _environment(settings: Settings) -> dict[str, str]:
    """The daemon's environment without statekeeper's settings (the handoff carries them) and the accounts'
    credentials."""
    credentials = {account.api_key_env.upper() for account in settings.accounts}
    return {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith("STATEKEEPER_") and key.upper() not in credentials
    }


def handoff(settings: Settings, database_url: str) -> bytes:
    """The child's settings (those of ``statekeeper project``: no accounts, /healthz and /metrics on a free
    loopback port), the database URL and the daemon's log format and level, as one line."""
    child = settings.model_dump(mode="json", exclude={"accounts": True, "database": {"url"}})
    child["ingest"] |= {"metrics_host": "127.0.0.1", "metrics_port": 0}
    log = {"format": current_format(), "level": logging.getLogger("statekeeper").getEffectiveLevel()}
    return orjson.dumps({"settings": child, "database_url": database_url, "log": log}) + b"\n"


def projector_families(exposition: bytes) -> bytes:
    """The ``statekeeper_projector_*`` families of a Prometheus text exposition (HELP, TYPE and samples)."""
    kept = []
    for line in exposition.splitlines(keepends=True):
        if line.startswith((b"# HELP ", b"# TYPE ")):
            name = line.split(b" ", 3)[2]
        else:
            name = line.split(b"{", 1)[0].split(b" ", 1)[0]
        if name.startswith(FAMILY_PREFIX.encode()):
            kept.append(line)
    return b"".join(kept)


class ProjectorProcess:
    """The daemon's side: :meth:`run` starts the child and returns once ``stop`` is set and the child has ended;
    it raises :class:`ProjectorProcessDied` if the child ends before (the daemon's supervision restarts it)."""

    command: ClassVar[tuple[str, ...]] = (sys.executable, "-P", "-m", __name__)
    """The child's command line (``-P``: a ``statekeeper`` directory where the daemon was started is not imported)."""

    def __init__(self, settings: Settings, database_url: str, *, stop: asyncio.Event) -> None:
        self.settings = settings
        self.url = database_url
        self.stop = stop
        self.pid: int | None = None
        self.port: int | None = None
        """The child's /healthz and /metrics port, while it serves them."""
        self.projectors: list[dict[str, Any]] = []
        """The child's workers, as its /healthz last showed them."""
        self.error: str | None = None
        """Why the child is not running, from its unexpected end until it serves again."""
        self._http: aiohttp.ClientSession | None = None
        self._stdin: asyncio.StreamWriter | None = None
        """The child's stdin, once it serves (pokes go there)."""

    def health(self) -> list[dict[str, Any]]:
        """The ``projectors`` entries of the daemon's /healthz."""
        if self.error is not None:
            return [{"worker": NAME, "slot": None, "accounts": [], "error": self.error, "failing": {}}]
        return self.projectors

    def poke(self, account: str) -> None:
        """The daemon's ingest just committed events of ``account``: the child's workers may apply them now."""
        stdin = self._stdin
        if stdin is not None and not stdin.is_closing() and stdin.transport.get_write_buffer_size() < POKE_BUFFER_LIMIT:
            stdin.write(orjson.dumps(account) + b"\n")

    async def metrics(self) -> bytes:
        """The child's ``statekeeper_projector_*`` families now; none while it is not serving them."""
        if self.port is None or self._http is None:
            return b""
        try:
            async with self._http.get(f"http://127.0.0.1:{self.port}/metrics") as response:
                response.raise_for_status()
                return projector_families(await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("cannot read the metrics of the %s: %r", NAME, exc, extra={"action": "projector_metrics"})
            return b""

    async def run(self) -> None:
        process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=_environment(self.settings),
        )  # fmt: skip
        assert process.stdin is not None
        assert process.stdout is not None
        self.pid = process.pid
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        reading = asyncio.create_task(self._read(process), name="projector-process-reports")
        ended = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it ended at once: `ended` says how
                process.stdin.write(handoff(self.settings, self.url))
                await process.stdin.drain()
            await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not self.stop.is_set():
                code = process.returncode or 0
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                self.error = f"the {NAME} (pid {process.pid}) {how}"
                raise ProjectorProcessDied(self.error)
        finally:
            stopping.cancel()
            ended.cancel()
            self._stdin = None
            self.port = None
            self.projectors = []
            try:
                await self._end(process)
            finally:
                reading.cancel()
                await self._http.close()
                self._http = None

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                report = orjson.loads(line)
            except orjson.JSONDecodeError:
                report = None
            if not isinstance(report, dict):
                logger.warning("the %s wrote %r on stdout: not a report, ignored", NAME, line[:200],
                               extra={"action": "projector_process_output"})  # fmt: skip
                continue
            if "port" in report:
                self.port = report["port"]
                self._stdin = process.stdin
                self.error = None
            if "projectors" in report:
                self.projectors = report["projectors"]

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        """Close the child's stdin (it stops), wait, then SIGTERM, then SIGKILL."""
        assert process.stdin is not None
        process.stdin.close()
        try:
            waited = self.settings.ingest.shutdown_grace_seconds + STOP_MARGIN
            for signal_it in (None, process.terminate, process.kill):
                if signal_it is not None:
                    logger.error("the %s (pid %s) did not stop within %g s: %s", NAME, process.pid, waited,
                                 signal_it.__name__, extra={"action": "projector_process_stop_timeout"})  # fmt: skip
                    with contextlib.suppress(ProcessLookupError):
                        signal_it()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), waited)
                    return
                waited = STOP_MARGIN
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise


# ------------------------------------------------------------------------------------------- the child


def _report(line: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    sys.stdout.buffer.flush()


async def _serve(settings: Settings, database_url: str) -> None:
    """``statekeeper project``'s daemon until stdin ends (or SIGTERM or SIGINT), reporting on stdout."""
    from statekeeper.ingest.daemon import Daemon  # noqa: PLC0415  (the daemon imports this module)

    daemon = Daemon(settings, database_url, ingest=False, child=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    running = asyncio.create_task(daemon.run(), name="projector-daemon")
    watching = asyncio.create_task(_watch(daemon, stdin), name="projector-parent")
    try:
        started = asyncio.ensure_future(daemon.started.wait())
        await asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if daemon.started.is_set():
            _report({"port": daemon.port})
            reported = None
            while not running.done():
                projectors = daemon.health()[1]["projectors"]
                if projectors != reported:
                    _report({"projectors": projectors})
                    reported = projectors
                await asyncio.wait({running}, timeout=REPORT_INTERVAL)
        await running
    finally:
        watching.cancel()
        transport.close()


async def _watch(daemon: Daemon, stdin: asyncio.StreamReader) -> None:
    """Poke the workers with each account the parent names; stop the daemon when stdin ends: the parent is
    stopping, or gone."""
    async for line in stdin:
        try:
            account = orjson.loads(line)
        except orjson.JSONDecodeError:
            logger.warning("the %s read %r on stdin: not an account, ignored", NAME, line[:200],
                           extra={"action": "projector_process_input"})  # fmt: skip
            continue
        for worker in daemon.projectors:
            worker.poke(account)
    if not daemon.stop.is_set():
        logger.info("the daemon closed the %s's input: stopping", NAME, extra={"action": "projector_process_stopping"})
        daemon.stop.set()


def main() -> int:
    """The child: read the handoff, run; the exit code is that ``statekeeper project`` would have."""
    try:
        data = orjson.loads(sys.stdin.buffer.readline() or b"null")
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        sys.stderr.write(f"the {NAME} is started by `statekeeper run`, with its settings on stdin\n")
        return 2
    register_url_password(data["database_url"])
    settings = Settings.model_validate(data["settings"])
    configure_logging(data["log"]["format"], settings.log.level)
    logging.getLogger("statekeeper").setLevel(data["log"]["level"])
    try:
        asyncio.run(_serve(settings, data["database_url"]))
    except StatekeeperError as exc:
        # like the CLI: the message says what failed (an unexpected error prints its traceback instead)
        logger.error("the %s failed: %s", NAME, exc.message, extra={"action": "projector_process_failed"})  # noqa: TRY400
        return exc.exit_code
    except (BrokenPipeError, KeyboardInterrupt):  # the daemon is gone, or Ctrl-C came twice
        return 1
    return 0


if __name__ == "__main__":
    # Run by -m, this file is the module __main__: run the one the daemon imports too (its logger is named
    # statekeeper.ingest.projector_process, and follows the level set for statekeeper).
    from statekeeper.ingest.projector_process import main as _main

    sys.exit(_main())
