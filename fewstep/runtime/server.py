"""`fewstep serve BUNDLE`: an ASGI (FastAPI) server for real-time text-to-image on an engine bundle.

Endpoints: POST /v1/generate (PNG or JSON with base64), POST /v1/images/generations (OpenAI-compatible,
b64_json), GET /healthz, /readyz, /metrics (Prometheus text), / (a one-page web UI). Concurrent requests are
micro-batched (`batcher.py`); a full queue answers 429 with Retry-After; each request has a timeout (504);
a client that disconnects before its images are made costs no engine time (its job is dropped); request bodies
over 64 KiB are refused (413, FastAPI's max_body_size: chunked bodies too); shutdown stops taking work (503) and
drains what was accepted. The server holds no per-client state, so replicas
behind a load balancer scale it out. Needs `pip install 'fewstep[serve]'`; never torch.
"""

# no `from __future__ import annotations`: FastAPI resolves the route parameters' annotations at run time,
# and the request models are local to create_app
import asyncio
import base64
import html
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from fewstep.core.errors import PromptTooLongError
from fewstep.runtime.asgi_metrics import RequestMetrics
from fewstep.runtime.batcher import BatchReport, Job, MicroBatcher, QueueFull
from fewstep.runtime.bench import png_bytes
from fewstep.runtime.generator import Generator

MAX_PROMPT_CHARS = 2000  # long before the token limit; bounds what a request can make the server hold
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 8  # images per engine call
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # requests waiting; beyond this: 429 with Retry-After
    timeout_s: float = 30.0  # per request; beyond this: 504
    max_images: int = 4  # n per request


def _metrics(registry: Any, max_batch: int) -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram  # serve extra

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
        "dropped": Counter(
            "fewstep_dropped_requests", "requests whose client disconnected before its images", registry=registry
        ),
    }


class ClientGone(Exception):
    """The client disconnected while its request waited: nobody will read the answer."""


async def _disconnected(request: Any) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


def create_app(gen: Generator, config: ServeConfig = ServeConfig()) -> Any:
    """The ASGI app around a loaded Generator."""
    from fastapi import FastAPI, HTTPException, Request  # serve extra
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response  # serve extra
    from prometheus_client import CollectorRegistry, generate_latest  # serve extra
    from pydantic import BaseModel, Field  # serve extra

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
        gen.prepare(config.max_batch)  # e.g. OpenVINO's static batch sizes, compiled before /readyz says ready
        batcher.start()
        state["accepting"] = True
        yield
        state["accepting"] = False  # new requests get 503 while accepted ones finish
        await batcher.drain(timeout=config.timeout_s)

    app = FastAPI(title="fewstep", version="1", lifespan=lifespan, max_body_size=MAX_BODY_BYTES,
                  description=f"{gen.manifest.model.name} on {gen.engine_entry.id}")  # fmt: skip
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

    async def images_or_gone(request: Request, job: Job) -> np.ndarray:
        """The job's images; ClientGone (job dropped) if the client leaves first; TimeoutError after timeout_s."""
        submit = asyncio.ensure_future(batcher.submit(job))
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({submit, watch}, timeout=config.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if submit in done:
            return submit.result()
        submit.cancel()  # cancels the job's future: the batcher skips it, or discards its images
        if watch in done:
            metrics["dropped"].inc()
            raise ClientGone
        raise TimeoutError

    async def run(request: Request, prompts: list[str], seeds: list[int], steps: int | None, guidance: float | None,
                  negative: str | None) -> list[bytes]:  # fmt: skip
        if not state["accepting"]:
            raise HTTPException(503, "the server is shutting down", headers={"Retry-After": "1"})
        try:
            gen.validate(prompts, seeds, steps, guidance, negative)
        except (ValueError, TypeError, PromptTooLongError) as e:
            raise HTTPException(400, str(e)) from None
        job = Job(prompts, seeds, steps, guidance, negative)
        try:
            images = await images_or_gone(request, job)
        except QueueFull as e:
            raise HTTPException(429, f"{e}; retry shortly", headers={"Retry-After": "1"}) from None
        except TimeoutError:
            raise HTTPException(504, f"no image within {config.timeout_s:g} s; the server is overloaded") from None
        except ClientGone:
            raise HTTPException(499, "client closed the request") from None  # nginx's code; nobody reads it
        finally:
            metrics["queue"].set(batcher.depth)
        return [png_bytes(im) for im in images]

    def observe(path: str, status: int, seconds: float) -> None:
        metrics["requests"].labels(path, str(status)).inc()
        metrics["latency"].labels(path).observe(seconds)

    @app.post("/v1/generate", responses={200: {"content": {"image/png": {}}}})
    async def generate(req: GenerateRequest, request: Request):
        check_size(req.size)
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(7), "little")
        seeds = [min(seed + i, 2**63 - 1) for i in range(req.n)]
        pngs = await run(request, [req.prompt] * req.n, seeds, req.steps, req.guidance, req.negative_prompt)
        if req.response_format == "png" and req.n == 1:
            return Response(pngs[0], media_type="image/png", headers={"X-Seed": str(seeds[0])})
        return {"images": [base64.b64encode(p).decode() for p in pngs], "seeds": seeds,
                "engine": gen.engine_entry.id}  # fmt: skip

    @app.post("/v1/images/generations")
    async def openai_images(req: OpenAIRequest, request: Request):
        check_size(req.size)
        seeds = [int.from_bytes(os.urandom(7), "little") for _ in range(req.n)]
        pngs = await run(request, [req.prompt] * req.n, seeds, None, None, None)
        return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(p).decode()} for p in pngs]}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not state["accepting"]:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ready", "engine": gen.engine_entry.id, "queue_depth": batcher.depth}

    @app.get("/metrics")
    async def prometheus():
        metrics["queue"].set(batcher.depth)
        return PlainTextResponse(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        text = resources.files("fewstep.runtime").joinpath("webui.html").read_text(encoding="utf-8")
        name, engine = html.escape(gen.manifest.model.name), html.escape(gen.engine_entry.id)
        return text.replace("{{MODEL}}", f"{name} &middot; {engine} &middot; guidance {gen.guidance_mode}")

    known = {"/v1/generate", "/v1/images/generations", "/healthz", "/readyz", "/metrics", "/"}
    app.add_middleware(RequestMetrics, observe=observe, known_paths=known)
    return app
