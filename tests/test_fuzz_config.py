"""Fuzzing of the configuration loader (``statekeeper.config.load_settings``): TOML files and environment variables.

Inputs: documents built from the real sections and keys with good and bad values of every TOML type (strings,
integers, floats with nan and inf, booleans, dates and times, arrays, inline tables), unknown keys and sections,
keys pydantic-settings would take as its own arguments (``_env_file``...), deep nesting; the example file and a
good file mutated byte by byte; and ``STATEKEEPER_...`` variables with random values, JSON or not.

The loader must return settings or raise :class:`~statekeeper.errors.ConfigError` and nothing else, and every line
of the error must say where the bad value came from: the file (its path) or the environment variable (its name).
A credential put in the environment never appears in an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekeeper.config import Settings, load_settings
from statekeeper.errors import ConfigError

EXAMPLE = (Path(__file__).parent.parent / "statekeeper.example.toml").read_text(encoding="utf-8")
GOOD = """
[database]
url = "postgresql://statekeeper:pw@localhost:5432/statekeeper"
pool_size = 4

[[accounts]]
name = "ext-main"
venue = "extended"
api_key_env = "FUZZ_EXTENDED_KEY"
ws_url = "ws://127.0.0.1:1/stream.extended.exchange/v1/account"
rest_url = "http://127.0.0.1:1/api/v1"

[[accounts]]
name = "pdx-main"
venue = "paradex"
api_key_env = "FUZZ_PARADEX_JWT"
mode = "rest"

[ingest]
metrics_port = 0
backfill_from = 2026-01-01T00:00:00Z

[projector]
workers = 2

[reconcile]
interval_seconds = 30

[log]
format = "json"
"""
CREDENTIALS = {"FUZZ_EXTENDED_KEY": "fuzz-planted-extended-key-5d1c9a", "FUZZ_PARADEX_JWT": "fuzz.planted.jwt-77e0b3"}

# ------------------------------------------------------------------------------------------ TOML writing


def toml_value(value: Any) -> str:  # noqa: PLR0911 - one return per TOML type
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of ASCII text is a TOML basic string
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(document: Mapping[str, Any]) -> str:
    lines = []
    for section, content in document.items():
        if isinstance(content, dict):
            lines.append(f"[{json.dumps(section)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in content.items()]
        elif isinstance(content, list) and content and all(isinstance(item, dict) for item in content):
            for item in content:
                lines.append(f"[[{json.dumps(section)}]]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in item.items()]
        else:
            lines.insert(0, f"{json.dumps(section)} = {toml_value(content)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- strategies

SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=12),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.times(),
    st.sampled_from(["", "0", "-1", "1e9", "postgresql://u:p@h/db", "ws://h/x", "stream", "rest", "json", "DEBUG"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def _known_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next(c for c in candidates if isinstance(c, type) and hasattr(c, "model_fields"))
        keys[name] = [k for k, f in model.model_fields.items() if not f.exclude]
    return keys


KNOWN = _known_keys()
GOOD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "url": st.sampled_from(["postgresql://u@h/db", "postgres://u:pw@h:5432/db", "postgresql+asyncpg://h/db"]),
    "name": st.sampled_from(["ext-main", "pdx-main", "a"]),
    "venue": st.sampled_from(["extended", "paradex"]),
    "api_key_env": st.sampled_from(list(CREDENTIALS)),
    "mode": st.sampled_from(["stream", "rest"]),
    "ws_url": st.just("wss://example.invalid/v1"),
    "rest_url": st.just("https://example.invalid/v1"),
    "format": st.sampled_from(["text", "json"]),
    "level": st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR"]),
    "backfill_from": st.datetimes(timezones=st.just(datetime.now().astimezone().tzinfo)),
}


def value_for(key: str) -> st.SearchStrategy[Any]:
    good = GOOD_VALUES.get(key, st.integers(min_value=1, max_value=100) | st.floats(min_value=0.5, max_value=60))
    return st.one_of(good, good, VALUES)


def section_content(section: str) -> st.SearchStrategy[dict[str, Any]]:
    known = {key: value_for(key) for key in KNOWN[section]}
    content = st.fixed_dictionaries({}, optional=known)
    return st.tuples(content, st.dictionaries(st.text(max_size=8), VALUES, max_size=1)).map(
        lambda pair: {**pair[0], **pair[1]}
    )


@st.composite
def documents(draw: st.DrawFn) -> str:
    document: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(list(KNOWN)), unique=True, max_size=len(KNOWN))):
        if section == "accounts":
            document[section] = draw(st.lists(section_content(section), min_size=1, max_size=3))
        else:
            document[section] = draw(section_content(section))
    extra = draw(
        st.sampled_from([None, None, None, "_env_file", "_cli_parse_args", "_secrets_dir", "_case_sensitive", "x"])
    )
    if extra is not None:
        document[extra] = draw(st.sampled_from(["/etc/passwd", True, 1, "x"]))
    if draw(st.integers(0, 20)) == 0:
        document["deep"] = draw(st.sampled_from([[[[[[1]]]]], {"a": {"b": {"c": 1}}}]))
    text = toml_document(document)
    if draw(st.integers(0, 30)) == 0:
        text += "deep = " + "[" * 2000 + "]" * 2000 + "\n"
    return text


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([EXAMPLE, GOOD])).encode("utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "byte"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3) | st.sampled_from([b"_", b"[", b"=", b'"', b"\n["]))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 6))]
        elif action == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
        else:
            data[at] = draw(st.sampled_from(b"_=[]{}\"'#.,\n 0a\xff"))
    return bytes(data)


ENV_NAMES = [f"STATEKEEPER_{section}_{key}".upper() for section, keys in KNOWN.items() for key in keys] + [
    f"STATEKEEPER_{section}".upper() for section in KNOWN
]
ENV_VALUES = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20),
    VALUES.map(lambda v: json.dumps(v, default=str)),
    st.sampled_from(["[{", "{", "[]", "{}", "null", "[1]", '{"format":"x"}', '[{"name":"a"}]', "nan", "1e400"]),
)
ENVIRONMENTS = st.dictionaries(
    st.sampled_from([*ENV_NAMES, "STATEKEEPER_", "STATEKEEPER__ENV_FILE", "STATEKEEPER_NOPE_X"]), ENV_VALUES, max_size=3
)

# ---------------------------------------------------------------------------------------------- oracle


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Only these variables (and the planted credentials) in ``os.environ`` while the loader runs."""
    env = {**CREDENTIALS, **variables}
    with mock.patch.dict(os.environ, env, clear=True):
        yield env


def check_load(text: str | bytes, variables: Mapping[str, str], *, require_secrets: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "statekeeper.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        with environment(variables) as env:
            try:
                load_settings(path, require_secrets=require_secrets, environ=env)
            except ConfigError as exc:
                message = str(exc)
            else:
                return
    assert message.strip(), "a ConfigError without a message"
    for line in message.splitlines():
        assert line.startswith((str(path), "environment variable STATEKEEPER_")), (
            f"this line of the error says neither the file nor the variable: {line!r}"
        )
    for secret in CREDENTIALS.values():
        assert secret not in message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.booleans())
def test_generated_documents_load_or_fail_clearly(text: str, require_secrets: bool) -> None:
    check_load(text, {}, require_secrets=require_secrets)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files(), st.booleans())
def test_mutated_files_load_or_fail_clearly(data: bytes, require_secrets: bool) -> None:
    check_load(data, {}, require_secrets=require_secrets)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([GOOD, EXAMPLE, ""]), ENVIRONMENTS)
def test_environment_overrides_load_or_fail_clearly(text: str, variables: dict[str, str]) -> None:
    check_load(text, variables, require_secrets=False)


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ('_env_file = "/etc/passwd"\n', {}, "_env_file: unknown key (known keys: accounts, database"),
        ("_cli_parse_args = true\n", {}, "_cli_parse_args: unknown key"),
        ("deep = " + "[" * 3000 + "]" * 3000 + "\n", {}, "invalid TOML: arrays or tables nested too deeply"),
        ("", {"STATEKEEPER_ACCOUNTS": "[{"}, "environment variable STATEKEEPER_ACCOUNTS: not valid JSON"),
        ("", {"STATEKEEPER_DATABASE": "{"}, "environment variable STATEKEEPER_DATABASE: not valid JSON"),
    ],
    ids=["settings-argument-env-file", "settings-argument-cli", "deep-nesting", "env-list-not-json", "env-not-json"],
)
def test_what_the_fuzzer_found_is_a_clear_configuration_error(
    text: str, variables: dict[str, str], expected: str
) -> None:
    """Inputs the fuzzer found escaping the loader (a RecursionError, pydantic-settings' SettingsError) or, worse,
    silently taken as pydantic-settings arguments (another file read as .env, the command line parsed)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "statekeeper.toml"
        path.write_text(text, encoding="utf-8")
        with environment(variables) as env, pytest.raises(ConfigError) as caught:
            load_settings(path, environ=env)
    assert expected in str(caught.value), str(caught.value)
