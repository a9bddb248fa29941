"""Pure-ASGI middleware that counts requests by endpoint and status and times them.

Pure ASGI rather than Starlette's BaseHTTPMiddleware: the endpoint keeps seeing the client's disconnect (the
server drops the work of a client that left) and nothing is buffered on the way.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestMetrics:
    def __init__(self, app: ASGIApp, observe: Callable[[str, int, float], None], known_paths: set[str]):
        self.app, self.observe, self.known = app, observe, known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]  # what the client saw if the app raised before answering

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope["path"] if scope["path"] in self.known else "other"
            self.observe(path, status[0], time.perf_counter() - t0)
