"""What a simulated venue's protocol server does whatever the venue: auth, stream connections, REST with faults.

A venue subclass renders the engine's truth in its wire format (``messages``, the REST handlers) and says how a
request names its account (``credential_of``); this base accepts and serves the connections, publishes each
engine change to them, wraps REST handlers with authentication and faults, and keeps a record of every frame
sent, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, ClassVar

import orjson
from aiohttp import WSMsgType, web

from statekeeper.simulator.engine import Change, Engine, SimAccount, SimOrder
from statekeeper.simulator.faults import FaultKind, FaultPlan
from statekeeper.simulator.server import Numbering, RestFaults, SentFrames, StreamConnection

logger = logging.getLogger(__name__)

RestHandler = Callable[[web.Request, SimAccount], Awaitable[web.StreamResponse]]


class VenueServer:
    """The protocol server of one simulated venue, over one :class:`~.engine.Engine`."""

    venue: ClassVar[str]
    default_ping_interval: ClassVar[float]

    def __init__(
        self,
        engine: Engine,
        *,
        credentials: Mapping[str, str],
        plan: FaultPlan,
        seed: int,
        counts: Counter[FaultKind],
        ping_interval: float | None = None,
        record: bool = True,
    ) -> None:
        self.engine = engine
        self.credentials = dict(credentials)
        self.accounts_by_credential = {secret: name for name, secret in credentials.items()}
        self.plan = plan
        self.seed = seed
        self.counts = counts
        self.ping_interval = self.default_ping_interval if ping_interval is None else ping_interval
        self.record = record
        self.rest_faults = RestFaults(plan, seed, counts)
        self.calm: set[str] = set()
        """Accounts without the plan's random faults (see :meth:`set_calm`)."""
        self.connections: dict[str, list[StreamConnection]] = defaultdict(list)
        self.history: dict[str, list[SentFrames]] = defaultdict(list)
        self._numbers = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.registered = asyncio.Condition()  # notified when a stream connection is registered

    # ----------------------------------------------------------------------------------- to implement

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def messages(self, change: Change) -> list[dict[str, Any]]:
        """The stream messages that publish ``change`` (without the connection's seq)."""
        raise NotImplementedError

    def credential_of(self, request: web.Request) -> str | None:
        raise NotImplementedError

    def error(self, status: int, code: str, message: str) -> web.Response:
        raise NotImplementedError

    def frames_for(self, change: Change) -> int:
        """How many frames a client subscribed to everything receives for ``change``."""
        return len(self.messages(change))

    def accepts(self, connection: StreamConnection, message: dict[str, Any]) -> bool:
        """Whether ``connection`` receives ``message`` (venues with subscriptions filter here)."""
        return True

    async def on_text(self, connection: StreamConnection, text: str) -> None:
        """A text frame from the client (JSON-RPC venues answer here; others ignore it)."""

    # --------------------------------------------------------------------------------------- streams

    def authenticate(self, request: web.Request) -> str | None:
        credential = self.credential_of(request)
        return None if credential is None else self.accounts_by_credential.get(credential)

    async def accept(
        self, request: web.Request, account: str, *, numbering: Numbering | None
    ) -> tuple[web.WebSocketResponse, StreamConnection]:
        socket = web.WebSocketResponse(heartbeat=self.ping_interval or None, autoping=True, max_msg_size=1 << 20)
        await socket.prepare(request)
        self._numbers += 1
        connection = StreamConnection(
            socket,
            account=account,
            number=self._numbers,
            plan=self.plan,
            seed=self.seed,
            counts=self.counts,
            numbering=numbering,
            record=self.record,
        )
        connection.dice.calm = account in self.calm
        return socket, connection

    def register(self, connection: StreamConnection) -> None:
        """From now on the connection receives the account's messages (and its frames count as the account's)."""
        self.connections[connection.account].append(connection)
        if connection.frames is not None:
            self.history[connection.account].append(connection.frames)
        self.spawn(self._notify_registered(), name="sim-registered")

    async def _notify_registered(self) -> None:
        async with self.registered:
            self.registered.notify_all()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, name: str) -> None:
        """Run ``coroutine`` as a task the server keeps a reference to until it is done."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve_connection(self, socket: web.WebSocketResponse, connection: StreamConnection) -> None:
        """Send with one task, read with this one, until either side ends."""
        sender = asyncio.create_task(connection.run(), name=f"sim-send-{connection.account}-{connection.number}")
        self._tasks.add(sender)
        sender.add_done_callback(self._tasks.discard)  # awaited below; kept here so close() can cancel it
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    await self.on_text(connection, message.data)
                elif message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
                if connection.closed.is_set():
                    break
        finally:
            connection.closed.set()
            with contextlib.suppress(ValueError):
                self.connections[connection.account].remove(connection)
            await sender

    def publish(self, changes: Iterable[Change]) -> None:
        for change in changes:
            targets = self.connections.get(change.account)
            if not targets:
                continue
            for message in self.messages(change):
                for connection in targets:
                    if self.accepts(connection, message):
                        connection.offer(message)

    async def disconnect(self, account: str | None = None) -> int:
        """Close the stream connections (of one account, or all). Returns how many were closed."""
        closing = [c for name, cs in self.connections.items() if account in (None, name) for c in cs]
        for connection in closing:
            connection.closed.set()
            with contextlib.suppress(Exception):
                await connection.socket.close()
        return len(closing)

    def set_calm(self, account: str, calm: bool) -> None:
        """Stop (or restart) the plan's random faults on the account's streams, present and future, and its REST."""
        if calm:
            self.calm.add(account)
        else:
            self.calm.discard(account)
        self.rest_faults.for_account(account).calm = calm
        for connection in self.connections.get(account, []):
            connection.dice.calm = calm

    def trigger(self, kind: FaultKind, account: str | None = None, count: int = 1) -> None:
        """Make the next ``count`` frames (or REST requests) of the account, or of every account, fail so."""
        names = [account] if account is not None else sorted(self.credentials)
        for name in names:
            if kind in (FaultKind.REST_5XX, FaultKind.REST_429, FaultKind.REST_SLOW):
                self.rest_faults.for_account(name).trigger(kind, count)
            else:
                for connection in self.connections.get(name, []):
                    connection.dice.trigger(kind, count)

    # ------------------------------------------------------------------------------------------ REST

    @staticmethod
    def order_of(request: web.Request, account: SimAccount) -> SimOrder | None:
        """The order a ``/…/orders/{order_id}`` request names, if the account has it."""
        try:
            return account.orders.get(int(request.match_info["order_id"]))
        except ValueError:
            return None

    def json(self, body: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    def rest(self, handler: RestHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if not request.headers.get("User-Agent"):
                return self.error(400, "USER_AGENT_REQUIRED", "the User-Agent header is required")
            account = self.authenticate(request)
            if account is None:
                return self.error(401, "UNAUTHORIZED", "invalid credentials")

            async def answer() -> web.StreamResponse:
                return await handler(request, self.engine.accounts[account])

            return await self.rest_faults.apply(account, answer, lambda s, m: self.error(s, "SIMULATED", m))

        return wrapped

    async def close(self) -> None:
        await self.disconnect()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
