"""Fingerprints of the weights eleven tiny distillation runs produce (every method and its main variants).

A refactor that must not change any number runs this before and after and compares the two files:

    python benchmarks/method_weight_fingerprints.py before.json /tmp/fp-before
    ... change the code ...
    python benchmarks/method_weight_fingerprints.py after.json /tmp/fp-after && cmp before.json after.json

One thread, fixed seeds: the runs are bit-reproducible on one machine and torch build (not across CPUs or torch
versions, which is why this is a benchmark to run around a change and not a test with stored values).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

torch.set_num_threads(1)  # before any torch work: one thread makes the runs bit-reproducible

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.distill_fixtures import distill_tiny, make_tiny_teacher  # noqa: E402 (needs the repo on sys.path)


def digest(path: Path) -> str:
    tensors = load_file(str(path))
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].float().numpy().tobytes())
    return h.hexdigest()[:16]


def main(out_json: str, work_dir: str) -> None:
    root = Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    teacher, student_json, pairs = make_tiny_teacher(root)
    p, s = str(pairs), str(student_json)
    runs = {
        "reflow": dict(method="reflow", pairs=p),
        "reflow_s": dict(method="reflow", pairs=p, student=s, init="sliced"),
        "instaflow": dict(method="instaflow", pairs=p, student_steps=2),
        "slimflow": dict(method="slimflow", pairs=p, student=s, anneal_steps=2, stage2_steps=3),
        "slimflow_k2": dict(method="slimflow", pairs=p, student=s, anneal_steps=2, stage2_steps=3, student_steps=2),
        "guidance": dict(method="guidance"),
        "guidance_prog": dict(method="guidance", then_progressive=True, start_steps=4, student_steps=2),
        "consistency": dict(method="consistency", student_steps=2, grid=10, skip=2),
        "progressive": dict(method="progressive", start_steps=4, student_steps=1),
        "dmd": dict(method="dmd", pairs=p),
        "dmd2_multi": dict(method="dmd", reg_weight=0.0, fake_updates=2, adv_weight=0.1, student_steps=2, grid=10),
    }
    out = {}
    for name, kw in runs.items():
        method = kw.pop("method")
        out[name] = digest(distill_tiny(teacher, root / name, method, **kw))
        print(name, out[name], flush=True)
    Path(out_json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
