"""What the two SDK fidelity checks share: their command line, the JSON report they print, and the walk over a
pydantic model that finds the fields a payload carries but the SDK's model drops (or declares but never gets).

This module runs inside the SDK environments (``.venv-sdk/<name>``), next to ``extended_check.py`` and
``paradex_check.py``, which import it as a sibling module. It needs only the standard library and pydantic, which
both SDKs depend on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo

# Frames and bodies kept in a report are cut to this many characters of JSON; the report stays readable.
PAYLOAD_LIMIT = 4000


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (anything else becomes its ``str``)."""
    return json.loads(json.dumps(value, default=str))


def parse_json(text: str | bytes) -> Any:
    """The JSON in ``text``, or ``text`` itself when it is not JSON (a report shows what came, whatever it is)."""
    try:
        return json.loads(text)
    except ValueError:
        return text.decode(errors="replace") if isinstance(text, bytes) else text


def clip(payload: Any) -> Any:
    dumped = json.dumps(payload, default=str)
    return payload if len(dumped) <= PAYLOAD_LIMIT else dumped[:PAYLOAD_LIMIT] + "...(cut)"


def pydantic_errors(error: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": ".".join(str(part) for part in item["loc"]),
            "type": item["type"],
            "msg": item["msg"],
            "input": clip(jsonable(item.get("input"))),
        }
        for item in error.errors(include_url=False)
    ]


# ------------------------------------------------------------------------------------------- model/payload walk
def _field_keys(name: str, info: FieldInfo) -> set[str]:
    """Every JSON key pydantic would read into this field."""
    keys = {name}
    if info.alias:
        keys.add(info.alias)
    alias = info.validation_alias
    if isinstance(alias, str):
        keys.add(alias)
    elif isinstance(alias, AliasChoices):
        keys.update(choice for choice in alias.choices if isinstance(choice, str))
    return keys


def _wire_name(name: str, info: FieldInfo) -> str:
    """The field's name on the wire (Extended's SDK reads ``AliasChoices(snake, camel)``: the camel one)."""
    if info.alias:
        return info.alias
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        others = [choice for choice in alias.choices if isinstance(choice, str) and choice != name]
        if others:
            return others[-1]
    return name


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field's type (``Optional[List[Model]]`` gives ``[Model]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in get_args(annotation):
        found.extend(_nested_models(argument))
    return found


def field_diff(
    model: type[BaseModel], raw: Any, path: str = "", *, missing_from: int = 0, depth: int = 0
) -> tuple[set[str], set[str]]:
    """(unknown, missing): paths in ``raw`` that ``model`` has no field for (pydantic drops them with
    ``extra="ignore"`` or keeps them untyped with ``extra="allow"``), and fields of ``model`` that ``raw`` lacks,
    counted only from nesting level ``missing_from`` (0 is ``model`` itself): an envelope's optional fields, or the
    other frame types' keys of a frame, are not worth listing. Lists are walked item by item, written ``key[]``."""
    unknown: set[str] = set()
    missing: set[str] = set()
    if not isinstance(raw, dict):
        return unknown, missing
    by_key: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        keys = _field_keys(name, info)
        for key in keys:
            by_key[key] = info
        if not keys & raw.keys() and depth >= missing_from:
            missing.add(f"{path}{_wire_name(name, info)}")
    for key, value in raw.items():
        known = by_key.get(key)
        if known is None:
            unknown.add(f"{path}{key}")
            continue
        nested = _nested_models(known.annotation)
        if len(nested) != 1:
            continue
        items, suffix = (value, "[]") if isinstance(value, list) else ([value], "")
        for item in items:
            more_unknown, more_missing = field_diff(
                nested[0], item, f"{path}{key}{suffix}.", missing_from=missing_from, depth=depth + 1
            )
            unknown |= more_unknown
            missing |= more_missing
    return unknown, missing


def type_name(annotation: Any) -> str:
    """``list[PositionModel]`` rather than ``list`` or ``list[x10.models.position.PositionModel]``."""
    arguments = get_args(annotation)
    base = getattr(get_origin(annotation) or annotation, "__name__", str(annotation))
    return f"{base}[{', '.join(type_name(argument) for argument in arguments)}]" if arguments else base


# ------------------------------------------------------------------------------------------------------ report
@dataclass
class Failure:
    kind: str
    """validation (an SDK model rejects it), unmodelled (the SDK has no model for it, or silently drops it),
    dispatch (the SDK client does not route it), protocol, transport, http, coverage (less was checked than asked)."""
    where: str
    message: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    payload: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "where": self.where,
            "message": self.message,
            "errors": self.errors,
            "payload": clip(jsonable(self.payload)),
        }


@dataclass
class Tally:
    """What was checked of one stream frame type / channel, or of one REST endpoint."""

    model: str
    received: int = 0
    validated: int = 0
    unknown_fields: set[str] = field(default_factory=set)
    missing_fields: set[str] = field(default_factory=set)
    http_status: set[int] = field(default_factory=set)

    def diff(self, model: type[BaseModel], raw: Any, path: str = "", *, missing_from: int = 0) -> None:
        unknown, missing = field_diff(model, raw, path, missing_from=missing_from)
        self.unknown_fields |= unknown
        self.missing_fields |= missing

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "received": self.received,
            "validated": self.validated,
            "unknown_fields": sorted(self.unknown_fields),
            "missing_fields": sorted(self.missing_fields),
        }
        if self.http_status:
            data["http_status"] = sorted(self.http_status)
        return data


class Report:
    """The one JSON document a check prints. ``ok`` only when nothing failed (coverage included)."""

    def __init__(self, *, venue: str, distributions: tuple[str, ...], ws_url: str, rest_url: str) -> None:
        self.venue = venue
        self.sdk = {name: _version(name) for name in distributions}
        self.sdk["python"] = platform.python_version()
        self.urls = {"ws": ws_url, "rest": rest_url}
        self.frames = 0
        self.stream: dict[str, Tally] = {}
        self.rest: dict[str, Tally] = {}
        self.protocol: dict[str, Any] = {}
        self.notes: list[str] = []
        self.failures: list[Failure] = []

    def fail(self, kind: str, where: str, message: str, *, errors: Any = None, payload: Any = None) -> None:
        self.failures.append(Failure(kind, where, message, list(errors or []), payload))

    def stream_tally(self, key: str, model: str) -> Tally:
        return self.stream.setdefault(key, Tally(model))

    def rest_tally(self, key: str, model: str) -> Tally:
        return self.rest.setdefault(key, Tally(model))

    def require(self, *, frames: int, endpoints: tuple[str, ...]) -> None:
        """Coverage: at least ``frames`` stream frames, and every one of ``endpoints`` answered and checked."""
        if self.frames < frames:
            self.fail("coverage", "stream", f"{self.frames} frame(s) received, at least {frames} expected")
        for endpoint in endpoints:
            if endpoint not in self.rest:
                self.fail("coverage", f"rest:{endpoint}", "endpoint not checked")

    def to_json(self) -> dict[str, Any]:
        return {
            "venue": self.venue,
            "ok": not self.failures,
            "sdk": self.sdk,
            "urls": self.urls,
            "stream": {
                "frames": self.frames,
                "validated": sum(tally.validated for tally in self.stream.values()),
                "by_type": {key: tally.to_json() for key, tally in sorted(self.stream.items())},
                "protocol": self.protocol,
            },
            "rest": {key: tally.to_json() for key, tally in sorted(self.rest.items())},
            "notes": self.notes,
            "failures": [failure.to_json() for failure in self.failures],
        }

    def emit(self) -> int:
        """Print the report to stdout; the exit status for the script."""
        json.dump(self.to_json(), sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0 if not self.failures else 1


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def arguments(description: str, *, credential: str, frames: int, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ws-url", required=True, help="the account stream's WebSocket URL")
    parser.add_argument("--rest-url", required=True, help="the REST API base URL")
    parser.add_argument(f"--{credential}", required=True, help="the account's credential")
    parser.add_argument(
        "--frames", type=int, default=frames, help=f"stream frames to receive at least (default {frames})"
    )
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait for the stream frames (default 20)"
    )
    return parser.parse_args(argv)
