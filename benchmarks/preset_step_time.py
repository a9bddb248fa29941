"""Parameters, GFLOP per image and seconds per training step (forward + backward + AdamW, batch 32) of each preset.

python benchmarks/preset_step_time.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fewstep.commands.info import preset_costs
from fewstep.models.contract import Cond
from fewstep.models.presets import PRESETS, TEXT_DIM
from fewstep.models.unet_flow import build_unet_flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for cost in preset_costs():
        model = build_unet_flow(PRESETS[cost["preset"]].unet)
        opt = torch.optim.AdamW(model.parameters())
        x, t = torch.randn(32, 3, 32, 32), torch.rand(32)
        cond = Cond(torch.randn(32, 32, TEXT_DIM), torch.ones(32, 32))
        times = []
        for _ in range(args.steps + 1):  # the first step warms up
            t0 = time.perf_counter()
            (model(x, t, cond) - x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        rows.append({**cost, "s_per_step_median": round(sorted(times[1:])[len(times[1:]) // 2], 3)})
    print(json.dumps({"threads": args.threads, "batch": 32, "presets": rows}, indent=2))


if __name__ == "__main__":
    main()
