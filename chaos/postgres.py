"""A PostgreSQL server of the harness's own (the embedded one), which it stops and starts again with pg_ctl."""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

from statekeeper.database import connect
from statekeeper.embedded import EmbeddedPostgres, bin_dir
from statekeeper.migrations import upgrade

TEMPLATE = "chaos_template"
CREATE_DATABASE = 'CREATE DATABASE "{name}" TEMPLATE "{template}"'


class ChaosPostgres:
    """An embedded server in ``directory``; a migrated template; a fresh database per run."""

    def __init__(self, directory: Path) -> None:
        self.server = EmbeddedPostgres(directory)
        self.admin_url = ""
        self.options = ""
        self.restarts = 0

    @property
    def pgdata(self) -> Path:
        return self.server.pgdata

    @property
    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    async def start_server(self) -> None:
        self.admin_url = self.server.start()
        words = shlex.split((self.pgdata / "postmaster.opts").read_text())[1:]
        options: list[str] = []
        index = 0
        while index < len(words):  # pgserver's own options (-h "" -k <socket dir>), without the data directory
            if words[index] == "-D":
                index += 2
                continue
            options.append(words[index])
            index += 1
        self.options = shlex.join(options)
        admin = await connect(self.admin_url)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", TEMPLATE):
                await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
                await upgrade(self.server.url(TEMPLATE))
        finally:
            await admin.close()

    async def fresh_database(self, name: str) -> str:
        """A new migrated database ``name`` (copied from the template), dropped first if a run left it."""
        admin = await connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(CREATE_DATABASE.format(name=name, template=TEMPLATE))
        finally:
            await admin.close()
        return self.server.url(name)

    async def drop_database(self, name: str) -> None:
        admin = await connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def pg_ctl(self, *args: str) -> None:
        # pgserver runs the server as the owner of its data directory (its own user when we are root)
        user = self.pgdata.owner() if os.geteuid() == 0 else None
        process = await asyncio.create_subprocess_exec(
            str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            user=user,
        )  # fmt: skip
        async with asyncio.timeout(90):
            code = await process.wait()
        if code != 0:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed with code {code}; server log:\n{tail}")

    async def stop(self, mode: str = "fast") -> None:
        await self.pg_ctl("stop", "-m", mode)

    async def start(self) -> None:
        await self.pg_ctl("-l", str(self.pgdata / "log"), "-o", self.options, "start")
        self.restarts += 1

    async def close(self) -> None:
        # pgserver stops only the postmaster it started itself: a restarted one is ours to stop
        if self.restarts and self.running:
            await self.stop()
        self.server.stop()
