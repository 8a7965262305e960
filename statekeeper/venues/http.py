"""The HTTP client every venue's REST client uses: JSON over aiohttp, bounded retries, typed errors.

* 429 is retried after the venue's ``Retry-After`` (seconds or an HTTP date), up to a limit;
* 5xx, timeouts and connection failures are retried with capped exponential backoff and jitter;
* 401 and 403 raise :class:`FatalVenueError` at once; other 4xx raise :class:`NonRetryableVenueError`;
  statuses the caller expects (``ok_statuses``, e.g. Extended's 404 for a zero balance) are returned;
* when the attempts are spent, :class:`RetryableVenueError` says what happened last.

Headers (which carry the credentials) never appear in an error message; request URLs do, without them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Self

import aiohttp
import orjson

from statekeeper import __version__
from statekeeper.venues.errors import (
    FatalVenueError,
    NonRetryableVenueError,
    RetryableVenueError,
    VenueResponseError,
)

logger = logging.getLogger(__name__)

USER_AGENT = f"statekeeper/{__version__}"
MAX_ERROR_BODY = 300

Params = Mapping[str, str | int]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    """Tries in all, the first included."""
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    """A Retry-After longer than this is not waited for: the call fails as retryable instead."""
    jitter: float = 0.25
    """Each backoff delay is multiplied by a random factor in [1 - jitter, 1 + jitter]."""

    def backoff(self, attempt: int, rng: random.Random) -> float:
        delay: float = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return delay * rng.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: Mapping[str, str]
    url: str
    elapsed: float = 0.0

    def json(self) -> Any:
        """The body as JSON (orjson; callers that need exact numbers parse ``body`` themselves)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise VenueResponseError(f"GET {self.url}: the answer is not JSON ({exc})", status=self.status) from None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date. None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class VenueHttpClient:
    """GET requests to one venue's REST API, with retries and typed errors."""

    venue: str
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    session: aiohttp.ClientSession | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    _owns_session: bool = field(default=False, init=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self.session is not None:
            await self.session.close()
            self.session = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
            self._owns_session = True
        return self.session

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    async def get(
        self,
        path: str,
        params: Params | None = None,
        *,
        ok_statuses: Collection[int] = (200,),
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """GET ``path`` (relative to the base URL), retrying what is worth retrying.

        ``headers`` add to (or override) the client's own for this call, e.g. a bearer token that rotates.
        """
        url = self.url(path)
        request_headers = {"User-Agent": USER_AGENT, **self.headers, **(headers or {})}
        where = f"{self.venue} GET {path}"
        last_problem = "no attempt made"
        for attempt in range(1, self.retry.attempts + 1):
            started = time.monotonic()
            try:
                async with self._session().get(
                    url,
                    params=dict(params or {}),
                    headers=request_headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                    allow_redirects=False,
                ) as response:
                    body = await response.read()
                    status = response.status
                    answer_headers = dict(response.headers.items())
            except TimeoutError:
                last_problem = f"no answer within {self.timeout:g} s"
                delay = self.retry.backoff(attempt, self.rng)
            except aiohttp.ClientError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
                delay = self.retry.backoff(attempt, self.rng)
            else:
                answer = HttpResponse(status, body, answer_headers, url, time.monotonic() - started)
                if status in ok_statuses:
                    return answer
                excerpt = answer.text[:MAX_ERROR_BODY]
                if status in (401, 403):
                    raise FatalVenueError(
                        f"{where}: HTTP {status}, the credentials were refused: {excerpt}",
                        venue=self.venue,
                        status=status,
                    )
                if status == 429:
                    waited = retry_after_seconds(answer_headers.get("Retry-After"))
                    last_problem = "HTTP 429 (rate limited)"
                    if waited is not None and waited > self.retry.max_retry_after:
                        raise RetryableVenueError(
                            f"{where}: HTTP 429, the venue asks to wait {waited:.0f} s", venue=self.venue, status=429
                        )
                    delay = waited if waited is not None else self.retry.backoff(attempt, self.rng)
                elif status >= 500:
                    last_problem = f"HTTP {status}: {excerpt}"
                    delay = self.retry.backoff(attempt, self.rng)
                else:
                    raise NonRetryableVenueError(f"{where}: HTTP {status}: {excerpt}", venue=self.venue, status=status)
            if attempt < self.retry.attempts:
                logger.info(
                    "%s failed (%s), attempt %d of %d, retrying in %.2f s",
                    where,
                    last_problem,
                    attempt,
                    self.retry.attempts,
                    delay,
                    extra={"action": "rest_retry", "venue": self.venue},
                )
                await self.sleep(delay)
        raise RetryableVenueError(
            f"{where}: failed after {self.retry.attempts} attempts, last: {last_problem}", venue=self.venue
        )
