"""Running ``psql`` against the statekeeper database, without putting a password on the command line."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from urllib.parse import urlsplit

from statekeeper.database import DatabaseTarget
from statekeeper.embedded import bin_dir
from statekeeper.errors import DatabaseError


def psql_executable(target: DatabaseTarget) -> str:
    if target.embedded is not None:
        return str(bin_dir() / "psql")
    found = shutil.which("psql")
    if found is None:
        raise DatabaseError("psql is not installed (the PostgreSQL client); install it or use any SQL client")
    return found


def psql_invocation(target: DatabaseTarget, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment: the password goes to PGPASSWORD, never to argv."""
    parts = urlsplit(target.url)
    env = dict(os.environ)
    url = target.url
    if parts.password is not None:
        env["PGPASSWORD"] = parts.password
        netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
        url = parts._replace(netloc=netloc).geturl()
    return [psql_executable(target), url, *args], env


async def run_psql(target: DatabaseTarget, args: list[str]) -> int:
    command, env = psql_invocation(target, args)
    completed = await asyncio.to_thread(subprocess.run, command, env=env, check=False)
    return completed.returncode
