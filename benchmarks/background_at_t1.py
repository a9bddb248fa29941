"""Does the teacher read the named background from the prompt where it must, at t ~ 1 (pure noise)?

The background is a flat colour (black / white / gray): its choice is made in the first Euler steps, where x_t is
nearly pure noise and only the text can say which. This prints the mean of the predicted clean image
x0 = x_t - t v(x_t, t, c) at t = 1, 0.95, 0.9 for one noise and prompts naming each background (conditional and
with CFG w = 3). A teacher that ignores the words predicts the dataset mean (gray, about -0.06) for all of them.

    python benchmarks/background_at_t1.py [--model shapes32-teacher] > benchmarks/results/MODEL/background_at_t1.json
"""

from __future__ import annotations

import argparse
import json

import torch

from fewstep.models.pipeline import TorchPipeline

BACKGROUNDS = ("black", "white", "gray")  # pixel means about -0.84, +0.84, -0.06 in [-1, 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes32-teacher")
    args = parser.parse_args()
    pipe = TorchPipeline.from_checkpoint(args.model)
    prompts = [f"a red circle on a {b} background" for b in BACKGROUNDS]
    cond, null = pipe.encoder.encode(prompts), pipe.encoder.null(len(prompts))
    eps = torch.randn(1, *pipe.shape, generator=torch.Generator().manual_seed(0)).expand(len(prompts), -1, -1, -1)
    rows = {}
    with torch.no_grad():
        for t in (1.0, 0.95, 0.9):
            x, tt = t * eps, torch.full((len(prompts),), t)
            vc, vu = pipe.model(x, tt, cond), pipe.model(x, tt, null)
            rows[f"t={t}"] = {
                "conditional": dict(zip(BACKGROUNDS, (x - t * vc).mean((1, 2, 3)).tolist(), strict=True)),
                "cfg_w3": dict(zip(BACKGROUNDS, (x - t * (vu + 3 * (vc - vu))).mean((1, 2, 3)).tolist(), strict=True)),
            }
    rows = {k: {m: {b: round(v, 3) for b, v in d.items()} for m, d in r.items()} for k, r in rows.items()}
    print(json.dumps({"model": args.model, "prompt": "a red circle on a {background} background",
                      "mean_predicted_x0": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
