"""What stands between the network and the server's endpoints: API keys, strict JSON, request ids and errors in
the OpenAI API's format.

Pure ASGI middleware (see asgi_types.py for why not BaseHTTPMiddleware). Order, outermost first:
RequestLog (request id, access log, metrics) -> ApiKeyAuth (401) -> StrictJson (body size, JSON that Python's
`json` would accept but a number field must not: NaN, Infinity, 10**5000, nesting 30,000 deep) -> the app.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewstep.core.fsio import read_regular_file
from fewstep.runtime.asgi_types import ASGIApp, Message, Receive, Scope, Send

API_KEYS_ENV = "FEWSTEP_API_KEYS"
MAX_JSON_DEPTH = 16  # the request schemas are flat; 16 leaves room for clients that wrap things
MAX_INT_DIGITS = 20  # 2**63 has 19 digits: every integer field fits
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("fewstep.access")


def openai_error(message: str, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI API's error body: what its clients parse into `APIStatusError.message`."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


# --- API keys ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKeys:
    """Named API keys. File (or FEWSTEP_API_KEYS) format: one `name:key` per line (or comma-separated in the
    variable); blank lines and `#` comments are skipped. The name is what logs and metrics show, never the key."""

    keys: tuple[tuple[str, bytes], ...] = field(repr=False)  # never in a log or a traceback

    @classmethod
    def parse(cls, text: str, source: str) -> ApiKeys:
        keys: list[tuple[str, bytes]] = []
        for n, line in enumerate(re.split(r"[\n,]", text), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, key = line.partition(":")
            name, key = name.strip(), key.strip()
            if not sep or not name or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
                raise ValueError(f"{source}, entry {n}: expected `name:key` with a name of letters, digits, . _ -")
            if len(key) < 16:
                raise ValueError(f"{source}, key {name!r}: keys must be at least 16 characters (got {len(key)}); make "
                                 "one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")  # fmt: skip
            if name in {k for k, _ in keys}:
                raise ValueError(f"{source}: the key name {name!r} appears twice")
            keys.append((name, key.encode()))
        if not keys:
            raise ValueError(f"{source} has no keys (one `name:key` per line)")
        return cls(tuple(keys))

    @classmethod
    def load(cls, path: str | Path | None, environ: dict[str, str] | None = None) -> ApiKeys | None:
        """Keys from `path`, else from FEWSTEP_API_KEYS, else None (no authentication)."""
        env = os.environ if environ is None else environ
        if path is not None:
            return cls.parse(read_regular_file(path, max_bytes=1 << 20, what="API key file").decode(), str(path))
        if env.get(API_KEYS_ENV):
            return cls.parse(env[API_KEYS_ENV], API_KEYS_ENV)
        return None

    def name_of(self, presented: str) -> str | None:
        """The name of the key presented, compared in constant time against every key (the time taken says
        neither which key nor how much of one matched)."""
        given = presented.encode()
        found = None
        for name, key in self.keys:
            if hmac.compare_digest(given, key):
                found = name
        return found


class ApiKeyAuth:
    """401 with `WWW-Authenticate: Bearer` (as the OpenAI API answers) unless `Authorization: Bearer KEY` names a
    known key; paths in `open_paths` (health probes, the web page) need none."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, open_paths: frozenset[str]):
        self.app, self.keys, self.open = app, keys, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)  # OPTIONS: CORS preflights carry no credentials
            return
        auth = _header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        name = self.keys.name_of(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if name is None:
            message = ("You didn't provide an API key. Send it as `Authorization: Bearer KEY`." if not auth
                       else "Incorrect API key provided.")  # fmt: skip
            scope.setdefault("state", {}).update(api_key="-", reject="unauthorized")
            await send_json(send, 401, openai_error(message, 401, "invalid_api_key"),
                            [("www-authenticate", 'Bearer realm="fewstep"')])  # fmt: skip
            return
        scope.setdefault("state", {})["api_key"] = name
        await self.app(scope, receive, send)


# --- strict JSON ------------------------------------------------------------------------------------------------


class BadJson(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise BadJson(f"{name} is not a number JSON allows; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadJson(f"{text[:32]} is too large for a number field")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadJson(f"an integer of {len(text)} digits is too large for any field (at most {MAX_INT_DIGITS})")
    return int(text)


def json_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text, without parsing it (brackets inside strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def check_json(body: bytes) -> None:
    """Raise BadJson with the reason when `body` is not JSON a request may carry."""
    if json_depth(body) > MAX_JSON_DEPTH:
        raise BadJson(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except BadJson:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise BadJson(f"the body is not valid JSON ({str(e)[:120]})") from None


class StrictJson:
    """Reads a POST body (refusing more than `max_bytes` with 413, with or without a Content-Length), checks it
    with `check_json` (400 on failure) and hands it on unchanged. An empty body goes on (the schema says 422)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        too_big = openai_error(f"the request body is larger than {self.max_bytes} bytes", 413, "body_too_large")
        state = scope.setdefault("state", {})
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            state["reject"] = "body_too_large"
            await send_json(send, 413, too_big)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                state["reject"] = "body_too_large"
                await send_json(send, 413, too_big)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        # every POST body, whatever its content type says: FastAPI parses one without a content type as JSON too,
        # and every endpoint takes JSON
        try:
            if body:
                check_json(body)
        except BadJson as e:
            state["reject"] = "invalid_json"
            await send_json(send, 400, openai_error(str(e), 400, "invalid_json"))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect the endpoint watches for

        await self.app(scope, replay, send)


# --- request ids and the access log -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, for the metrics."""

    path: str  # the route (`/v1/models/{name}`), never a client's raw path: metrics labels stay bounded
    status: int
    seconds: float
    key: str  # API key name, "-" without one
    model: str  # the model it asked for, "-" when none
    reason: str | None  # why it was refused (a 4xx/5xx), e.g. "queue_full", "rate_limited"; None when answered


# why a request was refused, when the code that refused it did not say
REASONS = {
    400: "invalid", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
    413: "body_too_large", 422: "invalid", 429: "queue_full", 499: "client_gone", 503: "unavailable", 504: "timeout",
}  # fmt: skip


class RequestLog:
    """Gives every request an id (the client's `X-Request-ID` when it is a sane one, else a new one), returns it
    in the response's `X-Request-ID`, writes one JSON line per request to the `fewstep.access` logger and hands a
    RequestRecord to `observe` for the metrics. Inner layers tell it the model (`state["model"]`) and why a
    request was refused (`state["reject"]`)."""

    def __init__(self, app: ASGIApp, observe: Callable[[RequestRecord], None], path_label: Callable[[str], str]):
        self.app, self.observe, self.path_label = app, observe, path_label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = [500]  # what the client saw if the app raised before answering

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            reason = None
            if status[0] >= 400:
                reason = state.get("reject") or REASONS.get(status[0], "error" if status[0] >= 500 else "other")
            record = RequestRecord(self.path_label(scope["path"]), status[0], seconds, state.get("api_key", "-"),
                                   str(state.get("model", "-")), reason)  # fmt: skip
            self.observe(record)
            if access_log.isEnabledFor(logging.INFO):
                line = {
                    "ts": round(time.time(), 3),
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope["path"][:200],
                    "status": status[0],
                    "seconds": round(seconds, 4),
                    "key": record.key,
                    "model": record.model,
                }
                if reason:
                    line["reason"] = reason
                access_log.info(json.dumps(line))
