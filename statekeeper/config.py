"""Configuration: a TOML file (default ``statekeeper.toml``), every value overridable from the environment.

Environment variables are ``STATEKEEPER_<SECTION>_<KEY>``: ``STATEKEEPER_DATABASE_URL``,
``STATEKEEPER_RECONCILE_INTERVAL_SECONDS``, ``STATEKEEPER_LOG_FORMAT``. The environment wins over the file.

The loader is strict: an unknown key, a bad value or a missing secret variable is a :class:`ConfigError` that
names the key and where it came from (the file, or the environment variable), and the CLI exits with code 2.

Secrets are never read from the file. An account names the environment variable that holds its credential
(``api_key_env``) and the loader keeps the value as a :class:`~pydantic.SecretStr`, so it never appears in a
``repr``, a log line or an error.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from statekeeper.errors import ConfigError
from statekeeper.events import AccountName
from statekeeper.reconcile.diff import parse_tolerance

DEFAULT_CONFIG_FILE = Path("statekeeper.toml")
ENV_PREFIX = "STATEKEEPER_"


# ---------------------------------------------------------------------------------------------- URL checks


def _check_postgres_url(value: object) -> object:
    # The message never repeats the URL: it may hold a password.
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise ValueError("must be a string such as postgresql://user@host:5432/dbname")
    parts = urlsplit(value)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgresql", "postgres"}:
        raise ValueError("must be a postgresql:// URL, such as postgresql://user@host:5432/dbname")
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        raise ValueError("must name a database, such as postgresql://user@host:5432/dbname")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    # asyncpg takes postgresql:// and postgres://; a SQLAlchemy driver suffix is dropped.
    return SecretStr(value.replace(parts.scheme + "://", scheme + "://", 1))


def _url_check(schemes: tuple[str, ...]) -> BeforeValidator:
    def check(value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("must be a URL string")
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"must be a complete {' or '.join(s + '://' for s in schemes)} URL")
        return value

    return BeforeValidator(check)


PostgresUrl = Annotated[SecretStr, BeforeValidator(_check_postgres_url)]
WebSocketUrl = Annotated[str, _url_check(("wss", "ws"))]
HttpUrl = Annotated[str, _url_check(("https", "http"))]
EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)]


# ------------------------------------------------------------------------------------------------ sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    """Where the event log and projections live."""

    url: PostgresUrl | None = Field(
        default=None,
        description="PostgreSQL URL. With none (and no STATEKEEPER_DATABASE_URL), an embedded server is started.",
    )
    data_dir: Path = Field(
        default=Path(".statekeeper"),
        description="Directory of the embedded PostgreSQL server's data (used only when no URL is set).",
    )
    pool_size: int = Field(default=10, ge=1, le=1000, description="Connections in the pool, per process.")

    def display_url(self) -> str | None:
        """The URL with any password masked, for messages and logs."""
        return None if self.url is None else redact_url(self.url.get_secret_value())


class AccountSettings(_Section):
    """One account on one venue."""

    name: AccountName = Field(description="The account key used everywhere in SQL.")
    venue: Literal["extended", "paradex"] = Field(description="The venue the account lives on.")
    api_key_env: EnvVarName = Field(
        description="Name of the environment variable that holds the credential "
        "(Extended: the API key; Paradex: a JWT, such as a read-only token).",
    )
    mode: Literal["stream", "rest"] = Field(
        default="stream",
        description="stream: the private WebSocket stream (REST for snapshots, backfills and fallback); "
        "rest: REST polling only, for a venue or account without a usable stream.",
    )
    ws_url: WebSocketUrl | None = Field(default=None, description="Override of the venue's stream URL.")
    rest_url: HttpUrl | None = Field(default=None, description="Override of the venue's REST base URL.")
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _no_secret_in_file(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "api_key" in data:
            raise ValueError(
                "api_key is not read from configuration: put the credential in an environment variable "
                "and give its name in api_key_env"
            )
        return data


MARK_TOLERANCE = "1%"
DEFAULT_TOLERANCES: dict[str, str] = dict.fromkeys(
    (
        "equity", "available_for_trade", "available_for_withdrawal", "unrealised_pnl", "initial_margin",
        "maintenance_margin", "margin_ratio", "exposure", "leverage", "mark_price", "value", "liquidation_price",
        "margin", "free_collateral", "total_collateral", "margin_cushion",
    ),
    MARK_TOLERANCE,
)  # fmt: skip
"""Fields that move with the mark prices, and the difference tolerated on them: 1% of the entity's scale (a
position's notional value, a balance's or the account's equity; a ratio's own value). Every other field
(quantities, prices of orders, statuses, ids) must be equal."""


class ReconcileSettings(_Section):
    """Periodic verification against the venues' REST APIs."""

    interval_seconds: float = Field(default=60.0, gt=0, le=86_400, description="Seconds between passes.")
    heal: bool = Field(
        default=False,
        description="Append a reconciliation snapshot event for each discrepancy found (and the fills and funding "
        "payments missing from the log), then check again.",
    )
    tolerances: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_TOLERANCES),
        description='Per field, the difference tolerated: an amount ("0.01", "0": exact) or a share of the '
        'entity\'s scale ("1%"); the given ones replace the defaults (the mark-dependent figures, "1%"), the others '
        "stay.",
    )
    race_window_seconds: float = Field(
        default=2.0, ge=0, le=600,
        description="After a REST answer, time given to the stream to deliver the same changes before comparing.",
    )  # fmt: skip
    rounds: int = Field(
        default=4, ge=2, le=20,
        description="Most REST answers per pass: a difference is a discrepancy once two answers in a row confirm it; "
        "an entity that keeps changing while it is compared is left for the next pass.",
    )  # fmt: skip
    history_lookback_seconds: float = Field(
        default=86_400.0, gt=0, le=3650 * 86_400,
        description="How far back fills and funding payments are compared with the venue's history.",
    )  # fmt: skip
    history_overlap_seconds: float = Field(
        default=600.0, ge=0, le=86_400,
        description="The daemon's later passes compare fills and funding from this long (venue time) before the "
        "newest item an earlier pass verified, rather than over the whole lookback.",
    )  # fmt: skip
    timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="A pass that takes longer fails (nothing is healed)."
    )

    @field_validator("tolerances", mode="before")
    @classmethod
    def _tolerances(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        checked = {}
        for name, tolerance in value.items():
            text = str(tolerance) if isinstance(tolerance, int | str) and not isinstance(tolerance, bool) else None
            if text is None:
                raise ValueError(f'{name}: a tolerance is a string: an amount ("0.01") or a percentage ("1%")')
            try:
                parse_tolerance(text)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            checked[str(name)] = text
        return {**DEFAULT_TOLERANCES, **checked}


class IngestSettings(_Section):
    """The ingest daemon (``statekeeper run``)."""

    metrics_host: str = Field(default="127.0.0.1", description="Address of the /healthz and /metrics server.")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="Its port; 0 picks a free one.")
    queue_size: int = Field(
        default=50_000, ge=100, le=10_000_000,
        description="Frames buffered per account while the database is slow or down; past it, the session ends "
        "(recorded as a backpressure close) and is resynced once the buffer drains.",
    )  # fmt: skip
    batch_size: int = Field(default=2_000, ge=1, le=100_000, description="Most items appended in one transaction.")
    shutdown_grace_seconds: float = Field(
        default=10.0, gt=0, le=600, description="On SIGTERM/SIGINT: time to flush and close sessions."
    )
    reconnect_initial_seconds: float = Field(default=0.5, gt=0, le=60, description="First reconnect delay ceiling.")
    reconnect_max_seconds: float = Field(default=60.0, gt=0, le=3600, description="Longest reconnect delay.")
    healthy_after_seconds: float = Field(
        default=60.0, gt=0, le=86_400, description="A session up this long resets the reconnect backoff."
    )
    fallback_after_failures: int = Field(
        default=5, ge=1, le=1000, description="Failed stream sessions in a row before REST polling takes over."
    )
    poll_interval_seconds: float = Field(
        default=10.0, gt=0, le=86_400, description='REST polling period (mode = "rest" and the fallback).'
    )
    funding_poll_interval_seconds: float = Field(
        default=3600.0, gt=0, le=86_400, description="Period of REST-only funding polls (Extended)."
    )
    backfill_from: AwareDatetime | None = Field(
        default=None,
        description="Where the first backfill of an account starts (an RFC 3339 time); default: all the history "
        "the venue serves.",
    )
    drain_timeout_seconds: float = Field(
        default=5.0, gt=0, le=120, description="Time for a venue to finish closing a session being ended."
    )
    resolve_interval_seconds: float = Field(
        default=5.0, gt=0, le=86_400,
        description="How often orders a snapshot no longer lists (status closed_unconfirmed) are fetched by id "
        "over REST for their final state.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _ordered(self) -> IngestSettings:
        if self.reconnect_initial_seconds > self.reconnect_max_seconds:
            raise ValueError(
                f"reconnect_initial_seconds ({self.reconnect_initial_seconds:g}) is more than "
                f"reconnect_max_seconds ({self.reconnect_max_seconds:g})"
            )
        return self


class ProjectorSettings(_Section):
    """The projector workers (``statekeeper run`` and ``statekeeper project``)."""

    workers: int = Field(
        default=1, ge=0, le=64,
        description="Projector workers (0: none; `statekeeper run` then only ingests), in the daemon's child "
        "process with `separate_process`. Workers in every process divide the accounts between them.",
    )  # fmt: skip
    separate_process: bool = Field(
        default=True,
        description="When `statekeeper run` both ingests and projects: run its projector workers in a child "
        "process (restarted if it dies, stopped with the daemon), so that ingest and projectors do not share one "
        "event loop, and rows become visible sooner (docs/projections.md). false: in the daemon's own process.",
    )  # fmt: skip
    batch_size: int = Field(default=2_000, ge=1, le=100_000, description="Most events applied in one transaction.")
    poll_interval_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="Longest wait for new events when no notification arrives."
    )
    rebalance_interval_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="How often workers check which accounts are theirs."
    )


class LogSettings(_Section):
    """Logging."""

    format: Literal["text", "json"] = Field(
        default="text", description="text for a terminal, json for one JSON object per line."
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="The lowest level logged.")


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    database: DatabaseSettings = DatabaseSettings()
    accounts: tuple[AccountSettings, ...] = ()
    reconcile: ReconcileSettings = ReconcileSettings()
    ingest: IngestSettings = IngestSettings()
    projector: ProjectorSettings = ProjectorSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init arguments; the environment overrides them.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _unique_accounts(self) -> Settings:
        seen: set[str] = set()
        for index, account in enumerate(self.accounts):
            if account.name in seen:
                raise ValueError(f"accounts[{index}].name: {account.name!r} is used by more than one account")
            seen.add(account.name)
        return self

    def account(self, name: str) -> AccountSettings:
        for account in self.accounts:
            if account.name == name:
                return account
        raise ConfigError(f"no account named {name!r} in the configuration")


# ------------------------------------------------------------------------------------------------- loading


def redact_url(url: str) -> str:
    """Mask the password of a URL: ``postgresql://user:***@host/db``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(f"{path}: configuration file cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None


def _key(name: str) -> str:
    """A key as the message shows it: quoted as in TOML when it is not a bare key (a line break, a space...)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{_key(part)}" if out else _key(str(part)))
    return out or "(top level)"


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] | None = Settings
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    if model is None:
        return []
    return sorted(name for name, f in model.model_fields.items() if not f.exclude)


def _env_name(loc: tuple[int | str, ...]) -> str | None:
    if not loc or not isinstance(loc[0], str):
        return None
    if len(loc) == 1:
        return f"{ENV_PREFIX}{loc[0]}".upper()
    if len(loc) == 2 and isinstance(loc[1], str):
        return f"{ENV_PREFIX}{loc[0]}_{loc[1]}".upper()
    return None


def _describe(error: ValidationError, origin: str, environ: Mapping[str, str]) -> str:
    lines = []
    upper_env = {k.upper() for k in environ}
    for item in error.errors(include_url=False, include_input=False):
        loc = tuple(item["loc"])
        env = _env_name(loc)
        where = f"environment variable {env}" if env and env in upper_env else f"{origin}: {_format_loc(loc)}"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            message = "unknown key" + (f" (known keys: {', '.join(allowed)})" if allowed else "")
        else:
            message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


def load_settings(
    path: Path | None = None,
    *,
    require_secrets: bool = False,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load the configuration.

    ``path`` is the file given on the command line; it must exist. Without one, ``statekeeper.toml`` in the
    current directory is read if it exists, and the defaults plus the environment apply otherwise.
    With ``require_secrets``, every account's credential variable must be set and non-empty.
    """
    env = os.environ if environ is None else environ
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    data = _read_toml(path) if path is not None else {}
    origin = str(path) if path is not None else "configuration (no file)"
    # A top-level key such as _env_file or _cli_parse_args would be taken by pydantic-settings as an argument of
    # its own (read another file, parse the command line): the file may only hold sections.
    for key in data:
        if key.startswith("_"):
            raise ConfigError(f"{origin}: {_key(key)}: unknown key (known keys: {', '.join(_allowed_keys((key,)))})")
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, env)) from None
    except SettingsError as exc:  # a section or list given in the environment that is not JSON
        found = re.search(r'field "([^"]+)"', str(exc))
        variable = f"{ENV_PREFIX}{found.group(1)}".upper() if found else f"a {ENV_PREFIX} variable"
        raise ConfigError(f"environment variable {variable}: not valid JSON (sections and lists are JSON)") from None
    if require_secrets:
        settings = resolve_secrets(settings, origin=origin, environ=env)
    return settings


def resolve_secrets(settings: Settings, *, origin: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Read each account's credential from the variable its ``api_key_env`` names."""
    env = os.environ if environ is None else environ
    accounts = []
    for index, account in enumerate(settings.accounts):
        value = env.get(account.api_key_env, "")
        if not value.strip():
            state = "is empty" if account.api_key_env in env else "is not set"
            raise ConfigError(
                f"{origin}: accounts[{index}].api_key_env: the environment variable {account.api_key_env} "
                f"(credential of account {account.name!r}) {state}"
            )
        accounts.append(account.model_copy(update={"api_key": SecretStr(value.strip())}))
    return settings.model_copy(update={"accounts": tuple(accounts)})
