"""In an environment with only `pip install 'fewstep[runtime,serve]'` (no torch: `.venv-runtime`, built by
`make test`), the runtime's five commands run against a bundle this test exports with the full install, and the
training and export commands name the extra they need in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = Path(os.environ.get("FEWSTEP_RUNTIME_ENV", ROOT / ".venv-runtime"))
FEWSTEP = ENV / "bin" / "fewstep"

if not FEWSTEP.is_file():
    if os.environ.get("CI"):  # CI builds it: its absence is a failure, not a skip
        raise RuntimeError(f"{ENV} is missing: `bash scripts/install_runtime_env.sh` (make test) builds it")
    pytest.skip(f"no runtime-only environment {ENV}: `bash scripts/install_runtime_env.sh` builds it",
                allow_module_level=True)  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture
def bundle(served_bundle):
    return served_bundle


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(FEWSTEP), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_the_environment_has_no_torch():
    out = subprocess.run([str(ENV / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert out.returncode != 0 and "No module named 'torch'" in out.stderr


def test_help_info_generate_and_bench_run_without_torch(bundle, tmp_path):
    out = _run("--help", cwd=tmp_path)
    assert out.returncode == 0 and "fewstep serve BUNDLE" in out.stdout
    out = _run("info", str(bundle), "--verify", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "onnx-fp32" in out.stdout and "yes" in out.stdout and "files match their sha256" in out.stdout
    out = _run("info", cwd=tmp_path)  # the shipped models, read from their headers; presets need torch
    assert out.returncode == 0 and "shapes32-teacher" in out.stdout and "need torch" in out.stdout
    png = tmp_path / "grid.png"
    out = _run("generate", str(bundle), "--prompt", "a red circle", "--seeds", "0,1", "--out", str(png), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert png.stat().st_size > 0 and "engine onnx-fp32" in out.stdout
    out = _run("bench", str(bundle), "--batch-sizes", "1", "--runs", "2", "--warmup", "1", "--out",
               str(tmp_path / "bench.json"), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "cold start: first image" in out.stdout and "torch rows skipped" in out.stdout


def test_serve_answers_http_without_torch(bundle, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(FEWSTEP), "serve", str(bundle), "--port", str(port), "--pick", "priority"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "the server did not become ready"
            time.sleep(0.3)
        r = httpx.post(f"{url}/v1/generate", json={"prompt": "a red circle", "seed": 1}, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_training_and_export_commands_name_their_extra(tmp_path):
    for args, extra in ((["distill", "reflow", "--help"], "train"), (["train-teacher"], "train"),
                        (["export", "m", "--out", "b"], "export")):  # fmt: skip
        out = _run(*args, cwd=tmp_path)
        assert out.returncode == 2 and f"pip install 'fewstep[{extra}]'" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _run("generate", "shapes32-teacher", "--prompt", "x", cwd=tmp_path)  # a checkpoint needs torch
    assert out.returncode == 2 and "pip install 'fewstep[train]'" in out.stderr and "Traceback" not in out.stderr
