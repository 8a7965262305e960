"""Shared benchmark plumbing: a fresh embedded cluster, timing, and the results files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg

from statekeeper.database import connect
from statekeeper.embedded import EmbeddedPostgres
from statekeeper.migrations import upgrade

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"


@dataclass
class Cluster:
    """A fresh PostgreSQL cluster with a migrated template; :meth:`database` hands out fresh copies."""

    admin_url: str
    server: EmbeddedPostgres | None
    template: str

    async def database(self) -> str:
        name = f"bench_{uuid4().hex[:10]}"
        admin = await connect(self.admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await admin.close()
        return _with_db(self.admin_url, name)


def _with_db(url: str, name: str) -> str:
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{query}"


@asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    """A cluster for this run: ``STATEKEEPER_BENCH_DATABASE_URL``'s server, or a new embedded one."""
    given = os.environ.get("STATEKEEPER_BENCH_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="statekeeper-bench-") as directory:
        server = None if given else EmbeddedPostgres(Path(directory))
        admin_url = given or server.start()  # type: ignore[union-attr]
        template = f"bench_template_{uuid4().hex[:8]}"
        admin = await connect(admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{template}"')
        finally:
            await admin.close()
        await upgrade(_with_db(admin_url, template))
        try:
            yield Cluster(admin_url, server, template)
        finally:
            if server is not None:
                server.stop()


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=False).stdout.strip()  # fmt: skip
    return out.stdout.strip() + ("+dirty" if dirty else "")


def record(name: str, figures: dict[str, Any], *, write: bool = True) -> dict[str, Any]:
    entry = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        **figures,
    }
    if write:
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results[name] = entry
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return entry


async def server_setting(url: str, name: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT current_setting($1)", name))
    finally:
        await conn.close()
