"""The ``statekeeper`` command.

Exit codes: 0 success, 1 a check failed, 2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from statekeeper import __version__
from statekeeper.config import Settings, load_settings
from statekeeper.errors import StatekeeperError
from statekeeper.logs import configure_logging, mask_secrets, register_secret, register_url_password

T = TypeVar("T")

app = typer.Typer(
    name="statekeeper",
    help="Event-sourced account state store: venue streams -> event log -> SQL projections.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # tracebacks must never print local variables (secrets)
)
db_app = typer.Typer(help="Database schema: migrate, inspect, check.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration: validate and show.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Configuration file (TOML). Default: statekeeper.toml in the current directory, if present.",
        dir_okay=False,
    ),
]
LogFormatOption = Annotated[
    Literal["text", "json"] | None,
    typer.Option("--log-format", help="Log format: text for a terminal, json for production."),
]


def _version(value: bool) -> None:
    if value:
        out.print(f"statekeeper {__version__}")
        raise typer.Exit


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """statekeeper keeps the account state of trading venues in PostgreSQL, and can prove it."""


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(mask_secrets(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_command(
    coro_fn: Callable[[Settings], Coroutine[Any, Any, T]],
    config: Path | None,
    *,
    log_format: Literal["text", "json"] | None = None,
    require_secrets: bool = False,
) -> T:
    """Load the configuration, set up logging, run the coroutine; map statekeeper errors to exit codes."""
    try:
        settings = load_settings(config, require_secrets=require_secrets)
        if settings.database.url is not None:
            register_url_password(settings.database.url.get_secret_value())
        for account in settings.accounts:
            if account.api_key is not None:
                register_secret(account.api_key.get_secret_value())
        configure_logging(log_format or settings.log.format, settings.log.level)
        return asyncio.run(_terminable(coro_fn(settings)))
    except StatekeeperError as exc:
        raise fail(exc.message, exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except _Terminated:
        raise fail("terminated (SIGTERM)", 143) from None
    except Exception as exc:
        if getattr(exc, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        raise fail(
            f"the database refused: {exc}. The login lacks a privilege this command needs: see the database roles in "
            "docs/operations.md (`statekeeper project --rebuild` runs as the owner: it creates a schema)",
            2,
        ) from None


INSUFFICIENT_PRIVILEGE = "42501"


class _Terminated(Exception):
    """SIGTERM stopped a command."""


async def _terminable(command: Coroutine[Any, Any, T]) -> T:
    """Run a command so that SIGTERM stops it as Ctrl-C does: cancelled, its cleanup run (a rebuild drops its
    schema, the embedded server is let go). The daemons handle SIGTERM themselves while they run."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    handled = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals here (a thread, Windows)
        loop.add_signal_handler(signal.SIGTERM, terminate)
        handled = True
    try:
        return await command
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


# ------------------------------------------------------------------------------------------------ db


def _migrate(config: Path | None, direction: Literal["upgrade", "downgrade"], revision: str) -> None:
    from statekeeper.database import database_target  # noqa: PLC0415
    from statekeeper.migrations import current_revisions, downgrade, upgrade  # noqa: PLC0415

    migrate = upgrade if direction == "upgrade" else downgrade

    async def go(settings: Settings) -> tuple[str, tuple[str, ...]]:
        async with database_target(settings.database) as target:
            await migrate(target.url, revision)
            return target.display_url, await current_revisions(target.url)

    where, revisions = run_command(go, config)
    out.print(f"database {where} is at revision {', '.join(revisions) or '(none)'}", highlight=False)


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the migrations to the configured database (or the embedded one)."""
    _migrate(config, "upgrade", revision)


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' removes every statekeeper table.")],
    config: ConfigOption = None,
) -> None:
    """Revert migrations down to REVISION. 'base' drops the event log: the data is lost."""
    _migrate(config, "downgrade", revision)


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Print the database's schema revision and the one this version expects."""
    from statekeeper.database import database_target  # noqa: PLC0415
    from statekeeper.migrations import current_revisions, head_revisions  # noqa: PLC0415

    async def go(settings: Settings) -> tuple[str, tuple[str, ...]]:
        async with database_target(settings.database) as target:
            return target.display_url, await current_revisions(target.url)

    where, revisions = run_command(go, config)
    out.print(f"database: {where}", highlight=False)
    out.print(f"current:  {', '.join(revisions) or '(none: empty database)'}", highlight=False)
    out.print(f"expected: {', '.join(head_revisions())}", highlight=False)


@db_app.command("check")
def db_check(config: ConfigOption = None) -> None:
    """Report drift between the declared schema and the database. Exit 1 if they differ."""
    from statekeeper.database import database_target  # noqa: PLC0415
    from statekeeper.migrations import check  # noqa: PLC0415

    async def go(settings: Settings) -> tuple[str, list[str]]:
        async with database_target(settings.database) as target:
            return target.display_url, await check(target.url)

    where, problems = run_command(go, config)
    if problems:
        for problem in problems:
            err.print(f"[red]drift:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"database {where} matches the declared schema", highlight=False)


@db_app.command(
    "psql",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def db_psql(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Open psql on the statekeeper database (starting the embedded server if that is the one in use).

    Arguments after the options go to psql, e.g. statekeeper db psql -c 'SELECT count(*) FROM events'.
    """
    from statekeeper.database import database_target  # noqa: PLC0415
    from statekeeper.psql import run_psql  # noqa: PLC0415

    async def go(settings: Settings) -> int:
        async with database_target(settings.database) as target:
            return await run_psql(target, list(ctx.args))

    raise typer.Exit(run_command(go, config))


# -------------------------------------------------------------------------------------------- config


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration, credentials included, and print it with secrets masked."""

    async def go(settings: Settings) -> Settings:
        return settings

    settings = run_command(go, config, require_secrets=True)
    table = Table(title="statekeeper configuration", show_lines=False)
    table.add_column("key")
    table.add_column("value")
    table.add_row(
        "database.url", escape(settings.database.display_url() or f"(embedded in {settings.database.data_dir})")
    )
    table.add_row("reconcile.interval_seconds", f"{settings.reconcile.interval_seconds:g}")
    table.add_row("log", f"{settings.log.format}, {settings.log.level}")
    ingest = settings.ingest
    table.add_row(
        "ingest",
        escape(
            f"metrics on {ingest.metrics_host}:{ingest.metrics_port}, queue {ingest.queue_size}, "
            f"grace {ingest.shutdown_grace_seconds:g} s, fallback after {ingest.fallback_after_failures} failures, "
            f"poll every {ingest.poll_interval_seconds:g} s, "
            f"funding poll every {ingest.funding_poll_interval_seconds:g} s"
        ),
    )
    for account in settings.accounts:
        table.add_row(
            f"account {account.name}",
            escape(
                f"{account.venue} ({account.mode}), credential from ${account.api_key_env} (set)"
                + (f", ws {account.ws_url}" if account.ws_url else "")
                + (f", rest {account.rest_url}" if account.rest_url else "")
            ),
        )
    out.print(table)


# ----------------------------------------------------------------------------------------------- run


class Part(StrEnum):
    """A part of the daemon that ``statekeeper run --only`` runs alone."""

    INGEST = "ingest"
    PROJECT = "project"


@app.command("run")
def run(
    config: ConfigOption = None,
    log_format: LogFormatOption = None,
    only: Annotated[
        list[Part] | None,
        typer.Option(
            "--only",
            help="Run only this part (repeatable): ingest (streams into the log) or project (the projector "
            "workers), each with the least database privilege it needs (docs/operations.md). Default: every part.",
        ),
    ] = None,
) -> None:
    """The ingest daemon: stream every configured account into the event log until stopped (SIGTERM, Ctrl-C)."""
    from statekeeper.database import database_target  # noqa: PLC0415
    from statekeeper.ingest.daemon import Daemon  # noqa: PLC0415

    parts = set(only or Part)

    async def go(settings: Settings) -> None:
        async with database_target(settings.database) as target:
            await Daemon(settings, target.url, ingest=Part.INGEST in parts, project=Part.PROJECT in parts).run()

    run_command(go, config, log_format=log_format, require_secrets=Part.INGEST in parts)


# -------------------------------------------------------------------------------------------- status


@app.command("status")
def status(
    config: ConfigOption = None,
    account: Annotated[
        list[str] | None, typer.Option("--account", metavar="NAME", help="Only this account (repeatable).")
    ] = None,
    output: Annotated[Literal["table", "json"], typer.Option("--format", help="table, or one JSON document.")] = (
        "table"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document: the same as --format json.")] = False,
) -> None:
    """Per account: stream state, last event, projector lag, last reconciliation."""
    from statekeeper import status as account_status  # noqa: PLC0415
    from statekeeper.database import database_target  # noqa: PLC0415

    if as_json:
        output = "json"

    async def go(settings: Settings) -> list[account_status.AccountStatus]:
        configured = {a.name: a.venue for a in settings.accounts}
        async with database_target(settings.database) as target:
            return await account_status.collect(target.url, account or None, configured=configured)

    statuses = run_command(go, config)
    if output == "json":
        typer.echo(account_status.to_json(statuses))
    elif statuses:
        out.print(account_status.to_table(statuses))
    else:
        out.print("no accounts: none is configured and the event log is empty", highlight=False)


# ----------------------------------------------------------------------------------------- reconcile


@app.command("reconcile")
def reconcile(
    config: ConfigOption = None,
    log_format: LogFormatOption = None,
    account: Annotated[
        list[str] | None, typer.Option("--account", metavar="NAME", help="Only this account (repeatable).")
    ] = None,
    heal: Annotated[
        bool, typer.Option("--heal", help="Heal what differs through the log (also: [reconcile] heal = true).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document instead of the tables.")] = False,
) -> None:
    """One reconciliation pass per account now: compare the projections with the venues' REST APIs and print the
    discrepancies. Exit 1 while a discrepancy remains (or a pass failed)."""
    from statekeeper.database import create_pool, database_target  # noqa: PLC0415
    from statekeeper.reconcile import report  # noqa: PLC0415
    from statekeeper.reconcile.runner import reconcile_accounts  # noqa: PLC0415
    from statekeeper.status import ensure_migrated  # noqa: PLC0415

    async def go(settings: Settings) -> tuple[Any, Any]:
        async with database_target(settings.database) as target:
            await ensure_migrated(target.url)
            pool = await create_pool(target.url, max_size=2)
            try:
                return await reconcile_accounts(settings, pool, account, heal=heal or settings.reconcile.heal)
            finally:
                await pool.close()

    results, records = run_command(go, config, log_format=log_format, require_secrets=True)
    rows = [report.DiscrepancyRow.of(r) for r in records]
    if as_json:
        typer.echo(report.to_json(results, rows))
    else:
        out.print(report.to_table(results, rows))
    failed = [r for r in results if r.status == "failed"]
    for result in failed:
        message = f"reconciliation of {result.account} failed: {result.error}"
        err.print(f"[bold red]error:[/] {escape(mask_secrets(message))}", highlight=False, soft_wrap=True)
    if failed or any(r.remaining for r in results):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- project


@app.command("project")
def project(
    config: ConfigOption = None,
    log_format: LogFormatOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Apply everything in the log now, then exit (no daemon).")
    ] = False,
    rebuild: Annotated[
        bool,
        typer.Option("--rebuild", help="Rebuild the projections from the log into new tables and swap them in."),
    ] = False,
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="With --once or --rebuild: only this account (repeatable). Default: all."),
    ] = None,
) -> None:
    """The projector workers alone: fold the event log into the projection tables (balances, orders, ...).

    Without options, runs until stopped (SIGTERM, Ctrl-C), with /healthz and /metrics like `statekeeper run`.
    """
    from statekeeper.database import database_target  # noqa: PLC0415
    from statekeeper.errors import MigrationError  # noqa: PLC0415
    from statekeeper.eventlog import chosen_accounts  # noqa: PLC0415
    from statekeeper.ingest.daemon import Daemon  # noqa: PLC0415
    from statekeeper.migrations import check  # noqa: PLC0415
    from statekeeper.projections import store  # noqa: PLC0415
    from statekeeper.projections.rebuild import rebuild as rebuild_projections  # noqa: PLC0415

    if once and rebuild:
        raise fail("--once and --rebuild do not go together (a rebuild applies everything anyway)", 2)
    if account and not (once or rebuild):
        raise fail("--account needs --once or --rebuild (the workers project every account)", 2)

    async def go(settings: Settings) -> None:
        async with database_target(settings.database) as target:
            if not (once or rebuild):
                await Daemon(settings, target.url, ingest=False).run()
                return
            problems = await check(target.url)
            if problems:
                raise MigrationError("the database is not ready:\n" + "\n".join(problems))
            batch = settings.projector.batch_size
            if rebuild:
                report = await rebuild_projections(
                    target.url, accounts=account, batch_size=batch, progress=lambda m: out.print(m, highlight=False)
                )
                out.print(f"rebuilt in {report.seconds:.1f} s", highlight=False)
                return
            conn = await store.connect_applier(target.url)
            try:
                accounts = await chosen_accounts(conn, account)
                applied = await store.catch_up(conn, accounts, limit=batch)
            finally:
                await conn.close()
            out.print(f"applied {applied} events to the projections of {len(accounts)} accounts", highlight=False)

    run_command(go, config, log_format=log_format)


# -------------------------------------------------------------------------------------------- replay


def _instant(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}") from None
    if instant.tzinfo is None:
        raise typer.BadParameter("give the time zone (e.g. 2026-11-22T14:03:02Z): times are never guessed")
    return instant


@app.command("replay")
def replay(
    config: ConfigOption = None,
    account: Annotated[
        list[str] | None, typer.Option("--account", metavar="NAME", help="Only this account (repeatable).")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", metavar="TIME", help="State at this time (ISO 8601 with a time zone).")
    ] = None,
    clock: Annotated[
        Literal["venue", "received"],
        typer.Option("--clock", help="With --at: the venue's time of the events, or their receive time."),
    ] = "venue",
    position: Annotated[int | None, typer.Option("--position", min=0, help="State at this log position.")] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Compare with the live projections; exit 1 on any difference.")
    ] = False,
    output: Annotated[Literal["table", "json", "csv"], typer.Option("--format", help="table, json or csv.")] = "table",
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs", min=1, help="Accounts replayed at once, each in its own process [default: one per core]."
        ),
    ] = None,
) -> None:
    """Rebuild state from the event log (the projectors' folds) at any point, with its audit digest."""
    from statekeeper.audit import render  # noqa: PLC0415
    from statekeeper.audit.parallel import default_jobs  # noqa: PLC0415
    from statekeeper.audit.replay import run_replay, run_verify  # noqa: PLC0415
    from statekeeper.database import database_target  # noqa: PLC0415

    instant = _instant(at)
    if instant is not None and position is not None:
        raise fail("--at and --position do not go together: choose one point", 2)
    if verify and (instant is not None or position is not None):
        raise fail("--verify replays to the projections' own position: it takes no --at or --position", 2)
    workers = jobs or default_jobs()
    renderer: render.Renderer = (
        render.JsonRenderer(sys.stdout)
        if output == "json"
        else render.CsvRenderer(sys.stdout)
        if output == "csv"
        else render.TableRenderer(out)
    )
    with _progress() as progress:
        if verify:

            async def check(settings: Settings) -> list[Any]:
                async with database_target(settings.database) as target:
                    return await run_verify(target.url, accounts=account, jobs=workers, progress=progress)

            checks = run_command(check, config)
            raise typer.Exit(_report_verify(checks, output))

        async def go(settings: Settings) -> None:
            async with database_target(settings.database) as target:
                await run_replay(target.url, renderer, accounts=account, position=position, at=instant, clock=clock,
                                 jobs=workers, progress=progress)  # fmt: skip

        run_command(go, config)


@contextmanager
def _progress() -> Iterator[Callable[[int], Callable[[int], None] | None] | None]:
    """A progress bar on stderr for long replays (only on a terminal: elsewhere None, and nothing counts the events
    for it)."""
    from rich.progress import Progress  # noqa: PLC0415

    if not err.is_terminal:
        yield None
        return
    bar = Progress(console=err, transient=True)

    def start(total: int) -> Callable[[int], None] | None:
        if total < 50_000:
            return None
        bar.start()
        task = bar.add_task("replaying", total=total)
        return lambda events: bar.advance(task, events)

    try:
        yield start
    finally:
        bar.stop()


def _report_verify(checks: list[Any], output: str) -> int:
    failed = False
    if output == "json":
        documents = [
            {"account": c.account, "position": c.checkpoint, "log_head": c.account_head, "events": c.events,
             "digest": c.digest, "differences": [str(d) for d in c.differences]}
            for c in checks
        ]  # fmt: skip
        typer.echo(json.dumps({"verify": documents}, indent=2))
        return 1 if any(c.differences for c in checks) else 0
    for check in checks:
        lag = f" (the log goes on to {check.account_head}: the projector lags)" if check.lag else ""
        if check.differences:
            failed = True
            out.print(
                f"[red]{escape(check.account)}: {len(check.differences)} differences[/] at log position "
                f"{check.checkpoint}{lag}",
                highlight=False,
            )
            for difference in check.differences:
                out.print(f"  {escape(str(difference))}", highlight=False, soft_wrap=True)
        else:
            out.print(
                f"{escape(check.account)}: the projection equals the replay at log position {check.checkpoint}{lag} "
                f"({check.events} events, digest {check.digest})",
                highlight=False,
            )
    return 1 if failed else 0


@app.command("verify-log")
def verify_log(
    config: ConfigOption = None,
    account: Annotated[
        list[str] | None, typer.Option("--account", metavar="NAME", help="Only this account (repeatable).")
    ] = None,
) -> None:
    """Check the event log's hash chains; report each account's first broken link. Exit 1 if any is broken."""
    from statekeeper.audit import verify_log as chains  # noqa: PLC0415
    from statekeeper.database import connect, database_target  # noqa: PLC0415
    from statekeeper.eventlog import chosen_accounts  # noqa: PLC0415

    async def go(settings: Settings) -> list[chains.ChainReport]:
        async with database_target(settings.database) as target:
            conn = await connect(target.url)
            try:
                return await chains.verify_log(conn, await chosen_accounts(conn, account))
            finally:
                await conn.close()

    reports = run_command(go, config)
    for report in reports:
        tip = report.tip.hex() if report.tip is not None else "none"
        if report.broken is None:
            out.print(
                f"{escape(report.account)}: {report.events} events, chain intact; tip at position "
                f"{report.last_position}: {tip}",
                highlight=False,
            )
        else:
            out.print(
                f"[red]{escape(report.account)}: broken link at position {report.broken.position}[/]: "
                f"{escape(report.broken.reason)} ({report.events} events, last at {report.last_position})",
                highlight=False,
                soft_wrap=True,
            )
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


# ---------------------------------------------------------------------------------------------- demo


@app.command("demo")
def demo(
    config: ConfigOption = None,
    log_format: LogFormatOption = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=1, help="Run unattended for this many seconds, then print a summary and exit."),
    ] = None,
) -> None:
    """Everything at once: the embedded database, simulated Extended and Paradex venues with faults and a drift,
    the daemon (ingest, projectors, reconciliation), and a live view. Ctrl-C stops it."""
    from statekeeper.demo import run_demo  # noqa: PLC0415

    async def go(settings: Settings) -> int:
        return await run_demo(settings, out, duration=duration)

    code = run_command(go, config, log_format=log_format)
    raise typer.Exit(code)


# ------------------------------------------------------------------------------------------ simulate


def _fault_plan(value: str) -> str:
    from statekeeper.simulator.faults import FaultPlan, FaultPlanError  # noqa: PLC0415

    try:
        FaultPlan.parse(value)
    except FaultPlanError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


@app.command("simulate")
def simulate(
    venue: Annotated[Literal["extended", "paradex"], typer.Option(help="The venue whose protocol to serve.")],
    seed: Annotated[int, typer.Option(help="Same seed, same activity.")] = 1,
    accounts: Annotated[str, typer.Option(help="Comma-separated account names.")] = "sim-1",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 0,
    rate: Annotated[float, typer.Option(help="Activity steps per second.", min=0)] = 20.0,
    faults: Annotated[
        str, typer.Option(help="Fault rates, e.g. 'gap=0.01,duplicate=0.005,rest_429=0.05'.", callback=_fault_plan)
    ] = "",
    ping_interval: Annotated[float | None, typer.Option(help="Seconds between server pings.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.", min=0)] = None,
    config: ConfigOption = None,
) -> None:
    """Serve a simulated venue (WebSocket + REST, the venue's real protocol) until stopped."""
    from statekeeper.simulate import run_simulator  # noqa: PLC0415
    from statekeeper.simulator import SimulatorConfig  # noqa: PLC0415
    from statekeeper.simulator.faults import FaultPlan  # noqa: PLC0415

    names = tuple(a.strip() for a in accounts.split(",") if a.strip())
    if not names:
        raise fail("--accounts names no account", 2)
    simulator_config = SimulatorConfig(
        venue=venue,
        seed=seed,
        accounts=names,
        host=host,
        port=port,
        rate=rate,
        faults=FaultPlan.parse(faults),
        ping_interval=ping_interval,
        record_frames=False,
    )

    async def go(settings: Settings) -> None:
        await run_simulator(simulator_config, out, duration=duration)

    run_command(go, config)


def main() -> None:
    """Entry point of the ``statekeeper`` console script."""
    try:
        app()
    except BrokenPipeError:  # `statekeeper ... | head`
        sys.exit(0)
