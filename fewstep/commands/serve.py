"""fewstep serve: an HTTP server for real-time text-to-image on one or several engine bundles (torch-free)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import ipaddress
import logging
import os
import signal
import sys

from fewstep.backends.openvino import CACHE_ENV
from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import count
from fewstep.core.config import ConfigError
from fewstep.core.errors import UserError
from fewstep.core.fsio import require_regular_file
from fewstep.core.manifest import read_manifest
from fewstep.runtime.engine_pick import fastest_engine, format_rows, measure_in_subprocess
from fewstep.runtime.model_pool import (
    ModelPool,
    ModelSpec,
    budget_from_gb,
    default_name,
    load_from_bundle,
    parse_model_flag,
    read_models_file,
)
from fewstep.runtime.rate_limit import RateLimit
from fewstep.runtime.server import ServeConfig, create_app
from fewstep.runtime.server_guard import API_KEYS_ENV, ApiKeys

EPILOG = """examples:
  fewstep serve bundles/prog4                               # http://127.0.0.1:8000/ (web page), /docs (API)
  fewstep serve bundles/prog4 --host 0.0.0.0 --api-key-file keys.txt --tls-cert cert.pem --tls-key key.pem
  fewstep serve bundles/prog4 --max-batch 16 --max-wait-ms 5 --cors-origin https://app.example.com
  fewstep serve bundles/prog4 --engine openvino-int8 --engine-cache ~/.cache/fewstep/ov   # faster restarts
  fewstep serve --model fast=bundles/prog4 --model best=bundles/sd15 --memory-budget 8   # two models, 8 GB
  fewstep serve --models models.yaml --api-key-file keys.txt --rate-limit 120            # YAML registry
  curl -s localhost:8000/v1/generate -H 'content-type: application/json' \\
       -d '{"prompt": "a red circle", "seed": 1}' -o a.png

Concurrent requests with the same settings are micro-batched into one engine call (--max-batch images,
waiting at most --max-wait-ms for company). When --max-queue requests wait, new ones get 429 with Retry-After;
a request that takes longer than --timeout gets 504. SIGINT/SIGTERM stop accepting (503) and drain accepted
work. Without --engine the server first times each engine of the bundle at --max-batch images per call and
serves the one with the most images/s (--pick priority skips that). The server is stateless: run replicas
behind any load balancer to scale out (or use the bundle's Triton repository, `fewstep export --triton`, on
GPU fleets).

Models: a bundle given alone is served as the model named after its directory; --model NAME=BUNDLE (repeat)
or --models FILE (YAML: `models: {NAME: {bundle, engine, decoder, preload}}`, `memory_budget_gb`) serve
several. Requests pick one with "model" (default: the first); GET /v1/models lists them. The first model (and
`preload` ones) load at start-up, the others at their first request; each has its own queue and batcher. With
--memory-budget, loading a model first evicts idle ones, least recently used first. POST
/v1/models/NAME/reload (or SIGHUP, for every loaded model) loads a bundle again, e.g. after a re-export: new
requests go to the new engines while accepted ones finish on the old.

Access: by default the server binds 127.0.0.1 and needs no key. --api-key-file (or FEWSTEP_API_KEYS) holds
`name:key` lines; requests then need `Authorization: Bearer KEY` (what the openai client sends as api_key),
and the name appears in the access log and the metrics. A non-loopback --host without keys is refused unless
--insecure is given. --rate-limit N lets each key (or client address, without keys) make N generation
requests a minute, bursts of --rate-burst; beyond that: 429 with Retry-After. Access logs are JSON lines on
stderr, one per request, with its X-Request-ID, key name and model."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("bundle", nargs="?", help="engine bundle directory (fewstep export); or use --model/--models")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=BUNDLE",
        type=_model_flag,
        help="serve BUNDLE as model NAME (repeat for several; the first is the default)",
    )
    p.add_argument("--models", metavar="FILE", help="models YAML: `models: {NAME: BUNDLE or {bundle, engine, "
                   "decoder, preload}}` and optionally `memory_budget_gb`")  # fmt: skip
    p.add_argument(
        "--memory-budget",
        type=float,
        metavar="GB",
        help="the memory the models' engines may hold together; loading one beyond it evicts idle models, least "
        "recently used first (default: no budget, every model stays loaded)",
    )
    p.add_argument("--engine", help="the BUNDLE's engine id from the manifest (default: chosen by --pick)")
    p.add_argument(
        "--pick",
        choices=("throughput", "priority"),
        default="throughput",
        help="models without an engine: 'throughput' times every engine that loads here at --max-batch images per "
        "call (a few seconds at start-up, for the models loaded at start-up) and serves the one with the most "
        "images/s; 'priority' takes the first in the documented backend order without timing (default: "
        "throughput; models loaded later always use priority)",
    )
    p.add_argument(
        "--decoder",
        choices=("vae", "tiny"),
        default=None,
        help="latent BUNDLE: the image decoder to run (default: the bundle's default_decoder)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=count(1, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--threads", type=count(0), default=0, help="engine threads (default: the backend's)")
    p.add_argument("--max-batch", type=count(1), default=8, help="images per engine call (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="batching window (default 10 ms)")
    p.add_argument("--max-queue", type=count(1), default=64, help="waiting requests before 429 (default 64)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request before 504 (default 30)")
    p.add_argument("--max-images", type=count(1), default=4, help="images per request, n (default 4)")
    p.add_argument(
        "--max-body-kib",
        type=count(1, 16384),
        default=64,
        help="request bodies larger than this get 413 (default 64 KiB; a request needs ~5 KiB at most)",
    )
    p.add_argument(
        "--engine-cache",
        metavar="DIR",
        help="OpenVINO engines: keep compiled shapes in DIR so that a restart imports them instead of compiling "
        "(first image 0.88 s instead of 1.40 s here; ~3 MB per shape). Same as FEWSTEP_OPENVINO_CACHE_DIR",
    )
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help=f"API keys, one `name:key` per line (keys of 16+ characters); without it, ${API_KEYS_ENV} "
        "(comma-separated name:key) if set; requests then need `Authorization: Bearer KEY`",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain (needs --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to call the API, e.g. https://app.example.com (repeat; default: none)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without API keys (anyone who can reach the port can generate)",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        metavar="PER_MIN",
        help="generation requests per minute per API key (per client address without keys); default: none",
    )
    p.add_argument(
        "--rate-burst",
        type=count(1),
        metavar="N",
        help="requests a client may make at once under --rate-limit (default: 10 s worth, at least 1)",
    )
    p.add_argument("--access-log", choices=("json", "off"), default="json", help="per-request log on stderr")
    p.set_defaults(run=run)


def _model_flag(text: str) -> ModelSpec:
    try:
        return parse_model_flag(text)
    except ConfigError as e:  # argparse prints an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(e)) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_access(args: argparse.Namespace, keys: ApiKeys | None) -> None:
    """Refuse, before loading anything, a setup that would expose the server by mistake."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UserError("--tls-cert and --tls-key go together: give both, or neither for plain HTTP")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None:
            require_regular_file(path, f"{flag} file", max_bytes=1 << 20)
    if keys is None and not is_loopback(args.host) and not args.insecure:
        raise UserError(f"--host {args.host} would let anyone who reaches this machine generate: give "
                        f"--api-key-file (or set {API_KEYS_ENV}), or --insecure if that is what you want")  # fmt: skip
    for origin in args.cors_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise UserError(f"--cors-origin {origin!r}: give an origin like https://app.example.com (or *)")


def model_specs(args: argparse.Namespace) -> tuple[list[ModelSpec], float | None]:
    """The models to serve, checked before anything loads: BUNDLE, then --model flags, then --models entries."""
    specs: list[ModelSpec] = []
    budget = args.memory_budget
    if args.bundle:
        specs.append(ModelSpec(name=default_name(args.bundle), bundle=args.bundle, engine=args.engine,
                               decoder=args.decoder))  # fmt: skip
    elif args.engine or args.decoder:
        raise UserError("--engine and --decoder apply to a BUNDLE given alone; in a --models file, give each model "
                        "its own `engine` and `decoder`")  # fmt: skip
    specs += args.model
    if args.models:
        require_regular_file(args.models, "--models file", max_bytes=1 << 20)
        loaded = read_models_file(args.models)
        specs += loaded.models
        budget = budget if budget is not None else loaded.memory_budget_gb
    if not specs:
        raise UserError("nothing to serve: give a BUNDLE, --model NAME=BUNDLE or --models FILE")
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"model name(s) {', '.join(twice)} given twice; every model needs its own name")
    if budget is not None and budget <= 0:
        raise UserError(f"--memory-budget must be a positive number of GB; got {budget:g}")
    for spec in specs:
        if not os.path.isdir(spec.bundle):
            raise UserError(f"model {spec.name}: {spec.bundle} is not a directory; give an engine bundle "
                            "(fewstep export MODEL --out DIR makes one)")  # fmt: skip
        manifest = read_manifest(spec.bundle)  # and is a bundle: fail now, not at the first request
        if spec.engine is not None and spec.engine not in manifest.engine_ids:
            raise UserError(f"model {spec.name}: bundle {spec.bundle} has no engine {spec.engine!r}; it has: "
                            f"{', '.join(manifest.engine_ids) or 'none'}")  # fmt: skip
    return specs, budget


def pick_engines(specs: list[ModelSpec], args: argparse.Namespace) -> list[ModelSpec]:
    """--pick throughput: time the engines of each model loaded at start-up that names none."""
    out = []
    for i, spec in enumerate(specs):
        at_start = i == 0 or spec.preload
        if (
            at_start
            and spec.engine is None
            and args.pick == "throughput"
            and len(read_manifest(spec.bundle).engines) > 1
        ):
            rows = measure_in_subprocess(spec.bundle, args.max_batch, args.threads or None, spec.decoder)
            print(f"{spec.name}: engines at {args.max_batch} image(s) per call on this machine:\n{format_rows(rows)}",
                  flush=True)  # fmt: skip
            spec = dataclasses.replace(spec, engine=fastest_engine(rows))
        out.append(spec)
    return out


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # serve extra
    except ImportError as e:
        raise ImportError("fewstep serve needs `pip install 'fewstep[serve]'` (fastapi, uvicorn)") from e

    # SIGHUP reloads the models once the server serves; until then (engine timing, the first load) its default
    # action would end the process, and systemd does not restart a process that ended on SIGHUP
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.engine_cache:
        os.environ[CACHE_ENV] = args.engine_cache  # also seen by the engine-timing subprocess
    try:
        specs, budget_gb = model_specs(args)
        rate = RateLimit.of(args.rate_limit, args.rate_burst) if args.rate_limit is not None else None
    except (ConfigError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.rate_burst is not None and rate is None:
        raise UserError("--rate-burst needs --rate-limit")
    keys = ApiKeys.load(args.api_key_file)
    check_access(args, keys)
    config = ServeConfig(args.max_batch, args.max_wait_ms, args.max_queue, args.timeout, args.max_images,
                         api_keys=keys, cors_origins=tuple(args.cors_origin), rate_limit=rate,
                         max_body_bytes=args.max_body_kib * 1024)  # fmt: skip
    threads = args.threads or None
    specs = pick_engines(specs, args)
    loader = functools.partial(load_from_bundle, threads=threads)
    # the models loaded at start-up load here, before the port is bound: a broken bundle or an engine that cannot
    # run is one clear line and exit 1, not a failed ASGI start-up
    at_start = {s.name: loader(s) for i, s in enumerate(specs) if i == 0 or s.preload}
    pool = ModelPool(specs, config.batching, budget_from_gb(budget_gb), loader=loader, preloaded=at_start)
    scheme = "https" if args.tls_cert else "http"
    auth = f"API keys: {', '.join(name for name, _ in keys.keys)}" if keys else "no API keys"
    served = ", ".join(f"{s.name} ({s.engine or 'engine by priority'})" for s in specs)
    budget = f", memory budget {budget_gb:g} GB" if budget_gb is not None else ""
    print(f"serving {served} on {scheme}://{args.host}:{args.port}/ ({auth}{budget})", flush=True)
    if args.access_log == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        for name in ("fewstep.access", "fewstep.serve"):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
    # proxy_headers=False: X-Forwarded-For from a local client must not pick its rate-limit bucket (uvicorn trusts
    # it from 127.0.0.1 by default); behind a proxy, clients are told apart by their API keys
    uvicorn.run(create_app(pool, config), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=int(args.timeout) + 5, ssl_certfile=args.tls_cert,
                ssl_keyfile=args.tls_key, proxy_headers=False)  # fmt: skip
    return 0
