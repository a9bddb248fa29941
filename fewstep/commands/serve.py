"""fewstep serve: an HTTP server for real-time text-to-image on an engine bundle (torch-free)."""

from __future__ import annotations

import argparse
import os

from fewstep.backends.openvino import CACHE_ENV
from fewstep.commands import Command, add_command
from fewstep.commands.config_flags import count
from fewstep.core.manifest import read_manifest
from fewstep.runtime import Generator
from fewstep.runtime.engine_pick import fastest_engine, format_rows, measure_in_subprocess
from fewstep.runtime.server import ServeConfig, create_app

EPILOG = """examples:
  fewstep serve bundles/prog4                               # http://127.0.0.1:8000/ (web page), /docs (API)
  fewstep serve bundles/prog4 --host 0.0.0.0 --port 9000 --max-batch 16 --max-wait-ms 5
  fewstep serve bundles/prog4 --engine openvino-int8 --engine-cache ~/.cache/fewstep/ov   # faster restarts
  curl -s localhost:8000/v1/generate -H 'content-type: application/json' \\
       -d '{"prompt": "a red circle", "seed": 1}' -o a.png

Concurrent requests with the same settings are micro-batched into one engine call (--max-batch images,
waiting at most --max-wait-ms for company). When --max-queue requests wait, new ones get 429 with Retry-After;
a request that takes longer than --timeout gets 504. SIGINT/SIGTERM stop accepting (503) and drain accepted
work. Without --engine the server first times each engine of the bundle at --max-batch images per call and
serves the one with the most images/s (--pick priority skips that). The server is stateless: run replicas
behind any load balancer to scale out (or use the bundle's Triton repository, `fewstep export --triton`, on
GPU fleets)."""


def register(sub: argparse._SubParsersAction, command: Command) -> None:
    p = add_command(sub, command, EPILOG)
    p.add_argument("bundle", help="engine bundle directory (fewstep export)")
    p.add_argument("--engine", help="engine id from the manifest (default: chosen by --pick)")
    p.add_argument(
        "--pick",
        choices=("throughput", "priority"),
        default="throughput",
        help="without --engine: 'throughput' times every engine that loads here at --max-batch images per call "
        "(a few seconds at start-up) and serves the one with the most images/s; 'priority' takes the first in "
        "the documented backend order without timing (default: throughput)",
    )
    p.add_argument(
        "--decoder",
        choices=("vae", "tiny"),
        default=None,
        help="latent bundles: the image decoder to run (default: the bundle's default_decoder)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=count(1, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--threads", type=count(0), default=0, help="engine threads (default: the backend's)")
    p.add_argument("--max-batch", type=count(1), default=8, help="images per engine call (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="batching window (default 10 ms)")
    p.add_argument("--max-queue", type=count(1), default=64, help="waiting requests before 429 (default 64)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request before 504 (default 30)")
    p.add_argument("--max-images", type=count(1), default=4, help="images per request, n (default 4)")
    p.add_argument(
        "--engine-cache",
        metavar="DIR",
        help="OpenVINO engines: keep compiled shapes in DIR so that a restart imports them instead of compiling "
        "(first image 0.88 s instead of 1.40 s here; ~3 MB per shape). Same as FEWSTEP_OPENVINO_CACHE_DIR",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # serve extra
    except ImportError as e:
        raise ImportError("fewstep serve needs `pip install 'fewstep[serve]'` (fastapi, uvicorn)") from e

    if args.engine_cache:
        os.environ[CACHE_ENV] = args.engine_cache  # also seen by the engine-timing subprocess
    config = ServeConfig(args.max_batch, args.max_wait_ms, args.max_queue, args.timeout, args.max_images)
    threads = args.threads or None
    engine = args.engine
    if engine is None and args.pick == "throughput" and len(read_manifest(args.bundle).engines) > 1:
        rows = measure_in_subprocess(args.bundle, args.max_batch, threads, args.decoder)
        engine = fastest_engine(rows)
        print(f"engines at {args.max_batch} image(s) per call on this machine:\n{format_rows(rows)}", flush=True)
    gen = Generator.from_bundle(args.bundle, engine=engine, decoder=args.decoder, threads=threads)
    print(f"serving {gen.manifest.model.name} ({gen.engine_entry.id}) on http://{args.host}:{args.port}/")
    uvicorn.run(create_app(gen, config), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=int(args.timeout) + 5)  # fmt: skip
    return 0
