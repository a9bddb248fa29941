"""Which attributes of a prompt a model gets wrong (50 Euler steps, CFG w = 3, the eval prompts).

python benchmarks/adherence_breakdown.py [--model shapes32-teacher] [--n 192]
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from fewstep.evaluation.adherence import decode_shapes
from fewstep.evaluation.evaluate import EVAL_PROMPT_SEED
from fewstep.evaluation.train_judge import load_judge
from fewstep.models.datasets import ShapesDataset, to_model_range
from fewstep.models.pipeline import TorchPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="shapes32-teacher")
    parser.add_argument("--n", type=int, default=192)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = TorchPipeline.from_checkpoint(args.model)
    judge, _ = load_judge("shapes32-judge")
    items = [ShapesDataset(n=args.n, seed=EVAL_PROMPT_SEED).item(i) for i in range(args.n)]
    fake = pipe.generate([it[1] for it in items], list(range(args.n)), 50, 3.0)
    with torch.no_grad():
        detected = decode_shapes(judge(torch.from_numpy(to_model_range(fake))))
    c: collections.Counter = collections.Counter()
    for det, (_, _, label) in zip(detected, items, strict=True):
        k = "one_shape" if len(label.objects) == 1 else "two_shapes"
        c[f"{k}/prompts"] += 1
        c[f"{k}/right_object_count"] += len(det.objects) == len(label.objects)
        c[f"{k}/named_shape_colour_pairs_present"] += {(o.shape, o.colour) for o in label.objects} <= {
            (o.shape, o.colour) for o in det.objects
        }
        if "background" in label.named:
            c[f"{k}/background_named"] += 1
            c[f"{k}/background_right"] += det.background == label.background
        if k == "one_shape" and len(det.objects) == 1:
            got, want = det.objects[0], label.objects[0]
            c["one_shape/single_object_images"] += 1
            c["one_shape/single_object_right_cell"] += got.cell == want.cell
            c["one_shape/single_object_right_shape_colour"] += (got.shape, got.colour) == (want.shape, want.colour)
            if "size" in label.named:
                c["one_shape/single_object_size_named"] += 1
                c["one_shape/single_object_size_right"] += got.size == want.size
    print(json.dumps({"model": args.model, "command": f"python benchmarks/adherence_breakdown.py --n {args.n}",
                      **dict(sorted(c.items()))}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
