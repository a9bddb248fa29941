"""How much memory a distillation run needs, estimated before anything is allocated, so a configuration that
cannot fit is refused with the figure instead of being killed by the OOM killer.

    weights     teacher + student + the method's extra networks (consistency: the target; DMD: the fake score)
                + the teacher pipeline's text encoders and VAE
    training    per trainable parameter: gradient, AdamW's two moments, the EMA copy (4 x 4 bytes)
    activations batch x latent pixels x ACTIVATION_BYTES_PER_LATENT_PIXEL x (student params / the calibration
                UNet's): a crude width scaling, with gradient checkpointing; x CHECKPOINTING_OFF_FACTOR without it;
                x 2 for MeanFlow (its JVP's tangents)

The activation coefficient is calibrated on one run (benchmarks/results/real-size/README.md): an SD1.5-config
LoRA consistency run at 64x64 latents, batch 1, with checkpointing, held 13.0-13.1 GB while training (resident
memory sampled every few seconds; its target was then a full copy of the UNet), ~1.7 GB above its weights and
fixed overhead; the coefficient adds ~40% margin. Checked since: the same run with the target sharing the frozen
base held 10.0 GB (estimate 11.4 GB); SD-Turbo's peaked at 11.2 GB (estimate 12.3 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

from fewstep.core.resources import gib, require_memory

FP32 = 4
TRAINING_BYTES_PER_PARAM = 4 * FP32  # gradient, AdamW exp_avg and exp_avg_sq, EMA
# networks beside the student: consistency's target (it shares a LoRA student's frozen base, so it costs its
# trainable weights), DMD's fake score (a full copy of the teacher, trained)
EXTRA_TARGETS = {"consistency": 1}
EXTRA_NETWORKS = {"dmd": 1}
EXTRA_TRAINABLE = {"dmd": 1}  # ... that also train (DMD's fake score has its own optimizer)
# MeanFlow's JVP carries a tangent beside every activation the backward pass keeps (not yet calibrated at size)
ACTIVATION_FACTOR = {"meanflow": 2.0}
ACTIVATION_BYTES_PER_LATENT_PIXEL = 600_000  # calibrated: SD1.5 UNet, checkpointing on (module docstring)
CALIBRATION_PARAMS = 859_520_964  # the SD1.5 UNet the coefficient was measured on
CHECKPOINTING_OFF_FACTOR = 4.0
FIXED_OVERHEAD = 1 << 30  # Python, torch, text encoder and VAE working memory


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    training: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.training + self.activations + FIXED_OVERHEAD

    def explain(self) -> str:
        return (f"weights {gib(self.weights)} + gradients/optimizer/EMA {gib(self.training)} + activations "
                f"{gib(self.activations)} + overhead {gib(FIXED_OVERHEAD)}")  # fmt: skip


def estimate(method: str, teacher_params: int, student_params: int, trainable: int, batch: int,
             latent_pixels: int, checkpointing: bool, companion_params: int = 0) -> MemoryEstimate:  # fmt: skip
    """`companion_params`: the networks loaded beside the denoisers (a pipeline's text encoders and VAE)."""
    extra = EXTRA_NETWORKS.get(method, 0) * student_params + EXTRA_TARGETS.get(method, 0) * trainable
    weights = FP32 * (teacher_params + student_params + extra + companion_params)
    training = TRAINING_BYTES_PER_PARAM * trainable * (1 + EXTRA_TRAINABLE.get(method, 0))
    act = batch * latent_pixels * ACTIVATION_BYTES_PER_LATENT_PIXEL * student_params / CALIBRATION_PARAMS
    act *= ACTIVATION_FACTOR.get(method, 1.0)
    return MemoryEstimate(weights, training, int(act * (1 if checkpointing else CHECKPOINTING_OFF_FACTOR)))


def refuse_if_too_big(est: MemoryEstimate, what: str, lora: bool, checkpointing: bool, batch: int) -> None:
    """Raise ResourceError when the estimate exceeds the memory available now, with the ways to make it fit."""
    ways = []
    if not lora:
        ways.append("train LoRA adapters (--lora-rank 16)")
    if not checkpointing:
        ways.append("--gradient-checkpointing")
    if batch > 1:
        ways.append("a smaller --batch-size")
    hint = (f"({est.explain()}); try " + ", ".join(ways)) if ways else f"({est.explain()})"
    require_memory(est.total, what, hint)
