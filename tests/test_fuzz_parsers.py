"""Fuzzing of every frame parser, on mutations of real frames: the recorded sessions (``tests/fixtures/recorded``)
and the venues' documented examples (``tests/fixtures/protocols``, copies of ``shared/protocols``).

Each input is a real frame mutated at the byte level (bytes flipped, inserted, deleted, a slice repeated, the frame
cut short, two frames spliced) or at the JSON level (a value anywhere in the tree replaced by junk of another type,
removed, or wrapped; unknown keys added; keys repeated; deep nesting; numbers JSON cannot hold in 64 bits). The
parsers must stay total and clear:

* the stream entry point (what the ingest daemon does with a frame: the venue's ``parse_frame``, then
  ``encode_event``; a rejection becomes a ``rejected_frames`` row) never raises; a rejection has a reason that
  names what is wrong (a field's path, or "not JSON" / "not UTF-8" / the unknown type or channel) and never
  "parser error" (the safety net that means an exception escaped a parser); an event can be stored: its raw text
  holds no NUL, and its payload either encodes or is refused by ``InvalidEvent`` with a reason;
* the REST parsers raise nothing but ``VenueResponseError``, with the venue and endpoint named;
* the shared converters of :mod:`statekeeper.venues.wire` raise nothing but ``WireError`` (or ``NeedsExactNumbers``
  for a float, which makes the frame be parsed again exactly);
* Paradex's handshake readers (the answer to a request, its error) never raise on any frame.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekeeper.errors import InvalidEvent
from statekeeper.events import Event, encode_event
from statekeeper.venues import venue_spec
from statekeeper.venues import wire as w
from statekeeper.venues.base import MAX_REASON, FrameContext, FrameRejection
from statekeeper.venues.errors import VenueResponseError
from statekeeper.venues.extended import parse as extended
from statekeeper.venues.paradex import parse as paradex
from statekeeper.venues.paradex.stream import _answer_to, _error_of

FIXTURES = Path(__file__).parent / "fixtures"
VENUES = ("extended", "paradex")
CTX = FrameContext(
    account="fuzz-1",
    venue="extended",
    session=UUID("00000000-0000-4000-8000-000000000009"),
    received_at=datetime(2026, 1, 1, tzinfo=UTC),
)


def _recorded(venue: str) -> list[str]:
    [path] = FIXTURES.glob(f"recorded/{venue}-seed*.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    # one frame of each shape (type or channel, snapshot or not) and a spread of the others: every shape is mutated
    seen: dict[str, str] = {}
    for line in lines:
        message = json.loads(line)
        shape = str(message.get("type") or message["params"]["channel"]) + str(
            (message.get("data") or {}).get("isSnapshot") if isinstance(message.get("data"), dict) else ""
        )
        seen.setdefault(shape, line)
    return [*seen.values(), *lines[:: max(1, len(lines) // 40)]]


def _documented(venue: str, prefix: str) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted((FIXTURES / "protocols" / venue).glob(f"{prefix}*.json"))]


STREAM_CORPUS = {venue: _recorded(venue) + _documented(venue, "ws_") for venue in VENUES}
REST_CORPUS = {venue: _documented(venue, "rest_") for venue in VENUES}

# --------------------------------------------------------------------------------------------- mutations

JUNK_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70) | st.integers(min_value=-(2**70), max_value=-(2**63) + 2),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["", " ", "NaN", "Infinity", "-0", "1e999", "0x10", "１２", "\x00", "\u2028", "BUY", "LONG"]),
    st.sampled_from([10**12, 2**63, -1, 0, 1.5e300, 253_402_300_800_000, 10**30]),
)
JUNK = st.recursive(
    JUNK_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
# Literal texts JSON allows but Python's parsers treat specially: exponents, huge numbers, escapes, deep nesting.
JSON_TEXTS = st.sampled_from(
    [
        "1e400",
        "-1e-400",
        "123456789012345678901234567890.5",
        "18446744073709551616",
        "-9223372036854775809",
        '"\\u0000"',
        '"\\ud800"',
        '"\\udfff\\ud800"',
        "[" * 600 + "]" * 600,
        '{"a":' * 600 + "1" + "}" * 600,
        "NaN",
        "Infinity",
        "true",
        "{}",
        "[]",
        '""',
        "0.0000000000000000000000000001",
    ]
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _set(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = root
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return root


def _delete(root: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return root
    parent = root
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return root


MARK = "\x01MARK\x01"


@st.composite
def json_mutations(draw: st.DrawFn, corpus: list[str]) -> str:
    """A frame with values anywhere in its tree replaced, removed, wrapped or retyped, and keys added."""
    root = json.loads(draw(st.sampled_from(corpus)))
    literal: str | None = None
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(root)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "add", "literal"]))
        if action == "replace":
            root = _set(root, path, draw(JUNK))
        elif action == "delete" and path:
            root = _delete(root, path)
        elif action == "wrap":
            current: Any = root
            for step in path:
                current = current[step]
            root = _set(root, path, draw(st.sampled_from([[current], {"value": current}, str(current)])))
        elif action == "add":
            current = root
            for step in path:
                current = current[step]
            if isinstance(current, dict):
                current[draw(st.text(max_size=6))] = draw(JUNK)
        elif action == "literal" and literal is None:
            literal = draw(JSON_TEXTS)
            root = _set(root, path, MARK)
    text = json.dumps(root, ensure_ascii=draw(st.booleans()))
    if literal is not None:
        text = text.replace(json.dumps(MARK), literal, 1)
    if draw(st.integers(0, 9)) == 0 and text.startswith("{") and len(text) > 2:  # a key repeated: the last one wins
        first_key = re.match(r'\{\s*("(?:[^"\\]|\\.)*")\s*:', text)
        if first_key:
            text = "{" + first_key.group(1) + ":" + json.dumps(draw(JUNK)) + "," + text[1:]
    return text


@st.composite
def byte_mutations(draw: st.DrawFn, corpus: list[str]) -> bytes:
    """A frame's bytes flipped, inserted, deleted, repeated, cut short, or spliced with another frame."""
    data = bytearray(draw(st.sampled_from(corpus)).encode("utf-8"))
    for _ in range(draw(st.integers(1, 5))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "cut", "splice", "byte"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif action == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 30))]
        elif action == "cut":
            del data[at:]
        elif action == "splice":
            other = draw(st.sampled_from(corpus)).encode("utf-8")
            data = data[:at] + other[draw(st.integers(0, len(other) - 1)) :]
        else:
            data[at] = draw(st.sampled_from([0x00, 0x22, 0x5C, 0x7B, 0x7D, 0xC3, 0xFF, 0x2C, 0x3A]))
    return bytes(data)


def frames(venue: str) -> st.SearchStrategy[str | bytes]:
    corpus = STREAM_CORPUS[venue]
    as_text = byte_mutations(corpus).map(lambda raw: raw.decode("utf-8", errors="replace"))
    structured = json_mutations(corpus)  # most inputs: valid JSON, wrong content (the parsers' own checks)
    return st.one_of(structured, structured, structured, byte_mutations(corpus), as_text)


# --------------------------------------------------------------------------------------------- oracles

CLEAR_REASON = re.compile(
    r"^(not UTF-8 text|not JSON|unknown (message type|channel)|frame contains a NUL"
    r"|[A-Za-z_][\w/]*(\[\d+\])?([.\w/\[\]]*)?: "  # a field's path, then what is wrong with it
    r"|frame: |[a-z_ ]+ data[.:])"
)


def check_stream_frame(venue: str, raw: str | bytes) -> Event | FrameRejection:
    """What the ingest daemon does with a frame (``IngestAccount._store_frame``), with the oracles above."""
    context = FrameContext(CTX.account, venue, CTX.session, CTX.received_at)
    outcome = venue_spec(venue).parse_frame(raw, context)
    data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else raw
    if isinstance(outcome, FrameRejection):
        reason = outcome.reason
        assert reason and len(reason) <= MAX_REASON, reason
        assert "parser error" not in reason, f"an exception escaped the {venue} parser: {reason}"
        assert CLEAR_REASON.match(reason), f"the reason does not say what is wrong: {reason!r}"
        row = outcome.to_rejected_frame(context, raw)
        assert row.raw == data and row.reason == reason
        return outcome
    assert isinstance(outcome, Event)
    assert outcome.raw == (raw if isinstance(raw, str) else raw.decode("utf-8"))
    assert "\x00" not in outcome.raw, "a NUL in the raw text: PostgreSQL TEXT cannot hold it"
    refused = ""
    try:
        encode_event(outcome)
    except InvalidEvent as exc:  # the daemon stores the frame as rejected, with this reason
        refused = str(exc) or "(no reason)"
    assert refused != "(no reason)", "InvalidEvent without a reason"
    return outcome


@pytest.mark.parametrize("venue", VENUES)
def test_every_corpus_frame_parses_as_recorded(venue: str) -> None:
    """The unmutated corpus: every recorded and documented frame is an event (the mutations start from valid)."""
    outcomes = [check_stream_frame(venue, raw) for raw in STREAM_CORPUS[venue]]
    rejected = [(raw[:80], o.reason) for raw, o in zip(STREAM_CORPUS[venue], outcomes, strict=True)
                if isinstance(o, FrameRejection)]  # fmt: skip
    # the documented examples include a few request frames (what a client sends), which a stream never receives
    assert len(rejected) <= len(_documented(venue, "ws_")) // 2, rejected


@pytest.mark.parametrize("venue", VENUES)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_stream_frames_are_events_or_clear_rejections(venue: str, data: st.DataObject) -> None:
    check_stream_frame(venue, data.draw(frames(venue)))


@pytest.mark.parametrize("venue", VENUES)
@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", errors="replace")))
def test_random_bytes_are_clear_rejections(venue: str, raw: bytes) -> None:
    check_stream_frame(venue, raw)


# ---------------------------------------------------------------------------------------------------- REST

REST_PARSERS: dict[str, list[Callable[[bytes], object]]] = {
    "extended": [
        extended.parse_balance,
        extended.parse_positions,
        extended.parse_open_orders,
        extended.parse_order,
        extended.parse_orders_history,
        extended.parse_trades,
        extended.parse_funding_history,
        extended.parse_asset_operations,
        extended.parse_account_info,
    ],
    "paradex": [
        paradex.parse_account,
        paradex.parse_balances,
        paradex.parse_positions,
        paradex.parse_open_orders,
        paradex.parse_order,
        paradex.parse_orders_history,
        paradex.parse_fills,
        paradex.parse_funding_payments,
        paradex.parse_transfers,
        paradex.parse_tradebusts,
    ],
}


@pytest.mark.parametrize("venue", VENUES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_rest_answers_raise_only_clear_response_errors(venue: str, data: st.DataObject) -> None:
    corpus = REST_CORPUS[venue]
    body = data.draw(st.one_of(json_mutations(corpus).map(str.encode), byte_mutations(corpus)))
    parser = data.draw(st.sampled_from(REST_PARSERS[venue]))
    try:
        parser(body)
    except VenueResponseError as exc:
        error = exc
    else:
        return
    message = str(error)
    assert message.startswith(f"{venue} "), message  # the venue and the endpoint come first
    assert "parser error" not in message and "cannot be read (" not in message, message
    assert error.venue == venue


# ---------------------------------------------------------------------------------------------- converters

CONVERTERS: list[Callable[[Any, str], object]] = [
    w.amount,
    w.optional_amount,
    w.venue_id,
    w.integer,
    w.timestamp,
    w.optional_timestamp,
    w.text,
    w.optional_text,
    w.boolean,
    w.optional_boolean,
    w.obj,
    w.arr,
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CONVERTERS), JUNK | st.decimals() | st.floats())
def test_wire_converters_raise_only_wire_errors_naming_the_field(converter: Callable[[Any, str], object],
                                                                 value: Any) -> None:  # fmt: skip
    message = None
    try:
        converter(value, "data.orders[0].price")
    except w.NeedsExactNumbers:
        assert isinstance(value, float), f"{converter.__name__}: NeedsExactNumbers for {value!r}"
    except w.WireError as exc:
        message = str(exc)
    assert message is None or message.startswith("data.orders[0].price: "), message


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), JSON_TEXTS, byte_mutations(STREAM_CORPUS["extended"])))
def test_json_decoding_raises_only_wire_errors(raw: str | bytes) -> None:
    message = None
    try:
        w.parse_json_with(raw, lambda data: data)
    except w.WireError as exc:
        message = str(exc)
    assert message is None or message.startswith(("not JSON: ", "not UTF-8 text: ")), message


# ------------------------------------------------------------------------------------ Paradex's handshake


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(frames("paradex"), JUNK.map(json.dumps)), st.integers(0, 3))
def test_paradex_handshake_readers_never_raise(raw: str | bytes, request_id: int) -> None:
    answer = _answer_to(raw, request_id)
    if answer is not None:
        assert answer.get("id") in (request_id, str(request_id))
        error = _error_of(answer)
        assert error is None or isinstance(error.message, str)
