"""The ASGI callable's types, for the server's pure-ASGI middleware (server_guard.py).

Pure ASGI rather than Starlette's BaseHTTPMiddleware: the endpoint keeps seeing the client's disconnect (the
server drops the work of a client that left) and nothing is buffered on the way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
