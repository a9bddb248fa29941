"""Per-client request rate limits for the server: a token bucket per API key name (or per client address when
the server has no keys), refilled at `per_minute` requests per minute and holding at most `burst`. A request
that finds its bucket empty gets 429 with a `Retry-After` of the seconds until its next token, before its body
is read. Only POST requests (the ones that make images) spend tokens.

Pure ASGI middleware; it sits inside ApiKeyAuth, which records the key name in the request's scope state.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fewstep.runtime.asgi_types import ASGIApp, Receive, Scope, Send
from fewstep.runtime.server_guard import openai_error, send_json

MAX_CLIENTS = 10_000  # buckets kept for client addresses (keyless servers); the least recently seen go first


@dataclass(frozen=True)
class RateLimit:
    per_minute: float  # sustained requests per minute per client
    burst: int  # requests a client may make at once after a quiet spell

    def __post_init__(self) -> None:
        if not (self.per_minute > 0 and math.isfinite(self.per_minute)) or self.burst < 1:
            raise ValueError(f"rate limit: per_minute must be > 0 and burst >= 1; got {self.per_minute}, {self.burst}")

    @classmethod
    def of(cls, per_minute: float, burst: int | None = None) -> RateLimit:
        """Default burst: ten seconds' worth of requests, at least one."""
        return cls(per_minute, burst if burst is not None else max(1, math.ceil(per_minute / 6)))


class TokenBuckets:
    """One bucket per client; `take(client)` -> 0.0 when allowed, else the seconds until a token is due."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic):
        self.limit, self.clock = limit, clock
        self.rate = limit.per_minute / 60.0  # tokens per second
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, when)

    def take(self, client: str) -> float:
        now = self.clock()
        tokens, then = self._buckets.pop(client, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


class RateLimiter:
    """429 `rate_limited` for a client whose bucket is empty; the client is the API key name, else its address."""

    def __init__(self, app: ASGIApp, limit: RateLimit, clock: Callable[[], float] = time.monotonic):
        self.app, self.buckets = app, TokenBuckets(limit, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        key = state.get("api_key")
        client = f"key:{key}" if key not in (None, "-") else f"addr:{(scope.get('client') or ('?', 0))[0]}"
        wait = self.buckets.take(client)
        if wait > 0:
            state["reject"] = "rate_limited"
            limit = self.buckets.limit
            message = (f"rate limit of {limit.per_minute:g} requests per minute (burst {limit.burst}) reached; "
                       f"retry in {math.ceil(wait)} s")  # fmt: skip
            await send_json(send, 429, openai_error(message, 429, "rate_limited"),
                            [("retry-after", str(math.ceil(wait)))])  # fmt: skip
            return
        await self.app(scope, receive, send)
