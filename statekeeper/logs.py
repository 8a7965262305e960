"""Logging: readable lines for a terminal, JSON lines for production, and secrets masked in both.

Log calls use %-style arguments and a stable ``action`` key in ``extra``, plus ``account`` and ``session`` where
they apply::

    logger.info("session opened on %s", url, extra={"action": "session_opened", "account": a, "session": s})

Every secret statekeeper loads (API keys, tokens, database passwords) is registered with :func:`register_secret`
and replaced by ``***`` in every formatted line, tracebacks included, as a last line of defence (invariant 10).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import orjson

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line from now on."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def register_url_password(url: str | None) -> None:
    """Mask the password of a database URL (as written, and percent-decoded) in every log line from now on."""
    password = urlsplit(url or "").password
    register_secret(password)
    register_secret(unquote(password or ""))


def mask_secrets(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


_context: ContextVar[dict[str, str]] = ContextVar("statekeeper_log_context", default={})  # noqa: B039 - never mutated


@contextmanager
def log_context(**values: str) -> Iterator[None]:
    """Add ``account``, ``session`` (or any key) to every log line written in this block, and in the tasks it
    starts (they inherit the context)."""
    token = _context.set({**_context.get(), **values})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Fills the record's context keys from :func:`log_context` where the call did not give them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``2026-11-22T10:00:00.123Z INFO statekeeper.eventlog: message  account=a session=s``"""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        context = _extras(record)
        context.pop("action", None)
        if context:
            line += "  " + " ".join(f"{k}={v}" for k, v in context.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask_secrets(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the extras, and ``exc`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask_secrets(orjson.dumps(entry, default=str).decode())


def current_format() -> Literal["text", "json"]:
    """The format :func:`configure_logging` set last (text if it has not run)."""
    handlers = logging.getLogger().handlers
    return "json" if any(isinstance(h.formatter, JsonFormatter) for h in handlers) else "text"


def configure_logging(fmt: Literal["text", "json"] = "text", level: str = "INFO") -> None:
    """Send every log line to stderr in the chosen format (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that are chatty at INFO stay at WARNING unless we debug.
    quiet = logging.WARNING if level != "DEBUG" else logging.DEBUG
    for name in ("pgserver", "asyncio", "alembic.runtime.migration", "alembic.runtime.plugins", "aiohttp.access"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger(name).level))
    # websockets logs frames at DEBUG, credentials included (a Paradex auth frame carries its JWT): never that.
    logging.getLogger("websockets").setLevel(max(logging.INFO, quiet))
