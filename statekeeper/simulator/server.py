"""What both simulated venues' servers share: stream connections with faults, and REST faults.

A :class:`StreamConnection` is one client's WebSocket. Messages for it are queued (bounded: a client that does
not keep up is disconnected, as real venues do), numbered when the venue numbers its frames, and sent by one
task per connection, which is where stream faults happen. Every frame sent is recorded, and so is every frame a
``gap`` fault swallowed, so tests can prove that nothing the venue sent was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSCloseCode, web

from statekeeper.simulator.faults import REST_FAULTS, STREAM_FAULTS, FaultDice, FaultKind, FaultPlan

logger = logging.getLogger(__name__)

MAX_QUEUE = 50_000

Numbering = Callable[[dict[str, Any], int], dict[str, Any]]
"""Adds the connection's seq to a message (Extended); venues without one leave the message as it is."""


@dataclass
class SentFrames:
    """What a connection sent, and what a fault made it lose."""

    sent: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


class StreamConnection:
    """One client's stream: a queue of messages and the task that sends them, faults included."""

    def __init__(
        self,
        socket: web.WebSocketResponse,
        *,
        account: str,
        number: int,
        plan: FaultPlan,
        seed: int,
        counts: Counter[FaultKind],
        numbering: Numbering | None,
        record: bool,
    ) -> None:
        self.socket = socket
        self.account = account
        self.number = number
        self.plan = plan
        self.dice = FaultDice(plan, f"{seed}/stream/{account}/{number}", counts, STREAM_FAULTS)
        self.numbering = numbering
        self.queue: asyncio.Queue[tuple[dict[str, Any] | str, bool]] = asyncio.Queue(MAX_QUEUE)
        self.seq = 0
        self.frames = SentFrames() if record else None
        self.closed = asyncio.Event()
        self.channels: set[str] = set()  # venues with subscriptions (Paradex)
        self._held: str | None = None  # a frame held back by a reorder fault

    def offer(self, message: dict[str, Any] | str, *, faults: bool = True) -> None:
        """Queue a message (a venue message to number, or a ready frame); a full queue ends the connection.

        ``faults=False`` for answers to the client's requests, which the simulator never corrupts.
        """
        if self.closed.is_set():
            return
        try:
            self.queue.put_nowait((message, faults))
        except asyncio.QueueFull:
            logger.warning("simulator: account %s is not keeping up, disconnecting it", self.account,
                           extra={"action": "sim_slow_consumer", "account": self.account})  # fmt: skip
            self.closed.set()

    def _frame(self, message: dict[str, Any] | str) -> str:
        if isinstance(message, str):
            return message
        if self.numbering is not None:
            self.seq += 1
            message = self.numbering(message, self.seq)
        return orjson.dumps(message).decode()

    async def _send(self, frame: str) -> None:
        await self.socket.send_str(frame)
        if self.frames is not None:
            self.frames.sent.append(frame)

    async def run(self) -> None:
        """Send queued messages until the connection ends."""
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            while not self.socket.closed:
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                message, faulty = getter.result()
                frame = self._frame(message)
                if not faulty:
                    await self._send(frame)
                elif not await self._deliver(frame):
                    break
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away mid-send
        finally:
            closed.cancel()
            self.closed.set()
            with contextlib.suppress(Exception):
                await self.socket.close(code=WSCloseCode.GOING_AWAY, message=b"connection ended")

    async def _deliver(self, frame: str) -> bool:
        """Send one frame through the fault dice. False when the connection must end."""
        fault = self.dice.draw()
        if fault is FaultKind.DISCONNECT:
            self._lose(frame)
            await self.socket.close(code=WSCloseCode.GOING_AWAY, message=b"simulated disconnect")
            return False
        if fault is FaultKind.GAP:
            self._lose(frame)
            return True
        if fault is FaultKind.MALFORMED:
            await self._send(frame[: len(frame) // 2])  # a frame cut short: not JSON, and nothing is lost
        if fault is FaultKind.DELAY:
            await asyncio.sleep(self.plan.delay_seconds)
        if fault is FaultKind.REORDER and self._held is None:
            self._held = frame
            return True
        await self._send(frame)
        if fault is FaultKind.DUPLICATE:
            await self._send(frame)
        if self._held is not None and self._held is not frame:
            held, self._held = self._held, None
            await self._send(held)
        return True

    def _lose(self, frame: str) -> None:
        if self.frames is not None:
            self.frames.lost.append(frame)
        if self._held is not None and self.frames is not None:
            self.frames.lost.append(self._held)
            self._held = None


class RestFaults:
    """REST faults per account, drawn per request."""

    def __init__(self, plan: FaultPlan, seed: int, counts: Counter[FaultKind]) -> None:
        self.plan = plan
        self.seed = seed
        self.counts = counts
        self.dice: dict[str, FaultDice] = {}

    def for_account(self, account: str) -> FaultDice:
        if account not in self.dice:
            self.dice[account] = FaultDice(self.plan, f"{self.seed}/rest/{account}", self.counts, REST_FAULTS)
        return self.dice[account]

    async def apply(
        self,
        account: str,
        handler: Callable[[], Awaitable[web.StreamResponse]],
        error: Callable[[int, str], web.Response],
    ) -> web.StreamResponse:
        fault = self.for_account(account).draw()
        if fault is FaultKind.REST_5XX:
            return error(503, "service unavailable (simulated)")
        if fault is FaultKind.REST_429:
            response = error(429, "too many requests (simulated)")
            response.headers["Retry-After"] = str(self.plan.retry_after_seconds)
            return response
        if fault is FaultKind.REST_SLOW:
            await asyncio.sleep(self.plan.slow_seconds)
        return await handler()
