"""Fidelity check with Paradex's official SDK (``paradex-py``, pinned in ``paradex-requirements.txt``): the SDK's own
WebSocket client and REST client, pointed at a local server, must parse every frame and every response into the
SDK's models.

    .venv-sdk/paradex/bin/python tests/sdk/paradex_check.py \\
        --ws-url ws://127.0.0.1:PORT/v1 --rest-url http://127.0.0.1:PORT/v1 --jwt TOKEN [--frames N] [--timeout S]

Prints one JSON report (see ``_fidelity.Report``); exits 0 only when nothing failed, at least N notifications came,
every private channel's subscription was confirmed and every REST endpoint below was checked.

How the SDK is pointed at the server, with no change to the installed SDK:

- WebSocket: ``ParadexWebsocketClient(env="prod", ws_url_override=<ws url>, connector=...)``. The connector is the
  SDK's injection point for the socket; this one opens it exactly as the SDK does
  (``websockets.connect(url, additional_headers=headers)``) and keeps every frame sent and received. The JWT: the
  client authenticates (``Authorization`` header, then the ``auth`` JSON-RPC call) only from
  ``ws_client.account.jwt_token``, set by ``init_account``; nothing else sets it (``ParadexApiKey`` builds its
  ``ws_client`` without an account, so its WebSocket never authenticates). Without signing keys there is no
  ``ParadexAccount``, so an object holding only ``jwt_token`` is given to ``init_account``.
- REST: ``ParadexApiClient(env="prod", api_base_url=<rest url>, auto_auth=False, http_client=...)`` then
  ``set_token(jwt)`` (what ``ParadexApiKey`` does; ``ParadexApiKey`` itself takes no URL and calls
  ``GET /system/config`` on the real venue in its constructor). The injected ``httpx.Client`` keeps every response.
- ``starknet_crypto_py`` is replaced by a stand-in (``_starknet_crypto_stand_in``): paradex-py imports it at import
  time, and it cannot be installed here. Signing is never used.

Models: notification envelopes and JSON-RPC answers go through the SDK's ``ws_models.JSONRPCRequest`` /
``JSONRPCResponse``; a notification's ``params.data`` through ``ws_message_models.get_ws_payload_model`` (it knows
``balance_events``) or else the generated ``responses`` model of the channel; REST bodies through the generated
``responses`` models, and ``GET /account`` also through the SDK's own ``fetch_account_summary`` (marshmallow).
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import sys
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# Before paradex_py, which imports starknet_crypto_py at import time: the stand-in takes its place.
if TYPE_CHECKING:  # mypy knows this directory as the package tests.sdk; run as a script, it is on sys.path
    from tests.sdk import _starknet_crypto_stand_in
    from tests.sdk._fidelity import Report, arguments, parse_json, pydantic_errors
else:
    import _starknet_crypto_stand_in
    from _fidelity import Report, arguments, parse_json, pydantic_errors

import httpx  # type: ignore[import-not-found, unused-ignore]
import websockets
from marshmallow import ValidationError as MarshmallowValidationError  # type: ignore[import-not-found, unused-ignore]
from paradex_py.api.api_client import ParadexApiClient  # type: ignore[import-not-found, unused-ignore]
from paradex_py.api.generated import responses  # type: ignore[import-not-found, unused-ignore]
from paradex_py.api.http_client import HttpClient  # type: ignore[import-not-found, unused-ignore]
from paradex_py.api.ws_client import ParadexWebsocketChannel, ParadexWebsocketClient  # type: ignore[import-not-found, unused-ignore]
from paradex_py.api.ws_message_models import get_ws_payload_model  # type: ignore[import-not-found, unused-ignore]
from paradex_py.api.ws_models import JSONRPCRequest, JSONRPCResponse  # type: ignore[import-not-found, unused-ignore]
from pydantic import ValidationError

DISTRIBUTIONS = ("paradex-py", "websockets", "pydantic", "httpx")
# The private channels, as (SDK channel, its parameters). Market-keyed channels take ALL.
CHANNELS: tuple[tuple[Any, dict[str, str]], ...] = (
    (ParadexWebsocketChannel.ACCOUNT, {}),
    (ParadexWebsocketChannel.BALANCE_EVENTS, {}),
    (ParadexWebsocketChannel.FILLS, {"market": "ALL"}),
    (ParadexWebsocketChannel.FUNDING_PAYMENTS, {"market": "ALL"}),
    (ParadexWebsocketChannel.ORDERS, {"market": "ALL"}),
    (ParadexWebsocketChannel.POSITIONS, {}),
    (ParadexWebsocketChannel.TRADEBUSTS, {}),
    (ParadexWebsocketChannel.TRANSACTIONS, {}),
    (ParadexWebsocketChannel.TRANSFERS, {}),
)
# The generated REST model for each private channel's payload (the SDK itself has a WebSocket model only for
# balance_events and order_book, in ws_message_models; the AsyncAPI spec gives the channels these same schemas).
PAYLOAD_MODELS: dict[str, Any] = {
    "account": responses.AccountSummaryResponse,
    "fills": responses.FillResult,
    "funding_payments": responses.FundingPayment,
    "orders": responses.OrderResp,
    "positions": responses.PositionResp,
    "tradebusts": responses.TradebustResult,
    "transaction": responses.TransactionResponse,
    "transfers": responses.TransferResult,
}
SINGLE_ORDER = "GET /orders/{id}"
REQUIRED_ENDPOINTS = (
    "GET /account",
    "GET /balance",
    "GET /positions",
    "GET /orders",
    "GET /orders-history",
    "GET /fills",
    "GET /funding/payments",
    "GET /transfers",
    "GET /tradebusts",
    "GET /transactions",
)
FALLBACK_MARKET = "BTC-USD-PERP"
REST_TIMEOUT_SECONDS = 30.0
WATCHDOG_SLACK_SECONDS = 60.0  # beyond --timeout, for connecting and the REST calls


def prefixed(errors: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [{**error, "loc": f"{prefix}{error['loc']}" if error["loc"] else prefix.rstrip(".")} for error in errors]


def payload_model(channel: str) -> Any:
    model = get_ws_payload_model(channel)
    return model if model is not None else PAYLOAD_MODELS.get(channel.split(".", 1)[0])


# ---------------------------------------------------------------------------------------------------- stream
class TokenHolder:
    """All ``ParadexWebsocketClient`` reads of its account: the JWT (see the module docstring)."""

    def __init__(self, jwt_token: str) -> None:
        self.jwt_token = jwt_token


class RecordingConnection:
    """The socket the SDK's client talks through: the same websockets connection, with every frame kept."""

    def __init__(self, inner: Any, check: StreamCheck) -> None:
        self._inner = inner
        self._check = check

    async def send(self, data: str) -> None:
        self._check.sent(data)
        await self._inner.send(data)

    async def recv(self) -> str | bytes:
        # The SDK's reader asks for the next frame only when it is done with the last one.
        self._check.idle.set()
        raw: str | bytes = await self._inner.recv()
        self._check.received(raw)
        return raw

    async def close(self) -> None:
        await self._inner.close()

    @property
    def state(self) -> Any:
        return self._inner.state


class StreamCheck:
    def __init__(self, report: Report) -> None:
        self.report = report
        # JSON-RPC requests sent, as (id, "method [channel]"), and answers received by id. The SDK's ids are
        # microsecond timestamps, so two requests can share one; the n-th answer to an id goes with its n-th request.
        self.requests: list[tuple[Any, str]] = []
        self.answers: dict[Any, list[dict[str, Any]]] = {}
        self.answers_validated = 0
        self.notifications: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.idle = asyncio.Event()  # set whenever the SDK's reader has handled a frame and waits for the next

    def sent(self, data: str) -> None:
        message = parse_json(data)
        if isinstance(message, dict) and "id" in message:
            params = message.get("params")
            channel = params.get("channel") if isinstance(params, dict) else None
            self.requests.append((message["id"], f"{message.get('method')}{f' {channel}' if channel else ''}"))

    def answer_to(self, label: str) -> dict[str, Any] | None:
        for index, (request_id, request_label) in enumerate(self.requests):
            if request_label == label:
                same_id = sum(1 for other, _ in self.requests[:index] if other == request_id)
                answers = self.answers.get(request_id, [])
                return answers[same_id] if same_id < len(answers) else None
        return None

    def received(self, raw: str | bytes) -> None:
        message = parse_json(raw)
        if not isinstance(message, dict):
            self.report.fail("protocol", "stream", "a frame that is not a JSON object", payload=message)
        elif message.get("method") == "subscription":
            self.notification(message)
        elif "id" in message and ("result" in message or "error" in message):
            self.answers.setdefault(message["id"], []).append(message)
            try:
                JSONRPCResponse.model_validate(message)
            except ValidationError as error:
                self.report.fail(
                    "validation",
                    "stream:answer",
                    "the SDK's JSON-RPC model rejects it",
                    errors=pydantic_errors(error),
                    payload=message,
                )
            else:
                self.answers_validated += 1
        else:
            self.report.fail("protocol", "stream", "neither a notification nor a JSON-RPC answer", payload=message)

    def notification(self, message: dict[str, Any]) -> None:
        report = self.report
        report.frames += 1
        params = message.get("params")
        channel = str(params.get("channel")) if isinstance(params, dict) else "(no params.channel)"
        self.notifications[channel] += 1
        model = payload_model(channel)
        tally = report.stream_tally(channel, f"JSONRPCRequest + {getattr(model, '__name__', 'no model')}")
        tally.received += 1
        where = f"stream:{channel}"
        try:
            JSONRPCRequest.model_validate(message)
        except ValidationError as error:
            report.fail(
                "validation",
                where,
                "the SDK's JSON-RPC model rejects it",
                errors=pydantic_errors(error),
                payload=message,
            )
            return
        if not isinstance(params, dict) or "data" not in params:
            report.fail("protocol", where, "a notification without params.channel and params.data", payload=message)
            return
        if model is None:
            report.fail("unmodelled", where, "the SDK has no model for this channel's payload", payload=message)
            return
        tally.diff(model, params["data"], "params.data.")
        try:
            model.model_validate(params["data"])
        except ValidationError as error:
            report.fail(
                "validation",
                where,
                "the SDK's model rejects the payload",
                errors=prefixed(pydantic_errors(error), "params.data."),
                payload=message,
            )
            return
        tally.validated += 1

    async def callback(self, _ws_channel: Any, message: dict[str, Any]) -> None:
        self.delivered[str(message.get("params", {}).get("channel"))] += 1

    def finish(self, subscribed: dict[str, bool], channels: list[str]) -> None:
        report = self.report
        auth = self.answer_to("auth")
        if not any(label == "auth" for _, label in self.requests):
            report.fail("transport", "stream:auth", "the SDK's client sent no auth request")
        elif auth is None:
            report.fail("protocol", "stream:auth", "no answer to the auth request")
        elif "error" in auth:
            report.fail("protocol", "stream:auth", "auth rejected", payload=auth)
        for channel in channels:
            if not subscribed.get(channel):
                report.fail(
                    "dispatch",
                    f"stream:{channel}",
                    "the SDK's client did not record the subscription as confirmed "
                    "(it needs an answer whose result.channel is the channel name)",
                    payload=self.answer_to(f"subscribe {channel}"),
                )
        for channel, count in sorted(self.notifications.items()):
            if self.delivered[channel] != count:
                report.fail(
                    "dispatch",
                    f"stream:{channel}",
                    f"{count - self.delivered[channel]} of {count} notification(s) never reached the SDK callback "
                    "(it routes by the exact channel name it subscribed)",
                )
        shared = len(self.requests) - len({request_id for request_id, _ in self.requests})
        if shared:
            report.notes.append(f"the SDK's client gave {shared} JSON-RPC request(s) an id already in use")
        report.protocol = {
            "json_rpc_answers": {
                "received": sum(len(answers) for answers in self.answers.values()),
                "validated": self.answers_validated,
            },
            "subscribed": sorted(channel for channel, done in subscribed.items() if done),
            "notifications": dict(sorted(self.notifications.items())),
            "delivered_to_sdk_callbacks": dict(sorted(self.delivered.items())),
        }


async def close_client(client: Any) -> None:
    """``client.close()``, made safe. It cancels the SDK's reader task and awaits it, but the reader awaits
    ``asyncio.wait_for(ws.recv(), ...)``, and on Python 3.11 wait_for returns the received frame instead of raising
    when the cancellation meets a receive that has just completed: the reader swallows the cancel, loops on, and
    ``close()`` never returns. So the reader is cancelled until it is done first (private ``_reader_task``)."""
    reader = client._reader_task
    while reader is not None and not reader.done():
        reader.cancel()
        await asyncio.wait({reader}, timeout=0.1)
    await client.close()


async def check_stream(report: Report, *, ws_url: str, jwt: str, frames: int, wait_seconds: float) -> None:
    check = StreamCheck(report)

    async def connect(url: str, headers: dict[str, str]) -> RecordingConnection:
        inner = await websockets.connect(url, additional_headers=headers)
        return RecordingConnection(inner, check)

    # Typed Any: the SDK's WebSocketConnection protocol says recv() returns str, and frames are passed on unchanged.
    connector: Any = connect
    client = ParadexWebsocketClient(
        env="prod",
        ws_url_override=ws_url,
        connector=connector,
        disable_reconnect=True,
        reader_sleep_on_error=0.05,
        reader_sleep_on_no_connection=0.01,
    )
    token: Any = TokenHolder(jwt)  # in place of a ParadexAccount, of which the client only reads jwt_token
    client.init_account(token)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    channels: list[str] = []
    try:
        if not await asyncio.wait_for(client.connect(), wait_seconds):
            report.fail("transport", "stream", "the SDK's WebSocket client could not connect (see its log on stderr)")
            return
        for channel, params in CHANNELS:
            await client.subscribe(channel, check.callback, params=params)
            channels.append(channel.value.format(**params))

        def done() -> bool:
            subscribed = client.get_subscriptions()
            return report.frames >= frames and all(subscribed.get(channel) for channel in channels)

        while not done() and (remaining := deadline - loop.time()) > 0:
            check.idle.clear()
            try:
                await asyncio.wait_for(check.idle.wait(), remaining)
            except TimeoutError:
                break
    except TimeoutError:
        report.fail("transport", "stream", f"connecting took longer than {wait_seconds} s")
    finally:
        subscribed = client.get_subscriptions()
        await close_client(client)
    check.finish(subscribed, channels)


# ------------------------------------------------------------------------------------------------------ REST
RECORDED: list[tuple[int, str]] = []


def record(response: httpx.Response) -> None:
    response.read()
    RECORDED.append((response.status_code, response.text))


def check_endpoint(
    report: Report,
    key: str,
    call: Callable[[], Any],
    item_model: Any,
    *,
    envelope: Any = None,
    label: str = "",
) -> dict[str, Any] | None:
    """Call one SDK fetch method and check what it returned; returns the body (or None)."""
    names = [label] if label else []
    names += [getattr(model, "__name__", "?") for model in (envelope, item_model) if model is not None]
    tally = report.rest_tally(key, " + ".join(names))
    RECORDED.clear()
    where = f"rest:{key}"
    try:
        call()
    except MarshmallowValidationError as error:
        status, text = RECORDED[-1] if RECORDED else (0, "")
        tally.received += 1
        tally.http_status.add(status)
        messages = error.messages if isinstance(error.messages, dict) else {"": error.messages}
        rejected = [{"loc": loc, "type": "marshmallow", "msg": str(msg)} for loc, msg in messages.items()]
        report.fail("validation", where, "the SDK's own parse rejects it", errors=rejected, payload=parse_json(text))
        return None
    except Exception as error:
        status, text = RECORDED[-1] if RECORDED else (0, "")
        tally.http_status.add(status)
        report.fail(
            "http",
            where,
            f"HTTP {status or 'request failed'}: the SDK raised {type(error).__name__}",
            payload={"sdk_error": str(error), "body": parse_json(text) if text else None},
        )
        return None
    status, text = RECORDED[-1]
    tally.received += 1
    tally.http_status.add(status)
    raw = parse_json(text)
    errors: list[dict[str, Any]] = []
    if envelope is not None:
        tally.diff(envelope, raw)
        try:
            envelope.model_validate(raw)
        except ValidationError as error:
            errors.extend(pydantic_errors(error))
        items = raw.get("results") if isinstance(raw, dict) else None
        for index, item in enumerate(items if isinstance(items, list) else []):
            tally.diff(item_model, item, "results[].")
            try:
                item_model.model_validate(item)
            except ValidationError as error:
                errors.extend(prefixed(pydantic_errors(error), f"results.{index}."))
    else:
        tally.diff(item_model, raw)
        try:
            item_model.model_validate(raw)
        except ValidationError as error:
            errors.extend(pydantic_errors(error))
    if errors:
        report.fail("validation", where, "the SDK's model rejects the response", errors=errors, payload=raw)
    else:
        tally.validated += 1
    return raw if isinstance(raw, dict) else None


def results(*bodies: dict[str, Any] | None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for body in bodies:
        items = body.get("results") if body else None
        found.extend(item for item in (items if isinstance(items, list) else []) if isinstance(item, dict))
    return found


def check_rest(report: Report, *, rest_url: str, jwt: str) -> None:
    http = HttpClient(http_client=httpx.Client(event_hooks={"response": [record]}, timeout=REST_TIMEOUT_SECONDS))
    api = ParadexApiClient(env="prod", http_client=http, api_base_url=rest_url.rstrip("/"), auto_auth=False)
    api.set_token(jwt)
    paginated = responses.PaginatedAPIResults
    listed = responses.APIResults
    try:
        # fetch_account_summary parses with the SDK's marshmallow AccountSummary; the raw body also goes through the
        # generated model (the same body is recorded).
        check_endpoint(
            report,
            "GET /account",
            api.fetch_account_summary,
            responses.AccountSummaryResponse,
            label="fetch_account_summary (marshmallow AccountSummary)",
        )
        check_endpoint(report, "GET /balance", api.fetch_balances, responses.BalanceResp, envelope=listed)
        positions = check_endpoint(
            report, "GET /positions", api.fetch_positions, responses.PositionResp, envelope=listed
        )
        orders = check_endpoint(report, "GET /orders", api.fetch_orders, responses.OrderResp, envelope=listed)
        history = check_endpoint(
            report, "GET /orders-history", api.fetch_orders_history, responses.OrderResp, envelope=paginated
        )
        fills = check_endpoint(report, "GET /fills", api.fetch_fills, responses.FillResult, envelope=paginated)
        ids = [item["id"] for item in results(orders, history) if item.get("id")]
        if ids:
            check_endpoint(report, SINGLE_ORDER, lambda: api.fetch_order(ids[0]), responses.OrderResp)
        else:
            report.notes.append(f"{SINGLE_ORDER}: not checked, no order id in /orders or /orders-history")
        markets = sorted(
            {str(item["market"]) for item in results(positions, orders, history, fills) if item.get("market")}
        )
        if not markets:
            markets = [FALLBACK_MARKET]
            report.notes.append(f"GET /funding/payments: no market seen elsewhere, asked for {FALLBACK_MARKET}")
        for market in markets:  # the spec makes `market` required
            check_endpoint(
                report,
                "GET /funding/payments",
                functools.partial(api.fetch_funding_payments, {"market": market}),
                responses.FundingPayment,
                envelope=paginated,
            )
        check_endpoint(report, "GET /transfers", api.fetch_transfers, responses.TransferResult, envelope=paginated)
        check_endpoint(report, "GET /tradebusts", api.fetch_tradebusts, responses.TradebustResult, envelope=paginated)
        check_endpoint(
            report, "GET /transactions", api.fetch_transactions, responses.TransactionResponse, envelope=paginated
        )
    finally:
        http.client.close()


async def main() -> int:
    args = arguments(__doc__.splitlines()[0] if __doc__ else "", credential="jwt", frames=1)
    # A hung check must not hang the test: past its whole budget it prints every thread's stack and exits.
    faulthandler.dump_traceback_later(args.timeout + WATCHDOG_SLACK_SECONDS, exit=True)
    report = Report(venue="paradex", distributions=DISTRIBUTIONS, ws_url=args.ws_url, rest_url=args.rest_url)
    if _starknet_crypto_stand_in.INSTALLED:
        report.notes.append("starknet_crypto_py is not installed: a stand-in took its place (signing unavailable)")
    await check_stream(report, ws_url=args.ws_url, jwt=args.jwt, frames=args.frames, wait_seconds=args.timeout)
    await asyncio.to_thread(check_rest, report, rest_url=args.rest_url, jwt=args.jwt)
    report.require(frames=args.frames, endpoints=REQUIRED_ENDPOINTS)
    return report.emit()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
