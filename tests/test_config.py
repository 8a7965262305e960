"""Configuration: TOML plus environment, strict, and errors that name the key and where it came from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from statekeeper.cli import app
from statekeeper.config import load_settings, redact_url
from statekeeper.errors import ConfigError

GOOD = """
[database]
url = "postgresql://statekeeper@localhost/statekeeper"

[[accounts]]
name = "ext-main"
venue = "extended"
api_key_env = "EXTENDED_API_KEY"

[[accounts]]
name = "pdx-main"
venue = "paradex"
api_key_env = "PARADEX_JWT"
ws_url = "wss://ws.api.testnet.paradex.trade/v1"
rest_url = "https://api.testnet.paradex.trade/v1"

[reconcile]
interval_seconds = 30
"""

SECRET = "sk-live-7f3a9c2e5b1d4f8a"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("STATEKEEPER_") and name != "STATEKEEPER_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray statekeeper.toml from the working directory


def write(tmp_path: Path, text: str, name: str = "statekeeper.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_file_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD))
    assert [a.name for a in settings.accounts] == ["ext-main", "pdx-main"]
    assert settings.reconcile.interval_seconds == 30
    assert settings.database.display_url() == "postgresql://statekeeper@localhost/statekeeper"
    assert settings.accounts[1].ws_url == "wss://ws.api.testnet.paradex.trade/v1"


def test_the_default_file_is_read_from_the_working_directory(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    assert len(load_settings().accounts) == 2


def test_no_file_means_defaults_and_the_embedded_database() -> None:
    settings = load_settings()
    assert settings.database.url is None
    assert settings.accounts == ()


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEKEEPER_DATABASE_URL", "postgresql://other@db.internal:6432/sk")
    monkeypatch.setenv("STATEKEEPER_RECONCILE_INTERVAL_SECONDS", "5")
    monkeypatch.setenv("STATEKEEPER_LOG_FORMAT", "json")
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.database.display_url() == "postgresql://other@db.internal:6432/sk"
    assert settings.reconcile.interval_seconds == 5
    assert settings.log.format == "json"


def test_secrets_come_from_the_environment_and_stay_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTENDED_API_KEY", SECRET)
    monkeypatch.setenv("PARADEX_JWT", "eyJhbGciOi.payload.signature")
    settings = load_settings(write(tmp_path, GOOD), require_secrets=True)
    account = settings.account("ext-main")
    assert account.api_key is not None
    assert account.api_key.get_secret_value() == SECRET
    for text in (repr(settings), str(settings), repr(account), str(settings.model_dump())):
        assert SECRET not in text


def test_database_password_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEKEEPER_DATABASE_URL", "postgresql://sk:hunter2secret@db/sk")
    settings = load_settings()
    assert "hunter2secret" not in repr(settings)
    assert settings.database.display_url() == "postgresql://sk:***@db/sk"
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"


def error_of(tmp_path: Path, text: str, *, require_secrets: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), require_secrets=require_secrets)
    assert info.value.exit_code == 2
    return info.value.message


def test_unknown_key_names_the_file_and_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("interval_seconds = 30", "interval_second = 30"))
    assert str(tmp_path / "statekeeper.toml") in message
    assert "reconcile.interval_second: unknown key" in message
    assert "interval_seconds" in message  # the known keys are listed


def test_unknown_key_in_an_account(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('venue = "paradex"', 'venue = "paradex"\nwsurl = "x"'))
    assert "accounts[1].wsurl: unknown key" in message


def test_unknown_section(tmp_path: Path) -> None:
    assert "reconciliation: unknown key" in error_of(tmp_path, GOOD + "\n[reconciliation]\nheal = true\n")


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('venue = "extended"', 'venue = "binance"'))
    assert "accounts[0].venue" in message and "extended" in message


def test_missing_secret_variable_names_key_file_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTENDED_API_KEY", SECRET)
    monkeypatch.delenv("PARADEX_JWT", raising=False)
    message = error_of(tmp_path, GOOD, require_secrets=True)
    assert str(tmp_path / "statekeeper.toml") in message
    assert "accounts[1].api_key_env" in message
    assert "PARADEX_JWT" in message and "is not set" in message


def test_empty_secret_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTENDED_API_KEY", "  ")
    monkeypatch.setenv("PARADEX_JWT", "x")
    assert "is empty" in error_of(tmp_path, GOOD, require_secrets=True)


def test_secret_in_the_file_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('api_key_env = "EXTENDED_API_KEY"', f'api_key_env = "EXTENDED_API_KEY"\napi_key = "{SECRET}"')
    message = error_of(tmp_path, text)
    assert "accounts[0]" in message and "environment variable" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "url",
    ["mysql://root:hunter2secret@db/x", "postgresql://sk:hunter2secret@db", "not a url", "postgresql://h:port/db"],
)
def test_bad_database_url_in_the_file(tmp_path: Path, url: str) -> None:
    message = error_of(tmp_path, GOOD.replace("postgresql://statekeeper@localhost/statekeeper", url))
    assert "database.url" in message
    assert "hunter2secret" not in message


def test_bad_database_url_in_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEKEEPER_DATABASE_URL", "http://sk:hunter2secret@db/sk")
    message = error_of(tmp_path, GOOD)
    assert message.startswith("environment variable STATEKEEPER_DATABASE_URL:")
    assert "hunter2secret" not in message


def test_unknown_nested_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEKEEPER_DATABASE_URI", "postgresql://x@y/z")
    with pytest.raises(ConfigError, match="environment variable STATEKEEPER_DATABASE_URI: unknown key"):
        load_settings()


def test_bad_ws_url(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("wss://ws.api.testnet.paradex.trade/v1", "https://wrong/v1"))
    assert "accounts[1].ws_url" in message and "wss://" in message


def test_duplicate_account_names(tmp_path: Path) -> None:
    assert "more than one account" in error_of(tmp_path, GOOD.replace('"pdx-main"', '"ext-main"'))


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("interval_seconds = 30", "interval_seconds = "))
    assert "invalid TOML" in message and "line" in message


def test_missing_file_given_explicitly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml")


# ------------------------------------------------------------------------------------------ through the CLI

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("interval_seconds", "intervall_seconds"), "reconcile.intervall_seconds: unknown key"),
        (GOOD, "EXTENDED_API_KEY"),  # its secret variable is not set
        (GOOD.replace("postgresql://statekeeper@localhost/statekeeper", "redis://x/y"), "database.url"),
        ("[[accounts]\n", "invalid TOML"),
    ],
)
def test_cli_exits_2_with_a_clear_message(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    result = runner.invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert expected in result.output.replace("\n", "")


def test_cli_config_check_shows_masked_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTENDED_API_KEY", SECRET)
    monkeypatch.setenv("PARADEX_JWT", "eyJhbGciOi.payload.signature")
    monkeypatch.setenv("STATEKEEPER_DATABASE_URL", "postgresql://sk:hunter2secret@db/sk")
    result = runner.invoke(app, ["config", "check", "--config", str(write(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    assert "ext-main" in result.output and "EXTENDED_API_KEY" in result.output
    assert SECRET not in result.output and "hunter2secret" not in result.output


def test_cli_missing_config_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    assert "not found" in result.output
