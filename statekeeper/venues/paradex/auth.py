"""Paradex JWTs: the bearer token of every REST call and of the stream's ``auth`` request.

Two sources (DESIGN.md section 2):

* :class:`StaticTokenProvider`: a long-lived read-only token created in the Paradex UI (Key Management) or with
  ``POST /account/tokens``, given in the environment. It cannot be refreshed.
* :class:`SdkTokenProvider`: JWTs minted from a Starknet L2 key by the official ``paradex-py`` SDK, an optional
  extra (``pip install 'statekeeper[paradex]'``), imported only when such a provider is built. Paradex JWTs
  live 5 minutes and the docs advise refreshing after 3; the provider reads the token's ``exp`` claim (decoded,
  not verified: only Paradex verifies it) and mints a new one ``refresh_margin`` seconds before it expires.

Tokens are :class:`~pydantic.SecretStr` everywhere, registered with the log masker as soon as they are known, and
never part of a message, an error or a ``repr`` (invariant 10).

paradex-py 0.8.2's API for a JWT (``paradex_l2.py``, ``api/api_client.py``, ``account/account.py``):
``ParadexL2(env, l2_private_key, l2_address, ws_enabled=False)`` fetches ``GET /system/config``, builds a
``SubkeyAccount`` and runs ``api_client.init_account()``, which calls ``api_client.auth()``: that signs the
SNIP-12 ``Request`` message (``POST /v1/auth``, timestamp, expiry = timestamp + 24 h) with the L2 key, posts it
to ``/v1/auth/{hex(l2_public_key)}`` and stores the answer's ``jwt_token`` with ``account.set_jwt_token()``.
Calling ``api_client.auth()`` again mints a fresh JWT the same way. The SDK is synchronous (httpx), so minting
runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Final, Protocol

import orjson
from pydantic import SecretStr

from statekeeper.errors import ConfigError
from statekeeper.logs import mask_secrets, register_secret
from statekeeper.venues.errors import FatalVenueError, RetryableVenueError, VenueError, VenueResponseError
from statekeeper.venues.paradex.wire import VENUE

logger = logging.getLogger(__name__)

SDK_MODULE: Final = "paradex_py"
EXTRA: Final = "statekeeper[paradex]"
SDK_ENVIRONMENTS: Final = frozenset({"prod", "testnet", "nightly"})

DEFAULT_REFRESH_MARGIN: Final = 120.0
"""Seconds before ``exp`` a minted JWT is replaced: a 5-minute token is renewed after 3 minutes, as advised."""
OPAQUE_LIFETIME: Final = 300.0
"""The lifetime assumed for a minted token without a readable ``exp``: Paradex JWTs live 5 minutes."""


class TokenProvider(Protocol):
    """Where Paradex bearer tokens come from."""

    @property
    def refreshable(self) -> bool:
        """True when :meth:`invalidate` leads to a different token (the provider mints them)."""
        ...

    async def token(self) -> SecretStr:
        """A token to use now."""
        ...

    def invalidate(self) -> None:
        """The venue refused the last token: do not hand it out again (where there is another)."""
        ...


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), decoded without verifying; None if unreadable."""
    parts = token.split(".")
    if len(parts) != 3:  # header.payload.signature
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


def _as_datetime(seconds: float | None) -> datetime | None:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- static


class StaticTokenProvider:
    """A long-lived (read-only) token from the environment. Refusing it is fatal: nothing can replace it."""

    def __init__(self, token: SecretStr | str, *, clock: Callable[[], float] = time.time) -> None:
        value = (token.get_secret_value() if isinstance(token, SecretStr) else token).strip()
        if not value:
            raise ConfigError("the Paradex token is empty")
        register_secret(value)
        self._token = SecretStr(value)
        self._expires = jwt_expiry(value)
        self._clock = clock

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> StaticTokenProvider:
        """The token in environment variable ``name``: a :class:`ConfigError` when it is unset or empty."""
        env = os.environ if environ is None else environ
        value = env.get(name, "").strip()
        if not value:
            state = "is empty" if name in env else "is not set"
            raise ConfigError(f"the environment variable {name} (the Paradex token) {state}")
        return cls(value)

    @property
    def refreshable(self) -> bool:
        return False

    @property
    def expires_at(self) -> datetime | None:
        """When the token expires, if it says so."""
        return _as_datetime(self._expires)

    async def token(self) -> SecretStr:
        if self._expires is not None and self._clock() >= self._expires:
            expired = self.expires_at
            when = expired.isoformat() if expired else "an unreadable time"
            raise FatalVenueError(
                f"the Paradex token expired at {when}: create a new read-only token", venue=VENUE, status=401
            )
        return self._token

    def invalidate(self) -> None:
        """Nothing to do: there is no other token."""

    def __repr__(self) -> str:
        return f"StaticTokenProvider(token=SecretStr('**********'), expires_at={self.expires_at!r})"


# ------------------------------------------------------------------------------------------------ minted

Minter = Callable[[], Awaitable[str]]
"""Mints one JWT (and may raise a :class:`~statekeeper.venues.errors.VenueError` to say how it failed)."""


class SdkTokenProvider:
    """JWTs minted on demand, cached, and refreshed ``refresh_margin`` seconds before their ``exp``.

    ``mint`` is any coroutine function returning a fresh JWT; :meth:`from_l2_key` builds one on paradex-py.
    Concurrent callers share one mint. ``clock`` is the wall clock the ``exp`` claim is compared with.
    """

    def __init__(
        self,
        mint: Minter,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        opaque_lifetime: float = OPAQUE_LIFETIME,
        clock: Callable[[], float] = time.time,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._mint = mint
        self._refresh_margin = refresh_margin
        self._opaque_lifetime = opaque_lifetime
        self._clock = clock
        self._close = close
        self._token: SecretStr | None = None
        self._refresh_at = -math.inf
        self._expires: float | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_l2_key(cls, *, env: str, l2_address: str, l2_private_key: SecretStr, **options: Any) -> SdkTokenProvider:
        """Mint with paradex-py from a Starknet L2 key (a main-account key or a registered subkey).

        ``env`` is the SDK's environment (``prod``, ``testnet`` or ``nightly``); ``l2_address`` is the account's
        address (for a subkey: the main account it is registered under). Raises :class:`ConfigError` when the
        optional extra is not installed. Nothing is fetched until the first token is asked for.
        """
        if env not in SDK_ENVIRONMENTS:
            raise ConfigError(
                f"unknown Paradex environment {env!r}; expected one of {', '.join(sorted(SDK_ENVIRONMENTS))}"
            )
        if not l2_private_key.get_secret_value() or not l2_address:
            raise ConfigError("minting Paradex JWTs needs the L2 address and the L2 private key")
        sdk = import_sdk()
        register_secret(l2_private_key.get_secret_value())
        minter = _ParadexL2Minter(sdk, env=env, l2_address=l2_address, l2_private_key=l2_private_key)
        return cls(minter.mint, close=minter.close, **options)

    @property
    def refreshable(self) -> bool:
        return True

    @property
    def expires_at(self) -> datetime | None:
        """When the cached token expires (None before the first mint or for a token without ``exp``)."""
        return _as_datetime(self._expires)

    def _fresh(self) -> SecretStr | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def token(self) -> SecretStr:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._lock:
            fresh = self._fresh()  # another caller may have minted while this one waited
            if fresh is not None:
                return fresh
            return await self._mint_now()

    async def _mint_now(self) -> SecretStr:
        try:
            value = await self._mint()
        except VenueError:
            raise
        except Exception as exc:
            raise RetryableVenueError(
                f"minting a Paradex JWT failed: {type(exc).__name__}: {mask_secrets(str(exc))}"[:500], venue=VENUE
            ) from exc
        if not isinstance(value, str) or not value.strip():
            raise VenueResponseError("minting a Paradex JWT returned no token", venue=VENUE)
        value = value.strip()
        register_secret(value)
        now = self._clock()
        expires = jwt_expiry(value)
        lifetime = self._opaque_lifetime if expires is None else expires - now
        if lifetime <= 0:
            logger.warning(
                "the new Paradex JWT has already expired by the local clock (is the clock wrong?)",
                extra={"action": "jwt_expired_on_arrival", "venue": VENUE},
            )
            refresh_in = 0.0
        else:
            refresh_in = max(lifetime - self._refresh_margin, lifetime / 2)
        self._token = SecretStr(value)
        self._expires = expires
        self._refresh_at = now + refresh_in
        logger.info(
            "minted a Paradex JWT, valid for %.0f s, refreshing in %.0f s",
            lifetime,
            refresh_in,
            extra={"action": "jwt_minted", "venue": VENUE},
        )
        return self._token

    def invalidate(self) -> None:
        self._token = None
        self._expires = None
        self._refresh_at = -math.inf

    async def aclose(self) -> None:
        """Release what the minter holds (the SDK's HTTP client)."""
        if self._close is not None:
            await self._close()

    def __repr__(self) -> str:
        return f"SdkTokenProvider(refresh_margin={self._refresh_margin!r}, expires_at={self.expires_at!r})"


def import_sdk() -> ModuleType:
    """paradex-py, or a :class:`ConfigError` that names the extra to install."""
    try:
        return importlib.import_module(SDK_MODULE)
    except ImportError as exc:
        raise ConfigError(
            f"minting Paradex JWTs from a Starknet key needs the optional extra {EXTRA} "
            f"(pip install '{EXTRA}'); importing {SDK_MODULE} failed: {exc}"
        ) from None


class _ParadexL2Minter:
    """Mints with ``paradex_py.ParadexL2``: its constructor authenticates once, ``api_client.auth()`` again."""

    def __init__(self, sdk: ModuleType, *, env: str, l2_address: str, l2_private_key: SecretStr) -> None:
        self._sdk = sdk
        self._env = env
        self._address = l2_address
        self._key = l2_private_key
        self._client: Any = None

    async def mint(self) -> str:
        return await asyncio.to_thread(self._mint_blocking)

    def _mint_blocking(self) -> str:
        if self._client is None:
            self._client = self._sdk.ParadexL2(
                env=self._env,
                l2_private_key=self._key.get_secret_value(),
                l2_address=self._address,
                ws_enabled=False,
            )
        else:
            self._client.api_client.auth()
        token = getattr(self._client.account, "jwt_token", None)
        if not isinstance(token, str):
            raise VenueResponseError("paradex-py authenticated but holds no JWT", venue=VENUE)
        return token

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def __repr__(self) -> str:
        return f"_ParadexL2Minter(env={self._env!r}, l2_address={self._address!r})"
