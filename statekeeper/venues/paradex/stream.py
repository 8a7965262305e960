"""The Paradex private account stream: connect, ``auth``, ``subscribe`` to each channel, then hand out frames.

One :class:`ParadexAccountStream` is one connection (one stream session). The handshake is JSON-RPC over the
socket: ``auth`` (id 0) with the JWT, then one ``subscribe`` per channel (ids 1, 2, …), each answer awaited
within ``answer_timeout`` before the next request. Every frame received meanwhile (the answers, and any
notification that arrives in between) is kept, in order, in :attr:`~ParadexAccountStream.handshake_frames`, so
the daemon can store them all (invariant 1), even when the handshake fails. After that, ``async for frame in
stream`` yields the frames that follow. Nothing here parses frames into events: the daemon does, with
:func:`statekeeper.venues.paradex.parse.parse_frame`.

Failures: an auth error 40110 (malformed bearer), 40111 (invalid bearer) or 40112 (geo-blocked) is
:class:`FatalVenueError`; with a provider that mints tokens, a first 40111 invalidates the token and ``auth`` is
sent once more, on the same connection, with a fresh one. A refused subscription is
:class:`NonRetryableVenueError` naming the channel. No answer in time, or the connection closing during the
handshake, is :class:`RetryableVenueError`; so is the connection dropping abnormally later. A normal close ends
the iteration.

Heartbeat: Paradex pings every 55 s and wants a pong within 5 s; ``websockets`` answers pings by itself while
the connection is open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import orjson
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from statekeeper.venues.errors import FatalVenueError, NonRetryableVenueError, RetryableVenueError
from statekeeper.venues.paradex.auth import TokenProvider
from statekeeper.venues.paradex.wire import (
    AUTH_ERROR_CODES,
    AUTH_REQUEST_ID,
    DEFAULT_CHANNELS,
    VENUE,
    RpcErrorCode,
    auth_request,
    subscribe_request,
    unsubscribe_request,
)
from statekeeper.venues.ws import Frame, open_websocket

logger = logging.getLogger(__name__)

MAX_SHOWN = 200


@dataclass(frozen=True, slots=True)
class RpcError:
    """The ``error`` of a JSON-RPC answer."""

    code: int | str | None
    message: str

    def __str__(self) -> str:
        return f"error {self.code}: {self.message}"[:MAX_SHOWN]


class ParadexAccountStream:
    """An authenticated, subscribed Paradex WebSocket connection (an async context manager and iterator)."""

    def __init__(
        self,
        url: str,
        tokens: TokenProvider,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        *,
        answer_timeout: float = 10.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
    ) -> None:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        self.url = url
        self.channels: tuple[str, ...] = tuple(str(channel) for channel in channels)
        self.handshake_frames: list[Frame] = []
        """Every frame received before :meth:`__aenter__` returned (or failed), in order."""
        self.subscribed: list[str] = []
        self.node_id: str | None = None
        """The server node the connection is authenticated on (the ``auth`` answer's ``node_id``)."""
        self._tokens = tokens
        self._answer_timeout = answer_timeout
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._ws: ClientConnection | None = None
        self._next_id = AUTH_REQUEST_ID

    def __repr__(self) -> str:
        return f"ParadexAccountStream({self.url!r}, channels={list(self.channels)!r})"

    # ------------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    @property
    def close_code(self) -> int | None:
        """The close code once the connection has closed."""
        return None if self._ws is None else self._ws.close_code

    @property
    def close_reason(self) -> str | None:
        return None if self._ws is None else self._ws.close_reason

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Frame:
        connection = self._connection()
        try:
            data = await connection.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None
        except ConnectionClosed as exc:
            raise RetryableVenueError(f"{VENUE} stream {self.url}: connection lost ({exc})", venue=VENUE) from None
        return Frame.now(data)

    async def unsubscribe(self, channel: str) -> int:
        """Send ``unsubscribe``; its answer arrives as a frame like any other. Returns the request id."""
        request_id = self._take_id()
        await self._send(unsubscribe_request(channel, request_id), f"unsubscribe {channel}")
        return request_id

    # ------------------------------------------------------------------------------------------ handshake

    async def _open(self) -> None:
        token = await self._tokens.token()
        self._ws = await open_websocket(
            self.url,
            venue=VENUE,
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
            open_timeout=self._open_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
        )
        await self._authenticate(token)
        for channel in self.channels:
            await self._subscribe(channel)
        logger.info(
            "%s stream %s: authenticated, subscribed to %d channels",
            VENUE,
            self.url,
            len(self.subscribed),
            extra={"action": "stream_subscribed", "venue": VENUE},
        )

    async def _authenticate(self, token: SecretStr) -> None:
        error, result = await self._auth(token)
        if error is not None and error.code == RpcErrorCode.INVALID_BEARER and self._tokens.refreshable:
            logger.info(
                "%s stream %s: the token was refused (40111); retrying once with a fresh one",
                VENUE,
                self.url,
                extra={"action": "token_refused", "venue": VENUE},
            )
            self._tokens.invalidate()
            error, result = await self._auth(await self._tokens.token())
        if error is not None:
            if error.code == RpcErrorCode.INVALID_BEARER:
                self._tokens.invalidate()
            if error.code in AUTH_ERROR_CODES:
                raise FatalVenueError(f"{VENUE} stream {self.url}: authentication refused, {error}", venue=VENUE)
            raise NonRetryableVenueError(f"{VENUE} stream {self.url}: auth failed, {error}", venue=VENUE)
        if isinstance(result, Mapping) and isinstance(result.get("node_id"), str):
            self.node_id = result["node_id"]

    async def _auth(self, token: SecretStr) -> tuple[RpcError | None, Any]:
        answer = await self._call(auth_request(token.get_secret_value(), self._take_id()), "auth")
        return _error_of(answer), answer.get("result")

    async def _subscribe(self, channel: str) -> None:
        answer = await self._call(subscribe_request(channel, self._take_id()), f"subscribe {channel}")
        error = _error_of(answer)
        if error is not None:
            if error.code in AUTH_ERROR_CODES:
                raise FatalVenueError(
                    f"{VENUE} stream {self.url}: subscribing to {channel!r} refused the token, {error}", venue=VENUE
                )
            raise NonRetryableVenueError(
                f"{VENUE} stream {self.url}: subscribing to {channel!r} failed, {error}", venue=VENUE
            )
        self.subscribed.append(channel)

    async def _call(self, request: dict[str, Any], what: str) -> Mapping[str, Any]:
        """Send a request and wait for its answer, keeping every frame received meanwhile."""
        await self._send(request, what)
        connection = self._connection()
        request_id = request["id"]
        try:
            async with asyncio.timeout(self._answer_timeout):
                while True:
                    frame = Frame.now(await connection.recv())
                    self.handshake_frames.append(frame)
                    answer = _answer_to(frame.data, request_id)
                    if answer is not None:
                        return answer
        except TimeoutError:
            raise RetryableVenueError(
                f"{VENUE} stream {self.url}: no answer to {what} within {self._answer_timeout:g} s", venue=VENUE
            ) from None
        except ConnectionClosed as exc:
            raise RetryableVenueError(
                f"{VENUE} stream {self.url}: the connection closed during {what} ({exc})", venue=VENUE
            ) from None

    async def _send(self, request: dict[str, Any], what: str) -> None:
        # The auth request carries the JWT: it is sent, never logged.
        try:
            await self._connection().send(orjson.dumps(request).decode())
        except ConnectionClosed as exc:
            raise RetryableVenueError(
                f"{VENUE} stream {self.url}: the connection closed before {what} ({exc})", venue=VENUE
            ) from None

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("the stream is not open: use `async with ParadexAccountStream(...)`")
        return self._ws


def _answer_to(data: str | bytes, request_id: int) -> Mapping[str, Any] | None:
    """The frame as the JSON-RPC answer to ``request_id``, or None when it is something else."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or "method" in message or ("result" not in message and "error" not in message):
        return None
    answer_id = message.get("id")
    if isinstance(answer_id, bool) or answer_id not in (request_id, str(request_id)):
        return None
    return message


def _error_of(answer: Mapping[str, Any]) -> RpcError | None:
    error = answer.get("error")
    if error is None:
        return None
    if not isinstance(error, Mapping):
        return RpcError(None, str(error))
    code = error.get("code")
    if isinstance(code, bool) or not isinstance(code, int | str):
        code = None
    message = error.get("message")
    return RpcError(code, message if isinstance(message, str) else str(message))
