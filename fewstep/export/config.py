"""`fewstep export` settings: a frozen dataclass loadable from YAML (`--config`), every field documented."""

from __future__ import annotations

from dataclasses import dataclass

from fewstep.core.config import ConfigError
from fewstep.export.gates import DEFAULT_MIN_PSNR, GateConfig


@dataclass(frozen=True)
class ExportConfig:
    to: tuple[str, ...] = ("onnx", "openvino")  # onnx | openvino | coreml | tensorrt | torch-tensorrt | torch
    precision: tuple[str, ...] = ("fp32", "fp16", "int8")  # per backend, those it supports (others are noted)
    quantizer: tuple[str, ...] = ("nncf", "ort")  # int8 ONNX quantizers, each gated: nncf | ort
    calibration_prompts: int = 64  # prompts (one seed each) run through the student's sampler for int8
    calibration_dataset: str = "shapes"  # captions of a built-in set: shapes | digits
    calibration_prompts_file: str | None = None  # or your own prompts, one per line (UTF-8)
    parity_prompts: int = 32  # prompts (one seed each) whose final images are compared with the torch student
    min_psnr_fp32: float = DEFAULT_MIN_PSNR["fp32"]  # parity floors (dB) per precision
    min_psnr_fp16: float = DEFAULT_MIN_PSNR["fp16"]
    min_psnr_int8: float = DEFAULT_MIN_PSNR["int8"]
    min_psnr_int8w: float = DEFAULT_MIN_PSNR["int8w"]
    min_psnr_palette4: float = DEFAULT_MIN_PSNR["palette4"]
    speed_gate: bool = True  # refuse fp16/int8 engines not faster than fp32 here (false: record only)
    min_speedup: float = 1.05  # the speed gate: at least 5% faster than fp32, beyond timing noise
    speed_batch: int = 8  # batch size the speed gate times
    speed_runs: int = 40  # interleaved timed runs per engine
    max_batch: int = 16  # images per request the engines must take (CFG engines get 2x; TensorRT profiles, Triton)
    triton: bool = False  # also write a Triton Inference Server model repository (bundle/triton/)
    threads: int = 0  # CPU threads for export-time inference (0: all cores)
    tiny_decoder: str | None = None  # latent models: a tiny decoder (fewstep distill-decoder) bundled beside the VAE's
    decoder: str = "vae"  # latent models: the image decoder the runtime uses by default: vae | tiny

    def __post_init__(self) -> None:
        if self.calibration_prompts < 1 or self.parity_prompts < 1:
            raise ConfigError("calibration_prompts and parity_prompts must be >= 1")
        if self.speed_batch < 1 or self.speed_runs < 1 or self.max_batch < 1:
            raise ConfigError("speed_batch, speed_runs and max_batch must be >= 1")
        if self.decoder not in ("vae", "tiny"):
            raise ConfigError(f"config field 'decoder': unknown {self.decoder!r}; choose vae or tiny")
        if self.decoder == "tiny" and not self.tiny_decoder:
            raise ConfigError("decoder=tiny needs --tiny-decoder PATH (a decoder made by fewstep distill-decoder)")
        for q in self.quantizer:
            if q not in ("nncf", "ort"):
                raise ConfigError(f"config field 'quantizer': unknown {q!r}; choose nncf and/or ort")

    def gates(self) -> GateConfig:
        floors = {p: getattr(self, f"min_psnr_{p}") for p in DEFAULT_MIN_PSNR}
        return GateConfig(floors, self.parity_prompts, self.speed_gate, self.min_speedup, self.speed_batch,
                          self.speed_runs)  # fmt: skip
