"""Paradex token providers: a static read-only token, JWTs minted and refreshed ahead of expiry, the SDK extra."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from pathlib import Path
from uuid import uuid4

import pytest
from pydantic import SecretStr

from statekeeper.errors import ConfigError
from statekeeper.logs import mask_secrets, register_secret
from statekeeper.venues.errors import FatalVenueError, NonRetryableVenueError, RetryableVenueError, VenueResponseError
from statekeeper.venues.paradex.auth import (
    DEFAULT_REFRESH_MARGIN,
    SdkTokenProvider,
    StaticTokenProvider,
    TokenProvider,
    jwt_expiry,
)

PROTOCOLS = Path(__file__).parent / "fixtures" / "protocols" / "paradex"


def make_jwt(exp: object, **claims: object) -> str:
    """A JWT-shaped token (the signature is not checked by anyone here)."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    payload = {"sub": "0x495d", "jti": uuid4().hex, **claims} | ({} if exp is None else {"exp": exp})
    return f"{part({'alg': 'ES384', 'typ': 'JWT'})}.{part(payload)}.{uuid4().hex}"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Minter:
    """Hands out the given tokens in turn and counts the calls."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.tokens.pop(0)


# ------------------------------------------------------------------------------------------------- claims


def test_jwt_expiry() -> None:
    assert jwt_expiry(make_jwt(1_800_000_300)) == 1_800_000_300.0
    assert jwt_expiry(make_jwt(1_800_000_300.5)) == 1_800_000_300.5
    assert jwt_expiry(make_jwt(None)) is None
    for not_a_jwt in ("", "abc", "a.b", "a.b.c.d", "a.!!!.c", "a.bm90IGpzb24.c", make_jwt("soon"), make_jwt(True)):
        assert jwt_expiry(not_a_jwt) is None


def test_the_docs_auth_answer_carries_an_opaque_example_token() -> None:
    """``POST /auth`` answers ``{"jwt_token": …}``; the docs' token has a placeholder payload: no ``exp``."""
    token = json.loads((PROTOCOLS / "rest_auth_response.schema_example.json").read_text())["jwt_token"]
    assert token.startswith("eyJ")
    assert jwt_expiry(token) is None


# ------------------------------------------------------------------------------------------------- static


async def test_static_token() -> None:
    value = make_jwt(None)
    provider: TokenProvider = StaticTokenProvider(SecretStr(f"  {value}\n"))
    assert (await provider.token()).get_secret_value() == value
    provider.invalidate()
    assert (await provider.token()).get_secret_value() == value
    assert provider.refreshable is False
    assert value not in repr(provider)
    assert mask_secrets(f"bearer {value}") == "bearer ***"


async def test_static_token_from_the_environment() -> None:
    value = make_jwt(1_900_000_000)
    provider = StaticTokenProvider.from_env("PDX_TOKEN", {"PDX_TOKEN": value})
    assert (await provider.token()).get_secret_value() == value
    assert provider.expires_at is not None
    assert provider.expires_at.timestamp() == 1_900_000_000
    with pytest.raises(ConfigError, match=r"PDX_TOKEN .* is not set"):
        StaticTokenProvider.from_env("PDX_TOKEN", {})
    with pytest.raises(ConfigError, match=r"PDX_TOKEN .* is empty"):
        StaticTokenProvider.from_env("PDX_TOKEN", {"PDX_TOKEN": "  "})


async def test_an_expired_static_token_is_fatal_and_not_shown() -> None:
    value = make_jwt(1_800_000_000)
    provider = StaticTokenProvider(value, clock=Clock(1_800_000_000.0))
    with pytest.raises(FatalVenueError, match="expired at 2027-01-15T08:00:00") as info:
        await provider.token()
    assert value not in str(info.value)


# ------------------------------------------------------------------------------------------------- minted


async def test_minted_tokens_are_refreshed_ahead_of_expiry() -> None:
    clock = Clock()
    start = clock.now
    first, second = make_jwt(start + 300), make_jwt(start + 480)
    minter = Minter(first, second)
    provider = SdkTokenProvider(minter, clock=clock)
    assert provider.refreshable is True
    assert (await provider.token()).get_secret_value() == first
    clock.now = start + 300 - DEFAULT_REFRESH_MARGIN - 0.001  # 3 minutes in: still the same token
    assert (await provider.token()).get_secret_value() == first
    assert minter.calls == 1
    clock.now = start + 300 - DEFAULT_REFRESH_MARGIN  # two minutes before exp: a new one
    assert (await provider.token()).get_secret_value() == second
    assert minter.calls == 2
    assert provider.expires_at is not None
    assert provider.expires_at.timestamp() == start + 480
    assert first not in repr(provider)
    assert second not in repr(provider)
    assert mask_secrets(second) == "***"


async def test_invalidate_mints_a_new_token() -> None:
    clock = Clock()
    minter = Minter(make_jwt(clock.now + 300), make_jwt(clock.now + 300))
    provider = SdkTokenProvider(minter, clock=clock)
    first = await provider.token()
    provider.invalidate()
    assert await provider.token() != first
    assert minter.calls == 2


async def test_short_lived_and_opaque_tokens() -> None:
    clock = Clock()
    start = clock.now
    short, opaque, expired = make_jwt(start + 60), make_jwt(None), make_jwt(start - 5)
    minter = Minter(short, opaque, expired, make_jwt(start + 1000))
    provider = SdkTokenProvider(minter, clock=clock)
    assert (await provider.token()).get_secret_value() == short
    clock.now = start + 29.9  # a 60 s token is used for half its life, not refreshed at once
    assert (await provider.token()).get_secret_value() == short
    clock.now = start + 30
    assert (await provider.token()).get_secret_value() == opaque
    clock.now = start + 30 + 179.9  # no exp: Paradex's 5 minutes are assumed, refreshed after 3
    assert (await provider.token()).get_secret_value() == opaque
    clock.now = start + 30 + 180
    assert (await provider.token()).get_secret_value() == expired  # expired on arrival: used once, not cached
    assert (await provider.token()).get_secret_value() != expired
    assert minter.calls == 4


async def test_concurrent_callers_share_one_mint() -> None:
    minting, release = asyncio.Event(), asyncio.Event()
    calls = 0
    token = make_jwt(1_800_000_300)

    async def slow_mint() -> str:
        nonlocal calls
        calls += 1
        minting.set()
        await release.wait()
        return token

    provider = SdkTokenProvider(slow_mint, clock=Clock())
    waiting = [asyncio.create_task(provider.token()) for _ in range(5)]
    await asyncio.wait_for(minting.wait(), timeout=10)  # the first caller is minting; the others are queued behind it
    assert not any(task.done() for task in waiting)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*waiting), timeout=10)
    assert {r.get_secret_value() for r in results} == {token}
    assert calls == 1


async def test_minting_failures(caplog: pytest.LogCaptureFixture) -> None:
    secret = "pk-" + uuid4().hex

    async def broken() -> str:
        raise OSError(f"connection reset while signing with {secret}")

    register_secret(secret)
    with pytest.raises(RetryableVenueError, match="minting a Paradex JWT failed: OSError") as info:
        await SdkTokenProvider(broken).token()
    assert secret not in str(info.value)

    async def refused() -> str:
        raise NonRetryableVenueError("POST /auth: HTTP 400", venue="paradex")

    with pytest.raises(NonRetryableVenueError, match="HTTP 400"):
        await SdkTokenProvider(refused).token()

    async def empty() -> str:
        return " "

    with pytest.raises(VenueResponseError, match="no token"):
        await SdkTokenProvider(empty).token()

    clock = Clock()
    with caplog.at_level(logging.INFO, logger="statekeeper.venues.paradex.auth"):
        token = make_jwt(clock.now + 300)
        await SdkTokenProvider(Minter(token), clock=clock).token()
    assert token not in caplog.text
    assert any(getattr(record, "action", None) == "jwt_minted" for record in caplog.records)


# ------------------------------------------------------------------------------------------------- SDK


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "paradex_py", None)  # what an environment without paradex-py sees
    key = SecretStr("0x" + uuid4().hex)
    with pytest.raises(ConfigError, match=r"statekeeper\[paradex\]") as info:
        SdkTokenProvider.from_l2_key(env="prod", l2_address="0x495d", l2_private_key=key)
    assert "pip install 'statekeeper[paradex]'" in str(info.value)
    assert key.get_secret_value() not in str(info.value)


def test_sdk_arguments_are_checked_first() -> None:
    key = SecretStr("0x" + uuid4().hex)
    with pytest.raises(ConfigError, match="unknown Paradex environment 'mainnet'"):
        SdkTokenProvider.from_l2_key(env="mainnet", l2_address="0x495d", l2_private_key=key)
    with pytest.raises(ConfigError, match="needs the L2 address"):
        SdkTokenProvider.from_l2_key(env="testnet", l2_address="", l2_private_key=key)
