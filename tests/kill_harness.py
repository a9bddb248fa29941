"""kill -9 at random moments: run a `fewstep` command in a child process, SIGKILL it, check that every output file
is complete, resume, repeat; then finish the run and compare it with an uninterrupted one.

Used by test_reliability_kill9.py. FEWSTEP_KILLS sets the kills per stage (default 2; the README's figure is the
suite's default, a longer sweep is `FEWSTEP_KILLS=10 pytest tests/test_reliability_kill9.py`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fewstep.core.fsio import is_stale_temp as is_temp
from fewstep.core.manifest import FORMAT, IN_PROGRESS, MANIFEST, BundleError, read_manifest, verify_file

KILLS = int(os.environ.get("FEWSTEP_KILLS", "2"))
COMMAND = [sys.executable, "-m", "fewstep.cli"]


@dataclass
class Attempt:
    killed: bool  # False: the process finished before its kill time
    after_s: float
    output: str
    returncode: int | None


@dataclass
class KillLog:
    attempts: list[Attempt] = field(default_factory=list)
    files_checked: int = 0

    @property
    def kills(self) -> int:
        return sum(a.killed for a in self.attempts)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def run(args: list[str], timeout: float = 600, **popen) -> tuple[subprocess.CompletedProcess, float]:
    """Run `fewstep ARGS` to its end; -> (completed process, seconds)."""
    t0 = time.perf_counter()
    done = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout, env=_env(), **popen)
    return done, time.perf_counter() - t0


def run_ok(args: list[str], **kw) -> float:
    done, seconds = run(args, **kw)
    assert done.returncode == 0, f"fewstep {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return seconds


def kill_after(args: list[str], delay_s: float, out: Path | None = None) -> Attempt:
    """Start `fewstep ARGS`, SIGKILL it once `delay_s` has passed and (given `out`) a finished file exists under `out`,
    unless it ended first. Waiting for an output keeps a kill out of interpreter start-up, where it tests nothing:
    on a loaded machine start-up alone can outlast a delay drawn from the reference run's length."""
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen([*COMMAND, *args], stdout=log, stderr=subprocess.STDOUT, text=True, env=_env())
        t0 = time.perf_counter()
        while p.poll() is None and not (time.perf_counter() - t0 >= delay_s and _has_output(out)):
            time.sleep(0.02)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        after_s = time.perf_counter() - t0
        returncode = p.wait()
        log.seek(0)
        killed = returncode == -signal.SIGKILL  # not `poll() is None`: the run may end between poll and kill
        return Attempt(killed, after_s, log.read(), None if killed else returncode)


def _has_output(out: Path | None) -> bool:
    if out is None:
        return True
    try:
        return any(f.is_file() and not is_temp(f) for f in out.rglob("*"))
    except OSError:  # a directory renamed or removed during the walk: look again at the next poll
        return False


def kill_repeatedly(first: list[str], again: list[str], duration_s: float, out: Path, seed: int,
                    check=None) -> KillLog:  # fmt: skip
    """KILLS kills at seeded random moments of a run whose uninterrupted length is `duration_s`.

    `first` starts the run, `again` continues it; after every kill `check_outputs(out)` and `check(attempt)`."""
    rng = random.Random(seed)
    log = KillLog()
    args = first
    retries = 2  # runs that end before their first kill: this process was faster than the reference run
    for _ in range(KILLS + retries):
        attempt = kill_after(args, rng.uniform(0.2, 0.9) * duration_s, out)
        log.attempts.append(attempt)
        if not attempt.killed:
            assert attempt.returncode == 0, attempt.output[-3000:]
            if log.kills == 0 and retries:  # (a cold first start can make the reference twice as long)
                retries -= 1
                duration_s = attempt.after_s  # draw the next kill from this run's own length, from scratch
                shutil.rmtree(out, ignore_errors=True)
                args = first
                continue
            break
        log.files_checked += check_outputs(out)
        if check:
            check(attempt)
        args = again
        if log.kills >= KILLS:
            break
    return log


def check_outputs(root: Path) -> int:
    """Every output under `root` is complete; a bundle is complete or refused as incomplete. -> files checked."""
    if not root.exists():
        return 0
    n = 0
    bundles = {p.parent for p in root.rglob(MANIFEST) if json.loads(p.read_text()).get("format") == FORMAT}
    bundles |= {p.parent for p in root.rglob(IN_PROGRESS)}
    for b in bundles:
        n += _check_bundle(b)
    for f in sorted(root.rglob("*")):
        if f.is_file() and not is_temp(f) and not any(b in f.parents for b in bundles):
            check_file(f)
            n += 1
    return n


def _check_bundle(root: Path) -> int:
    if (root / IN_PROGRESS).exists():
        try:
            read_manifest(root)
        except BundleError as e:
            assert "incomplete" in str(e)
            return 1
        raise AssertionError(f"{root}: an unfinished bundle was accepted")
    files = dict(_listed_files(read_manifest(root).to_json()))
    assert files, f"{root}: a finished bundle lists no files"
    for name, sha in files.items():
        verify_file(root, name, sha)
    return 1 + len(files)


def _listed_files(entry):
    """(file, sha256) of every file the manifest lists: entries with file + sha256, and `files` maps."""
    if isinstance(entry, dict):
        if isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str):
            yield entry["file"], entry["sha256"]
        if isinstance(entry.get("files"), dict):
            yield from entry["files"].items()
        for v in entry.values():
            yield from _listed_files(v)
    elif isinstance(entry, list):
        for v in entry:
            yield from _listed_files(v)


def check_file(path: Path) -> None:
    """Open `path` the way its reader does; raises on a truncated or half-written file."""
    suffix = path.suffix
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                f.get_tensor(k)
    elif suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".jsonl":  # append-only logs: a line cut by the kill may only be the last, unterminated one
        lines = path.read_text(encoding="utf-8").split("\n")
        for line in lines[:-1]:
            json.loads(line)
    elif suffix == ".yaml":
        import yaml

        yaml.safe_load(path.read_text(encoding="utf-8"))
    elif suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            im.load()
    elif suffix == ".npy":
        import numpy as np

        np.load(path, allow_pickle=False)
    elif suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(path)))
    elif suffix in (".md", ".html", ".txt", ".csv"):
        path.read_text(encoding="utf-8")
    elif not path.name.startswith(".done-"):
        raise AssertionError(f"no check for {path}: add one to kill_harness.check_file")
