"""`fewstep serve BUNDLE`: an ASGI (FastAPI) server for real-time text-to-image on an engine bundle.

Endpoints: POST /v1/generate (PNG or JSON with base64), POST /v1/images/generations (OpenAI-compatible,
b64_json), GET /healthz, /readyz, /metrics (Prometheus text), / (a one-page web UI). Concurrent requests are
micro-batched (`batcher.py`); a full queue answers 429 with Retry-After; each request has a timeout (504);
shutdown stops taking work (503) and drains what was accepted. The server holds no per-client state, so replicas
behind a load balancer scale it out. Needs `pip install 'fewstep[serve]'`; never torch.
"""

import asyncio
import base64
import html
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from .batcher import BatchReport, Job, MicroBatcher, QueueFull
from .bench import png_bytes
from .generator import Generator
from .text import PromptTooLongError

MAX_PROMPT_CHARS = 2000  # long before the token limit; bounds what a request can make the server hold
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 8  # images per engine call
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # requests waiting; beyond this: 429 with Retry-After
    timeout_s: float = 30.0  # per request; beyond this: 504
    max_images: int = 4  # n per request


def _metrics(registry, max_batch: int):
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "requests": Counter(
            "fewstep_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=registry
        ),
        "queue": Gauge("fewstep_queue_depth", "requests waiting for the engine", registry=registry),
        "batch": Histogram(
            "fewstep_batch_images",
            "images per engine call",
            registry=registry,
            buckets=[b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch] + [float("inf")],
        ),
        "latency": Histogram("fewstep_request_seconds", "request latency", ["endpoint"], registry=registry),
        "stage": Histogram(
            "fewstep_stage_seconds", "time per generation stage and engine call", ["stage"], registry=registry
        ),
        "wait": Histogram(
            "fewstep_queue_wait_seconds", "time from arrival to the start of its batch", registry=registry
        ),
    }


def create_app(gen: Generator, config: ServeConfig = ServeConfig()):
    """The ASGI app around a loaded Generator."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from prometheus_client import CollectorRegistry, generate_latest
    from pydantic import BaseModel, Field

    registry = CollectorRegistry()
    metrics = _metrics(registry, config.max_batch)
    state = {"accepting": False}
    h, w = gen.shape[1], gen.shape[2]

    def on_batch(r: BatchReport) -> None:
        metrics["batch"].observe(r.images)
        for stage, seconds in r.stage_times.items():
            metrics["stage"].labels(stage).observe(seconds)
        for wait in r.queue_wait:
            metrics["wait"].observe(wait)

    batcher = MicroBatcher(gen, config.max_batch, config.max_wait_ms, config.max_queue, on_batch)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        state["accepting"] = True
        yield
        state["accepting"] = False  # new requests get 503 while accepted ones finish
        await batcher.drain(timeout=config.timeout_s)

    app = FastAPI(title="fewstep", version="1", lifespan=lifespan,
                  description=f"{gen.manifest['model']['name']} on {gen.engine_entry['id']}")  # fmt: skip
    app.state.batcher, app.state.metrics = batcher, metrics

    class GenerateRequest(BaseModel):
        prompt: str = Field(max_length=MAX_PROMPT_CHARS)
        negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
        seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
        steps: int | None = Field(default=None, ge=1, le=1000)
        guidance: float | None = Field(default=None, ge=0, le=30)
        n: int = Field(default=1, ge=1, le=config.max_images)
        size: str | None = Field(default=None, max_length=16, description=f"only {w}x{h}")
        response_format: str = Field(default="png", pattern="^(png|json)$")

    class OpenAIRequest(BaseModel):
        prompt: str = Field(max_length=MAX_PROMPT_CHARS)
        n: int = Field(default=1, ge=1, le=config.max_images)
        size: str | None = Field(default=None, max_length=16)
        response_format: str = Field(default="b64_json", pattern="^b64_json$")
        model: str | None = Field(default=None, max_length=200)
        user: str | None = Field(default=None, max_length=200)

    def check_size(size: str | None) -> None:
        if size not in (None, f"{w}x{h}"):
            raise HTTPException(400, f"size must be {w}x{h} (this engine's only size); got {size!r}")

    async def run(endpoint: str, prompts: list[str], seeds: list[int], steps, guidance, negative) -> list:
        if not state["accepting"]:
            raise HTTPException(503, "the server is shutting down", headers={"Retry-After": "1"})
        try:
            gen.validate(prompts, seeds, steps, guidance, negative)
        except (ValueError, TypeError, PromptTooLongError) as e:
            raise HTTPException(400, str(e)) from None
        job = Job(prompts, seeds, steps, guidance, negative)
        try:
            images = await asyncio.wait_for(batcher.submit(job), config.timeout_s)
        except QueueFull as e:
            raise HTTPException(429, f"{e}; retry shortly", headers={"Retry-After": "1"}) from None
        except TimeoutError:
            raise HTTPException(504, f"no image within {config.timeout_s:g} s; the server is overloaded") from None
        finally:
            metrics["queue"].set(batcher.depth)
        return [png_bytes(im) for im in images]

    @app.middleware("http")
    async def count_and_bound(request: Request, call_next):
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        t0 = time.perf_counter()
        response = await call_next(request)
        path = request.url.path if request.url.path in KNOWN_PATHS else "other"
        metrics["requests"].labels(path, str(response.status_code)).inc()
        metrics["latency"].labels(path).observe(time.perf_counter() - t0)
        return response

    @app.post("/v1/generate", responses={200: {"content": {"image/png": {}}}})
    async def generate(req: GenerateRequest):
        check_size(req.size)
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(7), "little")
        seeds = [min(seed + i, 2**63 - 1) for i in range(req.n)]
        pngs = await run("/v1/generate", [req.prompt] * req.n, seeds, req.steps, req.guidance, req.negative_prompt)
        if req.response_format == "png" and req.n == 1:
            return Response(pngs[0], media_type="image/png", headers={"X-Seed": str(seeds[0])})
        return {"images": [base64.b64encode(p).decode() for p in pngs], "seeds": seeds,
                "engine": gen.engine_entry["id"]}  # fmt: skip

    @app.post("/v1/images/generations")
    async def openai_images(req: OpenAIRequest):
        check_size(req.size)
        seeds = [int.from_bytes(os.urandom(7), "little") for _ in range(req.n)]
        pngs = await run("/v1/images/generations", [req.prompt] * req.n, seeds, None, None, None)
        return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(p).decode()} for p in pngs]}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not state["accepting"]:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ready", "engine": gen.engine_entry["id"], "queue_depth": batcher.depth}

    @app.get("/metrics")
    async def prometheus():
        metrics["queue"].set(batcher.depth)
        return PlainTextResponse(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        text = resources.files("fewstep.runtime").joinpath("webui.html").read_text(encoding="utf-8")
        name, engine = html.escape(gen.manifest["model"]["name"]), html.escape(gen.engine_entry["id"])
        return text.replace("{{MODEL}}", f"{name} &middot; {engine} &middot; guidance {gen.guidance_mode}")

    KNOWN_PATHS = {"/v1/generate", "/v1/images/generations", "/healthz", "/readyz", "/metrics", "/"}
    return app
