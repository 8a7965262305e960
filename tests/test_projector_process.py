"""``statekeeper run``'s projector workers in a child process (``[projector] separate_process``, the default).

The daemon runs in-process (to look inside it), its projector process is real, and so are the simulated venue and
PostgreSQL. ``test_ingest_process.py`` kills a ``statekeeper run`` with ``kill -9`` and sees its projector process
end too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from statekeeper.config import Settings, resolve_secrets
from statekeeper.database import connect
from statekeeper.eventlog import PostgresEventLog
from statekeeper.ingest import projector_process
from statekeeper.ingest.metrics import IngestMetrics
from statekeeper.ingest.projector_process import ProjectorProcess, handoff, projector_families
from statekeeper.projections.worker import ProjectorMetrics
from statekeeper.simulator import Simulator, SimulatorConfig
from tests.ingest_support import running_daemon, settings_for, wait_until
from tests.test_projector_worker import activity, caught_up

ACCOUNT = "pp1"
HOST = socket.gethostname()


def _families(exposition: bytes) -> Counter[str]:
    """How many times each family is declared (``# TYPE``) in an exposition."""
    return Counter(line.split()[2] for line in exposition.decode().splitlines() if line.startswith("# TYPE "))


def test_the_daemon_serves_only_the_projector_families_of_its_child() -> None:
    """The child's exposition holds its (empty) ingest families too: only its projector families are added to the
    daemon's, each once, with every sample."""
    daemon = IngestMetrics()
    daemon.frames_received.labels(account="a", venue="extended").inc()
    child_registry = CollectorRegistry()
    child = IngestMetrics(child_registry)
    projector = ProjectorMetrics(child_registry)
    projector.applied.labels("a").inc(7)
    projector.visible_seconds.labels("a").observe(0.003)
    projector.lag_events.labels("a").set(2)
    kept = projector_families(generate_latest(child.registry))
    served = generate_latest(daemon.registry) + kept
    declared = _families(served)
    assert [name for name, times in declared.items() if times > 1] == []
    assert set(_families(kept)) == {
        "statekeeper_projector_events_total", "statekeeper_projector_rows_total",
        "statekeeper_projector_batch_seconds", "statekeeper_projector_visible_seconds",
        "statekeeper_projector_lag_events", "statekeeper_projector_lag_seconds", "statekeeper_projector_accounts",
        "statekeeper_projector_errors_total",
    }  # fmt: skip
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(served.decode())
        for s in family.samples
    }
    assert samples[("statekeeper_projector_events_total", (("account", "a"),))] == 7
    assert samples[("statekeeper_projector_visible_seconds_bucket", (("account", "a"), ("le", "0.005")))] == 1
    assert samples[("statekeeper_projector_lag_events", (("account", "a"),))] == 2
    assert samples[("statekeeper_frames_received_total", (("account", "a"), ("venue", "extended")))] == 1


def test_the_handoff_carries_the_settings_but_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SK_PP_KEY", "sk-pp-credential-secret-1")
    settings = Settings.model_validate({
        "database": {"url": "postgresql://sk:db-password-secret@db.example/sk", "pool_size": 3},
        "accounts": [{"name": "a", "venue": "extended", "api_key_env": "SK_PP_KEY"}],
        "ingest": {"metrics_host": "0.0.0.0", "metrics_port": 9464, "shutdown_grace_seconds": 7},
        "projector": {"workers": 2, "batch_size": 300},
        "log": {"level": "WARNING"},
    })  # fmt: skip
    settings = resolve_secrets(settings, origin="test")
    line = handoff(settings, "postgresql://sk:db-password-secret@127.0.0.1:5432/sk")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b"sk-pp-credential-secret-1" not in line and b"SK_PP_KEY" not in line
    data = orjson.loads(line)
    assert data["database_url"] == "postgresql://sk:db-password-secret@127.0.0.1:5432/sk"  # the one to use
    child = Settings.model_validate(data["settings"])
    assert child.accounts == () and child.database.url is None and child.database.pool_size == 3
    assert (child.ingest.metrics_host, child.ingest.metrics_port) == ("127.0.0.1", 0)
    assert child.ingest.shutdown_grace_seconds == 7
    assert child.projector == settings.projector and child.projector.workers == 2
    assert child.reconcile == settings.reconcile and child.log == settings.log
    # the child's environment: neither statekeeper's variables (they would override the handoff) nor credentials
    monkeypatch.setenv("STATEKEEPER_PROJECTOR_WORKERS", "5")
    environment = projector_process._environment(settings)
    assert "SK_PP_KEY" not in environment and "STATEKEEPER_PROJECTOR_WORKERS" not in environment
    assert environment["PATH"] == os.environ["PATH"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _positions(url: str) -> tuple[int, int]:
    """The account's last position in the log, and the least any of its projections has applied (0: none)."""
    conn = await connect(url)
    try:
        head = await conn.fetchval("SELECT max(id) FROM events WHERE account = $1", ACCOUNT)
        applied = await conn.fetchval("SELECT min(position) FROM projector_checkpoints WHERE account = $1", ACCOUNT)
        return head or 0, applied or 0
    finally:
        await conn.close()


async def _projected(url: str, past: int = 0) -> None:
    """Wait until the log has grown past ``past`` and the projections have applied it up to there, at least."""
    heads: list[int] = []

    async def grown() -> bool:
        heads.append((await _positions(url))[0])
        return heads[-1] > past

    async def applied() -> bool:
        return (await _positions(url))[1] >= heads[-1]

    await wait_until(grown, what=f"events past position {past}")
    await wait_until(applied, what=f"the projections applying the log up to {heads[-1]}")


async def _metrics(http: aiohttp.ClientSession, port: int) -> bytes:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        return await response.read()


async def test_run_projects_in_a_child_process_restarted_when_it_dies(database_url: str) -> None:
    config = SimulatorConfig(venue="extended", seed=41, accounts=(ACCOUNT,), rate=50, step_ms=50)
    async with await Simulator.start(config) as sim:
        async with (
            running_daemon(settings_for({ACCOUNT: sim}), database_url) as daemon,
            aiohttp.ClientSession() as http,
        ):
            process = daemon.projector_process
            assert process is not None and daemon.projectors == [] and daemon.projector_metrics is None

            def held(pid: int | None) -> bool:
                code, body = daemon.health()
                workers = [p for p in body["projectors"] if p["accounts"] == [ACCOUNT]]
                return code == 200 and len(workers) == 1 and workers[0]["worker"].startswith(f"{HOST}:{pid}/")

            await wait_until(lambda: held(process.pid), what="the child's worker holding the account, in /healthz")
            first = process.pid
            assert first is not None and first != os.getpid()
            await _projected(database_url)

            # /metrics: the daemon's families and the child's projector families, each declared once
            exposition = await _metrics(http, daemon.port or 0)
            declared = _families(exposition)
            assert [name for name, times in declared.items() if times > 1] == []
            samples = {
                (s.name, s.labels.get("account")): s.value
                for family in text_string_to_metric_families(exposition.decode())
                for s in family.samples
            }
            assert samples[("statekeeper_projector_events_total", ACCOUNT)] > 0
            assert samples[("statekeeper_events_appended_total", ACCOUNT)] > 0
            assert declared["statekeeper_projector_lag_events"] == 1

            # the child dies: /healthz says so, the daemon starts another, and it projects what came meanwhile
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: daemon.health()[0] == 503, what="/healthz failing while the child is down")
            error = daemon.health()[1]["projectors"]
            assert [p["error"] for p in error] == [f"the projector process (pid {first}) was killed by SIGKILL"]
            await wait_until(lambda: process.pid != first and held(process.pid), within=30,
                             what="a new projector process holding the account")  # fmt: skip
            second = process.pid
            assert second is not None
            await _projected(database_url, past=(await _positions(database_url))[0])
            assert b"statekeeper_projector_events_total" in await _metrics(http, daemon.port or 0)
        # the daemon stopped: so did its projector process
        assert not _alive(second)


async def test_the_child_applies_what_it_is_poked_for_stops_when_its_input_ends_and_needs_a_handoff(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    settings = Settings(ingest={"metrics_port": 0}, projector={"workers": 1, "poll_interval_seconds": 3600})  # type: ignore[arg-type]
    await log.append(activity(ACCOUNT, 20, seed=1))
    child = await asyncio.create_subprocess_exec(
        *ProjectorProcess.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(handoff(settings, database_url))
        async with asyncio.timeout(30):
            started: dict[str, Any] = orjson.loads(await child.stdout.readline())
            assert isinstance(started["port"], int)
            reported: dict[str, Any] = orjson.loads(await child.stdout.readline())
        assert [p["worker"].split("/")[0] for p in reported["projectors"]] == [f"{HOST}:{child.pid}"]
        await wait_until(caught_up(pool), what="the events already in the log applied")

        # no NOTIFY and no poll for an hour: only the daemon's poke can make the child apply new events now
        await pool.execute("ALTER TABLE events DISABLE TRIGGER events_notify")
        await log.append(activity(ACCOUNT, 20, seed=1, start=20))
        child.stdin.write(orjson.dumps(ACCOUNT) + b"\n")
        await wait_until(caught_up(pool), what="the poked account's new events applied")

        child.stdin.close()  # what the daemon dying does too
        async with asyncio.timeout(30):
            assert await child.wait() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()

    for given in (b"", b"not json\n"):  # no handoff, or one that is not JSON: a clear error, no traceback
        alone = await asyncio.create_subprocess_exec(
            *ProjectorProcess.command, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, err = await alone.communicate(given)
        assert alone.returncode == 2, err
        assert b"started by `statekeeper run`" in err and b"Traceback" not in err, err


async def test_separate_process_false_keeps_the_workers_in_the_daemon(database_url: str) -> None:
    config = SimulatorConfig(venue="paradex", seed=42, accounts=(ACCOUNT,), rate=50, step_ms=50)
    async with await Simulator.start(config) as sim:
        settings = settings_for({ACCOUNT: sim})
        settings = settings.model_copy(
            update={"projector": settings.projector.model_copy(update={"separate_process": False})}
        )
        async with running_daemon(settings, database_url) as daemon:
            assert daemon.projector_process is None and len(daemon.projectors) == 1
            await _projected(database_url)
            [worker] = daemon.health()[1]["projectors"]
            assert worker["worker"].startswith(f"{HOST}:{os.getpid()}/") and worker["accounts"] == [ACCOUNT]


async def test_a_child_that_cannot_reach_the_database_says_so_without_its_password() -> None:
    """Bad input to the child: an exit code and a clear error on stderr; the database password masked there."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    password = "pp-db-password-secret-7"
    url = f"postgresql://statekeeper:{password}@127.0.0.1:{port}/statekeeper"
    settings = Settings(ingest={"metrics_port": 0}, projector={"workers": 1})  # type: ignore[arg-type]
    child = await asyncio.create_subprocess_exec(
        *ProjectorProcess.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await child.communicate(handoff(settings, url))
    assert child.returncode == 2, err  # a database error, as `statekeeper project` would exit
    assert out == b"", "no port reported: it never served"
    text = err.decode()
    assert "ERROR   statekeeper.ingest.projector_process: the projector process failed: " in text, text
    assert str(port) in text, text  # the error names where it could not connect
    assert password not in text, text
