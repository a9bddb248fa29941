"""`fewstep export` settings: a frozen dataclass loadable from YAML (`--config`), every field documented."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fewstep.core.config import Config, ConfigError, param
from fewstep.export.gates import DEFAULT_MIN_PSNR, GateConfig
from fewstep.runtime.registry import backends, export_targets


def _all(attr: str) -> list[str]:
    return sorted({v for b in backends() for v in getattr(b, attr)})


def _psnr(precision: str) -> float:
    return param(DEFAULT_MIN_PSNR[precision], f"parity floor for {precision} engines: the final images' PSNR vs "
                 "the torch student's", unit="dB", min=0)  # type: ignore[no-any-return]  # fmt: skip


@dataclass(frozen=True)
class ExportConfig(Config):
    """Which engines to write, how int8 is calibrated, and the gates every engine must pass."""

    to: tuple[str, ...] = param(("onnx", "openvino"), f"export targets, one or more of {', '.join(export_targets())}",
                                metavar="TARGET,...")  # fmt: skip
    precision: tuple[str, ...] = param(("fp32", "fp16", "int8"), "precisions to write, one or more of "
                                       f"{', '.join(_all('precisions'))}; each target writes those it supports "
                                       "(the others are noted)", metavar="PRECISION,...")  # fmt: skip
    quantizer: tuple[str, ...] = param(("nncf", "ort"), "int8 quantizers, one or more of "
                                       f"{', '.join(_all('quantizers'))} (ONNX: one engine each, each gated)",
                                       metavar="Q,...")  # fmt: skip
    calibration_prompts: int = param(64, "prompts (one seed each) run through the student's sampler for int8", min=1)
    calibration_dataset: Literal["shapes", "digits"] = param("shapes", "captions of a built-in set for calibration")
    calibration_prompts_file: str | None = param(None, "or your own calibration prompts, one per line (UTF-8)",
                                                 path="file")  # fmt: skip
    parity_prompts: int = param(32, "prompts (one seed each) whose final images are compared with the torch "
                                "student's", min=1)  # fmt: skip
    min_psnr_fp32: float = _psnr("fp32")
    min_psnr_fp16: float = _psnr("fp16")
    min_psnr_bf16: float = _psnr("bf16")
    min_psnr_int8: float = _psnr("int8")
    min_psnr_int8w: float = _psnr("int8w")
    min_psnr_int4w: float = _psnr("int4w")
    min_psnr_palette4: float = _psnr("palette4")
    speed_gate: bool = param(True, "refuse fp16/int8 engines not faster than the fp32 engine here (false: record the "
                             "timing only, e.g. exporting for another machine)")  # fmt: skip
    min_speedup: float = param(1.05, "the speed gate's bar: at least this much faster than fp32 (beyond timing "
                               "noise)", unit="x", above=0)  # fmt: skip
    speed_batch: int = param(8, "batch size the speed gate times", min=1)
    speed_runs: int = param(40, "interleaved timed runs per engine in the speed gate", min=1)
    max_batch: int = param(16, "images per request the engines must take (CFG engines get 2x rows; TensorRT "
                           "profiles, Triton's max_batch_size)", min=1)  # fmt: skip
    triton: bool = param(False, "also write a Triton Inference Server model repository (BUNDLE/triton/)")
    threads: int = param(0, "CPU threads for export-time inference (0: all cores)", min=0)
    tiny_decoder: str | None = param(None, "latent models: a tiny decoder (`fewstep distill-decoder`) bundled "
                                     "beside the VAE's", path="path")  # fmt: skip
    decoder: Literal["vae", "tiny"] = param("vae", "latent models: the image decoder the runtime uses by default")

    def check(self) -> None:
        super().check()
        lists = (
            ("to", self.to, export_targets()),
            ("precision", self.precision, _all("precisions")),
            ("quantizer", self.quantizer, _all("quantizers")),
        )
        for name, values, known in lists:
            if not values:
                raise ConfigError(f"config field {name!r} (--{name}) needs at least one of {', '.join(known)}", name)
            if unknown := [v for v in values if v not in known]:
                what = "export target" if name == "to" else name
                raise ConfigError(f"config field {name!r} (--{name}): unknown {what} {', '.join(map(repr, unknown))}; "
                                  f"choose from {', '.join(known)}", name)  # fmt: skip
        if self.decoder == "tiny" and not self.tiny_decoder:
            raise ConfigError("decoder=tiny needs --tiny-decoder PATH (a decoder made by fewstep distill-decoder)",
                              "decoder")  # fmt: skip

    def gates(self) -> GateConfig:
        floors = {p: getattr(self, f"min_psnr_{p}") for p in DEFAULT_MIN_PSNR}
        return GateConfig(floors, self.parity_prompts, self.speed_gate, self.min_speedup, self.speed_batch,
                          self.speed_runs)  # fmt: skip
