"""Replay several accounts at once, one worker process per core.

An account's events fold one after the other, on one core; accounts are independent. A replay of many accounts
(and ``--verify``) hands the accounts to up to ``jobs`` worker processes, one account at a time each: the worker
replays the account on its own connection (its PostgreSQL backend builds the pages on another core) and returns
the result, which the parent takes in account order, so the output and the digests are the same whatever the
number of workers. A result travels to the parent pickled; one that names a file (a replay's output,
:class:`statekeeper.audit.output.Spooled`) hands the file over: the parent deletes it when it closes the result.

A worker is a fresh interpreter (``python -c``, importing this module by its name: nothing of the parent's event
loop, connections or main script), which costs about a quarter of a second to start, so a replay goes parallel
only when there is enough to read (``parallel_from`` events), and a worker serves one account after another until
there are no more. It takes each task as a frame on stdin (``t`` and the pickled work) and answers on its original
stdout (its own ``print``\\ s and logs go to stderr) with frames: ``p`` and the events of each page folded (the
parent's progress bar), then ``r`` and the pickled result, or ``e`` and the pickled exception. It exits when its
stdin closes.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar

import asyncpg

from statekeeper.audit.reader import SERVER_SETTINGS
from statekeeper.database import connect
from statekeeper.errors import StatekeeperError

T = TypeVar("T")

Progress = Callable[[int], None]
AccountWork = Callable[[asyncpg.Connection, str, Progress | None], Awaitable[T]]
"""What is done for one account: ``work(conn, account, progress)``. For worker processes it must pickle (an
instance of a module-level class)."""

PARALLEL_FROM = 100_000
"""Events to read below which a replay stays in this process: a worker's start costs more than it saves."""

_HEADER = struct.Struct("!cQ")
_SERVE = "from statekeeper.audit.parallel import serve; serve()"
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerFailed(StatekeeperError):
    """A replay worker process ended without an answer."""


def default_jobs() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ the worker


def serve() -> None:
    """A worker process's main: tasks from stdin, one after the other until it closes, each answered with its
    frames on the original stdout."""
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray output must not corrupt the frames

    def send(tag: bytes, number: int, body: bytes = b"") -> None:
        answer.write(_HEADER.pack(tag, number) + body)
        answer.flush()

    asyncio.run(_serve(sys.stdin.buffer, send))
    answer.close()


async def _serve(tasks: BinaryIO, send: Callable[..., None]) -> None:
    conn: asyncpg.Connection | None = None
    try:
        while header := tasks.read(_HEADER.size):  # nothing else runs in this process: a blocking read is fine
            _, size = _HEADER.unpack(header)
            url, work, account = pickle.loads(tasks.read(size))  # noqa: S301 - written by the parent process
            try:
                if conn is None or conn.is_closed():
                    conn = await connect(url, server_settings=SERVER_SETTINGS)
                result = await work(conn, account, lambda events: send(b"p", events))
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
                send(b"e", *_framed(_picklable(exc)))
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # in whatever state the failure left it: the next task connects again
                conn = None
                continue
            send(b"r", *_framed(result))  # a file it names is the parent's now: the worker leaves it be
    finally:
        if conn is not None:
            await conn.close()


def _framed(value: object) -> tuple[int, bytes]:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body), body


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    except Exception:  # noqa: BLE001 - whatever does not survive the trip is sent as its text
        return WorkerFailed("".join(traceback.format_exception(exc)).strip())
    return exc


# ------------------------------------------------------------------------------------------ the parent


class _Worker:
    """One worker process, given accounts one at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        if process.stdin is None or process.stdout is None:  # pragma: no cover - both were asked for as pipes
            raise WorkerFailed("the replay worker has no pipes")
        self._tasks, self._answers = process.stdin, process.stdout

    @classmethod
    async def start(cls) -> _Worker:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_SOURCE_ROOT, os.environ.get("PYTHONPATH")]))}
        starting = asyncio.ensure_future(asyncio.create_subprocess_exec(
            sys.executable, "-c", _SERVE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        ))  # fmt: skip
        try:
            process = await asyncio.shield(starting)
        except asyncio.CancelledError:  # cancelled while it started: do not leave it running unseen
            await _reap(await starting, stop=True)
            raise
        return cls(process)

    async def run(self, url: str, work: AccountWork[T], account: str, progress: Progress | None) -> T:
        """``work`` for ``account`` in the worker; its exception (raised here) if it failed there."""
        try:
            task = pickle.dumps((url, work, account), protocol=pickle.HIGHEST_PROTOCOL)
            self._tasks.write(_HEADER.pack(b"t", len(task)) + task)
            await self._tasks.drain()
            while True:
                tag, number = _HEADER.unpack(await self._answers.readexactly(_HEADER.size))
                if tag == b"p":
                    if progress is not None:
                        progress(number)
                    continue
                answer = pickle.loads(await self._answers.readexactly(number))  # noqa: S301 - our own worker's
                if tag == b"e":
                    raise answer
                result: T = answer
                return result
        except (asyncio.IncompleteReadError, ConnectionError):
            status = await self.process.wait()
            raise WorkerFailed(f"the replay worker for account {account!r} ended without an answer "
                               f"(exit status {status}; its errors are above)") from None  # fmt: skip

    async def close(self, *, stop: bool) -> None:
        """End the worker: at once if ``stop``, else once it has read that there are no more tasks."""
        if not self._tasks.is_closing():
            self._tasks.close()
        await _reap(self.process, stop=stop)


async def _reap(process: asyncio.subprocess.Process, *, stop: bool) -> None:
    """Wait for a worker to exit (killed first if ``stop``: cancelled, or it failed), even if cancelled meanwhile."""
    if stop and process.returncode is None:
        process.kill()
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.shield(exited)
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()
        await exited
        raise


def _close(result: object) -> None:
    close = getattr(result, "close", None)
    if callable(close):
        close()


async def each_account(
    url: str,
    conn: asyncpg.Connection,
    accounts: Sequence[str],
    work: AccountWork[T],
    *,
    jobs: int,
    events: int,
    progress: Progress | None,
    parallel_from: int = PARALLEL_FROM,
) -> AsyncIterator[T]:
    """``work`` done for each account, the results in the order of ``accounts``.

    On ``conn``, one after the other, when ``jobs`` is 1, there is one account, or fewer than ``parallel_from``
    ``events`` to read; otherwise in up to ``jobs`` worker processes at once, each given one account after another
    (a worker's start costs a quarter of a second: many small accounts do not pay it each). A result the caller did
    not take (it stopped early, or another account failed) is closed if it has a ``close`` method.
    """
    if jobs <= 1 or len(accounts) <= 1 or events < parallel_from:
        for account in accounts:
            yield await work(conn, account, progress)
        return
    slots = asyncio.Semaphore(jobs)
    idle: list[_Worker] = []  # at most ``jobs`` workers exist: one per slot

    async def one(account: str) -> T:
        async with slots:
            worker = idle.pop() if idle else await _Worker.start()
            done = False
            try:
                result = await worker.run(url, work, account, progress)
                done = True
                return result
            finally:
                if done:
                    idle.append(worker)
                else:  # failed or cancelled: whatever it was doing, it does not go on
                    await worker.close(stop=True)

    tasks = [asyncio.create_task(one(account)) for account in accounts]
    taken = 0
    try:
        for task in tasks:
            result = await task
            taken += 1
            yield result
    finally:
        for task in tasks[taken:]:
            task.cancel()
        await asyncio.gather(*tasks[taken:], return_exceptions=True)
        for task in tasks[taken:]:
            if not task.cancelled() and task.exception() is None:
                _close(task.result())
        await asyncio.gather(*(worker.close(stop=False) for worker in idle))
