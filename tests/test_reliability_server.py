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
    assert "fewstep_dropped_requests_total 3.0" in metrics


def test_oversized_bodies_get_413_with_or_without_content_length(bundle):  # noqa: F811
    _, live = _serve(bundle)
    big = json.dumps({"prompt": "x", "pad": "y" * 100_000}).encode()
    with live:
        assert httpx.post(live.url + "/v1/generate", content=big,
                          headers={"content-type": "application/json"}).status_code == 413  # fmt: skip

        def chunks():  # no Content-Length: chunked transfer encoding
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]

        r = httpx.post(live.url + "/v1/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert httpx.post(live.url + "/v1/generate", json=BODY).status_code == 200


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


def test_fuzzing_the_openapi_description_gets_no_5xx(bundle):  # noqa: F811
    schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs schemathesis (the dev extra)")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    _, live = _serve(bundle, max_queue=64, timeout_s=30)
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
                    response = case.call(timeout=60)
                    calls.setdefault(case.operation.label, []).append(response.status_code)
                    assert response.status_code < 500, (case.as_curl_command(), response.text[:300])

                try:
                    fuzz()
                except Unsatisfiable:  # GET endpoints without parameters: there is no invalid input to make
                    assert mode == schemathesis.GenerationMode.NEGATIVE
    assert {"POST /v1/generate", "POST /v1/images/generations", "GET /healthz"} <= set(calls)
    assert all(len(calls[f"POST {p}"]) >= FUZZ_EXAMPLES for p in ("/v1/generate", "/v1/images/generations"))
    codes = {c for cs in calls.values() for c in cs}
    assert 200 in codes and 422 in codes  # both valid and invalid requests were made


FUZZ_EXAMPLES = 60  # per endpoint and mode; the README's figure
