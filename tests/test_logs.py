"""Logging: JSON lines and text lines carry the context, and registered secrets never get out."""

from __future__ import annotations

import logging
import sys

import orjson

from statekeeper.logs import JsonFormatter, TextFormatter, configure_logging, register_secret

SECRET = "pk-test-0b1e2c3d4e5f"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("statekeeper.test", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_action_account_and_session() -> None:
    line = JsonFormatter().format(record("appended %d events", 3, action="append", account="acc-1", session="s-1"))
    entry = orjson.loads(line)
    assert entry["message"] == "appended 3 events"
    assert (entry["action"], entry["account"], entry["session"]) == ("append", "acc-1", "s-1")
    assert entry["level"] == "WARNING" and entry["ts"].endswith("+00:00")


def test_text_lines_carry_account_and_session() -> None:
    line = TextFormatter().format(record("session opened", action="session_opened", account="acc-1", session="s-1"))
    assert "session opened" in line and "account=acc-1" in line and "session=s-1" in line


def test_registered_secrets_are_masked_everywhere() -> None:
    register_secret(SECRET)
    try:
        raise RuntimeError(f"handshake failed with key {SECRET}")
    except RuntimeError:
        rec = record("request with %s failed", SECRET, account="acc-1")
        rec.exc_info = sys.exc_info()
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(rec)
        assert SECRET not in line
        assert "***" in line


def test_websockets_never_logs_frames() -> None:
    configure_logging("text", "DEBUG")
    try:
        assert not logging.getLogger("websockets").isEnabledFor(logging.DEBUG)
    finally:
        configure_logging("text", "INFO")
