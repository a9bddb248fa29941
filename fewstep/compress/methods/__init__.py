"""Distillation methods, one small loss object per file (METHODS.md); `fewstep.compress.distill` runs them."""
