"""How accurate are the pair cache's teacher ODE solutions? Endpoints of cheaper solvers against Heun-32.

    python benchmarks/pair_solver_accuracy.py [--n 64]

Same 64 (noise, caption) pairs, shipped teacher, CFG 3. Writes benchmarks/results/pair_solver_accuracy.json
(RMS endpoint difference on the [-1, 1] image scale, and seconds per pair with batch 32 on this CPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fewstep.compress.pairs import PairCache, PairsConfig, build_pairs

OUT = Path(__file__).resolve().parent / "results" / "pair_solver_accuracy.json"
SOLVERS = (("heun", 32), ("heun", 16), ("euler", 32), ("heun", 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x0, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for solver, steps in SOLVERS:
            t0 = time.perf_counter()
            cfg = PairsConfig(n=args.n, solver=solver, steps=steps, shard_size=32, batch_size=32)
            root = build_pairs(cfg, Path(tmp) / f"{solver}{steps}", progress=False)
            seconds[f"{solver}-{steps}"] = round((time.perf_counter() - t0) / args.n, 3)
            x0[f"{solver}-{steps}"] = PairCache.open(root).x0
    ref = x0["heun-32"]
    result = {
        "command": f"python benchmarks/pair_solver_accuracy.py --n {args.n}",
        "reference": "heun-32",
        "rms_vs_reference": {k: round(float((v - ref).pow(2).mean().sqrt()), 4) for k, v in x0.items()},
        "seconds_per_pair (incl. model load)": seconds,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
