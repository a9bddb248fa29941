"""Distillation methods, one loss object per file (docs/concepts/methods/); `fewstep.compress.distill` runs them."""
