"""The configuration reference, generated from the settings model (:mod:`statekeeper.config`).

``python -m statekeeper.configdoc > docs/configuration.md`` (or ``make docs``) writes it: every section and key,
its type and limits, its default, the environment variable that overrides it, and its description, all read
from the pydantic models, so the reference cannot drift from the loader (a test compares the committed file with
what this module prints).
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import AwareDatetime, BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from statekeeper import config
from statekeeper.config import ENV_PREFIX, Settings

COMMAND = "python -m statekeeper.configdoc > docs/configuration.md"

_NAMED_TYPES: dict[object, str] = {
    config.PostgresUrl: "PostgreSQL URL (a secret: shown masked)",
    config.WebSocketUrl: "`ws://` or `wss://` URL",
    config.HttpUrl: "`http://` or `https://` URL",
    config.EnvVarName: "environment variable name",
}
_SIMPLE_TYPES: dict[object, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Decimal: "decimal",
    Path: "path",
    SecretStr: "secret string",
    datetime: "RFC 3339 time",
    AwareDatetime: "RFC 3339 time with a time zone",
}


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``"a" | "b"`` for a Literal, the named URL types, and so on."""
    if annotation in _NAMED_TYPES:
        return _NAMED_TYPES[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        name = " | ".join(f"`{json.dumps(a)}`" for a in args)
    elif origin in (typing.Union, types.UnionType):
        name = " | ".join(type_name(a) for a in args if a is not type(None))
    elif origin is dict:
        name = f"table of {type_name(args[1])}"
    elif origin is typing.Annotated:
        name = type_name(args[0])
    else:
        name = _SIMPLE_TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return name


def number(value: object) -> str:
    """``86400`` rather than ``86400.0`` or ``8.64e+04``."""
    if isinstance(value, int | float | Decimal) and value == int(value):
        return str(int(value))
    return str(value)


def limits(field: FieldInfo) -> str:
    """The field's bounds and pattern, such as ``> 0, ≤ 600``."""
    found: list[str] = []
    for item in field.metadata:
        match item:
            case annotated_types.Gt(gt=bound):
                found.append(f"> {number(bound)}")
            case annotated_types.Ge(ge=bound):
                found.append(f"≥ {number(bound)}")
            case annotated_types.Lt(lt=bound):
                found.append(f"< {number(bound)}")
            case annotated_types.Le(le=bound):
                found.append(f"≤ {number(bound)}")
            case _ if getattr(item, "pattern", None):
                found.append(f"matches `{item.pattern}`")
            case _ if getattr(item, "max_length", None):
                found.append(f"at most {item.max_length} characters")
    return ", ".join(found)


def toml_value(value: Any) -> str:
    """``value`` as TOML spells it."""
    match value:
        case bool():
            return str(value).lower()
        case int() | float() | Decimal():
            return str(value)
        case dict():
            return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
        case _:
            return json.dumps(str(value))


def default_text(field: FieldInfo) -> str:
    """The default as TOML would spell it; *required* or *none* otherwise."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "*required*"
    default = field.get_default(call_default_factory=True)
    return "*none*" if default is None else f"`{toml_value(default)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _doc(model: type[BaseModel]) -> str:
    return inspect.cleandoc(model.__doc__ or "")


def sections() -> Iterator[tuple[str, str | None, type[BaseModel]]]:
    """(the section as written in TOML, its environment prefix or None for a list, the model), in model order."""
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield f"[{name}]", f"{ENV_PREFIX}{name.upper()}_", annotation
        else:
            (item, _) = typing.get_args(annotation)
            yield f"[[{name}]]", None, item


def env_variable(prefix: str, key: str) -> str:
    return f"{prefix}{key.upper()}"


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from statekeeper/config.py by `{COMMAND}` (or `make docs`): do not edit by hand. -->",
        "",
        "statekeeper reads a TOML file (`--config FILE`, default `statekeeper.toml` in the current directory if there",
        "is one) and then the environment, which wins: every key of a section can be set as",
        f"`{ENV_PREFIX}<SECTION>_<KEY>`. The loader is strict: an unknown key, a value out of its limits or a missing",
        "credential stops the command with exit code 2 and a message naming the key and where it came from.",
        "Credentials are never read from the file: an account names the environment variable that holds its",
        "credential (`api_key_env`). `statekeeper.example.toml` is a commented starting point.",
        "",
    ]
    for title, prefix, model in sections():
        lines += [f"## `{title}`", "", _doc(model), ""]
        if prefix is None:
            lines += [
                "A list: one table per entry. Its keys have no environment variable of their own; the whole list",
                f"can be given as JSON in `{ENV_PREFIX}{title.strip('[]').upper()}`.",
                "",
                "| key | type | default | description |",
                "|---|---|---|---|",
            ]
        else:
            lines += ["| key | type | default | environment variable | description |", "|---|---|---|---|---|"]
        for key, field in model.model_fields.items():
            if field.exclude:
                continue
            kind = type_name(field.annotation)
            bounds = limits(field)
            cells = [f"`{key}`", kind + (f" ({bounds})" if bounds else ""), default_text(field)]
            if prefix is not None:
                json_value = typing.get_origin(field.annotation) is dict
                cells.append(f"`{env_variable(prefix, key)}`" + (" (JSON)" if json_value else ""))
            cells.append(field.description or "")
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
