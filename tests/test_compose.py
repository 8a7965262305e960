"""docker-compose.yml, without a Docker engine: the file is read as Compose reads it (services, the order they start
in, commands the CLI accepts, files that exist), and the services' own commands run here, as subprocesses, against
the test server: the login roles script of the postgres service, the migration, the simulated venue, the ingest and
projector daemons, each with the environment and database user its service gives it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import pytest
import typer.main
import yaml

from statekeeper.cli import app
from statekeeper.config import load_settings
from statekeeper.database import connect
from statekeeper.embedded import bin_dir
from statekeeper.simulator import _credential
from tests.conftest import PgServer
from tests.ingest_support import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CONFIG_IN_CONTAINER = "/etc/statekeeper/statekeeper.toml"
STATEKEEPER_SERVICES = ("migrate", "venue", "ingest", "projector")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def interpolate(value: str, environ: Mapping[str, str] = {}) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR}``, with ``environ`` (empty: the defaults, as on a fresh checkout)."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return environ.get(name) or (default if default is not None else "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", one, value)


def read_env_file(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#"))


# ---------------------------------------------------------------------------------------------- the file


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", *STATEKEEPER_SERVICES}
    conditions = {name: {d: c["condition"] for d, c in s.get("depends_on", {}).items()} for name, s in services.items()}
    assert conditions == {
        "postgres": {},
        "migrate": {"postgres": "service_healthy"},
        "venue": {},
        "ingest": {"migrate": "service_completed_successfully", "venue": "service_healthy"},
        "projector": {"migrate": "service_completed_successfully"},
    }
    for name in ("postgres", "venue", "ingest", "projector"):  # what others wait on, or what an operator watches
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["restart"] == "no"
    for name in STATEKEEPER_SERVICES:
        assert services[name]["build"] == "." and services[name]["image"] == "statekeeper:latest"


def _cli_command(args: list[str]) -> Any:
    """Parse ``args`` as the statekeeper CLI would (values and choices checked), without running anything."""
    command: Any = typer.main.get_command(app)
    rest = list(args)
    while hasattr(command, "commands"):
        name = rest.pop(0)
        assert name in command.commands, f"statekeeper has no command {name!r}"
        command = command.commands[name]
    return command.make_context(command.name, rest)


def test_every_command_is_one_the_cli_accepts(compose: dict[str, Any]) -> None:
    for name in STATEKEEPER_SERVICES:
        context = _cli_command(compose["services"][name]["command"])
        if "config" in context.params and name != "venue":
            assert str(context.params["config"]) == CONFIG_IN_CONTAINER, name
    assert {p.value for p in _cli_command(compose["services"]["ingest"]["command"]).params["only"]} == {"ingest"}
    assert {p.value for p in _cli_command(compose["services"]["projector"]["command"]).params["only"]} == {"project"}


def test_every_file_it_mounts_or_reads_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = interpolate(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
        for env_file in service.get("env_file", []):
            assert not env_file["required"] or (ROOT / env_file["path"]).is_file(), (name, env_file)
    assert (ROOT / "deploy" / "initdb" / "10-statekeeper-logins.sh").stat().st_mode & 0o111  # the image runs it
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_the_simulated_accounts_have_the_venues_credentials(compose: dict[str, Any]) -> None:
    """deploy/statekeeper.toml points every account at the venue service, with the credential it accepts."""
    venue = _cli_command(compose["services"]["venue"]["command"]).params
    environ = read_env_file(ROOT / "deploy" / "simulated.env")
    settings = load_settings(ROOT / "deploy" / "statekeeper.toml", require_secrets=True, environ=environ)
    assert {a.name for a in settings.accounts} == set(venue["accounts"].split(","))
    for account in settings.accounts:
        assert account.api_key is not None and account.venue == venue["venue"]
        assert account.api_key.get_secret_value() == _credential(venue["venue"], venue["seed"], account.name)
        for url in (account.ws_url, account.rest_url):
            assert urlsplit(url).netloc == f"venue:{venue['port']}"


# ------------------------------------------------------------------------------------ the services, here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_url(compose_url: str, server: PgServer, database: str, owner: str) -> str:
    """The service's database URL on the test server: same user (the owner is the server's), same password."""
    parts = urlsplit(compose_url)
    user = server.user if parts.username == owner else parts.username or ""
    auth = quote(user, safe="") + (f":{quote(parts.password, safe='')}" if parts.password else "")
    if server.host.startswith("/"):
        return f"postgresql://{auth}@/{database}?host={server.host}&port={server.port}"
    return f"postgresql://{auth}@{server.host}:{server.port}/{database}"


class Services:
    """The statekeeper services of the compose file as processes of this machine."""

    def __init__(self, compose: dict[str, Any], server: PgServer, database: str, work: Path) -> None:
        self.services = compose["services"]
        self.server, self.database, self.work = server, database, work
        self.owner = self.services["postgres"]["environment"]["POSTGRES_USER"]
        self.venue_port = free_port()
        self.metrics_ports = {"ingest": free_port(), "projector": free_port()}
        config = (ROOT / "deploy" / "statekeeper.toml").read_text(encoding="utf-8")
        self.config = work / "statekeeper.toml"
        self.config.write_text(config.replace("venue:8765", f"127.0.0.1:{self.venue_port}"), encoding="utf-8")
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    def url(self, service: str) -> str:
        compose_url = interpolate(self.services[service]["environment"]["STATEKEEPER_DATABASE_URL"])
        return local_url(compose_url, self.server, self.database, self.owner)

    def environment(self, service: str) -> dict[str, str]:
        spec = self.services[service]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKEEPER_")}
        for env_file in spec.get("env_file", []):
            if env_file["required"]:
                env.update(read_env_file(ROOT / env_file["path"]))
        env.update({k: interpolate(str(v)) for k, v in spec.get("environment", {}).items()})
        if "STATEKEEPER_DATABASE_URL" in env:
            env["STATEKEEPER_DATABASE_URL"] = self.url(service)
        if service in self.metrics_ports:  # one host here: each daemon on a port of its own, on loopback
            env["STATEKEEPER_INGEST_METRICS_HOST"] = "127.0.0.1"
            env["STATEKEEPER_INGEST_METRICS_PORT"] = str(self.metrics_ports[service])
        return env

    def arguments(self, service: str) -> list[str]:
        args = [str(self.config) if a == CONFIG_IN_CONTAINER else a for a in self.services[service]["command"]]
        if service == "venue":
            args[args.index("--host") + 1] = "127.0.0.1"
            args[args.index("--port") + 1] = str(self.venue_port)
        return args

    async def start(self, service: str) -> asyncio.subprocess.Process:
        output = (self.work / f"{service}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "statekeeper", *self.arguments(service),
            cwd=self.work, env=self.environment(service), stdout=output, stderr=output,
        )  # fmt: skip
        output.close()
        self.processes[service] = process
        return process

    def log(self, service: str) -> str:
        return (self.work / f"{service}.log").read_text(encoding="utf-8", errors="replace")[-3000:]

    async def run(self, service: str) -> int:
        return await (await self.start(service)).wait()

    async def stop(self, service: str, within: float = 30.0) -> int:
        process = self.processes.pop(service)
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        try:
            async with asyncio.timeout(within):
                return await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise

    async def stop_all(self) -> None:
        for service in list(self.processes):
            with contextlib.suppress(TimeoutError):
                await self.stop(service)

    def init_roles(self) -> None:
        """The postgres image's first start: every script of deploy/initdb with the service's environment."""
        postgres = self.services["postgres"]["environment"]
        env = {
            **os.environ,
            **{k: interpolate(str(v)) for k, v in postgres.items()},
            "POSTGRES_USER": self.server.user,
            "POSTGRES_DB": self.database,
            "PGHOST": self.server.host,
            "PGPORT": str(self.server.port),
            "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        if self.server.password:
            env["PGPASSWORD"] = self.server.password
        bash = shutil.which("bash")
        assert bash is not None
        for script in sorted((ROOT / "deploy" / "initdb").glob("*.sh")):
            result = subprocess.run([bash, str(script)], env=env, capture_output=True, text=True, timeout=60,
                                    check=False)  # fmt: skip
            assert result.returncode == 0, result.stderr


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


@pytest.fixture
async def services(
    compose: dict[str, Any], pg_server: PgServer, empty_database_url: str, tmp_path: Path
) -> AsyncIterator[Services]:
    running = Services(compose, pg_server, urlsplit(empty_database_url).path.lstrip("/"), tmp_path)
    try:
        yield running
    finally:
        await running.stop_all()


@contextlib.contextmanager
def explained(services: Services, *names: str) -> Iterator[None]:
    """On a failure, show what the services printed."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(f"--- {n}:\n{services.log(n)}" for n in names)) from None


async def test_the_services_run_end_to_end(services: Services) -> None:
    await asyncio.to_thread(services.init_roles)
    with explained(services, "migrate"):
        assert await services.run("migrate") == 0
    await services.start("venue")
    truth = f"http://127.0.0.1:{services.venue_port}/_sim/truth/sim-1"  # the venue's health check
    with explained(services, "venue"):
        await wait_until(lambda: asyncio.to_thread(lambda: get_json(truth)[0] == 200), within=20, what="the venue")
    await services.start("ingest")
    await services.start("projector")

    async def projected() -> bool:
        conn = await connect(services.url("migrate"))  # the owner, as `docker compose exec postgres psql` would
        try:
            rows = await conn.fetch(
                "SELECT s.account FROM account_summary AS s WHERE s.stream_state = 'streaming'"
                " AND EXISTS (SELECT FROM balances AS b WHERE b.account = s.account)"
            )
            return {r["account"] for r in rows} == {"sim-1", "sim-2"}
        finally:
            await conn.close()

    with explained(services, "ingest", "projector"):
        await wait_until(projected, within=40, what="both accounts streaming and projected")
        health = f"http://127.0.0.1:{services.metrics_ports['ingest']}/healthz"
        status, body = await asyncio.to_thread(get_json, health)
        assert status == 200 and {a["state"] for a in body["accounts"].values()} == {"streaming"}
        status, body = await asyncio.to_thread(
            get_json, f"http://127.0.0.1:{services.metrics_ports['projector']}/healthz"
        )
        assert status == 200 and body["projectors"] and body["accounts"] == {}

    async def reconciled() -> bool:  # the first pass of each account, beside its ingest, as ingest_daemon
        conn = await connect(services.url("migrate"))
        try:
            rows = await conn.fetch("SELECT account, status, error FROM reconciliation_runs")
        finally:
            await conn.close()
        assert [r["error"] for r in rows if r["status"] == "failed"] == []
        return {r["account"] for r in rows} == {"sim-1", "sim-2"}

    with explained(services, "ingest"):
        await wait_until(reconciled, within=60, what="a reconciliation pass of each account")

    reader_url = local_url("postgresql://reader@postgres/statekeeper", services.server, services.database, "-")
    conn = await connect(reader_url)  # the reader login of deploy/initdb: the projections, and only them
    try:
        assert {r["account"] for r in await conn.fetch("SELECT account FROM balances")} == {"sim-1", "sim-2"}
    finally:
        await conn.close()

    with explained(services, "ingest", "projector"):
        assert await services.stop("ingest") == 0  # drained and closed within the grace period
        assert await services.stop("projector") == 0
    assert await services.stop("venue") == 0
    conn = await connect(services.url("migrate"))
    try:
        reasons = {r["close_reason"] for r in await conn.fetch("SELECT close_reason FROM stream_sessions")}
    finally:
        await conn.close()
    assert reasons == {"shutdown"}
