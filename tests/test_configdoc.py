"""The configuration reference (docs/configuration.md) is the one the settings model generates, and every
environment variable it names is the one the loader reads."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from statekeeper import configdoc
from statekeeper.config import Settings, load_settings
from statekeeper.errors import ConfigError

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_the_committed_reference_is_current() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == configdoc.render(), (
        f"docs/configuration.md is out of date: run `{configdoc.COMMAND}` (or `make docs`)"
    )


def test_every_key_is_documented() -> None:
    text = configdoc.render()
    for title, _, model in configdoc.sections():
        assert f"## `{title}`" in text
        for key, field in model.model_fields.items():
            assert (f"| `{key}` |" in text) != bool(field.exclude), (title, key)  # api_key never appears


@pytest.mark.parametrize(
    ("variable", "section", "key"),
    [
        (configdoc.env_variable(prefix, key), title.strip("[]"), key)
        for title, prefix, model in configdoc.sections()
        if prefix is not None
        for key in model.model_fields
    ],
)
def test_each_documented_variable_is_read(
    variable: str, section: str, key: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A value no key accepts is refused naming the variable; a key that takes any string takes it; a table
    (JSON in the environment) takes the JSON."""
    monkeypatch.chdir(tmp_path)  # no statekeeper.toml
    field = type(getattr(Settings(), section)).model_fields[key]
    if typing.get_origin(field.annotation) is dict:
        monkeypatch.setenv(variable, '{"documented": "0.5"}')
        assert str(getattr(getattr(load_settings(), section), key)["documented"]) == "0.5"
        return
    monkeypatch.setenv(variable, "{not-a-value}")
    try:
        outcome = str(getattr(getattr(load_settings(), section), key))
    except ConfigError as exc:
        outcome = exc.message
    assert outcome == "{not-a-value}" or variable in outcome
