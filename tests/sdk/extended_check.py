"""Fidelity check with Extended's official SDK (``x10-python-trading-starknet``, pinned in
``extended-requirements.txt``): the SDK's own stream client and REST client, pointed at a local server, must parse
every frame and every response into the SDK's models.

    .venv-sdk/extended/bin/python tests/sdk/extended_check.py \\
        --ws-url ws://127.0.0.1:PORT/stream.extended.exchange/v1/account \\
        --rest-url http://127.0.0.1:PORT/api/v1 --api-key KEY [--frames N] [--timeout S]

Prints one JSON report (see ``_fidelity.Report``); exits 0 only when nothing failed, at least N frames came and
every REST endpoint below was checked.

How the SDK is pointed at the server, with no change to the installed SDK:

- Stream: ``StreamClient(api_url=<stream base>)`` (the SDK's ``EndpointsConfig.stream_url`` is that base) and
  ``subscribe_to_account_updates(api_key)``, which appends ``/account`` and sends the key as ``X-Api-Key``. Each frame
  goes through the SDK's ``WrappedStreamResponseModel[AccountStreamDataModel]``. So that a rejected frame can be
  shown, the connection's websocket ``recv`` is wrapped to keep the raw text (private attribute
  ``_StreamConnection__websocket``; the SDK has no hook for it).
- REST: ``RestApiClient`` built from ``MAINNET_CONFIG`` with its ``endpoints`` replaced (``dataclasses.replace``) and a
  ``StarkPerpetualAccount`` holding the API key. Its Stark keys are placeholders: a GET is never signed. The account
  module's ``_get_session`` is replaced on the instance by one returning a session that keeps each response body.
- Funding history is not in the SDK: it is fetched with plain HTTP (the SDK's headers) and only its envelope is
  checked, with the SDK's ``WrappedApiResponseModel``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import websockets
from pydantic import ValidationError

if TYPE_CHECKING:  # mypy knows this directory as the package tests.sdk; run as a script, it is on sys.path
    from tests.sdk._fidelity import Report, arguments, parse_json, pydantic_errors, type_name
else:
    from _fidelity import Report, arguments, parse_json, pydantic_errors, type_name
from x10.clients.rest.rest_api_client import RestApiClient  # type: ignore[import-not-found, unused-ignore]
from x10.clients.stream.stream_client import StreamClient  # type: ignore[import-not-found, unused-ignore]
from x10.config import MAINNET_CONFIG  # type: ignore[import-not-found, unused-ignore]
from x10.core.stark_account import StarkPerpetualAccount  # type: ignore[import-not-found, unused-ignore]
from x10.models.account import AccountModel, AccountStreamDataModel  # type: ignore[import-not-found, unused-ignore]
from x10.models.asset import AssetOperationModel  # type: ignore[import-not-found, unused-ignore]
from x10.models.balance import BalanceModel  # type: ignore[import-not-found, unused-ignore]
from x10.models.base import EmptyModel  # type: ignore[import-not-found, unused-ignore]
from x10.models.http import WrappedApiResponseModel, WrappedStreamResponseModel  # type: ignore[import-not-found, unused-ignore]
from x10.models.order import OpenOrderModel  # type: ignore[import-not-found, unused-ignore]
from x10.models.position import PositionHistoryModel, PositionModel  # type: ignore[import-not-found, unused-ignore]
from x10.models.trade import AccountTradeModel  # type: ignore[import-not-found, unused-ignore]
from x10.utils.http import USER_AGENT  # type: ignore[import-not-found, unused-ignore]

DISTRIBUTIONS = ("x10-python-trading-starknet", "websockets", "pydantic", "aiohttp")
ACCOUNT_PATH = "/account"
STREAM_MODEL_NAME = "WrappedStreamResponseModel[AccountStreamDataModel]"
# The field of AccountStreamDataModel that holds each frame type's payload; the model has none for DEPOSIT,
# TRANSFER and WITHDRAWAL (in the SDK's type enum), so their bodies are dropped.
DATA_FIELD = {
    "ORDER": "orders",
    "TRADE": "trades",
    "BALANCE": "balance",
    "POSITION": "positions",
    "SPOT_BALANCE": "spot_balances",
}
SNAPSHOT_TYPES = {"ORDER", "BALANCE", "POSITION"}
FUNDING = "GET /user/funding/history"
SINGLE_ORDER = "GET /user/orders/{id}"
REQUIRED_ENDPOINTS = (
    "GET /user/account/info",
    "GET /user/balance",
    "GET /user/positions",
    "GET /user/positions/history",
    "GET /user/orders",
    "GET /user/orders/history",
    "GET /user/trades",
    "GET /user/assetOperations",
    FUNDING,
)
REST_TIMEOUT_SECONDS = 30.0
WATCHDOG_SLACK_SECONDS = 60.0  # beyond --timeout, for connecting and the REST calls


# ---------------------------------------------------------------------------------------------------- stream
class StreamCheck:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.seqs: list[Any] = []
        self.first_frames: list[tuple[Any, Any]] = []

    def frame(self, raw: str | bytes, message: Any, error: ValidationError | None) -> None:
        report = self.report
        payload = parse_json(raw)
        body = payload if isinstance(payload, dict) else {}
        data = body["data"] if isinstance(body.get("data"), dict) else {}
        kind = str(body.get("type", "(no type)"))
        report.frames += 1
        self.seqs.append(body.get("seq"))
        if len(self.first_frames) < len(SNAPSHOT_TYPES):
            self.first_frames.append((kind, data.get("isSnapshot")))
        tally = report.stream_tally(kind, STREAM_MODEL_NAME)
        tally.received += 1
        # Missing fields are listed inside the frame's payload (data.orders[], data.balance...) only.
        tally.diff(WrappedStreamResponseModel[AccountStreamDataModel], payload, missing_from=2)
        where = f"stream:{kind}"
        if error is not None:
            report.fail(
                "validation", where, "the SDK's model rejects the frame", errors=pydantic_errors(error), payload=payload
            )
            return
        if message.type == "UNKNOWN" or message.type is None:
            report.fail(
                "unmodelled", where, "the SDK does not know this frame type (it reads it as UNKNOWN)", payload=payload
            )
            return
        if message.error is not None:
            report.fail("protocol", where, f"error frame: {message.error}", payload=payload)
            return
        field = DATA_FIELD.get(message.type)
        if field is None:
            report.fail(
                "unmodelled", where, f"the SDK's v1 account model has no field for {kind} frames", payload=payload
            )
        elif message.data is None or getattr(message.data, field) is None:
            report.fail(
                "unmodelled", where, f"{kind} frame without data.{field}: the SDK reads nothing", payload=payload
            )
        else:
            tally.validated += 1

    def finish(self) -> None:
        seqs = self.seqs
        contiguous = bool(seqs) and seqs == list(range(1, len(seqs) + 1))
        snapshots = [kind for kind, is_snapshot in self.first_frames if is_snapshot is True]
        self.report.protocol = {"seq": seqs, "seq_contiguous_from_1": contiguous, "first_frames": self.first_frames}
        if seqs and not contiguous:
            self.report.fail("protocol", "stream:seq", "seq does not count 1, 2, 3... on this connection", payload=seqs)
        if len(self.first_frames) == len(SNAPSHOT_TYPES) and set(snapshots) != SNAPSHOT_TYPES:
            self.report.fail(
                "protocol",
                "stream:snapshot",
                "the first three frames are not the ORDER, BALANCE and POSITION snapshots (isSnapshot: true)",
                payload=self.first_frames,
            )


async def check_stream(report: Report, *, ws_url: str, api_key: str, frames: int, wait_seconds: float) -> None:
    if not ws_url.endswith(ACCOUNT_PATH):
        report.fail("transport", "stream", f"--ws-url must be the account stream's URL, ending in {ACCOUNT_PATH}")
        return
    check = StreamCheck(report)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    raw_frames: list[str | bytes] = []
    connection = StreamClient(api_url=ws_url.removesuffix(ACCOUNT_PATH)).subscribe_to_account_updates(api_key)
    try:
        await asyncio.wait_for(connection, wait_seconds)
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as error:
        report.fail("transport", "stream", f"the SDK's stream client could not connect: {error!r}")
        return
    websocket = connection._StreamConnection__websocket
    receive = websocket.recv

    async def recording_recv() -> str | bytes:
        raw: str | bytes = await receive()
        raw_frames.append(raw)
        return raw

    websocket.recv = recording_recv
    try:
        while report.frames < frames and (remaining := deadline - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(connection.recv(), remaining)
            except TimeoutError:
                break
            except ValidationError as error:
                check.frame(raw_frames[-1], None, error)
            except websockets.exceptions.ConnectionClosed as closed:
                report.fail("transport", "stream", f"the server closed the stream: {closed!r}")
                break
            else:
                check.frame(raw_frames[-1], message, None)
    finally:
        await connection.close()
    check.finish()


# ------------------------------------------------------------------------------------------------------ REST
RECORDED: list[tuple[int, str]] = []


class RecordingResponse(aiohttp.ClientResponse):
    """Keeps every body the SDK reads, so that a rejected response can be shown and walked for dropped fields."""

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        body = await super().text(encoding=encoding, errors=errors)
        RECORDED.append((self.status, body))
        return body


def rest_client(rest_url: str, ws_base: str, api_key: str, session: aiohttp.ClientSession) -> Any:
    parts = urlsplit(rest_url)
    endpoints = dataclasses.replace(
        MAINNET_CONFIG.endpoints,
        api_base_url=rest_url,
        api_base_order_management_url=rest_url,
        stream_url=ws_base,
        stream_rpc_url=ws_base.removesuffix("/v1") + "/v2/rpc",
        onboarding_url=f"{parts.scheme}://{parts.netloc}",
    )
    config = dataclasses.replace(MAINNET_CONFIG, endpoints=endpoints)
    # Placeholder Stark keys: only GETs are made, and they are never signed.
    account = StarkPerpetualAccount(vault=0, private_key="0x1", public_key="0x1", api_key=api_key)
    client = RestApiClient(config, stark_account=account)

    async def recording_session() -> aiohttp.ClientSession:
        return session

    client.account._get_session = recording_session
    return client


async def check_endpoint(report: Report, key: str, call: Callable[[], Awaitable[Any]], data_type: Any) -> Any:
    """Call one SDK method; returns the raw body it read (or None)."""
    tally = report.rest_tally(key, f"WrappedApiResponseModel[{type_name(data_type)}]")
    RECORDED.clear()
    try:
        await call()
    except ValidationError as error:
        status, body = RECORDED[-1] if RECORDED else (0, "")
        tally.received += 1
        tally.http_status.add(status)
        payload = parse_json(body)
        tally.diff(WrappedApiResponseModel[data_type], payload, missing_from=1)
        report.fail(
            "validation",
            f"rest:{key}",
            "the SDK's model rejects the response",
            errors=pydantic_errors(error),
            payload=payload,
        )
        return payload
    except Exception as error:
        status, body = RECORDED[-1] if RECORDED else (0, "")
        tally.http_status.add(status)
        if status == 404 and key == "GET /user/balance":
            tally.received += 1
            report.notes.append(f"{key}: HTTP 404, which Extended documents for a zero balance (the SDK raises)")
            return None
        report.fail(
            "http",
            f"rest:{key}",
            f"HTTP {status or 'request failed'}: the SDK raised {type(error).__name__}",
            payload={"sdk_error": str(error), "body": parse_json(body) if body else None},
        )
        return None
    status, body = RECORDED[-1]
    payload = parse_json(body)
    tally.received += 1
    tally.validated += 1
    tally.http_status.add(status)
    tally.diff(WrappedApiResponseModel[data_type], payload, missing_from=1)
    return payload


async def check_funding(report: Report, session: aiohttp.ClientSession, rest_url: str, api_key: str) -> None:
    tally = report.rest_tally(FUNDING, "WrappedApiResponseModel (envelope only: the SDK has no funding model)")
    headers = {"X-Api-Key": api_key, "User-Agent": USER_AGENT, "Accept": "application/json"}
    try:
        async with session.get(f"{rest_url}/user/funding/history", params={"fromTime": "0"}, headers=headers) as answer:
            status, body = answer.status, await answer.text()
    except (aiohttp.ClientError, TimeoutError) as error:
        report.fail("http", f"rest:{FUNDING}", f"request failed: {error!r}")
        return
    tally.received += 1
    tally.http_status.add(status)
    payload = parse_json(body)
    if status != 200:
        report.fail("http", f"rest:{FUNDING}", f"HTTP {status}", payload=payload)
        return
    try:
        WrappedApiResponseModel[list[EmptyModel]].model_validate_json(body)
    except ValidationError as error:
        report.fail(
            "validation",
            f"rest:{FUNDING}",
            "the SDK's envelope model rejects it",
            errors=pydantic_errors(error),
            payload=payload,
        )
        return
    tally.validated += 1


def order_ids(*bodies: Any) -> list[Any]:
    ids: list[Any] = []
    for body in bodies:
        data = body.get("data") if isinstance(body, dict) else None
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict) and item.get("id") is not None:
                ids.append(item["id"])
    return ids


async def check_rest(report: Report, *, rest_url: str, ws_url: str, api_key: str) -> None:
    rest_url = rest_url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=REST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(response_class=RecordingResponse, timeout=timeout) as session:
        client = rest_client(rest_url, ws_url.removesuffix(ACCOUNT_PATH), api_key, session)
        account = client.account
        await check_endpoint(report, "GET /user/account/info", account.get_account, AccountModel)
        await check_endpoint(report, "GET /user/balance", account.get_balance, BalanceModel)
        await check_endpoint(report, "GET /user/positions", account.get_positions, list[PositionModel])
        await check_endpoint(
            report, "GET /user/positions/history", account.get_positions_history, list[PositionHistoryModel]
        )
        open_orders = await check_endpoint(report, "GET /user/orders", account.get_open_orders, list[OpenOrderModel])
        history = await check_endpoint(
            report, "GET /user/orders/history", account.get_orders_history, list[OpenOrderModel]
        )
        await check_endpoint(report, "GET /user/trades", account.get_trades, list[AccountTradeModel])
        await check_endpoint(report, "GET /user/assetOperations", account.asset_operations, list[AssetOperationModel])
        ids = order_ids(open_orders, history)
        if ids:
            await check_endpoint(report, SINGLE_ORDER, lambda: account.get_order_by_id(ids[0]), OpenOrderModel)
        else:
            report.notes.append(f"{SINGLE_ORDER}: not checked, no order id in /user/orders or /user/orders/history")
        await check_funding(report, session, rest_url, api_key)
        await client.close()


async def main() -> int:
    args = arguments(__doc__.splitlines()[0] if __doc__ else "", credential="api-key", frames=3)
    # A hung check must not hang the test: past its whole budget it prints every thread's stack and exits.
    faulthandler.dump_traceback_later(args.timeout + WATCHDOG_SLACK_SECONDS, exit=True)
    report = Report(venue="extended", distributions=DISTRIBUTIONS, ws_url=args.ws_url, rest_url=args.rest_url)
    await check_stream(report, ws_url=args.ws_url, api_key=args.api_key, frames=args.frames, wait_seconds=args.timeout)
    await check_rest(report, rest_url=args.rest_url, ws_url=args.ws_url, api_key=args.api_key)
    report.require(frames=args.frames, endpoints=REQUIRED_ENDPOINTS)
    return report.emit()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
