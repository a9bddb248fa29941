"""`fewstep serve` over real HTTP on loopback: generation, the OpenAI-style endpoint with the real client,
micro-batching, 429 on a full queue, timeouts, 4xx on bad input, metrics, graceful shutdown, the web page."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install 'fewstep[serve]'")
pytest.importorskip("onnxscript", reason="building a bundle needs the export extra")
import httpx
import uvicorn
from PIL import Image

from fewstep.runtime import Generator
from fewstep.runtime.server import ServeConfig, create_app


@pytest.fixture
def bundle(served_bundle):
    return served_bundle


class SlowEngine:
    """Delegates to a real engine after a delay: makes overload reproducible."""

    def __init__(self, engine, delay: float):
        self.engine, self.delay = engine, delay
        self.backend, self.inputs, self.outputs = engine.backend, engine.inputs, engine.outputs
        self.calls = 0

    def run(self, inputs):
        self.calls += 1
        time.sleep(self.delay)
        return self.engine.run(inputs)


class LiveServer:
    """uvicorn on 127.0.0.1 with an ephemeral port, in a thread; https when given ssl_certfile/ssl_keyfile."""

    def __init__(self, app, **ssl_files):
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **ssl_files)
        self.server, self.scheme = uvicorn.Server(config), "https" if ssl_files else "http"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{self.scheme}://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _serve(bundle, delay: float = 0.0, **config):
    gen = Generator.from_bundle(bundle)
    if delay:
        gen.denoiser = SlowEngine(gen.denoiser, delay)
    return gen, LiveServer(create_app(gen, ServeConfig(**config)))


def _png(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.slow
def test_generate_png_json_and_openai_client(bundle):
    from openai import OpenAI

    gen, live = _serve(bundle)
    with live, httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.post("/v1/generate", json={"prompt": "a red circle", "seed": 7})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "7"
        np.testing.assert_array_equal(_png(r.content), gen.generate(["a red circle"], [7])[0])
        r = c.post("/v1/generate", json={"prompt": "a red circle", "seed": 7, "n": 2, "response_format": "json"})
        body = r.json()
        assert body["seeds"] == [7, 8] and len(body["images"]) == 2
        np.testing.assert_array_equal(_png(base64.b64decode(body["images"][1])), gen.generate(["a red circle"], [8])[0])
        neg = c.post("/v1/generate", json={"prompt": "a red circle", "seed": 7, "negative_prompt": "blue"})
        assert (
            neg.status_code == 200
            and neg.content != c.post("/v1/generate", json={"prompt": "a red circle", "seed": 7}).content
        )
        client = OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        result = client.images.generate(prompt="a blue square", n=2, size="16x16", response_format="b64_json")
        assert len(result.data) == 2 and _png(base64.b64decode(result.data[0].b64_json)).shape == (16, 16, 3)
        assert c.get("/healthz").json() == {"status": "ok"} and c.get("/readyz").json()["status"] == "ready"
        assert "fewstep_requests_total" in c.get("/metrics").text


@pytest.mark.slow
def test_bad_parameters_get_clear_4xx(bundle):
    _, live = _serve(bundle, max_images=2)
    with live, httpx.Client(base_url=live.url, timeout=30) as c:
        cases = [
            ({"prompt": "x", "steps": 0}, 422), ({"prompt": "x", "guidance": 99}, 422), ({"prompt": "x", "n": 3}, 422),
            ({"steps": 2}, 422), ({"prompt": "x", "seed": -1}, 422), ({"prompt": "x", "response_format": "gif"}, 422),
            ({"prompt": "x", "size": "512x512"}, 400), ({"prompt": "a red circle " * 20}, 400),
        ]  # fmt: skip
        for payload, status in cases:
            r = c.post("/v1/generate", json=payload)
            assert r.status_code == status, (payload, r.text)
        too_long = c.post("/v1/generate", json={"prompt": "a red circle " * 20}).json()["error"]
        assert "at most 32" in too_long["message"] and too_long["type"] == "invalid_request_error"
        assert (
            c.post("/v1/generate", content=b"not json", headers={"content-type": "application/json"}).status_code == 400
        )
        assert (
            c.post("/v1/generate", content=b"x" * 100_000, headers={"content-type": "application/json"}).status_code
            == 413
        )
        assert c.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"}).status_code == 422
        assert c.get("/readyz").status_code == 200  # still serving after all of it


@pytest.mark.slow
def test_concurrent_requests_are_micro_batched(bundle):
    gen, live = _serve(bundle, delay=0.05, max_batch=8, max_wait_ms=200)
    with live:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: httpx.post(live.url + "/v1/generate", timeout=30,
                                                       json={"prompt": "a red circle", "seed": i}).status_code,
                                  range(8)))  # fmt: skip
        metrics = httpx.get(live.url + "/metrics").text
    assert codes == [200] * 8
    batches = float(next(ln.split()[-1] for ln in metrics.splitlines() if ln.startswith("fewstep_batch_images_count")))
    images = float(next(ln.split()[-1] for ln in metrics.splitlines() if ln.startswith("fewstep_batch_images_sum")))
    assert images == 8 and batches < 8  # 8 requests, fewer engine batches
    assert gen.denoiser.calls < 8 * 2


@pytest.mark.slow
def test_full_queue_gets_429_with_retry_after_and_slow_requests_504(bundle):
    _, live = _serve(bundle, delay=0.3, max_batch=1, max_wait_ms=0, max_queue=1, timeout_s=5)
    with live:
        with ThreadPoolExecutor(6) as pool:

            def post(i):
                return httpx.post(live.url + "/v1/generate", json={"prompt": "a red circle", "seed": i}, timeout=30)

            responses = list(pool.map(post, range(6)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
        assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 429)
    _, live = _serve(bundle, delay=0.5, timeout_s=0.2)
    with live:
        r = httpx.post(live.url + "/v1/generate", json={"prompt": "a red circle"}, timeout=30)
        assert r.status_code == 504 and "within 0.2 s" in r.json()["error"]["message"]


@pytest.mark.slow
def test_graceful_shutdown_drains_in_flight_requests(bundle):
    _, live = _serve(bundle, delay=0.4)
    live.__enter__()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, live.url + "/v1/generate", json={"prompt": "a red circle"}, timeout=30)
        time.sleep(0.2)  # the request is inside the engine now
        live.__exit__(None, None, None)
        assert pending.result().status_code == 200
    assert not live.thread.is_alive()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_serve_picks_the_engine_with_the_most_images_per_second(bundle, tmp_path):
    """`fewstep serve` without --engine times every engine that loads here and serves the fastest."""
    import json
    import shutil

    from fewstep.core.manifest import BundleError
    from fewstep.runtime.engine import BackendUnavailable
    from fewstep.runtime.engine_pick import fastest_engine, format_rows, measure_engines, measure_in_subprocess

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    onnx = manifest["engines"][0]
    manifest["engines"] += [{**onnx, "id": "onnx-fp32-again"},
                            {**onnx, "id": "coreml-fp32", "backend": "coreml", "precision": "fp32"}]  # fmt: skip
    (copy / "manifest.json").write_text(json.dumps(manifest))
    rows = measure_engines(copy, batch=4, runs=2)
    by_id = {r["engine"]: r for r in rows}
    assert set(by_id) == {onnx["id"], "onnx-fp32-again", "coreml-fp32"}
    assert "skipped" in by_id["coreml-fp32"]  # a backend this machine lacks (CoreML off macOS) is skipped
    measured = [r for r in rows if "images_per_s" in r]
    assert len(measured) >= 2 and all(r["batch"] == 4 and r["images_per_s"] > 0 for r in measured)
    best = fastest_engine(rows)
    assert by_id[best]["images_per_s"] == max(r["images_per_s"] for r in measured)
    assert best in format_rows(rows)
    with pytest.raises(BackendUnavailable, match="coreml-fp32"):
        fastest_engine([by_id["coreml-fp32"]])
    with pytest.raises(ValueError, match=">= 1"):
        measure_engines(copy, batch=0)
    # what `fewstep serve` runs: the same timing in a child process, its errors one clear line
    child = measure_in_subprocess(copy, batch=2, runs=1)
    assert [r["engine"] for r in child] == [r["engine"] for r in rows]
    assert all(r["batch"] == 2 for r in child if "skipped" not in r)
    with pytest.raises(BundleError, match="not a directory"):
        measure_in_subprocess(tmp_path / "missing", batch=2)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_web_page_renders_and_generates_in_headless_chromium(bundle, tmp_path):
    _, live = _serve(bundle)
    with live:
        url = live.url + "/?prompt=a%20red%20circle&seed=3&autorun=1"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000"]  # fmt: skip
        dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        assert 'id="result"' in dom and "data:image/png;base64," in dom, dom[-2000:]
        assert "seed 3" in dom and "tiny-cfg" in dom
        shot = tmp_path / "page.png"
        subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=800,600", url], capture_output=True,
                       timeout=120)  # fmt: skip
        assert shot.is_file() and shot.stat().st_size > 0
