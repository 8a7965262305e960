"""``statekeeper run``: the ingest daemon, every configured account in one supervised task group.

Each account gets a writer (:mod:`.writer`) and an ingest (:mod:`.account`), started once its claim is held
(:mod:`.claims`). ``[projector] workers`` projector workers (:mod:`statekeeper.projections.worker`) run beside
them: in a child process of their own with ``[projector] separate_process`` (:mod:`.projector_process`), else in
this one. ``statekeeper project`` runs the same daemon with the projectors only. A local HTTP server answers
``/healthz`` and ``/metrics``. SIGTERM and SIGINT set one stop event: every session is closed with reason
``shutdown`` after reading what the venue had sent, every writer flushes, all within ``[ingest]
shutdown_grace_seconds``; whatever is still unwritten then is counted in a loud error, never dropped quietly.

Supervision: an account's ingest or writer that dies of an unexpected error is logged with its traceback and
restarted (with a pause that grows); after :data:`MAX_RESTARTS` restarts within :data:`RESTART_WINDOW` seconds
the daemon fails, loudly, with exit code 1. A refused credential stops that account only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from statekeeper.config import AccountSettings, Settings
from statekeeper.database import create_pool
from statekeeper.errors import ConfigError, MigrationError, StatekeeperError
from statekeeper.eventlog import PostgresEventLog
from statekeeper.ingest.account import AccountIngest, AccountState
from statekeeper.ingest.claims import AccountClaims
from statekeeper.ingest.drivers import make_driver
from statekeeper.ingest.metrics import IngestMetrics
from statekeeper.ingest.projector_process import NAME as PROJECTOR_PROCESS
from statekeeper.ingest.projector_process import ProjectorProcess
from statekeeper.ingest.writer import AccountWriter
from statekeeper.logs import log_context
from statekeeper.migrations import check as check_schema
from statekeeper.projections.worker import ProjectorMetrics, ProjectorWorker
from statekeeper.reconcile.runner import ReconcileMetrics, Reconciler, ReconcileService

logger = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW = 300.0


class DaemonFailed(StatekeeperError):
    """A task kept dying: the daemon stops rather than run without it."""

    exit_code = 1


@dataclass
class AccountRuntime:
    """One account's parts, as the health endpoint and the supervisor see them."""

    settings: AccountSettings
    writer: AccountWriter
    ingest: AccountIngest | None = None
    reconcile: ReconcileService | None = None
    claimed: bool = False
    restarts: list[float] = field(default_factory=list)


@contextlib.contextmanager
def _first_failure() -> Any:
    """Raise a :class:`DaemonFailed` from the task group as itself (the CLI turns it into exit code 1)."""
    try:
        yield
    except* DaemonFailed as group:
        raise group.exceptions[0] from None


def _report_reconcile_failure(task: asyncio.Task[None]) -> None:
    """An account's reconciliation service died of an unexpected error: say so at once, not when its ingest ends
    (the error is raised again then, and the account's supervision restarts both)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("reconciliation service %s failed: %r", task.get_name(), task.exception(),
                     extra={"action": "reconcile_service_failed"})  # fmt: skip


def _keep_out_of_full_collections() -> None:
    """Collect what start-up left, then freeze the rest (modules, settings, pools, clients: alive for the daemon's
    life) out of Python's cyclic garbage collector.

    Each full collection scans every object the collector tracks, and while it runs no task runs: with start-up's
    hundreds of thousands of objects in it, a pause of milliseconds, and the ingest and projector tail latency
    with it. What the daemon allocates from here on is collected as usual.
    """
    gc.collect()
    gc.freeze()


class Daemon:
    """The ingest daemon for ``settings`` against the database at ``database_url``."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        *,
        metrics: IngestMetrics | None = None,
        ingest: bool = True,
        project: bool = True,
        child: bool = False,
    ) -> None:
        self.settings = settings
        self.url = database_url
        self.ingest = ingest
        """False for ``statekeeper project`` and ``statekeeper run --only project``: the projectors only."""
        self.project = project
        """False for ``statekeeper run --only ingest``: no projector worker, whatever ``[projector] workers`` says."""
        self.child = child
        """The projector process of a ``statekeeper run`` (:mod:`.projector_process`)."""
        self.stop = asyncio.Event()
        self.metrics = metrics or IngestMetrics()
        self.reconcile_metrics = ReconcileMetrics(self.metrics.registry)
        self.workers = settings.projector.workers if project else 0
        """Projector workers, in this process or in :attr:`projector_process`."""
        self.projector_process = (
            ProjectorProcess(settings, database_url, stop=self.stop)
            if ingest and self.workers and settings.projector.separate_process
            else None
        )
        """The child process the projector workers run in, with ``[projector] separate_process``."""
        self.projector_metrics = (
            ProjectorMetrics(self.metrics.registry) if self.workers and self.projector_process is None else None
        )
        """The metrics of projector workers in this process (the child's are served with the daemon's)."""
        self.projectors: list[ProjectorWorker] = []
        """The projector workers in this process."""
        self._projector_restarts: list[float] = []
        self.accounts: dict[str, AccountRuntime] = {}
        self.port: int | None = None
        """The port /healthz and /metrics are served on, once started."""
        self.started = asyncio.Event()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._account_tasks: list[asyncio.Task[None]] = []

    # ----------------------------------------------------------------------------------------------- run

    async def run(self) -> None:
        """Run until :attr:`stop` is set (or a signal sets it), then drain within the grace period."""
        problems = await check_schema(self.url)
        if problems:
            raise MigrationError("the database is not ready for the daemon:\n" + "\n".join(problems))
        if self.ingest and not self.settings.accounts:
            raise ConfigError("no accounts are configured: add [[accounts]] to the configuration file")
        if not self.ingest and not (self.project and self.settings.projector.workers):
            raise ConfigError("[projector] workers is 0: there is nothing for `statekeeper project` to run")
        options = self.settings.ingest
        pool = await create_pool(self.url, max_size=max(2, self.settings.database.pool_size))
        log = PostgresEventLog(pool)
        claims = AccountClaims(self.url)
        runner = await self._serve_http()
        try:
            with self._signals(), _first_failure():
                async with asyncio.TaskGroup() as group:
                    if self.projector_process is not None:
                        supervised = self._supervised(PROJECTOR_PROCESS, self._projector_restarts, "projector",
                                                      self.projector_process.run)  # fmt: skip
                        group.create_task(supervised, name="projector-process")
                    for number in range(self.workers if self.projector_process is None else 0):
                        worker = ProjectorWorker(self.url, pool, settings=self.settings.projector, stop=self.stop,
                                                 metrics=self.projector_metrics,
                                                 name=f"{self.owner}/{number}")  # fmt: skip
                        self.projectors.append(worker)
                        group.create_task(self._supervised(worker.name, self._projector_restarts, "projector",
                                                           worker.run), name=f"projector-{number}")  # fmt: skip
                    for account in self.settings.accounts if self.ingest else ():
                        writer = AccountWriter(log, account=account.name, bound=options.queue_size,
                                               batch_size=options.batch_size, metrics=self.metrics,
                                               on_appended=self._appended)  # fmt: skip
                        runtime = AccountRuntime(account, writer)
                        self.accounts[account.name] = runtime
                        self._account_tasks.append(
                            group.create_task(self._account(runtime, claims, pool), name=f"account-{account.name}")
                        )
                    group.create_task(claims.watch(self.stop), name="claims-watch")
                    group.create_task(self._grace(), name="grace")
                    _keep_out_of_full_collections()
                    self.started.set()
                    ingested = f"{len(self.accounts)} accounts ingested, " if self.ingest else ""
                    logger.info(
                        "%s: %s%d projector workers%s; health and metrics on http://%s:%s/",
                        self._name, ingested, self.workers, " in a child process" if self.projector_process else "",
                        options.metrics_host, self.port,
                        extra={"action": "projector_process_started" if self.child else "daemon_started"},
                    )  # fmt: skip
                    await self.stop.wait()
        finally:
            self.stop.set()
            await claims.close()
            await runner.cleanup()
            await pool.close()
        logger.info("%s: stopped", self._name,
                    extra={"action": "projector_process_stopped" if self.child else "daemon_stopped"})  # fmt: skip

    @property
    def _name(self) -> str:
        """How the daemon names itself in its log."""
        if self.child:
            return f"{PROJECTOR_PROCESS} (pid {os.getpid()})"
        return "statekeeper run" if self.ingest else "statekeeper project"

    def _appended(self, account: str) -> None:
        """This process's ingest just committed events of ``account``: its projectors need not wait for NOTIFY."""
        for worker in self.projectors:
            worker.poke(account)
        if self.projector_process is not None:
            self.projector_process.poke(account)

    async def _grace(self) -> None:
        """Once stopping, give the accounts the grace period; then cancel what is left, loudly."""
        await self.stop.wait()
        grace = self.settings.ingest.shutdown_grace_seconds
        if not self._account_tasks:
            return
        _, pending = await asyncio.wait(self._account_tasks, timeout=grace)
        if not pending:
            return
        left = {name: rt.writer.backlog for name, rt in self.accounts.items() if rt.writer.backlog}
        logger.error("shutdown grace period of %g s is over; %s", grace,
                     f"items not stored: {left}" if left else "sessions were still closing",
                     extra={"action": "shutdown_timeout"})  # fmt: skip
        raise DaemonFailed(
            f"shutdown did not finish within {grace:g} s" + (f"; items not stored: {left}" if left else "")
        )

    # -------------------------------------------------------------------------------------- supervision

    async def _account(self, runtime: AccountRuntime, claims: AccountClaims, pool: asyncpg.Pool) -> None:
        name = runtime.settings.name
        with log_context(account=name):
            writer_task = asyncio.create_task(self._supervised(name, runtime.restarts, "writer", runtime.writer.run),
                                              name=f"writer-{name}")  # fmt: skip
            try:
                while not self.stop.is_set():
                    if not await claims.claim(name, self.stop):
                        break
                    runtime.claimed = True
                    account_stop = asyncio.Event()
                    relay = asyncio.create_task(self._relay_stop(account_stop, claims.lost[name]))
                    try:
                        await self._supervised(name, runtime.restarts, "ingest",
                                               partial(self._ingest, runtime, pool, account_stop))  # fmt: skip
                    finally:
                        relay.cancel()
                        runtime.claimed = False
                    if runtime.ingest is not None and runtime.ingest.state is AccountState.FATAL:
                        break
                    if not self.stop.is_set():
                        await claims.release(name)
            finally:
                runtime.writer.stop()
                await writer_task

    async def _relay_stop(self, account_stop: asyncio.Event, lost: asyncio.Event) -> None:
        stop_wait = asyncio.ensure_future(self.stop.wait())
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({stop_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            lost_wait.cancel()
        account_stop.set()

    async def _ingest(self, runtime: AccountRuntime, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        account = runtime.settings
        options = self.settings.ingest
        assert account.api_key is not None, "secrets are resolved before the daemon starts"
        driver = make_driver(account.venue, credential=account.api_key, ws_url=account.ws_url,
                             rest_url=account.rest_url, backfill_from=options.backfill_from)  # fmt: skip
        runtime.ingest = AccountIngest(
            account=account.name, mode=account.mode, driver=driver, writer=runtime.writer, pool=pool,
            options=options, owner=self.owner,
            stop=stop, metrics=self.metrics,
        )  # fmt: skip
        # Reconciliation passes beside the ingest, while this daemon holds the account (every interval, and after
        # every resync), with a REST client of their own; they end with the ingest.
        reconcile_driver = make_driver(account.venue, credential=account.api_key, ws_url=account.ws_url,
                                       rest_url=account.rest_url, backfill_from=options.backfill_from)  # fmt: skip
        reconciler = Reconciler(account=account.name, venue=account.venue, driver=reconcile_driver, pool=pool,
                                settings=self.settings.reconcile, metrics=self.reconcile_metrics)  # fmt: skip
        runtime.reconcile = ReconcileService(reconciler, interval=self.settings.reconcile.interval_seconds, stop=stop)
        reconciling = asyncio.create_task(runtime.reconcile.run(), name=f"reconcile-{account.name}")
        reconciling.add_done_callback(_report_reconcile_failure)
        try:
            await runtime.ingest.run()
        finally:
            reconciling.cancel()
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await reconciling
            finally:
                await reconcile_driver.close()

    async def _supervised(
        self, name: str, restarts: list[float], what: str, start: Callable[[], Awaitable[Any]]
    ) -> None:
        """Run ``start()``; if it dies of an unexpected error, log the traceback and run it again.

        ``name`` is the account (or the projector worker) and ``restarts`` its recent restart times.
        """
        while True:
            try:
                await start()
            except Exception as exc:
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
                logger.exception("the %s of %s died", what, name, extra={"action": "task_died", "task": what})
                if len(restarts) > MAX_RESTARTS:
                    self.stop.set()
                    raise DaemonFailed(
                        f"the {what} of {name} died {len(restarts)} times in {RESTART_WINDOW:g} s; the daemon "
                        f"stops. Last error: {type(exc).__name__}: {exc}"
                    ) from exc
                pause = min(30.0, 0.5 * 2 ** (len(restarts) - 1))
                logger.warning("restarting the %s of %s in %g s", what, name, pause,
                               extra={"action": "task_restart", "task": what})  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), pause)
                if self.stop.is_set() and what in ("ingest", "projector"):
                    return
            else:
                return

    @contextlib.contextmanager
    def _signals(self) -> Any:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            return
        logger.info("%s: stopping (closing sessions, flushing within %g s)", sig.name,
                    self.settings.ingest.shutdown_grace_seconds, extra={"action": "daemon_stopping"})  # fmt: skip
        self.stop.set()

    # ------------------------------------------------------------------------------------ health, metrics

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: 200 while the database takes writes and at least one account is ingesting.

        The projector workers' entries are those of the child process, with ``[projector] separate_process``: one
        entry with the error while that process is not running."""
        accounts: dict[str, Any] = {}
        now = time.monotonic()
        for name, rt in self.accounts.items():
            ingest = rt.ingest
            writer = rt.writer
            accounts[name] = {
                "venue": rt.settings.venue,
                "mode": rt.settings.mode,
                "state": ingest.state.value if ingest is not None else ("starting" if rt.claimed else "unclaimed"),
                "session": str(ingest.session) if ingest is not None and ingest.session else None,
                "rest_fallback": bool(ingest and ingest.fallback),
                "queue_depth": writer.backlog,
                "last_event_age_seconds": None if writer.last_stored is None else round(now - writer.last_stored, 3),
                "database_failing_seconds": None if writer.healthy else round(now - (writer.failing_since or now), 3),
                "error": (ingest.error if ingest is not None else None) or writer.last_error,
            }  # fmt: skip
        live = [
            a for a in accounts.values() if a["state"] in ("streaming", "polling", "connecting", "waiting", "starting")
        ]
        if self.projector_process is not None:
            projectors = self.projector_process.health()
        else:
            projectors = [
                {"worker": p.name, "slot": p.slot, "accounts": sorted(p.held), "error": p.error, "failing": p.failing}
                for p in self.projectors
            ]
        database_ok = all(rt.writer.healthy for rt in self.accounts.values()) and not any(
            p["error"] for p in projectors
        )
        ok = database_ok and (bool(live) or not accounts) and not self.stop.is_set()
        status = "ok" if ok and len(live) == len(accounts) else ("degraded" if ok else "failing")
        return (200 if ok else 503), {"status": status, "database": "ok" if database_ok else "failing",
                                      "accounts": accounts, "projectors": projectors}  # fmt: skip

    async def _serve_http(self) -> web.AppRunner:
        async def healthz(_: web.Request) -> web.Response:
            code, body = self.health()
            return web.Response(body=orjson.dumps(body), status=code, content_type="application/json")

        async def metrics(_: web.Request) -> web.Response:
            body = generate_latest(self.metrics.registry)
            if self.projector_process is not None:
                body += await self.projector_process.metrics()
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.add_routes([web.get("/healthz", healthz), web.get("/metrics", metrics)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        options = self.settings.ingest
        site = web.TCPSite(runner, options.metrics_host, options.metrics_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StatekeeperError(
                f"cannot serve /healthz and /metrics on {options.metrics_host}:{options.metrics_port} ({exc}); "
                "set [ingest] metrics_port (STATEKEEPER_INGEST_METRICS_PORT)"
            ) from None
        self.port = int(runner.addresses[0][1])
        return runner
