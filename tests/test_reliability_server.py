"""The server under load and abuse, over real HTTP on loopback: twice its capacity gets only 200 and 429 with flat
memory; dropped connections and slow clients cost no engine time; oversized bodies (chunked too) get 413; a
graceful shutdown under load loses no accepted request; property-based fuzzing from its OpenAPI description
(schemathesis) gets no 5xx."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install 'fewstep[serve]'")
import httpx
import psutil

from tests.test_server import LiveServer, _serve, bundle  # noqa: F401  (bundle: the module's fixture)

pytestmark = pytest.mark.slow
BODY = {"prompt": "a red circle", "seed": 1}


async def _closed_loop(url: str, workers: int, seconds: float) -> int:
    """Requests completed by `workers` clients that send again as soon as answered."""
    done = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                r = await c.post("/v1/generate", json=BODY)
                done += r.status_code == 200

        await asyncio.gather(*(worker() for _ in range(workers)))
    return done


async def _open_loop(url: str, rate: float, seconds: float) -> list[int]:
    """Status codes of requests sent at `rate` per second whatever the answers (an arrival process)."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        tasks, t0, i = [], time.perf_counter(), 0
        while (now := time.perf_counter() - t0) < seconds:
            if i < now * rate:
                tasks.append(asyncio.ensure_future(c.post("/v1/generate", json={**BODY, "seed": i})))
                i += 1
            else:
                await asyncio.sleep(0.002)
        return [r.status_code for r in await asyncio.gather(*tasks)]


def test_twice_capacity_gets_only_200_and_429_with_flat_memory(bundle):  # noqa: F811
    _, live = _serve(bundle, delay=0.02, max_batch=4, max_wait_ms=5, max_queue=8)
    proc = psutil.Process()
    with live:
        capacity = asyncio.run(_closed_loop(live.url, workers=12, seconds=3)) / 3  # requests per second
        codes_1 = asyncio.run(_open_loop(live.url, 2 * capacity, seconds=4))
        rss_1 = proc.memory_info().rss
        codes_2 = asyncio.run(_open_loop(live.url, 2 * capacity, seconds=4))
        rss_2 = proc.memory_info().rss
        metrics = httpx.get(live.url + "/metrics").text
    codes = codes_1 + codes_2
    print(
        f"load: capacity {capacity:.1f} req/s, offered {2 * capacity:.1f} req/s for 8 s: {len(codes)} requests, "
        f"{codes.count(200)} x 200, {codes.count(429)} x 429, RSS {rss_1 / 2**20:.0f} -> {rss_2 / 2**20:.0f} MB"
    )
    assert capacity > 5 and len(codes) > 16 * capacity * 0.8
    assert set(codes) <= {200, 429}, sorted(set(codes))
    assert codes.count(200) > 4 * capacity and codes.count(429) > 0.2 * len(codes)  # served at capacity, shed the rest
    assert rss_2 - rss_1 < 30 * 2**20, f"memory grew {(rss_2 - rss_1) / 2**20:.0f} MB under the same load"
    assert 'status="500"' not in metrics


def _raw(url: str, payload: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(payload)
    return s


def _request(body: bytes, extra: str = "") -> bytes:
    head = f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n"
    return head.encode() + body


def test_dropped_connections_and_slow_clients_cost_no_engine_time(bundle):  # noqa: F811
    gen, live = _serve(bundle, delay=0.3, max_batch=1, max_wait_ms=0)
    body = json.dumps(BODY).encode()
    with live, ThreadPoolExecutor(2) as pool:
        busy = pool.submit(httpx.post, live.url + "/v1/generate", json=BODY, timeout=30)
        time.sleep(0.1)  # the engine is busy with the first request
        for _ in range(3):  # clients that send a whole request, then leave while it waits in the queue
            _raw(live.url, _request(body, f"Content-Length: {len(body)}\r\n")).close()
        slow = _raw(live.url, _request(b"", f"Content-Length: {len(body)}\r\n"))
        slow.sendall(body[:5])  # a client that trickles its body ...
        quick = pool.submit(httpx.post, live.url + "/v1/generate", json={**BODY, "seed": 2}, timeout=30)
        assert busy.result().status_code == 200 and quick.result().status_code == 200  # ... holds up nobody
        slow.close()  # and leaves before finishing it
        time.sleep(0.5)
        metrics = httpx.get(live.url + "/metrics").text
    steps = 2  # the bundle's sampler: timesteps [1, 0.5, 0] -> 2 engine calls per batch
    assert gen.denoiser.calls == 2 * steps, "a client that left still cost engine time"
    assert 'fewstep_dropped_requests_total{model="default"} 3.0' in metrics


def test_oversized_bodies_get_413_with_or_without_content_length(bundle):  # noqa: F811
    _, live = _serve(bundle)
    big = json.dumps({"prompt": "x", "pad": "y" * 100_000}).encode()
    with live:
        r = httpx.post(live.url + "/v1/generate", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large" and "x-request-id" in r.headers

        def chunks():  # no Content-Length: chunked transfer encoding
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]

        r = httpx.post(live.url + "/v1/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert httpx.post(live.url + "/v1/generate", json=BODY).status_code == 200
    _, small = _serve(bundle, max_body_bytes=1024)  # --max-body-kib 1
    with small:
        padded = {**BODY, "prompt": "a red circle" + " " * 1100}
        r = httpx.post(small.url + "/v1/generate", json=padded)
        assert r.status_code == 413 and "larger than 1024 bytes" in r.json()["error"]["message"]


def test_graceful_shutdown_under_load_loses_no_accepted_request(bundle):  # noqa: F811
    _, live = _serve(bundle, delay=0.05, max_batch=2, max_wait_ms=5, max_queue=32)
    live.__enter__()
    url = live.url + "/v1/generate"
    with ThreadPoolExecutor(16) as pool:
        accepted = [pool.submit(httpx.post, url, json={**BODY, "seed": i}, timeout=60) for i in range(16)]
        deadline = time.time() + 30  # all 16 read by the server: queued, in the engine or answered
        while live.server.server_state.total_requests < 16:
            assert time.time() < deadline, "the 16 requests did not reach the server"
            time.sleep(0.005)
        stopper = threading.Thread(target=live.__exit__, args=(None, None, None))
        stopper.start()
        deadline = time.time() + 10  # shutdown has begun once uvicorn's next tick closes the listening socket
        while live.server.servers and live.server.servers[0].is_serving():
            assert time.time() < deadline, "uvicorn did not begin its shutdown"
            time.sleep(0.005)
        try:  # after shutdown began: refused (connection refused or 503), never half-served
            late = httpx.post(url, json=BODY, timeout=10).status_code
        except httpx.TransportError:
            late = "refused"
        codes = [f.result().status_code for f in accepted]
        stopper.join(timeout=60)
    assert codes == [200] * 16, codes
    assert late in ("refused", 503)
    assert not live.thread.is_alive()


@pytest.mark.parametrize("auth", [False, True], ids=["open", "api-keys"])
def test_fuzzing_the_openapi_description_gets_no_5xx(bundle, auth):  # noqa: F811
    """With keys on, every case is sent with the key (no 5xx) and again without it (401 off the open paths)."""
    schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs schemathesis (the dev extra)")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    from fewstep.runtime.server import OPEN_PATHS
    from fewstep.runtime.server_guard import ApiKeys

    key = "fuzz-" + "k" * 27
    keys = ApiKeys.parse(f"fuzzer:{key}", "test") if auth else None
    _, live = _serve(bundle, max_queue=64, timeout_s=30, api_keys=keys)
    calls: dict[str, list[int]] = {}
    with live:
        schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        for op in operations:
            for mode in schemathesis.GenerationMode:  # valid inputs, then invalid ones

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                          database=None)  # fmt: skip
                def fuzz(case) -> None:
                    headers = {"Authorization": f"Bearer {key}"} if auth else None
                    response = case.call(timeout=60, headers=headers)
                    calls.setdefault(case.operation.label, []).append(response.status_code)
                    assert response.status_code < 500, (case.as_curl_command(), response.text[:300])
                    if auth and case.operation.path not in OPEN_PATHS:
                        assert case.call(timeout=60).status_code == 401, case.as_curl_command()

                try:
                    fuzz()
                except Unsatisfiable:  # GET endpoints without parameters: there is no invalid input to make
                    assert mode == schemathesis.GenerationMode.NEGATIVE
    assert {"POST /v1/generate", "POST /v1/images/generations", "GET /healthz"} <= set(calls)
    assert all(len(calls[f"POST {p}"]) >= FUZZ_EXAMPLES for p in ("/v1/generate", "/v1/images/generations"))
    codes = {c for cs in calls.values() for c in cs}
    assert 200 in codes and 422 in codes  # both valid and invalid requests were made


FUZZ_EXAMPLES = 60  # per endpoint and mode; the README's figure


def _start_serve(bundle, port: int):  # noqa: F811
    import subprocess
    import sys

    args = [sys.executable, "-m", "fewstep.cli", "serve", str(bundle), "--port", str(port), "--pick", "priority",
            "--max-batch", "2", "--max-wait-ms", "5", "--max-queue", "256", "--access-log", "off"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else "server exited"
        assert time.time() < deadline, "server did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)


def test_kill_9_mid_batch_answers_nothing_half_and_a_restart_serves(bundle):  # noqa: F811
    """A server process killed with SIGKILL while it works: every request in flight ends as a 200 with a whole PNG
    or a transport error, none as a 200 with a cut body; the same port serves again after a restart, and SIGHUP
    reloads its model without stopping it."""
    import io
    import os
    import signal

    from PIL import Image

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/generate"
    proc = _start_serve(bundle, port)
    answered = threading.Event()

    def one(i: int) -> str:
        try:
            r = httpx.post(url, json={**BODY, "seed": i}, timeout=60)
        except httpx.TransportError:
            return "transport error"
        answered.set()
        try:
            Image.open(io.BytesIO(r.content)).load()
            return f"{r.status_code} whole"
        except Exception:
            return f"{r.status_code} cut"

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(one, i) for i in range(256)]
        assert answered.wait(30), "no request was answered before the kill"
        os.kill(proc.pid, signal.SIGKILL)  # while the rest wait in its queue or run in its engine
        outcomes = [f.result() for f in futures]
    proc.wait(timeout=30)
    assert set(outcomes) <= {"200 whole", "transport error"}, sorted(set(outcomes))
    assert "transport error" in outcomes  # the kill did land mid-work
    restarted = _start_serve(bundle, port)
    try:
        r = httpx.post(url, json=BODY, timeout=60)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (16, 16)
        restarted.send_signal(signal.SIGHUP)  # systemd's ExecReload: load every model's bundle again
        reload_line = f'fewstep_model_events_total{{event="reload",model="{bundle.name}"}} 1.0'
        deadline = time.time() + 30
        while reload_line not in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text:
            assert restarted.poll() is None and time.time() < deadline, "SIGHUP did not reload the model"
            time.sleep(0.1)
        assert httpx.post(url, json=BODY, timeout=60).status_code == 200
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=60)
