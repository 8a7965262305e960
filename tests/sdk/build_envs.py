"""Build the virtual environments the SDK fidelity checks run in, or reuse them when nothing changed.

Each official venue SDK gets its own environment under ``<repository>/.venv-sdk/<name>``, because the two cannot
share one (Extended's SDK needs ``websockets<14``, paradex-py needs ``websockets>=15``). An environment is exactly
its pinned requirement file ``tests/sdk/<name>-requirements.txt``, installed with ``pip install --no-deps``. A
stamp inside it records the hash of that file, of this recipe and of the interpreter; while the stamp matches, the
environment is reused as it is. The stamp is written last, so a build that fails half-way is redone next time.

    python tests/sdk/build_envs.py [extended] [paradex] [--force]

The interpreter that runs this script is the one the environments are made from. It prints one JSON line per
environment (``{"env", "python", "rebuilt", "seconds"}``); if pip fails it prints pip's output to stderr and exits
with status 1. Only the standard library is used, so any Python 3.11 can run it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENVS_DIR = ROOT / ".venv-sdk"
ENV_NAMES = ("extended", "paradex")
STAMP_NAME = ".fidelity-stamp"
# Change this when the way an environment is built changes (not its contents: those are the requirement file).
RECIPE = "venv+pip-install-no-deps/1"
PIP_TIMEOUT_SECONDS = 1200


class BuildError(Exception):
    """pip (or venv) failed; the message holds its output."""


@dataclass(frozen=True)
class BuiltEnv:
    name: str
    python: Path
    rebuilt: bool
    seconds: float

    def to_json(self) -> str:
        return json.dumps(
            {"env": self.name, "python": str(self.python), "rebuilt": self.rebuilt, "seconds": round(self.seconds, 1)}
        )


def requirements_file(name: str) -> Path:
    return HERE / f"{name}-requirements.txt"


def env_dir(name: str) -> Path:
    return ENVS_DIR / name


def env_python(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def stamp_for(name: str) -> str:
    digest = hashlib.sha256()
    digest.update(RECIPE.encode())
    digest.update(f"{platform.python_implementation()} {platform.python_version()} {platform.machine()}".encode())
    digest.update(requirements_file(name).read_bytes())
    return digest.hexdigest()


def is_current(name: str) -> bool:
    stamp = env_dir(name) / STAMP_NAME
    return env_python(name).exists() and stamp.exists() and stamp.read_text().strip() == stamp_for(name)


@contextlib.contextmanager
def build_lock(name: str) -> Iterator[None]:
    """One builder at a time per environment (two test runs may start together)."""
    ENVS_DIR.mkdir(exist_ok=True)
    # Like `python3.13 -m venv` does: git (and so ruff) never sees what is in here.
    (ENVS_DIR / ".gitignore").write_text("# Made by tests/sdk/build_envs.py: SDK environments, never committed.\n*\n")
    with (ENVS_DIR / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"`{' '.join(command)}` exited with {result.returncode}\n"
            f"--- stderr ---\n{result.stderr}\n--- stdout ---\n{result.stdout}"
        )


def ensure(name: str, *, force: bool = False) -> BuiltEnv:
    """The environment ``name``, built if it is missing or out of date (or ``force``)."""
    if name not in ENV_NAMES:
        raise ValueError(f"unknown SDK environment {name!r}; known: {', '.join(ENV_NAMES)}")
    started = time.monotonic()
    with build_lock(name):
        if not force and is_current(name):
            return BuiltEnv(name, env_python(name), rebuilt=False, seconds=time.monotonic() - started)
        target = env_dir(name)
        if target.exists():
            shutil.rmtree(target)
        run([sys.executable, "-m", "venv", str(target)])
        python = str(env_python(name))
        run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--no-deps",
                "--requirement",
                str(requirements_file(name)),
            ]
        )
        (target / STAMP_NAME).write_text(stamp_for(name) + "\n")
    return BuiltEnv(name, env_python(name), rebuilt=True, seconds=time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("envs", nargs="*", metavar="env", help=f"{' or '.join(ENV_NAMES)} (default: both)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.envs) - set(ENV_NAMES))
    if unknown:
        parser.error(f"unknown environment(s): {', '.join(unknown)}")
    for name in args.envs or ENV_NAMES:
        try:
            built = ensure(name, force=args.force)
        except BuildError as error:
            print(f"building the {name} SDK environment failed:\n{error}", file=sys.stderr)
            return 1
        print(built.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
