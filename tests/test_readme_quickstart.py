"""The README's quickstart and "bring your own model" commands run as written, in order, in one fresh directory.

A user's pipeline directory and image folder are stand-ins the test builds (a tiny SD pipeline, eight captioned
images). Two additions keep the run to minutes, and are the only changes to the written commands: the distillation
gets a small step budget (SMALL_RUN), and the server gets a free port and is stopped once it answers /readyz.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FEWSTEP = str(Path(sys.executable).with_name("fewstep"))
SMALL_RUN = {"distill": ["--steps", "2", "--batch-size", "2", "--sample-every", "0", "--checkpoint-every", "2",
                         "--verdict-prompts", "8"]}  # fmt: skip


def readme_block(heading: str) -> list[list[str]]:
    """The `fewstep` commands of the first bash block under `## heading` (comments dropped, continuations joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, f"no bash block under '## {heading}'"
    lines = re.sub(r"\\\n\s*", " ", block.group(1)).splitlines()
    commands = [shlex.split(line, comments=True) for line in lines]
    commands = [c for c in commands if c]
    assert commands and all(c[0] == "fewstep" for c in commands), commands
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], cwd: Path) -> None:
    argv = [FEWSTEP, *argv[1:], *SMALL_RUN.get(argv[1], [])]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def serve_until_ready(argv: list[str], cwd: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([FEWSTEP, *argv[1:], "--port", str(port)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server exited: {proc.stdout.read() if proc.stdout else ''}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the server did not become ready in 120 s")
        body = json.dumps({"prompt": "a red circle to the left of a blue square", "seed": 1}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and r.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_all(commands: list[list[str]], cwd: Path) -> None:
    for argv in commands:
        (serve_until_ready if argv[1] == "serve" else run)(argv, cwd)


@pytest.mark.slow
def test_readme_quickstart_runs(tmp_path):
    commands = readme_block("Quickstart")
    run_all(commands, tmp_path)
    for png in ("teacher.png", "student.png"):
        assert (tmp_path / png).stat().st_size > 100
    manifest = json.loads((tmp_path / "bundles/slim4/manifest.json").read_text())
    assert {e["backend"] for e in manifest["engines"]} >= {"onnxruntime", "openvino"}


@pytest.mark.slow
def test_readme_bring_your_own_model_runs(tmp_path):
    from PIL import Image

    from fewstep.testing.tiny_pipelines import tiny_sd_pipeline

    tiny_sd_pipeline(tmp_path / "my-pipeline")
    images = tmp_path / "my-images"
    images.mkdir()
    rows = []
    for i, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        Image.new("RGB", (32, 32), colour).save(images / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a {colour} lighthouse at dusk"}))
    (images / "metadata.jsonl").write_text("\n".join(rows) + "\n")

    commands = readme_block("Bring your own model")
    run_all(commands, tmp_path)
    assert (tmp_path / "teacher.png").is_file() and (tmp_path / "student.png").is_file()
    manifest = json.loads((tmp_path / "bundles/prog4/manifest.json").read_text())
    assert manifest["sampler"]["default_steps"] == 4 and manifest.get("text_encoder") and manifest.get("decoder")


def test_readme_blocks_hold_the_commands_the_readme_promises():
    """Five commands each (the README's promise), and every one is a documented subcommand."""
    from fewstep.commands import COMMANDS

    names = {command.name for command in COMMANDS}
    for heading in ("Quickstart", "Bring your own model"):
        cmds = readme_block(heading)
        assert len(cmds) == 5 and all(c[1] in names for c in cmds), (heading, cmds)
