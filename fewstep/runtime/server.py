"""`fewstep serve`: an ASGI (FastAPI) server for real-time text-to-image on one or several engine bundles.

Endpoints: POST /v1/generate (PNG or JSON with base64), POST /v1/images/generations (OpenAI-compatible,
b64_json), GET /v1/models (OpenAI-compatible list), POST /v1/models/{name}/reload, GET /healthz, /readyz,
/metrics (Prometheus text), / (a one-page web UI). Requests name a model with `model` (default: the first);
models load when first asked for, each with its own queue and micro-batcher, within a memory budget
(model_pool.py). With API keys, every path
but the probes, the page and the API description (OPEN_PATHS) needs `Authorization: Bearer KEY` (401
otherwise); every request gets an `X-Request-ID` and one JSON access-log line; errors use the OpenAI API's
`{"error": {...}}` body; request bodies are strict JSON (no NaN/Infinity, no 10**5000, no deep nesting: 400)
and unknown fields are refused (422), see server_guard.py. Concurrent requests are micro-batched
(`batcher.py`); a full queue answers 429 with Retry-After, as does a client over its rate limit
(rate_limit.py); each request has a timeout (504); a client that
disconnects before its images are made costs no engine time (its job is dropped); request bodies over 64 KiB
are refused (413, chunked bodies too); shutdown stops taking work (503) and drains what was accepted. The
server holds no per-client state, so replicas behind a load balancer scale it out. Needs
`pip install 'fewstep[serve]'`; never torch.
"""

# no `from __future__ import annotations`: FastAPI resolves the route parameters' annotations at run time,
# and the request models are local to create_app
import asyncio
import base64
import html
import logging
import os
import signal
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from fewstep.core.errors import PromptTooLongError
from fewstep.runtime.batcher import BatchReport, Job, QueueFull
from fewstep.runtime.bench import png_bytes
from fewstep.runtime.generator import Generator
from fewstep.runtime.model_pool import (
    Batching,
    LoadedModel,
    ModelNotFound,
    ModelNotReloadable,
    ModelPool,
    ModelTooLarge,
    ModelUnavailable,
)
from fewstep.runtime.rate_limit import RateLimit, RateLimiter
from fewstep.runtime.server_guard import ApiKeyAuth, ApiKeys, RequestLog, RequestRecord, StrictJson, openai_error

MAX_PROMPT_CHARS = 2000  # long before the token limit; bounds what a request can make the server hold
MAX_BODY_BYTES = 64 * 1024
log = logging.getLogger("fewstep.serve")
# reachable without a key: health probes for load balancers, the web page (it asks for the key) and the API's
# description (no secret in it)
KNOWN_PATHS = frozenset({"/v1/generate", "/v1/images/generations", "/v1/models", "/healthz", "/readyz", "/metrics",
                         "/"})  # fmt: skip
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 8  # images per engine call
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # requests waiting; beyond this: 429 with Retry-After
    timeout_s: float = 30.0  # per request; beyond this: 504
    max_images: int = 4  # n per request
    api_keys: ApiKeys | None = None  # None: no authentication (the CLI allows that on loopback only)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    rate_limit: RateLimit | None = None  # requests per minute per API key (or client address); None: no limit
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get 413 (the schemas need ~5 KB at most)

    @property
    def batching(self) -> Batching:
        return Batching(self.max_batch, self.max_wait_ms, self.max_queue)


def _metrics(registry: Any, max_batch: int) -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram  # serve extra

    return {
        "requests": Counter(
            "fewstep_requests",
            "HTTP requests by endpoint, status, API key name and model ('-': none)",
            ["endpoint", "status", "key", "model"],
            registry=registry,
        ),
        "rejections": Counter(
            "fewstep_rejections",
            "refused requests by reason (queue_full, rate_limited, unauthorized, invalid, timeout, ...)",
            ["reason", "model", "key"],
            registry=registry,
        ),
        "queue": Gauge("fewstep_queue_depth", "requests waiting for the engine", ["model"], registry=registry),
        "loaded": Gauge(
            "fewstep_model_loaded", "1 while the model's engines are in memory", ["model"], registry=registry
        ),
        "memory": Gauge(
            "fewstep_model_memory_bytes",
            "what a loaded model counts against the memory budget",
            ["model"],
            registry=registry,
        ),
        "events": Counter(
            "fewstep_model_events", "model loads, reloads and evictions", ["model", "event"], registry=registry
        ),
        "batch": Histogram(
            "fewstep_batch_images",
            "images per engine call",
            ["model"],
            registry=registry,
            buckets=[b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch] + [float("inf")],
        ),
        "latency": Histogram("fewstep_request_seconds", "request latency", ["endpoint", "model"], registry=registry),
        "stage": Histogram(
            "fewstep_stage_seconds", "time per generation stage and engine call", ["model", "stage"], registry=registry
        ),
        "wait": Histogram(
            "fewstep_queue_wait_seconds", "time from arrival to the start of its batch", ["model"], registry=registry
        ),
        "dropped": Counter(
            "fewstep_dropped_requests",
            "requests whose client disconnected before its images",
            ["model"],
            registry=registry,
        ),
    }


class ClientGone(Exception):
    """The client disconnected while its request waited: nobody will read the answer."""


async def _disconnected(request: Any) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


def create_app(models: Generator | ModelPool, config: ServeConfig = ServeConfig()) -> Any:
    """The ASGI app around a loaded Generator (served as model "default") or a ModelPool of named bundles."""
    from fastapi import FastAPI, HTTPException, Request  # serve extra
    from fastapi.exceptions import RequestValidationError  # serve extra
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response  # serve extra
    from prometheus_client import CollectorRegistry, generate_latest  # serve extra
    from pydantic import BaseModel, ConfigDict, Field  # serve extra
    from starlette.exceptions import HTTPException as StarletteHTTPException  # serve extra

    pool = models if isinstance(models, ModelPool) else ModelPool.of_loaded("default", models, config.batching)
    registry = CollectorRegistry()
    metrics = _metrics(registry, config.max_batch)
    state = {"accepting": False}

    def on_batch(model: str, r: BatchReport) -> None:
        metrics["batch"].labels(model).observe(r.images)
        for stage, seconds in r.stage_times.items():
            metrics["stage"].labels(model, stage).observe(seconds)
        for wait in r.queue_wait:
            metrics["wait"].labels(model).observe(wait)

    def on_event(model: str, event: str) -> None:
        metrics["events"].labels(model, event).inc()

    pool.on_batch, pool.on_event = on_batch, on_event

    def reload_on_sighup() -> None:
        if not state["accepting"]:  # starting or draining: a reload now would race the start-up or the drain
            log.warning("SIGHUP ignored: the server is not serving yet, or is shutting down")
            return

        async def reload() -> None:
            try:
                for problem in await pool.reload_all():
                    log.warning("SIGHUP reload kept the old engines of %s", problem)
            except Exception:
                log.exception("SIGHUP reload failed")

        task = asyncio.ensure_future(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    reloads: set[asyncio.Future[None]] = set()

    @asynccontextmanager
    async def lifespan(_app):
        await pool.start()  # the default model (and preload ones) loaded before /readyz says ready
        with suppress(NotImplementedError, RuntimeError, ValueError):  # no SIGHUP (Windows) or not the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_on_sighup)
        state["accepting"] = True
        yield
        state["accepting"] = False  # new requests get 503 while accepted ones finish; SIGHUP is ignored from now
        for task in list(reloads):
            task.cancel()
        await pool.close(timeout=config.timeout_s)

    # FastAPI's own body limit wraps the whole app, outside the middleware: kept as a backstop at twice ours, so
    # that StrictJson answers first, in the OpenAI error format, with a request id, logged and counted
    app = FastAPI(title="fewstep", version="1", lifespan=lifespan, max_body_size=2 * config.max_body_bytes,
                  description=f"models: {', '.join(pool.specs)} (default {pool.default})")  # fmt: skip
    app.state.pool, app.state.metrics = pool, metrics

    # strict: no "2" for 2 nor true for 1; forbid: a misspelt field is an error, not a silent default
    strict = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    class GenerateRequest(BaseModel):
        model_config = strict
        prompt: str = Field(max_length=MAX_PROMPT_CHARS)
        negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
        seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
        steps: int | None = Field(default=None, ge=1, le=1000)
        guidance: float | None = Field(default=None, ge=0, le=30, strict=False)  # 3 as well as 3.0
        n: int = Field(default=1, ge=1, le=config.max_images)
        size: str | None = Field(default=None, max_length=16, description="the model's WxH only")
        response_format: str = Field(default="png", pattern="^(png|json)$")
        model: str | None = Field(default=None, max_length=64, description=f"default: {pool.default}")

    class OpenAIRequest(BaseModel):
        model_config = strict
        prompt: str = Field(max_length=MAX_PROMPT_CHARS)
        n: int = Field(default=1, ge=1, le=config.max_images)
        size: str | None = Field(default=None, max_length=16)
        response_format: str = Field(default="b64_json", pattern="^b64_json$")
        model: str | None = Field(default=None, max_length=64, description=f"default: {pool.default}")
        user: str | None = Field(default=None, max_length=200)
        quality: str | None = Field(default=None, max_length=32, description="accepted, ignored")
        style: str | None = Field(default=None, max_length=32, description="accepted, ignored")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException):
        code = getattr(e, "code", None)
        return JSONResponse(openai_error(str(e.detail), e.status_code, code), e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, e: RequestValidationError):
        # the message names the field and the rule, never echoes the value (a NaN would not even serialise)
        problems = [f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}"
                    for err in e.errors()[:5]]  # fmt: skip
        first = e.errors()[0]["loc"] if e.errors() else ()
        param = ".".join(str(p) for p in first if p != "body") or None
        return JSONResponse(openai_error("; ".join(problems), 422, "invalid_value", param), 422)

    def refuse(request: Request, status: int, message: str, reason: str, headers: dict[str, str] | None = None,
               code: str | None = None) -> HTTPException:  # fmt: skip
        request.state.reject = reason
        e = HTTPException(status, message, headers=headers)
        e.code = code or reason  # type: ignore[attr-defined]  # the OpenAI error body's `code`
        return e

    @asynccontextmanager
    async def held(request: Request, name: str | None):
        """The request's model, loaded if needed; 404 for an unknown name, 503 when it cannot be loaded now."""
        if not state["accepting"]:
            raise refuse(request, 503, "the server is shutting down", "shutting_down", {"Retry-After": "1"})
        # a metrics label: only the served names, so that clients cannot mint label values
        request.state.model = (name or pool.default) if name is None or name in pool.specs else "unknown"
        try:
            async with pool.use(name, timeout=config.timeout_s) as model:
                yield model
        except ModelNotFound as e:
            raise refuse(request, 404, e.args[0], "model_not_found") from None
        except ModelTooLarge as e:  # no Retry-After: retrying cannot help
            raise refuse(request, 503, str(e), "model_too_large") from None
        except ModelUnavailable as e:
            raise refuse(request, 503, str(e), "model_unavailable", {"Retry-After": "5"}) from None
        except TimeoutError:
            message = f"model {name or pool.default} is loading and was not ready within {config.timeout_s:g} s"
            raise refuse(request, 504, message + "; retry shortly", "timeout", {"Retry-After": "5"}) from None

    def check_size(request: Request, model: LoadedModel, size: str | None) -> None:
        h, w = model.gen.shape[1], model.gen.shape[2]
        if size not in (None, f"{w}x{h}"):
            raise refuse(request, 400, f"size must be {w}x{h} (model {model.name}'s only size); got {size!r}",
                         "invalid", code="invalid_size")  # fmt: skip

    async def images_or_gone(request: Request, model: LoadedModel, job: Job) -> np.ndarray:
        """The job's images; ClientGone (job dropped) if the client leaves first; TimeoutError after timeout_s."""
        submit = asyncio.ensure_future(model.batcher.submit(job))
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({submit, watch}, timeout=config.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if submit in done:
            return submit.result()
        submit.cancel()  # cancels the job's future: the batcher skips it, or discards its images
        if watch in done:
            metrics["dropped"].labels(model.name).inc()
            raise ClientGone
        raise TimeoutError

    async def run(request: Request, model: LoadedModel, prompts: list[str], seeds: list[int], steps: int | None,
                  guidance: float | None, negative: str | None) -> list[bytes]:  # fmt: skip
        try:
            model.gen.validate(prompts, seeds, steps, guidance, negative)
        except (ValueError, TypeError, PromptTooLongError) as e:
            raise refuse(request, 400, str(e), "invalid", code="invalid_value") from None
        job = Job(prompts, seeds, steps, guidance, negative)
        try:
            images = await images_or_gone(request, model, job)
        except QueueFull as e:
            raise refuse(request, 429, f"{e}; retry shortly", "queue_full", {"Retry-After": "1"}) from None
        except TimeoutError:
            raise refuse(request, 504, f"no image within {config.timeout_s:g} s; the server is overloaded",
                         "timeout") from None  # fmt: skip
        except ClientGone:
            raise refuse(request, 499, "client closed the request", "client_gone") from None  # nginx's code
        finally:
            metrics["queue"].labels(model.name).set(model.batcher.depth)
        return [png_bytes(im) for im in images]

    def observe(r: RequestRecord) -> None:
        metrics["requests"].labels(r.path, str(r.status), r.key, r.model).inc()
        metrics["latency"].labels(r.path, r.model).observe(r.seconds)
        if r.reason is not None:
            metrics["rejections"].labels(r.reason, r.model, r.key).inc()

    @app.post("/v1/generate", responses={200: {"content": {"image/png": {}}}})
    async def generate(req: GenerateRequest, request: Request):
        async with held(request, req.model) as model:
            check_size(request, model, req.size)
            seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(7), "little")
            seeds = [min(seed + i, 2**63 - 1) for i in range(req.n)]
            pngs = await run(request, model, [req.prompt] * req.n, seeds, req.steps, req.guidance,
                             req.negative_prompt)  # fmt: skip
            engine = model.gen.engine_entry.id
        if req.response_format == "png" and req.n == 1:
            return Response(pngs[0], media_type="image/png", headers={"X-Seed": str(seeds[0])})
        return {"images": [base64.b64encode(p).decode() for p in pngs], "seeds": seeds, "model": model.name,
                "engine": engine}  # fmt: skip

    @app.post("/v1/images/generations")
    async def openai_images(req: OpenAIRequest, request: Request):
        async with held(request, req.model) as model:
            check_size(request, model, req.size)
            seeds = [int.from_bytes(os.urandom(7), "little") for _ in range(req.n)]
            pngs = await run(request, model, [req.prompt] * req.n, seeds, None, None, None)
        return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(p).decode()} for p in pngs]}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": pool.describe()}

    @app.get("/v1/models/{name}")
    async def one_model(name: str, request: Request):
        for row in pool.describe():
            if row["id"] == name:
                return row
        raise refuse(request, 404, f"model {name[:64]!r} is not served here; models: {', '.join(pool.specs)}",
                     "model_not_found")  # fmt: skip

    @app.post("/v1/models/{name}/reload")
    async def reload_model(name: str, request: Request):
        """Load the model's bundle again (e.g. after a re-export) and switch new requests to it; requests already
        accepted finish on the old engines."""
        request.state.model = name if name in pool.specs else "unknown"
        if not state["accepting"]:
            raise refuse(request, 503, "the server is shutting down", "shutting_down", {"Retry-After": "1"})
        # a JSON content type: a browser cannot send one cross-origin without a CORS preflight, which the server
        # refuses by default, so a web page cannot make a visitor's loopback server reload
        if (request.headers.get("content-type") or "").split(";")[0].strip().lower() != "application/json":
            raise refuse(request, 415, "send the reload with `Content-Type: application/json` (an empty body or {})",
                         "invalid", code="unsupported_media_type")  # fmt: skip
        try:
            model = await pool.reload(name)
        except ModelNotFound as e:
            raise refuse(request, 404, e.args[0], "model_not_found") from None
        except ModelNotReloadable as e:
            raise refuse(request, 409, str(e), "model_not_reloadable") from None
        except ModelUnavailable as e:
            raise refuse(request, 503, str(e), "model_unavailable") from None
        return {"id": model.name, "engine": model.gen.engine_entry.id, "load_seconds": round(model.load_seconds, 3)}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not state["accepting"]:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        default_model = pool.models.get(pool.default)
        return {"status": "ready", "engine": default_model.gen.engine_entry.id if default_model else None,
                "models_loaded": sorted(pool.models), "queue_depth": pool.depth}  # fmt: skip

    @app.get("/metrics")
    async def prometheus():
        for name in pool.specs:
            m = pool.models.get(name)
            metrics["queue"].labels(name).set(m.batcher.depth if m else 0)
            metrics["loaded"].labels(name).set(1 if m else 0)
            metrics["memory"].labels(name).set(m.footprint if m else 0)
        return PlainTextResponse(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        text = resources.files("fewstep.runtime").joinpath("webui.html").read_text(encoding="utf-8")
        m = pool.models.get(pool.default)
        parts = [pool.default]
        if m is not None:
            parts = [m.gen.manifest.model.name, m.gen.engine_entry.id, f"guidance {m.gen.guidance_mode}"]
        about = " &middot; ".join(html.escape(x) for x in parts)
        options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in pool.specs)
        text = text.replace("{{AUTH}}", "true" if config.api_keys else "false")
        text = text.replace("{{ONE_MODEL}}", "hidden" if len(pool.specs) == 1 else "")
        return text.replace("{{MODEL_OPTIONS}}", options).replace("{{MODEL}}", about)

    def path_label(path: str) -> str:
        if path in KNOWN_PATHS:
            return path
        if path.startswith("/v1/models/"):
            return "/v1/models/{name}/reload" if path.endswith("/reload") else "/v1/models/{name}"
        return "other"

    # added innermost first; a request meets RequestLog -> CORS -> ApiKeyAuth -> RateLimiter -> StrictJson -> routes
    app.add_middleware(StrictJson, max_bytes=config.max_body_bytes)
    if config.rate_limit is not None:
        app.add_middleware(RateLimiter, limit=config.rate_limit)
    if config.api_keys is not None:
        app.add_middleware(ApiKeyAuth, keys=config.api_keys, open_paths=OPEN_PATHS)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware  # serve extra

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-request-id"],
                           expose_headers=["x-request-id", "x-seed", "retry-after"])  # fmt: skip
    app.add_middleware(RequestLog, observe=observe, path_label=path_label)
    return app
